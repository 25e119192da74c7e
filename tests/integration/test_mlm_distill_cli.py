"""Masked language modelling and distillation end to end through the command line: `+exp=mlm` trains on a
user's shards, resumes and reports masked-token accuracy beside the unigram baseline, and a CLIP starts from
its text tower; a `tiny` student (learning MLM beside) distils from a teacher run of
another width, the teacher is never in its checkpoints, and its report puts the teacher's numbers beside the
student's."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_eval_cli import FAST_EVAL, TRAIN, run_cli
from torch.distributed.checkpoint import FileSystemReader

from helpers.toy_shards import write_toy_shards
from pretrain_mm.data import clip_tokenizer
from pretrain_mm.eval.loading import teacher_model
from pretrain_mm.models import build_model
from pretrain_mm.train.warm_start import load_text_tower

FAST = [*FAST_EVAL, "eval.zeroshot=[shapes]", "eval.classification=[]"]


def test_exp_mlm_trains_on_a_users_shards_resumes_reports_and_starts_a_clip(tmp_path):
    shards = write_toy_shards(str(tmp_path / "shards"), 40, 10)
    data = ["data=wds", f"data.train.urls={tmp_path}/shards/{{00000..00003}}.tar", f"data.val.urls={shards[0]}"]
    data.append("data.tokenizer=clip")  # (toy shards hold no tokenizer.json)
    run = tmp_path / "mlm"
    run_cli("+exp=mlm", *data, *TRAIN, "trainer.checkpoint_every=2", "eval.enabled=false", f"hydra.run.dir={run}")
    done = run_cli("+exp=mlm", *data, *TRAIN, "trainer.max_steps=3", *FAST, f"hydra.run.dir={run}")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["step"] == 3 and summary["steps_this_run"] == 1  # resumed
    results = json.loads((run / "report" / "results.json").read_text())
    assert set(results["metrics"]["trained"]) == {"masked_lm"}  # a text tower alone: no image evaluator
    for tower in ("trained", "random"):
        assert set(results["metrics"][tower]["masked_lm"]["wds"]) == {"top1", "top5"}
    baseline = results["chance"]["masked_lm"]["wds"]
    assert 0 < baseline["top1"] <= baseline["top5"] <= 1
    assert results["samples"]["wds"]["masked_tokens"] > 0
    assert "masked tokens" in done.stdout and "unigram baseline" in (run / "report" / "report.md").read_text()
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert f.get_slice("text.token_embedding.weight").get_shape()[0] == 49408 + 1  # CLIP's ids, the mask id
        assert any(k.startswith("mlm_head.") for k in f.keys())
    assert "kind: mlm" in (run / "config.yaml").read_text()

    # A CLIP starts from its text tower (the mask id's row dropped: this CLIP does not learn MLM); lr 0 keeps it.
    clip = tmp_path / "clip"
    start = ["trainer.max_steps=1", "optim.lr=0", "eval.enabled=false", f"model.text_init_from={run}"]
    run_cli("+exp=clip", *data, *TRAIN, *start, f"hydra.run.dir={clip}")
    mlm_state, clip_state = load_file(run / "model.safetensors"), load_file(clip / "model.safetensors")
    text = sorted(k for k in clip_state if k.startswith("text."))
    assert text == sorted(k for k in mlm_state if k.startswith("text.")) and len(text) > 10
    for key in text:
        expected = mlm_state[key][:-1] if key == "text.token_embedding.weight" else mlm_state[key]
        assert torch.equal(clip_state[key], expected), key
    other = build_model("clip", "tiny", image_size=32, vocab_size=49408, context_length=77, text_depth=2)
    with pytest.raises(ValueError, match="its text tower does not fit this model's"):
        load_text_tower(other, run, clip_tokenizer(77))  # (data=wds: context 77, as CLIP)


def test_a_tiny_student_distils_from_a_teacher_of_another_width(tmp_path):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    run_cli("+exp=clip", *TRAIN, "+model.args.embed_dim=96", "eval.enabled=false", f"hydra.run.dir={teacher}")
    # The student learns MLM beside (loss.mlm_weight), so its report has masked tokens beside zero-shot.
    distil = [f"distill.teacher={teacher}", "trainer.grad_accum=2", "loss.mlm_weight=0.5"]
    run_cli("+exp=clip", *TRAIN, *distil, *FAST, f"hydra.run.dir={student}")
    assert "distill_dim: 96" in (student / "config.yaml").read_text()
    with safe_open(str(student / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    heads = {"distill_image.weight", "distill_text.weight"}  # the student's heads to the teacher's width
    assert heads <= names and any(k.startswith("mlm_head.") for k in names)
    with safe_open(str(teacher / "model.safetensors"), "pt") as f:
        teacher_names = set(f.keys())
    assert {k for k in names - heads if not k.startswith("mlm_head.")} == teacher_names  # none of the teacher's
    # The checkpoint holds the student's model state and nothing of the teacher (DCP's metadata: our own run).
    checkpoint = sorted((student / "checkpoints").glob("step_*"))[-1]
    saved = FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    assert {k.removeprefix("model.") for k in saved if k.startswith("model.")} == names
    assert not any("teacher" in k for k in saved)
    results = json.loads((student / "report" / "results.json").read_text())
    assert set(results["metrics"]) == {"trained", "random", "teacher"}
    assert {"zeroshot", "retrieval", "masked_lm"} <= set(results["metrics"]["trained"])
    assert results["metrics"]["teacher"]["zeroshot"].keys() == results["metrics"]["trained"]["zeroshot"].keys()
    assert "| teacher |" in (student / "report" / "report.md").read_text()
    # A teacher gone since is said in the log, and the student is evaluated without it.
    (teacher / "model.safetensors").rename(teacher / "moved.safetensors")
    assert teacher_model(teacher, torch.device("cpu")) is None


def test_a_teacher_that_cannot_teach_is_refused_in_one_line(tmp_path):
    done = run_cli(
        "+exp=clip", *TRAIN, f"distill.teacher={tmp_path}/nothing", f"hydra.run.dir={tmp_path}/s", check=False
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"distill.teacher={tmp_path}/nothing: not a model.safetensors" in done.stderr
