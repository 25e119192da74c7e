"""Vision Transformer: patch embedding (one conv, or a conv stem), class token, pre-norm blocks, on any subset of
patches."""

import re

import torch
import torch.nn as nn

from pretrain_mm.models.layers import (
    gather_tokens,
    init_clip_vit_weights,
    init_sincos_,
    init_vit_weights,
    make_blocks,
    no_weight_decay_names,
    random_masking,
)

POS_EMBEDS = ("learned", "sincos")
POOLS = ("cls", "mean")
INITS = ("timm", "clip")
STEMS = ("patch", "conv")


class ConvStem(nn.Sequential):
    """Xiao et al. 2021 ("Early convolutions help transformers see better"): log2(patch_size)
    3x3 stride-2 conv-BatchNorm-ReLU layers, channels doubling up to `width` at the last, then a
    1x1 conv; one token per patch_size x patch_size patch, as the single patchifying conv.

    Why: a linear patch embedding must learn an outline separately at every offset inside a
    patch; the convs see it wherever it falls. A tiny ViT at 64 px in 16 px patches trained on
    shapes' labels reached 98% (training scenes) / 72% (unseen shape-colour pairs) in 200 steps
    with this stem, 37% / 2% without (benchmarks/bench_shape_stem.py). Each token sees 31 px, past its patch: MAE's
    masking would leak, so only CLIP offers it.
    """

    def __init__(self, in_chans: int, width: int, patch_size: int):
        num_convs = patch_size.bit_length() - 1
        if patch_size < 2 or 2**num_convs != patch_size:
            raise ValueError(f"a conv stem needs patch_size a power of 2 (>= 2), got {patch_size}")
        channels = [in_chans] + [width >> (num_convs - 1 - i) for i in range(num_convs)]
        if min(channels[1:]) < 1:
            raise ValueError(f"a conv stem of {num_convs} convs needs width >= {2 ** (num_convs - 1)}, got {width}")
        layers: list[nn.Module] = []
        for cin, cout in zip(channels, channels[1:]):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers, nn.Conv2d(width, width, 1))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PyTorch's default init of each conv and BatchNorm (running statistics included)."""
        for m in self:
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.reset_parameters()


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al.) in the timm / MAE layout.

    Arguments (plain values, so a typed config maps onto them 1:1):
        image_size: side of the square input images, in pixels.
        patch_size: side of a patch; image_size must be a multiple of it.
        in_chans: image channels.
        width, depth, num_heads, mlp_ratio: the transformer shape.
        pos_embed: "learned" (a trained parameter, trunc-normal 0.02) or "sincos" (MAE's fixed
            2-D sin-cos, a non-persistent buffer that init_weights recomputes).
        pool: "cls" (the class token, default) or "mean" (the mean of the patch tokens).
        class_token: prepend a learned class token (pool="cls" needs it).
        patch_dropout: FLIP's patch dropout: in training mode, when no keep_indices are given,
            a random fraction of the patches is dropped before the blocks. 0 disables it.
        drop_path_rate: stochastic depth of the last block (rising linearly from 0 at the first).
        output_dim: a linear head from width to output_dim after pooling (0: none, forward
            returns the pooled features); CLIP's image projection, or a classifier.
        head_bias: whether that head has a bias (CLIP's projection has none).
        norm_pre: a LayerNorm on the tokens before the first block (CLIP's ln_pre).
        init: "timm" (trunc-normal 0.02 linears, as timm / MAE) or "clip" (what open_clip's ViT gets:
            PyTorch's default layer init, attention in/out biases zero, class token and positions
            normal with std width ** -0.5).
        stem: "patch" (one patch_size-strided conv, as ViT) or "conv" (ConvStem; its BatchNorm
            normalises over each micro-batch, on each rank).
        norm_eps: the LayerNorms' epsilon: 1e-6 (timm / MAE), 1e-5 in models open_clip trained.

    Attributes the trainer relies on: `blocks` (nn.ModuleList of self-contained Blocks, for
    per-block fully_shard / activation checkpointing), no_weight_decay(), layer_id(name).
    After building on the meta device and `to_empty`, call init_weights().
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        width: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        pos_embed: str = "learned",
        pool: str = "cls",
        class_token: bool = True,
        patch_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        output_dim: int = 0,
        head_bias: bool = True,
        norm_pre: bool = False,
        init: str = "timm",
        stem: str = "patch",
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if pool == "cls" and not class_token:
            raise ValueError("pool='cls' needs class_token=True")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if not 0.0 <= patch_dropout < 1.0:
            raise ValueError(f"patch_dropout must be in [0, 1), got {patch_dropout}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.init = init
        self.image_size, self.patch_size, self.in_chans = image_size, patch_size, in_chans
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.width, self.depth, self.pool_type, self.patch_dropout = width, depth, pool, patch_dropout
        self.num_prefix_tokens = int(class_token)

        self.patch_embed: ConvStem | nn.Conv2d
        if stem == "conv":
            self.patch_embed = ConvStem(in_chans, width, patch_size)
        else:
            self.patch_embed = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, width)) if class_token else None
        pos_shape = (1, self.num_prefix_tokens + self.num_patches, width)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.empty(pos_shape))
        else:  # fixed: not a parameter, not in the checkpoint, recomputed by init_weights
            self.register_buffer("pos_embed", torch.empty(pos_shape), persistent=False)
        # CLIP's ln_pre: the embedded tokens are normalised before the first block.
        self.norm_pre = nn.LayerNorm(width, eps=norm_eps) if norm_pre else nn.Identity()
        self.blocks = make_blocks(width, depth, num_heads, mlp_ratio, drop_path_rate, norm_eps=norm_eps)
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.head = nn.Linear(width, output_dim, bias=head_bias) if output_dim else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter and the fixed position buffer, by `init` (timm / MAE, or open_clip)."""
        if self.init == "clip":
            init_clip_vit_weights(self)
        else:
            init_vit_weights(self)
        if isinstance(self.patch_embed, ConvStem):
            self.patch_embed.reset_parameters()
        else:
            if self.init != "clip":  # MAE: the patch embedding is initialised like a linear layer
                nn.init.xavier_uniform_(self.patch_embed.weight.view(self.width, -1))
            assert self.patch_embed.bias is not None  # made with a bias
            nn.init.zeros_(self.patch_embed.bias)
        std = self.width**-0.5 if self.init == "clip" else 0.02
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=std)
        if isinstance(self.pos_embed, nn.Parameter):
            (nn.init.normal_ if self.init == "clip" else nn.init.trunc_normal_)(self.pos_embed, std=std)
        else:
            init_sincos_(self.pos_embed, self.grid_size, cls_token=self.num_prefix_tokens > 0)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with their position embeddings added: (B, L, width), patches in raster order."""
        if images.shape[1:] != (self.in_chans, self.image_size, self.image_size):
            raise ValueError(
                f"expected images (B, {self.in_chans}, {self.image_size}, {self.image_size}), got {tuple(images.shape)}"
            )
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        # .to: a fixed sin-cos buffer stays float32 when FSDP2 casts the parameters to bf16.
        return x + self.pos_embed[:, self.num_prefix_tokens :].to(x.dtype)

    def forward_features(self, images: torch.Tensor, keep_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised tokens (B, prefix + K, width): [class token,] then the kept patches.

        keep_indices (B, K): the patches (raster indices in [0, L)) to run on, in that order;
        the others never enter the blocks (MAE's visible patches). None: every patch, or in
        training mode with patch_dropout > 0 a random subset (FLIP).
        """
        x = self.embed_patches(images)
        if keep_indices is None and self.training and self.patch_dropout > 0:
            keep_indices = random_masking(x.shape[0], self.num_patches, self.patch_dropout, x.device)[0]
        if keep_indices is not None:
            x = gather_tokens(x, keep_indices)
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
        x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, width): the class token, or the mean of the (kept) patch tokens."""
        if self.pool_type == "cls":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens :].mean(dim=1)

    def forward(self, images: torch.Tensor, keep_indices: torch.Tensor | None = None) -> torch.Tensor:
        """head(pool(forward_features(images))): (B, output_dim), or (B, width) without a head."""
        return self.head(self.pool(self.forward_features(images, keep_indices)))

    def no_weight_decay(self) -> set[str]:
        """Parameter names that get no weight decay: ndim <= 1, cls_token, pos_embed (if learned)."""
        return no_weight_decay_names(self)

    @property
    def num_layers(self) -> int:
        """How many layer-wise lr decay groups layer_id yields: embeddings, each block, head."""
        return self.depth + 2

    def layer_id(self, name: str) -> int:
        """Layer-wise lr decay group of a parameter name (as BEiT/MAE fine-tuning):
        patch_embed / cls_token / pos_embed = 0, blocks.i = i + 1, final norm and head = depth + 1.
        Tolerates wrapper prefixes (e.g. activation checkpointing's) inside the name."""
        match = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
        if match:
            return int(match.group(1)) + 1
        if re.search(r"(?:^|\.)(patch_embed|cls_token|pos_embed)(\.|$)", name):
            return 0
        return self.depth + 1
