// Matrix products on the CPU through brgemm: VNNI packing (bf16) and tiled drivers (bf16, fp32).
#include "brgemm.h"

#include <ATen/Config.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "cpu_features.h"

namespace pretrain_mm::cpu::brgemm {
namespace {

// Tiles of C, each one brgemm call per block of K. bf16: 32 x 64 fp32 accumulators and K
// blocks of 512 ran at 280-430 GFLOP/s a core on Zen 5 (AVX512-BF16; fp32 GEMM: ~90) for
// the contrastive loss's shapes, where a whole K of 8192 fell to 140-220; other tiles
// (16-64 x 32-128) measured the same or slower. fp32: 64 x 64 tiles and K blocks of 256
// ran at 290-400 GFLOP/s on 2 cores for the panel, dQ and dK products (MKL: 145-190).
// K blocks must be even (VNNI pairs).
template <typename T>
struct Tiles;
template <>
struct Tiles<c10::BFloat16> {
  static constexpr int64_t M = 32, N = 64, K = 512;
  static constexpr bool vnni = true;
};
template <>
struct Tiles<float> {
  static constexpr int64_t M = 64, N = 64, K = 256;
  static constexpr bool vnni = false;
};
// Rows of a packing per parallel task, and columns of a transposed packing per tile.
constexpr int64_t kPackGrain = 16, kPackTile = 64;

const uint16_t* bits(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }
uint32_t* pairs(c10::BFloat16* p) { return reinterpret_cast<uint32_t*>(p); }
uint32_t pair(uint16_t lo, uint16_t hi) { return uint32_t(lo) | uint32_t(hi) << 16; }

// Whether this torch's brgemm multiplies T on this processor: a 2 x 2 x 2 product with a
// known answer (ATen raises where the ukernel is missing or oneDNN's ISA is below AVX-512).
template <typename T>
bool probe() {
#if (defined(__x86_64__) || defined(_M_X64)) && AT_MKLDNN_ENABLED()
  constexpr bool vnni = Tiles<T>::vnni;
  // A = [[1, 2], [3, 4]], B = [[5, 6], [7, 8]] (in VNNI layout for bf16).
  const T a[4] = {1, 2, 3, 4};
  const T b[4] = {5, vnni ? 7 : 6, vnni ? 6 : 7, 8};
  float c[4] = {0, 0, 0, 0};
  try {
    at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a, b, c, vnni);
    at::native::cpublas::brgemm_release(vnni);
  } catch (const std::exception&) {  // c10::Error: no ukernel, or an ISA below AVX-512
    return false;
  }
  return c[0] == 19 && c[1] == 22 && c[2] == 43 && c[3] == 50;
#else
  return false;
#endif
}

// oneDNN enabled (ATen's brgemm checks the flag on every call and raises when it is off)
// and the probe passed.
bool usable(bool probed) { return at::globalContext().userEnabledMkldnn() && probed; }

// C (M x N) [+]= A . B over tiles of C in parallel: tile_a(m0, m, lda) gives the m rows of A
// from row m0 (and sets their leading dimension), b_at(k0, n0) the B block at (k0, n0).
template <typename T, typename TileA, typename BAt>
void tiled_gemm(int64_t M, int64_t N, int64_t K, const BAt& b_at, int64_t ldb, float* C, int64_t ldc, bool accumulate,
                bool a_per_row_of_tiles, const TileA& tile_a) {
  using Tile = Tiles<T>;
  if (M <= 0 || N <= 0) return;
  const int64_t tiles_m = (M + Tile::M - 1) / Tile::M, tiles_n = (N + Tile::N - 1) / Tile::N;
  const auto multiply = [&](int64_t m0, int64_t n0, const T* a, int64_t lda) {
    const int64_t m = std::min(Tile::M, M - m0), n = std::min(Tile::N, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += Tile::K) {
      at::native::cpublas::brgemm(m, n, std::min(Tile::K, K - k0), lda, ldb, ldc, accumulate || k0 > 0, a + k0,
                                  b_at(k0, n0), C + m0 * ldc + n0, Tile::vnni);
    }
  };
  // A row of tiles shares its A rows: when they must be made (a transposed A), a task is a
  // whole row of tiles, so each is made once; otherwise a task is one tile.
  const int64_t tasks = a_per_row_of_tiles ? tiles_m : tiles_m * tiles_n;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m0 = (a_per_row_of_tiles ? t : t / tiles_n) * Tile::M;
      int64_t lda = 0;
      const T* a = tile_a(m0, std::min(Tile::M, M - m0), lda);
      if (a_per_row_of_tiles) {
        for (int64_t tn = 0; tn < tiles_n; ++tn) multiply(m0, tn * Tile::N, a, lda);
      } else {
        multiply(m0, t % tiles_n * Tile::N, a, lda);
      }
    }
    // As ATen's own callers do: give back the hardware context (AMX tiles) of this thread.
    at::native::cpublas::brgemm_release(Tile::vnni);
  });
}

}  // namespace

