"""Training metrics: metrics.jsonl and TensorBoard in the run directory, a progress bar on rank 0."""

import json
import logging
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class StepTimer:
    """Splits each step's wall time into waiting for data and computing."""

    def __init__(self):
        self.data = self.total = 0.0
        self.samples = 0
        self._t = time.perf_counter()

    def data_ready(self):
        self.data += time.perf_counter() - self._t

    def step_done(self, samples: int):
        now = time.perf_counter()
        self.total += now - self._t
        self.samples += samples
        self._t = now

    def take(self, steps: int) -> dict:
        out = {
            "samples_per_s": self.samples / max(self.total, 1e-9),
            "step_time_s": self.total / max(steps, 1),
            "data_wait_frac": self.data / max(self.total, 1e-9),
        }
        self.data = self.total = 0.0
        self.samples = 0
        return out


class MetricLogger:
    """Rank 0 writes; other ranks keep quiet. Resuming at step S drops records after S (they
    are about to be redone), so the curve in metrics.jsonl continues without a restart; a
    damaged line (a killed run's last line, cut mid-write) is dropped with a warning."""

    def __init__(self, run_dir, *, enabled: bool, start_step: int, max_steps: int):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = None
        if not enabled:
            return
        if self.path.exists():
            _rewrite_atomically(self.path, _records_up_to(self.path, start_step))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)
        self.bar = tqdm(total=max_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(f"train/{key}", value, step)
        assert self.bar is not None  # made when enabled
        self.bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}", lr=f"{values.get('lr', 0):.2e}")

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.enabled:
            assert self.bar is not None  # made when enabled
            self.bar.close()
            self.tb.close()


def _records_up_to(path: Path, start_step: int) -> list[bytes]:
    """The lines of a metrics.jsonl whose record has step <= start_step; damaged lines dropped.

    Only the last line can be damaged by a killed run (it was being appended); a damaged line
    before it means the file was changed otherwise, but it is dropped all the same (with a
    warning saying so) rather than costing the resume and every good record after it.
    """
    # Bytes, not text: a cut inside a multi-byte character must damage one line, not the file.
    lines = path.read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            where = (
                "its last line, cut mid-write when the run was killed"
                if number == len(lines)
                else "not its last line, so the file was damaged by something other than a killed run"
            )
            log.warning("%s: dropping damaged line %d (%s; %s)", path, number, where, error)
            continue
        if record.get("step", 0) <= start_step:
            kept.append(line)
    return kept


def _rewrite_atomically(path: Path, lines: list[bytes]) -> None:
    """path's new content, written beside it and swapped in, so an interruption leaves the old file."""
    # A fixed name, not mkstemp: that file would be 0600 and metrics.jsonl is read by others.
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
