"""AdamW with weight decay by the model's rule, the gradient norm and its clipping, a warm-up + cosine schedule."""

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor

from pretrain_mm.config import OptimConfig
from pretrain_mm.schedule import warmup_cosine


def weight_decay_groups(model: nn.Module, weight_decay: float, **group_options) -> list[dict]:
    """AdamW parameter groups by the model's own rule: `model.no_weight_decay()` names the parameters
    that never decay (see pretrain_mm.models.layers), everything else decays. Pretraining and
    fine-tuning both build their groups here, so there is one rule."""
    skip = cast(Callable[[], set[str]], model.no_weight_decay)()
    names = {name for name, _ in model.named_parameters()}
    assert skip <= names, f"no_weight_decay() names unknown parameters: {sorted(skip - names)[:5]}"
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n not in skip]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and n in skip]
    return [
        {"params": decay, "weight_decay": weight_decay, **group_options},
        {"params": no_decay, "weight_decay": 0.0, **group_options},
    ]


def build_optimizer(model: nn.Module, optim_cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over weight_decay_groups. Plain (unsharded) parameters take torch's fused kernel, one
    pass over each parameter instead of a dozen elementwise ops (CPU and CUDA alike); FSDP2's
    DTensors keep the default implementation."""
    fused = not any(isinstance(p, DTensor) for p in model.parameters())
    return torch.optim.AdamW(
        weight_decay_groups(model, optim_cfg.weight_decay),
        lr=optim_cfg.lr,
        betas=(optim_cfg.betas[0], optim_cfg.betas[1]),
        eps=optim_cfg.eps,
        fused=fused or None,
    )


@torch.no_grad()
def grad_norm(parameters) -> float:
    """The 2-norm of all gradients, the same on every rank: FSDP2's sharded (DTensor) gradients are
    reduced over ranks; replicated ones (the scalars FSDP leaves out) count once."""
    grads = [p.grad for p in parameters if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    squares = 0.0
    if sharded:
        squares += float(cast(DTensor, torch.nn.utils.get_total_norm(sharded)).full_tensor()) ** 2
    if plain:
        squares += float(torch.nn.utils.get_total_norm(plain)) ** 2
    return math.sqrt(squares)


@torch.no_grad()
def clip_gradients(parameters, max_norm: float, norm: float) -> None:
    """Scale the gradients so their norm (from grad_norm) is at most max_norm; 0 disables."""
    if max_norm > 0 and norm > max_norm:
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(max_norm / (norm + 1e-6))


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim_cfg: OptimConfig, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(
            step, warmup=optim_cfg.warmup_steps, total=max_steps, min_ratio=optim_cfg.min_lr_ratio
        ),
    )
