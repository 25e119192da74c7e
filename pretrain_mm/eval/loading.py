"""The model to evaluate: a safetensors file, a run (its model.safetensors, else its newest checkpoint), or a
fresh one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf

# builders: the one rule (shared with the trainer) from a config to its tokenizer and model.
from pretrain_mm.builders import model_from_config, pin_model_args
from pretrain_mm.config import Config
from pretrain_mm.interop.init_from import load_open_clip_weights, read_open_clip, with_open_clip_architecture
from pretrain_mm.interop.weights import MODEL_FILE, load_weights_model, weights_file_of

# The one import from train (design.md allows it): checkpoints are found and read one way only.
from pretrain_mm.train.checkpoint import load_model_weights, resolve_checkpoint

log = logging.getLogger(__name__)


def random_model(cfg, seed: int, device: torch.device) -> torch.nn.Module:
    """The same architecture, freshly initialised from `seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_from_config(cfg).to(device).eval()


def run_dir_of(checkpoint: Path) -> Path:
    """<run>/checkpoints/step_<N> -> <run>."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def load_run_config(checkpoint: Path) -> DictConfig:
    """The resolved config.yaml the trainer wrote into the checkpoint's run directory."""
    path = run_dir_of(checkpoint) / "config.yaml"
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: evaluating {checkpoint} needs the config.yaml of its run "
            "(written by the trainer next to checkpoints/) to rebuild the model"
        )
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as error:  # a damaged file: say which
        raise ValueError(f"cannot read {path}: {error}") from error
    return OmegaConf.create(pin_model_args(cast(dict, loaded), legacy=True))  # a run from before they were written in


def load_checkpoint_model(path, device: torch.device) -> tuple[torch.nn.Module, DictConfig, Path]:
    """(model with its weights, in eval mode, its config, the file or checkpoint dir read) from a
    .safetensors file, a run directory (its model.safetensors when training finished, else its
    newest checkpoint) or a checkpoint directory. Safetensors never run code; a checkpoint
    directory's DCP .metadata is a pickle (trusted runs only). A missing or damaged one is a
    ValueError naming it."""
    path = Path(path).expanduser()
    weights = weights_file_of(path)
    if weights is not None:
        model, cfg, step = load_weights_model(weights, device)
        newest = newest_checkpoint_step(path)
        if newest is not None and step is not None and newest > step:
            log.warning(
                "%s is from step %d, but %s holds a newer checkpoint (step %d), from training that did not "
                "finish: evaluating the file; pass the checkpoint directory to evaluate that (trusted runs "
                "only: its DCP metadata is a pickle)",
                weights,
                step,
                path,
                newest,
            )
        return model, cfg, weights
    checkpoint = resolve_checkpoint(path)
    if checkpoint != path:  # a run directory without model.safetensors: its training never finished
        log.warning(
            "%s has no %s (its training did not finish): reading the DCP checkpoint %s, whose .metadata is "
            "a pickle; do this only for runs you trust",
            path,
            MODEL_FILE,
            checkpoint,
        )
    run_cfg = load_run_config(checkpoint)
    model = model_from_config(cast(Config, run_cfg))
    load_model_weights(checkpoint, model)  # a damaged checkpoint: ValueError naming it
    return model.to(device).eval(), run_cfg, checkpoint


def load_open_clip_model(cfg, path, device: torch.device) -> tuple[torch.nn.Module, DictConfig]:
    """(our CLIP holding open_clip weights, in eval mode, cfg with their architecture) for a file or
    directory that is_open_clip_source accepts; its config from cfg.model.init_from_config or beside it."""
    model_cfg, state = read_open_clip(path, cfg.model.init_from_config)
    run_cfg = with_open_clip_architecture(cfg, model_cfg)
    model = model_from_config(run_cfg)
    load_open_clip_weights(model, state, path)
    return model.to(device).eval(), run_cfg


def newest_checkpoint_step(run: Path) -> int | None:
    try:
        return int(resolve_checkpoint(run).name.removeprefix("step_")) if run.is_dir() else None
    except ValueError:  # no checkpoint (a directory holding only exported weights)
        return None


def teacher_model(source, device: torch.device) -> torch.nn.Module | None:
    """A distilled run's teacher (distill.teacher: a model.safetensors or a run directory holding one), in eval
    mode; None, said in the log, when it is no longer there (the student is evaluated without it)."""
    weights = weights_file_of(Path(str(source)).expanduser())
    if weights is None:
        log.warning("distill.teacher=%s: no model.safetensors there any more; evaluating without the teacher", source)
        return None
    return load_weights_model(weights, device)[0]
