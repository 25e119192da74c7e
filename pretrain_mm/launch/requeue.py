"""A Slurm job requeueing itself: the signal handlers of a job submitit submitted, and `requeue`.

The run driver (pretrain_mm/run.py) calls `prepare_slurm_process` first and `requeue` when a signal stopped
training.

Signals in a job submitted through submitit (its stop signal, SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL
says otherwise, comes `launcher.signal_delay_s` before the time limit or with a preemption; SIGTERM
comes with preemption, cancellation and every requeue):
- during training the trainer's own handler finishes the step, has every rank checkpoint and returns
  "interrupted". Rank 0 then requeues the job and all ranks leave without a result, so submitit waits
  on; the requeued run finds the same run directory and resumes (trainer.resume=auto). A job that
  `scancel` stopped is not requeued (Slurm would requeue even a cancelled job).
- outside training (start-up, evaluation) there is nothing to save: on the stop signal rank 0 requeues
  at once. SIGTERM is logged and otherwise ignored, as submitit does, so that the SIGTERM the requeue
  itself sends cannot cut short the rank that is requeuing.
This replaces submitit's own handler (which calls `checkpoint()` and requeues): its `scontrol requeue`
is sometimes killed by that SIGTERM before it returns, and the client then reports a failure for a job
that did requeue (slurm-notes.md). `requeue` below makes scontrol immune to it.
"""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import submitit

log = logging.getLogger(__name__)

# Rendezvous variables inherited from the shell that submitted (a torchrun or an earlier job) describe
# another launch; inside a Slurm job, Slurm's own variables decide (pretrain_mm.distributed.launch_environment).
FOREIGN_RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def in_submitit_slurm_job() -> bool:
    """True inside a job that submitit submitted to Slurm (launcher=slurm, hydra/launcher=submitit_slurm)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def leave_requeued_job() -> None:
    """Ends this process of a requeued job at once: no result for submitit to read (the requeued run
    writes it), and no interpreter teardown for the SIGTERM that follows a requeue to interrupt."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def requeue(max_requeues: int) -> bool:
    """Puts this Slurm job back in the queue (rank 0 calls it); False when it may not, or Slurm refused."""
    job_id = submitit.JobEnvironment().job_id  # 123, or 123_4 for a task of an array (a sweep)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if _cancelled(job_id):
        log.warning("not requeuing job %s: it was cancelled (scancel)", job_id)
        return False
    if restarts >= max_requeues:
        log.warning(
            "not requeuing job %s: it was requeued %d times already (launcher.max_requeues=%d)",
            job_id,
            restarts,
            max_requeues,
        )
        return False
    # `scontrol requeue` makes Slurm send SIGTERM to all of this job's processes, scontrol (our child)
    # included; now and then it died of it before it returned. SIGTERM is ignored here while it runs,
    # and so in scontrol, which inherits the disposition.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        out = _scontrol("requeue", job_id)
        # A failure can still have requeued it (killed after Slurm acted): the restart count tells.
        done = out.returncode == 0 or _restart_count(job_id) > restarts
    finally:
        signal.signal(signal.SIGTERM, previous)
    if done and out.returncode != 0:
        log.warning("`scontrol requeue` failed (%s) but Slurm did requeue job %s", out.returncode, job_id)
    if done:
        log.warning(
            "requeued job %s (requeue %d of at most %d); the next run resumes from the last checkpoint",
            job_id,
            restarts + 1,
            max_requeues,
        )
    else:
        log.error("could not requeue job %s (cancelled?): %s", job_id, (out.stderr or out.stdout).strip())
    return done


def _scontrol(*args) -> subprocess.CompletedProcess:
    return _slurm_tool("scontrol", *args)


def _slurm_tool(*cmd) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return subprocess.CompletedProcess(cmd, 1, "", str(error))


def _cancelled(job_id: str) -> bool:
    """Whether `scancel` ended the job. Its SIGTERM stops the trainer as a preemption's does, and Slurm
    would requeue even a cancelled job: that would undo the cancellation (and tests' clean-up)."""
    # A stop signal (time limit, preemption's grace time) reaches a RUNNING job; scancel's a COMPLETING one.
    if _job_field(job_id, "JobState") != "COMPLETING":
        return False
    # Only the accounting records why it is ending (CANCELLED, TIMEOUT, PREEMPTED, ...); it can trail
    # the controller by a moment.
    for _ in range(20):
        out = _slurm_tool("sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State")
        state = out.stdout.strip().split(" ")[0] if out.returncode == 0 else ""
        if state and state != "RUNNING":
            return state == "CANCELLED"
        time.sleep(0.5)
    return False


def _job_field(job_id: str, name: str) -> str:
    """One field of `scontrol show job` ("" when Slurm does not answer)."""
    found = re.search(rf"\b{name}=(\S+)", _scontrol("show", "job", "-o", job_id).stdout)
    return found.group(1) if found else ""


def _restart_count(job_id: str) -> int:
    return int(_job_field(job_id, "Restarts") or -1)


def prepare_slurm_process(max_requeues: int) -> None:
    """Installs this job's handlers (the trainer's take over while it trains and restore these after) and
    drops rendezvous variables from the submitting shell."""
    for name in FOREIGN_RENDEZVOUS:
        os.environ.pop(name, None)
    stop_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)

    def on_stop(signum, frame):
        if os.environ.get("SLURM_PROCID", "0") != "0":
            log.warning("received %s outside training: rank 0 requeues the job", signal.Signals(signum).name)
            return
        log.warning(
            "received %s outside training: requeuing (the checkpoints on disk are all there is)",
            signal.Signals(signum).name,
        )
        if requeue(max_requeues):
            leave_requeued_job()

    def on_term(signum, frame):
        log.warning("received SIGTERM outside training: ignored (the job is being requeued, cancelled or preempted)")

    signal.signal(stop_signal, on_stop)
    signal.signal(signal.SIGTERM, on_term)
