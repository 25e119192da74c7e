"""The contrastive loss across data-parallel ranks: exact, with O(N) floats exchanged.

Each rank holds n image and n text rows of a global batch of N = world * n pairs. Text
rows are gathered with gradient (N x D); the fused op computes this rank's n x N block of
logits once, returning row log-sum-exps (complete), column log-sum-exps over this rank's
rows (partial) and the positive logits; the column partials are combined by a log-sum-exp
all-reduce of N floats. The result is the global loss on every rank.

Gradient convention (open_clip's, with gathered features): every rank backpropagates the
*global* loss, so each parameter's gradient on rank r is world_size times rank r's share;
the usual data-parallel averaging (DDP, FSDP) then yields exactly the gradient of one
process on the whole batch. `torch.distributed.nn.functional.all_reduce` implements this:
its backward sums the (equal) output gradients of all ranks.
"""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from pretrain_mm.ops import _extension
from pretrain_mm.ops.contrastive import _check_arguments, contrastive_loss


class _LogSumExpAllReduce(torch.autograd.Function):
    """c = log(sum over ranks of exp(c_rank)), elementwise; the backward of every rank's
    share is the summed upstream gradient times softmax weight exp(c_rank - c)."""

    @staticmethod
    def forward(ctx, partial, group):
        top = partial.detach().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        # A column no rank saw (-inf everywhere) stays -inf instead of becoming NaN.
        top = torch.where(torch.isinf(top) & (top < 0), torch.zeros_like(top), top)
        total = (partial.detach() - top).exp()
        dist.all_reduce(total, group=group)
        result = total.log_() + top
        ctx.save_for_backward(partial, result)
        ctx.group = group
        return result

    @staticmethod
    def backward(ctx, grad):
        partial, result = ctx.saved_tensors
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad * (partial - result).exp(), None


def distributed_contrastive_loss(image_features, text_features, logit_scale, logit_bias=None, *,
                                 kind="softmax", group=None, workspace_bytes=None):
    """The global contrastive loss of all ranks' pairs, on every rank (see the module doc).

    image_features, text_features: this rank's (n, D) rows; every rank must pass the same n
    (drop the last incomplete batch). With one process (or no process group) this is
    `contrastive_loss`. The fused op is used where it is built, else the reference.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return contrastive_loss(image_features, text_features, logit_scale, logit_bias, kind=kind,
                                workspace_bytes=workspace_bytes)
    _check_arguments(image_features, text_features, logit_scale, logit_bias, kind, "auto")
    if not _extension.AVAILABLE:
        raise RuntimeError(f"distributed_contrastive_loss needs the compiled ops: {_extension.LOAD_ERROR}")
    if kind == "sigmoid" and logit_bias is None:
        logit_bias = torch.zeros((), device=image_features.device)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = image_features.shape[0]
    all_text = torch.cat(dist_fn.all_gather(text_features.contiguous(), group=group), dim=0)
    big_n, offset = world * n, rank * n
    workspace = _extension.DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else int(workspace_bytes)

    if kind == "softmax":
        row_lse, col_partial, diag = torch.ops.pretrain_mm.softmax_forward(
            image_features, all_text, logit_scale, offset, workspace)
        col_lse = _LogSumExpAllReduce.apply(col_partial, group)
        # This rank's share: its rows' image->text terms and its columns' text->image terms.
        local = (row_lse.sum() + col_lse[offset:offset + n].sum() - 2 * diag.sum()) / (2 * big_n)
    else:
        row_loss = torch.ops.pretrain_mm.sigmoid_forward(
            image_features, all_text, logit_scale, logit_bias, offset, workspace)
        local = row_loss.sum() / big_n
    return dist_fn.all_reduce(local, group=group)