bool bf16_available() {
  static const bool probed = has_feature("avx512_bf16") || has_feature("amx_bf16") ? probe<c10::BFloat16>() : false;
  // Without AVX512-BF16 or AMX, oneDNN emulates bf16 products: no faster than fp32.
  const char* force = std::getenv("PRETRAIN_MM_BF16_GEMM");
  return !(force != nullptr && std::strcmp(force, "widen") == 0) && usable(probed);
}

bool f32_available() {
  // Any x86-64 processor whose oneDNN takes the probe (AVX2 and up); products.h prefers it
  // only on AVX-512, where its kernels beat MKL's (measured on AMD Zen 5; on Intel, whose
  // MKL runs AVX-512 too, not measured).
  static const bool probed = probe<float>();
  return usable(probed);
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

void pack_vnni_transposed(int64_t K, int64_t N, const c10::BFloat16* src, int64_t ld, c10::BFloat16* dst, int64_t ldb) {
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

void gemm(int64_t M, int64_t N, int64_t K, const c10::BFloat16* A, int64_t lda, const c10::BFloat16* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate) {
  TORCH_CHECK(K > 0 && K % 2 == 0, "brgemm: a bf16 K must be even and positive (zero-pad the operands), got ", K);
  tiled_gemm<c10::BFloat16>(
      M, N, K, [&](int64_t k0, int64_t n0) { return B + k0 * ldb + 2 * n0; }, ldb, C, ldc, accumulate, false,
      [&](int64_t m0, int64_t, int64_t& ld) { return ld = lda, A + m0 * lda; });
}

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool a_transposed, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate) {
  TORCH_CHECK(K > 0, "brgemm: K must be positive, got ", K);
  const auto b_at = [&](int64_t k0, int64_t n0) { return B + k0 * ldb + n0; };
  if (!a_transposed) {
    tiled_gemm<float>(M, N, K, b_at, ldb, C, ldc, accumulate, false,
                      [&](int64_t m0, int64_t, int64_t& ld) { return ld = lda, A + m0 * lda; });
    return;
  }
  // A^T's rows m0.. are A's columns m0..: copied, a tile of m rows x K, into this thread's buffer.
  tiled_gemm<float>(M, N, K, b_at, ldb, C, ldc, accumulate, true, [&](int64_t m0, int64_t m, int64_t& ld) {
    thread_local std::vector<float> buffer;
    buffer.resize(Tiles<float>::M * K);
    for (int64_t k = 0; k < K; ++k) {
      const float* row = A + k * lda + m0;
      for (int64_t i = 0; i < m; ++i) buffer[i * K + k] = row[i];
    }
    ld = K;
    return static_cast<const float*>(buffer.data());
  });
}

}  // namespace pretrain_mm::cpu::brgemm
