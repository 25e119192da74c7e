"""Fused contrastive loss vs the naive loss vs the matmul floor: fwd+bwd time and peak memory.

    python benchmarks/bench_contrastive.py                       # CPU, N = 4096 .. 32768, fp32 and bf16
    python benchmarks/bench_contrastive.py --device cuda --sizes 8192 32768 65536

Three implementations of the same CLIP (softmax) loss, forward and backward:
  fused  pretrain_mm.ops.contrastive_loss(impl="fused"): panels, never the N x N logits
  naive  open_clip's recipe on one process: logits = s * I @ T^T materialised, then
         F.cross_entropy both ways (one product, shared by both directions: the stronger
         baseline; open_clip's ClipLoss computes a second product for logits_per_text)
  floor  only the matmuls the fused op performs (same panels, same shapes): the time no
         fused implementation built on these matmuls can beat
Each (implementation, N, dtype) runs in a fresh process, so peak memory is its own: RSS
high-water mark on CPU (reset through /proc/self/clear_refs), max_memory_allocated on CUDA,
measured above what the inputs already hold. Times are the median of --repeats runs after
one warm-up.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from common import PeakMemory

IMPLS = ("fused", "naive", "floor")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


# ---- one measurement, in its own process --------------------------------------------

def _floor_step(img, txt, workspace_bytes):
    """The fused op's matmuls alone: one product per panel forward; backward recomputes it
    and multiplies it into dQ and dK."""
    import torch

    n, dim = img.shape
    rows = max(1, min(n, workspace_bytes // (4 * n)))
    panel = torch.empty(rows, n, dtype=img.dtype, device=img.device)
    with torch.no_grad():
        for r0 in range(0, n, rows):
            torch.mm(img[r0:r0 + rows], txt.T, out=panel[: min(rows, n - r0)])
        dq, dk = torch.zeros_like(img), torch.zeros_like(txt)
        for r0 in range(0, n, rows):
            p = panel[: min(rows, n - r0)]
            torch.mm(img[r0:r0 + rows], txt.T, out=p)
            dq[r0:r0 + rows].addmm_(p, txt)
            dk.addmm_(p.T, img[r0:r0 + rows])
    return dq, dk


def measure(impl, n, dim, dtype_name, device_name, repeats):
    import torch
    import torch.nn.functional as F

    from pretrain_mm.ops import _extension, contrastive_loss

    device, dtype = torch.device(device_name), getattr(torch, DTYPES[dtype_name])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator(device=device).manual_seed(0)
    img = F.normalize(torch.randn(n, dim, device=device, generator=g), dim=1).to(dtype).requires_grad_()
    txt = F.normalize(torch.randn(n, dim, device=device, generator=g), dim=1).to(dtype).requires_grad_()
    scale = torch.tensor(14.0, device=device, requires_grad=True)
    torch.mm(img[:64].detach(), txt[:64].detach().T)  # initialise the BLAS before measuring

    def step():
        if impl == "floor":
            return _floor_step(img.detach(), txt.detach(), _extension.DEFAULT_WORKSPACE_BYTES)
        if impl == "fused":
            loss = contrastive_loss(img, txt, scale, impl="fused")
        else:
            logits = scale * img @ txt.T
            labels = torch.arange(n, device=device)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
        img.grad = txt.grad = scale.grad = None

    memory = PeakMemory(device)
    memory.start()
    times = []
    for _ in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return {"impl": impl, "n": n, "dtype": dtype_name, "seconds": times[len(times) // 2],
            "peak_extra_bytes": memory.peak(), "input_bytes": 2 * img.numel() * img.element_size()}


# ---- the driver: every measurement side by side, one table ---------------------------

def run_in_subprocess(impl, n, args):
    cmd = [sys.executable, __file__, "--worker", impl, "--sizes", str(n), "--dim", str(args.dim),
           "--dtypes", args.dtype_now, "--device", args.device, "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"impl": impl, "n": n, "error": f"exit {out.returncode}: {tail}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def naive_fits(n, dtype_name, device):
    """The naive loss holds about six N x N fp32-sized matrices at its peak."""
    need = 6 * n * n * (4 if dtype_name == "fp32" else 2)
    if device == "cuda":
        import torch

        return need < 0.9 * torch.cuda.get_device_properties(0).total_memory
    return need < 0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(measure(args.worker, args.sizes[0], args.dim, args.dtypes[0], args.device, args.repeats)))
        return

    from pretrain_mm.ops import _extension

    print(f"device={args.device} D={args.dim} repeats={args.repeats} build: {_extension.BUILD_INFO}, "
          f"workspace {_extension.DEFAULT_WORKSPACE_BYTES >> 20} MiB")
    header = (f"{'N':>6} {'dtype':>5} | {'fused s':>8} {'naive s':>8} {'floor s':>8} | {'naive/fused':>11} "
              f"{'fused/floor':>11} | {'fused MiB':>9} {'naive MiB':>9} {'naive/fused':>11}")
    print(header)
    print("-" * len(header))
    results = []
    for dtype_name in args.dtypes:
        args.dtype_now = dtype_name
        for n in args.sizes:
            row = {}
            for impl in IMPLS:
                if impl == "naive" and not naive_fits(n, dtype_name, args.device):
                    row[impl] = {"impl": impl, "n": n, "error": "skipped: N x N logits do not fit in memory"}
                else:
                    row[impl] = run_in_subprocess(impl, n, args)
            results.append(row)
            print(format_row(n, dtype_name, row), flush=True)
    for row in results:
        for r in row.values():
            if "error" in r:
                print(f"note: {r['impl']} N={r['n']}: {r['error']}")


def format_row(n, dtype_name, row):
    def get(impl, key):
        return row[impl].get(key)

    def num(x, fmt):
        return format(x, fmt) if x is not None else "-"

    def ratio(a, b):
        return a / b if a is not None and b else None

    mib = lambda x: x / 2**20 if x is not None else None  # noqa: E731
    return (f"{n:>6} {dtype_name:>5} | {num(get('fused', 'seconds'), '8.3f')} {num(get('naive', 'seconds'), '8.3f')} "
            f"{num(get('floor', 'seconds'), '8.3f')} | "
            f"{num(ratio(get('naive', 'seconds'), get('fused', 'seconds')), '10.2f')}x "
            f"{num(ratio(get('fused', 'seconds'), get('floor', 'seconds')), '10.2f')}x | "
            f"{num(mib(get('fused', 'peak_extra_bytes')), '9.1f')} {num(mib(get('naive', 'peak_extra_bytes')), '9.1f')} "
            f"{num(ratio(get('naive', 'peak_extra_bytes'), get('fused', 'peak_extra_bytes')), '10.1f')}x")


if __name__ == "__main__":
    main()
