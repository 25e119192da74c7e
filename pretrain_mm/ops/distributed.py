"""The contrastive loss across data-parallel ranks: exact, with O(N) floats exchanged.

Each rank holds n image and n text rows of a global batch of N = world * n pairs. Text
rows are gathered with gradient (N x D); the fused op computes this rank's n x N block of
logits once, returning row log-sum-exps (complete), column log-sum-exps over this rank's
rows (partial) and the positive logits; the column partials are combined by a log-sum-exp
all-reduce of N floats. The result is the global loss on every rank.

Gradient convention (open_clip's, with gathered features): every rank backpropagates the
*global* loss, so each parameter's gradient on rank r is world_size times rank r's share;
the usual data-parallel averaging (DDP, FSDP) then yields exactly the gradient of one
process on the whole batch: the final sum over ranks passes back the sum of all ranks'
(equal) output gradients, and the gather passes back the sum of all ranks' gradients of
each rank's rows.
"""

import torch
import torch.distributed as dist

from pretrain_mm.ops import _extension
from pretrain_mm.ops.contrastive import _check_arguments, contrastive_loss, resolve_impl


class _GatherRows(torch.autograd.Function):
    """Every rank's rows, concatenated in rank order; backward: each rank gets the sum over
    ranks of the gradients of its own rows (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, rows, group):
        world = dist.get_world_size(group)
        out = rows.new_empty((world * rows.shape[0], *rows.shape[1:]))
        dist.all_gather_single(out, rows.contiguous(), group=group)
        ctx.group = group
        return out

    @staticmethod
    def backward(ctx, grad):
        mine = grad.new_empty((grad.shape[0] // dist.get_world_size(ctx.group), *grad.shape[1:]))
        dist.reduce_scatter_single(mine, grad.contiguous(), group=ctx.group)
        return mine, None


class _SumOverRanks(torch.autograd.Function):
    """The sum over ranks; backward: the sum over ranks of the output gradients."""

    @staticmethod
    def forward(ctx, value, group):
        total = value.detach().clone()
        dist.all_reduce(total, group=group)
        ctx.group = group
        return total

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


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


def distributed_contrastive_loss(
    image_features,
    text_features,
    logit_scale,
    logit_bias=None,
    *,
    kind="softmax",
    impl="auto",
    group=None,
    workspace_bytes=None,
):
    """The global contrastive loss of all ranks' pairs, on every rank (see the module doc).

    image_features, text_features: this rank's (n, D) rows; every rank must pass the same n
    (drop the last incomplete batch). With one process (or no process group) this is
    `contrastive_loss`. impl="reference" gathers both sides and lets every rank compute
    the whole N x N loss in plain PyTorch (open_clip's way; same value and gradients).
    impl is resolved by `resolve_impl` on the global N = world * n, as `contrastive_loss`
    resolves it on its N.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return contrastive_loss(
            image_features,
            text_features,
            logit_scale,
            logit_bias,
            kind=kind,
            impl=impl,
            workspace_bytes=workspace_bytes,
        )
    _check_arguments(image_features, text_features, logit_scale, logit_bias, kind, impl)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = image_features.shape[0]
    big_n, offset = world * n, rank * n
    # Resolved before any exchange, on the global N: every rank then refuses (or not) alike.
    resolved = resolve_impl(impl, image_features.device, big_n)
    all_text = _GatherRows.apply(text_features, group)
    if resolved == "reference":
        all_images = _GatherRows.apply(image_features, group)
        return contrastive_loss(all_images, all_text, logit_scale, logit_bias, kind=kind, impl="reference")
    if kind == "sigmoid" and logit_bias is None:
        logit_bias = torch.zeros((), device=image_features.device)
    workspace = _extension.DEFAULT_WORKSPACE_BYTES if workspace_bytes is None else int(workspace_bytes)

    if kind == "softmax":
        row_lse, col_partial, diag = torch.ops.pretrain_mm.softmax_forward(
            image_features, all_text, logit_scale, offset, workspace
        )
        col_lse = _LogSumExpAllReduce.apply(col_partial, group)
        # This rank's share: its rows' image->text terms and its columns' text->image terms.
        local = (row_lse.sum() + col_lse[offset : offset + n].sum() - 2 * diag.sum()) / (2 * big_n)
    else:
        row_loss = torch.ops.pretrain_mm.sigmoid_forward(
            image_features, all_text, logit_scale, logit_bias, offset, workspace
        )
        local = row_loss.sum() / big_n
    return _SumOverRanks.apply(local, group)


def gather_rows(rows: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's rows (n, ...) concatenated in rank order (world * n, ...), with the gradient convention
    of the module doc; the rows themselves with one process. Every rank must pass the same n."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return rows
    return _GatherRows.apply(rows, group)


def distributed_row_mean(rows: torch.Tensor, group=None) -> torch.Tensor:
    """The mean of a per-row loss (n,) over all ranks' rows, on every rank, with the gradient
    convention of the module doc (every rank backpropagates the global value). Every rank must
    pass the same n."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return rows.mean()
    return _SumOverRanks.apply(rows.sum(), group) / (dist.get_world_size(group) * rows.shape[0])


def distributed_token_mean(row_sums: torch.Tensor, total_tokens: torch.Tensor, group=None) -> torch.Tensor:
    """sum over all ranks of row_sums (n,) / total_tokens: a token-level loss (per-row sums of token losses)
    as the mean over every token of the global batch, on every rank, with the gradient convention of the
    module doc. total_tokens is the global count (token_total); gradient accumulation passes the whole
    batch's with one micro-batch's rows, so the micro-batches' terms add up to the batch's loss."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return row_sums.sum() / total_tokens.to(row_sums.dtype)
    return _SumOverRanks.apply(row_sums.sum(), group) / total_tokens.to(row_sums.dtype)


def token_total(row_counts: torch.Tensor, group=None) -> torch.Tensor:
    """The number of tokens over all ranks' rows (n,) of token counts, as a float scalar without gradient."""
    total = row_counts.detach().sum().to(torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(total, group=group)
    return total.clamp(min=1.0)
