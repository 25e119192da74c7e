"""Weighted k-NN classification on frozen features, as DINO: cosine similarity, votes weighted by exp(sim / T)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain_mm.eval.metrics import accuracies


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    ks=(10, 20, 100, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Class votes (N_test, C) per k: each of a test sample's k nearest training samples (cosine
    similarity s) adds exp(s / T) to its class. One top-max(k) search serves every k, test rows a
    chunk at a time (memory O(chunk x N_train)). A k beyond the training set uses all of it."""
    if temperature <= 0:
        raise ValueError(f"eval.knn_temperature must be positive, got {temperature}")
    if not ks or min(ks) < 1:
        raise ValueError(f"eval.knn_k must list positive k, got {list(ks)}")
    train = F.normalize(train_features.float(), dim=-1)
    test = F.normalize(test_features.float(), dim=-1)
    k_max = min(max(ks), train.shape[0])
    votes: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, test.shape[0], chunk_size):
        sims, idx = (test[start : start + chunk_size] @ train.T).topk(k_max, dim=1)  # sorted, best first
        weights = (sims / temperature).exp()
        neighbours = train_labels[idx]
        for k in ks:
            kk = min(k, k_max)
            chunk = torch.zeros(sims.shape[0], num_classes, device=sims.device)
            votes[k].append(chunk.scatter_add_(1, neighbours[:, :kk], weights[:, :kk]))
    return {k: torch.cat(v) for k, v in votes.items()}


def knn_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ks=(10, 20, 100, 200),
    temperature: float = 0.07,
) -> dict[str, float]:
    """{'top1@k10': ..., 'top1@k20': ...}: top-1 accuracy (fraction) for each k."""
    votes = knn_predict(train_features, train_labels, test_features, num_classes, ks, temperature)
    return {f"top1@k{k}": accuracies(v, test_labels, num_classes, topk=(1,))["top1"] for k, v in votes.items()}
