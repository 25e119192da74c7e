"""Named model sizes (tiny for CPU up to ViT-H/14) and `build_model`, the one way configs build a model."""

import inspect

from pretrain_mm.models.clip import CLIP
from pretrain_mm.models.coca import CoCa
from pretrain_mm.models.mae import MAE
from pretrain_mm.models.mlm import MaskedLanguageModel

# One row per size, keyed by the constructor argument names of CLIP, CoCa and MAE; build_model gives
# each constructor the keys it takes. The shapes are the papers': ViT-S/B/L/H (Dosovitskiy et al.,
# DeiT for S), CLIP's text towers and embed dims as open_clip's ViT-*-* configs, MAE's decoder
# (512 wide, 8 deep, 16 heads), CoCa's multimodal decoder as open_clip's coca_ViT-B/L configs (12
# blocks at the text width; half the text tower's depth below base). MAE's own ViT-L and ViT-H use
# patch 16 and 14: pass patch_size.
SIZES = {
    # CPU size for 32-64 px images: 16-64 patches, a few seconds per hundred steps.
    "tiny": dict(
        patch_size=8,
        vision_width=192,
        vision_depth=4,
        vision_heads=3,
        text_width=128,
        text_depth=4,
        text_heads=4,
        embed_dim=128,
        decoder_width=128,
        decoder_depth=2,
        decoder_heads=4,
        caption_depth=2,
        caption_heads=4,
    ),
    "small": dict(
        patch_size=16,
        vision_width=384,
        vision_depth=12,
        vision_heads=6,
        text_width=384,
        text_depth=12,
        text_heads=6,
        embed_dim=384,
        decoder_width=256,
        decoder_depth=4,
        decoder_heads=8,
        caption_depth=6,
        caption_heads=6,
    ),
    "base": dict(
        patch_size=16,
        vision_width=768,
        vision_depth=12,
        vision_heads=12,
        text_width=512,
        text_depth=12,
        text_heads=8,
        embed_dim=512,
        decoder_width=512,
        decoder_depth=8,
        decoder_heads=16,
        caption_depth=12,
        caption_heads=8,
    ),
    "large": dict(
        patch_size=14,
        vision_width=1024,
        vision_depth=24,
        vision_heads=16,
        text_width=768,
        text_depth=12,
        text_heads=12,
        embed_dim=768,
        decoder_width=512,
        decoder_depth=8,
        decoder_heads=16,
        caption_depth=12,
        caption_heads=12,
    ),
    "huge": dict(
        patch_size=14,
        vision_width=1280,
        vision_depth=32,
        vision_heads=16,
        text_width=1024,
        text_depth=24,
        text_heads=16,
        embed_dim=1024,
        decoder_width=512,
        decoder_depth=8,
        decoder_heads=16,
        caption_depth=12,
        caption_heads=16,
    ),
}

MODEL_KINDS = {"clip": CLIP, "coca": CoCa, "mae": MAE, "mlm": MaskedLanguageModel}


def constructor_arguments(cls: type) -> list[str]:
    """The named arguments of cls's constructor, and its base class's where it passes **kwargs on (CoCa's
    to CLIP)."""
    names: list[str] = []
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters.values()  # type: ignore[misc]
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def model_arguments(kind: str, size: str, **overrides) -> dict:
    """The constructor arguments build_model would pass: the size's row (the keys `kind` takes),
    updated by the overrides. An unknown kind, size or argument name is a ValueError."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    if size not in SIZES:
        raise ValueError(f"model size must be one of {list(SIZES)}, got {size!r}")
    accepted = constructor_arguments(MODEL_KINDS[kind])
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(f"{MODEL_KINDS[kind].__name__} takes no argument(s) {unknown}; it takes {list(accepted)}")
    arguments = {k: v for k, v in SIZES[size].items() if k in accepted}
    arguments.update(overrides)
    return arguments


def build_model(
    kind: str, size: str, image_size: int = 224, vocab_size: int | None = None, context_length: int = 77, **overrides
):
    """A CLIP, CoCa, MAE or text-only MaskedLanguageModel of a named size.

    kind: "clip", "coca", "mae" or "mlm". size: a key of SIZES ("tiny", "small", "base", "large", "huge").
    image_size: image side in pixels (ignored for mlm). vocab_size, context_length: the tokenizer's (CLIP,
    CoCa, mlm; vocab_size is required there, both are ignored for MAE). overrides: any other constructor
    argument of CLIP / CoCa / MAE by name (patch_size=16, loss_kind="sigmoid", mask_ratio=0.9, ...).

    Build under `with torch.device("meta"):` to get shapes without memory, then `to_empty` and
    `init_weights()` on the real device.
    """
    accepted = constructor_arguments(MODEL_KINDS[kind]) if kind in MODEL_KINDS else []
    extra = {"image_size": image_size} if "image_size" in accepted else {}
    if "vocab_size" in accepted:  # a text tower
        if vocab_size is None:
            raise ValueError(f"build_model({kind!r}, ...) needs vocab_size (the tokenizer's)")
        extra.update(vocab_size=vocab_size, context_length=context_length)
    arguments = model_arguments(kind, size, **extra, **overrides)
    return MODEL_KINDS[kind](**arguments)
