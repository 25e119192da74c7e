"""Fused contrastive loss vs the naive loss vs the matmul floor: fwd+bwd time and peak memory.

    python benchmarks/bench_contrastive.py                       # CPU, N = 4096 .. 32768, fp32 and bf16
    python benchmarks/bench_contrastive.py --device cuda --sizes 8192 32768 65536

Four implementations of the same CLIP (softmax) loss, forward and backward:
  fused  pretrain_mm.ops.contrastive_loss(impl="fused"): panels, never the N x N logits
  naive  open_clip's ClipLoss on one process, as written there: logits_per_image = s * I @ T^T
         and logits_per_text = s * T @ I^T materialised (two products), F.cross_entropy each
  shared the stronger naive loss: one product, its transpose for the text direction (what
         ClipLoss does across ranks without local_loss)
  floor  only the matmuls the fused op performs (same panels, same shapes): the time no
         fused implementation built on these matmuls can beat
Each (implementation, N, dtype) runs in a fresh process, so peak memory is its own: RSS
high-water mark on CPU (reset through /proc/self/clear_refs), max_memory_allocated on CUDA,
measured above what the inputs already hold over one step after a warm-up step (in its own
process, glibc's mmap threshold fixed so that RSS follows live memory). Times are the median
of --repeats steps after a warm-up step.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from common import PeakMemory

IMPLS = ("fused", "naive", "shared", "floor")
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
            torch.mm(img[r0 : r0 + rows], txt.T, out=panel[: min(rows, n - r0)])
        dq, dk = torch.zeros_like(img), torch.zeros_like(txt)
        for r0 in range(0, n, rows):
            p = panel[: min(rows, n - r0)]
            torch.mm(img[r0 : r0 + rows], txt.T, out=p)
            dq[r0 : r0 + rows].addmm_(p, txt)
            dk.addmm_(p.T, img[r0 : r0 + rows])
    return dq, dk


def measure(impl, n, dim, dtype_name, device_name, repeats, memory_run):
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
            labels = torch.arange(n, device=device)
            logits_per_image = scale * img @ txt.T
            logits_per_text = scale * txt @ img.T if impl == "naive" else logits_per_image.T
            loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        loss.backward()
        img.grad = txt.grad = scale.grad = None

    step()  # warm-up: libraries loaded, BLAS buffers made
    if memory_run:  # one steady-state step, its peak memory
        memory = PeakMemory(device)
        memory.start()
        step()
        return {"peak_extra_bytes": memory.peak(), "input_bytes": 2 * img.numel() * img.element_size()}
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"impl": impl, "n": n, "dtype": dtype_name, "seconds": times[len(times) // 2]}


# ---- the driver: every measurement side by side, one table ---------------------------


def run_in_subprocess(impl, n, args):
    """Times in one process; peak memory in another, where glibc's mmap threshold is fixed
    (otherwise it rises as large blocks are freed and keeps later ones in the heap, so RSS
    would miss or keep memory) — which would slow the timed steps with page faults."""
    result = {"impl": impl, "n": n}
    for memory_run in (False, True):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            impl,
            "--sizes",
            str(n),
            "--dim",
            str(args.dim),
            "--dtypes",
            args.dtype_now,
            "--device",
            args.device,
            "--repeats",
            str(args.repeats),
        ]
        env = dict(os.environ)
        if memory_run:
            cmd.append("--memory")
            env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
            return {"impl": impl, "n": n, "error": f"exit {out.returncode}: {tail}"}
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return result


def naive_fits(impl, n, dtype_name, device):
    """The naive losses hold about six (shared) or eight (naive) N x N matrices at their peak."""
    need = (8 if impl == "naive" else 6) * n * n * (4 if dtype_name == "fp32" else 2)
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
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(
            json.dumps(
                measure(args.worker, args.sizes[0], args.dim, args.dtypes[0], args.device, args.repeats, args.memory)
            )
        )
        return

    from pretrain_mm.ops import _extension

    print(
        f"device={args.device} D={args.dim} repeats={args.repeats} build: {_extension.BUILD_INFO}, "
        f"workspace {_extension.DEFAULT_WORKSPACE_BYTES >> 20} MiB"
    )
    header = " ".join([f"{'N':>6}", f"{'dtype':>5}", *(f"{title:>{width}}" for title, width, _ in COLUMNS)])
    print(header)
    print("-" * len(header))
    results = []
    for dtype_name in args.dtypes:
        args.dtype_now = dtype_name
        for n in args.sizes:
            row = {}
            for impl in IMPLS:
                if impl in ("naive", "shared") and not naive_fits(impl, n, dtype_name, args.device):
                    row[impl] = {"impl": impl, "n": n, "error": "skipped: N x N logits do not fit in memory"}
                else:
                    row[impl] = run_in_subprocess(impl, n, args)
            results.append(row)
            print(format_row(n, dtype_name, row), flush=True)
    for row in results:
        for r in row.values():
            if "error" in r:
                print(f"note: {r['impl']} N={r['n']}: {r['error']}")


def _seconds(impl):
    return lambda row: row[impl].get("seconds")


def _mib(impl):
    return lambda row: row[impl]["peak_extra_bytes"] / 2**20 if "peak_extra_bytes" in row[impl] else None


def _ratio(top, bottom):
    return lambda row: top(row) / bottom(row) if top(row) is not None and bottom(row) else None


# (title, width, value of a row): times, then speed ratios, then memory above the inputs and its ratios.
COLUMNS = [
    *[(f"{impl} s", 8, _seconds(impl)) for impl in IMPLS],
    ("naive/fused", 11, _ratio(_seconds("naive"), _seconds("fused"))),
    ("shared/fused", 12, _ratio(_seconds("shared"), _seconds("fused"))),
    ("fused/floor", 11, _ratio(_seconds("fused"), _seconds("floor"))),
    *[(f"{impl} MiB", 10, _mib(impl)) for impl in ("fused", "naive", "shared")],
    ("naive/fused mem", 15, _ratio(_mib("naive"), _mib("fused"))),
    ("shared/fused mem", 16, _ratio(_mib("shared"), _mib("fused"))),
]


def format_row(n, dtype_name, row):
    cells = [f"{n:>6}", f"{dtype_name:>5}"]
    for title, width, value in COLUMNS:
        x = value(row)
        text = "-" if x is None else f"{x:.2f}x" if "/" in title else f"{x:.1f}" if "MiB" in title else f"{x:.3f}"
        cells.append(f"{text:>{width}}")
    return " ".join(cells)


if __name__ == "__main__":
    main()
