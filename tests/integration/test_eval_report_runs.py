"""Tiny CLIP / MAE runs saved and read back: a run from before the pinned defaults rebuilds its own
architecture, and whole evaluations give every metric, the report and its figures (seconds each; the
report's escaping and the checkpoint errors: tests/unit/test_eval_report.py)."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from helpers.eval_runs import INFO, make_cfg, save_run
from pretrain_mm.builders import LEGACY_CLIP_ARGS, model_from_config
from pretrain_mm.eval import evaluate_checkpoint
from pretrain_mm.eval.loading import load_checkpoint_model
from pretrain_mm.train.checkpoint import Checkpointer

# One process saving a checkpoint without a process group is what these tests mean to do.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def test_a_run_from_before_pinned_defaults_rebuilds_its_own_architecture(tmp_path):
    """A config.yaml that does not name vision_norm_pre / vision_init was written when the image tower
    had no ln_pre and timm's init: it rebuilds that, not today's default, and a checkpoint that does
    not match the config it is read with is an error naming the weights, not a quiet partial load."""
    cfg = make_cfg("clip")
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # no model.args, as runs wrote then
    model = model_from_config(cfg, **LEGACY_CLIP_ARGS)
    Checkpointer(old / "checkpoints", INFO).save(1, model, torch.optim.AdamW(model.parameters()), {"step": 1})
    loaded, _, _ = load_checkpoint_model(old, torch.device("cpu"))
    assert isinstance(loaded.visual.norm_pre, torch.nn.Identity)
    assert torch.equal(loaded.visual.pos_embed, model.visual.pos_embed)
    today = model_from_config(cfg)  # resuming it with today's defaults: says what to add
    with pytest.raises(ValueError, match=r"only in the model \['visual.norm_pre.bias'.*vision_norm_pre=false"):
        Checkpointer(old / "checkpoints", INFO).load(old, today, torch.optim.AdamW(today.parameters()), {"step": 0})

    new = tmp_path / "new_run"
    save_run(new, cfg)
    assert "vision_norm_pre: true" in (new / "config.yaml").read_text()  # pinned at training time
    assert isinstance(load_checkpoint_model(new, torch.device("cpu"))[0].visual.norm_pre, torch.nn.LayerNorm)
    (new / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # the wrong config for that checkpoint
    with pytest.raises(ValueError, match=r"does not match the model this config builds.*visual.norm_pre"):
        load_checkpoint_model(new, torch.device("cpu"))


def test_clip_checkpoint_evaluation_writes_the_report(tmp_path):
    cfg = make_cfg("clip", finetune={"enabled": True, "epochs": 1, "batch_size": 32, "warmup_epochs": 0})
    checkpoint = save_run(tmp_path / "run", cfg)
    results = evaluate_checkpoint(cfg, INFO, checkpoint=tmp_path / "run")

    assert results["checkpoint"] == str(checkpoint)
    trained, random = results["metrics"]["trained"], results["metrics"]["random"]
    assert set(trained) == {"zeroshot", "retrieval", "linear_probe", "knn", "finetune"} == set(random)
    assert set(trained["zeroshot"]) == {"shapes/colour", "shapes/shape", "digits/label"}
    assert set(trained["retrieval"]["shapes"]) == {
        f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)
    }
    assert set(trained["knn"]["digits"]) == {"top1@k5", "top1@k10"}
    assert results["samples"] == {"shapes": {"test": 120, "texts": 120}, "digits": {"test": 120, "train": 120}}
    for task in trained.values():
        for values in task.values():
            assert all(0.0 <= v <= 1.0 for v in values.values())

    report = tmp_path / "run" / "report"
    assert json.loads((report / "results.json").read_text())["metrics"] == json.loads(json.dumps(results["metrics"]))
    page = (report / "report.html").read_text()
    for section in (
        "Results",
        "Training curves",
        "k-NN accuracy against k",
        "Confusion matrices",
        "Retrieval examples: shapes",
    ):
        assert section in page
    assert (report / "training_curves.png").exists() and (report / "knn_digits.png").exists()
    # what the built-in sets' splits and prompts test, from their classes.json, beside the numbers
    assert set(results["notes"]) == {"shapes", "digits"}
    assert "shapes: val holds only the 12 shape-colour pairs never seen in training" in page
    assert "digits: val: a stratified random split of the scans; each scan drawn at a random size and place" in page


def test_mae_checkpoint_evaluation_has_reconstructions(tmp_path):
    cfg = make_cfg("mae", random_baseline=True)
    save_run(tmp_path / "run", cfg)
    out = tmp_path / "elsewhere"
    cfg.eval.output_dir = str(out)
    results = evaluate_checkpoint(cfg, INFO, checkpoint=tmp_path / "run" / "checkpoints" / "step_00000003")

    trained = results["metrics"]["trained"]
    assert set(trained) == {"linear_probe", "knn", "reconstruction"}  # no zero-shot or retrieval for MAE
    assert trained["reconstruction"]["shapes"]["mse"] > 0
    assert "reconstruction" in results["metrics"]["random"]
    page = (out / "report" / "report.html").read_text()
    assert "MAE reconstructions" in page and "Training curves" in page  # curves from the run's metrics.jsonl
    assert not (tmp_path / "run" / "report").exists()
