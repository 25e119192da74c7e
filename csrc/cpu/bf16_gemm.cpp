// bf16 x bf16 -> fp32 matrix products on the CPU: VNNI packing and a tiled driver over brgemm.
#include "bf16_gemm.h"

#include <ATen/Config.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>

namespace pretrain_mm::cpu::bf16_gemm {
namespace {

// Tiles of C, each one brgemm call per block of K: 32 x 64 fp32 accumulators and K blocks
// of 512 ran at 280-430 GFLOP/s a core on Zen 5 (AVX512-BF16; fp32 GEMM: ~90) for the
// contrastive loss's shapes, where a whole K of 8192 fell to 140-220. Other tiles (16-64 x
// 32-128) measured the same or slower. kBlockK must be even (VNNI pairs).
constexpr int64_t kBlockM = 32, kBlockN = 64, kBlockK = 512;
// Rows of a packing per parallel task, and columns of a transposed packing per tile.
constexpr int64_t kPackGrain = 16, kPackTile = 64;

const uint16_t* bits(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }
uint32_t* pairs(c10::BFloat16* p) { return reinterpret_cast<uint32_t*>(p); }
uint32_t pair(uint16_t lo, uint16_t hi) { return uint32_t(lo) | uint32_t(hi) << 16; }

bool has_capability(const char* name) {
  const auto caps = at::cpu::get_cpu_capabilities();
  const auto it = caps.find(name);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

// Whether this processor multiplies bf16 natively and this torch's brgemm takes bf16 in
// VNNI layout: a 2 x 2 x 2 product with a known answer (ATen raises where the ukernel is
// missing or oneDNN's ISA is below AVX-512).
bool probe() {
#if (defined(__x86_64__) || defined(_M_X64)) && AT_MKLDNN_ENABLED()
  // Without AVX512-BF16 or AMX, oneDNN emulates bf16 products: no faster than fp32.
  if (!has_capability("avx512_bf16") && !has_capability("amx_bf16")) return false;
  const c10::BFloat16 a[4] = {1, 2, 3, 4};       // A = [[1, 2], [3, 4]]
  const c10::BFloat16 b[4] = {5, 7, 6, 8};       // B = [[5, 6], [7, 8]] in VNNI layout
  float c[4] = {0, 0, 0, 0};
  try {
    at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a, b, c, true);
    at::native::cpublas::brgemm_release(true);
  } catch (const std::exception&) {  // c10::Error: no ukernel, or an ISA below AVX-512
    return false;
  }
  return c[0] == 19 && c[1] == 22 && c[2] == 43 && c[3] == 50;
#else
  return false;
#endif
}

}  // namespace

bool available() {
  const char* force = std::getenv("PRETRAIN_MM_BF16_GEMM");
  if (force != nullptr && std::strcmp(force, "widen") == 0) return false;
  // ATen's brgemm checks this flag on every call (and raises when it is off).
  if (!at::globalContext().userEnabledMkldnn()) return false;
  static const bool probed = probe();
  return probed;
}

void pack_vnni(int64_t K, int64_t N, const c10::BFloat16* src, int64_t ld, c10::BFloat16* dst, int64_t ldb) {
  const uint16_t* s = bits(src);
  uint32_t* d = pairs(dst);
  at::parallel_for(0, (K + 1) / 2, kPackGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const uint16_t* even = s + 2 * p * ld;
      uint32_t* out = d + p * ldb;
      if (2 * p + 1 < K) {
        const uint16_t* odd = even + ld;
        for (int64_t n = 0; n < N; ++n) out[n] = pair(even[n], odd[n]);
      } else {
        for (int64_t n = 0; n < N; ++n) out[n] = even[n];
      }
    }
  });
}

void pack_vnni_transposed(int64_t K, int64_t N, const c10::BFloat16* src, int64_t ld, c10::BFloat16* dst,
                          int64_t ldb) {
  const uint16_t* s = bits(src);
  uint32_t* d = pairs(dst);
  const int64_t full_pairs = K / 2;
  // Tiles of kPackTile rows of src (columns of B): they stay in cache while every pair of
  // their columns is written out as a row segment of the packing.
  at::parallel_for(0, (N + kPackTile - 1) / kPackTile, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = t * kPackTile, n1 = std::min(N, n0 + kPackTile);
      for (int64_t p = 0; p < full_pairs; ++p) {
        uint32_t* out = d + p * ldb;
        for (int64_t n = n0; n < n1; ++n) out[n] = pair(s[n * ld + 2 * p], s[n * ld + 2 * p + 1]);
      }
      if (K % 2 == 1) {
        uint32_t* out = d + full_pairs * ldb;
        for (int64_t n = n0; n < n1; ++n) out[n] = s[n * ld + K - 1];
      }
    }
  });
}

void gemm(int64_t M, int64_t N, int64_t K, const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B,
          int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  TORCH_CHECK(K > 0 && K % 2 == 0, "bf16_gemm: K must be even and positive (zero-pad the operands), got ", K);
  if (M <= 0 || N <= 0) return;
  const int64_t tiles_n = (N + kBlockN - 1) / kBlockN, tiles = (M + kBlockM - 1) / kBlockM * tiles_n;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m0 = t / tiles_n * kBlockM, n0 = t % tiles_n * kBlockN;
      const int64_t m = std::min(kBlockM, M - m0), n = std::min(kBlockN, N - n0);
      for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
        at::native::cpublas::brgemm(m, n, std::min(kBlockK, K - k0), lda, ldb, ldc, accumulate || k0 > 0,
                                    A + m0 * lda + k0, B + k0 * ldb + 2 * n0, C + m0 * ldc + n0, true);
      }
    }
    // As ATen's own callers do: give back the hardware context (AMX tiles) of this thread.
    at::native::cpublas::brgemm_release(true);
  });
}

}  // namespace pretrain_mm::cpu::bf16_gemm
