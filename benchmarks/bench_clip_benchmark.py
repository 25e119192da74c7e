"""Our evaluator vs CLIP_benchmark's on the same model and the same CLIP_benchmark-layout directory.

    python benchmarks/bench_clip_benchmark.py                 # trains a tiny CLIP on stamps first (~3 min)
    python benchmarks/bench_clip_benchmark.py --run outputs/x # a finished run of yours (patch stem, CLIP BPE)

The run is exported to open_clip (`python -m pretrain_mm.export --format open_clip`);
CLIP_benchmark (clip-benchmark from PyPI, in open_clip's venv: it needs webdataset <= 0.2.86
like open_clip's trainer) evaluates that export with `clip_benchmark eval --dataset wds/...`;
`python -m pretrain_mm +exp=eval eval.clip_benchmark_dirs=[...]` evaluates the run itself. Both
in fp32 (CLIP_benchmark's --no_amp), on the built-in stamps' val split in CLIP_benchmark's layout
(or --dir). Prints zero-shot top-1 / top-5 from each and the difference, in points.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_vs_openclip import ensure_venv

CLIP_BENCHMARK = "clip-benchmark==1.6.2"
NUMPY = "numpy<2.4"  # CLIP_benchmark 1.6.2 calls float() on 1-element arrays: an error since NumPy 2.4
ROOT = Path(__file__).resolve().parent.parent


def train_run(work: Path, steps: int) -> Path:
    run = work / "run"
    subprocess.run([sys.executable, "-m", "pretrain_mm", "+exp=clip", "data=stamps", "model.args.vision_stem=patch",
                    f"trainer.max_steps={steps}", "trainer.batch_size=128", "trainer.checkpoint_every=1000",
                    "eval.enabled=false", f"hydra.run.dir={run}"], check=True, cwd=ROOT)
    return run


def clip_benchmark_python(venv: Path) -> Path:
    python = ensure_venv(venv)
    check = "import clip_benchmark, numpy; assert tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 4)"
    if subprocess.run([python, "-c", check], capture_output=True).returncode:
        print(f"installing {CLIP_BENCHMARK} and {NUMPY} into {venv} ...", flush=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "-c", venv / "pins.txt", CLIP_BENCHMARK, NUMPY],
                       check=True)
    return python


def theirs(python: Path, exported: Path, directory: Path, work: Path) -> dict:
    out = work / "clip_benchmark.json"
    subprocess.run([python, "-m", "clip_benchmark.cli", "eval", "--dataset", f"wds/{directory.name}",
                    "--dataset_root", str(directory), "--task", "zeroshot_classification",
                    "--model_type", "open_clip", "--model", f"local-dir:{exported}", "--pretrained", "none",
                    "--output", str(out), "--batch_size", "64", "--num_workers", "0", "--no_amp"], check=True)
    metrics = json.loads(out.read_text())["metrics"]
    return {"top1": 100 * metrics["acc1"], "top5": 100 * metrics["acc5"]}


def ours(run: Path, directory: Path, work: Path) -> dict:
    out = work / "ours"
    subprocess.run([sys.executable, "-m", "pretrain_mm", "+exp=eval", f"eval.checkpoint={run}",
                    f"eval.clip_benchmark_dirs=[{directory}]", "eval.retrieval=[]", "eval.classification=[]",
                    "eval.random_baseline=false", f"eval.output_dir={out}", f"hydra.run.dir={work / 'eval_job'}"],
                   check=True, cwd=ROOT)
    results = json.loads((out / "report" / "results.json").read_text())["metrics"]["trained"]
    return zeroshot_of(results, directory.name)


def zeroshot_of(results: dict, name: str) -> dict:
    """{'top1', 'top5'} in % of our results.json's zero-shot entry '<set>/label' for set `name`."""
    entry = results["zeroshot"].get(f"{name}/label")
    if entry is None:
        raise RuntimeError(f"no zero-shot result for {name} in our report: {sorted(results['zeroshot'])}")
    return {k: 100 * entry[k] for k in ("top1", "top5") if k in entry}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: train one on stamps)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dir", type=Path, help="a CLIP_benchmark webdataset directory (default: stamps' val)")
    parser.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "pretrain_mm" / "openclip-venv")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from pretrain_mm.data import builtin_dir
    from pretrain_mm.data.stamps import CLIP_BENCHMARK_DIR
    from pretrain_mm.export import export

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_clip_benchmark-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.dir is None:
        args.dir = Path(builtin_dir("stamps")) / CLIP_BENCHMARK_DIR
    run = args.run or train_run(work, args.steps)
    exported = work / "open_clip"
    export(run, exported, "open_clip")
    a, b = ours(run, args.dir, work), theirs(clip_benchmark_python(args.venv), exported, args.dir, work)
    print(f"\nzero-shot on {args.dir} ({run}):")
    print("| metric | pretrain_mm | CLIP_benchmark | difference (points) |\n| --- | --- | --- | --- |")
    for k in a:
        print(f"| {k} | {a[k]:.2f}% | {b[k]:.2f}% | {a[k] - b[k]:+.2f} |")
    (work / "agreement.json").write_text(json.dumps({"ours": a, "clip_benchmark": b}))


if __name__ == "__main__":
    main()
