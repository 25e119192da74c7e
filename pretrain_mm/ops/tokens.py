"""Token-level cross-entropy reduced to per-row sums: what captioning and masked language modelling train on."""

import torch
import torch.nn.functional as F

IGNORE = -100  # cross-entropy's default ignore_index: a position whose token is not predicted


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> dict:
    """Per row of logits (B, T, V) and targets (B, T) (IGNORE where nothing is predicted): "nll", the sum of
    the token losses, in fp32 at least (as the contrastive op), "tokens", how many were predicted, and
    "correct", how many the argmax got right. Rows of sums, not a mean, so that gradient accumulation
    and data parallelism can divide by the whole batch's token count (distributed_token_mean)."""
    losses = F.cross_entropy(
        logits.transpose(1, 2).to(torch.promote_types(logits.dtype, torch.float32)),
        targets,
        ignore_index=IGNORE,
        reduction="none",
        label_smoothing=label_smoothing,
    )  # (B, T), 0 where ignored
    predicted = targets != IGNORE
    return {
        "nll": losses.sum(dim=1),
        "tokens": predicted.sum(dim=1),
        "correct": ((logits.detach().argmax(dim=-1) == targets) & predicted).sum(dim=1),
    }
