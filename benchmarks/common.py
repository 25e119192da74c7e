"""What the benchmarks share: a measurement in a fresh process, peak memory above a starting point, a training
step, a timer."""

import json
import subprocess
import sys
import time


def run_fresh(script, *args, env=None):
    """Runs `python script args...` in a fresh process (so one measurement cannot warm or bloat the next) and
    returns the JSON its last line of output prints; a failure ends the benchmark with the command and its
    stderr."""
    cmd = [sys.executable, str(script), *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak bytes above the start, on CPU (RSS) or CUDA (the caching allocator)."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def start(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.base = self.torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.base = _rss_bytes("VmRSS")

    def peak(self):
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() - self.base
        return _rss_bytes("VmHWM") - self.base


def train_step(loss, model, optimizer):
    """What the trainer does after the loss: backward, clip the gradient norm at 1, AdamW, zero."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def median_seconds(fn, repeats, device, warmup=True):
    """The median time of `repeats` calls of fn(), after one warm-up call unless warmup=False
    (synchronised on CUDA)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats + int(warmup)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    timed = times[int(warmup) :]
    return sorted(timed)[len(timed) // 2]


def random_training_setup(kind, size, image_size, batch, device):
    """A freshly initialised model (seed 0), its AdamW, and a random batch: images and, for CLIP, token ids."""
    import torch

    from pretrain_mm.models import build_model

    torch.manual_seed(0)
    vocab = {"vocab_size": 1024, "context_length": 32} if kind == "clip" else {}
    model = build_model(kind, size, image_size=image_size, **vocab).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    text = torch.randint(1, 1024, (batch, 32), device=device)
    return model, optimizer, images, text
