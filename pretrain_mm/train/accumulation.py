"""One step's gradients from k micro-batches: the whole batch's contrastive loss (GradCache), or summed losses.

A contrastive loss couples every pair of the batch, so summing k micro-batch losses would train
with B/k negatives, not the B that `trainer.batch_size` promises. `contrastive_accumulation`
keeps the objective of the whole batch at the activation memory of one micro-batch
(Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", 2021):

1. embed every micro-batch without autograd graphs, remembering the RNG state before each;
2. compute the loss of the whole batch on the concatenated features (the fused op; across ranks
   the distributed loss) and backpropagate it to the features and the scale / bias only;
3. re-embed each micro-batch with its graph, from the same RNG state (patch dropout and drop path
   draw the same), and backpropagate its slice of the feature gradient, plus the objective's
   separable term of that micro-batch (CoCa's captioning loss: a sum over micro-batches, each
   normalised by the whole batch's token count).

The parameter gradients are those of the unaccumulated batch; the cost is one more forward of
the towers. Under FSDP2 the gradients are reduced once, after the last micro-batch. Not for
a model with BatchNorm (CLIP's conv stem): it normalises each micro-batch by its own statistics,
so the step is close to the whole batch's, and both forwards move its running statistics (the
trainer warns).
"""

import contextlib
from typing import cast

import torch
from torch.distributed.fsdp import FSDPModule

# Per-row, with gradient: the features, and where there are, hard negatives' and the distill heads' (train/distill.py).
FEATURES = ("image_features", "text_features", "neg_text_features", "image_distill", "text_distill")
# Per-row, without gradient: data, and separable loss terms (their value for the whole batch's loss; their
# gradient comes from each micro-batch's re-run).
ROW_DATA = (
    "neg_mask",
    "caption_nll",
    "caption_tokens",
    "mlm_nll",
    "mlm_tokens",
    "words_nll",
    "words_tokens",
    "teacher_image_features",
    "teacher_text_features",
)
SCALARS = ("logit_scale", "logit_bias")


def accumulate_gradients(
    model, objective, micro_batches: list[dict], precision=None, prepare=lambda micro: micro
) -> float:
    """Backpropagates one step's loss into the parameters' .grad; returns the loss of the whole batch.

    precision: the autocast context of the forwards (None: fp32). prepare: turns a stored micro-batch into the
    model's inputs right before each forward (the trainer normalises uint8 images there, so only
    one micro-batch of images exists as floats at a time)."""
    precision = contextlib.nullcontext() if precision is None else precision
    if objective.couples_batch and len(micro_batches) > 1:
        return contrastive_accumulation(model, objective, micro_batches, precision, prepare)
    return summed_accumulation(model, objective, micro_batches, precision, prepare)


def summed_accumulation(model, objective, micro_batches: list[dict], precision, prepare) -> float:
    """The sum of the micro-batches' shares of the step's loss (objective.micro_batch_loss: MAE's mean over
    samples, MLM's over the step's masked tokens); with one micro-batch, the batch's loss."""
    total = 0.0
    for m, micro in enumerate(micro_batches):
        sync_gradients(model, m == len(micro_batches) - 1)
        with precision:
            loss = objective.micro_batch_loss(model, prepare(micro), len(micro_batches))
        loss.backward()
        total += loss.detach().item()
    return total


def contrastive_accumulation(model, objective, micro_batches: list[dict], precision, prepare) -> float:
    """GradCache (see the module doc): the loss of all micro-batches together, one micro-batch's activations."""
    device = micro_batches[0]["image"].device
    rng_before, cached = [], []
    with torch.no_grad():
        for micro in micro_batches:
            rng_before.append(torch_rng_state(device))
            with precision:
                out = objective.forward(model, prepare(micro))
            cached.append(out)
    rng_after = torch_rng_state(device)

    # The whole batch's loss, on leaves that stop the backward at the features and the scalars.
    sizes = [out["image_features"].shape[0] for out in cached]
    features = [k for k in FEATURES if k in cached[0]]
    leaves = {k: torch.cat([out[k] for out in cached]).requires_grad_() for k in features}
    leaves.update({k: torch.cat([out[k] for out in cached]) for k in ROW_DATA if k in cached[0]})
    leaves.update({k: cached[0][k].detach().clone().requires_grad_() for k in SCALARS if cached[0].get(k) is not None})
    del cached  # the concatenated copies are all the loss needs
    with precision:
        loss = objective.loss(leaves)
    loss.backward()
    feature_grads = {}
    for k in features:
        grad = leaves[k].grad
        assert grad is not None, f"the loss does not use {k}"
        feature_grads[k] = grad.split(sizes)

    for m, micro in enumerate(micro_batches):
        set_torch_rng_state(rng_before[m], device)
        sync_gradients(model, m == len(micro_batches) - 1)
        with precision:
            out = objective.forward(model, prepare(micro))
        # d(surrogate)/d(parameters) = sum over the slice of dL/df * df/d(parameters).
        # (features holds image_features at least: the sum is a tensor)
        surrogate = cast(torch.Tensor, sum(dot(out[k], feature_grads[k][m]) for k in features))
        if m == 0:  # the scale and bias are the same tensors in every micro-batch: their gradient goes once
            scalar_grads = [(k, leaves[k].grad) for k in SCALARS if k in leaves]
            surrogate = surrogate + sum(dot(out[k], grad) for k, grad in scalar_grads if grad is not None)
        separable = objective.separable_loss(out, leaves)
        if separable is not None:
            surrogate = surrogate + separable
        surrogate.backward()
    set_torch_rng_state(rng_after, device)
    return loss.detach().item()


def dot(value: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """sum(value * grad) in at least fp32 (bf16 features under autocast; float64 stays float64)."""
    dtype = torch.promote_types(value.dtype, torch.float32)
    return (value.to(dtype) * grad.to(dtype)).sum()


def sync_gradients(model, enabled: bool) -> None:
    """FSDP2 reduce-scatters gradients after a backward only when enabled (the last micro-batch)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


def torch_rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_torch_rng_state(state, device: torch.device) -> None:
    cpu, accelerator = state
    torch.set_rng_state(cpu)
    if accelerator is not None:
        torch.cuda.set_rng_state(accelerator, device)
