"""CoCa against CLIP: what the captioning decoder costs a step, and what the two give for the same time.

    python benchmarks/bench_coca.py                               # step times, interleaved (2-3 min)
    python benchmarks/bench_coca.py --runs outputs/clip outputs/coca   # + the two runs' reports side by side
    python benchmarks/bench_coca.py --train                       # trains both first (+exp=clip, then
                                                                  # +exp=coca for CLIP's time), ~30 min

Step times: +exp=clip's and +exp=coca's models (tiny, 64 px, 16 px patches by a conv stem, batch 256,
fp32) with the trainer's objectives, the same random batch, rounds alternating between the two so that
slow and fast moments of a shared machine fall on both. The equal-time step count is CLIP's steps x
CLIP's step / CoCa's step (what +exp=coca's trainer.max_steps is set from).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import train_step

COMPARED = (  # (task, dataset, metric) of the report compared side by side
    ("zeroshot", "shapes/colour", "top1"),
    ("zeroshot", "shapes/shape", "top1"),
    ("zeroshot", "digits/label", "top1"),
    ("retrieval", "shapes", "image_to_text_R@5"),
    ("retrieval", "shapes", "text_to_image_R@5"),
    ("linear_probe", "digits", "top1"),
    ("knn", "digits", "top1@k10"),
)


def step_of(kind: str, batch: int, images, text):
    import torch

    from pretrain_mm.config import LossConfig
    from pretrain_mm.models import build_model
    from pretrain_mm.train.objectives import CocaObjective, ContrastiveObjective
    from pretrain_mm.train.optimizer import weight_decay_groups

    torch.manual_seed(0)
    model = build_model(
        kind, "tiny", image_size=64, vocab_size=1024, context_length=32, patch_size=16, vision_stem="conv"
    )
    objective = (CocaObjective if kind == "coca" else ContrastiveObjective)(LossConfig())
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.1), lr=1e-4, fused=True)

    def step():
        train_step(objective(model, {"image": images, "text": text}), model, optimizer)

    return step


def step_times(batch: int, rounds: int, steps: int) -> dict[str, float]:
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 64, 64, generator=g)
    lengths = torch.randint(6, 19, (batch,), generator=g)  # the built-in captions' 6-18 tokens
    text = torch.randint(1, 1023, (batch, 32), generator=g)
    text[torch.arange(32)[None, :] >= lengths[:, None]] = 0
    text[torch.arange(batch), lengths - 1] = 1023  # the end-of-text id
    steps_of = {kind: step_of(kind, batch, images, text) for kind in ("clip", "coca")}
    for step in steps_of.values():
        step()  # warm-up
    times: dict[str, list[float]] = {kind: [] for kind in steps_of}
    for _ in range(rounds):
        for kind, step in steps_of.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            times[kind].append((time.perf_counter() - t0) / steps)
    return {kind: statistics.median(t) for kind, t in times.items()}


def train(clip_steps: int, coca_steps: int, out: Path) -> tuple[Path, Path]:
    runs = (out / "clip", out / "coca")
    for exp, run, steps in (("clip", runs[0], clip_steps), ("coca", runs[1], coca_steps)):
        cmd = [sys.executable, "-m", "pretrain_mm", f"+exp={exp}", f"trainer.max_steps={steps}", f"hydra.run.dir={run}"]
        print("running", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return runs


def compare(clip_run: Path, coca_run: Path) -> None:
    runs = {"clip": clip_run, "coca": coca_run}
    results = {name: json.loads((run / "report" / "results.json").read_text()) for name, run in runs.items()}
    summaries = {name: json.loads((run / "train_summary.json").read_text()) for name, run in runs.items()}
    print(
        f"\nclip: {summaries['clip']['step']} steps in {summaries['clip']['seconds']:.0f} s; "
        f"coca: {summaries['coca']['step']} steps in {summaries['coca']['seconds']:.0f} s"
    )
    print("| task | dataset | metric | CLIP | CoCa | CoCa - CLIP (points) |\n| --- | --- | --- | --- | --- | --- |")
    for task, dataset, metric in COMPARED:
        values = [results[n]["metrics"]["trained"].get(task, {}).get(dataset, {}).get(metric) for n in ("clip", "coca")]
        if None in values:
            continue
        clip, coca = (100 * v for v in values)
        print(f"| {task} | {dataset} | {metric} | {clip:.1f}% | {coca:.1f}% | {coca - clip:+.1f} |")
    captioning = results["coca"]["metrics"]["trained"].get("captioning", {})
    random = results["coca"]["metrics"].get("random", {}).get("captioning", {})
    for dataset, values in captioning.items():
        shown = ", ".join(f"{k} {v:.3f}" if k == "cider_d" else f"{k} {100 * v:.1f}%" for k, v in values.items())
        baseline = random.get(dataset, {})
        print(
            f"CoCa captioning, {dataset}: {shown} (random tower: bleu4 {100 * baseline.get('bleu4', 0):.1f}%, "
            f"cider_d {baseline.get('cider_d', 0):.3f})"
        )


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and round")
    parser.add_argument("--clip-steps", type=int, default=400, help="+exp=clip's trainer.max_steps")
    parser.add_argument("--runs", nargs=2, type=Path, metavar=("CLIP_RUN", "COCA_RUN"))
    parser.add_argument("--train", action="store_true", help="train both (into --out) before comparing")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_coca"))
    args = parser.parse_args()

    times = step_times(args.batch, args.rounds, args.steps)
    ratio = times["coca"] / times["clip"]
    equal = round(args.clip_steps / ratio)
    print(
        f"tiny at 64 px, batch {args.batch}, fp32 on cpu ({torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads), {args.rounds} rounds x {args.steps} steps\n"
        f"| model | median step (ms) | samples/s |\n| --- | --- | --- |\n"
        + "\n".join(f"| {k} | {v * 1e3:.0f} | {args.batch / v:.1f} |" for k, v in times.items())
        + f"\nCoCa's step is {ratio:.2f}x CLIP's: {args.clip_steps} CLIP steps take the time of {equal} CoCa steps"
    )
    runs = train(args.clip_steps, equal, args.out) if args.train else args.runs
    if runs:
        compare(*runs)


if __name__ == "__main__":
    main()
