"""Full-batch contrastive accumulation: peak memory and samples/s of a CLIP step against the global batch.

    python benchmarks/bench_accumulation.py                       # CPU: tiny CLIP, 32 px, micro-batch 256, 1K..32K
    python benchmarks/bench_accumulation.py --device cuda --size base --image-size 224 --micro 256
    python benchmarks/bench_accumulation.py --plot accumulation.png

A step is the trainer's (train/loop.py): the global batch cut into micro-batches of --micro, the
gradients of the whole batch's contrastive loss by GradCache (train/accumulation.py), the
gradient norm, clipping, AdamW, the logit-scale clamp. Each row runs in a fresh process on
random inputs held as the trainer holds them (uint8 images, token ids), after a warm-up step of
two micro-batches. "step MiB" is the peak RSS above the state before the step (inputs, model,
optimiser state already there), measured in its own process with MALLOC_MMAP_THRESHOLD_=65536
so that glibc returns every freed block and the high-water mark is the step's real peak (that
allocator is slow, so samples/s comes from another process with the default one, the median of
a few steps); "inputs MiB" is the global batch's inputs. The "no accumulation" rows take the same global
batch in one piece
(every sample's activations at once), up to --max-unaccumulated. The ratios compare each row's
samples/s with the unaccumulated step at the micro-batch size, measured in the same run.
"""

import argparse
import json
import os

from common import PeakMemory, median_seconds, random_training_setup, run_fresh

GLOBAL_BATCHES = [1024, 2048, 4096, 8192, 16384, 32768]


def measure(mode, size, image_size, global_batch, micro, device_name, precision_name, kind):
    import torch

    from pretrain_mm.config import LossConfig
    from pretrain_mm.data.transforms import Normalize
    from pretrain_mm.precision import autocast, resolve_precision
    from pretrain_mm.train.accumulation import accumulate_gradients
    from pretrain_mm.train.loop import split_batch
    from pretrain_mm.train.objectives import ContrastiveObjective
    from pretrain_mm.train.optimizer import clip_gradients, grad_norm

    device = torch.device(device_name)
    model, optimizer, _, text = random_training_setup("clip", size, image_size, global_batch, device)
    images = torch.randint(0, 256, (global_batch, 3, image_size, image_size), dtype=torch.uint8, device=device)
    objective = ContrastiveObjective(LossConfig(kind=kind))
    normalize = Normalize()
    in_precision = autocast(resolve_precision(precision_name, device), device)

    def step(batch_size):
        parts = batch_size // micro
        batch = {"image": images[:batch_size], "text": text[:batch_size]}
        accumulate_gradients(
            model,
            objective,
            split_batch(batch, parts, device),
            in_precision,
            prepare=lambda m: {**m, "image": normalize(m["image"])},
        )
        clip_gradients(model.parameters(), 1.0, grad_norm(model.parameters()))
        optimizer.step()
        objective.after_step(model)
        optimizer.zero_grad(set_to_none=True)

    step(min(global_batch, 2 * micro))  # allocates the optimiser state and warms the kernels
    if mode == "memory":
        memory = PeakMemory(device)
        memory.start()
        step(global_batch)
        inputs = images.numel() * images.element_size() + text.numel() * text.element_size()
        return {"step_bytes": memory.peak(), "input_bytes": inputs}
    # Warmed up above at two micro-batches: a second warm-up at 32K would cost minutes.
    seconds = median_seconds(lambda: step(global_batch), max(1, 4096 // global_batch), device, warmup=False)
    return {"samples_per_s": global_batch / seconds}


def run_worker(args, global_batch, micro):
    """Samples/s and peak memory of one configuration, each from a fresh process."""
    result = {}
    for mode in ("speed", "memory"):
        config = ["--device", args.device, "--size", args.size, "--image-size", args.image_size]
        config += ["--precision", args.precision, "--kind", args.kind]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if mode == "memory" else None
        result.update(run_fresh(__file__, *config, "--worker", mode, global_batch, micro, env=env))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--micro", type=int, default=256)
    parser.add_argument("--kind", default="softmax", choices=["softmax", "sigmoid"])
    parser.add_argument("--global-batches", type=int, nargs="+", default=GLOBAL_BATCHES)
    parser.add_argument(
        "--max-unaccumulated", type=int, default=8192, help="the largest global batch also run without accumulation"
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--plot", help="write a PNG of memory and samples/s against the global batch")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, global_batch, micro = args.worker
        print(
            json.dumps(
                measure(
                    mode,
                    args.size,
                    args.image_size,
                    int(global_batch),
                    int(micro),
                    args.device,
                    args.precision,
                    args.kind,
                )
            )
        )
        return

    import torch

    from pretrain_mm.precision import resolve_precision

    precision = resolve_precision(args.precision, torch.device(args.device))
    print(
        f"device={args.device}, {precision.name} ({precision.reason}); CLIP {args.size} at {args.image_size} px, "
        f"{args.kind} loss, micro-batch {args.micro}",
        flush=True,
    )
    base = run_worker(args, args.micro, args.micro)
    print(
        f"unaccumulated step at the micro-batch ({args.micro}): {base['samples_per_s']:.1f} samples/s, "
        f"step {base['step_bytes'] / 2**20:.0f} MiB",
        flush=True,
    )
    header = (
        f"{'global':>7} {'micro':>6} | {'step MiB':>8} {'vs 1st':>6} {'inputs MiB':>10} | {'sam/s':>7} "
        f"{'vs micro':>8} | {'no-accum MiB':>12} {'no-accum sam/s':>14}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for global_batch in args.global_batches:
        acc = run_worker(args, global_batch, args.micro)
        plain = run_worker(args, global_batch, global_batch) if global_batch <= args.max_unaccumulated else None
        rows.append((global_batch, acc, plain))
        first = rows[0][1]["step_bytes"]
        print(
            f"{global_batch:>7} {args.micro:>6} | {acc['step_bytes'] / 2**20:>8.0f} {acc['step_bytes'] / first:>5.2f}x "
            f"{acc['input_bytes'] / 2**20:>10.0f} | {acc['samples_per_s']:>7.1f} "
            f"{acc['samples_per_s'] / base['samples_per_s']:>7.2f}x | "
            + (
                f"{plain['step_bytes'] / 2**20:>12.0f} {plain['samples_per_s']:>14.1f}"
                if plain
                else f"{'-':>12} {'-':>14}"
            ),
            flush=True,
        )
    if args.plot:
        plot(rows, base, args)


def plot(rows, base, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r[0] for r in rows]
    fig, (mem, speed) = plt.subplots(1, 2, figsize=(10, 4))
    mem.plot(sizes, [r[1]["step_bytes"] / 2**20 for r in rows], "o-", label=f"accumulated (micro {args.micro})")
    plain = [(r[0], r[2]["step_bytes"] / 2**20) for r in rows if r[2]]
    mem.plot(*zip(*plain), "s--", label="no accumulation")
    mem.set(xscale="log", yscale="log", xlabel="global batch", ylabel="step peak memory (MiB)")
    speed.plot(sizes, [r[1]["samples_per_s"] for r in rows], "o-", label="accumulated")
    speed.axhline(base["samples_per_s"], color="gray", ls=":", label=f"unaccumulated, batch {args.micro}")
    speed.set(xscale="log", xlabel="global batch", ylabel="samples / s", ylim=(0, None))
    for ax in (mem, speed):
        ax.set_xticks(sizes, [f"{s // 1024}K" for s in sizes])
        ax.legend()
    fig.suptitle(f"CLIP {args.size} {args.image_size}px, {args.kind}, {args.device}")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
