// CUDA panel kernels: the fused element-wise work of the contrastive loss on one panel.
//
// They compute exactly what the CPU kernels (cpu/panel_kernels_impl.h) compute, with the
// same formulas from numerics.h instantiated with ScalarMath; only the order of the sums
// differs. This file includes no torch header, so it compiles with plain nvcc in seconds
// and its register use can be checked with ptxas alone (tests/test_cuda_build.py).
//
// Layout of the work (a panel is `rows x cols` raw products p, row-major, stride ld):
//
// - softmax forward: ONE launch whose grid has two parts. The first blocks reduce rows
//   (a warp per row for short rows, a block per row for long ones; coalesced along the
//   row), merge each row's partial log-sum-exp into row_max/row_sum and pick the diagonal
//   logit. The remaining blocks reduce columns: a block owns a strip of 32 columns, its
//   8 warps walk down interleaved rows (each warp reads 32 consecutive elements of a row:
//   one 128-byte line), and the 8 partials meet in shared memory. Both parts in one grid
//   run concurrently, so a panel with few long rows still fills the GPU with column work.
// - sigmoid forward: the row part alone, summing pair losses.
// - backwards: element-wise over (row, chunk) work items in a grid-stride loop; the
//   gradient sums of the scale (and bias) are reduced per thread in double, per block in a
//   fixed order, and added to *dscale / *dbias with one atomicAdd per block.
//
// Log-sum-exps are kept as (max, sum) pairs: every thread reduces its elements a chunk at
// a time — chunk maximum m, then sum of exp(x - m), then lse_merge into its running pair —
// and the pairs are merged with lse_merge up the warp/block. That is the CPU's "block max,
// then sum of exp(x - m), then lse_merge" with smaller blocks, and it keeps its edge cases:
// a NaN or +inf logit makes the sum NaN, an all -inf block changes nothing.
//
// Row statistics, column statistics, the diagonal and row losses are reduced in a fixed
// order (deterministic for a given panel shape); *dscale / *dbias take atomic adds of block
// partials, so their last bits may vary run to run.
//
// Errors: launches are asynchronous and never synchronise the host. A failed launch
// (no kernel image for this GPU, ...) is left in CUDA's last-error state, which the caller
// turns into an exception with C10_CUDA_KERNEL_LAUNCH_CHECK() right after the call.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

// panel.h declares the CUDA entry points only under this macro (the extension build
// defines it); defining it here too keeps a standalone nvcc compile checking the
// definitions below against those declarations.
#ifndef PRETRAIN_MM_WITH_CUDA
#define PRETRAIN_MM_WITH_CUDA
#endif
#include "../numerics.h"
#include "../panel.h"
#include "kernel_utils.cuh"

namespace pretrain_mm::cuda {
namespace {

// ---- row reductions ------------------------------------------------------------------
//
// A "group" of G threads (a warp, or the whole block) owns a panel row. Each thread walks
// the row in steps of G * VEC * kUnroll elements, kUnroll vector loads in flight at a time;
// a warp's loads of one step are contiguous (coalesced).

// The group's partial log-sum-exp of one row of logits s * p, in (m, s) form.
template <typename T, int VEC, int G>
__device__ __forceinline__ void row_lse(const T* __restrict__ row, int64_t cols, T scale, int t, T& m, T& sum) {
  m = neg_infinity<T>();
  sum = T(0);
  for (int64_t base = int64_t(t) * VEC; base < cols; base += int64_t(G) * VEC * kUnroll) {
    T x[kUnroll][VEC];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + int64_t(u) * G * VEC;
      if (j < cols) {
        load_pack<T, VEC>(row, j, cols, x[u]);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) x[u][k] = T(0);
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) x[u][k] = (j + k < cols) ? scale * x[u][k] : neg_infinity<T>();
    }
    T cm = neg_infinity<T>();
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int k = 0; k < VEC; ++k) cm = ScalarMath::max(cm, x[u][k]);
    T cs = T(0);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int k = 0; k < VEC; ++k) cs += lse_term<ScalarMath>(x[u][k], cm);
    lse_merge(m, sum, cm, cs);
  }
}

