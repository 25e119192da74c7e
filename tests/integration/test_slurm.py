"""launcher=slurm against a real single-node Slurm started by slurm/local_slurm.sh: a 2-task job,
preemption, a time limit, a Hydra sweep, the sbatch template, and the errors a user meets.

Jobs are judged by what rank 0 wrote (train_summary.json, metrics.jsonl, checkpoints/): gloo sometimes
aborts in destroy_process_group after all the work is done, which must not fail a test.

No wait assumes a fast CPU: each waits for an event (a step logged, a requeue, the job's end) and gives
up only when nothing under the test's folder has changed for STALL_S seconds, a hung job, however slow
the machine trains. Every test starts and ends with an empty queue.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import submitit
from test_train import FAST, checkpoints, metrics, summary

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SLURM = ROOT / "slurm" / "local_slurm.sh"
ENDED = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)
# A hang guard, not a speed limit: the longest a job may go without writing anything (a log line, a
# metric, a checkpoint) before its test gives up. A training step or an evaluation stage that slow is a hang.
STALL_S = 900
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory):
    """A private Slurm for this session (installed first if need be); yields the environment for its clients."""
    env = dict(
        os.environ, LOCAL_SLURM_DIR=str(tmp_path_factory.mktemp("slurm")), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"
    )
    started = subprocess.run([LOCAL_SLURM, "start"], capture_output=True, text=True, env=env, timeout=900)
    if started.returncode == 3:  # no apt-get / not root: Slurm cannot be installed here
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, started.stderr
    env["SLURM_CONF"] = re.search(r"^export SLURM_CONF=(\S+)$", started.stdout, re.M).group(1)
    yield env
    subprocess.run([LOCAL_SLURM, "stop"], capture_output=True, env=env, timeout=300)


@pytest.fixture(autouse=True)
def empty_queue(slurm_env):
    """Each test starts with no job queued and, however it ended (passed, failed, timed out), leaves none:
    a job left running would hold the CPUs and show up in the next test's queue."""
    cancel_all(slurm_env)
    yield
    cancel_all(slurm_env)


def cancel_all(env):
    jobs = slurm(env, "squeue", "-h", "-o", "%i").split()
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, env=env, timeout=60)
    # Slurm's own pace (SIGTERM, KillWait, SIGKILL, epilog), not training's: a generous fixed guard.
    deadline = time.time() + 600
    while slurm(env, "squeue", "-h").strip():
        if time.time() > deadline:
            raise AssertionError(f"jobs still queued 600 s after scancel:\n{slurm(env, 'squeue')}")
        time.sleep(1)


