"""The CUDA contrastive-loss ops against the CPU ones, on a real GPU.

Every test here needs a CUDA device and is skipped without one. Where a device exists, the
extension must have been built with CUDA (setup.py does so when nvcc is found); set
PRETRAIN_MM_CUDA=0 to skip instead when a CPU-only build is intended.

- the four ops (softmax/sigmoid, forward/backward) on CUDA match the CPU ops for N in
  {1, 7, 257, 1024, 4097}, D in {1, 64, 512}, n < N at several offsets, float32, bfloat16
  and float64, with the default workspace and with tiny ones (many panels, narrow panels);
- NaN in a feature reaches exactly the outputs it reaches on the CPU;
- no op synchronises the host;
- N = 32768: peak CUDA memory stays O((n + N) * D) + workspace (the logits alone would take
  4 GiB), and the results match a chunked plain-PyTorch reference.
"""

import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MiB = 1 << 20
DEFAULT_WS = 64 * MiB


@pytest.fixture(scope="module")
def ops():
    import pretrain_mm._C  # noqa: F401  (registers torch.ops.pretrain_mm)

    info = torch.ops.pretrain_mm.build_info()
    if "cuda=1" not in info:
        if os.environ.get("PRETRAIN_MM_CUDA") == "0":
            pytest.skip("extension built without CUDA (PRETRAIN_MM_CUDA=0)")
        pytest.fail(f"a CUDA device is present but the extension was built without CUDA: {info}")
    return torch.ops.pretrain_mm


