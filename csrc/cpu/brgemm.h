// Matrix products on the CPU through the oneDNN brgemm ukernel that ATen exports:
// bf16 x bf16 -> fp32, and fp32.
//
// bf16: ATen's bf16 matmul rounds its output to bf16 (~0.4 on a logit at scale 100) and
// MKL's bf16 x bf16 -> fp32 GEMM runs at fp32 speed on AMD processors; brgemm multiplies
// bf16 pairs with AVX512-BF16 (or AMX) and accumulates in fp32, 3-4x faster than fp32 GEMM.
// fp32: MKL, behind ATen's fp32 matmul, runs its AVX2 kernels on AMD processors; brgemm's
// AVX-512 kernels multiply the loss's shapes about 2x faster there (300-400 GFLOP/s against
// 150-190 on 2 Zen 5 cores), with the same fp32 accumulation.
//
// brgemm takes its B operand row-major in fp32, and in the VNNI layout in bf16: a K x N
// matrix B is stored as [ceil(K/2)][ldb][2], the pair (B[k][n], B[k+1][n]) adjacent (an odd
// K gets a zero row), ldb >= N pairs a row. A slice of rows [k0, k0 + K') of B, k0 even,
// starts at B + k0 * ldb.
//
// Used only by the CPU side of contrastive.cpp; CUDA sources never include it.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace pretrain_mm::cpu::brgemm {

// Whether bf16 products run through brgemm now: an x86-64 processor with AVX512-BF16 or
// AMX, a torch whose brgemm accepts bf16 in VNNI layout (probed once), oneDNN enabled
// (torch.backends.mkldnn.enabled), and PRETRAIN_MM_BF16_GEMM not set to "widen" (which
// forces the fallback: inputs widened to fp32 and multiplied by ATen).
bool bf16_available();

// Whether fp32 products can run through brgemm now: an x86-64 processor whose oneDNN has
// fp32 brgemm kernels (AVX2 and up; probed once) and oneDNN enabled. Where they are chosen
// is products.h's rule (PRETRAIN_MM_FP32_GEMM).
bool f32_available();

inline int64_t round_up_even(int64_t x) { return x + (x & 1); }

// A leading dimension for rows of n elements of elem_bytes each (a VNNI pair is 4 bytes):
// rows an odd number of 64-byte lines apart. A power-of-two stride (N = 8192) would put the
// rows of a tile in the same cache sets, and B tiles then no longer stay in L1: 20-30%
// slower products.
inline int64_t padded_ld(int64_t n, int64_t elem_bytes) {
  const int64_t line = 64 / elem_bytes;
  const int64_t lines = (n + line - 1) / line;
  return (lines | 1) * line;
}

// Packs B = src (K x N, row-major, leading dimension ld) into dst, (K+1)/2 * ldb * 2 elements.
void pack_vnni(int64_t K, int64_t N, const c10::BFloat16* src, int64_t ld, c10::BFloat16* dst, int64_t ldb);

// Packs B = src^T, where src is N x K row-major with leading dimension ld: the layout that
// turns a product with src's transpose (Q . K^T) into a brgemm.
void pack_vnni_transposed(int64_t K, int64_t N, const c10::BFloat16* src, int64_t ld, c10::BFloat16* dst, int64_t ldb);

// C (M x N, ldc) = A (M x K, row-major, lda) . B  [+ C when accumulate], in fp32, with B
// packed by pack_vnni* with row length ldb (B may point at an even row of a larger packing).
// K must be even: an operand with an odd K is zero-padded by its owner (A with a zero
// column, B with the zero row pack_vnni adds). Runs in parallel over tiles of C.
void gemm(int64_t M, int64_t N, int64_t K, const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate);

// C (M x N, ldc) = op(A) . B  [+ C when accumulate], fp32, B row-major (K x N, ldb).
// op(A) is A (M x K, row-major, lda) or, with a_transposed, A^T for an A stored K x M
// (row-major, lda): each thread then copies its tiles of A^T before multiplying them.
// Runs in parallel over tiles of C.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool a_transposed, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate);

}  // namespace pretrain_mm::cpu::brgemm
