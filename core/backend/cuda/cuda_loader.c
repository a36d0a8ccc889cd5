/* core/backend/cuda/cuda_loader.c: dlopen the driver (libcuda.so.1), NVRTC and cuBLAS at run time
 * and fill the function tables of cuda_internal.h. Nothing is linked at build time, so the same
 * binary runs on machines without a GPU (the CUDA backend just reports itself unavailable). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

hyb_cu_api hyb_cu;
hyb_nvrtc_api hyb_nvrtc;
hyb_cublas_api hyb_cublas;

static void *g_cuda_lib, *g_nvrtc_lib, *g_cublas_lib, *g_cublaslt_lib;

/* HYB_CUDA_EMULATE=1: all three APIs come from the emulation library (cuda_emu_select.c) */
int hyb_cuda_emulated(void);
void *hyb_cuda_emu_open(void);
static int g_nvrtc_version;

#define HYB_STR_(x) #x
#define HYB_STR(x) HYB_STR_(x) /* after macro expansion: cuMemAlloc -> "cuMemAlloc_v2" */

/* dlopen the first of `names` that loads, trying each bare (the loader's search path) and then
 * in $CUDA_HOME/lib64 and /usr/local/cuda/lib64. */
static void *open_first(const char *const *names, int flags, char *tried, size_t ntried) {
    const char *home = getenv("CUDA_HOME");
    const char *dirs[3] = {NULL, home && *home ? home : NULL, "/usr/local/cuda"};
    tried[0] = '\0';
    for (int d = 0; d < 3; d++) {
        if (d > 0 && !dirs[d]) continue;
        for (int i = 0; names[i]; i++) {
            char path[1024];
            if (d == 0)
                snprintf(path, sizeof path, "%s", names[i]);
            else
                snprintf(path, sizeof path, "%s/lib64/%s", dirs[d], names[i]);
            void *h = dlopen(path, flags);
            if (h) return h;
            if (d == 0) {
                size_t k = strlen(tried);
                snprintf(tried + k, ntried - k, "%s%s", k ? ", " : "", names[i]);
            }
        }
    }
    return NULL;
}

/* dlsym every field of a table; the error names the first missing symbol. */
/* Fill the function table `fields` with the n symbols of lib; on a missing one lib is closed. */
static int resolve(void *lib, const char *libname, void **fields, const char *const *syms, int n) {
    for (int i = 0; i < n; i++) {
        fields[i] = dlsym(lib, syms[i]);
        if (!fields[i]) {
            int rc = hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: missing symbol %s (library too old?)",
                                   libname, syms[i]);
            dlclose(lib);
            return rc;
        }
    }
    return HYB_OK;
}

int hyb_cuda_nvrtc_load(void) {
    if (g_nvrtc_lib) return HYB_OK;
    static const char *const names[] = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so", NULL};
    static const char *const syms[] = {
        HYB_STR(nvrtcVersion),        HYB_STR(nvrtcGetErrorString),
        HYB_STR(nvrtcGetNumSupportedArchs), HYB_STR(nvrtcGetSupportedArchs),
        HYB_STR(nvrtcCreateProgram),  HYB_STR(nvrtcDestroyProgram),
        HYB_STR(nvrtcCompileProgram), HYB_STR(nvrtcGetProgramLogSize),
        HYB_STR(nvrtcGetProgramLog),  HYB_STR(nvrtcGetPTXSize),
        HYB_STR(nvrtcGetPTX),         HYB_STR(nvrtcGetCUBINSize),
        HYB_STR(nvrtcGetCUBIN)};
    _Static_assert(sizeof syms / sizeof *syms * sizeof(void *) == sizeof(hyb_nvrtc_api),
                   "nvrtc symbol list and table differ");
    char tried[512];
    if (hyb_cuda_emulated() && !hyb_cuda_emu_open()) return HYB_ERR_UNSUPPORTED;
    void *lib = hyb_cuda_emulated() ? hyb_cuda_emu_open()
                                    : open_first(names, RTLD_NOW | RTLD_LOCAL, tried, sizeof tried);
    if (!lib)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "no NVRTC found (tried %s, also in $CUDA_HOME/lib64): CUDA kernels "
                             "cannot be compiled",
                             tried);
    hyb_nvrtc_api api;
    HYB_TRY(resolve(lib, "libnvrtc", (void **)&api, syms, (int)(sizeof syms / sizeof *syms)));
    int major = 0, minor = 0;
    if (api.nvrtcVersion(&major, &minor) != NVRTC_SUCCESS) {
        dlclose(lib);
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "libnvrtc: nvrtcVersion failed");
    }
    hyb_nvrtc = api;
    g_nvrtc_version = major * 1000 + minor * 10;
    g_nvrtc_lib = lib;
    return HYB_OK;
}

int hyb_cuda_nvrtc_version(void) {
    return g_nvrtc_version;
}

