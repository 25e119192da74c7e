"""AdamW with weight decay only where it belongs, and a per-step warm-up + cosine schedule."""

import math

import torch
import torch.nn as nn

# Parameters that never decay, besides every vector (norms, biases, scalars): embeddings
# and tokens, and the contrastive temperature and bias.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "token_embed", "position_embed", "logit_scale",
                  "logit_bias")


def decays(name: str, param: torch.Tensor) -> bool:
    return param.ndim >= 2 and not any(key in name for key in NO_DECAY_NAMES)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """The multiplier of the peak learning rate at `step` (0-based, before the update)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps=cfg.warmup_steps, max_steps=max_steps,
                                              min_lr_ratio=cfg.min_lr_ratio))
