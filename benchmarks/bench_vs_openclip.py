"""Ours vs open_clip's trainer on the same shards, model shape, batch, steps and hyper-parameters.

    python benchmarks/bench_vs_openclip.py                        # built-in stamps, seeds 0 1 2
    python benchmarks/bench_vs_openclip.py --seeds 0 --steps 100  # a quick look

open_clip_torch (and the webdataset its trainer needs, <= 0.2.86) is installed from PyPI in a
venv of its own (--venv; made on first use, with this interpreter's torch visible so nothing big
is downloaded). For each seed both trainers train the same ViT at --image-size with the same
text tower and embed width, on the built-in set's train shards, then ONE evaluator scores both on
its held-out split: each model embeds the same decoded images (with its own eval preprocessing),
the same captions and the same zero-shot prompts, and the same code computes zero-shot accuracy
and retrieval recall from those features. samples/s is the median of each trainer's logged
steps (both log the images per second of their last steps). Run it with nothing else on the
machine: the two trainers run one after the other and are timed on the same cores.
"""

import argparse
import io
import json
import re
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

OPEN_CLIP = "open_clip_torch[training]==3.3.0"
WEBDATASET = "webdataset==0.2.86"  # open_clip 3.3's trainer calls APIs webdataset 1.0 removed
HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- shared data


def read_split(urls, label_key):
    """[(image bytes, caption, label)] of shards, in order; label_key 'cls' or 'json:<field>'."""
    out = []
    for url in urls:
        samples = {}
        with tarfile.open(url) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key in sorted(samples):
            s = samples[key]
            image = next(s[e] for e in ("jpg", "png", "jpeg", "webp") if e in s)
            if label_key.startswith("json:"):
                label = int(json.loads(s["json"])[label_key[5:]])
            else:
                label = int(s[label_key].decode())
            out.append((image, s["txt"].decode("utf-8").strip(), label))
    return out


def eval_inputs(data):
    """The held-out split and the zero-shot task of a built-in set (read in the main interpreter)."""
    from pretrain_mm.data import builtin_info, get_builtin

    info = builtin_info(data)
    primary = info["label"]
    return {
        "val_urls": get_builtin(data, "val"),
        "label_key": info["label_keys"][primary],
        "classes": info["classes"][primary],
        "templates": info["prompts"][primary],
    }


def embed(side, checkpoint, inputs, model_dir=None, batch=128):
    """{'images', 'captions', 'prompts', 'labels'} features of one trained model on the shared inputs."""
    import torch
    from PIL import Image

    samples = read_split(inputs["val_urls"], inputs["label_key"])
    prompts = [t.replace("{}", c).replace("{c}", c) for c in inputs["classes"] for t in inputs["templates"]]
    if side == "openclip":
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}", load_weights=False)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
        to_input = lambda data: preprocess(Image.open(io.BytesIO(data)).convert("RGB"))  # noqa: E731
    else:
        from pretrain_mm.builders import build_tokenizer
        from pretrain_mm.data.decode import decode_image
        from pretrain_mm.data.transforms import image_transform
        from pretrain_mm.eval.loading import load_checkpoint_model

        model, cfg, _ = load_checkpoint_model(checkpoint, torch.device("cpu"))
        tokenizer, transform = build_tokenizer(cfg.data), image_transform(cfg.data.image_size, train=False)
        to_input = lambda data: transform(decode_image(data))  # noqa: E731
    model.eval()

    def run(encode, items, prepare):
        with torch.no_grad():
            return torch.cat([encode(prepare(items[i : i + batch])).float() for i in range(0, len(items), batch)])

    return {
        "images": run(model.encode_image, [s[0] for s in samples], lambda xs: torch.stack([to_input(x) for x in xs])),
        "captions": run(model.encode_text, [s[1] for s in samples], tokenizer),
        "prompts": run(model.encode_text, prompts, tokenizer),
        "labels": torch.tensor([s[2] for s in samples]),
    }


def score(features, num_classes):
    """The one evaluator: zero-shot top-1 (prompt-ensembled classes) and retrieval R@1/R@5, as %."""
    import torch
    import torch.nn.functional as F

    from pretrain_mm.eval.retrieval import retrieval_recall
    from pretrain_mm.eval.zeroshot import zeroshot_evaluate

    prompts = F.normalize(features["prompts"], dim=-1).view(num_classes, -1, features["prompts"].shape[-1])
    classifier = F.normalize(prompts.mean(dim=1), dim=-1).T
    accuracy, _ = zeroshot_evaluate(features["images"], features["labels"], classifier)
    recall = retrieval_recall(features["images"], features["captions"], torch.arange(len(features["captions"])))
    out = {"zero-shot top-1": 100 * accuracy["top1"]}
    out.update(
        {
            name.replace("image_to_text", "i->t").replace("text_to_image", "t->i"): 100 * value
            for name, value in recall.items()
            if not name.endswith("R@10")
        }
    )
    return out


