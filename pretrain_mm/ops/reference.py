"""Plain-PyTorch contrastive losses: the semantics the fused op must match, float64-capable.

These materialise the logit matrix, exactly as open_clip's ClipLoss and SigLipLoss do on
one process; the tests compare the fused op against them in float64.
"""

import torch
import torch.nn.functional as F


def softmax_loss(image_features, text_features, logit_scale):
    """CLIP: the mean of the image->text and text->image cross-entropies."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def sigmoid_loss(image_features, text_features, logit_scale, logit_bias):
    """SigLIP: -sum(logsigmoid(z * logits)) / N with z = +1 on the diagonal, -1 elsewhere."""
    logits = logit_scale * image_features @ text_features.T + logit_bias
    n = logits.shape[0]
    labels = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / n


def softmax_stats(q, k, logit_scale, offset=0):
    """What `pretrain_mm::softmax_forward` returns for rows q of a larger batch k:
    row log-sum-exps, this block's column log-sum-exps, and the positive-pair logits."""
    logits = logit_scale * q @ k.T
    rows = torch.arange(q.shape[0], device=q.device)
    return logits.logsumexp(1), logits.logsumexp(0), logits[rows, rows + offset]


def sigmoid_row_losses(q, k, logit_scale, logit_bias, offset=0):
    """What `pretrain_mm::sigmoid_forward` returns: each row's sum of pair losses."""
    logits = logit_scale * q @ k.T + logit_bias
    labels = -torch.ones_like(logits)
    rows = torch.arange(q.shape[0], device=q.device)
    labels[rows, rows + offset] = 1
    return -F.logsigmoid(labels * logits).sum(1)
