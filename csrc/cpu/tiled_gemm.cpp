// fp32 products through our own tiles: BLIS's loop nest (pack, then 6 x 16 micro-kernels).
#include "tiled_gemm.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "simd/gemm_microkernel.h"

namespace pretrain_mm::cpu::tiled_gemm {
namespace {

using tiles::kMR;
using tiles::kNR;

// K steps per packed block (a 6 x 256 sliver of A and a 256 x 16 sliver of B fit in L1
// together), at most this many rows of A per task (a 144 x 256 block stays in L2 while it
// meets every B sliver of the task), columns of C per task, and columns of B packed at once
// (4 MiB).
constexpr int64_t kKC = 256, kMaxMC = 144, kJC = 64, kNC = 4096;

// Packs rows [i0, i0 + m) and columns [k0, k0 + kc) of op(A) as slivers of kMR rows,
// dst[sliver][k][i]; rows past m are zero.
void pack_a(const Operand& A, int64_t i0, int64_t m, int64_t k0, int64_t kc, float* dst) {
  for (int64_t s = 0; s < m; s += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, m - s);
    float* out = dst + s * kc;
    if (A.transposed) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = A.data + (k0 + k) * A.ld + i0 + s;
        for (int64_t i = 0; i < kMR; ++i) out[k * kMR + i] = i < rows ? src[i] : 0.0f;
      }
    } else {
      for (int64_t i = 0; i < kMR; ++i) {
        const float* src = A.data + (i0 + s + i) * A.ld + k0;
        for (int64_t k = 0; k < kc; ++k) out[k * kMR + i] = i < rows ? src[k] : 0.0f;
      }
    }
  }
}

// Packs rows [k0, k0 + kc) and columns [j0, j0 + cols) of op(B), cols <= kNR, as one
// sliver dst[k][j]; columns past cols are zero.
void pack_b(const Operand& B, int64_t k0, int64_t kc, int64_t j0, int64_t cols, float* dst) {
  if (cols < kNR) std::memset(dst, 0, sizeof(float) * kc * kNR);
  if (B.transposed) {  // row by row of the sliver, so that its writes run in order
    const float* src = B.data + j0 * B.ld + k0;
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t j = 0; j < cols; ++j) dst[k * kNR + j] = src[j * B.ld + k];
    }
  } else {
    for (int64_t k = 0; k < kc; ++k) std::memcpy(dst + k * kNR, B.data + (k0 + k) * B.ld + j0, sizeof(float) * cols);
  }
}

// A 64-byte aligned scratch of at least `floats` floats, kept per thread between calls.
float* scratch(std::vector<float>& buffer, int64_t floats) {
  if (static_cast<int64_t>(buffer.size()) < floats + 16) buffer.resize(floats + 16);
  const auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<float*>((address + 63) & ~uintptr_t(63));
}

// C[i0 + i][j] for a partial tile (mr x n of kMR x kNR): computed in full into a local
// tile, then the valid part written or added, element by element (the same one rounding
// as the micro-kernel's own addition).
void partial_tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool add, int64_t mr, int64_t n) {
  alignas(32) float tile[kMR * kNR];
  tiles::microkernel_6x16_avx2(kc, a, b, tile, kNR, false);
  for (int64_t i = 0; i < mr; ++i) {
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = add ? c[i * ldc + j] + tile[i * kNR + j] : tile[i * kNR + j];
  }
}

}  // namespace

bool available() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool cpu = has_feature("avx2") && has_feature("fma3");
  const std::string capability = at::get_cpu_capability();
  return cpu && (capability == "AVX2" || capability == "AVX512");
#else
  return false;
#endif
}

