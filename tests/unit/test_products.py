"""Every way the fused loss multiplies on the CPU: the one this CPU should take, each exact against
float64, and the backward recomputing the forward's logits bit for bit (a saturated loss has no gradient).

The ways (csrc/products.h): fp32 through ATen's matmul, our AVX2 tiles (cpu/tiled_gemm.h) or oneDNN's
brgemm (PRETRAIN_MM_FP32_GEMM=aten|avx2|brgemm; by default brgemm on AVX-512, avx2 on AVX2); bf16
through brgemm on CPUs with native bf16, else widened to fp32 (PRETRAIN_MM_BF16_GEMM=widen). A way this
machine cannot take is skipped, naming what is missing.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers.contrastive import loss_and_grads, make_batch
from helpers.cpu import FLAGS
from pretrain_mm.ops import _extension, reference

ops = torch.ops.pretrain_mm
CAPABILITY = torch.backends.cpu.get_cpu_capability()  # ATen's, honouring ATEN_CPU_CAPABILITY
ONEDNN = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def missing(way: str):
    """None when this machine can multiply that way, else what it lacks."""
    if way in ("fp32:aten", "bf16:widen", "fp64:aten"):
        return None
    if way == "fp32:avx2":
        if not {"avx2", "fma"} <= FLAGS:
            return "this CPU has no AVX2 and FMA"
        return None if CAPABILITY in ("AVX2", "AVX512") else f"ATEN_CPU_CAPABILITY gives {CAPABILITY}, below AVX2"
    if way == "fp32:brgemm":
        return None if ONEDNN and "avx2" in FLAGS else "no oneDNN fp32 brgemm here (x86-64 with AVX2 and oneDNN)"
    if way == "bf16:brgemm":
        if not ONEDNN:
            return "torch has no oneDNN"
        return None if {"avx512_bf16", "amx_bf16"} & FLAGS else "this CPU has no native bf16 (AVX512-BF16 or AMX)"
    raise AssertionError(way)


def expected_fp32_way() -> str:
    if CAPABILITY == "AVX512" and missing("fp32:brgemm") is None:
        return "brgemm"
    return "avx2" if missing("fp32:avx2") is None else "aten"


def take(monkeypatch, way: str):
    """Switches this process to `way` ('fp32:avx2', 'bf16:widen', ...), or skips naming what is missing."""
    why = missing(way)
    if why:
        pytest.skip(f"{way}: {why}")
    dtype, name = way.split(":")
    monkeypatch.delenv("PRETRAIN_MM_FP32_GEMM", raising=False)
    monkeypatch.delenv("PRETRAIN_MM_BF16_GEMM", raising=False)
    if dtype == "fp32":
        monkeypatch.setenv("PRETRAIN_MM_FP32_GEMM", name)
        assert f"fp32={name}" in ops.build_info()
    elif dtype == "bf16":
        if name == "widen":
            monkeypatch.setenv("PRETRAIN_MM_BF16_GEMM", "widen")
        assert f"bf16={name}" in ops.build_info()
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}[dtype]


def test_the_build_takes_the_fast_way_for_this_cpu(monkeypatch):
    """Fails, never skips, where the extension is missing (the loss would fall back to the O(N^2)
    reference) or where it multiplies more slowly than this CPU allows."""
    assert _extension.AVAILABLE, f"the extension is not built: {_extension.LOAD_ERROR}"
    monkeypatch.delenv("PRETRAIN_MM_FP32_GEMM", raising=False)
    monkeypatch.delenv("PRETRAIN_MM_BF16_GEMM", raising=False)
    info = ops.build_info()
    assert f"fp32={expected_fp32_way()}" in info, info
    assert ("bf16=brgemm" if missing("bf16:brgemm") is None else "bf16=widen") in info, info
    assert info.lower().startswith(f"cpu={CAPABILITY.lower()}"), info


def test_an_unknown_way_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("PRETRAIN_MM_FP32_GEMM", "mkl")
    img, txt, scale, _ = make_batch(8, 4)
    with pytest.raises(ValueError, match="PRETRAIN_MM_FP32_GEMM must be auto, aten, avx2 or brgemm; got 'mkl'"):
        ops.softmax_forward(img, txt, scale, 0, 1 << 20)


# n, N, D, offset, workspace_bytes: odd N and D (zero-padded VNNI pairs, partial 6 x 16 tiles),
# N and n off every tile size, rows of a larger batch at an offset, and workspaces of many panels.
SHAPES = [
    (1000, 1000, 255, 0, _extension.DEFAULT_WORKSPACE_BYTES),
    (77, 77, 33, 0, 4096),
    (129, 131, 64, 2, 512),
    (33, 101, 7, 40, 2048),
    (16, 64, 24, 48, 1 << 20),
    (1, 7, 3, 6, 64),
    (5, 5, 1, 0, 16),
    (300, 700, 300, 100, 1 << 16),
    (200, 5000, 600, 0, 1 << 22),  # K blocks of 256 and a partial one; many 4096-column blocks
]


def ops_outputs(q, k, scale, bias, offset, workspace_bytes, weights, impl):
    """softmax_forward's statistics, sigmoid_forward's row losses, and the gradients of a
    weighted sum of them with respect to (q, k, scale, bias), all as float64."""
    leaves = [t.clone().requires_grad_() for t in (q, k, scale, bias)]
    if impl == "fused":
        soft = ops.softmax_forward(*leaves[:3], offset, workspace_bytes)
        sig = ops.sigmoid_forward(*leaves, offset, workspace_bytes)
    else:
        soft = reference.softmax_stats(*leaves[:3], offset)
        sig = reference.sigmoid_row_losses(*leaves, offset)
    total = sum((w.to(o.dtype) * o).sum() for w, o in zip(weights, (*soft, sig)))
    grads = torch.autograd.grad(total, leaves)
    return [t.detach().double() for t in (*soft, sig)], [t.double() for t in grads]


def shaped_inputs(n, big_n, d, offset, seed):
    g = torch.Generator().manual_seed(seed)
    k = F.normalize(torch.randn(big_n, d, generator=g, dtype=torch.float64), dim=1)
    q = F.normalize(k[offset : offset + n] + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    weights = [torch.randn(m, generator=g, dtype=torch.float64) for m in (n, big_n, n, n)]
    return q, k, weights


@pytest.mark.parametrize("way", ["fp32:avx2", "fp32:brgemm"])
@pytest.mark.parametrize("n,big_n,d,offset,workspace_bytes", SHAPES)
def test_fp32_ways_match_float64_and_aten(monkeypatch, way, n, big_n, d, offset, workspace_bytes):
    take(monkeypatch, way)
    q, k, weights = shaped_inputs(n, big_n, d, offset, seed=n * 5 + big_n + d)
    scale, bias = torch.tensor(30.0), torch.tensor(-6.0)
    args = (offset, workspace_bytes, weights)
    fast = ops_outputs(q.float(), k.float(), scale, bias, *args, impl="fused")
    monkeypatch.setenv("PRETRAIN_MM_FP32_GEMM", "aten")
    aten = ops_outputs(q.float(), k.float(), scale, bias, *args, impl="fused")
    exact = ops_outputs(q, k, scale.double(), bias.double(), *args, impl="reference")
    for name, got, ref, other in zip(
        ["row_lse", "col_lse", "diag", "row_loss", "dq", "dk", "dscale", "dbias"],
        [*fast[0], *fast[1]],
        [*exact[0], *exact[1]],
        [*aten[0], *aten[1]],
    ):
        tol = 1e-5 * max(ref.abs().max().item(), 1.0)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=tol, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(got, other, rtol=1e-5, atol=tol, msg=lambda m: f"{name} vs aten: {m}")


def brgemm_and_widened(monkeypatch, n, big_n, d, offset, workspace_bytes):
    """bf16 inputs of that shape, and ops_outputs through brgemm and through the widened products:
    (q, k, scale, bias, (offset, workspace_bytes, weights), fast, widened)."""
    take(monkeypatch, "bf16:brgemm")
    q, k, weights = shaped_inputs(n, big_n, d, offset, seed=n * 7 + big_n + d)
    q, k = q.bfloat16(), k.bfloat16()
    scale, bias = torch.tensor(30.0), torch.tensor(-6.0)
    args = (offset, workspace_bytes, weights)
    fast = ops_outputs(q, k, scale, bias, *args, impl="fused")
    monkeypatch.setenv("PRETRAIN_MM_BF16_GEMM", "widen")
    widened = ops_outputs(q, k, scale, bias, *args, impl="fused")
    return q, k, scale, bias, args, fast, widened


@pytest.mark.parametrize("n,big_n,d,offset,workspace_bytes", SHAPES[:7])
def test_bf16_brgemm_matches_float64_and_the_widened_products(monkeypatch, n, big_n, d, offset, workspace_bytes):
    q, k, scale, bias, args, fast, widened = brgemm_and_widened(monkeypatch, n, big_n, d, offset, workspace_bytes)
    exact = ops_outputs(q.double(), k.double(), scale.double(), bias.double(), *args, impl="reference")
    assert fast[1][0].shape == (n, d) and fast[1][1].shape == (big_n, d)
    # Statistics: products of bf16 values are exact in fp32, only the sums' order differs.
    for name, got, ref, wid in zip(["row_lse", "col_lse", "diag", "row_loss"], fast[0], exact[0], widened[0]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(got, wid, rtol=1e-5, atol=1e-4, msg=lambda m: f"{name} vs widened: {m}")
    # Gradients: bf16 outputs and a bf16 G: relative to each tensor's largest.
    for name, got, ref, wid in zip(["dq", "dk", "dscale", "dbias"], fast[1], exact[1], widened[1]):
        tol = 1e-2 * ref.abs().max().item() + 1e-6
        torch.testing.assert_close(got, ref, rtol=1e-2, atol=tol, msg=lambda m: f"{name}: {m}")
        torch.testing.assert_close(got, wid, rtol=1e-2, atol=tol, msg=lambda m: f"{name} vs widened: {m}")


def test_bf16_brgemm_really_multiplies_otherwise_than_widened(monkeypatch):
    """G is rounded to bf16 only in brgemm's backward, so on thousands of gradient entries the two ways
    differ: the fast way was really taken (build_info says only which way is chosen). On a shape as
    small as 1 x 7 x 3 both may round to the same bf16 values, as they did on CI's native-bf16 CPU."""
    *_, fast, widened = brgemm_and_widened(monkeypatch, *SHAPES[2])  # the inputs of the test above on that shape
    assert not torch.equal(fast[1][0], widened[1][0])  # dq: 129 x 64 entries


