"""Masked language modelling and distillation end to end through the command line: `+exp=mlm` trains, resumes
and reports masked-token accuracy beside the unigram baseline, on the built-in captions and a user's shards,
and a CLIP starts from its text tower; a `tiny` student (learning MLM beside) distils from a teacher run of
another width, the teacher is never in its checkpoints, and its report puts the teacher's numbers beside the
student's."""

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_eval_cli import FAST_EVAL, TRAIN, run_cli
from torch.distributed.checkpoint import FileSystemReader

from helpers.toy_shards import write_toy_shards

FAST = [*FAST_EVAL, "eval.zeroshot=[shapes]", "eval.classification=[]"]


def test_exp_mlm_trains_resumes_and_reports_masked_token_accuracy(tmp_path):
    run = tmp_path / "mlm"
    run_cli("+exp=mlm", *TRAIN, "trainer.checkpoint_every=2", "eval.enabled=false", f"hydra.run.dir={run}")
    done = run_cli("+exp=mlm", *TRAIN, "trainer.max_steps=3", *FAST, f"hydra.run.dir={run}")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["step"] == 3 and summary["steps_this_run"] == 1  # resumed
    results = json.loads((run / "report" / "results.json").read_text())
    assert set(results["metrics"]["trained"]) == {"masked_lm"}  # a text tower alone: no image evaluator
    name = "shapes+digits*4"
    for tower in ("trained", "random"):
        assert set(results["metrics"][tower]["masked_lm"][name]) == {"top1", "top5"}
    baseline = results["chance"]["masked_lm"][name]
    assert 0 < baseline["top1"] <= baseline["top5"] <= 1
    assert results["samples"][name]["masked_tokens"] > 0
    assert "masked tokens" in done.stdout and "unigram baseline" in (run / "report" / "report.md").read_text()
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        embedding = f.get_slice("text.token_embedding.weight").get_shape()
        assert any(k.startswith("mlm_head.") for k in f.keys())
    config = (run / "config.yaml").read_text()
    assert "kind: mlm" in config and embedding[0] >= 260  # the tokenizer's ids and the mask id

    # A CLIP starts from its text tower (the mask id's row dropped: this CLIP does not learn MLM); lr 0 keeps it.
    clip = tmp_path / "clip"
    run_cli(
        "+exp=clip",
        *TRAIN,
        "trainer.max_steps=1",
        "optim.lr=0",
        "eval.enabled=false",
        f"model.text_init_from={run}",
        f"hydra.run.dir={clip}",
    )
    mlm_state, clip_state = load_file(run / "model.safetensors"), load_file(clip / "model.safetensors")
    text = sorted(k for k in clip_state if k.startswith("text."))
    assert text == sorted(k for k in mlm_state if k.startswith("text.")) and len(text) > 10
    for key in text:
        expected = mlm_state[key][:-1] if key == "text.token_embedding.weight" else mlm_state[key]
        assert torch.equal(clip_state[key], expected), key
    bad = run_cli(
        "+exp=clip",
        *TRAIN,
        "model.size=small",
        f"model.text_init_from={run}",
        f"hydra.run.dir={tmp_path}/bad",
        check=False,
    )
    assert bad.returncode == 1 and "its text tower does not fit this model's" in bad.stderr


def test_exp_mlm_trains_on_the_captions_of_a_users_shards(tmp_path):
    shards = write_toy_shards(str(tmp_path / "shards"), 40, 10)
    run = tmp_path / "run"
    urls = f"{tmp_path}/shards/{{00000..00003}}.tar"
    run_cli(
        "+exp=mlm",
        "data=wds",
        f"data.train.urls={urls}",
        f"data.val.urls={shards[0]}",
        "data.tokenizer=clip",
        *TRAIN,
        *FAST,
        f"hydra.run.dir={run}",
    )
    results = json.loads((run / "report" / "results.json").read_text())
    assert set(results["metrics"]["trained"]["masked_lm"]) == {"wds"}
    assert results["samples"]["wds"]["masked_tokens"] > 0


def test_a_tiny_student_distils_from_a_teacher_of_another_width(tmp_path):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    run_cli("+exp=clip", *TRAIN, "+model.args.embed_dim=96", "eval.enabled=false", f"hydra.run.dir={teacher}")
    # The student learns MLM beside (loss.mlm_weight), so its report has masked tokens beside zero-shot.
    distil = [
        *TRAIN,
        f"distill.teacher={teacher}",
        "trainer.checkpoint_every=2",
        "trainer.grad_accum=2",
        "loss.mlm_weight=0.5",
    ]
    run_cli("+exp=clip", *distil, "eval.enabled=false", f"hydra.run.dir={student}")
    run_cli("+exp=clip", *distil, "trainer.max_steps=3", *FAST, f"hydra.run.dir={student}")  # resumes
    assert json.loads((student / "train_summary.json").read_text())["steps_this_run"] == 1
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
    # A teacher gone since is said in the log; the student is still evaluated.
    (teacher / "model.safetensors").rename(teacher / "moved.safetensors")
    again = run_cli("+exp=eval", f"eval.checkpoint={student}", *FAST)
    assert "no model.safetensors there any more" in again.stderr + again.stdout
    assert set(json.loads((student / "report" / "results.json").read_text())["metrics"]) == {"trained", "random"}


def test_a_teacher_that_cannot_teach_is_refused_in_one_line(tmp_path):
    done = run_cli(
        "+exp=clip", *TRAIN, f"distill.teacher={tmp_path}/nothing", f"hydra.run.dir={tmp_path}/s", check=False
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"distill.teacher={tmp_path}/nothing: not a model.safetensors" in done.stderr
