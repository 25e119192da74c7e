"""Masked autoencoder (He et al.): a ViT on the visible patches, a light decoder, MSE on the masked ones."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain_mm.models.layers import (
    gather_tokens,
    init_sincos_,
    init_vit_weights,
    make_blocks,
    no_weight_decay_names,
    random_masking,
)
from pretrain_mm.models.vit import VisionTransformer


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C): patches in raster order, each flattened as (row, column, channel)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // patch_size) * (w // patch_size), -1)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """The inverse of patchify for square images: (B, L, p*p*C) -> (B, C, H, W)."""
    b, n, _ = patches.shape
    side = round(n**0.5)
    x = patches.reshape(b, side, side, patch_size, patch_size, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, side * patch_size, side * patch_size)


def insert_mask_tokens(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """Visible tokens (B, K, D) in shuffled order + mask tokens -> (B, L, D) in patch order."""
    b, k, d = visible.shape
    filler = mask_token.expand(b, ids_restore.shape[1] - k, d)
    shuffled = torch.cat([visible, filler.to(visible.dtype)], dim=1)
    return gather_tokens(shuffled, ids_restore)


class MAE(nn.Module):
    """ViT-MAE pretraining model.

    Arguments:
        image_size, patch_size, in_chans: the images (see VisionTransformer).
        vision_width, vision_depth, vision_heads: the encoder's shape (a VisionTransformer with
            fixed sin-cos positions and a class token, as MAE).
        vision_pool: how encode_image pools the encoder's tokens: "cls" (MAE's linear probe) or "mean".
        decoder_width, decoder_depth, decoder_heads: the decoder's shape (MAE: 512, 8, 16).
        mlp_ratio: both MLP hidden widths / width.
        mask_ratio: fraction of patches hidden from the encoder (0.75).
        norm_pix_loss: regress each patch's pixels normalised by the patch's own mean and variance.
        drop_path_rate: the encoder's stochastic depth.

    `encoder.blocks` and `decoder_blocks` are the per-block units for FSDP2 / checkpointing.
    """

    decoder_pos_embed: torch.Tensor  # a non-persistent buffer (registered in __init__)

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        vision_width: int = 1024,
        vision_depth: int = 24,
        vision_heads: int = 16,
        vision_pool: str = "cls",
        decoder_width: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.patch_size, self.in_chans = patch_size, in_chans
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        # The encoder's shape in VisionTransformer's own order: image, patch, channels, width, depth, heads, MLP.
        shape = (image_size, patch_size, in_chans, vision_width, vision_depth, vision_heads, mlp_ratio)
        self.encoder = VisionTransformer(*shape, pos_embed="sincos", pool=vision_pool, drop_path_rate=drop_path_rate)
        num_patches = self.encoder.num_patches
        self.decoder_embed = nn.Linear(vision_width, decoder_width)
        self.mask_token = nn.Parameter(torch.empty(1, 1, decoder_width))
        self.register_buffer("decoder_pos_embed", torch.empty(1, 1 + num_patches, decoder_width), persistent=False)
        self.decoder_blocks = make_blocks(decoder_width, decoder_depth, decoder_heads, mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_width, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_width, patch_size**2 * in_chans)
        self._init_decoder_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise everything (after building on the meta device and `to_empty`)."""
        self.encoder.init_weights()
        self._init_decoder_weights()

    @torch.no_grad()
    def _init_decoder_weights(self) -> None:
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_vit_weights(module)
        nn.init.normal_(self.mask_token, std=0.02)
        init_sincos_(self.decoder_pos_embed, self.encoder.grid_size, cls_token=True)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), the layout of the decoder's predictions."""
        return patchify(images, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W)."""
        return unpatchify(patches, self.patch_size, self.in_chans)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoder tokens [cls, visible...] -> pixel predictions (B, L, p*p*C) for every patch."""
        x = self.decoder_embed(latent)
        x = torch.cat([x[:, :1], insert_mask_tokens(x[:, 1:], self.mask_token, ids_restore)], dim=1)
        x = x + self.decoder_pos_embed.to(x.dtype)  # a float32 buffer, whatever the parameters' dtype
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only (mask 1), each patch's error averaged first."""
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None) -> dict:
        """dict(loss, pred (B, L, p*p*C), mask (B, L): 1 = masked). mask_ratio overrides the
        model's; noise (B, L) fixes which patches are kept (the smallest values)."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        ids_keep, mask, ids_restore = random_masking(
            images.shape[0], self.encoder.num_patches, ratio, images.device, noise=noise
        )
        latent = self.encoder.forward_features(images, keep_indices=ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        return {"loss": self.forward_loss(images, pred, mask), "pred": pred, "mask": mask}

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The encoder's pooled features on every patch (B, vision_width), for linear probe / k-NN.
        Not normalised by default (MAE's linear probe puts a BatchNorm on the raw features)."""
        features = self.encoder.pool(self.encoder.forward_features(images))
        return F.normalize(features, dim=-1) if normalize else features

    def no_weight_decay(self) -> set[str]:
        """ndim <= 1 parameters, cls_token and mask_token (positions are fixed buffers)."""
        return no_weight_decay_names(self)