@pytest.mark.parametrize("way", ["fp32:aten", "fp32:avx2", "fp32:brgemm", "bf16:brgemm", "bf16:widen"])
def test_many_panels_equal_one_panel(monkeypatch, way):
    dtype = take(monkeypatch, way)
    img, txt, scale, bias = make_batch(300, 48, dtype=dtype, seed=8)
    for kind in ("softmax", "sigmoid"):
        one = loss_and_grads(img, txt, scale, bias, kind, impl="fused", workspace_bytes=1 << 30)
        many = loss_and_grads(img, txt, scale, bias, kind, impl="fused", workspace_bytes=1000)
        torch.testing.assert_close(one[0], many[0], rtol=1e-5, atol=1e-6)
        # Gradients sum G over other panels: equal up to G's rounding (bf16 with brgemm).
        rtol = 1e-2 if dtype == torch.bfloat16 else 1e-5
        for a, b in zip(one[1:], many[1:]):
            torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=rtol * a.abs().max().item())


def saturated_batch(n, d, seed):
    """Matching image and text rows that are far apart from every other row: each row's softmax
    puts all its mass on the positive pair, so the loss and its gradient are zero to float64."""
    g = torch.Generator().manual_seed(seed)
    if n <= d:  # orthonormal rows
        x = torch.linalg.qr(torch.randn(d, n, generator=g, dtype=torch.float64))[0].T
    else:  # random unit rows: cosines of a few 1/sqrt(d)
        x = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return x.contiguous()


