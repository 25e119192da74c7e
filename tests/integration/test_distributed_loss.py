"""W gloo processes give the same loss and parameter gradients as one process on the whole batch (the
distributed loss without a process group: tests/unit/test_distributed_loss_one_process.py)."""

import pytest
import torch
import torch.distributed as dist

from helpers.multiprocess import run_distributed
from helpers.two_towers import BATCH, KINDS, batch, loss_and_grads
from pretrain_mm.ops import _extension, contrastive_loss, distributed_contrastive_loss
from pretrain_mm.ops.contrastive import REFERENCE_MAX_N


def rank_results(rank, world_size):
    images, texts = batch()
    n = BATCH // world_size
    mine = slice(rank * n, (rank + 1) * n)
    out = {}
    for kind in KINDS:
        for impl in ("fused", "reference"):
            loss, grads = loss_and_grads(
                kind, images[mine], texts[mine], distributed_contrastive_loss, impl=impl, workspace_bytes=256
            )
            for g in grads:  # what DDP / FSDP do: average gradients over ranks
                dist.all_reduce(g)
                g /= world_size
            out[kind, impl] = (loss, grads)
    return out


@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_equals_one_process(world_size, tmp_path):
    images, texts = batch()
    expected = {kind: loss_and_grads(kind, images, texts, contrastive_loss, impl="reference") for kind in KINDS}
    results = run_distributed(rank_results, world_size, tmp_path)
    for rank, result in enumerate(results):
        for (kind, impl), (loss, grads) in result.items():
            want_loss, want_grads = expected[kind]
            torch.testing.assert_close(
                loss, want_loss, rtol=1e-12, atol=1e-12, msg=lambda m: f"rank {rank} {kind} {impl} loss: {m}"
            )
            for i, (g, w) in enumerate(zip(grads, want_grads)):
                torch.testing.assert_close(
                    g, w, rtol=1e-10, atol=1e-12, msg=lambda m: f"rank {rank} {kind} {impl} grad {i}: {m}"
                )


def rank_auto_without_the_extension(rank, world_size):
    """auto on a CPU machine whose extension did not load: the reference for a small global
    batch, a refusal naming the global N once world * n exceeds REFERENCE_MAX_N."""
    _extension.AVAILABLE = False  # this spawned process only
    images, texts = batch()
    n = BATCH // world_size
    small = loss_and_grads(
        "softmax", images[rank * n : (rank + 1) * n], texts[rank * n : (rank + 1) * n], distributed_contrastive_loss
    )[0]
    # Each rank's n is under the limit, the global N = world * n is over it; D = 2 keeps it cheap.
    n = REFERENCE_MAX_N // world_size + 1
    try:
        distributed_contrastive_loss(torch.randn(n, 2), torch.randn(n, 2), torch.tensor(1.0))
        refusal = None
    except ValueError as error:
        refusal = str(error)
    return small, refusal, world_size * n


def test_distributed_auto_follows_the_single_process_rule(tmp_path):
    images, texts = batch()
    want = loss_and_grads("softmax", images, texts, contrastive_loss, impl="reference")[0]
    for rank, (small, refusal, big_n) in enumerate(run_distributed(rank_auto_without_the_extension, 2, tmp_path)):
        torch.testing.assert_close(small, want, rtol=1e-12, atol=1e-12, msg=lambda m: f"rank {rank}: {m}")
        assert refusal is not None, f"rank {rank}: auto took the reference loss at global N = {big_n}"
        assert f"{big_n} x {big_n}" in refusal and "loss.impl=reference" in refusal
