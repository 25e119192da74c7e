"""The fused contrastive loss's checks that take seconds each: the largest batches against float64
references, torch.library.opcheck, torch.compile (inductor builds C++), and each CPU build in a
subprocess. The fast cases of the same tests: tests/unit/test_contrastive_loss.py."""

import os
import subprocess
import sys

import pytest
import torch

from helpers.contrastive import assert_close_all, loss_and_grads, make_batch, reference64
from pretrain_mm.ops import _extension, contrastive_loss

pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason=f"extension not built: {_extension.LOAD_ERROR}")
ops = torch.ops.pretrain_mm
KINDS = ["softmax", "sigmoid"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [4097])
@pytest.mark.parametrize("d", [1, 32, 512])
def test_fp32_matches_float64_reference(kind, n, d):
    img, txt, scale, bias = make_batch(n, d, seed=n * 1000 + d)
    got = loss_and_grads(img, txt, scale, bias, kind, impl="fused")
    # Gradients of individual features are O(scale / N); compare them relative to that.
    assert_close_all(got, reference64(img, txt, scale, bias, kind), rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,d", [(257, 64), (1000, 512)])
def test_fp64_is_exact(kind, n, d):
    img, txt, scale, bias = make_batch(n, d, dtype=torch.float64, seed=n + d)
    got = loss_and_grads(img, txt, scale, bias, kind, impl="fused", workspace_bytes=4096)
    assert_close_all(got, reference64(img, txt, scale, bias, kind), rtol=1e-11, atol=1e-12)


def test_opcheck():
    img, txt, scale, bias = make_batch(37, 16, seed=2)
    leaves = [t.clone().requires_grad_() for t in (img, txt, scale, bias)]
    torch.library.opcheck(ops.softmax_forward.default, (*leaves[:3], 0, 1024))
    torch.library.opcheck(ops.sigmoid_forward.default, (*leaves, 0, 1024))
    q, k = img[10:20].clone().requires_grad_(), txt.clone().requires_grad_()
    torch.library.opcheck(ops.softmax_forward.default, (q, k, leaves[2], 10, 1024))


@pytest.mark.skipif(
    os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default",
    reason="torch 2.14's inductor emits at::vec code that its own header lacks under "
    "ATEN_CPU_CAPABILITY=default (a C++ compile error in torch, not in this op)",
)
@pytest.mark.parametrize("kind", KINDS)
def test_torch_compile_fullgraph_matches_eager(kind):
    img, txt, scale, bias = make_batch(96, 32, seed=4)

    def step(img, txt, scale, bias):
        loss = contrastive_loss(img * 2, txt, scale.exp(), bias if kind == "sigmoid" else None, kind=kind, impl="fused")
        return loss * 3

    compiled = torch.compile(step, fullgraph=True)
    results = []
    for fn in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in (img, txt, scale.log(), bias)]
        loss = fn(*leaves)
        loss.backward()
        results.append([loss.detach()] + [leaf.grad if leaf.grad is not None else torch.zeros(()) for leaf in leaves])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_every_cpu_build_agrees(capability):
    """The portable and AVX2 builds (chosen by ATEN_CPU_CAPABILITY) give the same numbers."""
    script = (
        "import torch, torch.nn.functional as F; from pretrain_mm.ops import contrastive_loss, _extension;"
        "g = torch.Generator().manual_seed(0);"
        "x = F.normalize(torch.randn(300, 40, generator=g), dim=1);"
        "y = F.normalize(torch.randn(300, 40, generator=g), dim=1);"
        "print(_extension.BUILD_INFO);"
        "print(contrastive_loss(x, y, torch.tensor(20.0)).item(),"
        " contrastive_loss(x, y, torch.tensor(20.0), torch.tensor(-4.0), kind='sigmoid').item())"
    )
    outputs = {}
    for cap in (capability, None):
        env = dict(os.environ)
        env.pop("ATEN_CPU_CAPABILITY", None)
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        info, values = out.stdout.strip().splitlines()
        outputs[cap] = (info, [float(v) for v in values.split()])
    info, values = outputs[capability]
    if capability.upper() not in info.upper() and capability != "default":
        pytest.skip(f"this CPU cannot run {capability}: {info}")
    assert info.lower().startswith(f"cpu={capability}")
    for got, want in zip(values, outputs[None][1]):
        assert got == pytest.approx(want, rel=1e-5)
