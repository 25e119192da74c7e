// The x86 feature macros of the AVX2 level, for the SIMD builds of the CPU kernels.
//
// GCC's target pragma enables the instructions but not the feature macros that sleef.h and
// ATen's vector headers test, so each SIMD source declares them, after its pragma, with this
// header (and adds its own level's on top).
#pragma once

#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __BMI__
#define __BMI__ 1
#endif
#ifndef __BMI2__
#define __BMI2__ 1
#endif
#ifndef __LZCNT__
#define __LZCNT__ 1
#endif
#ifndef __POPCNT__
#define __POPCNT__ 1
#endif
