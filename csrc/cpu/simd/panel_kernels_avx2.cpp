// CPU panel kernels for x86-64 processors with AVX2 and FMA (selected at run time).
//
// The target is set by pragma rather than by compiler flags so that the other sources of
// the extension stay portable. Only what comes after the pragma is compiled for AVX2; the
// headers shared with portable code come before it (panel_kernels_headers.h says why).
#if defined(__x86_64__) || defined(_M_X64)
#include "../panel_kernels_headers.h"

#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "avx2_feature_macros.h"
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "../panel_kernels_impl.h"
#endif
