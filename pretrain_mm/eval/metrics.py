"""Classification metrics through torchmetrics: top-k accuracy and the confusion matrix."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix


def accuracies(scores: torch.Tensor, labels: torch.Tensor, num_classes: int, topk=(1, 5)) -> dict[str, float]:
    """{'top1': ..., 'top5': ...} (fractions) of class scores (N, C) against labels (N,).
    A top-k with k >= the number of classes says nothing (always 1) and is left out."""
    if scores.shape[0] == 0:
        raise ValueError("no samples to score: the evaluation split came out empty")
    out = {}
    for k in topk:
        if k == 1 or k < num_classes:
            metric = MulticlassAccuracy(num_classes=num_classes, top_k=k, average="micro").to(scores.device)
            out[f"top{k}"] = float(metric(scores.float(), labels))
    return out


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    metric = MulticlassConfusionMatrix(num_classes=num_classes).to(predictions.device)
    return metric(predictions, labels).cpu()
