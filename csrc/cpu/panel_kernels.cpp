// Picks the CPU panel kernels for this processor: AVX-512, AVX2 or the portable build.
#include <ATen/Version.h>

#include <string>

#include "../panel.h"

namespace pretrain_mm::cpu {

namespace DEFAULT { template <typename T> PanelKernels<T> kernels(); }
#if defined(__x86_64__) || defined(_M_X64)
namespace AVX2 { template <typename T> PanelKernels<T> kernels(); }
namespace AVX512 { template <typename T> PanelKernels<T> kernels(); }
#endif

template <typename T>
const PanelKernels<T>& kernels() {
  // ATen's own choice, which honours ATEN_CPU_CAPABILITY=default|avx2|avx512.
  static const PanelKernels<T> chosen = [] {
#if defined(__x86_64__) || defined(_M_X64)
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512") return AVX512::kernels<T>();
    if (capability == "AVX2") return AVX2::kernels<T>();
#endif
    return DEFAULT::kernels<T>();
  }();
  return chosen;
}

template const PanelKernels<float>& kernels<float>();
template const PanelKernels<double>& kernels<double>();

}  // namespace pretrain_mm::cpu