// This thread's sum of sigmoid pair losses over its elements of one row; the positive
// pair sits at column d (possibly outside the panel).
template <typename T, int VEC, int G>
__device__ __forceinline__ double row_sigmoid_loss(const T* __restrict__ row, int64_t cols, int64_t d, T scale, T bias,
                                                   int t) {
  double acc = 0;
  for (int64_t base = int64_t(t) * VEC; base < cols; base += int64_t(G) * VEC * kUnroll) {
    T p[kUnroll][VEC];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + int64_t(u) * G * VEC;
      if (j < cols) load_pack<T, VEC>(row, j, cols, p[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + int64_t(u) * G * VEC;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        if (j + k < cols) {
          const T z = (j + k == d) ? T(1) : T(-1);
          acc += static_cast<double>(sigmoid_pair_loss<ScalarMath>(scale * p[u][k] + bias, z));
        }
      }
    }
  }
  return acc;
}

// ---- softmax forward -------------------------------------------------------------------

// Row part: merges the panel's row partials into row_max/row_sum and records the diagonal.
template <typename T, int VEC, bool kBlockPerRow>
__device__ __forceinline__ void softmax_forward_rows(const Panel<T>& P, const SoftmaxForwardState<T>& st,
                                                     int64_t part_block, int64_t part_blocks, ForwardShared<T>& sm) {
  const T scale = *P.scale;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int G = kBlockPerRow ? kBlock : 32;
  constexpr int kRowsPerBlock = kBlockPerRow ? 1 : kWarps;
  const int t = kBlockPerRow ? threadIdx.x : lane;
  for (int64_t i = part_block * kRowsPerBlock + (kBlockPerRow ? 0 : warp); i < P.rows;
       i += part_blocks * kRowsPerBlock) {
    const T* row = P.p + i * P.ld;
    T m, s;
    row_lse<T, VEC, G>(row, P.cols, scale, t, m, s);
    warp_lse(m, s);
    if constexpr (kBlockPerRow) {
      if (lane == 0) {
        sm.m[0][warp] = m;
        sm.s[0][warp] = s;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int w = 1; w < kWarps; ++w) lse_merge(m, s, sm.m[0][w], sm.s[0][w]);
      }
      __syncthreads();
    }
    if (t == 0) {
      const int64_t r = P.row0 + i;
      lse_merge(st.row_max[r], st.row_sum[r], m, s);
      const int64_t d = P.offset + r - P.col0;
      if (d >= 0 && d < P.cols) st.diag[r] = scale * row[d];
    }
  }
}

// Column part: a block owns strips of 32 columns; warp w reads rows w, w + 8, ... of the
// strip, kColUnroll rows in flight, and the 8 warps' partials are merged in shared memory.
template <typename T>
__device__ __forceinline__ void softmax_forward_cols(const Panel<T>& P, const SoftmaxForwardState<T>& st,
                                                     int64_t part_block, int64_t part_blocks, ForwardShared<T>& sm) {
  const T scale = *P.scale;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t strips = (P.cols + 31) / 32;
  for (int64_t strip = part_block; strip < strips; strip += part_blocks) {
    const int64_t j = strip * 32 + lane;
    T m = neg_infinity<T>(), s = T(0);
    if (j < P.cols) {
      for (int64_t i0 = warp; i0 < P.rows; i0 += int64_t(kWarps) * kColUnroll) {
        T x[kColUnroll];
#pragma unroll
        for (int u = 0; u < kColUnroll; ++u) {
          const int64_t i = i0 + int64_t(u) * kWarps;
          x[u] = i < P.rows ? scale * P.p[i * P.ld + j] : neg_infinity<T>();
        }
        T cm = neg_infinity<T>();
#pragma unroll
        for (int u = 0; u < kColUnroll; ++u) cm = ScalarMath::max(cm, x[u]);
        T cs = T(0);
#pragma unroll
        for (int u = 0; u < kColUnroll; ++u) cs += lse_term<ScalarMath>(x[u], cm);
        lse_merge(m, s, cm, cs);
      }
    }
    sm.m[warp][lane] = m;
    sm.s[warp][lane] = s;
    __syncthreads();
    if (warp == 0 && j < P.cols) {
      for (int w = 1; w < kWarps; ++w) lse_merge(m, s, sm.m[w][lane], sm.s[w][lane]);
      lse_merge(st.col_max[P.col0 + j], st.col_sum[P.col0 + j], m, s);
    }
    __syncthreads();
  }
}

// Blocks [0, row_blocks) do the row part, the rest the column part.
template <typename T, int VEC, bool kBlockPerRow>
__global__ void softmax_forward_kernel(const Panel<T> P, const SoftmaxForwardState<T> st, int64_t row_blocks) {
  __shared__ ForwardShared<T> sm;
  const int64_t b = blockIdx.x;
  if (b < row_blocks) {
    softmax_forward_rows<T, VEC, kBlockPerRow>(P, st, b, row_blocks, sm);
  } else {
    softmax_forward_cols<T>(P, st, b - row_blocks, int64_t(gridDim.x) - row_blocks, sm);
  }
}

