"""trainer.batch_size is the global batch: how it splits into ranks, micro-batches and grad_accum steps, and
the settings that contradict (what a run trains with it: tests/integration/test_train_exact.py)."""

from types import SimpleNamespace

import pytest

from pretrain_mm.train import loop


@pytest.mark.parametrize(
    "batch, world, accum, micro, expected",
    [
        (256, 2, 1, None, (128, 1)),
        (256, 2, 4, None, (32, 4)),
        (256, 2, 1, 32, (32, 4)),
        (256, 2, 4, 32, (32, 4)),
        (256, 3, 1, None, "multiple of world size"),
        (256, 2, 1, 48, "multiple of trainer.micro_batch_size=48"),
        (256, 2, 2, 32, "contradicts"),
        (256, 2, 3, None, "grad_accum \\(3\\)"),
    ],
)
def test_how_the_global_batch_is_split(batch, world, accum, micro, expected):
    t = SimpleNamespace(batch_size=batch, grad_accum=accum, micro_batch_size=micro)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            loop.batch_split(t, world)
    else:
        assert loop.batch_split(t, world) == expected
