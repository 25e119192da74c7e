"""launcher=slurm against a real single-node Slurm started by launch/local_slurm.sh: a 2-task job,
preemption, a time limit, a Hydra sweep, the sbatch template, and the errors a user meets.

Jobs are judged by what rank 0 wrote (train_summary.json, metrics.jsonl, checkpoints/): gloo sometimes
aborts in destroy_process_group after all the work is done, which must not fail a test.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from test_train import FAST, checkpoints, metrics, summary

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SLURM = ROOT / "launch" / "local_slurm.sh"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory):
    """A private Slurm for this session (installed first if need be); yields the environment for its clients."""
    env = dict(os.environ, LOCAL_SLURM_DIR=str(tmp_path_factory.mktemp("slurm")), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    started = subprocess.run([LOCAL_SLURM, "start"], capture_output=True, text=True, env=env, timeout=900)
    if started.returncode == 3:  # no apt-get / not root: Slurm cannot be installed here
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, started.stderr
    env["SLURM_CONF"] = re.search(r"^export SLURM_CONF=(\S+)$", started.stdout, re.M).group(1)
    yield env
    subprocess.run([LOCAL_SLURM, "stop"], capture_output=True, env=env, timeout=300)


def cli(cwd, env, *args, check=True, timeout=600):
    out = subprocess.run([sys.executable, "-m", "pretrain_mm", *args], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def submit(tmp_path, env, run, *overrides, **kwargs):
    """`python -m pretrain_mm +exp=clip launcher=slurm ...` for a tiny CPU run in `run`."""
    return cli(tmp_path, env, "+exp=clip", "launcher=slurm", *FAST, f"hydra.run.dir={run}", *overrides, **kwargs)


def job_id(stdout: str) -> str:
    return re.search(r"Submitted Slurm job (\d+)", stdout).group(1)


def slurm(env, *cmd) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=60).stdout


def wait_until(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def wait_for_end(env, job, timeout=300) -> str:
    state = lambda: slurm(env, "sacct", "-X", "-n", "-P", "-j", job, "-o", "State").strip().split(" ")[0]
    wait_until(lambda: state() in ENDED, timeout, f"job {job} to end")
    return state()


def steps_logged(run, at_least):
    return lambda: (run / "metrics.jsonl").exists() and len(metrics(run)) >= at_least


def restarts(env, job) -> int:
    return int(re.search(r"Restarts=(\d+)", slurm(env, "scontrol", "show", "job", "-o", job)).group(1))


def assert_resumed(run, log: str, max_steps: int):
    """Stopped once at step k (0 < k < max), checkpointed there, resumed from k, finished; one loss curve."""
    stopped = re.search(r"interrupted: step (\d+)/", log)
    assert stopped, log[-3000:]
    k = int(stopped.group(1))
    assert 0 < k < max_steps
    assert summary(run)["status"] == "finished" and summary(run)["step"] == max_steps
    assert summary(run)["steps_this_run"] == max_steps - k        # the last run started at k, not at 0
    assert checkpoints(run) == [f"step_{k:08d}", f"step_{max_steps:08d}"]
    assert [m["step"] for m in metrics(run)] == list(range(1, max_steps + 1))   # no restart, no repeats
    return k


def test_two_task_job_trains_with_world_size_2(tmp_path, slurm_env):
    run = tmp_path / "clip"
    # Evaluation as a dependent job: submitted at once, starts when training has ended.
    out = submit(tmp_path, slurm_env, run, "launcher.tasks_per_node=2", "launcher.wait=true",
                 "launcher.eval_job=true", "trainer.max_steps=4", "trainer.checkpoint_every=2")
    train_job = job_id(out.stdout)
    assert f"logs:  {run}/slurm/{train_job}_0_log.out" in out.stdout
    assert f"Slurm job {train_job}: training finished at step 4" in out.stdout
    assert re.search(r"Submitted Slurm job \d+: evaluation, starts when job \d+ has ended", out.stdout)
    assert summary(run)["status"] == "finished" and summary(run)["step"] == 4
    assert checkpoints(run) == ["step_00000002", "step_00000004"]
    ranks = sorted(p.name for p in (run / "checkpoints" / "step_00000004").glob("rank*.pt"))
    assert ranks == ["rank0.pt", "rank1.pt"]   # world size 2
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]
    assert (run / "slurm" / f"{train_job}_1_log.err").exists()  # the second task ran


def test_preemption_checkpoints_requeues_and_resumes(tmp_path, slurm_env):
    run, max_steps = tmp_path / "clip", 40
    out = submit(tmp_path, slurm_env, run, "launcher.tasks_per_node=2", f"trainer.max_steps={max_steps}",
                 "trainer.checkpoint_every=1000")
    job = job_id(out.stdout)
    wait_until(steps_logged(run, 5), 180, "5 steps")
    slurm(slurm_env, "scancel", "--signal=USR2", job)      # what submitit's stop signal is
    assert wait_for_end(slurm_env, job) == "COMPLETED"
    assert restarts(slurm_env, job) == 1
    k = assert_resumed(run, (run / "slurm" / f"{job}_0_log.out").read_text(), max_steps)
    rank0_log = (run / "slurm" / f"{job}_0_log.err").read_text()
    assert f"resumed from {run}/checkpoints/step_{k:08d} at step {k}" in rank0_log
    # submitit's client reads one clean result per task: no FailedJobError from the requeue.
    results = submitit.SlurmJob(run / "slurm", job, tasks=(0, 1)).results()
    assert results[0]["status"] == "finished" and results[0]["step"] == max_steps


def test_time_limit_requeues_and_completes(tmp_path, slurm_env):
    run, max_steps = tmp_path / "clip", 600
    # Slurm sends the stop signal at its first periodic check (every 30 s) after end - delay - 30 s: with
    # a 1-minute limit and a 25 s delay, 5 to 35 s into the run. 600 steps outlast that on any machine
    # of this kind; the stop may still come before training started (then nothing is saved yet).
    out = submit(tmp_path, slurm_env, run, "launcher.timeout_min=1", "launcher.signal_delay_s=25",
                 f"trainer.max_steps={max_steps}", "trainer.checkpoint_every=1000")
    job = job_id(out.stdout)
    wait_until(lambda: restarts(slurm_env, job) >= 1, 180, "the time limit to requeue the job")
    # So that the test's length does not depend on this machine's speed, the rest gets one long run.
    slurm(slurm_env, "scontrol", "update", f"JobId={job}", "TimeLimit=10")
    assert wait_for_end(slurm_env, job) == "COMPLETED"
    log = (run / "slurm" / f"{job}_0_log.out").read_text()
    if "interrupted: step" in log:
        assert_resumed(run, log, max_steps)
    else:
        assert "received SIGUSR2 outside training: requeuing" in (run / "slurm" / f"{job}_0_log.err").read_text()
        assert summary(run)["status"] == "finished" and summary(run)["steps_this_run"] == max_steps


def test_sweep_on_slurm_makes_two_run_directories(tmp_path, slurm_env):
    sweep = tmp_path / "sweep"
    cli(tmp_path, slurm_env, "-m", "+exp=clip", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5",
        "hydra.launcher.cpus_per_task=1", "optim.lr=1e-3,2e-3", "trainer.max_steps=3", *FAST,
        f"hydra.sweep.dir={sweep}")
    for point, lr in (("0", "0.001"), ("1", "0.002")):
        assert summary(sweep / point)["status"] == "finished" and summary(sweep / point)["step"] == 3
        assert f"lr: {lr}" in (sweep / point / "config.yaml").read_text()


def test_sbatch_template_trains_and_requeues_itself(tmp_path, slurm_env):
    run, max_steps = tmp_path / "clip", 40
    env = dict(slurm_env, RUN_DIR=str(run), PYTHON=sys.executable)
    job = re.search(r"job (\d+)", slurm(env, "sbatch", "--job-name=clip", "--ntasks-per-node=2", "--gpus-per-node=0",
                                        "--cpus-per-task=1", "--time=10", f"--output={tmp_path}/slurm-%j.out",
                                        f"--chdir={tmp_path}", ROOT / "launch" / "train.sbatch", "+exp=clip",
                                        f"trainer.max_steps={max_steps}", "trainer.checkpoint_every=1000",
                                        *FAST)).group(1)
    wait_until(steps_logged(run, 5), 180, "5 steps")
    slurm(env, "scancel", "--signal=USR2", job)
    assert wait_for_end(env, job) == "COMPLETED"
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert f"train.sbatch: requeued job {job}" in log
    assert_resumed(run, log, max_steps)


def test_failed_job_shows_its_error(tmp_path, slurm_env):
    # An error only the job can find (the trainer checks trainer.precision): reported with the job's trace.
    out = submit(tmp_path, slurm_env, tmp_path / "clip", "launcher.wait=true", "trainer.precision=fp16", check=False)
    assert out.returncode != 0
    assert re.search(r"Slurm job \d+ failed; task 0 ended with:", out.stderr)
    assert "trainer.precision must be auto, bf16 or fp32; got 'fp16'" in out.stderr
    assert "its full log:" in out.stderr


def test_errors_before_anything_is_submitted(tmp_path, slurm_env):
    run = tmp_path / "clip"
    out = submit(tmp_path, slurm_env, run, "launcher.partition=nope", check=False)
    assert "launcher.partition='nope' does not exist on this cluster; its partitions: debug" in out.stderr
    out = submit(tmp_path, slurm_env, run, "launcher.nodes=4", check=False)
    assert "Slurm cannot run this job: allocation failure: Requested node configuration is not available" \
        in out.stderr
    # A slurm.conf whose controller does not answer.
    conf = tmp_path / "slurm.conf"
    conf.write_text(re.sub(r"SlurmctldPort=\d+", "SlurmctldPort=1", Path(slurm_env["SLURM_CONF"]).read_text()))
    out = submit(tmp_path, dict(slurm_env, SLURM_CONF=str(conf)), run, check=False)
    assert "no Slurm controller answers" in out.stderr
    assert not (run / "slurm").exists() or not list((run / "slurm").glob("*_submitted.pkl"))
    assert slurm(slurm_env, "squeue", "-h") == ""   # nothing was left queued
