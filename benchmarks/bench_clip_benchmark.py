"""Our evaluator vs CLIP_benchmark's on the same model and the same CLIP_benchmark-layout directory.

    python benchmarks/bench_clip_benchmark.py                 # trains a tiny CLIP on stamps first (~6 min)
    python benchmarks/bench_clip_benchmark.py --run outputs/x # a finished run of yours (patch stem, CLIP BPE)

The run is exported to open_clip (`python -m pretrain_mm.export --format open_clip`);
CLIP_benchmark (clip-benchmark from PyPI, in open_clip's venv: it needs webdataset <= 0.2.86
like open_clip's trainer) evaluates that export with `clip_benchmark eval --dataset wds/...`;
`python -m pretrain_mm +exp=eval eval.clip_benchmark_dirs=[...]` evaluates the run itself. Both
in fp32 (CLIP_benchmark's --no_amp), on the built-in stamps' val split in CLIP_benchmark's layouts
(classification, and retrieval with each image's caption; or --dir / --retrieval-dir). Prints
zero-shot top-1 / top-5 and retrieval R@1/5/10 both ways from each, and the difference in points.
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
    # bench_vs_openclip's shape (patch 8 at 64 px, batch 64): open_clip's image tower, CLIP's BPE.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain_mm",
            "+exp=clip",
            "data=stamps",
            "model.args.vision_stem=patch",
            "model.args.patch_size=8",
            f"trainer.max_steps={steps}",
            "trainer.batch_size=64",
            "trainer.checkpoint_every=1000",
            "eval.enabled=false",
            f"hydra.run.dir={run}",
        ],
        check=True,
        cwd=ROOT,
    )
    return run


def clip_benchmark_python(venv: Path) -> Path:
    python = ensure_venv(venv)
    check = "import clip_benchmark, numpy; assert tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 4)"
    if subprocess.run([python, "-c", check], capture_output=True).returncode:
        print(f"installing {CLIP_BENCHMARK} and {NUMPY} into {venv} ...", flush=True)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "-c", venv / "pins.txt", CLIP_BENCHMARK, NUMPY], check=True
        )
    return python


def retrieval_dir(val_urls, out: Path) -> Path:
    """The val split in CLIP_benchmark's retrieval layout: test/0.tar of image + caption (.txt),
    test/nshards.txt, dataset_type.txt = retrieval; one image per distinct caption, as CLIP's BPE
    reads it ("A cat" and "a cat" are one). Two images with the same caption make exact ties, which
    the two evaluators break differently: ours counts a tie against the model, CLIP_benchmark's
    topk may rank the positive first."""
    from pretrain_mm.data import ShardWriter, iter_shard, load_tokenizer

    tokenizer, seen = load_tokenizer("clip", context_length=77), set()
    with ShardWriter(str(out / "test"), shard_size=10**9, name_format="{}.tar") as writer:
        for url in val_urls:
            for sample in iter_shard(url, frozenset({"png", "jpg", "txt"})):
                tokens = tuple(tokenizer([sample["txt"].decode("utf-8")])[0].tolist())
                if tokens in seen:
                    continue
                seen.add(tokens)
                image = "png" if "png" in sample else "jpg"
                writer.write(sample["__key__"], {image: sample[image], "txt": sample["txt"]})
    (out / "test" / "nshards.txt").write_text("1\n")
    (out / "dataset_type.txt").write_text("retrieval\n")
    return out


def theirs(python: Path, exported: Path, classification: Path, retrieval: Path | None, work: Path) -> dict:
    """CLIP_benchmark's figures in %, named as ours: zero-shot top1/top5, retrieval R@1/5/10 both ways."""

    def run(directory, task, extra=()):
        out = work / f"clip_benchmark-{task}.json"
        subprocess.run(
            [
                python,
                "-m",
                "clip_benchmark.cli",
                "eval",
                "--dataset",
                f"wds/{directory.name}",
                "--dataset_root",
                str(directory),
                "--task",
                task,
                "--model_type",
                "open_clip",
                "--model",
                f"local-dir:{exported}",
                "--pretrained",
                "none",
                "--output",
                str(out),
                "--batch_size",
                "64",
                "--num_workers",
                "0",
                "--no_amp",
                *extra,
            ],
            check=True,
        )
        return json.loads(out.read_text())["metrics"]

    metrics = run(classification, "zeroshot_classification")
    found = {"zero-shot top1": 100 * metrics["acc1"], "zero-shot top5": 100 * metrics["acc5"]}
    if retrieval is not None:
        metrics = run(retrieval, "zeroshot_retrieval", ["--recall_k", "1", "5", "10"])
        for k in (1, 5, 10):  # CLIP_benchmark: image retrieval = text -> image, text retrieval = image -> text
            found[f"text_to_image_R@{k}"] = 100 * metrics[f"image_retrieval_recall@{k}"]
            found[f"image_to_text_R@{k}"] = 100 * metrics[f"text_retrieval_recall@{k}"]
    return found


