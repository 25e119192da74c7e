"""The learning-rate schedule every optimiser here follows: linear warm-up, then cosine decay (pretraining,
linear probe and fine-tune alike)."""

import math


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """The multiplier of the peak learning rate at `step` (0-based, before the update): (step + 1) / warmup
    during the warm-up, then a cosine from 1 down to `min_ratio` at `total` steps (and flat after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
