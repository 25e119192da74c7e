// fp32 matrix products in tiles of our own, for x86-64 CPUs with AVX2 and FMA.
//
// Why not ATen's matmul: on AVX2-only AMD processors (Zen 3, 2 cores) MKL's sgemm reaches
// 80-115 GFLOP/s for the contrastive loss's shapes and oneDNN's AVX2 brgemm 45-80; BLIS's
// loop nest around a 6 x 16 register tile (simd/gemm_microkernel.h) makes the panel 1.3x and
// dK 1.5x faster than MKL there (dQ 0.9x), and the fused loss 2.5x faster than open_clip's
// at N = 16384 (1.97x with ATen's products). And an
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
void gemm(int64_t M, int64_t N, int64_t K, const Operand& A, const Operand& B, float* C, int64_t ldc, bool accumulate);

// B = X^T for an X (N x K, row-major) packed once for many products: the loss's panels read
// columns of K^T in every panel product, forward and backward, and would pack them again each
// time. Slivers of kNR rows of X, [ceil(N / 16)][K][16], 64-byte aligned by the caller.
struct PackedB {
  const float* data;
  int64_t K;
};
constexpr int64_t kPackedColumns = 16;  // a product reads packed columns from a multiple of this
int64_t packed_floats(int64_t N, int64_t K);
void pack_transposed(int64_t N, int64_t K, const float* X, int64_t ld, float* dst);

// C (M x N) = [C +] op(A) (M x K) . B[:, j0 : j0 + N], with j0 a multiple of kPackedColumns.
void gemm(int64_t M, int64_t N, int64_t K, const Operand& A, const PackedB& B, int64_t j0, float* C, int64_t ldc,
          bool accumulate);

}  // namespace pretrain_mm::cpu::tiled_gemm
