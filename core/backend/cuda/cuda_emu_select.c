/* core/backend/cuda/cuda_emu_select.c: with HYB_CUDA_EMULATE=1, cuda_loader.c opens the CUDA
 * emulation (libhyb_cuda_emu.so, core/backend/cuda/emu) instead of libcuda.so.1, libnvrtc and
 * libcublas: one library that serves all three APIs on the host (docs/CUDA.md "Emulation").
 * HYB_CUDA_EMU_LIB overrides its path (default: the build tree's). */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

#ifndef HYB_CUDA_EMU_LIB
#define HYB_CUDA_EMU_LIB "libhyb_cuda_emu.so"
#endif

int hyb_cuda_emulated(void) {
    const char *e = getenv("HYB_CUDA_EMULATE");
    return e && *e && strcmp(e, "0") != 0;
}

void *hyb_cuda_emu_open(void) {
    static void *lib;
    if (lib) return lib;
    const char *p = getenv("HYB_CUDA_EMU_LIB");
    if (!p || !*p) p = HYB_CUDA_EMU_LIB;
    lib = dlopen(p, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        hyb_error_set(HYB_ERR_UNSUPPORTED,
                      "HYB_CUDA_EMULATE is set but the CUDA emulation library %s does not load "
                      "(%s)",
                      p, dlerror());
    return lib;
}
