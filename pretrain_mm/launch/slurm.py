"""launcher=slurm: submits the run to Slurm through submitit, says where to follow it, and can wait for it.

With launcher.wait=true it waits (through requeues) and reports how training ended. What can go wrong
is said before anything waits: no Slurm here, no controller answering, a partition that does not exist,
a request Slurm can never satisfy; when waiting, a job that failed (with its error or the tail of its
stderr) or one that can never start (with Slurm's reason).
"""

import copy
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import cast

import submitit
import submitit.slurm.slurm  # check_request's _make_sbatch_string
from omegaconf import DictConfig, OmegaConf

from pretrain_mm.config import Config
from pretrain_mm.launch.requeue import in_submitit_slurm_job
from pretrain_mm.run import stages_of

START_HINT = 'to try it on this machine, start a local Slurm: eval "$(slurm/local_slurm.sh start)"'
# Pending reasons that no amount of waiting changes (squeue's %r).
NEVER_STARTS = (
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "PartitionConfig",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "DependencyNeverSatisfied",
    "QOSMaxNodePerJobLimit",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxGRESPerJob",
    "QOSMaxWallDurationPerJobLimit",
)


class SlurmError(RuntimeError):
    """Slurm is not reachable, refused the job, or the job failed."""


def submit(cfg: Config, run_dir: str | Path) -> list:
    """Submits training (and, with launcher.eval_job, a dependent evaluation job); returns submitit's jobs."""
    if in_submitit_slurm_job() or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        raise ValueError(
            "launcher=slurm inside a Slurm job would submit more jobs from it (one per task); inside "
            "jobs (srun, slurm/train.sbatch, hydra/launcher=submitit_slurm) keep launcher=local"
        )
    launcher = cfg.launcher
    params = sbatch_parameters(cfg)
    run_dir = Path(run_dir).resolve()
    folder = Path(launcher.folder or run_dir / "slurm").resolve()
    check_cluster(launcher.partition)
    check_request(params, folder)
    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cast(DictConfig, cfg))  # ${...} (${hydra:...} too) mean what they mean here: the job has no Hydra
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=launcher.max_requeues)
    executor.update_parameters(**params)
    jobs = [_submit(executor, PretrainTask(cfg, run_dir, stages_of(cfg)), params)]
    tasks = params["nodes"] * params["ntasks_per_node"]
    print(
        f"Submitted Slurm job {jobs[0].job_id}: {params['job_name']}, {params['nodes']} node(s) x "
        f"{params['ntasks_per_node']} task(s), time limit {launcher.timeout_min} min, requeues itself up to "
        f"{launcher.max_requeues} times\n  run directory: {run_dir}\n"
        f"  logs:  {jobs[0].task(0).paths.stdout}  (and .err; one pair per task, {tasks} in all)\n"
        f"  watch: squeue -j {jobs[0].job_id}   cancel: scancel {jobs[0].job_id}",
        flush=True,
    )
    if launcher.eval_job:
        # afterany, not afterok: a job whose training finished can still end FAILED (a process that dies
        # in its teardown); the evaluation job checks train_summary.json itself.
        executor.update_parameters(dependency=f"afterany:{jobs[0].job_id}", job_name=f"{params['job_name']}-eval")
        jobs.append(_submit(executor, PretrainTask(cfg, run_dir, ("eval",)), params))
        print(
            f"Submitted Slurm job {jobs[1].job_id}: evaluation, starts when job {jobs[0].job_id} has ended\n"
            f"  logs:  {jobs[1].task(0).paths.stdout}",
            flush=True,
        )
    if launcher.wait:
        for job in jobs:
            summary = wait(job, run_dir)
            print(
                f"Slurm job {job.job_id}: training {summary['status']} at step {summary['step']}, loss "
                f"{summary['final_loss']:.4f}, checkpoint {summary['checkpoint']}"
                + ("; submit the same command again to continue" if summary["status"] == "interrupted" else ""),
                flush=True,
            )
    return jobs


