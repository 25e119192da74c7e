"""model.init_from: open_clip weights (its trainer's .pt, or safetensors) start our training and evaluation,
running no code."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from test_eval_cli import FAST_EVAL, TRAIN, RunsCode, run_cli

from helpers.configs import compose_config
from pretrain_mm.eval.loading import load_open_clip_model
from pretrain_mm.interop.init_from import clip_args, read_open_clip

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# open_clip's defaults (LayerNorm eps 1e-5, no patch bias) at a CPU size, with the CLIP BPE's vocabulary.
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def open_clip_files(tmp_path, model_cfg=MODEL_CFG):
    """An open_clip model of open_clip's own making, saved as its trainer saves (epoch_N.pt: state_dict
    with DDP's module. prefix, optimizer state), with its config in a separate JSON."""
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg).eval()
    optimizer = torch.optim.AdamW(model.parameters())
    model.logit_scale.grad = torch.ones(())
    optimizer.step()  # an optimizer state with tensors in it, as a trainer's checkpoint has
    weights = tmp_path / "epoch_1.pt"
    torch.save(
        {
            "epoch": 1,
            "name": "test",
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        },
        weights,
    )
    config = tmp_path / "model.json"
    config.write_text(json.dumps(model_cfg))
    return model, weights, config


def config(**overrides):
    return compose_config(*(f"{k}={v}" for k, v in overrides.items()))


def test_our_clip_holding_open_clip_weights_gives_open_clips_embeddings(tmp_path):
    theirs, weights, model_json = open_clip_files(tmp_path)
    cfg = config(**{"data.tokenizer": "clip", "model.init_from_config": str(model_json)})
    ours, run_cfg = load_open_clip_model(cfg, weights, torch.device("cpu"))
    assert run_cfg.data.image_size == 32 and run_cfg.data.context_length == 16
    assert run_cfg.model.args.vision_norm_eps == 1e-5 and run_cfg.model.args.patch_size == 8
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    text = open_clip.get_tokenizer("ViT-B-32", context_length=16)(["a photo of a cat", "a dog", "a bird on a tree"])
    with torch.no_grad():
        assert (ours.encode_image(images) - theirs.encode_image(images, normalize=True)).abs().max() <= 1e-5
        assert (ours.encode_text(text) - theirs.encode_text(text, normalize=True)).abs().max() <= 1e-5


def test_what_our_towers_cannot_hold_is_refused_by_name():
    for section, key, value in (
        ("vision_cfg", "ls_init_value", 0.1),
        ("text_cfg", "hf_model_name", "bert"),
        ("model_cfg", "quick_gelu", True),
    ):
        cfg = json.loads(json.dumps(MODEL_CFG))
        (cfg if section == "model_cfg" else cfg[section])[key] = value
        with pytest.raises(ValueError, match=f"{section}.{key}="):
            clip_args(cfg)


def test_a_pt_that_needs_code_to_load_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "epoch_1.pt"
    crafted.write_bytes(pickle.dumps({"state_dict": RunsCode(f"touch {marker}")}))
    with pytest.raises(ValueError, match="cannot read .* safely"):
        read_open_clip(crafted, str(tmp_path / "unused.json"))
    assert not marker.exists()


def test_exp_eval_reads_an_open_clip_file(tmp_path):
    _, weights, model_json = open_clip_files(tmp_path)
    run_cli(
        "+exp=eval",
        f"eval.checkpoint={weights}",
        f"model.init_from_config={model_json}",
        "data.tokenizer=clip",
        "eval.random_baseline=false",
        *FAST_EVAL,
        f"eval.output_dir={tmp_path / 'eval'}",
        f"hydra.run.dir={tmp_path / 'job'}",
    )
    results = json.loads((tmp_path / "eval" / "report" / "results.json").read_text())
    assert results["checkpoint"] == str(weights) and "shapes/colour" in results["metrics"]["trained"]["zeroshot"]


@pytest.mark.slow
def test_a_checkpoint_of_open_clips_own_trainer_continues_training_here(tmp_path):
    """open_clip 3.3's trainer (its own venv, from PyPI: bench_vs_openclip.ensure_venv) trains 3 steps on the
    built-in stamps shards; our trainer starts from its epoch_1.pt with the same tokenizer."""
    sys.path.insert(0, str(BENCHMARKS))
    from bench_vs_openclip import ensure_venv, openclip_model_dir

    from pretrain_mm.data import get_builtin

    try:
        python = ensure_venv(Path.home() / ".cache" / "pretrain_mm" / "openclip-venv")
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot install open_clip's trainer from PyPI into its venv: {error}")
    args = type("Args", (), dict(size="tiny", image_size=32, patch_size=8, context_length=32))
    model_dir = openclip_model_dir(tmp_path / "model", args)
    shards = get_builtin("stamps", "train")
    first, last = Path(shards[0]).stem, Path(shards[-1]).stem
    done = subprocess.run(
        [
            python,
            "-m",
            "open_clip_train.main",
            "--model",
            f"local-dir:{model_dir}",
            "--train-data",
            str(Path(shards[0]).parent / f"{{{first}..{last}}}.tar"),
            "--dataset-type",
            "webdataset",
            "--dataset-resampled",
            "--train-num-samples",
            "48",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--precision",
            "fp32",
            "--workers",
            "1",
            "--logs",
            str(tmp_path),
            "--name",
            "oc",
            "--save-frequency",
            "1",
            "--report-to",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    weights = tmp_path / "oc" / "checkpoints" / "epoch_1.pt"
    run = tmp_path / "run"
    out = run_cli(
        "+exp=clip",
        "data=stamps",
        *TRAIN,
        f"model.init_from={weights}",
        f"model.init_from_config={model_dir / 'open_clip_config.json'}",
        "eval.enabled=false",
        f"hydra.run.dir={run}",
    )
    assert "starting from the open_clip weights" in out.stderr + out.stdout
    assert json.loads((run / "train_summary.json").read_text())["status"] == "finished"
    assert (run / "model.safetensors").is_file()
    saved = OmegaConf.load(run / "config.yaml")  # the architecture is pinned: the run rebuilds without the file
    assert saved.model.args.patch_size == 8 and saved.model.args.vision_stem == "patch"
