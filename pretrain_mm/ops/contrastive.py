"""`contrastive_loss`: the CLIP (softmax) and SigLIP (sigmoid) losses, fused or reference."""

import logging

import torch

from pretrain_mm.ops import _extension, reference

KINDS = ("softmax", "sigmoid")
IMPLS = ("auto", "fused", "reference")

# auto never falls back to the reference loss above this batch: its two N x N fp32
# matrices (logits and their gradient) take 0.5 GiB at N = 8,192 and grow as N^2, so a
# missing build would otherwise surface as an out-of-memory error far from its cause.
REFERENCE_MAX_N = 8192

log = logging.getLogger("pretrain_mm.ops")
# (device type, resolved impl) pairs auto has announced: once per process, not per step.
_LOGGED: set[tuple[str, str]] = set()


def contrastive_loss(
    image_features, text_features, logit_scale, logit_bias=None, *, kind="softmax", impl="auto", workspace_bytes=None
):
    """The contrastive loss of N paired (image, text) feature rows.

    image_features, text_features: (N, D) tensors, row i of each forming a positive pair.
    logit_scale: the multiplier itself (a one-element tensor, as open_clip passes
        `logit_scale.exp()`), logits = logit_scale * image_features @ text_features.T.
    logit_bias: added to the logits; kind="sigmoid" only (None means 0).
    kind: "softmax" equals open_clip's ClipLoss (the mean of the two cross-entropies),
        "sigmoid" its SigLipLoss (-sum(logsigmoid(labels * logits)) / N).
    impl: "fused" the compiled op (never materialises the N x N logits), "reference" plain
        PyTorch (works in float64), "auto" the compiled op where it is built for the device,
        else the reference up to N = REFERENCE_MAX_N (see `resolve_impl`).
    workspace_bytes: the fused op's panel workspace (default 16 MiB).

    Gradients flow to both feature tensors, to logit_scale and to logit_bias. The value is
    float32 (float64 for float64 features) whatever the feature dtype.
    """
    _check_arguments(image_features, text_features, logit_scale, logit_bias, kind, impl)
    if not isinstance(logit_scale, torch.Tensor):
        logit_scale = torch.tensor(float(logit_scale), device=image_features.device)
    if kind == "sigmoid" and logit_bias is None:
        logit_bias = torch.zeros((), device=image_features.device)
    elif logit_bias is not None and not isinstance(logit_bias, torch.Tensor):
        logit_bias = torch.tensor(float(logit_bias), device=image_features.device)

    if resolve_impl(impl, image_features.device, image_features.shape[0]) == "reference":
        if kind == "softmax":
            return reference.softmax_loss(image_features, text_features, logit_scale)
        return reference.sigmoid_loss(image_features, text_features, logit_scale, logit_bias)

    n = image_features.shape[0]
    workspace = _extension.DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else int(workspace_bytes)
    if kind == "softmax":
        row_lse, col_lse, diag = torch.ops.pretrain_mm.softmax_forward(
            image_features, text_features, logit_scale, 0, workspace
        )
        return (row_lse.sum() + col_lse.sum() - 2 * diag.sum()) / (2 * n)
    row_loss = torch.ops.pretrain_mm.sigmoid_forward(
        image_features, text_features, logit_scale, logit_bias, 0, workspace
    )
    return row_loss.sum() / n


def resolve_impl(impl, device, n_total):
    """The path a contrastive loss over n_total pairs on `device` takes: "fused" or "reference".

    The one rule for `contrastive_loss` and `distributed_contrastive_loss` (n_total is then
    the global batch). "auto" takes the compiled op where it is built for the device (CPU
    whenever the extension loads, CUDA only when it was built with CUDA), else the reference
    loss, but only up to REFERENCE_MAX_N pairs; "fused" raises where the op is not built for
    the device; "reference" is always allowed.
    """
    device = torch.device(device)
    why_not = _why_not_fused(device)
    if impl == "fused" and why_not:
        raise ValueError(
            f"contrastive loss (loss.impl=fused): the fused op is unavailable: {why_not}; "
            f"rebuild with `pip install --no-build-isolation -e .`, or pass loss.impl=reference"
        )
    if impl != "auto":
        return impl
    resolved = "reference" if why_not else "fused"
    if resolved == "reference" and n_total > REFERENCE_MAX_N:
        gib = 2 * n_total * n_total * 4 / 2**30
        raise ValueError(
            f"contrastive loss (loss.impl=auto): the fused op is unavailable on {device.type} ({why_not}) "
            f"and the reference loss would materialise two {n_total} x {n_total} fp32 matrices "
            f"({gib:.2f} GiB; auto allows it up to N = {REFERENCE_MAX_N}); rebuild with "
            f"`pip install --no-build-isolation -e .`, or pass loss.impl=reference to accept the cost"
        )
    _log_once(device.type, resolved, why_not)
    return resolved


def _why_not_fused(device):
    """Why the compiled op cannot run on `device` ("" when it can)."""
    if not _extension.AVAILABLE:
        return f"the extension is not built ({_extension.LOAD_ERROR})"
    if device.type == "cpu":
        return ""
    if device.type == "cuda":
        return "" if _extension.CUDA_BUILT else "the extension was built without CUDA"
    return f"the extension has no kernels for {device.type}"


def _log_once(device_type, resolved, why_not):
    # torch.compile traces the caller: a logging call there would break a fullgraph trace.
    if torch.compiler.is_compiling() or (device_type, resolved) in _LOGGED:
        return
    _LOGGED.add((device_type, resolved))
    if resolved == "fused":
        log.info("contrastive loss: fused op on %s (auto)", device_type)
    else:
        log.info("contrastive loss: reference (O(N^2)) on %s because %s (auto)", device_type, why_not)


def _check_arguments(image, text, logit_scale, logit_bias, kind, impl):
    """ValueError, naming the shapes or dtypes, for anything the op cannot take."""
    if kind not in KINDS:
        raise ValueError(f"contrastive_loss: kind must be one of {KINDS}, got {kind!r}")
    if impl not in IMPLS:
        raise ValueError(f"contrastive_loss: impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(image, torch.Tensor) or not isinstance(text, torch.Tensor):
        raise ValueError("contrastive_loss: image_features and text_features must be tensors")
    if image.dim() != 2 or text.dim() != 2:
        raise ValueError(
            f"contrastive_loss: features must be 2-D (N, D); got image_features "
            f"{tuple(image.shape)} and text_features {tuple(text.shape)}"
        )
    if image.shape != text.shape:
        raise ValueError(
            f"contrastive_loss: image_features {tuple(image.shape)} and text_features "
            f"{tuple(text.shape)} must have the same (N, D)"
        )
    if image.shape[0] == 0:
        raise ValueError(f"contrastive_loss: empty batch (N = 0): image_features {tuple(image.shape)}")
    if image.dtype != text.dtype:
        raise ValueError(f"contrastive_loss: dtypes differ: image_features {image.dtype}, text_features {text.dtype}")
    if image.device != text.device:
        raise ValueError(
            f"contrastive_loss: devices differ: image_features on {image.device}, text_features on {text.device}"
        )
    for name, value in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"contrastive_loss: {name} must be a scalar (one element); got shape {tuple(value.shape)}"
                )
            if value.device != image.device:
                raise ValueError(f"contrastive_loss: {name} is on {value.device}, features on {image.device}")
    if kind == "softmax" and logit_bias is not None:
        raise ValueError("contrastive_loss: logit_bias is for kind='sigmoid'; the softmax loss has none")
