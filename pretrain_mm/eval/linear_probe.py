"""Linear probe on cached frozen features: BatchNorm without affine, then a linear layer (MAE's recipe).

The BatchNorm only standardises each feature (MAE: it makes the probe insensitive to the
feature scale, which differs wildly between towers, and the learnt head can absorb any affine);
at test time it uses the running statistics, like a StandardScaler fitted on the training set.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pretrain_mm.eval.metrics import accuracies
from pretrain_mm.schedule import warmup_cosine


def probe_head(dim: int, num_classes: int) -> nn.Sequential:
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    linear = head[1]
    assert isinstance(linear, nn.Linear)
    nn.init.trunc_normal_(linear.weight, std=0.01)  # MAE's probe head init
    nn.init.zeros_(linear.bias)
    return head


def train_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    warmup_epochs: int = 5,
    seed: int = 0,
) -> nn.Sequential:
    """Fit the probe with AdamW and a per-step warm-up + cosine schedule, shuffled mini-batches
    drawn from a generator of its own (the same result on every rank, whatever the global RNG)."""
    if features.shape[0] < 2:
        raise ValueError(f"the linear probe needs at least 2 training samples, got {features.shape[0]}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"eval.probe.epochs and eval.probe.batch_size must be >= 1, got {epochs}, {batch_size}")
    device = features.device
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = probe_head(features.shape[1], num_classes).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = features.shape[0]
    # A last batch of one sample would break BatchNorm's training statistics: fold it into the previous.
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup=warmup_epochs * steps_per_epoch, total=total)
    )
    loss_fn = nn.CrossEntropyLoss()
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for batch in order.tensor_split(steps_per_epoch):
            loss = loss_fn(head(features[batch].float()), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


@torch.no_grad()
def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    **train_kw,
) -> tuple[dict, torch.Tensor]:
    """(top-1 / top-5 accuracy on the test features, the predicted classes)."""
    with torch.enable_grad():
        head = train_linear_probe(train_features, train_labels, num_classes, **train_kw)
    logits = head(test_features.float())
    return accuracies(logits, test_labels, num_classes), logits.argmax(dim=1)