static int load_driver(void) {
    if (g_cuda_lib) return HYB_OK;
    static const char *const names[] = {"libcuda.so.1", NULL}; /* never the toolkit's stub */
    static const char *const syms[] = {
        HYB_STR(cuInit),           HYB_STR(cuDriverGetVersion),  HYB_STR(cuGetErrorName),
        HYB_STR(cuGetErrorString), HYB_STR(cuDeviceGetCount),    HYB_STR(cuDeviceGet),
        HYB_STR(cuDeviceGetName),  HYB_STR(cuDeviceGetAttribute),
        HYB_STR(cuDevicePrimaryCtxRetain), HYB_STR(cuDevicePrimaryCtxRelease),
        HYB_STR(cuCtxSetCurrent),  HYB_STR(cuStreamCreate),      HYB_STR(cuStreamDestroy),
        HYB_STR(cuStreamSynchronize), HYB_STR(cuMemAlloc),       HYB_STR(cuMemFree),
        HYB_STR(cuMemGetInfo),     HYB_STR(cuMemcpyHtoDAsync),   HYB_STR(cuMemcpyDtoHAsync),
        HYB_STR(cuMemcpyDtoDAsync), HYB_STR(cuMemsetD8Async),    HYB_STR(cuModuleLoadData),
        HYB_STR(cuModuleUnload),   HYB_STR(cuModuleGetFunction), HYB_STR(cuLaunchKernel),
        /* graphs: in every driver since CUDA 10; cuGraphInstantiate is the header's name for
         * cuGraphInstantiateWithFlags (CUDA 12+), cuStreamBeginCapture for its _v2 */
        HYB_STR(cuStreamBeginCapture), HYB_STR(cuStreamEndCapture), HYB_STR(cuGraphInstantiate),
        HYB_STR(cuGraphLaunch),    HYB_STR(cuGraphExecDestroy),  HYB_STR(cuGraphDestroy)};
    _Static_assert(sizeof syms / sizeof *syms * sizeof(void *) == sizeof(hyb_cu_api),
                   "driver symbol list and table differ");
    /* only the system loader path: $CUDA_HOME/lib64/stubs/libcuda.so is a link-time stub */
    if (hyb_cuda_emulated() && !hyb_cuda_emu_open()) return HYB_ERR_UNSUPPORTED;
    void *lib = hyb_cuda_emulated() ? hyb_cuda_emu_open() : dlopen(names[0], RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "no CUDA driver found (libcuda.so.1 is not on the loader path: no NVIDIA driver installed)");
    hyb_cu_api api;
    HYB_TRY(resolve(lib, "libcuda.so.1", (void **)&api, syms, (int)(sizeof syms / sizeof *syms)));
    hyb_cu = api;
    g_cuda_lib = lib;
    return HYB_OK;
}

static int load_cublas(void) {
    if (g_cublas_lib) return HYB_OK;
    static const char *const lt_names[] = {"libcublasLt.so.13", "libcublasLt.so.12",
                                           "libcublasLt.so", NULL};
    static const char *const names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so",
                                        NULL};
    static const char *const syms[] = {
        HYB_STR(cublasCreate),      HYB_STR(cublasDestroy),         HYB_STR(cublasSetStream),
        HYB_STR(cublasSetMathMode), HYB_STR(cublasGetStatusString), HYB_STR(cublasSgemm),
        HYB_STR(cublasGemmEx),      HYB_STR(cublasSetWorkspace)};
    _Static_assert(sizeof syms / sizeof *syms * sizeof(void *) == sizeof(hyb_cublas_api),
                   "cuBLAS symbol list and table differ");
    char tried[512];
    /* libcublas needs libcublasLt: load it first (global) so the dependency resolves even when
     * only $CUDA_HOME/lib64 has it */
    if (hyb_cuda_emulated() && !hyb_cuda_emu_open()) return HYB_ERR_UNSUPPORTED;
    if (!g_cublaslt_lib && !hyb_cuda_emulated())
        g_cublaslt_lib = open_first(lt_names, RTLD_NOW | RTLD_GLOBAL, tried, sizeof tried);
    void *lib = hyb_cuda_emulated() ? hyb_cuda_emu_open()
                                    : open_first(names, RTLD_NOW | RTLD_LOCAL, tried, sizeof tried);
    if (!lib)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "no cuBLAS found (tried %s, also in $CUDA_HOME/lib64)", tried);
    hyb_cublas_api api;
    HYB_TRY(resolve(lib, "libcublas", (void **)&api, syms, (int)(sizeof syms / sizeof *syms)));
    hyb_cublas = api;
    g_cublas_lib = lib;
    return HYB_OK;
}

int hyb_cuda_load(void) {
    HYB_TRY(load_driver());
    HYB_TRY(hyb_cuda_nvrtc_load());
    return load_cublas();
}

int hyb_cu_check(CUresult r, const char *call, const char *file, int line) {
    if (r == CUDA_SUCCESS) return HYB_OK;
    const char *name = NULL, *str = NULL;
    if (hyb_cu.cuGetErrorName) hyb_cu.cuGetErrorName(r, &name);
    if (hyb_cu.cuGetErrorString) hyb_cu.cuGetErrorString(r, &str);
    return hyb_error_set(r == CUDA_ERROR_OUT_OF_MEMORY ? HYB_ERR_NOMEM : HYB_ERR,
                         "%s failed: %s (%s) at %s:%d", call, name ? name : "CUDA error",
                         str ? str : "unknown", file, line);
}

int hyb_nvrtc_check(nvrtcResult r, const char *call, const char *file, int line) {
    if (r == NVRTC_SUCCESS) return HYB_OK;
    const char *str = hyb_nvrtc.nvrtcGetErrorString ? hyb_nvrtc.nvrtcGetErrorString(r) : NULL;
    return hyb_error_set(HYB_ERR, "%s failed: %s (%d) at %s:%d", call, str ? str : "NVRTC error",
                         (int)r, file, line);
}

int hyb_cublas_check(cublasStatus_t r, const char *call, const char *file, int line) {
    if (r == CUBLAS_STATUS_SUCCESS) return HYB_OK;
    const char *str = hyb_cublas.cublasGetStatusString ? hyb_cublas.cublasGetStatusString(r) : NULL;
    return hyb_error_set(r == CUBLAS_STATUS_ALLOC_FAILED ? HYB_ERR_NOMEM : HYB_ERR,
                         "%s failed: %s (%d) at %s:%d", call, str ? str : "cuBLAS error", (int)r,
                         file, line);
}
