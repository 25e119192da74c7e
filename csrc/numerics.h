// The numerics of the fused contrastive loss, in one place for the CPU and the CUDA kernels.
//
// Every formula the panel kernels evaluate is written once here as a template over a
// "math policy" M and a value type T. The CUDA kernels instantiate them with ScalarMath
// and float/double; the CPU kernels instantiate them with a SIMD policy over
// at::vec::Vectorized for the body of a row and with ScalarMath for its tail, so the CPU
// tests run exactly the arithmetic the GPU runs. csrc/tests/test_numerics_and_ops.cpp (ctest
// cpp_tests) checks the formulas with ScalarMath against long-double references, edge cases
// included; tests/test_contrastive_loss.py runs the CPU kernels on rows shorter than one SIMD
// vector (n = 1, 2, 7: the scalar tail only) and longer, and compares the default and AVX2
// builds (test_every_cpu_build_agrees).
//
// Notation (see docs/design.md): x = s * p
// is a logit, p = q_i . k_j the raw product, r_i / c_j the row / column log-sum-exps, z = +1
// on a positive pair and -1 elsewhere.
#pragma once

#include <cmath>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PM_HD __host__ __device__ __forceinline__
#else
#define PM_HD inline
#endif

// The formulas are inline functions, compiled into each object that uses them: the portable
// ones, and the CPU kernels' SIMD builds with AVX2 or AVX-512 enabled. A build for a CPU
// capability (CPU_CAPABILITY, as in ATen: DEFAULT, AVX2, AVX512) gets its own inline namespace,
// pretrain_mm::AVX2::lse_merge and so on, so the linker never takes a SIMD copy for a portable
// caller (cpu/panel_kernels_headers.h explains); the others use pretrain_mm::portable.
#ifdef CPU_CAPABILITY
#define PM_NUMERICS_NAMESPACE CPU_CAPABILITY
#else
#define PM_NUMERICS_NAMESPACE portable
#endif

namespace pretrain_mm {
inline namespace PM_NUMERICS_NAMESPACE {

// Scalar math for float and double, usable on host and device.
struct ScalarMath {
  PM_HD static float exp(float x) { return ::expf(x); }
  PM_HD static double exp(double x) { return ::exp(x); }
  PM_HD static float log1p(float x) { return ::log1pf(x); }
  PM_HD static double log1p(double x) { return ::log1p(x); }
  PM_HD static float abs(float x) { return ::fabsf(x); }
  PM_HD static double abs(double x) { return ::fabs(x); }
  // NaN-propagating maximum: a NaN logit must reach the loss, never be skipped.
  template <typename T>
  PM_HD static T max(T a, T b) { return (a != a || a > b) ? a : b; }
};

template <typename T>
PM_HD T neg_infinity() { return -std::numeric_limits<T>::infinity(); }

// ---- log-sum-exp, kept as a pair (m, s) meaning m + log(s) -------------------------------

// Merge the partial log-sum-exp (m2, s2) into (m, s). One exp per merge; an empty partial
// (m2 = -inf) changes nothing, and a NaN in either side propagates.
template <typename T>
PM_HD void lse_merge(T& m, T& s, T m2, T s2) {
  if (m2 == neg_infinity<T>()) return;
  if (m >= m2) {
    s += s2 * ScalarMath::exp(m2 - m);
  } else {
    s = s * ScalarMath::exp(m - m2) + s2;
    m = m2;
  }
}

// ---- softmax (CLIP) ------------------------------------------------------------------

// One term of the partial log-sum-exp sum: exp(x - m) with m the block maximum.
template <typename M, typename V>
PM_HD V lse_term(V x, V m) { return M::exp(x - m); }

// The gradient of the loss with respect to one logit, without the diagonal term:
//   dLoss/dx_ij = g_row_i * exp(x_ij - r_i) + g_col_j * exp(x_ij - c_j)  (+ g_diag_i on j = offset + i)
// where g_row, g_col, g_diag are the upstream gradients of the row LSE, column LSE and diagonal.
template <typename M, typename V>
PM_HD V softmax_logit_grad(V x, V r, V c, V g_row, V g_col) {
  return g_row * M::exp(x - r) + g_col * M::exp(x - c);
}

// ---- sigmoid (SigLIP) ----------------------------------------------------------------

// softplus(t) = log(1 + exp(t)), stable for any t.
template <typename M, typename V>
PM_HD V softplus(V t) {
  const V zero = V(0);
  return M::max(t, zero) + M::log1p(M::exp(zero - M::abs(t)));
}

// The loss of one logit with label z: -log sigmoid(z * x) = softplus(-z * x).
template <typename M, typename V>
PM_HD V sigmoid_pair_loss(V x, V z) { return softplus<M>(V(0) - z * x); }

// Its gradient times the upstream gradient g: d/dx softplus(-z x) = -z * sigmoid(-z x)
//   = -z / (1 + exp(z x)). exp overflowing to +inf gives exactly 0, as it should.
template <typename M, typename V>
PM_HD V sigmoid_pair_grad(V x, V z, V g) {
  return (V(0) - z * g) / (V(1) + M::exp(z * x));
}

}  // namespace PM_NUMERICS_NAMESPACE
}  // namespace pretrain_mm
