"""The contrastive losses: the fused compiled op, its reference, and (later) its distributed form."""

from pretrain_mm.ops.contrastive import contrastive_loss

__all__ = ["contrastive_loss"]
