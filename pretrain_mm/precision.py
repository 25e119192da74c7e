"""The precision a run computes in, one rule for training, evaluation and benchmarks: bf16 only where it is fast.

bf16 autocast pays where the hardware multiplies bf16 natively: a CUDA device that supports it, or
a CPU with AVX512-BF16 or AMX. Elsewhere oneDNN emulates bf16 products, and a training step is
about 20x slower than in fp32 (measured on an AVX2-only AMD Zen 3: 22 s against 1.0 s a step), so
`auto` computes in fp32 there.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

CHOICES = ("auto", "bf16", "fp32")
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    bf16: bool
    reason: str  # why, for the run's log and config.yaml

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


@functools.cache  # the processor does not change; evaluation asks once per batch
def cpu_bf16_features() -> tuple[str, ...]:
    """The native-bf16 features this CPU has (torch's cpuinfo), e.g. ('avx512_bf16',); () on AVX2-only CPUs."""
    capabilities = torch._C._cpu._get_cpu_capability()
    return tuple(name for name in NATIVE_BF16_FEATURES if capabilities.get(name) is True)


def resolve_precision(requested: str, device: torch.device, *, key: str = "trainer.precision") -> Precision:
    """What `requested` (auto | bf16 | fp32) means on `device`, and why."""
    if requested not in CHOICES:
        raise ValueError(f"{key} must be auto, bf16 or fp32; got {requested!r}")
    if requested != "auto":
        return Precision(requested == "bf16", f"{key}={requested}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(True, f"auto: {torch.cuda.get_device_name(device)} supports bf16")
        return Precision(False, f"auto: {torch.cuda.get_device_name(device)} has no bf16")
    if device.type == "cpu":
        features = cpu_bf16_features()
        if features:
            return Precision(True, f"auto: this CPU multiplies bf16 natively ({', '.join(features)})")
        return Precision(
            False,
            "auto: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 autocast "
            "is emulated and about 20x slower than fp32",
        )
    return Precision(False, f"auto: fp32 on {device.type}")


def autocast(precision: Precision, device: torch.device):
    """bf16 autocast when `precision` says so, else nothing (fp32)."""
    if precision.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_autocast(device: torch.device, requested: str = "auto"):
    """Evaluation's precision (eval.precision): by default bf16 autocast where training's `auto` would choose it
    (ample for ranking), else fp32; fp32 to score exactly as an fp32 evaluator such as CLIP_benchmark on the CPU."""
    return autocast(resolve_precision(requested, device, key="eval.precision"), device)
