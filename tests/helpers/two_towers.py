"""A tiny float64 CLIP of two linear towers, its batch, and its loss and gradients, for the tests of the
distributed contrastive loss."""

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 24
KINDS = ("softmax", "sigmoid")


def two_towers():
    """A tiny float64 CLIP: two linear towers, a learnable scale and bias."""
    torch.manual_seed(0)
    return (
        nn.ModuleDict(
            {
                "image": nn.Linear(12, 8),
                "text": nn.Linear(10, 8),
            }
        ).double(),
        nn.Parameter(torch.tensor(2.5, dtype=torch.float64)),
        nn.Parameter(torch.tensor(-3.0, dtype=torch.float64)),
    )


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 12, generator=g, dtype=torch.float64), torch.randn(
        BATCH, 10, generator=g, dtype=torch.float64
    )


def loss_and_grads(kind, images, texts, loss_fn, **kwargs):
    towers, scale, bias = two_towers()
    image_features = F.normalize(towers["image"](images), dim=1)
    text_features = F.normalize(towers["text"](texts), dim=1)
    loss = loss_fn(image_features, text_features, scale.exp(), bias if kind == "sigmoid" else None, kind=kind, **kwargs)
    loss.backward()
    params = list(towers.parameters()) + [scale, bias]
    return loss.detach(), [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
