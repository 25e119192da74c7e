"""Checkpoints with torch.distributed.checkpoint: written aside, then renamed into place.

A checkpoint is the directory `<run>/checkpoints/step_<N>/`: the model and optimiser
(sharded, through get_state_dict / set_state_dict, so FSDP2 and one process read each
other's), the schedule, the step and the data position, plus one `rank<r>.pt` of RNG
states per rank. It is written to `step_<N>.tmp/` and renamed only when every rank has
finished, so a crash mid-save never replaces or damages the last good one; `latest()`
sees only complete ones. The newest `keep` are kept.
"""

import contextlib
import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pretrain_mm.train.distributed import DistInfo, barrier

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_complete(path: Path) -> bool:
    return path.is_dir() and STEP_DIR.match(path.name) is not None and (path / ".metadata").is_file()


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory, or a run directory / its checkpoints/ (then the newest in it)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist")
    if is_complete(path):
        return path
    for folder in (path, path / "checkpoints"):
        found = sorted((p for p in folder.glob("step_*") if is_complete(p)), key=lambda p: int(p.name[5:]))
        if found:
            return found[-1]
    raise ValueError(f"{path} holds no complete checkpoint (a step_<N>/ directory with a .metadata file); "
                     "pass a run directory or one of its checkpoints/step_<N>")



@contextlib.contextmanager
def one_process_quietly():
    """DCP warns when torch.distributed is not initialised that it assumes one process: with
    one process that is what we mean, so the warning is only noise in the run's log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield

class Checkpointer:
    def __init__(self, directory, info: DistInfo, keep: int = 2):
        self.directory, self.info, self.keep = Path(directory), info, keep

    def complete(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted((p for p in self.directory.iterdir() if is_complete(p)), key=lambda p: int(p.name[5:]))

    def latest(self) -> Optional[Path]:
        found = self.complete()
        return found[-1] if found else None

    def save(self, step: int, model, optimizer, extra: dict) -> Path:
        final, tmp = self.directory / f"step_{step:08d}", self.directory / f"step_{step:08d}.tmp"
        if final.exists():
            raise RuntimeError(f"checkpoint {final} already exists; refusing to overwrite it")
        if self.info.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a save that crashed: ours, incomplete, never renamed
                shutil.rmtree(tmp)
        barrier(self.info)
        model_state, optim_state = get_state_dict(model, optimizer)
        with one_process_quietly():
            dcp.save({"model": model_state, "optim": optim_state, "extra": dict(extra)}, checkpoint_id=str(tmp))
        torch.save(rng_state(), tmp / f"rank{self.info.rank}.pt")
        barrier(self.info)
        if self.info.is_main:
            os.replace(tmp, final)
            for old in self.complete()[:-self.keep] if self.keep > 0 else []:
                shutil.rmtree(old)
        barrier(self.info)
        return final

    def load(self, path, model, optimizer, extra_template: dict) -> dict:
        """Restores model, optimiser and this rank's RNG in place; returns the saved extras."""
        path = resolve_checkpoint(path)
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state, "extra": dict(extra_template)}
        with one_process_quietly():
            dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        rng_file = path / f"rank{self.info.rank}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            log.warning("%s has no RNG state for rank %d (different world size?); continuing without it",
                        path, self.info.rank)
        return state["extra"]


def load_model_weights(path, model) -> Path:
    """Only the model's weights (for evaluation), from a checkpoint or a run directory."""
    path = resolve_checkpoint(path)
    model_state, _ = get_state_dict(model, [])
    state = {"model": model_state}
    try:
        with one_process_quietly():
            dcp.load(state, checkpoint_id=str(path))
    except (Exception, CheckpointException) as error:  # corrupt or foreign files (CheckpointException is a BaseException)
        raise ValueError(f"cannot read model weights from {path}: {error}") from error
    set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
    return path
