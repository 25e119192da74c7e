// What this processor has, as torch's cpuinfo reports it ("avx2", "fma3", "avx512_bf16", ...):
// the one test that the CPU product ways (brgemm.cpp, tiled_gemm.cpp) choose by.
// Included by portable sources only.
#pragma once

#include <ATen/cpu/Utils.h>

namespace pretrain_mm::cpu {

inline bool has_feature(const char* name) {
  const auto caps = at::cpu::get_cpu_capabilities();
  const auto it = caps.find(name);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

}  // namespace pretrain_mm::cpu
