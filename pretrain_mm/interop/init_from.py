"""Start from open_clip weights: `model.init_from=<file or dir>` for training, `eval.checkpoint=<file>` for evaluation.

The weights: a `.safetensors` file, or a `.pt` / `.bin` as open_clip's trainer writes them
({"state_dict": ..., "optimizer": ...}), read with torch.load(weights_only=True) so that no code
in them runs; or a directory in open_clip's local-dir / Hugging Face layout (open_clip_config.json
and the weights). The config: `model.init_from_config` (a JSON file, with or without its
"model_cfg" wrapper, or the name of one of open_clip's built-in configs such as ViT-B-32),
else the open_clip_config.json beside the weights. Our CLIP takes the architecture from it
(model.args); what ours cannot be is refused by name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pretrain_mm.config import plain_config
from pretrain_mm.interop.openclip import from_open_clip_state
from pretrain_mm.interop.weights import CONFIG_KEY, load_weights, read_header, state_mismatch

log = logging.getLogger(__name__)
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)
# open_clip options that only one value of matches our towers: (section, key) -> that value.
MUST_BE = {
    ("vision_cfg", k): v
    for k, v in dict(
        ls_init_value=None,
        attentional_pool=False,
        final_ln_after_pool=False,
        pos_embed_type="learnable",
        act_kwargs=None,
        block_type=None,
        qk_norm=False,
        scaled_cosine_attn=False,
        scale_heads=False,
        scale_attn_inner=False,
        scale_attn=False,
        scale_fc=False,
        timm_model_name=None,
    ).items()
}
MUST_BE.update(
    {
        ("text_cfg", k): v
        for k, v in dict(
            hf_model_name=None,
            hf_tokenizer_name=None,
            ls_init_value=None,
            embed_cls=False,
            no_causal_mask=False,
            final_ln_after_pool=False,
            proj_bias=False,
            proj_type="linear",
            act_kwargs=None,
            block_type=None,
            qk_norm=False,
        ).items()
    }
)
MUST_BE.update({("model_cfg", "quick_gelu"): False, ("model_cfg", "custom_text"): False})


def is_open_clip_source(path) -> bool:
    """A file or directory to read with read_open_clip rather than as a pretrain_mm run."""
    path = Path(path)
    if path.is_dir():
        return (path / CONFIG_FILE).is_file()
    if path.suffix in (".pt", ".bin", ".pth"):
        return True
    return path.suffix == ".safetensors" and path.is_file() and CONFIG_KEY not in read_header(path)


def read_open_clip(source, config: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(open_clip model_cfg, state dict in open_clip's names) of `source` (see the module doc)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(f"model.init_from: {path} does not exist")
    weights = path
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise ValueError(f"model.init_from: {path} holds none of {list(WEIGHT_FILES)}")
        weights = found[0]
    if weights.suffix == ".safetensors":
        state = load_weights(weights)
    else:
        try:
            loaded = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a pickle that needs code, or not a torch file at all
            raise ValueError(
                f"cannot read {weights} safely as open_clip weights (torch.load weights_only): "
                f"{str(error).splitlines()[0]}"
            ) from error
        found_state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
        if not isinstance(found_state, dict):
            raise ValueError(f"{weights} holds no state dict")
        state = found_state
    return _model_cfg(config, weights), state  # DDP's "module." prefixes: from_open_clip_state drops them


def _model_cfg(config: str | None, weights: Path) -> dict:
    if config is None:
        candidate = weights.parent / CONFIG_FILE
        if not candidate.is_file():
            raise ValueError(
                f"model.init_from: no {CONFIG_FILE} beside {weights}; set model.init_from_config to "
                "its open_clip config (a JSON file or an open_clip model name such as ViT-B-32)"
            )
        config = str(candidate)
    if Path(config).is_file():
        try:
            loaded = json.loads(Path(config).read_text())
        except ValueError as error:
            raise ValueError(f"model.init_from_config: cannot read {config} as JSON: {error}") from error
        return loaded.get("model_cfg", loaded)
    import open_clip

    found = open_clip.get_model_config(config)
    if found is None:
        raise ValueError(f"model.init_from_config={config!r} is neither a file nor an open_clip model name")
    return found


def clip_args(model_cfg: dict) -> dict:
    """Our CLIP's constructor arguments (plus image_size, context_length, vocab_size) for an open_clip
    model_cfg; a ValueError naming the first option our towers cannot match."""
    sections = {
        "model_cfg": model_cfg,
        "vision_cfg": model_cfg.get("vision_cfg", {}),
        "text_cfg": model_cfg.get("text_cfg", {}),
    }
    for (section, key), value in MUST_BE.items():
        got = sections[section].get(key, value)
        if got != value and not (value is None and got == {}):
            raise ValueError(
                f"the open_clip config sets {section}.{key}={got!r}; pretrain_mm's CLIP has no such "
                f"option (only {value!r}), so it cannot hold these weights"
            )
    v, t = sections["vision_cfg"], sections["text_cfg"]
    if isinstance(v.get("layers", 12), (list, tuple)) or isinstance(v.get("image_size", 224), (list, tuple)):
        raise ValueError(
            "the open_clip config describes a ResNet or non-square image tower; pretrain_mm's is a square ViT"
        )
    if v.get("mlp_ratio", 4.0) != t.get("mlp_ratio", 4.0):
        raise ValueError(
            f"the open_clip towers have MLP ratios {v.get('mlp_ratio')} and {t.get('mlp_ratio')}; "
            "pretrain_mm's CLIP has one for both"
        )
    if t.get("pool_type", "argmax") not in ("argmax", "eos") or (t.get("norm_kwargs") or {}).get("eps", 1e-5) != 1e-5:
        raise ValueError(
            "the open_clip text tower pools other than at the end-of-text token or has a LayerNorm eps "
            "other than 1e-5; pretrain_mm's cannot"
        )
    width = v.get("width", 768)
    pools = {"tok": "cls", "avg": "mean"}
    if v.get("pool_type", "tok") not in pools:
        raise ValueError(f"the open_clip image tower pools by {v.get('pool_type')!r}; pretrain_mm's by {list(pools)}")
    return {
        "embed_dim": model_cfg["embed_dim"],
        "image_size": v.get("image_size", 224),
        "patch_size": v.get("patch_size", 16),
        "vision_width": width,
        "vision_depth": v.get("layers", 12),
        "vision_heads": width // v.get("head_width", 64),
        "vision_norm_pre": not v.get("no_ln_pre", False),
        "vision_pool": pools[v.get("pool_type", "tok")],
        "vision_norm_eps": (v.get("norm_kwargs") or {}).get("eps", 1e-5),
        "vision_stem": "patch",
        "vision_pos_embed": "learned",
        "mlp_ratio": v.get("mlp_ratio", 4.0),
        "context_length": t.get("context_length", 77),
        "vocab_size": t.get("vocab_size", 49408),
        "text_width": t.get("width", 512),
        "text_depth": t.get("layers", 12),
        "text_heads": t.get("heads", 8),
    }


def with_open_clip_architecture(cfg, model_cfg: dict):
    """`cfg` with model.args, data.image_size and data.context_length set to the open_clip model's:
    the weights decide the architecture. What this replaces (an experiment's patch size, say) is logged."""
    args = clip_args(model_cfg)
    data = {"image_size": args.pop("image_size"), "context_length": args.pop("context_length")}
    args.pop("vocab_size")  # the tokenizer's: load_open_clip_weights names a mismatch
    out = OmegaConf.create(plain_config(cfg))
    given = dict(out.model.get("args") or {})
    replaced = {f"model.args.{k}": (given[k], v) for k, v in args.items() if k in given and given[k] != v}
    replaced.update({f"data.{k}": (out.data[k], v) for k, v in data.items() if out.data[k] != v})
    if replaced:
        log.warning(
            "the open_clip model's architecture replaces %s",
            ", ".join(f"{k}={old!r} by {new!r}" for k, (old, new) in replaced.items()),
        )
    out.model.args = {**given, **args}
    out.data.image_size, out.data.context_length = data["image_size"], data["context_length"]
    return out


def load_open_clip_weights(model, state: dict[str, torch.Tensor], source) -> None:
    """Copy open_clip weights into our model built by with_open_clip_architecture; a ValueError
    naming what does not fit (another vocabulary: the tokenizer differs from the one they were trained with)."""
    ours = from_open_clip_state(state, model)
    mismatch = state_mismatch(ours, model.state_dict())
    if mismatch:
        raise ValueError(
            f"the open_clip weights in {source} do not fit the model: {mismatch} (a vocabulary of "
            "another size means another tokenizer: set data.tokenizer to the one they were trained "
            "with, e.g. clip)"
        )
    model.load_state_dict(ours)
