"""fp32 against bf16 autocast for a training step of the default runs, and what trainer.precision=auto picks.

    python benchmarks/bench_precision.py            # the main command's CLIP step and the MAE step, on the CPU
    python benchmarks/bench_precision.py --device cuda

`auto` (pretrain_mm/precision.py) picks bf16 only where the hardware multiplies it natively (a CUDA
device with bf16, a CPU with AVX512-BF16 or AMX). This prints, side by side in one run, the median
step time in fp32 and in bf16, the choice, and the chosen precision's time over the faster one's:
the target is at most 1.20 (auto never more than 20% slower than the better precision). Each cell
runs in its own process; the step is the trainer's: forward, loss, backward, clip, AdamW.
"""

import argparse
import json

from common import median_seconds, random_training_setup, run_fresh, train_step

# The default experiments' models and batches (conf/exp/clip.yaml, conf/exp/mae.yaml).
DEFAULT_CONFIGS = ["clip:tiny:32:256", "mae:tiny:64:256"]


def measure(kind, size, image_size, batch, precision, device_name, steps):
    import torch

    from pretrain_mm.ops import contrastive_loss
    from pretrain_mm.precision import autocast, resolve_precision

    device = torch.device(device_name)
    model, optimizer, images, text = random_training_setup(kind, size, image_size, batch, device)
    in_precision = autocast(resolve_precision(precision, device), device)

    def step():
        with in_precision:
            if kind == "clip":
                out = model(images, text)
                loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
            else:
                loss = model(images)["loss"]
        train_step(loss, model, optimizer)

    return median_seconds(step, steps, device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="kind:size:image_size:batch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, size, image_size, batch, precision = args.worker
        print(json.dumps(measure(kind, size, int(image_size), int(batch), precision, args.device, args.steps)))
        return

    import torch

    from pretrain_mm.precision import resolve_precision

    device = torch.device(args.device)
    choice = resolve_precision("auto", device)
    print(
        f"device={args.device}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads; auto -> {choice.name} ({choice.reason})"
    )
    header = f"{'config':>20} | {'fp32 s/step':>11} {'bf16 s/step':>11} | {'auto':>4} {'auto/best':>9}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for config in args.configs:
        seconds = {}
        for precision in ("fp32", "bf16"):
            worker = ["--device", args.device, "--steps", args.steps, "--worker", *config.split(":"), precision]
            seconds[precision] = run_fresh(__file__, *worker)
        ratio = seconds[choice.name] / min(seconds.values())
        worst = max(worst, ratio)
        print(
            f"{config:>20} | {seconds['fp32']:>11.3f} {seconds['bf16']:>11.3f} | {choice.name:>4} {ratio:>8.2f}x",
            flush=True,
        )
    print(
        f"auto is at most {worst:.2f}x the faster precision's step time (target <= 1.20): "
        f"{'met' if worst <= 1.20 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