@pytest.mark.parametrize("way", ["fp32:aten", "fp32:avx2", "fp32:brgemm", "bf16:brgemm", "bf16:widen", "fp64:aten"])
@pytest.mark.parametrize("n,d,scale", [(3, 5, 52.0), (1000, 64, 100.0)])
def test_a_saturated_loss_has_no_gradient(monkeypatch, way, n, d, scale):
    """The backward recomputes each logit panel; its logits must be the forward's bit for bit, so
    that exp(logit - lse) is exactly 1 where the forward's lse was that logit alone. One ulp of
    difference (other products, panel shapes, or an FMA contracting s * p - lse) gives each
    gradient about (1/N) * ulp(logit) * scale (3e-5 in norm at n = 3, scale 52), against the
    float64 gradient's 1e-21."""
    dtype = take(monkeypatch, way)
    x = saturated_batch(n, d, seed=n + d).to(dtype)
    s = torch.tensor(scale, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    unused_bias = torch.zeros(())
    got = loss_and_grads(x, x, s, unused_bias, "softmax", impl="fused")
    exact = loss_and_grads(x.double(), x.double(), s.double(), unused_bias, "softmax", impl="reference")
    assert abs(got[0].item()) <= 1e-6 and abs(exact[0].item()) <= 1e-6  # saturated indeed
    for name, g, e in zip(["d_image", "d_text", "d_scale"], got[1:], exact[1:]):
        bound = 2 * e.abs().max().item() + 1e-12
        assert g.abs().max().item() <= bound, f"{name}: largest {g.abs().max().item():.3g}, float64's {bound:.3g}"