@pytest.fixture(autouse=True)
def exact_fp32_matmul():
    """TF32 would make the CUDA panel products less exact than the CPU ones."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def features(n, N, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n, D, generator=g, dtype=torch.float64), dim=1)
    k = torch.nn.functional.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    return q.to(dtype), k.to(dtype)


def tolerances(dtype):
    # bf16 inputs are widened to fp32 by the ops; their gradients are rounded back to bf16.
    return {torch.float64: (1e-9, 1e-9), torch.float32: (2e-4, 2e-4), torch.bfloat16: (2e-2, 2e-2)}[dtype]


def to_cuda(*ts):
    return [t.cuda() for t in ts]


def assert_close(got, want, dtype, what):
    rtol, atol = tolerances(dtype)
    if got.dtype != want.dtype:
        got = got.to(want.dtype)
    torch.testing.assert_close(got.cpu(), want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def run_all(ops, q, k, scale, bias, offset, ws, g_seed=0):
    """All four ops on (q, k) on their device; the backwards' upstream gradients are fixed
    random values (the same on every device)."""
    n, N = q.shape[0], k.shape[0]
    g = torch.Generator().manual_seed(g_seed)
    g_row = torch.randn(n, generator=g, dtype=torch.float64).to(q.device)
    g_col = torch.randn(N, generator=g, dtype=torch.float64).to(q.device)
    g_diag = torch.randn(n, generator=g, dtype=torch.float64).to(q.device)
    r, c, d = ops.softmax_forward(q, k, scale, offset, ws)
    sm_bwd = ops.softmax_backward(
        q, k, scale, r, c, g_row.to(r.dtype), g_col.to(r.dtype), g_diag.to(r.dtype), offset, ws
    )
    loss = ops.sigmoid_forward(q, k, scale, bias, offset, ws)
    sg_bwd = ops.sigmoid_backward(q, k, scale, bias, g_row.to(loss.dtype), offset, ws)
    return {
        "row_lse": r,
        "col_lse": c,
        "diag": d,
        "softmax dq": sm_bwd[0],
        "softmax dk": sm_bwd[1],
        "softmax dscale": sm_bwd[2],
        "sigmoid row_loss": loss,
        "sigmoid dq": sg_bwd[0],
        "sigmoid dk": sg_bwd[1],
        "sigmoid dscale": sg_bwd[2],
        "sigmoid dbias": sg_bwd[3],
    }


def compare_devices(ops, n, N, D, offset, dtype, ws, scale=14.3, bias=-10.0, nan_at=None):
    q, k = features(n, N, D, dtype, seed=n * 7 + N * 13 + D)
    if nan_at is not None:
        q[nan_at] = float("nan")
    s = torch.tensor(scale, dtype=dtype if dtype != torch.bfloat16 else torch.float32)
    b = torch.tensor(bias, dtype=s.dtype)
    want = run_all(ops, q, k, s, b, offset, DEFAULT_WS)
    got = run_all(ops, *to_cuda(q, k, s, b), offset, ws)
    for name in want:
        assert got[name].is_cuda, name
        # Sums over many terms (dscale, dbias) get a tolerance relative to their size.
        if "dscale" in name or "dbias" in name:
            rtol, atol = tolerances(dtype)
            scale_of_sum = max(1.0, float(want[name].abs().nan_to_num()))
            torch.testing.assert_close(
                got[name].cpu().to(want[name].dtype),
                want[name],
                rtol=rtol * 10,
                atol=atol * scale_of_sum * 10,
                equal_nan=True,
            )
        else:
            assert_close(got[name], want[name], dtype, f"{name} n={n} N={N} D={D} offset={offset} ws={ws}")
    return got


SHAPES = [  # (n, N, offset)
    (1, 1, 0),
    (7, 7, 0),
    (3, 7, 4),
    (257, 257, 0),
    (100, 257, 157),
    (64, 257, 64),
    (1024, 1024, 0),
    (300, 1024, 512),
    (4097, 4097, 0),
    (1024, 4097, 2048),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("D", [1, 64, 512])
@pytest.mark.parametrize("n,N,offset", SHAPES)
def test_cuda_matches_cpu(ops, n, N, offset, D, dtype):
    if N > 1024 and dtype == torch.float64 and D == 512:
        pytest.skip("the float64 CPU reference at this size is slow and adds nothing")
    compare_devices(ops, n, N, D, offset, dtype, DEFAULT_WS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("ws", [4, 256, 4096, 100_000])
@pytest.mark.parametrize("n,N,offset", [(7, 7, 0), (3, 7, 4), (257, 257, 0), (100, 257, 157), (300, 1024, 512)])
def test_tiny_workspace_many_panels(ops, n, N, offset, ws, dtype):
    compare_devices(ops, n, N, 64, offset, dtype, ws)


def test_large_panels_several_chunks(ops):
    """Rows longer than one backward work item, a width that is no multiple of the vector
    width (scalar loads), and several row panels."""
    compare_devices(ops, 600, 4101, 64, 3000, torch.float32, 600 * 4101 * 4 // 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("ws", [DEFAULT_WS, 4096])
def test_nan_propagates_like_cpu(ops, dtype, ws):
    n, N = 40, 300
    got = compare_devices(ops, n, N, 64, 100, dtype, ws, nan_at=(5, 3))
    # A NaN feature of image row 5 makes its row statistics NaN, and every column's
    # (row 5 takes part in every column's log-sum-exp); other rows stay finite.
    row_lse, col_lse, row_loss = got["row_lse"].cpu(), got["col_lse"].cpu(), got["sigmoid row_loss"].cpu()
    assert torch.isnan(row_lse[5]) and torch.isfinite(row_lse[torch.arange(n) != 5]).all()
    assert torch.isnan(col_lse).all()
    assert torch.isnan(row_loss[5]) and torch.isfinite(row_loss[torch.arange(n) != 5]).all()


def test_no_host_synchronisation(ops):
    n, N, offset, ws = 500, 2000, 700, 1 * MiB
    q, k = to_cuda(*features(n, N, 64, torch.float32, seed=1))
    s, b = to_cuda(torch.tensor(10.0), torch.tensor(-5.0))
    g_row, g_col, g_diag = to_cuda(torch.randn(n), torch.randn(N), torch.randn(n))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call inside the ops raises
    try:
        r, c, _ = ops.softmax_forward(q, k, s, offset, ws)
        ops.softmax_backward(q, k, s, r, c, g_row, g_col, g_diag, offset, ws)
        ops.sigmoid_forward(q, k, s, b, offset, ws)
        ops.sigmoid_backward(q, k, s, b, g_row, offset, ws)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def chunked_reference(q, k, s, offset, chunk=2048):
    """Row/column log-sum-exps, diagonal and sigmoid row losses of s * q @ k.T + b in row
    chunks, in float64 accumulation — never the whole n x N matrix at once."""
    n, N = q.shape[0], k.shape[0]
    row_lse = torch.empty(n, dtype=torch.float64, device=q.device)
    col_lse = torch.full((N,), float("-inf"), dtype=torch.float64, device=q.device)
    diag = torch.empty(n, dtype=torch.float64, device=q.device)
    for r0 in range(0, n, chunk):
        L = s * (q[r0 : r0 + chunk].double() @ k.double().T)
        rows = torch.arange(r0, r0 + L.shape[0], device=q.device)
        row_lse[r0 : r0 + L.shape[0]] = torch.logsumexp(L, 1)
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(L, 0))
        diag[r0 : r0 + L.shape[0]] = L[rows - r0, rows + offset]
    return row_lse, col_lse, diag


@pytest.mark.slow
def test_32k_memory_stays_linear(ops):
    n = N = 32768
    D = 512
    ws = 256 * MiB
    q, k = to_cuda(*features(n, N, D, torch.float32, seed=3))
    s, b = to_cuda(torch.tensor(14.3), torch.tensor(-10.0))
    feature_bytes = (n + N) * D * 4
    # Everything the op may hold besides its inputs: its gradients (same size as the
    # features), a few O(n + N) vectors, the panel workspace, slack for cuBLAS.
    budget = 2 * feature_bytes + ws + 64 * MiB
    logits_bytes = n * N * 4
    assert budget < logits_bytes / 2, "the test would not tell linear from quadratic memory"

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    r, c, d = ops.softmax_forward(q, k, s, 0, ws)
    loss = ops.sigmoid_forward(q, k, s, b, 0, ws)
    torch.cuda.synchronize()
    fwd_peak = torch.cuda.max_memory_allocated() - base

    g_row = torch.full((n,), 1.0 / (2 * N), device="cuda")
    g_diag = torch.full((n,), -1.0 / N, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    dq, dk, ds = ops.softmax_backward(q, k, s, r, c, g_row, g_row.clone(), g_diag, 0, ws)
    sdq, sdk, sds, sdb = ops.sigmoid_backward(q, k, s, b, g_row, 0, ws)
    torch.cuda.synchronize()
    bwd_peak = torch.cuda.max_memory_allocated() - base
    print(
        f"\npeak extra memory: forward {fwd_peak / MiB:.0f} MiB, backward {bwd_peak / MiB:.0f} MiB "
        f"(budget {budget / MiB:.0f} MiB, logits would be {logits_bytes / MiB:.0f} MiB)"
    )
    assert fwd_peak <= budget
    assert bwd_peak <= budget + 2 * feature_bytes  # the two ops' gradients are alive together

    row_lse, col_lse, diag = chunked_reference(q, k, float(s), 0)
    torch.testing.assert_close(r.double(), row_lse, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(c.double(), col_lse, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d.double(), diag, rtol=1e-5, atol=1e-4)
    ref_dq, ref_dk, ref_ds = chunked_softmax_backward(
        q, k, float(s), row_lse, col_lse, g_row.double(), g_row.double(), g_diag.double(), 0
    )
    torch.testing.assert_close(dq.double(), ref_dq, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(dk.double(), ref_dk, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(ds.double(), ref_ds, rtol=1e-3, atol=1e-5)
    for t in (loss, sdq, sdk, sds, sdb):
        assert torch.isfinite(t).all()


def chunked_softmax_backward(q, k, s, row_lse, col_lse, g_row, g_col, g_diag, offset, chunk=2048):
    """dq, dk, dscale of sum(g_row * row_lse) + sum(g_col * col_lse) + sum(g_diag * diag),
    by row chunks in float64."""
    n = q.shape[0]
    qd, kd = q.double(), k.double()
    dq = torch.empty_like(qd)
    dk = torch.zeros_like(kd)
    ds = torch.zeros((), dtype=torch.float64, device=q.device)
    for r0 in range(0, n, chunk):
        p = qd[r0 : r0 + chunk] @ kd.T
        L = s * p
        rows = torch.arange(r0, r0 + p.shape[0], device=q.device)
        G = g_row[rows, None] * torch.exp(L - row_lse[rows, None]) + g_col[None] * torch.exp(L - col_lse[None])
        G[rows - r0, rows + offset] += g_diag[rows]
        dq[r0 : r0 + p.shape[0]] = s * G @ kd
        dk += s * G.T @ qd[r0 : r0 + p.shape[0]]
        ds += (G * p).sum()
    return dq, dk, ds
