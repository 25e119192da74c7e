"""The distributed contrastive loss without a process group is the plain loss, under the same rule for auto
(W gloo processes: tests/integration/test_distributed_loss.py)."""

import pytest
import torch

from helpers.two_towers import KINDS, batch, loss_and_grads
from pretrain_mm.ops import _extension, contrastive_loss, distributed_contrastive_loss
from pretrain_mm.ops.contrastive import REFERENCE_MAX_N


def test_one_process_without_a_group_is_the_plain_loss():
    images, texts = batch()
    for kind in KINDS:
        got = loss_and_grads(kind, images, texts, distributed_contrastive_loss)
        want = loss_and_grads(kind, images, texts, contrastive_loss, impl="reference")
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)


def test_one_process_auto_refuses_a_large_batch_without_the_extension(monkeypatch):
    """Without a process group the distributed loss is contrastive_loss, under the same rule."""
    monkeypatch.setattr(_extension, "AVAILABLE", False)
    n = REFERENCE_MAX_N + 1
    with pytest.raises(ValueError, match=f"{n} x {n}.*loss.impl=reference"):
        distributed_contrastive_loss(torch.randn(n, 2), torch.randn(n, 2), torch.tensor(1.0))
