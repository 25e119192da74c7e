// How the fused ops multiply: the panel products p = Q_rows . K_cols^T and the gradient
// products into dQ and dK, through ATen's matmul or, on CPUs where they are faster, our
// AVX2 tiles (cpu/tiled_gemm.h) or oneDNN's brgemm (cpu/brgemm.h). Included by
// contrastive.cpp only.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cpu/brgemm.h"
#include "cpu/tiled_gemm.h"

namespace pretrain_mm {
namespace {

namespace bg = cpu::brgemm;
using at::Tensor;

// How the panel and gradient products are made (Products): ATen's matmul, our AVX2 tiles
// or brgemm for fp32 (and widened half-precision) inputs, brgemm for bf16 ones on a CPU
// with native bf16 products.
enum class Gemm { kAten, kAvx2, kF32, kBf16 };

const char* gemm_name(Gemm gemm) {
  switch (gemm) {
    case Gemm::kAvx2: return "avx2";
    case Gemm::kF32: return "brgemm";
    case Gemm::kBf16: return "brgemm";
    default: return "aten";
  }
}

// The way fp32 products are made on this CPU now. PRETRAIN_MM_FP32_GEMM=aten|avx2|brgemm
// forces one (a way this machine cannot take is an error); unset or `auto`: brgemm where
// ATen's CPU capability is AVX-512 (oneDNN's AVX-512 kernels, about 2x MKL's on AMD Zen 5),
// our AVX2 tiles where it is AVX2 (faster than MKL's and brgemm's AVX2 kernels on AMD Zen 3),
// ATen's matmul elsewhere. ATEN_CPU_CAPABILITY=avx2 thus takes the AVX2 way on an AVX-512 CPU.
Gemm fp32_gemm() {
  const char* env = std::getenv("PRETRAIN_MM_FP32_GEMM");
  const std::string want = env == nullptr || *env == '\0' ? "auto" : env;
  if (want == "aten") return Gemm::kAten;
  if (want == "avx2") {
    TORCH_CHECK_VALUE(cpu::tiled_gemm::available(),
                      "PRETRAIN_MM_FP32_GEMM=avx2, but this CPU (or "
                      "ATEN_CPU_CAPABILITY) has no AVX2 and FMA; unset it or use aten");
    return Gemm::kAvx2;
  }
  if (want == "brgemm") {
    TORCH_CHECK_VALUE(bg::f32_available(),
                      "PRETRAIN_MM_FP32_GEMM=brgemm, but oneDNN's fp32 brgemm is not "
                      "available here (no x86-64 AVX2, or torch.backends.mkldnn disabled); unset it or use aten");
    return Gemm::kF32;
  }
  TORCH_CHECK_VALUE(want == "auto", "PRETRAIN_MM_FP32_GEMM must be auto, aten, avx2 or brgemm; got '", want, "'");
  if (at::get_cpu_capability() == "AVX512" && bg::f32_available()) return Gemm::kF32;
  if (cpu::tiled_gemm::available()) return Gemm::kAvx2;
  return Gemm::kAten;
}

Gemm choose_gemm(const Tensor& q) {
  if (!q.is_cpu() || q.scalar_type() == at::kDouble) return Gemm::kAten;
  if (q.scalar_type() == at::kBFloat16 && bg::bf16_available()) return Gemm::kBf16;
  return fp32_gemm();  // fp32 inputs, and half-precision ones widened to fp32
}

// The features an op multiplies, in the dtype its products take (Gemm::kBf16: bf16;
// otherwise the compute dtype `dtype`, in which the panels and statistics are kept).
struct Operands {
  at::ScalarType dtype;
  Gemm gemm;
  Tensor q, k;
};

struct PanelPlan { int64_t rows, cols; };

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
//   widened to fp32 by the ops' Inputs);
// - our AVX2 tiles (Gemm::kAvx2, cpu/tiled_gemm.h): fp32 on AVX2 CPUs, reading Q, K and G
//   as they are (the tiles pack their operands);
// - fp32 brgemm (Gemm::kF32, cpu/brgemm.h): the same fp32 products, by
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
  Products(const Operands& in, bool backward) : in_(in) {
    const at::NoGradGuard no_grad;
    const int64_t n = in.q.size(0), N = in.k.size(0), D = in.q.size(1);
    const auto acc = in.q.options().dtype(in.dtype);
    if (in.gemm != Gemm::kBf16) {
      if (in.gemm == Gemm::kAvx2) {  // K^T packed once for every panel product
        k_packed_ = at::empty({cpu::tiled_gemm::packed_floats(N, D)}, in.k.options());
        cpu::tiled_gemm::pack_transposed(N, D, f32(in.k), D, f32(k_packed_));
      }
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

  // Panels within the budget, counting what one panel element costs (with bf16 brgemm,
  // the backward's two bf16 copies of G too). The forward plans as the backward does: the
  // backward must recompute every logit with the same products, panel by panel, so that
  // exp(logit - lse) is exactly 1 where the forward's log-sum-exp was that logit alone.
  PanelPlan plan(int64_t workspace_bytes) const {
    const int64_t n = in_.q.size(0), N = in_.k.size(0), panel_bytes = c10::elementSize(in_.dtype);
    if (in_.gemm == Gemm::kAvx2) {  // partial panels start where K^T's packed columns do
      return plan_panels(n, N, workspace_bytes, panel_bytes, cpu::tiled_gemm::kPackedColumns);
    }
    if (in_.gemm != Gemm::kBf16) return plan_panels(n, N, workspace_bytes, panel_bytes, 1);
    return plan_panels(n, N, workspace_bytes, panel_bytes + 4, 2);
  }

  // The row stride of a panel of `cols` columns in the workspace.
  int64_t panel_ld(int64_t cols) const { return in_.gemm == Gemm::kAten ? cols : bg::padded_ld(cols, 4); }

  // panel (rows x cols, compute dtype, row stride panel_ld) = Q[r0 : r0 + rows] . K[c0 : c0 + cols]^T
  void panel(Tensor& panel, int64_t r0, int64_t c0) const {
    const int64_t rows = panel.size(0), cols = panel.size(1), D = in_.q.size(1);
    float* out = in_.gemm == Gemm::kAten ? nullptr : panel.data_ptr<float>();
    switch (in_.gemm) {
      case Gemm::kAten: at::mm_out(panel, in_.q.narrow(0, r0, rows), in_.k.narrow(0, c0, cols).t()); return;
      case Gemm::kAvx2:
        cpu::tiled_gemm::gemm(rows, cols, D, {f32(in_.q) + r0 * D, D, false}, {f32(k_packed_), D}, c0, out,
                              panel.stride(0), false);
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
    if (in_.gemm == Gemm::kAvx2) {
      const cpu::tiled_gemm::Operand g_op{g.const_data_ptr<float>(), g.stride(0), false};
      cpu::tiled_gemm::gemm(rows, D, cols, g_op, {f32(in_.k) + c0 * D, D, false}, f32(dq_) + r0 * D, D, true);
      cpu::tiled_gemm::gemm(cols, D, rows, {g_op.data, g_op.ld, true}, {f32(in_.q) + r0 * D, D, false},
                            f32(dk_) + c0 * D, D, true);
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
  Tensor dk(at::ScalarType dtype) const { return (in_.gemm == Gemm::kBf16 ? dk_.t() : dk_).contiguous().to(dtype); }

 private:
  static c10::BFloat16* ptr(const Tensor& t) { return t.data_ptr<c10::BFloat16>(); }
  static float* f32(const Tensor& t) { return t.data_ptr<float>(); }

  const Operands& in_;
  Tensor dq_, dk_;
  // brgemm only: K^T (both dtypes); bf16: Q with an even row length, K and Q^T packed, scratch for G.
  Tensor k_t_, q_, k_v_, q_t_, g_, g_v_;
  Tensor k_packed_;  // AVX2 tiles: K^T packed as the tiles read it
};

}  // namespace
}  // namespace pretrain_mm
