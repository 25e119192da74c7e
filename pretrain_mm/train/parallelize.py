"""Parallelism applied to plain models, torchtitan-style: FSDP2, activation checkpointing, compile.

Models expose their transformer blocks as `nn.ModuleList`s named `blocks`; each block is
sharded (and optionally checkpointed / compiled) on its own, then the root.
"""

import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def transformer_blocks(model: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """Every (blocks list, index) pair in the model: image tower, text tower, MAE decoder."""
    found = []
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("blocks", "decoder_blocks") and isinstance(module, nn.ModuleList):
            found.extend((module, i) for i in range(len(module)))
    return found


def apply_activation_checkpointing(model: nn.Module) -> None:
    for blocks, i in transformer_blocks(model):
        blocks[i] = checkpoint_wrapper(blocks[i])


def apply_compile(model: nn.Module) -> None:
    for blocks, i in transformer_blocks(model):
        blocks[i] = torch.compile(blocks[i])


def apply_fsdp(model: nn.Module, *, bf16: bool) -> None:
    """Shard each block, then the root (embeddings, heads, logit scale)."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for blocks, i in transformer_blocks(model):
        fully_shard(blocks[i], **kwargs)
    fully_shard(model, **kwargs)
