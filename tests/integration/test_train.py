"""The real CLI end to end: train, checkpoint, resume, stop on signals and on NaN, FSDP2 on 2 processes."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

# Small and fast: 32 px images (16 patches of the tiny ViT), a batch of 16, no loader workers.
FAST = [
    "trainer.batch_size=16",
    "trainer.log_every=1",
    "data.image_size=32",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "optim.warmup_steps=2",
]


def run_cli(run_dir, *overrides, launcher=(sys.executable, "-m", "pretrain_mm"), timeout=600, check=True):
    cmd = [*launcher, *FAST, *overrides, f"hydra.run.dir={run_dir}"]  # an override of FAST's wins
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoints(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def summary(run_dir):
    return json.loads((run_dir / "train_summary.json").read_text())


def test_clip_trains_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "clip"
    run_cli(run, "+exp=clip", "trainer.max_steps=4", "trainer.checkpoint_every=2")
    assert checkpoints(run) == ["step_00000002", "step_00000004"]
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]
    for key in ("loss", "lr", "samples_per_s", "step_time_s", "data_wait_frac", "peak_memory_mb"):
        assert key in metrics(run)[-1]
    assert (run / "config.yaml").exists() and list((run / "tensorboard").iterdir())

    # The same command with more steps continues the run instead of starting over.
    out = run_cli(run, "+exp=clip", "trainer.max_steps=6", "trainer.checkpoint_every=2")
    assert "step 6/6 (2 this run" in out.stdout
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert checkpoints(run) == ["step_00000004", "step_00000006"]  # keep_checkpoints=2


def test_sigterm_to_the_process_group_checkpoints_and_the_run_continues(tmp_path):
    """What a shell's `kill -TERM -<pgid>`, `timeout` or Slurm do: every process of the run gets the signal, the
    loader's workers included; the run still finishes its step, checkpoints and says how to continue."""
    run = tmp_path / "clip"
    overrides = ["+exp=clip", "trainer.checkpoint_every=1000", "data.num_workers=2"]
    cmd = [sys.executable, "-m", "pretrain_mm", *FAST, *overrides, "trainer.max_steps=200", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        start_new_session=True,  # its own process group, to signal as a whole
    )
    # The signal goes once 3 steps are logged, however long a step takes on this CPU; the limit
    # only guards against a hung run.
    deadline = time.time() + 1800
    while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 3):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before step 3:\n{proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, "no 3 steps in 30 minutes: the run hangs"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = summary(run)
    assert stopped["status"] == "interrupted" and 3 <= stopped["step"] < 200
    assert checkpoints(run) == [f"step_{stopped['step']:08d}"]
    assert "run the same command again to continue" in stdout

    # (no evaluation: what is asserted is the training; the evaluators have their own tests)
    run_cli(run, *overrides, f"trainer.max_steps={stopped['step'] + 3}", "eval.enabled=false")
    steps = [m["step"] for m in metrics(run)]
    assert steps == list(range(1, stopped["step"] + 4))
    assert summary(run)["status"] == "finished"


def test_a_stop_before_the_first_log_line_still_reports_the_loss(tmp_path):
    """log_every longer than the run lasted: the summary's final_loss is the mean of the steps taken, not NaN."""
    run = tmp_path / "clip"
    overrides = ["+exp=clip", "trainer.log_every=1000", "trainer.checkpoint_every=1", "trainer.max_steps=200"]
    cmd = [sys.executable, "-m", "pretrain_mm", *FAST, *overrides, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 1800  # a guard against a hung run, not a measure of speed
    while not ((run / "checkpoints").exists() and len(checkpoints(run)) >= 2):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before step 2:\n{proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, "no 2 steps in 30 minutes: the run hangs"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = summary(run)
    assert stopped["status"] == "interrupted" and stopped["step"] >= 2
    assert not (run / "metrics.jsonl").exists() or metrics(run) == []  # no step was logged
    # A CLIP loss on a batch of 16 lies between 0 and a little above ln 16 (2.77) this early.
    assert 0 < stopped["final_loss"] < 5, stopped


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "mae"
    # An absurd learning rate: the first update blows the weights up, the next loss is not finite.
    out = run_cli(
        run,
        "+exp=mae",
        "trainer.max_steps=20",
        "trainer.checkpoint_every=1",
        "optim.lr=1e30",
        "optim.warmup_steps=0",
        "optim.grad_clip=0",
        check=False,
    )
    assert out.returncode != 0
    assert "the loss became" in out.stderr and "stopping before the update" in out.stderr
    saved = checkpoints(run)
    assert saved and all(not name.endswith(".tmp") for name in saved)
    failed_step = int(out.stderr.split("at step ")[1].split(";")[0])
    assert saved[-1] == f"step_{failed_step - 1:08d}"


def test_misspelt_key_is_an_error(tmp_path):
    out = run_cli(tmp_path / "x", "+exp=clip", "trainer.max_stepz=3", check=False)
    assert out.returncode != 0
    assert "max_stepz" in out.stderr and "not in struct" in out.stderr.lower() or "Could not override" in out.stderr


def test_resume_never_refuses_to_overwrite(tmp_path):
    run = tmp_path / "clip"
    run_cli(run, "+exp=clip", "trainer.max_steps=1", "eval.enabled=false")
    out = run_cli(run, "+exp=clip", "trainer.max_steps=2", "trainer.resume=never", check=False)
    assert out.returncode != 0 and "already holds checkpoints" in out.stderr
    assert checkpoints(run) == ["step_00000001"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("exp", ["clip", "mae"])
def test_fsdp2_two_processes(tmp_path, exp):
    run = tmp_path / exp
    launcher = (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "pretrain_mm",
    )
    # CLIP accumulates two micro-batches per rank: GradCache through the distributed loss and FSDP2.
    accumulate = ["trainer.grad_accum=2"] if exp == "clip" else []
    out = run_cli(
        run,
        f"+exp={exp}",
        "trainer.max_steps=3",
        "trainer.checkpoint_every=3",
        *accumulate,
        launcher=launcher,
        check=False,
    )
    # The work is judged by what rank 0 wrote; gloo sometimes aborts in destroy_process_group
    # after everything is done, which must not fail the test.
    if not (run / "train_summary.json").exists():
        raise AssertionError(f"exit {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    assert summary(run)["status"] == "finished" and summary(run)["step"] == 3
    assert checkpoints(run) == ["step_00000003"]
    assert (run / "checkpoints" / "step_00000003" / "rank1.pt").exists()
    assert len(metrics(run)) == 3


def test_activation_checkpointing_and_compile(tmp_path):
    run = tmp_path / "clip"
    run_cli(
        run,
        "+exp=clip",
        "trainer.max_steps=2",
        "trainer.activation_checkpointing=true",
        "trainer.compile=true",
        "eval.enabled=false",
    )
    assert summary(run)["status"] == "finished" and checkpoints(run) == ["step_00000002"]
    assert all(math.isfinite(m["loss"]) for m in metrics(run))
