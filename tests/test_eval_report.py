"""The report (escaping, self-contained HTML), checkpoint errors, whole evaluations of tiny CLIP / MAE runs."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from pretrain_mm.builders import LEGACY_CLIP_ARGS, model_from_config
from pretrain_mm.config import default_config
from pretrain_mm.distributed import DistInfo
from pretrain_mm.eval import EvalConfig, evaluate_checkpoint
from pretrain_mm.eval.loading import load_checkpoint_model
from pretrain_mm.eval.report import write_report
from pretrain_mm.precision import Precision
from pretrain_mm.train.checkpoint import Checkpointer
from pretrain_mm.train.loop import write_config

# One process saving a checkpoint without a process group is what these tests mean to do.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
INFO = DistInfo(0, 1, 0, torch.device("cpu"))
EVIL = "<script>alert('x')</script> & a red <b>circle</b>"


def make_cfg(kind="clip", **eval_overrides):
    """A run config as the trainer resolves it (tiny model, 32 px) with a fast eval section."""
    cfg = default_config(kind)
    OmegaConf.set_struct(cfg, False)
    cfg.data.image_size, cfg.data.num_workers = 32, 0
    fast = dict(max_samples=120, batch_size=64, knn_k=[5, 10], examples=2, reconstructions=3,
                probe={"epochs": 5})
    cfg.eval = OmegaConf.merge(OmegaConf.structured(EvalConfig), fast, eval_overrides)
    return cfg


def save_run(run_dir, cfg):
    """A run directory as the trainer leaves it: config.yaml, metrics.jsonl, checkpoints/step_N."""
    torch.manual_seed(1)
    model = model_from_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir / "config.yaml", cfg, Precision(False, "fp32"))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 / s, "lr": 1e-3}) + "\n"
                                                   for s in range(1, 6)) + '{"step": 6, "lo')  # a torn last line
    optimizer = torch.optim.AdamW(model.parameters())
    return Checkpointer(run_dir / "checkpoints", INFO).save(3, model, optimizer, {"step": 3})


# ----------------------------------------------------------------------------- the report


def fake_results(tmp_path):
    metrics = {"zeroshot": {f"shapes/{EVIL}": {"top1": 0.5}}, "knn": {"digits": {"top1@k10": 0.9, "top1@k20": 0.8}}}
    return {"checkpoint": str(tmp_path / "<ckpt>"), "run_dir": str(tmp_path / "run&dir"),
            "model": {"kind": "clip", "size": "tiny", "image_size": 32}, "created": "now", "world_size": 1,
            "eval_seconds": 1.0, "metrics": {"trained": metrics, "random": metrics}, "chance": {}, "samples": {},
            "config": {"data": {"name": EVIL}}}


def test_report_escapes_captions_and_names(tmp_path):
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    extras = {"confusion": [(EVIL, torch.eye(3, dtype=torch.long), ["a", "<b>", "c"])],
              "retrieval_examples": {EVIL: {"text_to_image": [{"caption": EVIL, "images": [image] * 5,
                                                               "hits": [True] + [False] * 4}],
                                            "image_to_text": [{"image": image, "captions": [EVIL, "plain"],
                                                               "hits": [False, True]}]}},
              "reconstructions": None}
    out = write_report(tmp_path / "report", fake_results(tmp_path), extras, tmp_path / "missing.jsonl")
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; a red &lt;b&gt;circle&lt;/b&gt;" in page
    assert "&lt;ckpt&gt;" in page and "run&amp;dir" in page
    # Self-contained: every image is inline, nothing is fetched.
    assert page.count("src='data:image/png;base64,") >= 4 and "src='http" not in page and ".png'" not in page
    markdown = (out / "report.md").read_text().split("## Configuration")[0]  # then a code block: literal text
    assert "<script>" not in markdown and "&lt;script&gt;alert('x')" in markdown
    assert json.loads((out / "results.json").read_text())["config"]["data"]["name"] == EVIL  # data, unescaped
    for name in out.glob("*.png"):
        assert "<" not in name.name and " " not in name.name


# ----------------------------------------------------------------------------- checkpoint errors


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg = make_cfg()
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_checkpoint(cfg, INFO)
    missing = tmp_path / "no_such_run"
    with pytest.raises(ValueError, match=f"{missing} does not exist"):
        evaluate_checkpoint(cfg, INFO, checkpoint=missing)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        evaluate_checkpoint(cfg, INFO, checkpoint=tmp_path / "empty_run")

    corrupt = tmp_path / "corrupt" / "checkpoints" / "step_00000005"
    corrupt.mkdir(parents=True)
    (corrupt / ".metadata").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="config.yaml"):  # no config.yaml beside it: cannot rebuild the model
        evaluate_checkpoint(cfg, INFO, checkpoint=tmp_path / "corrupt")
    (tmp_path / "corrupt" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(ValueError, match=f"cannot read model weights from {corrupt}"):
        evaluate_checkpoint(cfg, INFO, checkpoint=tmp_path / "corrupt")


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


# ----------------------------------------------------------------------------- whole evaluations


def test_clip_checkpoint_evaluation_writes_the_report(tmp_path):
    cfg = make_cfg("clip", finetune={"enabled": True, "epochs": 1, "batch_size": 32, "warmup_epochs": 0})
    checkpoint = save_run(tmp_path / "run", cfg)
    results = evaluate_checkpoint(cfg, INFO, checkpoint=tmp_path / "run")

    assert results["checkpoint"] == str(checkpoint)
    trained, random = results["metrics"]["trained"], results["metrics"]["random"]
    assert set(trained) == {"zeroshot", "retrieval", "linear_probe", "knn", "finetune"} == set(random)
    assert set(trained["zeroshot"]) == {"shapes/colour", "shapes/shape", "digits/label"}
    assert set(trained["retrieval"]["shapes"]) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image")
                                                    for k in (1, 5, 10)}
    assert set(trained["knn"]["digits"]) == {"top1@k5", "top1@k10"}
    assert results["samples"] == {"shapes": {"test": 120, "texts": 120}, "digits": {"test": 120, "train": 120}}
    for task in trained.values():
        for values in task.values():
            assert all(0.0 <= v <= 1.0 for v in values.values())

    report = tmp_path / "run" / "report"
    assert json.loads((report / "results.json").read_text())["metrics"] == json.loads(json.dumps(results["metrics"]))
    page = (report / "report.html").read_text()
    for section in ("Results", "Training curves", "k-NN accuracy against k", "Confusion matrices",
                    "Retrieval examples: shapes"):
        assert section in page
    assert (report / "training_curves.png").exists() and (report / "knn_digits.png").exists()
    # what the built-in sets' splits and prompts test, from their classes.json, beside the numbers
    assert set(results["notes"]) == {"shapes", "digits"}
    assert "shapes: val holds only the 12 shape-colour pairs never seen in training" in page
    assert "digits: val: a stratified random split of the scans; zero-shot prompts are templates never" in page


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


def test_clip_probes_read_the_tower_before_the_projection():
    from pretrain_mm.eval.runner import PROBED, Evaluation

    cfg = make_cfg(random_baseline=False)
    model = model_from_config(cfg).eval()
    evaluation = Evaluation(cfg, model, torch.device("cpu"))
    encoders = evaluation.image_encoders()
    x = torch.randn(2, 3, 32, 32)
    assert encoders["trained"](x).shape == (2, model.visual.head.out_features)  # zero-shot, retrieval
    assert evaluation.probed("trained") == PROBED + "trained"
    torch.testing.assert_close(encoders[PROBED + "trained"](x), model.representation(x))  # probes, k-NN