def ours(run: Path, classification: Path, retrieval: Path | None, work: Path) -> dict:
    out = work / "ours"
    dirs = ",".join(str(d) for d in (classification, retrieval) if d is not None)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain_mm",
            "+exp=eval",
            f"eval.checkpoint={run}",
            f"eval.clip_benchmark_dirs=[{dirs}]",
            "eval.retrieval=[]",
            "eval.classification=[]",
            "eval.random_baseline=false",
            "eval.precision=fp32",  # as CLIP_benchmark computes on a CPU: no bf16 rounding on either side
            f"eval.output_dir={out}",
            f"hydra.run.dir={work / 'eval_job'}",
        ],
        check=True,
        cwd=ROOT,
    )
    results = json.loads((out / "report" / "results.json").read_text())["metrics"]["trained"]
    entry = results["zeroshot"].get(f"{classification.name}/label")
    if entry is None:
        raise RuntimeError(f"no zero-shot result for {classification} in our report: {sorted(results['zeroshot'])}")
    found = {f"zero-shot {k}": 100 * entry[k] for k in ("top1", "top5")}
    if retrieval is not None:
        found.update({k: 100 * v for k, v in results["retrieval"][retrieval.name].items()})
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: train one on stamps)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--dir", type=Path, help="a CLIP_benchmark classification directory (default: stamps' val)")
    parser.add_argument(
        "--retrieval-dir",
        type=Path,
        help="a CLIP_benchmark retrieval directory (default: stamps' val with its captions)",
    )
    parser.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "pretrain_mm" / "openclip-venv")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from pretrain_mm.data import builtin_dir, get_builtin
    from pretrain_mm.data.stamps import CLIP_BENCHMARK_DIR
    from pretrain_mm.export import export

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_clip_benchmark-"))
    work.mkdir(parents=True, exist_ok=True)
    stamps = args.dir is None
    if stamps:
        args.dir = Path(builtin_dir("stamps")) / CLIP_BENCHMARK_DIR
    run = args.run or train_run(work, args.steps)
    exported = work / "open_clip"
    export(run, exported, "open_clip")
    retrieval = args.retrieval_dir
    if retrieval is None and stamps:
        retrieval = retrieval_dir(get_builtin("stamps", "val"), work / "stamps_retrieval")
    python = clip_benchmark_python(args.venv)
    a, b = ours(run, args.dir, retrieval, work), theirs(python, exported, args.dir, retrieval, work)
    print(f"\n{run} on {args.dir}" + (f" and {retrieval}" if retrieval else "") + ":")
    print("| metric | pretrain_mm | CLIP_benchmark | difference (points) |\n| --- | --- | --- | --- |")
    for k in a:
        print(f"| {k} | {a[k]:.2f}% | {b[k]:.2f}% | {a[k] - b[k]:+.2f} |")
    (work / "agreement.json").write_text(json.dumps({"ours": a, "clip_benchmark": b}))


if __name__ == "__main__":
    main()