def sbatch_parameters(cfg: Config) -> dict:
    """submitit's SlurmExecutor parameters for this run; ValueError for settings that cannot work."""
    launcher = cfg.launcher
    tasks = launcher.tasks_per_node if launcher.tasks_per_node is not None else max(launcher.gpus_per_node, 1)
    for key, value, least in (
        ("nodes", launcher.nodes, 1),
        ("gpus_per_node", launcher.gpus_per_node, 0),
        ("tasks_per_node", tasks, 1),
        ("timeout_min", launcher.timeout_min, 1),
        ("signal_delay_s", launcher.signal_delay_s, 1),
        ("max_requeues", launcher.max_requeues, 0),
    ):
        if value < least:
            raise ValueError(f"launcher.{key} must be at least {least}; got {value}")
    if launcher.signal_delay_s >= launcher.timeout_min * 60:
        raise ValueError(
            f"launcher.signal_delay_s={launcher.signal_delay_s} leaves no time to train before the stop "
            f"signal; it must be shorter than launcher.timeout_min ({launcher.timeout_min} min)"
        )
    if launcher.cpus_per_task is not None and launcher.cpus_per_task < 1:
        raise ValueError(f"launcher.cpus_per_task must be at least 1; got {launcher.cpus_per_task}")
    params = {
        "job_name": launcher.job_name,
        "nodes": launcher.nodes,
        "ntasks_per_node": tasks,
        "time": launcher.timeout_min,
        "cpus_per_task": launcher.cpus_per_task or cfg.data.num_workers + 1,  # a core per loader worker + the main one
        "signal_delay_s": launcher.signal_delay_s,
        # One task that fails ends the others too, instead of leaving them waiting in a collective.
        "srun_args": ["--kill-on-bad-exit=1"],
        # A task's threads: its CPUs, not the node's (unless OMP_NUM_THREADS is set already).
        "setup": ["export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}", *launcher.setup],
        # --requeue: the job may requeue itself even where the cluster's default says no.
        "additional_parameters": {"requeue": True, **cast(dict, OmegaConf.to_container(launcher.sbatch_extra))},
    }
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(launcher, key) is not None:
            params[key] = getattr(launcher, key)
    if launcher.gpus_per_node:
        params["gpus_per_node"] = launcher.gpus_per_node
    if launcher.mem_gb is not None:
        params["mem"] = f"{round(launcher.mem_gb * 1024)}M"
    return params


def check_cluster(partition=None) -> None:
    """Raises SlurmError unless a Slurm controller answers here, ValueError for a partition it lacks."""
    for tool in ("sbatch", "srun", "scontrol", "sinfo", "sacct"):
        if shutil.which(tool) is None:
            raise SlurmError(
                f"no Slurm here: `{tool}` is not on PATH. launcher=slurm submits from a cluster's "
                f"login node; {START_HINT}"
            )
    ping = _slurm("scontrol", "ping")
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip()
        raise SlurmError(
            f"no Slurm controller answers (`scontrol ping`: {said}); check that the cluster is up "
            f"and SLURM_CONF (if set) points at its slurm.conf; {START_HINT}"
        )
    if partition is not None:
        names = _slurm("sinfo", "-h", "-o", "%R").stdout.split()
        if partition not in names:
            raise ValueError(
                f"launcher.partition={partition!r} does not exist on this cluster; its partitions: "
                f"{', '.join(sorted(set(names))) or '(none)'}"
            )


def check_request(params: dict, folder: Path) -> None:
    """Asks Slurm whether it could ever run the job (`sbatch --test-only`), before submitting: a cluster
    may accept a request it can never satisfy and leave it pending for good (EnforcePartLimits=NO)."""
    # The very script submitit will submit, built by its own function (with a command that does nothing).
    script = submitit.slurm.slurm._make_sbatch_string(command="true", folder=folder, **params)
    out = _slurm("sbatch", "--test-only", input=script)
    if out.returncode != 0:
        said = (out.stderr + out.stdout).strip().replace("\n", "; ")
        raise SlurmError(f"Slurm cannot run this job: {said}\n({_asked(params)})")


