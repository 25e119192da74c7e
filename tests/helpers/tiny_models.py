"""Tiny models and inputs that the model tests share."""

import torch

from pretrain_mm.models import MaskingRule, TextTransformer, VisionTransformer, build_model
from pretrain_mm.ops import contrastive_loss

VOCAB, CONTEXT, IMAGE = 64, 16, 32
# Masking for models of VOCAB ids, the last the mask id (as builders.model_vocab_size adds it); 30%, not 15%,
# so that the tiny batches hold enough masked tokens.
MLM_RULE = MaskingRule(rate=0.3, mask_id=VOCAB - 1, vocab_size=VOCAB - 1, pad_id=0, sot_id=1, eot_id=VOCAB - 2)


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    args = dict(image_size=IMAGE, patch_size=8, width=64, depth=2, num_heads=4)
    return VisionTransformer(**{**args, **kwargs}).eval()


def tiny_text(**kwargs):
    torch.manual_seed(0)
    args = dict(vocab_size=VOCAB, context_length=CONTEXT, width=64, depth=2, num_heads=4, output_dim=32)
    return TextTransformer(**{**args, **kwargs}).eval()


def tiny_clip(**kwargs):
    torch.manual_seed(0)
    return build_model("clip", "tiny", image_size=IMAGE, vocab_size=VOCAB, context_length=CONTEXT, **kwargs)


def tiny_coca(**kwargs):
    torch.manual_seed(0)
    return build_model("coca", "tiny", image_size=IMAGE, vocab_size=VOCAB, context_length=CONTEXT, **kwargs)


def tiny_mlm(**kwargs):
    torch.manual_seed(0)
    return build_model("mlm", "tiny", vocab_size=VOCAB, context_length=CONTEXT, **kwargs)


def tiny_mae(**kwargs):
    torch.manual_seed(0)
    return build_model("mae", "tiny", image_size=IMAGE, **kwargs)


def images(n, seed=1):
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def captions(n, seed=2, min_len=3):
    """Token rows as our tokenizer makes them: ids in [1, VOCAB), then pad id 0 up to CONTEXT."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, VOCAB, (n, CONTEXT), generator=g)
    lengths = torch.randint(min_len, CONTEXT + 1, (n,), generator=g)
    text[torch.arange(CONTEXT)[None, :] >= lengths[:, None]] = 0
    return text


def clip_loss(out: dict, kind: str = "softmax", impl: str = "auto") -> torch.Tensor:
    """The one-process contrastive loss of CLIP.forward's outputs (sigmoid uses the logit bias)."""
    bias = out["logit_bias"] if kind == "sigmoid" else None
    return contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"], bias, kind=kind, impl=impl)
