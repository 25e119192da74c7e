"""`python -m pretrain_mm.export`: a trained run to open_clip (same embeddings) and to our safetensors (same model)."""

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from test_eval_cli import TRAIN, run_cli

from helpers.tools import run_tool
from pretrain_mm.builders import build_tokenizer, model_from_config
from pretrain_mm.config import plain_config
from pretrain_mm.eval.loading import load_checkpoint_model
from pretrain_mm.interop import read_header, save_weights

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def export_cli(*args):
    return run_tool("export", *args)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished CLIP run with open_clip's image tower (patch stem), on the built-in data."""
    path = tmp_path_factory.mktemp("export") / "run"
    run_cli("+exp=clip", "model.args.vision_stem=patch", *TRAIN, "eval.enabled=false", f"hydra.run.dir={path}")
    return path


def inputs(cfg, n=6):
    torch.manual_seed(0)
    captions = [
        "a small red circle",
        "a large blue star at the top left",
        "a digit 7",
        "",
        "a green cross on white",
        "a picture of a yellow diamond on a black background",
    ][:n]
    return torch.randn(n, 3, cfg.data.image_size, cfg.data.image_size), build_tokenizer(cfg.data)(captions)


def test_open_clip_builds_the_exported_run_with_the_same_embeddings(run, tmp_path):
    out = tmp_path / "oc"
    done = export_cli(run, out, "--format", "open_clip")
    assert done.returncode == 0, done.stderr
    assert f"local-dir:{out}" in done.stdout and (out / "tokenizer.json").is_file()
    ours, cfg, _ = load_checkpoint_model(run, torch.device("cpu"))
    theirs, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    images, text = inputs(cfg)
    with torch.no_grad():
        assert (ours.encode_image(images) - theirs.eval().encode_image(images, normalize=True)).abs().max() <= 1e-5
        assert (ours.encode_text(text) - theirs.encode_text(text, normalize=True)).abs().max() <= 1e-5
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]["image_size"] == 32


def test_our_safetensors_export_evaluates_as_the_run(run, tmp_path):
    out = tmp_path / "ours"
    assert export_cli(run, out, "--format", "safetensors").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors", "tokenizer.json"]
    a, cfg, _ = load_checkpoint_model(run, torch.device("cpu"))
    b, _, read = load_checkpoint_model(out, torch.device("cpu"))
    assert read == out / "model.safetensors" and read_header(read)["pretrain_mm.step"] == "2"
    images, text = inputs(cfg)
    with torch.no_grad():
        assert torch.equal(a.encode_image(images), b.encode_image(images))
        assert torch.equal(a.encode_text(text), b.encode_text(text))


def test_what_open_clip_cannot_express_and_existing_files_are_refused_in_one_line(run, tmp_path):
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.args.vision_stem = "conv"
    conv = tmp_path / "conv.safetensors"
    save_weights(conv, model_from_config(cfg, 300).state_dict(), plain_config(cfg), step=2)
    done = export_cli(conv, tmp_path / "never", "--format", "open_clip")
    assert done.returncode == 2 and "vision_stem=conv" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "never").exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    done = export_cli(run, taken, "--format", "safetensors")
    assert done.returncode == 2 and f"{taken} exists" in done.stderr
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]


@pytest.mark.slow
def test_clip_benchmark_scores_the_export_as_our_evaluator_scores_the_run(tmp_path):
    """CLIP_benchmark (from PyPI, in open_clip's venv) on the open_clip export and our evaluator on the run,
    zero-shot and retrieval on stamps' val split in CLIP_benchmark's layouts: the same figures within 0.5 points."""
    sys.path.insert(0, str(BENCHMARKS))
    from bench_clip_benchmark import clip_benchmark_python, ours, retrieval_dir, theirs

    from pretrain_mm.data import builtin_dir, get_builtin
    from pretrain_mm.data.stamps import CLIP_BENCHMARK_DIR
    from pretrain_mm.export import export

    try:
        python = clip_benchmark_python(Path.home() / ".cache" / "pretrain_mm" / "openclip-venv")
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot install CLIP_benchmark from PyPI into open_clip's venv: {error}")
    run = tmp_path / "run"
    train = [arg for arg in TRAIN if not arg.startswith("trainer.max_steps=")]
    run_cli(
        "+exp=clip",
        "data=stamps",
        "model.args.vision_stem=patch",
        *train,
        "trainer.max_steps=20",
        "eval.enabled=false",
        f"hydra.run.dir={run}",
    )
    export(run, tmp_path / "open_clip", "open_clip")
    directory = Path(builtin_dir("stamps")) / CLIP_BENCHMARK_DIR
    retrieval = retrieval_dir(get_builtin("stamps", "val"), tmp_path / "retrieval")
    a = ours(run, directory, retrieval, tmp_path)
    b = theirs(python, tmp_path / "open_clip", directory, retrieval, tmp_path)
    assert a.keys() == b.keys() and len(a) == 8  # zero-shot top-1/5, R@1/5/10 both ways
    for k in a:
        assert abs(a[k] - b[k]) <= 0.5, (k, a[k], b[k])
