"""The training loop: build, resume, step, log, checkpoint — top to bottom in `train`.

Stops cleanly on SIGTERM / SIGUSR1 / SIGUSR2 (what Slurm sends before preemption or the
time limit): the step in flight finishes, every rank agrees, a checkpoint is written, and
running the same command again continues from it, on exactly the samples the uninterrupted
run would have seen. A loss or a gradient that becomes NaN or Inf stops the run before the
optimiser touches the weights, naming the step and the last good checkpoint.

`trainer.grad_accum = k` splits each rank's batch into k micro-batches; the contrastive loss is
still that of the whole global batch (train/accumulation.py).
"""

import contextlib
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf

from pretrain_mm import distributed as dist_utils
from pretrain_mm.builders import (
    build_tokenizer,
    build_train_loader,
    masking_rule,
    model_from_config,
    model_vocab_size,
    pin_model_args,
)
from pretrain_mm.config import TEXT_KINDS, TOKENIZED_KINDS, Config, TrainerConfig, masks_text, plain_config
from pretrain_mm.data.pipeline import RUN_SIGNALS
from pretrain_mm.interop.init_from import load_open_clip_weights, read_open_clip, with_open_clip_architecture
from pretrain_mm.interop.weights import MODEL_FILE
from pretrain_mm.precision import Precision, autocast, resolve_precision
from pretrain_mm.train.accumulation import accumulate_gradients
from pretrain_mm.train.checkpoint import Checkpointer, write_model_file
from pretrain_mm.train.distill import DistillationObjective, load_teacher, with_distill_heads
from pretrain_mm.train.metric_logger import MetricLogger, StepTimer, peak_memory_mb
from pretrain_mm.train.objectives import TextMasking, build_objective
from pretrain_mm.train.optimizer import build_optimizer, build_scheduler, clip_gradients, grad_norm
from pretrain_mm.train.parallelize import apply_activation_checkpointing, apply_compile, apply_fsdp
from pretrain_mm.train.warm_start import load_text_tower

log = logging.getLogger(__name__)
STOP_SIGNALS = tuple(sig for sig in RUN_SIGNALS if sig != signal.SIGINT)  # Ctrl-C stays an abort


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm is NaN or Inf: the step is not taken."""


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    step: int
    checkpoint: Path | None
    final_loss: float


class StopFlag:
    """Records the first stop signal; the loop checks it between steps."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            log.warning("received %s: finishing this step, then checkpointing", signal.Signals(signum).name)
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def autocast_context(precision: Precision, info: dist_utils.DistInfo):
    """bf16 autocast where the precision says so, except where FSDP2's MixedPrecisionPolicy casts (several GPUs)."""
    fsdp_casts = info.device.type == "cuda" and info.world_size > 1
    return contextlib.nullcontext() if fsdp_casts else autocast(precision, info.device)


