"""The models: ViT, CLIP's text transformer, CLIP / SigLIP, CoCa, MAE, masked language modelling; plain nn.Modules,
no distributed code.

Weight decay: every model's `no_weight_decay()` names the parameters to exclude: all with
ndim <= 1 (biases, LayerNorm, logit_scale, logit_bias) and those named pos_embed, cls_token,
mask_token, positional_embedding (layers.NO_DECAY_NAMES). Token embeddings are decayed.
Sharding: each model's transformer blocks are `Block` instances in nn.ModuleLists
(`visual.blocks`, `text.blocks`, `encoder.blocks`, `decoder_blocks`: MAE's and CoCa's decoders).
"""

from pretrain_mm.models.clip import CLIP
from pretrain_mm.models.coca import CoCa
from pretrain_mm.models.layers import Block, no_weight_decay_names, random_masking, sincos_pos_embed_2d
from pretrain_mm.models.mae import MAE, patchify, unpatchify
from pretrain_mm.models.mlm import MaskedLanguageModel, MaskingRule, mask_tokens
from pretrain_mm.models.sizes import SIZES, build_model, model_arguments
from pretrain_mm.models.text import TextTransformer
from pretrain_mm.models.vit import VisionTransformer

__all__ = [
    "Block",
    "CLIP",
    "CoCa",
    "MAE",
    "MaskedLanguageModel",
    "MaskingRule",
    "SIZES",
    "TextTransformer",
    "VisionTransformer",
    "build_model",
    "mask_tokens",
    "model_arguments",
    "no_weight_decay_names",
    "patchify",
    "random_masking",
    "sincos_pos_embed_2d",
    "unpatchify",
]
