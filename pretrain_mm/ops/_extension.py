"""Loads the compiled ops (`pretrain_mm._C`) and gives them fake kernels and autograd.

The C++ ops return per-row / per-column statistics rather than a loss, so that one
kernel serves one process and many (a rank passes its rows with their global offset).
Their backward formulas are registered here with `torch.library.register_autograd`, and
their shapes with `register_fake`, so they work under `torch.compile(fullgraph=True)`.
"""

import torch

try:
    import pretrain_mm._C  # noqa: F401  (importing registers torch.ops.pretrain_mm.*)

    LOAD_ERROR = None
except ImportError as error:  # not built: `pip install --no-build-isolation -e .`
    LOAD_ERROR = error

AVAILABLE = LOAD_ERROR is None

# The panel workspace: 16 MiB keeps N = 65,536 far under 1 GiB beyond the inputs while
# panels stay wide enough (256 full rows at N = 16,384) for matmuls to run at full speed.
DEFAULT_WORKSPACE_BYTES = 16 << 20


# What the build contains, e.g. "cpu=AVX512 cuda=0" (read once: torch.compile traces callers).
BUILD_INFO = torch.ops.pretrain_mm.build_info() if AVAILABLE else "not built"
CUDA_BUILT = "cuda=1" in BUILD_INFO


def _stat_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _or_zeros(grad, n, like):
    return torch.zeros(n, dtype=like.dtype, device=like.device) if grad is None else grad


if AVAILABLE:
    ops = torch.ops.pretrain_mm

    @torch.library.register_fake("pretrain_mm::softmax_forward")
    def _softmax_forward_fake(q, k, scale, offset, workspace_bytes):
        dtype = _stat_dtype(q)
        return (
            q.new_empty(q.shape[0], dtype=dtype),
            q.new_empty(k.shape[0], dtype=dtype),
            q.new_empty(q.shape[0], dtype=dtype),
        )

    @torch.library.register_fake("pretrain_mm::softmax_backward")
    def _softmax_backward_fake(q, k, scale, row_lse, col_lse, g_row, g_col, g_diag, offset, workspace_bytes):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(scale)

    @torch.library.register_fake("pretrain_mm::sigmoid_forward")
    def _sigmoid_forward_fake(q, k, scale, bias, offset, workspace_bytes):
        return q.new_empty(q.shape[0], dtype=_stat_dtype(q))

    @torch.library.register_fake("pretrain_mm::sigmoid_backward")
    def _sigmoid_backward_fake(q, k, scale, bias, g_row, offset, workspace_bytes):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(scale), torch.empty_like(bias)

    def _softmax_setup(ctx, inputs, output):
        q, k, scale, offset, workspace_bytes = inputs
        row_lse, col_lse, _ = output
        ctx.save_for_backward(q, k, scale, row_lse, col_lse)
        ctx.offset, ctx.workspace_bytes = offset, workspace_bytes

    def _softmax_backward(ctx, g_row, g_col, g_diag):
        q, k, scale, row_lse, col_lse = ctx.saved_tensors
        n, big_n = q.shape[0], k.shape[0]
        dq, dk, dscale = ops.softmax_backward(
            q,
            k,
            scale,
            row_lse,
            col_lse,
            _or_zeros(g_row, n, row_lse),
            _or_zeros(g_col, big_n, col_lse),
            _or_zeros(g_diag, n, row_lse),
            ctx.offset,
            ctx.workspace_bytes,
        )
        return dq, dk, dscale, None, None

    def _sigmoid_setup(ctx, inputs, output):
        q, k, scale, bias, offset, workspace_bytes = inputs
        ctx.save_for_backward(q, k, scale, bias)
        ctx.offset, ctx.workspace_bytes = offset, workspace_bytes

    def _sigmoid_backward(ctx, g_row):
        q, k, scale, bias = ctx.saved_tensors
        dq, dk, dscale, dbias = ops.sigmoid_backward(q, k, scale, bias, g_row, ctx.offset, ctx.workspace_bytes)
        return dq, dk, dscale, dbias, None, None

    torch.library.register_autograd("pretrain_mm::softmax_forward", _softmax_backward, setup_context=_softmax_setup)
    torch.library.register_autograd("pretrain_mm::sigmoid_forward", _sigmoid_backward, setup_context=_sigmoid_setup)
