"""Our CLIP / SigLIP in open_clip's layout: its model config and its state dict, and back.

Our towers are open_clip's VisionTransformer / TextTransformer with other parameter names, so
the weights move by renaming, with three exact adjustments:
- open_clip's patch embedding has no bias; ours adds one vector to every patch token, which is
  the same as adding it to the patch rows of the position table (folded on export; on import our
  bias is zero);
- our projections are Linear weights (out, in), open_clip's are matrices (in, out);
- logit_scale / logit_bias are 1-element vectors here (FSDP2 cannot shard scalars), scalars there.
What open_clip's configs cannot express is refused by name: the conv stem (vit.ConvStem) and
BatchNorm have no open_clip counterpart.
"""

from __future__ import annotations

import re
from typing import cast

import torch

from pretrain_mm.data.transforms import CLIP_MEAN, CLIP_STD
from pretrain_mm.models import CLIP, CoCa
from pretrain_mm.models.layers import Block
from pretrain_mm.models.vit import ConvStem

# (our name, open_clip's name) for the parameters that are only renamed; blocks by regex below.
RENAMES = (
    ("visual.patch_embed.weight", "visual.conv1.weight"),
    ("visual.norm_pre.weight", "visual.ln_pre.weight"),
    ("visual.norm_pre.bias", "visual.ln_pre.bias"),
    ("visual.norm.weight", "visual.ln_post.weight"),
    ("visual.norm.bias", "visual.ln_post.bias"),
    ("text.token_embedding.weight", "token_embedding.weight"),
    ("text.positional_embedding", "positional_embedding"),
    ("text.norm.weight", "ln_final.weight"),
    ("text.norm.bias", "ln_final.bias"),
)
BLOCK_PARTS = (
    ("norm1", "ln_1"),
    ("attn.qkv.weight", "attn.in_proj_weight"),
    ("attn.qkv.bias", "attn.in_proj_bias"),
    ("attn.proj", "attn.out_proj"),
    ("norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
)
BLOCKS = (("visual.blocks.", "visual.transformer.resblocks."), ("text.blocks.", "transformer.resblocks."))


def _check_exportable(model) -> None:
    if not isinstance(model, CLIP) or isinstance(model, CoCa):
        raise ValueError(
            f"only a CLIP / SigLIP model has an open_clip form here, not {type(model).__name__} (open_clip's CoCa "
            "names and shapes its decoder otherwise); export it with --format safetensors"
        )
    if isinstance(model.visual.patch_embed, ConvStem):
        raise ValueError(
            "this CLIP's image tower has a conv stem (model.args.vision_stem=conv), which no open_clip "
            "config can express; export it with --format safetensors, or train with "
            "model.args.vision_stem=patch for open_clip"
        )
    if model.visual.cls_token is None:
        raise ValueError("this CLIP's image tower has no class token, which open_clip's VisionTransformer always has")


def _rename(name: str, to_open_clip: bool) -> str | None:
    """Our name -> open_clip's (or back); None for names with no plain counterpart."""
    pairs = RENAMES if to_open_clip else tuple((b, a) for a, b in RENAMES)
    for src, dst in pairs:
        if name == src:
            return dst
    for ours, theirs in BLOCKS:
        src_prefix, dst_prefix = (ours, theirs) if to_open_clip else (theirs, ours)
        match = re.match(re.escape(src_prefix) + r"(\d+)\.(.+)$", name)
        if match:
            index, rest = match.groups()
            for a, b in BLOCK_PARTS:
                src, dst = (a, b) if to_open_clip else (b, a)
                if rest == src or rest.startswith(src + "."):
                    return f"{dst_prefix}{index}.{dst}{rest[len(src) :]}"
    return None


def open_clip_config(model: CLIP) -> dict:
    """open_clip's `model_cfg` (the open_clip_config.json's) for this model."""
    _check_exportable(model)
    v, t = model.visual, model.text
    v_block, t_block = cast(Block, v.blocks[0]), cast(Block, t.blocks[0])
    cfg = {
        "embed_dim": int(cast(torch.nn.Linear, v.head).weight.shape[0]),  # CLIP's image tower projects
        "vision_cfg": {
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "width": v.width,
            "layers": v.depth,
            "head_width": v.width // v_block.attn.num_heads,
            "mlp_ratio": v_block.mlp.fc1.out_features / v.width,
            "no_ln_pre": isinstance(v.norm_pre, torch.nn.Identity),
            "pool_type": "tok" if v.pool_type == "cls" else "avg",
            "norm_kwargs": {"eps": v.norm.eps},  # ours 1e-6 (timm / MAE), open_clip's default 1e-5
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.token_embedding.num_embeddings,
            "width": t.width,
            "heads": t_block.attn.num_heads,
            "layers": t.depth,
            "mlp_ratio": t_block.mlp.fc1.out_features / t.width,
            "pad_id": t.pad_id,
            # Our tokenizers put the end-of-text id last in the vocabulary, as CLIP's: its argmax
            # is the last non-pad position, where our text tower reads its features.
            "pool_type": "argmax",
            "norm_kwargs": {"eps": t.norm.eps},
        },
    }
    if model.logit_bias is not None:
        cfg["init_logit_bias"] = float(model.logit_bias.detach().reshape(()))
    return cfg


def to_open_clip(model: CLIP) -> tuple[dict, dict[str, torch.Tensor]]:
    """(open_clip_config.json's content, state dict in open_clip's names): what open_clip.create_model
    ("local-dir:...") builds and loads into a model with the same embeddings."""
    config = {
        "model_cfg": open_clip_config(model),
        "preprocess_cfg": {
            "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    ours = {k: v.detach() for k, v in model.state_dict().items()}
    ours.setdefault("visual.pos_embed", model.visual.pos_embed.detach())  # a fixed sin-cos table is a buffer
    state = {}
    for name, value in ours.items():
        renamed = _rename(name, to_open_clip=True)
        if renamed is not None:
            state[renamed] = value.clone()
    positions = ours["visual.pos_embed"][0].clone()
    positions[1:] += ours["visual.patch_embed.bias"]  # the patch bias, folded into the patch rows
    state["visual.positional_embedding"] = positions
    state["visual.class_embedding"] = ours["visual.cls_token"].reshape(-1).clone()
    state["visual.proj"] = ours["visual.head.weight"].T.contiguous()
    state["text_projection"] = ours["text.proj.weight"].T.contiguous()
    state["logit_scale"] = ours["logit_scale"].reshape(())
    if "logit_bias" in ours:
        state["logit_bias"] = ours["logit_bias"].reshape(())
    return config, state


def from_open_clip_state(state: dict[str, torch.Tensor], model: CLIP) -> dict[str, torch.Tensor]:
    """Our state dict for `model` from an open_clip state dict of the same shape (to_open_clip's
    inverse; the patch bias comes back as zero, its value folded into the position table)."""
    _check_exportable(model)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ours = {}
    for name, value in state.items():
        renamed = _rename(name, to_open_clip=False)
        if renamed is not None:
            ours[renamed] = value
    ours["visual.pos_embed"] = state["visual.positional_embedding"][None]
    ours["visual.cls_token"] = state["visual.class_embedding"].reshape(1, 1, -1)
    ours["visual.patch_embed.bias"] = torch.zeros(model.visual.width, dtype=state["visual.conv1.weight"].dtype)
    ours["visual.head.weight"] = state["visual.proj"].T.contiguous()
    ours["text.proj.weight"] = state["text_projection"].T.contiguous()
    ours["logit_scale"] = state["logit_scale"].reshape(1)
    if model.logit_bias is not None:
        if "logit_bias" not in state:
            raise ValueError("this SigLIP model needs a logit_bias, which the open_clip weights do not have")
        ours["logit_bias"] = state["logit_bias"].reshape(1)
    if not isinstance(model.visual.pos_embed, torch.nn.Parameter):  # a fixed sin-cos table is not a weight
        table = ours.pop("visual.pos_embed")
        if not torch.allclose(table, model.visual.pos_embed.to(table.dtype), atol=1e-6):
            raise ValueError(
                "the open_clip weights have learned position embeddings; this model's are a fixed "
                "sin-cos table (model.args.vision_pos_embed=sincos): load them into a learned one"
            )
    return ours
