// The fp32 GEMM micro-kernel for x86-64 processors with AVX2 and FMA (selected at run time).
//
// A 6 x 16 tile of C in 12 ymm accumulators: per k, two loads of B's packed row, six
// broadcasts of A's packed column, twelve FMAs, the register tile of BLIS's Haswell/Zen
// sgemm kernel. Only <immintrin.h> (whose intrinsics are never emitted out of line) and
// gemm_microkernel.h are included, so this object defines no inline function that a portable
// object could take from it at link time (ctest simd_symbols checks it).
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "gemm_microkernel.h"

namespace pretrain_mm::cpu::tiles {

void microkernel_6x16_avx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps();
  __m256 c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps();
  __m256 c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    __m256 ai = _mm256_broadcast_ss(a);
    c00 = _mm256_fmadd_ps(ai, b0, c00), c01 = _mm256_fmadd_ps(ai, b1, c01);
    ai = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(ai, b0, c10), c11 = _mm256_fmadd_ps(ai, b1, c11);
    ai = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(ai, b0, c20), c21 = _mm256_fmadd_ps(ai, b1, c21);
    ai = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(ai, b0, c30), c31 = _mm256_fmadd_ps(ai, b1, c31);
    ai = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(ai, b0, c40), c41 = _mm256_fmadd_ps(ai, b1, c41);
    ai = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(ai, b0, c50), c51 = _mm256_fmadd_ps(ai, b1, c51);
    a += kMR;
    b += kNR;
  }
  const __m256 rows[kMR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int64_t i = 0; i < kMR; ++i) {
    float* out = c + i * ldc;
    __m256 lo = rows[i][0], hi = rows[i][1];
    if (accumulate) lo = _mm256_add_ps(_mm256_loadu_ps(out), lo), hi = _mm256_add_ps(_mm256_loadu_ps(out + 8), hi);
    _mm256_storeu_ps(out, lo);
    _mm256_storeu_ps(out + 8, hi);
  }
}

}  // namespace pretrain_mm::cpu::tiles
#else
#include "gemm_microkernel.h"

// Not an x86-64 processor: tiled_gemm::available() is false, so this is never called.
void pretrain_mm::cpu::tiles::microkernel_6x16_avx2(int64_t, const float*, const float*, float*, int64_t, bool) {
  __builtin_trap();
}
#endif