def train(cfg: Config, run_dir: str | Path, info: dist_utils.DistInfo) -> TrainResult:
    run_dir = Path(run_dir)
    model_node = cast(DictConfig, cfg.model)  # at run time; `get`: MAE configs have no init_from
    init_from = model_node.get("init_from")  # a CLIP key (ClipModelConfig)
    if init_from:  # open_clip weights: their architecture becomes model.args (and config.yaml's)
        open_clip_cfg, open_clip_state = read_open_clip(init_from, model_node.init_from_config)
        cfg = with_open_clip_architecture(cfg, open_clip_cfg)
    trainer = cfg.trainer
    micro, accum = batch_split(trainer, info.world_size)
    precision = resolve_precision(trainer.precision, info.device)
    if info.is_main:
        log.info("computing in %s (%s)", precision.name, precision.reason)
        log.info(
            "global batch %d = %d rank(s) x %d micro-batch(es) of %d%s",
            trainer.batch_size,
            info.world_size,
            accum,
            micro,
            "; the contrastive loss is the whole batch's (GradCache)"
            if accum > 1 and cfg.model.kind in TEXT_KINDS
            else "",
        )

    # The model: identical initial weights on every rank, then each rank's own random stream.
    tokenizer = build_tokenizer(cfg.data) if cfg.model.kind in TOKENIZED_KINDS else None
    teacher = None
    if cfg.distill.teacher:  # the student gets heads to the teacher's width where it differs (train/distill.py)
        if tokenizer is None or cfg.model.kind not in TEXT_KINDS:
            raise ValueError(f"distill.teacher needs a CLIP or CoCa student (model=clip or coca), not {cfg.model.kind}")
        teacher = load_teacher(cfg, tokenizer, info.device)
        cfg = with_distill_heads(cfg, teacher)
        if info.is_main:
            log.info("distilling from %s (%s)", cfg.distill.teacher, type(teacher).__name__)
    torch.manual_seed(trainer.seed)
    model = model_from_config(cfg, model_vocab_size(cfg, tokenizer) if tokenizer else None).to(info.device)
    if cfg.model.text_init_from:  # before sharding; a resumed run's checkpoint overwrites it
        if tokenizer is None or cfg.model.kind not in TEXT_KINDS:
            raise ValueError(f"model.text_init_from needs a CLIP or CoCa (model=clip or coca), not {cfg.model.kind}")
        load_text_tower(model, cfg.model.text_init_from, tokenizer)
        if info.is_main:
            log.info("text tower from %s", cfg.model.text_init_from)
    if (
        accum > 1
        and info.is_main
        and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    ):
        log.warning(
            "the model has BatchNorm (model.args.vision_stem=conv): its statistics are each micro-batch's "
            "of %d, so an accumulated step is close to, not exactly, the whole batch's; vision_stem=patch "
            "has none",
            micro,
        )
    if trainer.activation_checkpointing:
        apply_activation_checkpointing(model)
    if trainer.compile:
        apply_compile(model)
    if info.world_size > 1:
        apply_fsdp(model, bf16=precision.bf16 and info.device.type == "cuda")
    torch.manual_seed(trainer.seed + 1000 * info.rank)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, trainer.max_steps)
    masking = (
        TextMasking(masking_rule(cfg, tokenizer), trainer.seed, info.rank) if tokenizer and masks_text(cfg) else None
    )
    student_objective = build_objective(cfg.model.kind, cfg.loss, masking)
    objective = student_objective if teacher is None else DistillationObjective(student_objective, teacher, cfg.distill)

    # Resume: the newest complete checkpoint of this run (auto), a given one, or none.
    checkpointer = Checkpointer(run_dir / "checkpoints", info, keep=trainer.keep_checkpoints)
    start = (
        checkpointer.latest()
        if trainer.resume == "auto"
        else (None if trainer.resume == "never" else Path(trainer.resume))
    )
    if trainer.resume == "never" and checkpointer.latest() is not None:
        raise ValueError(
            f"{run_dir} already holds checkpoints and trainer.resume=never would overwrite the run; "
            "use trainer.resume=auto to continue it, or another hydra.run.dir"
        )
    step, data_state = 0, None
    if start is None and init_from:
        load_open_clip_weights(model, open_clip_state, init_from)
        if info.is_main:
            log.info("starting from the open_clip weights %s", init_from)
    if start is not None:
        extra, own = checkpointer.load(start, model, optimizer, {"step": 0, "scheduler": scheduler.state_dict()})
        step, data_state = extra["step"], own.get("data")
        scheduler.load_state_dict(extra["scheduler"])
        if info.is_main:
            log.info("resumed from %s at step %d", start, step)
    loader = build_train_loader(cfg, info, micro * accum, tokenizer)
    normalize = loader.normalize
    assert normalize is not None  # build_loader always gives one
    if data_state is not None:
        loader.load_state_dict(data_state)

    if info.is_main:
        write_config(run_dir / "config.yaml", cfg, precision)
    metrics = MetricLogger(run_dir, enabled=info.is_main, start_step=step, max_steps=trainer.max_steps)
    in_precision = autocast_context(precision, info)
    timer, batches, loss_sum, loss_count, last_saved = StepTimer(), iter(loader), 0.0, 0, start
    started, first_step, final_loss = time.perf_counter(), step, float("nan")
    fresh_epoch, empty_epochs = True, 0
    model.train()

    with StopFlag() as stop:
        while step < trainer.max_steps:
            batch = next(batches, None)
            if batch is None:  # an epoch ended: the loader reshuffles for the next
                empty_epochs = empty_epochs + 1 if fresh_epoch else 0
                if empty_epochs >= 2:
                    raise RuntimeError(
                        f"rank {info.rank} received no training batch in two epochs; "
                        "give every rank at least one batch of samples (see data.train.urls)"
                    )
                batches, fresh_epoch = iter(loader), True
                continue
            fresh_epoch = False
            timer.data_ready()
            micro_batches = split_batch(objective.prepare(batch, step), accum, info.device)
            loss_value = accumulate_gradients(
                model, objective, micro_batches, in_precision, prepare=lambda m: {**m, "image": normalize(m["image"])}
            )
            norm = grad_norm(model.parameters())
            for what, value in (("loss", loss_value), ("gradient norm", norm)):
                if dist_utils.any_rank(not math.isfinite(value), info):
                    raise NonFiniteLossError(
                        f"the {what} became {value} at step {step + 1}; stopping before the update. The last good "
                        f"checkpoint is {checkpointer.latest() or '(none yet)'}; lower optim.lr or check the data"
                    )
            clip_gradients(model.parameters(), cfg.optim.grad_clip, norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            objective.after_step(model)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            timer.step_done(trainer.batch_size)
            metrics.advance()
            loss_sum, loss_count = loss_sum + loss_value, loss_count + 1
            if step % trainer.log_every == 0 or step == trainer.max_steps:
                final_loss = dist_utils.all_reduce_mean(loss_sum / loss_count, info)
                loss_sum, loss_count = 0.0, 0
                metrics.log(
                    step,
                    {
                        "loss": final_loss,
                        "lr": lr,
                        "grad_norm": norm,
                        **timer.take(trainer.log_every),
                        "peak_memory_mb": peak_memory_mb(info.device),
                        **{f"skipped_{k}": v for k, v in loader.skipped.items()},
                    },
                )
            interrupted = dist_utils.any_rank(stop.signum is not None, info)
            if step % trainer.checkpoint_every == 0 or step == trainer.max_steps or interrupted:
                last_saved = checkpointer.save(
                    step,
                    model,
                    optimizer,
                    {"step": step, "scheduler": scheduler.state_dict()},
                    rank_state={"data": loader.state_dict()},
                )
            if interrupted:
                break
    if loss_count:  # steps since the last log line (a stop between two): the summary reports their mean
        final_loss = dist_utils.all_reduce_mean(loss_sum / loss_count, info)
    metrics.close()
    status = "finished" if step >= trainer.max_steps else "interrupted"
    if status == "finished":
        write_model_file(run_dir / MODEL_FILE, model, resolved_config(cfg, precision), step, info)
    if info.is_main:
        elapsed = time.perf_counter() - started
        summary = {
            "status": status,
            "step": step,
            "steps_this_run": step - first_step,
            "final_loss": final_loss,
            "seconds": round(elapsed, 1),
            "checkpoint": str(last_saved) if last_saved else None,
            "skipped_samples": loader.skipped,
        }
        (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        print(
            f"{status}: step {step}/{trainer.max_steps} ({step - first_step} this run, {elapsed:.0f}s), "
            f"loss {final_loss:.4f}, checkpoint {last_saved}"
            + ("; run the same command again to continue" if status == "interrupted" else ""),
            flush=True,
        )
    return TrainResult(status, step, last_saved, final_loss)


def batch_split(trainer: TrainerConfig, world_size: int) -> tuple[int, int]:
    """(micro-batch size, micro-batches per step) of each rank, from trainer.batch_size (global) and
    trainer.micro_batch_size or trainer.grad_accum."""
    if trainer.micro_batch_size is not None:
        per_rank, rem = divmod(trainer.batch_size, world_size)
        if rem or trainer.micro_batch_size < 1 or per_rank % trainer.micro_batch_size:
            raise ValueError(
                f"trainer.batch_size={trainer.batch_size} must be world size ({world_size}) x a multiple of "
                f"trainer.micro_batch_size={trainer.micro_batch_size}"
            )
        accum = per_rank // trainer.micro_batch_size
        if trainer.grad_accum not in (1, accum):
            raise ValueError(
                f"trainer.grad_accum={trainer.grad_accum} contradicts trainer.micro_batch_size="
                f"{trainer.micro_batch_size} (which means grad_accum={accum}); set one of them"
            )
        return trainer.micro_batch_size, accum
    micro, rem = divmod(trainer.batch_size, world_size * trainer.grad_accum)
    if rem or micro == 0:
        raise ValueError(
            f"trainer.batch_size={trainer.batch_size} must be a positive multiple of world size "
            f"({world_size}) x trainer.grad_accum ({trainer.grad_accum})"
        )
    return micro, trainer.grad_accum


def resolved_config(cfg: Config, precision: Precision) -> dict:
    """The resolved config, with the precision `auto` chose and the model's changeable defaults
    written in (so it rebuilds and reruns the same way): config.yaml and model.safetensors' header."""
    resolved = pin_model_args(plain_config(cfg))
    resolved["trainer"]["precision"] = precision.name
    return resolved


def write_config(path: Path, cfg: Config, precision: Precision) -> None:
    path.write_text(
        f"# trainer.precision: {precision.name} ({precision.reason})\n"
        + OmegaConf.to_yaml(resolved_config(cfg, precision))
    )


def split_batch(batch: dict, parts: int, device: torch.device) -> list[dict]:
    """`parts` micro-batches of the tensors of `batch`, on the device. Images stay uint8 until a
    micro-batch goes through the model (a global batch of 32K images at 224 px is 4.9 GB so, 20 GB
    as floats)."""
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    size = next(iter(tensors.values())).shape[0]
    step = size // parts
    return [
        {k: v[i * step : (i + 1) * step].to(device, non_blocking=True) for k, v in tensors.items()}
        for i in range(parts)
    ]
