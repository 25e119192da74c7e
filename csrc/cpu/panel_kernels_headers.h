// Every header that the CPU panel kernels (panel_kernels_impl.h) and ATen's vector headers
// include, except the vector headers themselves: what a SIMD build must include *before*
// its `#pragma GCC target`.
//
// Why. The SIMD builds (simd/panel_kernels_{avx2,avx512}.cpp) enable AVX2 or AVX-512 with a
// target pragma, which applies to every function declared after it, inline functions of
// headers and their template instances included. Such a function, when not inlined, is
// emitted as a weak symbol in every object that uses it, and the linker keeps one of the
// copies for all callers in the library. Had a SIMD object's copy of, say,
// c10::SmallVector<double>::assign or ScalarMath::exp been kept, portable code would run
// AVX2 instructions on a processor without them. Which copy is kept depends on link order,
// so that must not matter; two rules make sure no SIMD copy of a shared function exists:
//
//  - code that must be compiled per capability lives in a namespace named after it
//    (CPU_CAPABILITY: AVX2, AVX512; DEFAULT in the portable build): our kernels in
//    pretrain_mm::cpu::CPU_CAPABILITY, numerics.h's formulas in pretrain_mm::CPU_CAPABILITY,
//    ATen's at::vec::CPU_CAPABILITY. Its symbols differ per build; nothing to choose from.
//  - everything else (ATen, c10, the standard library) comes from this header, included
//    before the pragma and before the capability's feature macros (simd/avx2_feature_macros.h,
//    which also change what c10's Half.h compiles): it is compiled for the baseline x86-64 ISA,
//    the same code as in the portable objects, whichever copy the linker keeps. A baseline
//    function called from SIMD code is still inlined there and compiled with the SIMD target.
//
// csrc/tests/check_simd_symbols.py (ctest simd_symbols, run by .ci/cpp_gates.sh) checks the
// built objects, -O3 and -O0: a weak function in a SIMD object outside an AVX2/AVX512
// namespace must contain baseline instructions only. When a new torch's vector headers include
// a new header and that check fails, add the header here.
#pragma once

#include <ATen/NumericUtils.h>
#include <ATen/Parallel.h>
#include <ATen/native/Math.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/MathConstants.h>
#include <c10/util/TypeCast.h>
#include <c10/util/bit_cast.h>
#include <c10/util/complex.h>
#include <c10/util/copysign.h>
#include <c10/util/irange.h>
#include <c10/util/qint32.h>
#include <c10/util/qint8.h>
#include <c10/util/quint8.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <type_traits>
#include <utility>

#include "../panel.h"
