// fp32 matrix products in tiles of our own, for x86-64 CPUs with AVX2 and FMA.
//
// Why not ATen's matmul: on AVX2-only AMD processors MKL's sgemm reaches 65-115 GFLOP/s on
// 2 cores for the contrastive loss's shapes, and oneDNN's AVX2 brgemm 45-80; BLIS's loop
// nest around a 6 x 16 register tile (simd/gemm_microkernel.h) does better there. And an
// element's value here depends only on its row of op(A), its column of op(B) and the K
// blocking — not on the product's shape, the element's place in it, the threads or the
// memory's alignment — so a logit panel recomputed by the backward has the forward's bits.
#pragma once

#include <cstdint>

namespace pretrain_mm::cpu::tiled_gemm {

// Whether this processor has AVX2 and FMA and ATen's CPU capability (which honours
// ATEN_CPU_CAPABILITY) is AVX2 or above.
bool available();

// A matrix operand: op(X)[r][c] = data[r * ld + c], or data[c * ld + r] when transposed.
struct Operand {
  const float* data;
  int64_t ld;
  bool transposed;
};

// C (M x N, row stride ldc) = [C +] op(A) (M x K) . op(B) (K x N), in parallel over tiles of C.
void gemm(int64_t M, int64_t N, int64_t K, const Operand& A, const Operand& B, float* C, int64_t ldc,
          bool accumulate);

}  // namespace pretrain_mm::cpu::tiled_gemm
