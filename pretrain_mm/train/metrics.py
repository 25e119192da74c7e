"""Training metrics: metrics.jsonl and TensorBoard in the run directory, a progress bar on rank 0."""

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm


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
        out = {"samples_per_s": self.samples / max(self.total, 1e-9), "step_time_s": self.total / max(steps, 1),
               "data_wait_frac": self.data / max(self.total, 1e-9)}
        self.data = self.total = 0.0
        self.samples = 0
        return out


class MetricLogger:
    """Rank 0 writes; other ranks keep quiet. Resuming at step S drops records after S (they
    are about to be redone), so the curve in metrics.jsonl continues without a restart."""

    def __init__(self, run_dir, *, enabled: bool, start_step: int, max_steps: int):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = None
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
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
        self.bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}", lr=f"{values.get('lr', 0):.2e}")

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tb.close()
