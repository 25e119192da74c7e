"""The run driver: what every process of a run does (train, then evaluate), whoever started it.

`python -m pretrain_mm` calls `run` directly (launcher=local: here, under torchrun or srun, or as a point of
a Hydra sweep on Slurm); launcher=slurm submits a `PretrainTask` (launch/slurm.py) whose every task calls it.
Inside a job submitit submitted, a training that a signal stopped requeues the job (launch/requeue.py).
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pretrain_mm.config import Config
from pretrain_mm.launch.requeue import in_submitit_slurm_job, leave_requeued_job, prepare_slurm_process, requeue

if TYPE_CHECKING:  # torch is imported only when a run starts (submitting needs none)
    from pretrain_mm.distributed import DistInfo


def stages_of(cfg: Config) -> tuple[str, ...]:
    """What a run does, from cfg.mode: +exp=eval evaluates only; training evaluates after it, unless
    launcher.eval_job leaves the evaluation to a dependent Slurm job (which runs ("eval",) itself)."""
    if cfg.mode == "eval":
        return ("eval",)
    if cfg.launcher.name == "slurm" and cfg.launcher.eval_job:
        return ("train",)
    return ("train", "eval")


def run(cfg: Config, run_dir: str | Path, stages: tuple[str, ...] = ("train", "eval")) -> dict:
    """Runs the stages in this process (every process of the run calls it) and returns rank 0's summary
    of how training ended. In a submitit Slurm job an interrupted training requeues the job and the
    process exits instead of returning."""
    check_eval_checkpoint(cfg)
    requeue_allowed = in_submitit_slurm_job()
    if requeue_allowed:
        prepare_slurm_process(cfg.launcher.max_requeues)
    # Imported here, not at the top: submitting (launcher=slurm) pickles PretrainTask and needs no torch.
    from pretrain_mm import distributed as dist_utils
    from pretrain_mm.train.loop import train

    info = dist_utils.init_distributed(cfg.trainer.device)
    requeued = False
    try:
        if "train" in stages:
            result = train(cfg, run_dir, info)
            summary = {
                "run_dir": str(run_dir),
                "status": result.status,
                "step": result.step,
                "max_steps": cfg.trainer.max_steps,
                "final_loss": result.final_loss,
                "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            }
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


def check_eval_checkpoint(cfg: Config) -> None:
    """+exp=eval: a ValueError naming eval.checkpoint when it does not exist, before anything starts (the
    loader's own message speaks of "checkpoint", not of the key the user set)."""
    path = cfg.eval.checkpoint
    if cfg.mode == "eval" and path and not Path(path).expanduser().exists():
        raise ValueError(
            f"checkpoint {path} does not exist (eval.checkpoint): give a training run's directory, "
            "e.g. eval.checkpoint=outputs/clip, or one of its checkpoints/step_<N>"
        )


def evaluate(cfg: Config, run_dir: str | Path, info: "DistInfo") -> dict | None:
    """Evaluation (every rank calls it): after training, of the run's newest checkpoint, into
    <run_dir>/report/, when eval.enabled; with mode=eval, of eval.checkpoint. Returns the results."""
    if cfg.mode != "eval" and not cfg.eval.enabled:
        return None
    from pretrain_mm.eval import evaluate_checkpoint

    if cfg.mode == "eval":
        return evaluate_checkpoint(cfg, info)
    return evaluate_checkpoint(cfg, info, checkpoint=run_dir, output_dir=run_dir)


def finished_training(run_dir: str | Path) -> dict:
    """Rank 0's train_summary.json of a run whose training finished (a dependent evaluation job needs one)."""
    path = Path(run_dir) / "train_summary.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: the training job ended before it finished; nothing to evaluate")
    summary = json.loads(path.read_text())
    if summary.get("status") != "finished":
        raise ValueError(
            f"training in {run_dir} did not finish (status {summary.get('status')!r} at step "
            f"{summary.get('step')}); not evaluating"
        )
    return {"run_dir": str(run_dir), **summary}