namespace {

// The loop nest. B's slivers come packed (packed != nullptr: sliver s of column block jc at
// packed->data + ((j0 + jc) / kNR + s) * K * kNR + pc * kNR) or are packed here per block.
void run(int64_t M, int64_t N, int64_t K, const Operand& A, const Operand* B, const PackedB* packed, int64_t j0,
         float* C, int64_t ldc, bool accumulate) {
  TORCH_CHECK(available(), "tiled_gemm: this CPU (or ATEN_CPU_CAPABILITY) has no AVX2 and FMA");
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate) {
      for (int64_t i = 0; i < M; ++i) std::fill_n(C + i * ldc, N, 0.0f);
    }
    return;
  }
  static thread_local std::vector<float> b_buffer;
  for (int64_t jc = 0; jc < N; jc += kNC) {
    const int64_t nc = std::min(kNC, N - jc), slivers = (nc + kNR - 1) / kNR;
    float* bp = packed ? nullptr : scratch(b_buffer, slivers * kNR * std::min(kKC, K));
    // K blocks in order, each added to C: an element's sum runs the same way in any call.
    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = std::min(kKC, K - pc);
      const float* b_block = bp;
      int64_t sliver_stride = kNR * kc;
      if (packed) {
        b_block = packed->data + (j0 + jc) / kNR * K * kNR + pc * kNR;
        sliver_stride = K * kNR;
      } else {
        at::parallel_for(0, slivers, 8, [&](int64_t begin, int64_t end) {
          for (int64_t s = begin; s < end; ++s) {
            pack_b(*B, pc, kc, jc + s * kNR, std::min(kNR, nc - s * kNR), bp + s * kNR * kc);
          }
        });
      }
      const bool add = accumulate || pc > 0;
      // Row blocks of equal height (whole slivers), so that the threads' shares stay even.
      const int64_t blocks_m = (M + kMaxMC - 1) / kMaxMC, chunks_n = (nc + kJC - 1) / kJC;
      const int64_t mc = ((M + blocks_m - 1) / blocks_m + kMR - 1) / kMR * kMR;
      // Tasks row-block major: a thread's consecutive tasks share their block of A, packed once.
      at::parallel_for(0, blocks_m * chunks_n, 1, [&](int64_t begin, int64_t end) {
        static thread_local std::vector<float> a_buffer;
        float* ap = scratch(a_buffer, mc * kKC);
        int64_t packed_block = -1;
        for (int64_t t = begin; t < end; ++t) {
          const int64_t block = t / chunks_n, i0 = block * mc, m = std::min(mc, M - i0);
          if (block != packed_block) pack_a(A, i0, m, pc, kc, ap), packed_block = block;
          const int64_t j_end = std::min(nc, (t % chunks_n + 1) * kJC);
          for (int64_t j = t % chunks_n * kJC; j < j_end; j += kNR) {
            const float* b = b_block + j / kNR * sliver_stride;
            const int64_t n = std::min(kNR, nc - j);
            for (int64_t i = 0; i < m; i += kMR) {
              float* c = C + (i0 + i) * ldc + jc + j;
              const int64_t mr = std::min<int64_t>(kMR, m - i);
              if (mr == kMR && n == kNR) {
                tiles::microkernel_6x16_avx2(kc, ap + i * kc, b, c, ldc, add);
              } else {
                partial_tile(kc, ap + i * kc, b, c, ldc, add, mr, n);
              }
            }
          }
        }
      });
    }
  }
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, const Operand& A, const Operand& B, float* C, int64_t ldc, bool accumulate) {
  run(M, N, K, A, &B, nullptr, 0, C, ldc, accumulate);
}

void gemm(int64_t M, int64_t N, int64_t K, const Operand& A, const PackedB& B, int64_t j0, float* C, int64_t ldc,
          bool accumulate) {
  TORCH_CHECK(j0 % kPackedColumns == 0 && K == B.K, "tiled_gemm: packed B read from column ", j0, " with K ", K,
              " (packed with K ", B.K, ")");
  run(M, N, K, A, nullptr, &B, j0, C, ldc, accumulate);
}

int64_t packed_floats(int64_t N, int64_t K) { return (N + kNR - 1) / kNR * kNR * K; }

void pack_transposed(int64_t N, int64_t K, const float* X, int64_t ld, float* dst) {
  const int64_t slivers = (N + kNR - 1) / kNR;
  at::parallel_for(0, slivers, 4, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      pack_b({X, ld, true}, 0, K, s * kNR, std::min(kNR, N - s * kNR), dst + s * kNR * K);
    }
  });
}

}  // namespace pretrain_mm::cpu::tiled_gemm
