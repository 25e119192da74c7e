"""The contrastive losses: the fused compiled op, its plain-PyTorch reference, its distributed form; token losses."""

from pretrain_mm.ops.contrastive import contrastive_loss
from pretrain_mm.ops.distributed import (
    distributed_contrastive_loss,
    distributed_row_mean,
    distributed_token_mean,
    gather_rows,
    token_total,
)
from pretrain_mm.ops.tokens import IGNORE, token_cross_entropy

__all__ = [
    "IGNORE",
    "contrastive_loss",
    "distributed_contrastive_loss",
    "distributed_row_mean",
    "distributed_token_mean",
    "gather_rows",
    "token_cross_entropy",
    "token_total",
]
