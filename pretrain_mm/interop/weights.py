"""A model's consolidated weights as one safetensors file, with the resolved config that rebuilds it in its header.

A DCP checkpoint directory (train/checkpoint.py) is for resuming your own runs: its `.metadata`
is a pickle, so reading one runs whatever code its author put there. A safetensors file holds
only tensors and strings: reading one someone sent runs no code. Every finished run writes
`<run>/model.safetensors`, evaluation prefers it, and `python -m pretrain_mm.export` shares it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pretrain_mm.builders import model_from_config, pin_model_args
from pretrain_mm.config import Config

MODEL_FILE = "model.safetensors"
CONFIG_KEY, STEP_KEY = "pretrain_mm.config", "pretrain_mm.step"


def save_weights(path, state: dict[str, torch.Tensor], config: dict | None = None, step: int | None = None) -> Path:
    """Write `state` (plain tensors) to `path`, with the resolved config (a dict, as config.yaml) and
    the step in the header; written aside and renamed, so a reader never sees half a file."""
    path = Path(path)
    tensors = {name: value.detach().cpu().contiguous() for name, value in state.items()}
    metadata = {"format": "pt"}
    if config is not None:
        metadata[CONFIG_KEY] = json.dumps(config)
    if step is not None:
        metadata[STEP_KEY] = str(int(step))
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_header(path) -> dict[str, str]:
    """The header's metadata (strings only); a file that is not safetensors is a ValueError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as safetensors: {error}") from error


def load_weights(path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as safetensors: {error}") from error


def state_mismatch(state: Mapping[str, Any], expected: Mapping[str, Any], where: str = "the file") -> str:
    """What keeps `state` (tensors, or anything with a `shape` or `size`: DCP's metadata) from loading into a
    model whose state dict is `expected` ("" when nothing): names only in either, and shared names of other
    shapes (load_state_dict would say it less plainly; DCP's load would quietly fill only the shared ones)."""

    def shape(value: Any) -> tuple[int, ...] | None:  # a tensor's shape, DCP's TensorStorageMetadata.size
        found = value.shape if hasattr(value, "shape") else getattr(value, "size", None)
        return tuple(found) if found is not None else None

    extra, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    wrong = sorted(k for k in set(state) & set(expected) if shape(state[k]) != shape(expected[k]))
    if not (extra or missing or wrong):
        return ""
    return f"weights only in {where} {extra[:4]}, only in the model {missing[:4]}, of other shapes {wrong[:4]}"


def config_of(path, header: dict[str, str] | None = None) -> DictConfig:
    """The resolved config in a weights file's header (a ValueError naming the file when it has none)."""
    header = read_header(path) if header is None else header
    if CONFIG_KEY not in header:
        raise ValueError(
            f"{path} has no pretrain_mm config in its header (key {CONFIG_KEY!r}): it was not "
            "written by pretrain_mm; an open_clip file loads with model.init_from instead"
        )
    return OmegaConf.create(pin_model_args(json.loads(header[CONFIG_KEY])))


def weights_file_of(path: Path) -> Path | None:
    """The safetensors file to read for `path`: itself, or a run directory's model.safetensors
    (written when its training finished); None for a checkpoint directory (trusted DCP files)."""
    if path.is_file() and path.suffix == ".safetensors":
        return path
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    return None


def load_weights_model(path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, DictConfig, int | None]:
    """(model in eval mode, its config, its step) from a file save_weights wrote. The model is built
    from the header's config, its vocabulary read off the token embedding (no tokenizer needed)."""
    header = read_header(path)
    cfg = config_of(path, header)
    state = load_weights(path)
    vocab = int(state["text.token_embedding.weight"].shape[0]) if "text.token_embedding.weight" in state else 0
    model = model_from_config(cast(Config, cfg), vocab)
    mismatch = state_mismatch(state, model.state_dict())
    if mismatch:
        raise ValueError(f"{path} does not match the model its config builds: {mismatch}")
    model.load_state_dict(state)
    step = header.get(STEP_KEY)
    return model.to(device).eval(), cfg, int(step) if step is not None else None
