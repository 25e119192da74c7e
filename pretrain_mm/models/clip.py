"""CLIP / SigLIP: a ViT image tower and a text tower mapped to one L2-normalised space, and their loss."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain_mm.models.layers import no_weight_decay_names
from pretrain_mm.models.mlm import MlmHead, masked_token_logits
from pretrain_mm.models.text import text_tower
from pretrain_mm.models.vit import VisionTransformer
from pretrain_mm.models.words import WordHead, caption_word_targets
from pretrain_mm.ops.contrastive import KINDS as LOSS_KINDS  # the op decides which losses exist


class CLIP(nn.Module):
    """Two towers and a learned temperature (and, for the sigmoid loss, a learned bias).

    Arguments:
        vocab_size, context_length, pad_id: the tokenizer's (see TextTransformer).
        embed_dim: the shared feature width both towers project to.
        image_size, patch_size, in_chans: the images (see VisionTransformer).
        vision_width, vision_depth, vision_heads: the image tower's shape.
        vision_pos_embed: "learned" (CLIP) or "sincos".
        vision_pool: "cls" (CLIP) or "mean".
        vision_norm_pre: CLIP's ln_pre, a LayerNorm before the image tower's first block.
        vision_init: the image tower's init, "clip" (open_clip's) or "timm" (see VisionTransformer).
            ln_pre with the "clip" init is open_clip's image tower; on held-out stamps recall it
            beat timm's init without ln_pre (README, Benchmarks: the recipe experiments).
        vision_stem: "patch" (ViT's, open_clip's) or "conv" (a conv stem; see vit.ConvStem).
        vision_norm_eps: the image tower's LayerNorm epsilon (1e-6; open_clip's models use 1e-5).
        patch_dropout: FLIP's patch dropout ratio for the image tower, training mode only.
        text_width, text_depth, text_heads: the text tower's shape.
        mlp_ratio: both towers' MLP hidden width / width.
        drop_path_rate: stochastic depth of both towers.
        loss_kind: "softmax" (CLIP) or "sigmoid" (SigLIP); picks the initial logit_scale, whether
            there is a logit_bias, and the kind `loss` computes.
        init_logit_scale: log of the initial scale; None: log(1/0.07) for softmax, log(10) for sigmoid.
        init_logit_bias: the sigmoid loss's initial bias; None: -10 (SigLIP).
        max_logit_scale: the cap of exp(logit_scale) (100, as open_clip): `clamp_logit_scale_()`,
            called after each optimiser step, clamps the parameter to [0, log(max_logit_scale)].
        mlm: a masked-language-modelling head on the text tower (models/mlm.py; loss.mlm_weight sets it);
            vocab_size then counts the mask id.
        distill_dim: the width of a distillation teacher's features where it differs from embed_dim: linear
            maps of both towers' features to it, for the cosine term (train/distill.py; set from distill.teacher).
        word_head: a linear head that reads the caption's words from the image features (models/words.py;
            loss.word_weight sets it).

    logit_scale and logit_bias are 1-element 1-D parameters, not 0-d ones: FSDP2 cannot shard
    scalar parameters.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 512,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        vision_width: int = 768,
        vision_depth: int = 12,
        vision_heads: int = 12,
        vision_pos_embed: str = "learned",
        vision_pool: str = "cls",
        vision_norm_pre: bool = True,
        vision_init: str = "clip",
        vision_stem: str = "patch",
        vision_norm_eps: float = 1e-6,
        patch_dropout: float = 0.0,
        context_length: int = 77,
        text_width: int = 512,
        text_depth: int = 12,
        text_heads: int = 8,
        pad_id: int = 0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        loss_kind: str = "softmax",
        init_logit_scale: float | None = None,
        init_logit_bias: float | None = None,
        max_logit_scale: float = 100.0,
        mlm: bool = False,
        distill_dim: int = 0,
        word_head: bool = False,
    ):
        super().__init__()
        if loss_kind not in LOSS_KINDS:
            raise ValueError(f"loss_kind must be one of {LOSS_KINDS}, got {loss_kind!r}")
        self.loss_kind, self.max_logit_scale = loss_kind, max_logit_scale
        if init_logit_scale is None:
            init_logit_scale = math.log(1 / 0.07) if loss_kind == "softmax" else math.log(10.0)
        self.init_logit_scale = init_logit_scale
        self.init_logit_bias = -10.0 if init_logit_bias is None else init_logit_bias
        self.visual = VisionTransformer(
            image_size=image_size,
            patch_size=patch_size,
            in_chans=in_chans,
            width=vision_width,
            depth=vision_depth,
            num_heads=vision_heads,
            mlp_ratio=mlp_ratio,
            pos_embed=vision_pos_embed,
            pool=vision_pool,
            patch_dropout=patch_dropout,
            drop_path_rate=drop_path_rate,
            output_dim=embed_dim,
            head_bias=False,
            norm_pre=vision_norm_pre,
            init=vision_init,
            stem=vision_stem,
            norm_eps=vision_norm_eps,
        )
        self.text = text_tower(
            vocab_size, context_length, text_width, text_depth, text_heads, mlp_ratio, embed_dim, pad_id, drop_path_rate
        )
        self.logit_scale = nn.Parameter(torch.empty(1))
        # Only the sigmoid loss has a bias: an unused parameter would get no gradient.
        self.logit_bias = nn.Parameter(torch.empty(1)) if loss_kind == "sigmoid" else None
        self.mlm_head = MlmHead(text_width, vocab_size) if mlm else None
        self.distill_image = nn.Linear(embed_dim, distill_dim, bias=False) if distill_dim else None
        self.distill_text = nn.Linear(embed_dim, distill_dim, bias=False) if distill_dim else None
        self.word_head = WordHead(embed_dim, vocab_size) if word_head else None
        self._init_own_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise everything (after building on the meta device and `to_empty`)."""
        self.visual.init_weights()
        self.text.init_weights()
        self._init_own_weights()

    @torch.no_grad()
    def _init_own_weights(self) -> None:
        # open_clip initialises the image projection like the text one: std = width ** -0.5.
        head = self.visual.head
        assert isinstance(head, nn.Linear)  # the image tower projects into the joint space
        nn.init.normal_(head.weight, std=self.visual.width**-0.5)
        self.logit_scale.fill_(self.init_logit_scale)
        if self.logit_bias is not None:
            self.logit_bias.fill_(self.init_logit_bias)
        for token_head in (self.mlm_head, self.word_head):
            if token_head is not None:
                token_head.init_weights()
        for distill_head in (self.distill_image, self.distill_text):
            if distill_head is not None:
                distill_head.reset_parameters()

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image features (B, embed_dim), unit-norm unless normalize=False."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def representation(self, images: torch.Tensor) -> torch.Tensor:
        """What linear probes and k-NN read (B, vision_width): the pooled image tower before the
        projection to the shared space, as the CLIP paper's linear probes do for its ViTs."""
        return self.visual.pool(self.visual.forward_features(images))

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text features (B, embed_dim) of token ids (B, T), unit-norm unless normalize=False."""
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def masked_token_logits(self, mlm_text: torch.Tensor) -> torch.Tensor:
        """The MLM head's logits (B, T', vocab) of masked captions (models/mlm.py); needs mlm=True."""
        if self.mlm_head is None:
            raise ValueError("this model has no masked-language-modelling head: build it with mlm=True")
        return masked_token_logits(self.text, self.mlm_head, mlm_text)

    def forward(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        neg_text: torch.Tensor | None = None,
        mlm_text: torch.Tensor | None = None,
    ) -> dict:
        """Everything the loss needs, and nothing of the loss itself (the trainer may swap in a
        distributed loss): image_features, text_features (B, embed_dim, unit-norm),
        logit_scale = exp(logit_scale) (1 element), logit_bias (or None); with neg_text (B, T),
        hard-negative captions (see hard_negative_terms), also neg_text_features (B, embed_dim); and what
        `head_outputs` adds."""
        text_features = self.encode_text(text if neg_text is None else torch.cat([text, neg_text]))
        out = {
            "image_features": self.encode_image(images),
            "text_features": text_features,
            # Not clamped here: a clamp in the forward has zero gradient past the cap, where Adam's
            # momentum can leave the scale for good. The trainer clamps the parameter after each step.
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }
        if neg_text is not None:  # one pass of the text tower for both
            out["text_features"], out["neg_text_features"] = text_features.split(text.shape[0])
        return self.head_outputs(out, text, mlm_text)

    def head_outputs(self, out: dict, text: torch.Tensor, mlm_text: torch.Tensor | None) -> dict:
        """`out` with the optional heads' outputs: with mlm_text (B, T), masked captions, mlm_logits
        (masked_token_logits); with distill_dim, image_distill and text_distill (B, distill_dim), the
        features mapped to the teacher's width; with word_head, word_logits (B, vocab) of the image features
        and word_targets (B, vocab), the words of `text` (models/words.py)."""
        if self.word_head is not None:
            out["word_logits"] = self.word_head(out["image_features"])
            out["word_targets"] = caption_word_targets(text, self.text.pad_id, self.word_head.proj.out_features)
        if mlm_text is not None:
            out["mlm_logits"] = self.masked_token_logits(mlm_text)
        if self.distill_image is not None and self.distill_text is not None:
            out["image_distill"] = self.distill_image(out["image_features"])
            out["text_distill"] = self.distill_text(out["text_features"])
        return out

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep exp(logit_scale) in [1, max_logit_scale], as open_clip does after each optimiser step."""
        self.logit_scale.clamp_(0.0, math.log(self.max_logit_scale))

    def no_weight_decay(self) -> set[str]:
        """ndim <= 1 parameters (biases, norms, logit_scale, logit_bias) and position embeddings / cls token."""
        return no_weight_decay_names(self)


def hard_negative_terms(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    neg_text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """NegCLIP's extra term, per row (B,): each image's cross-entropy between its own caption and
    its hard negative (a caption with one word swapped, data/negatives.py),
    -log softmax([s_pos, s_neg])[0] = softplus(scale * (s_neg - s_pos)) with s the cosine; 0 where
    `mask` is False (no negative). Its mean over all rows, not only the masked ones, is the loss:
    so a batch's is the mean of its micro-batches' and of its ranks' (exact under accumulation and
    data parallelism, as the contrastive loss). In float32 at least, like the fused op."""
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    image, pos, neg = (t.to(dtype) for t in (image_features, text_features, neg_text_features))
    margin = (image * neg).sum(-1) - (image * pos).sum(-1)
    return F.softplus(logit_scale.to(dtype) * margin) * mask.to(dtype)
