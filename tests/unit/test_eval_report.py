"""The report (escaping, self-contained HTML), checkpoint errors, what the probes read (old runs read back
and whole evaluations of tiny CLIP / MAE runs: tests/integration/test_eval_report_runs.py)."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from helpers.eval_runs import INFO, make_cfg
from pretrain_mm.builders import model_from_config
from pretrain_mm.eval import evaluate_checkpoint
from pretrain_mm.eval.report import write_report

# One process saving a checkpoint without a process group is what these tests mean to do.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
EVIL = "<script>alert('x')</script> & a red <b>circle</b>"


# ----------------------------------------------------------------------------- the report


def fake_results(tmp_path):
    metrics = {"zeroshot": {f"shapes/{EVIL}": {"top1": 0.5}}, "knn": {"digits": {"top1@k10": 0.9, "top1@k20": 0.8}}}
    return {
        "checkpoint": str(tmp_path / "<ckpt>"),
        "run_dir": str(tmp_path / "run&dir"),
        "model": {"kind": "clip", "size": "tiny", "image_size": 32},
        "created": "now",
        "world_size": 1,
        "eval_seconds": 1.0,
        "metrics": {"trained": metrics, "random": metrics},
        "chance": {},
        "samples": {},
        "config": {"data": {"name": EVIL}},
    }


def test_report_escapes_captions_and_names(tmp_path):
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    extras = {
        "confusion": [(EVIL, torch.eye(3, dtype=torch.long), ["a", "<b>", "c"])],
        "retrieval_examples": {
            EVIL: {
                "text_to_image": [{"caption": EVIL, "images": [image] * 5, "hits": [True] + [False] * 4}],
                "image_to_text": [{"image": image, "captions": [EVIL, "plain"], "hits": [False, True]}],
            }
        },
        "reconstructions": None,
    }
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


# ----------------------------------------------------------------------------- what the probes read


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
