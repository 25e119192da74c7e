// The fused contrastive-loss ops: a device-agnostic orchestrator that walks the logit
// matrix in workspace-sized panels, and their registration as torch custom ops.
//
// Per panel: a matmul forms the raw products p = Q_rows . K_cols^T; a panel kernel (cpu/ or
// cuda/) does the fused element-wise work. Backward recomputes each panel, turns it into
// s * dLoss/dlogit in place, and feeds it to two more matmuls: dQ_rows += G . K_cols and
// dK_cols += G^T . Q_rows. Nothing of size n x N is ever held; memory is O((n + N) * D)
// plus one panel. The matmuls are ATen's (MKL on CPU, cuBLAS on GPU) in the compute dtype,
// except on CPUs where another way is faster: our AVX2 tiles for fp32 (cpu/tiled_gemm.h),
// oneDNN's brgemm for fp32 on AVX-512 and for bf16 with native bf16 products, accumulated
// in fp32 (cpu/brgemm.h; see Products).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>

#include "panel.h"
#include "products.h"

#ifdef PRETRAIN_MM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace pretrain_mm {
namespace {

using at::Tensor;

// ---- input checks (the Python API checks first, with the same words) -----------------

void check_features(const Tensor& q, const Tensor& k, int64_t offset) {
  TORCH_CHECK_VALUE(q.dim() == 2 && k.dim() == 2, "contrastive loss: features must be 2-D (rows, dim); got image ",
                    q.sizes(), " and text ", k.sizes());
  TORCH_CHECK_VALUE(q.size(1) == k.size(1), "contrastive loss: feature dims differ: image ", q.sizes(), " vs text ",
                    k.sizes());
  TORCH_CHECK_VALUE(q.size(0) > 0 && k.size(0) > 0, "contrastive loss: empty batch: image ", q.sizes(), ", text ",
                    k.sizes());
  TORCH_CHECK_VALUE(q.scalar_type() == k.scalar_type(), "contrastive loss: dtypes differ: image ", q.scalar_type(),
                    " vs text ", k.scalar_type());
  TORCH_CHECK_VALUE(q.device() == k.device(), "contrastive loss: devices differ: image on ", q.device(), ", text on ",
                    k.device());
  const auto dt = q.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
                    "contrastive loss: unsupported dtype ", dt, " (use float32, float64, bfloat16 or float16)");
  TORCH_CHECK_VALUE(offset >= 0 && offset + q.size(0) <= k.size(0), "contrastive loss: rows [", offset, ", ",
                    offset + q.size(0), ") of the image batch do not fit the ", k.size(0), " text rows");
}

void check_scalar(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK_VALUE(t.numel() == 1, "contrastive loss: ", name, " must hold one value; got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == like.device(), "contrastive loss: ", name, " is on ", t.device(),
                    " but the features are on ", like.device());
}

