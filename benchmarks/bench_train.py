"""CLIP training throughput and peak memory: model sizes and batches, fused vs reference loss.

    python benchmarks/bench_train.py                  # CPU, trainer.precision=auto's choice, the configs below
    python benchmarks/bench_train.py --device cuda --configs small:224:512 base:224:256

A training step here is what the trainer does per batch: forward both towers, the
contrastive loss, backward, clip, AdamW. Inputs are random tensors (the loader has its own
benchmark), so the numbers are the model's and the loss's. Each (config, loss) pair runs in
a fresh process; samples/s is the median over --steps steps after one warm-up step, peak
memory is measured above the state before the first step.
"""

import argparse
import json

from common import PeakMemory, median_seconds, random_training_setup, run_fresh, train_step

DEFAULT_CONFIGS = ["tiny:64:256", "tiny:32:1024", "small:64:128"]


def measure(size, image_size, batch, impl, device_name, steps, precision):
    import torch

    from pretrain_mm.ops import contrastive_loss
    from pretrain_mm.precision import autocast, resolve_precision

    device = torch.device(device_name)
    model, optimizer, images, text = random_training_setup("clip", size, image_size, batch, device)
    in_precision = autocast(resolve_precision(precision, device), device)

    def step():
        with in_precision:
            out = model(images, text)
            loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"], impl=impl)
        train_step(loss, model, optimizer)

    memory = PeakMemory(device)
    memory.start()
    median = median_seconds(step, steps, device)
    return {"samples_per_s": batch / median, "peak_extra_bytes": memory.peak()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="size:image_size:batch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="as trainer.precision (auto: bf16 only where the hardware has it natively)",
    )
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        size, image_size, batch, impl = args.worker
        print(json.dumps(measure(size, int(image_size), int(batch), impl, args.device, args.steps, args.precision)))
        return

    import torch

    from pretrain_mm.precision import resolve_precision

    precision = resolve_precision(args.precision, torch.device(args.device))
    print(
        f"device={args.device}, {precision.name} ({precision.reason}), AdamW; samples/s and peak memory above the start"
    )
    header = (
        f"{'model':>6} {'image':>5} {'batch':>5} | {'fused sam/s':>11} {'ref sam/s':>10} {'ratio':>6} | "
        f"{'fused MiB':>9} {'ref MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for config in args.configs:
        size, image_size, batch = config.split(":")
        row = {}
        for impl in ("fused", "reference"):
            worker = ["--device", args.device, "--steps", args.steps, "--precision", args.precision, "--worker"]
            row[impl] = run_fresh(__file__, *worker, size, image_size, batch, impl)
        f, r = row["fused"], row["reference"]
        print(
            f"{size:>6} {image_size:>5} {batch:>5} | {f['samples_per_s']:>11.1f} {r['samples_per_s']:>10.1f} "
            f"{f['samples_per_s'] / r['samples_per_s']:>5.2f}x | {f['peak_extra_bytes'] / 2**20:>9.0f} "
            f"{r['peak_extra_bytes'] / 2**20:>8.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
