"""Inputs, gradients and float64 references for the tests of the fused contrastive loss."""

import torch
import torch.nn.functional as F

from pretrain_mm.ops import contrastive_loss


def make_batch(n, d, *, dtype=torch.float32, seed=0, scale=14.0, bias=-5.0, normalise=True):
    """CLIP-like inputs: unit-norm features, scale and (for sigmoid) bias as leaf tensors."""
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    if normalise:
        img, txt = F.normalize(img, dim=1), F.normalize(txt, dim=1)
    scalar_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return img.to(dtype), txt.to(dtype), torch.tensor(scale, dtype=scalar_dtype), torch.tensor(bias, dtype=scalar_dtype)


def loss_and_grads(img, txt, scale, bias, kind, **kwargs):
    """The loss and the gradients of (image, text, scale[, bias]), with leaves made here."""
    leaves = [t.detach().clone().requires_grad_() for t in (img, txt, scale, bias)]
    if kind == "softmax":
        leaves = leaves[:3]
    loss = contrastive_loss(*leaves, kind=kind, **kwargs)
    return [loss.detach()] + list(torch.autograd.grad(loss, leaves))


def reference64(img, txt, scale, bias, kind):
    as64 = [t.to(torch.float64) for t in (img, txt, scale, bias)]
    return loss_and_grads(*as64, kind, impl="reference")


def assert_close_all(got, want, rtol, atol):
    """Elementwise closeness, with atol relative to each tensor's largest element: a gradient
    entry is a sum of N terms that cancel, so its error scales with the tensor, not itself
    (nor below 1/N, the size of one term: with N = 1 every gradient is exactly zero)."""
    names = ["loss", "d_image", "d_text", "d_scale", "d_bias"]
    for name, g, w in zip(names, got, want):
        tol = atol * max(w.abs().max().item(), 1.0 / got[1].shape[0])
        torch.testing.assert_close(g.to(torch.float64), w, rtol=rtol, atol=tol, msg=lambda m: f"{name}: {m}")
