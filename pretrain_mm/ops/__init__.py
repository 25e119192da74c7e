"""The contrastive losses: the fused compiled op, its plain-PyTorch reference, its distributed form."""

from pretrain_mm.ops.contrastive import contrastive_loss
from pretrain_mm.ops.distributed import (
    distributed_contrastive_loss,
    distributed_row_mean,
    distributed_token_mean,
    token_total,
)

__all__ = [
    "contrastive_loss",
    "distributed_contrastive_loss",
    "distributed_row_mean",
    "distributed_token_mean",
    "token_total",
]
