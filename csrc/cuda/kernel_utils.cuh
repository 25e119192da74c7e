// What the CUDA panel kernels (panel_kernels.cu) share: launch constants, 16-byte vector
// loads and stores, warp and block reductions in a fixed order, and the host-side helpers
// that size grids and pick a kernel variant for a panel. No torch header, as there.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../numerics.h"
#include "../panel.h"

namespace pretrain_mm::cuda {
namespace {

// Threads per block, every kernel. No __launch_bounds__: with it, ptxas for sm_90 caps some
// double kernels at 64 registers and spills; without, every kernel fits 256 threads anyway
// (at most 255 registers each) and none spills (tests/test_cuda_build.py checks).
constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;
constexpr int kUnroll = 4;               // row-wise: loads in flight per thread, of kVec elements each
constexpr int kColUnroll = 8;            // column-wise: rows in flight per thread
constexpr unsigned kFullMask = 0xffffffffu;
// Rows at least this long get a block each in the row reductions; shorter ones a warp.
constexpr int64_t kBlockPerRowCols = 1024;

// Elements per 16-byte vector load.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Loads src[j, j + VEC) ∩ [0, n) into out (the rest: 0). With VEC > 1 the caller
// guarantees src + j is 16-byte aligned whenever j is a multiple of VEC.
template <typename T, int VEC>
__device__ __forceinline__ void load_pack(const T* __restrict__ src, int64_t j, int64_t n, T (&out)[VEC]) {
  if (j + VEC <= n) {
    const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(src + j);
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = pk.v[k];
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = (j + k < n) ? src[j + k] : T(0);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_pack(T* __restrict__ dst, int64_t j, int64_t n, const T (&in)[VEC]) {
  if (j + VEC <= n) {
    Pack<T, VEC> pk;
#pragma unroll
    for (int k = 0; k < VEC; ++k) pk.v[k] = in[k];
    *reinterpret_cast<Pack<T, VEC>*>(dst + j) = pk;
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      if (j + k < n) dst[j + k] = in[k];
  }
}

// Merges the (m, s) pairs of a warp; lane 0 ends with the whole warp's pair. Fixed order.
template <typename T>
__device__ __forceinline__ void warp_lse(T& m, T& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T m2 = __shfl_down_sync(kFullMask, m, o);
    const T s2 = __shfl_down_sync(kFullMask, s, o);
    lse_merge(m, s, m2, s2);
  }
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFullMask, v, o);
  return v;
}

// The block's sum of v, valid in thread 0; `sm` holds kWarps doubles. Fixed order.
__device__ __forceinline__ double block_sum(double v, double* sm) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sm[warp] = v;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += sm[w];
  }
  __syncthreads();
  return total;
}

// Shared memory of the forward kernels: the column part's per-warp partials (the row part
// uses the first 2 * kWarps entries).
template <typename T>
struct ForwardShared {
  T m[kWarps][32];
  T s[kWarps][32];
};

// ---- launch helpers --------------------------------------------------------------------

template <typename T>
bool aligned16(const T* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// Whether every row of the panel starts 16-byte aligned (then vector loads are legal).
template <typename T>
bool rows_aligned(const Panel<T>& P) {
  return aligned16(P.p) && (P.rows == 1 || P.ld % kVec<T> == 0);
}

// Multiprocessors of the current device, asked once per device.
int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  if (device < 0 || device >= kMaxDevices) device = 0;
  int n = cache[device].load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) n = 1;
    cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Blocks a grid-stride kernel needs to fill the device: resident blocks per SM x SMs.
// The kernel is a template argument so that each kernel has its own cached occupancy.
template <auto kKernel>
int64_t filling_grid() {
  static const int per_sm = [] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kKernel, kBlock, 0) != cudaSuccess || n <= 0) n = 4;
    return n;
  }();
  return int64_t(per_sm) * sm_count();
}

// Grid sizes stay far below the 2^31 - 1 limit; kernels stride over what is beyond.
constexpr int64_t kMaxPartBlocks = int64_t(1) << 20;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <int V>
using Width = std::integral_constant<int, V>;
template <bool B>
using PerRow = std::integral_constant<bool, B>;

// Calls launch(Width<VEC>, PerRow<kBlockPerRow>) with the vector width the panel's
// alignment allows and a block per row for long rows (the forward kernels' variants).
template <typename T, typename Launch>
void with_forward_variant(const Panel<T>& P, const Launch& launch) {
  const bool vec = rows_aligned(P), long_rows = P.cols >= kBlockPerRowCols;
  if (vec && long_rows)
    launch(Width<kVec<T>>{}, PerRow<true>{});
  else if (vec)
    launch(Width<kVec<T>>{}, PerRow<false>{});
  else if (long_rows)
    launch(Width<1>{}, PerRow<true>{});
  else
    launch(Width<1>{}, PerRow<false>{});
}

// Blocks of a forward kernel's row part: one row per block, or a row per warp.
template <bool kBlockPerRow>
int64_t row_part_blocks(int64_t rows) {
  return std::min(ceil_div(rows, kBlockPerRow ? 1 : kWarps), kMaxPartBlocks);
}

}  // namespace
}  // namespace pretrain_mm::cuda