def activity(folder: Path):
    """What changes under `folder` while a job makes progress: every file's size and modification time."""
    seen = set()
    for path in folder.rglob("*"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # renamed or removed while we looked (a checkpoint being finalised)
            continue
        if path.is_file():
            seen.add((str(path), stat.st_size, stat.st_mtime_ns))
    return frozenset(seen)


def wait_until(predicate, what, watch: Path):
    """Polls `predicate` until it holds; fails only when nothing under `watch` changed for STALL_S seconds."""
    last, quiet_since = None, time.time()
    while not predicate():
        now = activity(watch)
        if now != last:
            last, quiet_since = now, time.time()
        elif time.time() - quiet_since > STALL_S:
            raise AssertionError(f"nothing changed under {watch} for {STALL_S} s while waiting for {what}")
        time.sleep(1)


def wait_for_job(env, job, predicate, what, watch: Path):
    """wait_until(predicate), except that a job that ends first fails the test at once, with its logs."""
    wait_until(lambda: predicate() or job_state(env, job) in ENDED, what, watch)
    if not predicate():
        logs = "\n".join(f"--- {p}\n{read(p)[-2000:]}" for p in sorted(watch.rglob(f"*{job}*")) if p.is_file())
        raise AssertionError(f"job {job} ended ({job_state(env, job)}) before {what}:\n{logs}")


def cli(cwd, env, *args, check=True):
    """`python -m pretrain_mm ...` in `cwd`; it may run as long as the jobs it waits for keep writing there."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pretrain_mm", *args], stdout=stdout, stderr=stderr, text=True, env=env, cwd=cwd
        )
        try:
            wait_until(lambda: proc.poll() is not None, f"`python -m pretrain_mm {' '.join(args)}`", Path(cwd))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stdout.seek(0)
            stderr.seek(0)
            out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout.read(), stderr.read())
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


def job_state(env, job) -> str:
    return slurm(env, "sacct", "-X", "-n", "-P", "-j", job, "-o", "State").strip().split(" ")[0]


def wait_for_end(env, job, watch: Path) -> str:
    wait_until(lambda: job_state(env, job) in ENDED, f"job {job} to end", watch)
    return job_state(env, job)


def steps_logged(run, at_least):
    return lambda: (run / "metrics.jsonl").exists() and len(metrics(run)) >= at_least


def restarts(env, job) -> int:
    return int(re.search(r"Restarts=(\d+)", slurm(env, "scontrol", "show", "job", "-o", job)).group(1))


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def assert_resumed(run, log: str, max_steps: int):
    """Stopped once at step k (0 < k < max), checkpointed there, resumed from k, finished; one loss curve."""
    stopped = re.search(r"interrupted: step (\d+)/", log)
    assert stopped, log[-3000:]
    k = int(stopped.group(1))
    assert 0 < k < max_steps
    assert summary(run)["status"] == "finished" and summary(run)["step"] == max_steps
    assert summary(run)["steps_this_run"] == max_steps - k  # the last run started at k, not at 0
    assert checkpoints(run) == [f"step_{k:08d}", f"step_{max_steps:08d}"]
    assert [m["step"] for m in metrics(run)] == list(range(1, max_steps + 1))  # no restart, no repeats
    return k


def test_two_task_job_trains_with_world_size_2(tmp_path, slurm_env):
    run = tmp_path / "clip"
    # Evaluation as a dependent job: submitted at once, starts when training has ended.
    out = submit(
        tmp_path,
        slurm_env,
        run,
        "launcher.tasks_per_node=2",
        "launcher.wait=true",
        "launcher.eval_job=true",
        "trainer.max_steps=4",
        "trainer.checkpoint_every=2",
    )
    train_job = job_id(out.stdout)
    assert f"logs:  {run}/slurm/{train_job}_0_log.out" in out.stdout
    assert f"Slurm job {train_job}: training finished at step 4" in out.stdout
    assert re.search(r"Submitted Slurm job \d+: evaluation, starts when job \d+ has ended", out.stdout)
    assert summary(run)["status"] == "finished" and summary(run)["step"] == 4
    assert checkpoints(run) == ["step_00000002", "step_00000004"]
    ranks = sorted(p.name for p in (run / "checkpoints" / "step_00000004").glob("rank*.pt"))
    assert ranks == ["rank0.pt", "rank1.pt"]  # world size 2
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]
    assert (run / "slurm" / f"{train_job}_1_log.err").exists()  # the second task ran


def test_preemption_checkpoints_requeues_and_resumes(tmp_path, slurm_env):
    run, max_steps = tmp_path / "clip", 40
    out = submit(
        tmp_path,
        slurm_env,
        run,
        "launcher.tasks_per_node=2",
        f"trainer.max_steps={max_steps}",
        "trainer.checkpoint_every=1000",
        "eval.enabled=false",  # what is asserted is the requeue and the resume
    )
    job = job_id(out.stdout)
    wait_for_job(slurm_env, job, steps_logged(run, 1), "the first step", tmp_path)
    slurm(slurm_env, "scancel", "--signal=USR2", job)  # what submitit's stop signal is
    assert wait_for_end(slurm_env, job, tmp_path) == "COMPLETED"
    assert restarts(slurm_env, job) == 1
    k = assert_resumed(run, (run / "slurm" / f"{job}_0_log.out").read_text(), max_steps)
    rank0_log = (run / "slurm" / f"{job}_0_log.err").read_text()
    assert f"resumed from {run}/checkpoints/step_{k:08d} at step {k}" in rank0_log
    # submitit's client reads one clean result per task: no FailedJobError from the requeue.
    results = submitit.SlurmJob(run / "slurm", job, tasks=(0, 1)).results()
    assert results[0]["status"] == "finished" and results[0]["step"] == max_steps


def test_time_limit_requeues_and_resumes(tmp_path, slurm_env):
    # Slurm sends the stop signal at its first periodic check (every 30 s) after end - delay - 30 s: with
    # a 1-minute limit and a 25 s delay, 5 to 35 s into the run; it may come before training started
    # (then nothing is saved yet). Training never ends by itself: the test cancels the job once the
    # requeued run shows that it went on where the first one stopped.
    run, max_steps = tmp_path / "clip", 1_000_000
    out = submit(
        tmp_path,
        slurm_env,
        run,
        "launcher.timeout_min=1",
        "launcher.signal_delay_s=25",
        f"trainer.max_steps={max_steps}",
        "trainer.checkpoint_every=1000000",
    )
    job = job_id(out.stdout)
    wait_for_job(slurm_env, job, lambda: restarts(slurm_env, job) >= 1, "the time limit to requeue the job", tmp_path)
    # So that the requeued run is not stopped again before it has shown it resumed.
    slurm(slurm_env, "scontrol", "update", f"JobId={job}", "TimeLimit=10")
    out_log, err_log = run / "slurm" / f"{job}_0_log.out", run / "slurm" / f"{job}_0_log.err"
    # Rank 0 said how the first run stopped before it requeued the job.
    stopped = re.search(r"interrupted: step (\d+)/", read(out_log))
    if stopped:  # in training: every rank checkpointed step k; the requeued run resumes there
        k = int(stopped.group(1))
        resumed = f"resumed from {run}/checkpoints/step_{k:08d} at step {k}"
        wait_for_job(
            slurm_env,
            job,
            lambda: resumed in read(err_log) and steps_logged(run, k + 1)(),
            "the run to resume",
            tmp_path,
        )
    else:  # before training: nothing to save, the requeued run starts from the beginning
        assert "received SIGUSR2 outside training: requeuing" in read(err_log), read(err_log)[-3000:]
        k = 0
        wait_for_job(slurm_env, job, steps_logged(run, 1), "the requeued run to train", tmp_path)
    slurm(slurm_env, "scancel", job)
    assert wait_for_end(slurm_env, job, tmp_path) == "CANCELLED"
    assert restarts(slurm_env, job) == 1  # requeued once; the cancelled run did not requeue
    steps = [m["step"] for m in metrics(run)]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] > k  # one curve: no restart, no repeats
    if k:
        assert 0 < k < max_steps
        first = checkpoints(run)[0]  # the cancelled run may have saved one more on its way out
        assert first == f"step_{k:08d}" and (run / "checkpoints" / first / ".metadata").is_file()
        assert read(err_log).count("resumed from") == 1
    else:
        assert "resumed from" not in read(err_log)


def test_sweep_on_slurm_makes_two_run_directories(tmp_path, slurm_env):
    sweep = tmp_path / "sweep"
    cli(
        tmp_path,
        slurm_env,
        "-m",
        "+exp=clip",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.cpus_per_task=1",
        "optim.lr=1e-3,2e-3",
        "trainer.max_steps=3",
        "eval.enabled=false",
        *FAST,
        f"hydra.sweep.dir={sweep}",
    )
    for point, lr in (("0", "0.001"), ("1", "0.002")):
        assert summary(sweep / point)["status"] == "finished" and summary(sweep / point)["step"] == 3
        assert f"lr: {lr}" in (sweep / point / "config.yaml").read_text()


def test_sbatch_template_trains_and_requeues_itself(tmp_path, slurm_env):
    run, max_steps = tmp_path / "clip", 40
    env = dict(slurm_env, RUN_DIR=str(run), PYTHON=sys.executable)
    job = re.search(
        r"job (\d+)",
        slurm(
            env,
            "sbatch",
            "--job-name=clip",
            "--ntasks-per-node=2",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--time=10",
            f"--output={tmp_path}/slurm-%j.out",
            f"--chdir={tmp_path}",
            ROOT / "slurm" / "train.sbatch",
            "+exp=clip",
            f"trainer.max_steps={max_steps}",
            "trainer.checkpoint_every=1000",
            "eval.enabled=false",
            *FAST,
        ),
    ).group(1)
    wait_for_job(env, job, steps_logged(run, 1), "the first step", tmp_path)
    slurm(env, "scancel", "--signal=USR2", job)
    assert wait_for_end(env, job, tmp_path) == "COMPLETED"
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert f"train.sbatch: requeued job {job}" in log
    assert_resumed(run, log, max_steps)


def test_failed_job_shows_its_error(tmp_path, slurm_env):
    # An error only the job can find (the trainer splits the batch over the job's ranks): reported with its trace.
    split = ("trainer.batch_size=100", "trainer.grad_accum=3")
    out = submit(tmp_path, slurm_env, tmp_path / "clip", "launcher.wait=true", *split, check=False)
    assert out.returncode == 1
    assert re.search(r"^error: Slurm job \d+ failed; task 0 ended with:", out.stderr, re.M)
    assert "trainer.batch_size=100 must be a positive multiple of world size (1) x trainer.grad_accum (3)" in out.stderr
    assert "its full log:" in out.stderr


def test_errors_before_anything_is_submitted(tmp_path, slurm_env):
    run = tmp_path / "clip"
    out = submit(tmp_path, slurm_env, run, "launcher.partition=nope", check=False)
    assert "error: launcher.partition='nope' does not exist on this cluster; its partitions: debug" in out.stderr
    assert out.returncode == 1 and "Traceback" not in out.stderr
    out = submit(tmp_path, slurm_env, run, "launcher.nodes=4", check=False)
    assert (
        "error: Slurm cannot run this job: allocation failure: Requested node configuration is not available"
        in out.stderr
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    # A slurm.conf whose controller does not answer.
    conf = tmp_path / "slurm.conf"
    conf.write_text(re.sub(r"SlurmctldPort=\d+", "SlurmctldPort=1", Path(slurm_env["SLURM_CONF"]).read_text()))
    out = submit(tmp_path, dict(slurm_env, SLURM_CONF=str(conf)), run, check=False)
    assert "error: no Slurm controller answers" in out.stderr
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert not (run / "slurm").exists() or not list((run / "slurm").glob("*_submitted.pkl"))
    assert slurm(slurm_env, "squeue", "-h") == ""  # nothing was left queued (the queue was empty before)