// ---- sigmoid forward -------------------------------------------------------------------

template <typename T, int VEC, bool kBlockPerRow>
__global__ void sigmoid_forward_kernel(const Panel<T> P, const SigmoidForwardState<T> st) {
  __shared__ double sm[kWarps];
  const T scale = *P.scale, bias = *P.bias;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int G = kBlockPerRow ? kBlock : 32;
  constexpr int kRowsPerBlock = kBlockPerRow ? 1 : kWarps;
  const int t = kBlockPerRow ? threadIdx.x : lane;
  for (int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + (kBlockPerRow ? 0 : warp); i < P.rows;
       i += int64_t(gridDim.x) * kRowsPerBlock) {
    const int64_t r = P.row0 + i;
    const int64_t d = P.offset + r - P.col0;
    double loss = row_sigmoid_loss<T, VEC, G>(P.p + i * P.ld, P.cols, d, scale, bias, t);
    if constexpr (kBlockPerRow) {
      loss = block_sum(loss, sm);
    } else {
      loss = warp_sum(loss);
    }
    if (t == 0) st.row_loss[r] += static_cast<T>(loss);
  }
}

// ---- backwards: element-wise over (row, chunk) work items ------------------------------

template <typename T, int VEC>
constexpr int64_t kChunk = int64_t(kBlock) * VEC * kUnroll;

template <typename T, int VEC>
__global__ void softmax_backward_kernel(const Panel<T> P, const SoftmaxBackwardState<T> st) {
  __shared__ double sm[kWarps];
  const T scale = *P.scale;
  const T* __restrict__ col_lse = st.col_lse + P.col0;
  const T* __restrict__ g_col = st.g_col + P.col0;
  const int64_t chunks = (P.cols + kChunk<T, VEC> - 1) / kChunk<T, VEC>;
  const int64_t items = P.rows * chunks;
  double acc = 0;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t i = item / chunks;
    const int64_t base = (item - i * chunks) * kChunk<T, VEC> + int64_t(threadIdx.x) * VEC;
    T* __restrict__ row = P.p + i * P.ld;
    const int64_t r = P.row0 + i;
    const int64_t d = P.offset + r - P.col0;
    const T r_lse = st.row_lse[r], g_row = st.g_row[r];
    T p[kUnroll][VEC], c[kUnroll][VEC], gc[kUnroll][VEC];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + int64_t(u) * kBlock * VEC;
      if (j < P.cols) {
        load_pack<T, VEC>(row, j, P.cols, p[u]);
        load_pack<T, VEC>(col_lse, j, P.cols, c[u]);
        load_pack<T, VEC>(g_col, j, P.cols, gc[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + int64_t(u) * kBlock * VEC;
      if (j < P.cols) {
        T out[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          T g = softmax_logit_grad<ScalarMath>(scale * p[u][k], r_lse, c[u][k], g_row, gc[u][k]);
          // The positive pair's g_diag joins its gradient first, as on the CPU: exactly 0 where
          // the loss is saturated.
          if (j + k == d) g += st.g_diag[r];
          out[k] = scale * g;
          if (j + k < P.cols) acc += static_cast<double>(g * p[u][k]);
        }
        store_pack<T, VEC>(row, j, P.cols, out);
      }
    }
  }
  acc = block_sum(acc, sm);
  if (threadIdx.x == 0) atomicAdd(st.dscale, static_cast<T>(acc));
}

template <typename T, int VEC>
__global__ void sigmoid_backward_kernel(const Panel<T> P, const SigmoidBackwardState<T> st) {
  __shared__ double sm[kWarps];
  const T scale = *P.scale, bias = *P.bias;
  const int64_t chunks = (P.cols + kChunk<T, VEC> - 1) / kChunk<T, VEC>;
  const int64_t items = P.rows * chunks;
  double acc_scale = 0, acc_bias = 0;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t i = item / chunks;
    const int64_t base = (item - i * chunks) * kChunk<T, VEC> + int64_t(threadIdx.x) * VEC;
    T* __restrict__ row = P.p + i * P.ld;
    const int64_t r = P.row0 + i;
    const int64_t d = P.offset + r - P.col0;
    const T g_row = st.g_row[r];
    T p[kUnroll][VEC];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + int64_t(u) * kBlock * VEC;
      if (j < P.cols) load_pack<T, VEC>(row, j, P.cols, p[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + int64_t(u) * kBlock * VEC;
      if (j < P.cols) {
        T out[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const T z = (j + k == d) ? T(1) : T(-1);
          const T dl = sigmoid_pair_grad<ScalarMath>(scale * p[u][k] + bias, z, g_row);
          out[k] = scale * dl;
          if (j + k < P.cols) {
            acc_scale += static_cast<double>(dl * p[u][k]);
            acc_bias += static_cast<double>(dl);
          }
        }
        store_pack<T, VEC>(row, j, P.cols, out);
      }
    }
  }
  acc_scale = block_sum(acc_scale, sm);
  acc_bias = block_sum(acc_bias, sm);
  if (threadIdx.x == 0) {
    atomicAdd(st.dscale, static_cast<T>(acc_scale));
    atomicAdd(st.dbias, static_cast<T>(acc_bias));
  }
}

// Launches a backward kernel over its (row, chunk) work items, as many blocks as fill the device.
template <typename T, int VEC, auto kKernel, typename State>
void launch_backward(const Panel<T>& P, const State& st, void* stream) {
  const int64_t items = P.rows * ceil_div(P.cols, kChunk<T, VEC>);
  const int64_t blocks = std::min(items, filling_grid<kKernel>());
  kKernel<<<static_cast<unsigned>(blocks), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(P, st);
}

}  // namespace

