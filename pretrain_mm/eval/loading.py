"""The model to evaluate: rebuilt from a run's config.yaml and its checkpoint, unsharded, or freshly initialised."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

# builders: the one rule (shared with the trainer) from a config to its tokenizer and model.
from pretrain_mm.builders import model_from_config, model_vocab, pin_model_args
# The one import from train (design.md allows it): checkpoints are found and read one way only.
from pretrain_mm.train.checkpoint import load_model_weights, resolve_checkpoint


def random_model(cfg, seed: int, device: torch.device) -> torch.nn.Module:
    """The same architecture, freshly initialised from `seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_from_config(cfg, model_vocab(cfg)).to(device).eval()


def run_dir_of(checkpoint: Path) -> Path:
    """<run>/checkpoints/step_<N> -> <run>."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def load_run_config(checkpoint: Path) -> DictConfig:
    """The resolved config.yaml the trainer wrote into the checkpoint's run directory."""
    path = run_dir_of(checkpoint) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: evaluating {checkpoint} needs the config.yaml of its run "
                         "(written by the trainer next to checkpoints/) to rebuild the model")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as error:  # a damaged file: say which
        raise ValueError(f"cannot read {path}: {error}") from error
    return OmegaConf.create(pin_model_args(loaded, legacy=True))  # a run from before they were written in


def load_checkpoint_model(path, device: torch.device) -> tuple[torch.nn.Module, DictConfig, Path]:
    """(model with the checkpoint's weights, in eval mode, the run's config, the checkpoint dir) from a
    run directory or a checkpoint directory. A missing or damaged one is a ValueError naming it."""
    checkpoint = resolve_checkpoint(path)
    run_cfg = load_run_config(checkpoint)
    model = model_from_config(run_cfg, model_vocab(run_cfg))
    load_model_weights(checkpoint, model)  # a damaged checkpoint: ValueError naming it
    return model.to(device).eval(), run_cfg, checkpoint


def unsharded(model: torch.nn.Module, cfg, device: torch.device) -> torch.nn.Module:
    """A plain copy of an FSDP2-sharded model (its full weights gathered onto every rank), or the
    model itself. Evaluation calls encode_image / encode_text, which FSDP2's hooks do not cover,
    and runs each rank on different data."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model.eval()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    plain = model_from_config(cfg, model_vocab(cfg))
    plain.load_state_dict(state)
    return plain.to(device).eval()