def wait(job, run_dir) -> dict:
    """Waits for the job through its requeues; returns rank 0's summary, raises SlurmError when it failed."""
    started = time.time()
    while not job.done(force_check=True):
        state, reason = _squeue(job.job_id)
        if state == "PENDING" and reason.startswith(NEVER_STARTS):
            job.cancel(check=False)
            raise SlurmError(
                f"Slurm job {job.job_id} can never start ({reason}): the cluster cannot give it what "
                "it asks for (see `sinfo -o '%P %D %c %m %G %l'`); cancelled it"
            )
        # Quick while a test or a short job waits, gentle on the controller for a long one.
        time.sleep(min(30.0, 1.0 + (time.time() - started) / 20))
    return outcome(job, run_dir, submitted=started)


def outcome(job, run_dir, submitted: float) -> dict:
    """Rank 0's summary of a job that ended; SlurmError with the failing task's stderr when it failed."""
    results, errors = {}, []
    for task in range(job.num_tasks):
        path = job.task(task).paths.result_pickle
        if path.exists():
            kind, value = submitit.core.utils.pickle_load(path)
            if kind == "success":
                results[task] = value
            else:
                errors.append((task, value))
    summary = results.get(0) or _fresh_summary(run_dir, submitted)
    if errors or summary is None:
        # The Python error a task raised, else (killed, out of memory, ...) the end of its stderr.
        task, trace = errors[0] if errors else (0, None)
        stderr = job.task(task).paths.stderr
        said = (
            "\n".join(trace.strip().splitlines()[-40:])
            if trace
            else f"(state {job.watcher.get_state(job.job_id, mode='force')}, no result)\n{_tail(stderr)}"
        )
        raise SlurmError(f"Slurm job {job.job_id} failed; task {task} ended with:\n{said}\n(its full log: {stderr})")
    return summary


def _fresh_summary(run_dir, since: float):
    """train_summary.json when this job wrote it: a task that died in its teardown, after the work was
    done (gloo sometimes aborts in destroy_process_group), leaves no result but the run is complete."""
    path = Path(run_dir) / "train_summary.json"
    if path.is_file() and path.stat().st_mtime >= since - 1:
        return {"run_dir": str(run_dir), **json.loads(path.read_text())}
    return None


def _submit(executor, task, params):
    try:
        return executor.submit(task)
    except submitit.core.utils.FailedJobError as error:
        raise SlurmError(f"Slurm refused the job: {str(error).strip()}\n({_asked(params)})") from None


def _asked(params: dict) -> str:
    asked = ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("setup", "srun_args", "job_name"))
    return f"asked for {asked}; `sinfo -o '%P %D %c %m %G %l'` shows what the partitions have"


def _slurm(*cmd, input=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=input)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(cmd)}` did not answer within 60 s: is the controller reachable?") from None


def _squeue(job_id: str) -> tuple[str, str]:
    fields = _slurm("squeue", "-h", "-j", job_id, "-o", "%T|%r").stdout.strip().split("|")
    return (fields[0], fields[1]) if len(fields) == 2 else ("", "")


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} was not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PretrainTask(submitit.helpers.Checkpointable):
    """The callable launcher=slurm submits: every task of the job runs `pretrain_mm.run.run` on the resolved config.

    A Checkpointable, so that submitit would requeue rather than fail it should its own signal handler
    ever act; the inherited `checkpoint()` resubmits the task unchanged, because what the next run
    needs is in the run directory's checkpoints, not in this object.
    """

    def __init__(self, cfg, run_dir, stages=("train", "eval")):
        self.cfg, self.run_dir, self.stages = cfg, str(run_dir), tuple(stages)

    def __call__(self) -> dict:
        # No Hydra here to set up logging: the project's messages go to the task's stderr log.
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(f"[%(asctime)s rank {os.environ.get('SLURM_PROCID', '0')}] %(name)s: %(message)s")
        )
        logging.getLogger("pretrain_mm").addHandler(handler)
        logging.getLogger("pretrain_mm").setLevel(logging.INFO)
        from pretrain_mm.run import run

        return run(self.cfg, self.run_dir, self.stages)
