// CPU panel kernels for x86-64 processors with AVX-512 (selected at run time).
//
// The target is set by pragma rather than by compiler flags so that the other sources of
// the extension stay portable. Only what comes after the pragma is compiled for AVX-512; the
// headers shared with portable code come before it (panel_kernels_headers.h says why).
#if defined(__x86_64__) || defined(_M_X64)
#include "../panel_kernels_headers.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "avx2_feature_macros.h"
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "../panel_kernels_impl.h"
#endif
