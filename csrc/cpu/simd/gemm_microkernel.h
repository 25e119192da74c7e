// The register tile of the tiled fp32 GEMM (cpu/tiled_gemm.h) and its SIMD micro-kernels.
#pragma once

#include <cstdint>

namespace pretrain_mm::cpu::tiles {

// A micro-kernel multiplies a packed 6-row sliver of A by a packed 16-column sliver of B.
constexpr int64_t kMR = 6, kNR = 16;

// C (kMR x kNR, row stride ldc) = [C +] A_sliver . B_sliver over kc steps, where a holds
// kc columns of kMR values (a[k * kMR + i] = A[i][k]) and b kc rows of kNR values
// (b[k * kNR + j] = B[k][j], 32-byte aligned). Each element is one FMA chain over k in
// order, then one addition to C: the same bits wherever the tile lies in C.
void microkernel_6x16_avx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate);

}  // namespace pretrain_mm::cpu::tiles
