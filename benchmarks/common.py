"""What the benchmarks share: peak memory above a starting point, measured in a fresh process."""


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
