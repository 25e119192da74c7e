// The fused contrastive-loss ops: a device-agnostic orchestrator that walks the logit
// matrix in workspace-sized panels, and their registration as torch custom ops.
//
// Per panel: a matmul forms the raw products p = Q_rows . K_cols^T; a panel kernel (cpu/ or
// cuda/) does the fused element-wise work. Backward recomputes each panel, turns it into
// s * dLoss/dlogit in place, and feeds it to two more matmuls: dQ_rows += G . K_cols and
// dK_cols += G^T . Q_rows. Nothing of size n x N is ever held; memory is O((n + N) * D)
// plus one panel. The matmuls are ATen's (MKL on CPU, cuBLAS on GPU) in the compute dtype,
// except on CPUs where oneDNN's brgemm is faster: fp32 inputs on AVX-512, and bf16 inputs
// with native bf16 products, accumulated in fp32 (cpu/brgemm.h; see Products).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>

#include "cpu/brgemm.h"
#include "panel.h"

#ifdef PRETRAIN_MM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace pretrain_mm {
namespace {

using at::Tensor;
namespace bg = cpu::brgemm;

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
  TORCH_CHECK_VALUE(q.device() == k.device(), "contrastive loss: devices differ: image on ", q.device(),
                    ", text on ", k.device());
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
at::ScalarType compute_dtype(const Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Inputs in `dtype`, contiguous. Half-precision features are widened to the compute dtype
// once here — O((n + N) * D) — so that every panel product and gradient matmul accumulates
// and ends in float32 (rounding a logit to bf16 would cost ~0.4 at scale 100); bf16 features
// stay bf16 where brgemm multiplies them with fp32 results (Gemm::kBf16).
Tensor prepare(const Tensor& t, at::ScalarType dtype) { return t.to(dtype).contiguous(); }

Tensor scalar_arg(const Tensor& t, at::ScalarType dtype) { return t.to(dtype).reshape({1}).contiguous(); }

// How the panel and gradient products are made (Products): ATen's matmul, or brgemm for
// fp32 inputs or bf16 ones on a CPU where it is faster (cpu/brgemm.h).
enum class Gemm { kAten, kF32, kBf16 };

Gemm choose_gemm(const Tensor& q) {
  if (!q.is_cpu()) return Gemm::kAten;
  if (q.scalar_type() == at::kBFloat16 && bg::bf16_available()) return Gemm::kBf16;
  if (q.scalar_type() == at::kFloat && bg::f32_available()) return Gemm::kF32;
  return Gemm::kAten;
}

// The inputs every op takes, checked and converted: scalars (and everything the panel
// kernels read) to the compute dtype `dtype`, features to it too unless Gemm::kBf16, when
// they stay bf16. `bias` is undefined for the softmax ops.
struct Inputs {
  at::ScalarType dtype;
  Gemm gemm;  // how the products are made (Products)
  Tensor q, k, scale, bias;

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
  const T* bias_ptr() const { return bias.defined() ? bias.const_data_ptr<T>() : nullptr; }
};

// ---- the panel walk -----------------------------------------------------------------

struct PanelPlan {
  int64_t rows, cols;
};

// Full-width panels when the budget allows at least kMinRows rows of them (row statistics
// are then complete per panel and matmuls stay large); narrower ones otherwise. `elem_bytes`
// is what one panel element costs; rows and columns of partial panels are multiples of
// `align` (whence panels of up to align x align elements even below the budget).
PanelPlan plan_panels(int64_t n, int64_t N, int64_t budget_bytes, int64_t elem_bytes, int64_t align) {
  constexpr int64_t kMinRows = 16;
  const int64_t elems = std::max<int64_t>(budget_bytes / elem_bytes, 1);
  const auto fit = [align](int64_t want, int64_t all) {
    return want >= all ? all : std::max(align, want / align * align);
  };
  const int64_t cols = fit(std::max<int64_t>(elems / kMinRows, 1), N);
  const int64_t rows = fit(std::max<int64_t>(elems / cols, 1), n);
  return {rows, cols};
}

// The matrix products of one op call: the panels p = Q_rows . K_cols^T and, in a backward,
// the gradient products into dQ and dK, which it owns (fp32 for bf16/fp16 inputs). Three ways:
//
// - ATen's matmul in the compute dtype: every device and dtype (half-precision inputs
//   widened to fp32 by Inputs);
// - fp32 brgemm (Inputs::gemm == Gemm::kF32, cpu/brgemm.h): the same fp32 products, by
//   oneDNN's AVX-512 kernels (about 2x MKL's on AMD). K^T is copied once per call (panels
//   read it as brgemm's row-major B); dQ_rows += G . K_cols reads G and K as they are, and
//   dK_cols += G^T . Q_rows copies G^T a tile at a time.
// - bf16 brgemm (Gemm::kBf16): bf16 products accumulated in fp32, the panel written in
//   fp32, so the logits and every statistic are as exact as the widened way's. The operands
//   are packed once per call: K^T (panels), and in a backward K (for dQ += G . K_cols) and
//   Q^T (for dK^T += Q_rows^T . G: G is packed along its rows, which reads it in order,
//   rather than transposed). G itself is rounded to bf16, the one rounding the widened way
//   has not (relative 2^-9 per term, as the bf16 gradients' own). Odd sizes are zero-padded
//   to the even K that VNNI pairs need, and partial panels start at even rows and columns,
//   so that they start on a pair.
class Products {
 public:
  Products(const Inputs& in, bool backward) : in_(in), backward_(backward) {
    const at::NoGradGuard no_grad;
    const int64_t n = in.q.size(0), N = in.k.size(0), D = in.q.size(1);
    const auto acc = in.q.options().dtype(in.dtype);
    if (in.gemm != Gemm::kBf16) {
      if (in.gemm == Gemm::kF32) {
        k_t_ = at::empty({D, bg::padded_ld(N, 4)}, in.k.options());
        k_t_.narrow(1, 0, N).copy_(in.k.t());
      }
      if (backward) dq_ = at::zeros({n, D}, acc), dk_ = at::zeros({N, D}, acc);
      return;
    }
    const int64_t Dp = bg::round_up_even(D);
    q_ = D == Dp ? in.q : at::constant_pad_nd(in.q, {0, 1});
    k_t_ = at::empty({Dp / 2, bg::padded_ld(N, 4), 2}, in.k.options());
    bg::pack_vnni_transposed(D, N, ptr(in.k), D, ptr(k_t_), k_t_.size(1));
    if (!backward) return;
    k_v_ = at::empty({(N + 1) / 2, bg::padded_ld(D, 4), 2}, in.k.options());
    bg::pack_vnni(N, D, ptr(in.k), D, ptr(k_v_), k_v_.size(1));
    q_t_ = at::zeros({D, bg::padded_ld(bg::round_up_even(n), 2)}, in.q.options());
    q_t_.narrow(1, 0, n).copy_(in.q.t());
    dq_ = at::zeros({n, bg::padded_ld(D, 4)}, acc).narrow(1, 0, D);
    dk_ = at::zeros({D, bg::padded_ld(N, 4)}, acc).narrow(1, 0, N);  // dK^T
  }

  // Panels within the budget, counting what one panel element costs (in a bf16 backward,
  // G's two bf16 copies too).
  PanelPlan plan(int64_t workspace_bytes) const {
    const int64_t n = in_.q.size(0), N = in_.k.size(0), panel_bytes = c10::elementSize(in_.dtype);
    if (in_.gemm != Gemm::kBf16) return plan_panels(n, N, workspace_bytes, panel_bytes, 1);
    return plan_panels(n, N, workspace_bytes, panel_bytes + (backward_ ? 4 : 0), 2);
  }

  // The row stride of a panel of `cols` columns in the workspace.
  int64_t panel_ld(int64_t cols) const { return in_.gemm == Gemm::kAten ? cols : bg::padded_ld(cols, 4); }

  // panel (rows x cols, compute dtype, row stride panel_ld) = Q[r0 : r0 + rows] . K[c0 : c0 + cols]^T
  void panel(Tensor& panel, int64_t r0, int64_t c0) const {
    const int64_t rows = panel.size(0), cols = panel.size(1), D = in_.q.size(1);
    float* out = in_.gemm == Gemm::kAten ? nullptr : panel.data_ptr<float>();
    switch (in_.gemm) {
      case Gemm::kAten:
        at::mm_out(panel, in_.q.narrow(0, r0, rows), in_.k.narrow(0, c0, cols).t());
        return;
      case Gemm::kF32:
        bg::gemm(rows, cols, D, f32(in_.q) + r0 * D, D, false, f32(k_t_) + c0, k_t_.size(1), out, panel.stride(0),
                 false);
        return;
      case Gemm::kBf16:
        bg::gemm(rows, cols, q_.size(1), ptr(q_) + r0 * q_.size(1), q_.size(1), ptr(k_t_) + 2 * c0, k_t_.size(1), out,
                 panel.stride(0), false);
        return;
    }
  }

  // Adds the gradient panel g (s * dLoss/dlogit at rows r0.., columns c0..) into dQ and dK.
  void accumulate_grads(const Tensor& g, int64_t r0, int64_t c0) {
    const int64_t rows = g.size(0), cols = g.size(1), D = in_.q.size(1);
    if (in_.gemm == Gemm::kAten) {
      dq_.narrow(0, r0, rows).addmm_(g, in_.k.narrow(0, c0, cols));
      dk_.narrow(0, c0, cols).addmm_(g.t(), in_.q.narrow(0, r0, rows));
      return;
    }
    if (in_.gemm == Gemm::kF32) {
      const float* gp = g.const_data_ptr<float>();
      bg::gemm(rows, D, cols, gp, g.stride(0), false, f32(in_.k) + c0 * D, D, f32(dq_) + r0 * D, D, true);
      bg::gemm(cols, D, rows, gp, g.stride(0), true, f32(in_.q) + r0 * D, D, f32(dk_) + c0 * D, D, true);
      return;
    }
    // G in bf16 with an even row length (a zero column after an odd one), and G packed.
    const int64_t ld_g = bg::padded_ld(bg::round_up_even(cols), 2), ld_gv = bg::padded_ld(cols, 4);
    const int64_t rows_p = bg::round_up_even(rows);
    if (g_.numel() < rows * ld_g) g_ = at::empty({rows * ld_g}, in_.q.options());
    if (g_v_.numel() < rows_p * ld_gv) g_v_ = at::empty({rows_p * ld_gv}, in_.q.options());
    const Tensor g_bf = g_.narrow(0, 0, rows * ld_g).view({rows, ld_g});
    g_bf.narrow(1, 0, cols).copy_(g);
    if (cols % 2 == 1) g_bf.narrow(1, cols, 1).zero_();
    bg::pack_vnni(rows, cols, ptr(g_bf), ld_g, ptr(g_v_), ld_gv);
    // dQ_rows += G . K_cols;  dK_cols^T += Q_rows^T . G
    bg::gemm(rows, D, bg::round_up_even(cols), ptr(g_bf), ld_g, ptr(k_v_) + c0 * k_v_.size(1), k_v_.size(1),
             f32(dq_) + r0 * dq_.stride(0), dq_.stride(0), true);
    bg::gemm(D, cols, rows_p, ptr(q_t_) + r0, q_t_.size(1), ptr(g_v_), ld_gv, f32(dk_) + c0, dk_.stride(0), true);
  }

  // The gradients, in the inputs' dtypes.
  Tensor dq(at::ScalarType dtype) const { return dq_.contiguous().to(dtype); }
  Tensor dk(at::ScalarType dtype) const {
    return (in_.gemm == Gemm::kBf16 ? dk_.t() : dk_).contiguous().to(dtype);
  }

 private:
  static c10::BFloat16* ptr(const Tensor& t) { return t.data_ptr<c10::BFloat16>(); }
  static float* f32(const Tensor& t) { return t.data_ptr<float>(); }

  const Inputs& in_;
  bool backward_;
  Tensor dq_, dk_;
  // brgemm only: K^T (both dtypes); bf16: Q with an even row length, K and Q^T packed, scratch for G.
  Tensor k_t_, q_, k_v_, q_t_, g_, g_v_;
};

// Calls visit(panel_tensor, row0, col0) for every panel, with the panel's raw products.
template <typename F>
void walk_panels(const Inputs& in, const Products& products, int64_t workspace_bytes, const F& visit) {
  const int64_t n = in.q.size(0), N = in.k.size(0);
  TORCH_CHECK_VALUE(workspace_bytes > 0, "contrastive loss: workspace_bytes must be positive, got ",
                    workspace_bytes);
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
Panel<T> make_panel(const Tensor& panel, int64_t r0, int64_t c0, int64_t offset, const Tensor& scale,
                    const T* bias) {
  return {panel.data_ptr<T>(), panel.size(0), panel.size(1), panel.stride(0), r0, c0, offset,
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
  // How fp32 and bf16 inputs on the CPU are multiplied now (Products).
  info += bg::f32_available() ? " fp32=brgemm" : " fp32=aten";
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
