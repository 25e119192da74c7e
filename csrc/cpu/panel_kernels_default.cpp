// CPU panel kernels for any processor: ATen's portable vector code.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "panel_kernels_impl.h"
