"""The fused contrastive loss against float64 references written plainly in PyTorch.

The largest batches, opcheck, torch.compile and the other CPU builds (subprocesses) take seconds
each: tests/integration/test_contrastive_loss_heavy.py."""

import logging

import pytest
import torch
import torch.nn.functional as F

import pretrain_mm.ops.contrastive as contrastive_module
from helpers.contrastive import assert_close_all, loss_and_grads, make_batch, reference64
from pretrain_mm.ops import _extension, contrastive_loss, reference
from pretrain_mm.ops.contrastive import REFERENCE_MAX_N, resolve_impl

pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason=f"extension not built: {_extension.LOAD_ERROR}")
ops = torch.ops.pretrain_mm
KINDS = ["softmax", "sigmoid"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 7, 64, 257, 1000])  # 4097: tests/integration
@pytest.mark.parametrize("d", [1, 32, 512])
def test_fp32_matches_float64_reference(kind, n, d):
    img, txt, scale, bias = make_batch(n, d, seed=n * 1000 + d)
    got = loss_and_grads(img, txt, scale, bias, kind, impl="fused")
    # Gradients of individual features are O(scale / N); compare them relative to that.
    assert_close_all(got, reference64(img, txt, scale, bias, kind), rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,d", [(1, 3), (7, 5)])  # (257, 64), (1000, 512): tests/integration
def test_fp64_is_exact(kind, n, d):
    img, txt, scale, bias = make_batch(n, d, dtype=torch.float64, seed=n + d)
    got = loss_and_grads(img, txt, scale, bias, kind, impl="fused", workspace_bytes=4096)
    assert_close_all(got, reference64(img, txt, scale, bias, kind), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_inputs(kind):
    img, txt, scale, bias = make_batch(1000, 256, dtype=torch.bfloat16, seed=3)
    got = loss_and_grads(img, txt, scale, bias, kind, impl="fused")
    want = reference64(img, txt, scale, bias, kind)
    # Products of bf16 values accumulate in fp32: the loss is fp32-exact for these inputs;
    # feature gradients come back in bf16 (8 bits of mantissa).
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-5, atol=1e-5)
    assert_close_all(got[1:], want[1:], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kind", KINDS)
def test_large_scale_with_aligned_features_does_not_overflow(kind):
    img, _, _, bias = make_batch(512, 64, seed=5)
    # Every image equals its text: logits reach the scale, exp(100) would overflow fp32.
    got = loss_and_grads(img, img.clone(), torch.tensor(100.0), bias, kind, impl="fused")
    assert all(torch.isfinite(t).all() for t in got)
    assert_close_all(got, reference64(img, img, torch.tensor(100.0), bias, kind), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_many_panels_equal_one_panel(kind):
    img, txt, scale, bias = make_batch(300, 48, seed=7)
    one = loss_and_grads(img, txt, scale, bias, kind, impl="fused", workspace_bytes=1 << 30)
    # 4 KiB: 32 x 32 panels, so rows and columns both merge across panels (and 300 % 32 != 0).
    many = loss_and_grads(img, txt, scale, bias, kind, impl="fused", workspace_bytes=4096)
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_inputs(kind):
    img, txt, scale, bias = make_batch(129, 64, seed=11)
    wide_img = torch.zeros(129, 128).index_copy_(1, torch.arange(0, 128, 2), img)
    img_view, txt_view = wide_img[:, ::2], txt.t().contiguous().t()
    assert not img_view.is_contiguous() and not txt_view.is_contiguous()
    got = loss_and_grads(img_view, txt_view, scale, bias, kind, impl="fused")
    assert_close_all(got, reference64(img, txt, scale, bias, kind), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("n,big_n,offset", [(16, 64, 0), (16, 64, 48), (33, 100, 40), (1, 7, 6)])
def test_rectangular_rows_with_offset(n, big_n, offset):
    """One rank's rows against every rank's columns: the op's statistics and their gradients."""
    g = torch.Generator().manual_seed(n + offset)
    k = F.normalize(torch.randn(big_n, 24, generator=g, dtype=torch.float64), dim=1)
    q = k[offset : offset + n] + 0.3 * torch.randn(n, 24, generator=g, dtype=torch.float64)
    scale, bias = torch.tensor(9.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    weights = [torch.randn(m, generator=g, dtype=torch.float64) for m in (n, big_n, n)]

    def weighted(outputs):
        return sum((w * o).sum() for w, o in zip(weights, outputs))

    for impl in ("fused", "reference"):
        leaves = [t.clone().requires_grad_() for t in (q, k, scale, bias)]
        if impl == "fused":
            soft = ops.softmax_forward(leaves[0].float(), leaves[1].float(), leaves[2].float(), offset, 2048)
            sig = ops.sigmoid_forward(
                leaves[0].float(), leaves[1].float(), leaves[2].float(), leaves[3].float(), offset, 2048
            )
        else:
            soft = reference.softmax_stats(*leaves[:3], offset)
            sig = reference.sigmoid_row_losses(*leaves, offset)
        total = weighted(soft) + (weights[0] * sig).sum()
        grads = torch.autograd.grad(total, leaves)
        results = [t.detach().double() for t in (*soft, sig, *grads)]
        if impl == "fused":
            fused = results
    for name, a, b in zip(["row_lse", "col_lse", "diag", "row_loss", "dq", "dk", "dscale", "dbias"], fused, results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    for n, d in [(1, 2), (3, 4), (6, 5)]:
        img, txt, scale, bias = make_batch(n, d, dtype=torch.float64, seed=n, scale=4.0, bias=-1.0)
        leaves = [t.to(torch.float64).requires_grad_() for t in (img, txt, scale, bias)][
            : 3 if kind == "softmax" else 4
        ]
        assert torch.autograd.gradcheck(
            lambda *a: contrastive_loss(*a, kind=kind, impl="fused", workspace_bytes=64), leaves
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_reach_the_loss(kind, bad):
    img, txt, scale, bias = make_batch(50, 16, seed=9)
    img[17, 3] = bad
    loss = contrastive_loss(img, txt, scale, bias if kind == "sigmoid" else None, kind=kind, impl="fused")
    assert not torch.isfinite(loss)


def _bad_calls():
    x, y, s = torch.randn(4, 8), torch.randn(4, 8), torch.tensor(1.0)
    return [
        ("same \\(N, D\\)", (x, torch.randn(4, 9), s), {}),
        ("same \\(N, D\\)", (x, torch.randn(5, 8), s), {}),
        ("dtypes differ", (x, y.double(), s), {}),
        ("2-D", (x[None], y[None], s), {}),
        ("2-D", (x[0], y[0], s), {}),
        ("N = 0", (x[:0], y[:0], s), {}),
        ("must be a scalar", (x, y, torch.ones(2)), {}),
        ("logit_bias is for kind='sigmoid'", (x, y, s, torch.tensor(0.0)), {}),
        ("kind must be", (x, y, s), {"kind": "hinge"}),
        ("impl must be", (x, y, s), {"impl": "fast"}),
        ("devices differ", (x, y.to("meta"), s), {}),
    ]


@pytest.mark.parametrize("match,args,kwargs", _bad_calls())
def test_bad_input_is_a_value_error(match, args, kwargs):
    with pytest.raises(ValueError, match=match):
        contrastive_loss(*args, **kwargs)


def test_op_level_checks_are_value_errors():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="do not fit"):
        ops.softmax_forward(x, x, torch.tensor(1.0), 2, 1024)
    with pytest.raises(ValueError, match="unsupported dtype"):
        ops.softmax_forward(x.int(), x.int(), torch.tensor(1.0), 0, 1024)
    with pytest.raises(ValueError, match="workspace_bytes must be positive"):
        ops.sigmoid_forward(x, x, torch.tensor(1.0), torch.tensor(0.0), 0, 0)


def test_auto_uses_the_extension_and_reference_handles_float64():
    img, txt, scale, _ = make_batch(10, 4, dtype=torch.float64)
    auto = contrastive_loss(img, txt, scale)
    assert torch.allclose(auto, reference.softmax_loss(img, txt, scale), rtol=1e-12)


@pytest.fixture
def fresh_log(monkeypatch, caplog):
    """auto's once-per-process log, forgotten, and captured at INFO."""
    monkeypatch.setattr(contrastive_module, "_LOGGED", set())
    caplog.set_level(logging.INFO, logger="pretrain_mm.ops")
    return caplog


@pytest.fixture
def reference_calls(monkeypatch):
    """Counts the reference softmax loss's calls, recording each call's N."""
    calls = []
    real = reference.softmax_loss

    def counting(img, txt, scale):
        calls.append(img.shape[0])
        return real(img, txt, scale)

    monkeypatch.setattr(reference, "softmax_loss", counting)
    return calls


def test_auto_without_the_extension_is_the_reference_for_small_batches(monkeypatch, reference_calls, fresh_log):
    monkeypatch.setattr(_extension, "AVAILABLE", False)
    img, txt, scale, _ = make_batch(10, 4, dtype=torch.float64)
    got = contrastive_loss(img, txt, scale)
    assert reference_calls == [10]
    assert torch.equal(got, reference.softmax_loss(img, txt, scale))
    assert "reference (O(N^2)) on cpu because the extension is not built" in fresh_log.text


def test_auto_without_the_extension_refuses_a_large_batch_before_any_n_by_n_work(monkeypatch, reference_calls):
    monkeypatch.setattr(_extension, "AVAILABLE", False)
    n = REFERENCE_MAX_N + 1
    img, txt, scale, _ = make_batch(n, 2)
    with pytest.raises(ValueError, match="loss.impl=reference") as raised:
        contrastive_loss(img, txt, scale)
    message = str(raised.value)
    # Two N x N fp32 matrices: 2 * 8193^2 * 4 bytes = 0.50 GiB.
    assert f"{n} x {n}" in message and "0.50 GiB" in message and "not built" in message
    assert "pip install --no-build-isolation -e ." in message
    assert reference_calls == []
    # At the limit itself auto still falls back (the check is N > REFERENCE_MAX_N).
    assert resolve_impl("auto", "cpu", REFERENCE_MAX_N) == "reference"


def test_explicit_reference_is_allowed_at_any_batch(monkeypatch, reference_calls):
    monkeypatch.setattr(_extension, "AVAILABLE", False)
    assert resolve_impl("reference", "cpu", 10 * REFERENCE_MAX_N) == "reference"
    assert resolve_impl("reference", "cuda", 10 * REFERENCE_MAX_N) == "reference"
    img, txt, scale, _ = make_batch(7, 3, dtype=torch.float64)
    contrastive_loss(img, txt, scale, impl="reference")
    assert reference_calls == [7]


def test_fused_where_it_is_not_built_is_a_runtime_error(monkeypatch):
    monkeypatch.setattr(_extension, "CUDA_BUILT", False)
    with pytest.raises(ValueError, match="built without CUDA.*loss.impl=reference"):
        resolve_impl("fused", torch.device("cuda"), 8)
    monkeypatch.setattr(_extension, "AVAILABLE", False)
    img, txt, scale, _ = make_batch(8, 3)
    with pytest.raises(ValueError, match="not built"):
        contrastive_loss(img, txt, scale, impl="fused")


def test_auto_on_cuda_follows_the_cuda_build(monkeypatch, fresh_log):
    """Resolved from the device alone, so a CUDA-less machine can check the CUDA rule."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(_extension, "CUDA_BUILT", True)
    assert resolve_impl("auto", cuda, 10 * REFERENCE_MAX_N) == "fused"
    monkeypatch.setattr(_extension, "CUDA_BUILT", False)
    assert resolve_impl("auto", cuda, 100) == "reference"
    with pytest.raises(ValueError, match="built without CUDA.*16384 x 16384.*2.00 GiB.*loss.impl=reference"):
        resolve_impl("auto", cuda, 2 * REFERENCE_MAX_N)
    assert resolve_impl("auto", "cpu", 10 * REFERENCE_MAX_N) == "fused"
    assert [r.getMessage() for r in fresh_log.records] == [
        "contrastive loss: fused op on cuda (auto)",
        "contrastive loss: reference (O(N^2)) on cuda because the extension was built without CUDA (auto)",
        "contrastive loss: fused op on cpu (auto)",
    ]


def test_auto_logs_its_path_once_per_device_and_impl(monkeypatch, fresh_log):
    img, txt, scale, _ = make_batch(16, 4)
    for _ in range(3):
        contrastive_loss(img, txt, scale)
        contrastive_loss(img, txt, scale, impl="fused")  # explicit choices are not announced
    monkeypatch.setattr(_extension, "AVAILABLE", False)
    for _ in range(3):
        contrastive_loss(img, txt, scale)
    messages = [r.getMessage() for r in fresh_log.records if r.name == "pretrain_mm.ops"]
    assert messages[0] == "contrastive loss: fused op on cpu (auto)"
    assert len(messages) == 2 and messages[1].startswith("contrastive loss: reference (O(N^2)) on cpu because")
    assert all(r.levelno == logging.INFO for r in fresh_log.records)