# ----------------------------------------------------------------------------- the two trainers


def ensure_venv(venv):
    python = venv / "bin" / "python"
    check = f"import open_clip_train.main, webdataset; assert webdataset.__version__ == {WEBDATASET.split('==')[1]!r}"
    if not python.exists() or subprocess.run([python, "-c", check], capture_output=True).returncode:
        print(f"installing {OPEN_CLIP} and {WEBDATASET} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
        import torch
        import torchvision

        pins = venv / "pins.txt"  # keep the torch already here: no multi-GB download
        pins.write_text("".join(f"{m.__name__}=={m.__version__.split('+')[0]}\n" for m in (torch, torchvision)))
        subprocess.run([python, "-m", "pip", "install", "-q", "-c", pins, OPEN_CLIP, WEBDATASET], check=True)
    return python


def openclip_model_dir(out, args, vocab_size=49408):
    """open_clip's config for our size (models.sizes) at --image-size: a local-dir: model."""
    from pretrain_mm.data.transforms import CLIP_MEAN, CLIP_STD
    from pretrain_mm.models.sizes import SIZES

    s = SIZES[args.size]
    cfg = {
        "model_cfg": {
            "embed_dim": s["embed_dim"],
            "vision_cfg": {
                "image_size": args.image_size,
                "layers": s["vision_depth"],
                "width": s["vision_width"],
                "head_width": s["vision_width"] // s["vision_heads"],
                "patch_size": args.patch_size,
            },
            "text_cfg": {
                "context_length": args.context_length,
                "vocab_size": vocab_size,
                "width": s["text_width"],
                "heads": s["text_heads"],
                "layers": s["text_depth"],
            },
        },
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
    return out


def logged_rates(pattern, text):
    rates = [float(m) for m in re.findall(pattern, text)]
    if not rates:
        raise RuntimeError(f"no throughput in the log (pattern {pattern!r})")
    return statistics.median(rates[1:] if len(rates) > 2 else rates)  # the first includes start-up


def train_openclip(python, seed, args, train_urls, work):
    run = work / f"openclip-seed{seed}"
    model_dir = openclip_model_dir(work / "openclip-model", args)
    first, last = Path(train_urls[0]).stem, Path(train_urls[-1]).stem
    pattern = str(Path(train_urls[0]).parent / f"{{{first}..{last}}}.tar")
    cmd = [
        python,
        "-m",
        "open_clip_train.main",
        "--model",
        f"local-dir:{model_dir}",
        "--train-data",
        pattern,
        "--dataset-type",
        "webdataset",
        "--dataset-resampled",
        "--train-num-samples",
        str(args.steps * args.batch_size),
        "--epochs",
        "1",
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--wd",
        str(args.wd),
        "--warmup",
        str(args.warmup),
        "--beta1",
        "0.9",
        "--beta2",
        "0.98",
        "--eps",
        str(args.eps),
        "--grad-clip-norm",
        str(args.grad_clip),
        "--precision",
        "fp32",
        "--workers",
        str(args.workers),
        "--seed",
        str(seed),
        "--logs",
        str(work),
        "--name",
        run.name,
        "--log-every-n-steps",
        "10",
        "--save-frequency",
        "1",
        "--report-to",
        "",
    ]
    log = subprocess.run(cmd, capture_output=True, text=True)
    if log.returncode:
        raise RuntimeError(f"open_clip's trainer failed:\n{log.stdout[-3000:]}\n{log.stderr[-3000:]}")
    (run / "stdout.log").write_text(log.stdout + log.stderr)
    rate = logged_rates(r"Batch \(t\): [\d.]+, ([\d.]+)/s,", log.stdout + log.stderr)
    return run / "checkpoints" / "epoch_1.pt", model_dir, rate


def train_ours(seed, args, work):
    run = work / f"ours-seed{seed}"
    cmd = [
        sys.executable,
        "-m",
        "pretrain_mm",
        "+exp=clip",
        f"data={args.data}",
        f"model.size={args.size}",
        f"++model.args.patch_size={args.patch_size}",
        "++model.args.vision_stem=patch",  # open_clip's ViT embeds patches with one conv: the same shape
        f"data.image_size={args.image_size}",
        f"data.context_length={args.context_length}",
        f"data.num_workers={args.workers}",
        f"trainer.max_steps={args.steps}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.seed={seed}",
        "trainer.precision=fp32",
        f"trainer.checkpoint_every={args.steps}",
        "trainer.resume=never",
        f"optim.lr={args.lr}",
        f"optim.weight_decay={args.wd}",
        f"optim.warmup_steps={args.warmup}",
        f"optim.eps={args.eps}",
        f"optim.grad_clip={args.grad_clip}",
        "eval.enabled=false",
        f"hydra.run.dir={run}",
        *args.ours,
    ]
    log = subprocess.run(cmd, capture_output=True, text=True)
    if log.returncode:
        raise RuntimeError(f"pretrain_mm failed:\n{log.stdout[-3000:]}\n{log.stderr[-3000:]}")
    (run / "stdout.log").write_text(log.stdout + log.stderr)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [m["samples_per_s"] for m in lines if "samples_per_s" in m]
    return run, statistics.median(rates[1:] if len(rates) > 2 else rates)


# ----------------------------------------------------------------------------- the table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="stamps", help="a built-in image-text set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--context-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--wd", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=Path("~/.cache/pretrain_mm/openclip-venv").expanduser())
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_vs_openclip"))
    parser.add_argument("--ours", nargs="*", default=[], help="extra Hydra overrides for our side")
    parser.add_argument(
        "--sides",
        nargs="+",
        default=["open_clip", "pretrain_mm"],
        choices=["open_clip", "pretrain_mm"],
        help="train only one side (a recipe experiment); the table needs both",
    )
    parser.add_argument("--embed", nargs=4, metavar=("SIDE", "CHECKPOINT", "MODEL_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.embed:  # a child process: features of one model (open_clip's side runs in its venv)
        import torch

        side, checkpoint, model_dir, out = args.embed
        inputs = json.loads(Path(out).with_suffix(".inputs.json").read_text())
        torch.save(embed(side, checkpoint, inputs, model_dir), out)
        return

    import torch

    from pretrain_mm.data import get_builtin

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(args.venv) if "open_clip" in args.sides else None
    train_urls, inputs = get_builtin(args.data, "train"), eval_inputs(args.data)
    num_classes = len(inputs["classes"])
    rows = {"open_clip": [], "pretrain_mm": []}
    for seed in args.seeds:
        for side in args.sides:
            if side == "open_clip":
                checkpoint, model_dir, rate = train_openclip(python, seed, args, train_urls, work)
                embed_python, embed_side = python, "openclip"
            else:
                checkpoint, rate = train_ours(seed, args, work)
                model_dir, embed_python, embed_side = "-", sys.executable, "ours"
            out = work / f"{side}-seed{seed}.features.pt"
            out.with_suffix(".inputs.json").write_text(json.dumps(inputs))
            subprocess.run(
                [embed_python, __file__, "--embed", embed_side, str(checkpoint), str(model_dir), str(out)], check=True
            )
            result = score(torch.load(out, weights_only=True), num_classes)
            result["samples/s"] = rate
            rows[side].append(result)
            print(f"seed {seed} {side:12s} " + "  ".join(f"{k} {v:.1f}" for k, v in result.items()), flush=True)

    if len(args.sides) < 2:
        return
    print(
        f"\n{args.data}: {len(train_urls)} train shards, {len(read_split(inputs['val_urls'], inputs['label_key']))} "
        f"held-out images, {num_classes} classes x {len(inputs['templates'])} prompts; {args.size} at "
        f"{args.image_size} px, batch {args.batch_size}, {args.steps} steps, lr {args.lr}, wd {args.wd}, fp32, "
        f"seeds {args.seeds}"
    )
    print("| metric (mean over seeds) | open_clip 3.3 | pretrain_mm | ours / theirs |\n| --- | --- | --- | --- |")
    for metric in rows["open_clip"][0]:
        theirs = [r[metric] for r in rows["open_clip"]]
        ours = [r[metric] for r in rows["pretrain_mm"]]
        spread = lambda v: f"{statistics.mean(v):.1f} ({min(v):.1f}-{max(v):.1f})"  # noqa: E731
        ratio = statistics.mean(ours) / max(statistics.mean(theirs), 1e-9)
        print(f"| {metric} | {spread(theirs)} | {spread(ours)} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