// float64 inputs are computed in float64; every other dtype in float32.
at::ScalarType compute_dtype(const Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Inputs in `dtype`, contiguous. Half-precision features are widened to the compute dtype
// once here — O((n + N) * D) — so that every panel product and gradient matmul accumulates
// and ends in float32 (rounding a logit to bf16 would cost ~0.4 at scale 100); bf16 features
// stay bf16 where brgemm multiplies them with fp32 results (Gemm::kBf16).
Tensor prepare(const Tensor& t, at::ScalarType dtype) { return t.to(dtype).contiguous(); }

Tensor scalar_arg(const Tensor& t, at::ScalarType dtype) { return t.to(dtype).reshape({1}).contiguous(); }

// The inputs every op takes, checked and converted: scalars (and everything the panel
// kernels read) to the compute dtype `dtype`, features to it too unless Gemm::kBf16, when
// they stay bf16. `bias` is undefined for the softmax ops.
struct Inputs : Operands {
  Tensor scale, bias;

  Inputs(const Tensor& q_in, const Tensor& k_in, const Tensor& scale_in, const Tensor* bias_in, int64_t offset) {
    check_features(q_in, k_in, offset);
    check_scalar(scale_in, q_in, "logit_scale");
    if (bias_in != nullptr) check_scalar(*bias_in, q_in, "logit_bias");
    dtype = compute_dtype(q_in);
    gemm = choose_gemm(q_in);
    q = prepare(q_in, gemm == Gemm::kBf16 ? at::kBFloat16 : dtype);
    k = prepare(k_in, gemm == Gemm::kBf16 ? at::kBFloat16 : dtype);
    scale = scalar_arg(scale_in, dtype);
    if (bias_in != nullptr) bias = scalar_arg(*bias_in, dtype);
  }

  // A per-row or per-column vector argument (statistics, upstream gradients).
  Tensor vector(const Tensor& t, int64_t len, const char* op, const char* name) const {
    TORCH_CHECK_VALUE(t.numel() == len, op, ": ", name, " must have ", len, " values, got ", t.sizes());
    return prepare(t.reshape({len}), dtype);
  }

  template <typename T>
  const T* bias_ptr() const {
    return bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  }
};

// ---- the panel walk -----------------------------------------------------------------

// Calls visit(panel_tensor, row0, col0) for every panel, with the panel's raw products.
template <typename F>
void walk_panels(const Inputs& in, const Products& products, int64_t workspace_bytes, const F& visit) {
  const int64_t n = in.q.size(0), N = in.k.size(0);
  TORCH_CHECK_VALUE(workspace_bytes > 0, "contrastive loss: workspace_bytes must be positive, got ", workspace_bytes);
  // The ops' derivatives are registered separately (ops/_extension.py); inside, nothing is
  // recorded, and mm_out would refuse inputs that require grad.
  const at::NoGradGuard no_grad;
  const PanelPlan plan = products.plan(workspace_bytes);
  Tensor workspace = at::empty({plan.rows * products.panel_ld(plan.cols)}, in.q.options().dtype(in.dtype));
  for (int64_t r0 = 0; r0 < n; r0 += plan.rows) {
    const int64_t rows = std::min(plan.rows, n - r0);
    for (int64_t c0 = 0; c0 < N; c0 += plan.cols) {
      const int64_t cols = std::min(plan.cols, N - c0), ld = products.panel_ld(cols);
      Tensor panel = workspace.narrow(0, 0, rows * ld).view({rows, ld}).narrow(1, 0, cols);
      products.panel(panel, r0, c0);
      visit(panel, r0, c0);
    }
  }
}

template <typename T>
Panel<T> make_panel(const Tensor& panel, int64_t r0, int64_t c0, int64_t offset, const Tensor& scale, const T* bias) {
  return {panel.data_ptr<T>(),       panel.size(0), panel.size(1), panel.stride(0), r0, c0, offset,
          scale.const_data_ptr<T>(), bias};
}

// Runs the panel kernel for `state` on the device of `like`.
template <typename T, typename State>
void run_kernel(const Tensor& like, const Panel<T>& p, const State& state) {
#ifdef PRETRAIN_MM_WITH_CUDA
  if (like.is_cuda()) {
    // Launch on the device of the tensors' stream, which need not be the current device.
    const c10::cuda::CUDAGuard device_guard(like.device());
    void* stream = at::cuda::getCurrentCUDAStream(like.device().index()).stream();
    if constexpr (std::is_same_v<State, SoftmaxForwardState<T>>) cuda::softmax_forward_panel(p, state, stream);
    if constexpr (std::is_same_v<State, SoftmaxBackwardState<T>>) cuda::softmax_backward_panel(p, state, stream);
    if constexpr (std::is_same_v<State, SigmoidForwardState<T>>) cuda::sigmoid_forward_panel(p, state, stream);
    if constexpr (std::is_same_v<State, SigmoidBackwardState<T>>) cuda::sigmoid_backward_panel(p, state, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();  // a failed launch (e.g. no kernel image for this GPU)
    return;
  }
#endif
  TORCH_CHECK(like.is_cpu(), "pretrain_mm was built without CUDA; got a tensor on ", like.device());
  const auto& k = cpu::kernels<T>();
  if constexpr (std::is_same_v<State, SoftmaxForwardState<T>>) k.softmax_forward(p, state);
  if constexpr (std::is_same_v<State, SoftmaxBackwardState<T>>) k.softmax_backward(p, state);
  if constexpr (std::is_same_v<State, SigmoidForwardState<T>>) k.sigmoid_forward(p, state);
  if constexpr (std::is_same_v<State, SigmoidBackwardState<T>>) k.sigmoid_backward(p, state);
}

// ---- the ops ------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> softmax_forward(const Tensor& q_in, const Tensor& k_in, const Tensor& scale_in,
                                                   int64_t offset, int64_t workspace_bytes) {
  const Inputs in(q_in, k_in, scale_in, nullptr, offset);
  const int64_t n = in.q.size(0), N = in.k.size(0);
  const auto opts = in.scale.options();
  const double ninf = -std::numeric_limits<double>::infinity();
  Tensor row_max = at::full({n}, ninf, opts), row_sum = at::zeros({n}, opts);
  Tensor col_max = at::full({N}, ninf, opts), col_sum = at::zeros({N}, opts);
  Tensor diag = at::empty({n}, opts);
  AT_DISPATCH_FLOATING_TYPES(in.dtype, "softmax_forward", [&] {
    const SoftmaxForwardState<scalar_t> state{row_max.data_ptr<scalar_t>(), row_sum.data_ptr<scalar_t>(),
                                              col_max.data_ptr<scalar_t>(), col_sum.data_ptr<scalar_t>(),
                                              diag.data_ptr<scalar_t>()};
    walk_panels(in, Products(in, false), workspace_bytes, [&](const Tensor& panel, int64_t r0, int64_t c0) {
      run_kernel(in.q, make_panel<scalar_t>(panel, r0, c0, offset, in.scale, nullptr), state);
    });
  });
  return {row_sum.log_().add_(row_max), col_sum.log_().add_(col_max), diag};
}

std::tuple<Tensor, Tensor, Tensor> softmax_backward(const Tensor& q_in, const Tensor& k_in, const Tensor& scale_in,
                                                    const Tensor& row_lse_in, const Tensor& col_lse_in,
                                                    const Tensor& g_row_in, const Tensor& g_col_in,
                                                    const Tensor& g_diag_in, int64_t offset, int64_t workspace_bytes) {
  const Inputs in(q_in, k_in, scale_in, nullptr, offset);
  const int64_t n = in.q.size(0), N = in.k.size(0);
  const char* op = "softmax_backward";
  const Tensor row_lse = in.vector(row_lse_in, n, op, "row_lse"), col_lse = in.vector(col_lse_in, N, op, "col_lse");
  const Tensor g_row = in.vector(g_row_in, n, op, "grad_row"), g_col = in.vector(g_col_in, N, op, "grad_col");
  const Tensor g_diag = in.vector(g_diag_in, n, op, "grad_diag");
  Products products(in, true);
  Tensor dscale = at::zeros({1}, in.scale.options());
  AT_DISPATCH_FLOATING_TYPES(in.dtype, "softmax_backward", [&] {
    const SoftmaxBackwardState<scalar_t> state{row_lse.const_data_ptr<scalar_t>(), col_lse.const_data_ptr<scalar_t>(),
                                               g_row.const_data_ptr<scalar_t>(),   g_col.const_data_ptr<scalar_t>(),
                                               g_diag.const_data_ptr<scalar_t>(),  dscale.data_ptr<scalar_t>()};
    walk_panels(in, products, workspace_bytes, [&](const Tensor& panel, int64_t r0, int64_t c0) {
      run_kernel(in.q, make_panel<scalar_t>(panel, r0, c0, offset, in.scale, nullptr), state);
      products.accumulate_grads(panel, r0, c0);
    });
  });
  return {products.dq(q_in.scalar_type()), products.dk(k_in.scalar_type()),
          dscale.reshape(scale_in.sizes()).to(scale_in.scalar_type())};
}

Tensor sigmoid_forward(const Tensor& q_in, const Tensor& k_in, const Tensor& scale_in, const Tensor& bias_in,
                       int64_t offset, int64_t workspace_bytes) {
  const Inputs in(q_in, k_in, scale_in, &bias_in, offset);
  Tensor row_loss = at::zeros({in.q.size(0)}, in.scale.options());
  AT_DISPATCH_FLOATING_TYPES(in.dtype, "sigmoid_forward", [&] {
    const SigmoidForwardState<scalar_t> state{row_loss.data_ptr<scalar_t>()};
    walk_panels(in, Products(in, false), workspace_bytes, [&](const Tensor& panel, int64_t r0, int64_t c0) {
      run_kernel(in.q, make_panel<scalar_t>(panel, r0, c0, offset, in.scale, in.bias_ptr<scalar_t>()), state);
    });
  });
  return row_loss;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> sigmoid_backward(const Tensor& q_in, const Tensor& k_in,
                                                            const Tensor& scale_in, const Tensor& bias_in,
                                                            const Tensor& g_row_in, int64_t offset,
                                                            int64_t workspace_bytes) {
  const Inputs in(q_in, k_in, scale_in, &bias_in, offset);
  const Tensor g_row = in.vector(g_row_in, in.q.size(0), "sigmoid_backward", "grad_row");
  Products products(in, true);
  Tensor dscale = at::zeros({1}, in.scale.options()), dbias = at::zeros({1}, in.scale.options());
  AT_DISPATCH_FLOATING_TYPES(in.dtype, "sigmoid_backward", [&] {
    const SigmoidBackwardState<scalar_t> state{g_row.const_data_ptr<scalar_t>(), dscale.data_ptr<scalar_t>(),
                                               dbias.data_ptr<scalar_t>()};
    walk_panels(in, products, workspace_bytes, [&](const Tensor& panel, int64_t r0, int64_t c0) {
      run_kernel(in.q, make_panel<scalar_t>(panel, r0, c0, offset, in.scale, in.bias_ptr<scalar_t>()), state);
      products.accumulate_grads(panel, r0, c0);
    });
  });
  return {products.dq(q_in.scalar_type()), products.dk(k_in.scalar_type()),
          dscale.reshape(scale_in.sizes()).to(scale_in.scalar_type()),
          dbias.reshape(bias_in.sizes()).to(bias_in.scalar_type())};
}

std::string build_info() {
  std::string info = "cpu=";
  info += cpu::kernels<float>().capability;
#ifdef PRETRAIN_MM_WITH_CUDA
  info += " cuda=1";
#else
  info += " cuda=0";
#endif
  // How fp32 and bf16 inputs on the CPU are multiplied now (Products; widened bf16 as fp32).
  info += std::string(" fp32=") + gemm_name(fp32_gemm());
  info += bg::bf16_available() ? " bf16=brgemm" : " bf16=widen";
  return info;
}

}  // namespace

TORCH_LIBRARY(pretrain_mm, m) {
  m.def(
      "softmax_forward(Tensor q, Tensor k, Tensor scale, int offset, int workspace_bytes)"
      " -> (Tensor row_lse, Tensor col_lse, Tensor diag)");
  m.def(
      "softmax_backward(Tensor q, Tensor k, Tensor scale, Tensor row_lse, Tensor col_lse, Tensor grad_row,"
      " Tensor grad_col, Tensor grad_diag, int offset, int workspace_bytes) -> (Tensor dq, Tensor dk, Tensor dscale)");
  m.def(
      "sigmoid_forward(Tensor q, Tensor k, Tensor scale, Tensor bias, int offset, int workspace_bytes)"
      " -> Tensor row_loss");
  m.def(
      "sigmoid_backward(Tensor q, Tensor k, Tensor scale, Tensor bias, Tensor grad_row, int offset,"
      " int workspace_bytes) -> (Tensor dq, Tensor dk, Tensor dscale, Tensor dbias)");
  m.def("build_info() -> str", &build_info);
}

TORCH_LIBRARY_IMPL(pretrain_mm, CPU, m) {
  m.impl("softmax_forward", &softmax_forward);
  m.impl("softmax_backward", &softmax_backward);
  m.impl("sigmoid_forward", &sigmoid_forward);
  m.impl("sigmoid_backward", &sigmoid_backward);
}

#ifdef PRETRAIN_MM_WITH_CUDA
TORCH_LIBRARY_IMPL(pretrain_mm, CUDA, m) {
  m.impl("softmax_forward", &softmax_forward);
  m.impl("softmax_backward", &softmax_backward);
  m.impl("sigmoid_forward", &sigmoid_forward);
  m.impl("sigmoid_backward", &sigmoid_backward);
}
#endif

}  // namespace pretrain_mm
