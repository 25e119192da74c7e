"""What each process of a run does: train, evaluate, and requeue its Slurm job when a signal stopped training.

`python -m pretrain_mm` calls `run` directly (launcher=local: here, under torchrun or srun, or as a
point of a Hydra sweep on Slurm); launcher=slurm submits a `PretrainTask`, whose every task calls it.

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

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit

log = logging.getLogger(__name__)

# Rendezvous variables inherited from the shell that submitted (a torchrun or an earlier job) describe
# another launch; inside a Slurm job, Slurm's own variables decide (train.distributed.launch_environment).
FOREIGN_RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def in_submitit_slurm_job() -> bool:
    """True inside a job that submitit submitted to Slurm (launcher=slurm, hydra/launcher=submitit_slurm)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def run(cfg, run_dir, stages=("train", "eval")) -> dict:
    """Runs the stages in this process (every process of the run calls it) and returns rank 0's summary
    of how training ended. In a submitit Slurm job an interrupted training requeues the job and the
    process exits instead of returning."""
    check_eval_checkpoint(cfg)
    requeue_allowed = in_submitit_slurm_job()
    if requeue_allowed:
        _handle_signals_outside_training(cfg.launcher.max_requeues)
        for name in FOREIGN_RENDEZVOUS:
            os.environ.pop(name, None)
    # Imported here, not at the top: submitting (launcher=slurm) pickles PretrainTask and needs no torch.
    from pretrain_mm.train import distributed as dist_utils
    from pretrain_mm.train.loop import train

    info = dist_utils.init_distributed(cfg.trainer.device)
    requeued = False
    try:
        if "train" in stages:
            result = train(cfg, run_dir, info)
            summary = {"run_dir": str(run_dir), "status": result.status, "step": result.step,
                       "max_steps": cfg.trainer.max_steps, "final_loss": result.final_loss,
                       "checkpoint": str(result.checkpoint) if result.checkpoint else None}
        elif cfg.mode == "eval":  # +exp=eval: a checkpoint of any run, nothing trained here
            summary = {"run_dir": str(run_dir), "status": "finished"}
        else:  # a dependent evaluation job (launcher.eval_job): its training must have finished
            summary = finished_training(run_dir)
        if summary["status"] == "interrupted":
            if requeue_allowed:
                # Rank 0 decides for all: every rank then leaves the same way.
                requeued = dist_utils.any_rank(info.is_main and requeue(cfg.launcher.max_requeues), info)
        elif "eval" in stages:
            summary["eval"] = evaluate(cfg, run_dir, info)
    finally:
        dist_utils.shutdown()
    if requeued:
        leave_requeued_job()
    return summary


def check_eval_checkpoint(cfg) -> None:
    """+exp=eval: a ValueError naming eval.checkpoint when it does not exist, before anything starts (the
    loader's own message speaks of "checkpoint", not of the key the user set)."""
    path = cfg.eval.checkpoint
    if cfg.mode == "eval" and path and not Path(path).expanduser().exists():
        raise ValueError(f"checkpoint {path} does not exist (eval.checkpoint): give a training run's directory, "
                         "e.g. eval.checkpoint=outputs/clip, or one of its checkpoints/step_<N>")


def leave_requeued_job() -> None:
    """Ends this process of a requeued job at once: no result for submitit to read (the requeued run
    writes it), and no interpreter teardown for the SIGTERM that follows a requeue to interrupt."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def evaluate(cfg, run_dir, info):
    """Evaluation (every rank calls it): after training, of the run's newest checkpoint, into
    <run_dir>/report/, when eval.enabled; with mode=eval, of eval.checkpoint. Returns the results."""
    if cfg.mode != "eval" and not cfg.eval.enabled:
        return None
    from pretrain_mm.eval import evaluate_checkpoint

    if cfg.mode == "eval":
        return evaluate_checkpoint(cfg, info)
    return evaluate_checkpoint(cfg, info, checkpoint=run_dir, output_dir=run_dir)


def finished_training(run_dir) -> dict:
    """Rank 0's train_summary.json of a run whose training finished (a dependent evaluation job needs one)."""
    path = Path(run_dir) / "train_summary.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: the training job ended before it finished; nothing to evaluate")
    summary = json.loads(path.read_text())
    if summary.get("status") != "finished":
        raise ValueError(f"training in {run_dir} did not finish (status {summary.get('status')!r} at step "
                         f"{summary.get('step')}); not evaluating")
    return {"run_dir": str(run_dir), **summary}


def requeue(max_requeues: int) -> bool:
    """Puts this Slurm job back in the queue (rank 0 calls it); False when it may not, or Slurm refused."""
    job_id = submitit.JobEnvironment().job_id  # 123, or 123_4 for a task of an array (a sweep)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if _cancelled(job_id):
        log.warning("not requeuing job %s: it was cancelled (scancel)", job_id)
        return False
    if restarts >= max_requeues:
        log.warning("not requeuing job %s: it was requeued %d times already (launcher.max_requeues=%d)",
                    job_id, restarts, max_requeues)
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
        log.warning("requeued job %s (requeue %d of at most %d); the next run resumes from the last checkpoint",
                    job_id, restarts + 1, max_requeues)
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


def _handle_signals_outside_training(max_requeues: int) -> None:
    """Installs this job's handlers; the trainer's take over while it trains and restore these after."""
    stop_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)

    def on_stop(signum, frame):
        if os.environ.get("SLURM_PROCID", "0") != "0":
            log.warning("received %s outside training: rank 0 requeues the job", signal.Signals(signum).name)
            return
        log.warning("received %s outside training: requeuing (the checkpoints on disk are all there is)",
                    signal.Signals(signum).name)
        if requeue(max_requeues):
            leave_requeued_job()

    def on_term(signum, frame):
        log.warning("received SIGTERM outside training: ignored (the job is being requeued, cancelled or preempted)")

    signal.signal(stop_signal, on_stop)
    signal.signal(signal.SIGTERM, on_term)


class PretrainTask(submitit.helpers.Checkpointable):
    """The callable launcher=slurm submits: every task of the job runs `run` on the resolved config.

    A Checkpointable, so that submitit would requeue rather than fail it should its own signal handler
    ever act; the inherited `checkpoint()` resubmits the task unchanged, because what the next run
    needs is in the run directory's checkpoints, not in this object.
    """

    def __init__(self, cfg, run_dir, stages=("train", "eval")):
        self.cfg, self.run_dir, self.stages = cfg, str(run_dir), tuple(stages)

    def __call__(self) -> dict:
        # No Hydra here to set up logging: the project's messages go to the task's stderr log.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[%(asctime)s rank {os.environ.get('SLURM_PROCID', '0')}] "
                                               "%(name)s: %(message)s"))
        logging.getLogger("pretrain_mm").addHandler(handler)
        logging.getLogger("pretrain_mm").setLevel(logging.INFO)
        return run(self.cfg, self.run_dir, self.stages)
