"""The trainer keeps its promises: an interrupted run continues on the same samples and losses, grad_accum
trains the global batch's loss, a non-finite gradient stops the step. How the global batch is split:
tests/unit/test_batch_split.py."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train import FAST, checkpoints, metrics, run_cli, summary

from helpers.configs import compose_config
from pretrain_mm.distributed import DistInfo
from pretrain_mm.train import loop

STEPS = 40
# Two loader workers, a shuffle buffer, random crops and flips: everything a resume must replay.
EXACT = [
    "+exp=clip",
    *FAST,
    f"trainer.max_steps={STEPS}",
    "trainer.checkpoint_every=1000",
    "trainer.batch_size=64",
    "data.num_workers=2",
    "trainer.precision=fp32",
    "eval.enabled=false",
]


def command(run_dir):
    return [sys.executable, "-m", "pretrain_mm", *EXACT, f"hydra.run.dir={run_dir}"]


def run(run_dir):
    out = subprocess.run(
        command(run_dir), capture_output=True, text=True, timeout=1800, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_an_interrupted_run_continues_on_the_same_samples_and_losses(tmp_path):
    straight = tmp_path / "straight"
    run(straight)
    expected = {m["step"]: m["loss"] for m in metrics(straight)}

    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(
        command(interrupted),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    deadline = time.time() + 1800  # guards against a hung run only
    while not ((interrupted / "metrics.jsonl").exists() and len(metrics(interrupted)) >= STEPS // 2):
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before step {STEPS // 2}:\n{proc.stderr.read()[-3000:]}"
            )
        assert time.time() < deadline, f"no {STEPS // 2} steps in 30 minutes: the run hangs"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = summary(interrupted)["step"]
    if stopped >= STEPS:
        pytest.fail(f"the run reached step {STEPS} before the signal (sent at step >= {STEPS // 2}) took effect")
    assert checkpoints(interrupted) == [f"step_{stopped:08d}"]

    run(interrupted)  # the same command again
    resumed = {m["step"]: m["loss"] for m in metrics(interrupted)}
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):  # before the stop: the same run; after: the same samples and state
        assert resumed[step] == pytest.approx(expected[step], abs=1e-5), f"step {step} (stopped at {stopped})"
    assert summary(interrupted)["skipped_samples"] == summary(straight)["skipped_samples"]


def test_a_scheduled_checkpoint_ends_a_data_epoch_and_resuming_from_it_is_exact(tmp_path):
    """The training stream's epoch is checkpoint_every steps: its workers live from one checkpoint to
    the next, and a run resumed from a scheduled checkpoint (a new epoch, nothing to replay) sees
    the samples and losses the uninterrupted run saw."""
    straight = tmp_path / "straight"
    short = [
        "+exp=clip",
        *FAST,
        "trainer.max_steps=12",
        "trainer.checkpoint_every=4",
        "trainer.batch_size=32",
        "data.num_workers=2",
        "trainer.precision=fp32",
        "eval.enabled=false",
    ]
    run_cli(straight, *short)
    assert checkpoints(straight) == ["step_00000008", "step_00000012"]
    data = torch.load(straight / "checkpoints" / "step_00000008" / "rank0.pt", weights_only=True)["data"]
    assert data["epoch"] == 2 and not data.get("positions"), data  # epochs 0 and 1 (4 steps each) delivered whole
    continued = tmp_path / "continued"
    run_cli(continued, *short, f"trainer.resume={straight / 'checkpoints' / 'step_00000008'}")
    expected = {m["step"]: m["loss"] for m in metrics(straight)}
    resumed = {m["step"]: m["loss"] for m in metrics(continued)}
    assert sorted(resumed) == [9, 10, 11, 12]
    for step in resumed:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-5), f"step {step}"


def test_grad_accum_trains_the_whole_batch_loss(tmp_path):
    """Exact for a model without BatchNorm (the plain ViT patch embedding); +exp=clip's conv stem
    normalises each micro-batch on its own, and the trainer says so."""
    losses = {}
    for split in ("trainer.grad_accum=1", "trainer.micro_batch_size=4"):
        run_dir = tmp_path / split.split(".")[1].replace("=", "")
        out = run_cli(
            run_dir,
            "+exp=clip",
            "model.args.vision_stem=patch",
            "trainer.max_steps=2",
            split,
            "trainer.precision=fp32",
            "eval.enabled=false",
        )
        losses[split] = [m["loss"] for m in metrics(run_dir)]
    assert (
        "global batch 16 = 1 rank(s) x 4 micro-batch(es) of 4; the contrastive loss is the whole batch's"
        in out.stdout + out.stderr
    )
    assert "BatchNorm" not in out.stdout + out.stderr
    # Step 1: the loss of the same 16 pairs (16 negatives each, not 4); step 2: after the same update.
    assert losses["trainer.micro_batch_size=4"] == pytest.approx(losses["trainer.grad_accum=1"], abs=1e-5)

    out = run_cli(
        tmp_path / "stem",
        "+exp=clip",
        "trainer.max_steps=1",
        "trainer.micro_batch_size=4",
        "trainer.precision=fp32",
        "eval.enabled=false",
    )
    assert (
        "the model has BatchNorm (model.args.vision_stem=conv): its statistics are each micro-batch's of 4"
        in out.stdout + out.stderr
    )


def config(*overrides):
    return compose_config("+exp=clip", *FAST, "trainer.checkpoint_every=1", "eval.enabled=false", *overrides)


def test_a_non_finite_gradient_with_a_finite_loss_stops_before_the_update(tmp_path, monkeypatch):
    real = loop.accumulate_gradients
    calls = []

    def accumulate_then_poison_step_3(model, *args, **kwargs):
        loss = real(model, *args, **kwargs)
        calls.append(loss)
        if len(calls) == 3:
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        return loss

    monkeypatch.setattr(loop, "accumulate_gradients", accumulate_then_poison_step_3)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(loop.NonFiniteLossError, match=r"gradient norm became inf at step 3.*step_00000002"):
        loop.train(config("trainer.max_steps=5"), tmp_path, info)
    assert all(torch.isfinite(torch.tensor(calls)))
    assert checkpoints(tmp_path) == ["step_00000001", "step_00000002"]
