"""Parallelism applied to plain models, torchtitan-style: FSDP2, activation checkpointing, compile.

Models expose their transformer blocks as `nn.ModuleList`s named `blocks`; each block is
sharded (and optionally checkpointed / compiled) on its own, then the root.
"""

from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def transformer_blocks(model: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """Every (blocks list, index) pair in the model: image tower, text tower, MAE decoder."""
    found: list[tuple[nn.ModuleList, int]] = []
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("blocks", "decoder_blocks") and isinstance(module, nn.ModuleList):
            found.extend((module, i) for i in range(len(module)))
    return found


def apply_activation_checkpointing(model: nn.Module) -> None:
    for blocks, i in transformer_blocks(model):
        blocks[i] = checkpoint_wrapper(blocks[i])


def apply_compile(model: nn.Module) -> None:
    for blocks, i in transformer_blocks(model):
        blocks[i] = cast(nn.Module, torch.compile(blocks[i]))  # an OptimizedModule for a module


def apply_fsdp(model: nn.Module, *, bf16: bool) -> None:
    """Shard each block, then the root (embeddings, heads). One-element parameters (CLIP's
    logit_scale and logit_bias) are left out of FSDP: sharding one number gains nothing, and
    under bf16 mixed precision the forward would see it rounded to 8 bits (3% steps of the
    scale). They stay fp32 and replicated; a hook averages their gradients over ranks, as FSDP's
    reduce-scatter averages the others'."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs: dict[str, Any] = {"mp_policy": mp} if mp is not None else {}
    for blocks, i in transformer_blocks(model):
        fully_shard(blocks[i], **kwargs)
    scalars = {p for p in model.parameters() if p.numel() == 1}
    for param in scalars:
        param.register_hook(average_over_ranks)
    fully_shard(model, ignored_params=scalars or None, **kwargs)


def average_over_ranks(grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()