// ---- the entry points (panel.h) --------------------------------------------------------

template <typename T>
void softmax_forward_panel(const Panel<T>& P, const SoftmaxForwardState<T>& st, void* stream) {
  if (P.rows <= 0 || P.cols <= 0) return;
  with_forward_variant(P, [&](auto width, auto per_row) {
    const int64_t row_blocks = row_part_blocks<per_row()>(P.rows);
    const int64_t col_blocks = std::min(ceil_div(P.cols, 32), kMaxPartBlocks);
    softmax_forward_kernel<T, width(), per_row()>
        <<<static_cast<unsigned>(row_blocks + col_blocks), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(P, st,
                                                                                                           row_blocks);
  });
}

template <typename T>
void sigmoid_forward_panel(const Panel<T>& P, const SigmoidForwardState<T>& st, void* stream) {
  if (P.rows <= 0 || P.cols <= 0) return;
  with_forward_variant(P, [&](auto width, auto per_row) {
    sigmoid_forward_kernel<T, width(), per_row()>
        <<<static_cast<unsigned>(row_part_blocks<per_row()>(P.rows)), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
            P, st);
  });
}

template <typename T>
void softmax_backward_panel(const Panel<T>& P, const SoftmaxBackwardState<T>& st, void* stream) {
  if (P.rows <= 0 || P.cols <= 0) return;
  // The column vectors are read at col0 + j with the panel's vector width too.
  if (rows_aligned(P) && aligned16(st.col_lse + P.col0) && aligned16(st.g_col + P.col0))
    launch_backward<T, kVec<T>, softmax_backward_kernel<T, kVec<T>>>(P, st, stream);
  else
    launch_backward<T, 1, softmax_backward_kernel<T, 1>>(P, st, stream);
}

template <typename T>
void sigmoid_backward_panel(const Panel<T>& P, const SigmoidBackwardState<T>& st, void* stream) {
  if (P.rows <= 0 || P.cols <= 0) return;
  if (rows_aligned(P))
    launch_backward<T, kVec<T>, sigmoid_backward_kernel<T, kVec<T>>>(P, st, stream);
  else
    launch_backward<T, 1, sigmoid_backward_kernel<T, 1>>(P, st, stream);
}

#define PM_INSTANTIATE(T)                                                                          \
  template void softmax_forward_panel<T>(const Panel<T>&, const SoftmaxForwardState<T>&, void*);   \
  template void softmax_backward_panel<T>(const Panel<T>&, const SoftmaxBackwardState<T>&, void*); \
  template void sigmoid_forward_panel<T>(const Panel<T>&, const SigmoidForwardState<T>&, void*);   \
  template void sigmoid_backward_panel<T>(const Panel<T>&, const SigmoidBackwardState<T>&, void*);
PM_INSTANTIATE(float)
PM_INSTANTIATE(double)
#undef PM_INSTANTIATE

}  // namespace pretrain_mm::cuda
