"""Checkpoints with torch.distributed.checkpoint: written aside, then renamed into place.

A checkpoint is the directory `<run>/checkpoints/step_<N>/`: the model and optimiser
(sharded, through get_state_dict / set_state_dict, so FSDP2 and one process read each
other's), the schedule and the step, plus one `rank<r>.pt` per rank with what is that rank's
own: its RNG states and its data position (the loader's state: epoch, per-worker position, skip
counts). Rank files hold only tensors, numbers and strings and are read with
`torch.load(weights_only=True)`, but DCP's own `.metadata` is a pickle: a checkpoint directory
is for resuming your own runs only. A finished run also writes `<run>/model.safetensors`
(`write_model_file`), which is safe to read from anyone and what evaluation prefers. A
checkpoint is written to `step_<N>.tmp/` and renamed only when every rank has finished, so a
crash mid-save never replaces or damages the last good one; `latest()` sees only complete ones. The newest `keep`
are kept.
"""

import contextlib
import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from pretrain_mm.distributed import DistInfo, barrier
from pretrain_mm.interop.weights import save_weights, state_mismatch

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict:
    """Every RNG this process draws from, as tensors and plain values (safe to load)."""
    version, mt, gauss = random.getstate()
    # the legacy tuple (get_state's default; typed as either form)
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
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
    raise ValueError(
        f"{path} holds no complete checkpoint (a step_<N>/ directory with a .metadata file); "
        "pass a run directory or one of its checkpoints/step_<N>"
    )


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

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1] if found else None

    def save(self, step: int, model, optimizer, extra: dict, rank_state: dict | None = None) -> Path:
        """extra: what every rank shares (step, schedule); rank_state: this rank's own (data position)."""
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
        torch.save({"rng": rng_state(), **(rank_state or {})}, tmp / f"rank{self.info.rank}.pt")
        barrier(self.info)
        if self.info.is_main:
            os.replace(tmp, final)
            for old in self.complete()[: -self.keep] if self.keep > 0 else []:
                shutil.rmtree(old)
        barrier(self.info)
        return final

    def load(self, path, model, optimizer, extra_template: dict) -> tuple[dict, dict]:
        """Restores model, optimiser and this rank's RNG in place; returns the saved extras and this
        rank's own state ({} when the checkpoint has none for this rank: another world size)."""
        path = resolve_checkpoint(path)
        model_state, optim_state = get_state_dict(model, optimizer)
        check_model_keys(
            path,
            model_state,
            "resume it with the model arguments it was trained with (its run's "
            "config.yaml; a run from before CLIP took open_clip's image tower needs "
            "+model.args.vision_init=timm +model.args.vision_norm_pre=false)",
        )
        state: dict[str, Any] = {"model": model_state, "optim": optim_state, "extra": dict(extra_template)}
        with one_process_quietly():
            dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        rank_file = path / f"rank{self.info.rank}.pt"
        own = {}
        if rank_file.exists():
            try:
                own = torch.load(rank_file, weights_only=True)
            except Exception as error:  # noqa: BLE001 - e.g. a file of an older version, which pickled numpy
                log.warning(
                    "cannot read %s safely (%s); continuing without its RNG state and data position",
                    rank_file,
                    str(error).splitlines()[0],
                )
        else:
            log.warning(
                "%s has nothing for rank %d (different world size?); continuing without its RNG state "
                "and data position",
                path,
                self.info.rank,
            )
        if "rng" in own:
            set_rng_state(own.pop("rng"))
        return state["extra"], own


def write_model_file(path: Path, model, config: dict, step: int, info: DistInfo) -> None:
    """The model's whole weights as one safetensors file (interop/weights.py), for evaluation and
    sharing: what every rank holds is gathered (a collective: every rank calls this), the main rank writes."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if info.is_main:  # a full state dict: plain tensors
        save_weights(path, cast(dict[str, torch.Tensor], state), config, step)
    barrier(info)


def load_model_weights(path, model) -> Path:
    """Only the model's weights (for evaluation), from a checkpoint or a run directory."""
    path = resolve_checkpoint(path)
    model_state, _ = get_state_dict(model, [])
    check_model_keys(path, model_state, "evaluate it with the config it was trained with")
    state = {"model": model_state}
    with reading_weights(path), one_process_quietly():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
    return path


@contextlib.contextmanager
def reading_weights(path: Path):
    """Corrupt or foreign checkpoint files become a ValueError naming them (CheckpointException is a
    BaseException, so it is caught by name)."""
    try:
        yield
    except (Exception, CheckpointException) as error:
        raise ValueError(f"cannot read model weights from {path}: {error}") from error


def check_model_keys(path: Path, model_state: dict, advice: str) -> None:
    """A ValueError naming the weights unless the checkpoint holds exactly the model's names and shapes.
    dcp.load fills the keys it is asked for and ignores the rest, so a model built differently from the one
    saved (an architecture default changed, the wrong config) would otherwise load partially, quietly."""
    with reading_weights(path):
        metadata = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    saved = {key.removeprefix("model."): value for key, value in metadata.items() if key.startswith("model.")}
    mismatch = state_mismatch(saved, model_state, where="the checkpoint")
    if mismatch:
        raise ValueError(f"{path} does not match the model this config builds: {mismatch}; {advice}")
