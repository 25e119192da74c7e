// The panel interface between the device-agnostic orchestrator and the per-device kernels.
//
// The orchestrator (contrastive.cpp) walks the logit matrix of this rank, rows [0, n) of
// Q against columns [0, N) of K, in panels of `rows x cols` raw products p = q_i . k_j
// computed by ATen's matmul into a workspace. A panel kernel then does the fused
// element-wise work on that panel. Kernels see raw pointers only, so the CUDA kernels
// compile without any torch header (fast, and checkable with ptxas alone).
//
// Coordinates: `row0` is the panel's first row within this rank's rows, `col0` its first
// column within all N columns; the positive pair of local row i is column `offset + i`.
// Scalars that live on the device (scale, bias) are passed by pointer so that no kernel
// launch needs a host synchronisation.
#pragma once

#include <cstdint>

namespace pretrain_mm {

template <typename T>
struct Panel {
  T* p;              // rows x cols raw products, row-major with leading dimension ld
  int64_t rows, cols, ld;
  int64_t row0, col0;
  int64_t offset;    // global column of local row 0's positive pair
  const T* scale;    // the logit multiplier s (logit = s * p [+ b])
  const T* bias;     // sigmoid only, else nullptr
};

// Forward, softmax: merge this panel's row and column partial log-sum-exps into the
// running (max, sum) pairs and record the diagonal logits that fall inside the panel.
template <typename T>
struct SoftmaxForwardState {
  T* row_max;
  T* row_sum;   // length n, indexed by local row
  T* col_max;
  T* col_sum;   // length N, indexed by global column
  T* diag;                  // length n
};

// Backward, softmax: replace the panel by s * dLoss/dlogit in place and add
// sum(dLoss/dlogit * p) (the gradient with respect to s) into *dscale.
template <typename T>
struct SoftmaxBackwardState {
  const T* row_lse;
  const T* col_lse;
  const T* g_row;
  const T* g_col;
  const T* g_diag;
  T* dscale;
};

// Forward, sigmoid: add each row's sum of pair losses into row_loss.
template <typename T>
struct SigmoidForwardState {
  T* row_loss;              // length n
};

// Backward, sigmoid: replace the panel by s * dLoss/dlogit in place, add
// sum(dLoss/dlogit * p) into *dscale and sum(dLoss/dlogit) into *dbias.
template <typename T>
struct SigmoidBackwardState {
  const T* g_row;           // upstream gradient of each row's loss
  T* dscale;
  T* dbias;
};

namespace cpu {
// The CPU kernels, compiled once per CPU capability (default, AVX2, AVX-512);
// kernels<T>() returns the best set this processor runs, chosen once.
template <typename T>
struct PanelKernels {
  void (*softmax_forward)(const Panel<T>&, const SoftmaxForwardState<T>&);
  void (*softmax_backward)(const Panel<T>&, const SoftmaxBackwardState<T>&);
  void (*sigmoid_forward)(const Panel<T>&, const SigmoidForwardState<T>&);
  void (*sigmoid_backward)(const Panel<T>&, const SigmoidBackwardState<T>&);
  const char* capability;
};
template <typename T> const PanelKernels<T>& kernels();
}  // namespace cpu

#ifdef PRETRAIN_MM_WITH_CUDA
namespace cuda {
// `stream` is a cudaStream_t, passed as void* to keep CUDA headers out of C++ files.
template <typename T> void softmax_forward_panel(const Panel<T>&, const SoftmaxForwardState<T>&, void* stream);
template <typename T> void softmax_backward_panel(const Panel<T>&, const SoftmaxBackwardState<T>&, void* stream);
template <typename T> void sigmoid_forward_panel(const Panel<T>&, const SigmoidForwardState<T>&, void* stream);
template <typename T> void sigmoid_backward_panel(const Panel<T>&, const SigmoidBackwardState<T>&, void* stream);
}  // namespace cuda
#endif

}  // namespace pretrain_mm
