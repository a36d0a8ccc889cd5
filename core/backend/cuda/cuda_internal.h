/* core/backend/cuda/cuda_internal.h: the dlopen'ed function tables and the check macros, shared
 * by the files of core/backend/cuda (they include the CUDA headers; nothing else does).
 *
 * The function pointer types come from the headers' own prototypes (__typeof__), so a wrong
 * signature is a compile error. Fields are named after the API call; where the headers map a name
 * to a versioned symbol (cuMemAlloc -> cuMemAlloc_v2, cublasCreate -> cublasCreate_v2) the field,
 * the call and the dlsym'ed symbol all get the versioned name. */
#ifndef HYB_CUDA_INTERNAL_H
#define HYB_CUDA_INTERNAL_H
#include <cuda.h>
#include <cublas_v2.h>
#include <nvrtc.h>

#include "backend/cuda/cuda.h"
#include "hyb/common.h"

#define HYB_CU_FN(name) __typeof__(&name) name;

typedef struct hyb_cu_api {
    HYB_CU_FN(cuInit)
    HYB_CU_FN(cuDriverGetVersion)
    HYB_CU_FN(cuGetErrorName)
    HYB_CU_FN(cuGetErrorString)
    HYB_CU_FN(cuDeviceGetCount)
    HYB_CU_FN(cuDeviceGet)
    HYB_CU_FN(cuDeviceGetName)
    HYB_CU_FN(cuDeviceGetAttribute)
    HYB_CU_FN(cuDevicePrimaryCtxRetain)
    HYB_CU_FN(cuDevicePrimaryCtxRelease)
    HYB_CU_FN(cuCtxSetCurrent)
    HYB_CU_FN(cuStreamCreate)
    HYB_CU_FN(cuStreamDestroy)
    HYB_CU_FN(cuStreamSynchronize)
    HYB_CU_FN(cuMemAlloc)
    HYB_CU_FN(cuMemFree)
    HYB_CU_FN(cuMemGetInfo)
    HYB_CU_FN(cuMemcpyHtoDAsync)
    HYB_CU_FN(cuMemcpyDtoHAsync)
    HYB_CU_FN(cuMemcpyDtoDAsync)
    HYB_CU_FN(cuMemsetD8Async)
    HYB_CU_FN(cuModuleLoadData)
    HYB_CU_FN(cuModuleUnload)
    HYB_CU_FN(cuModuleGetFunction)
    HYB_CU_FN(cuLaunchKernel)
    /* CUDA graphs (cuda_graph.c): stream capture, instantiate, replay */
    HYB_CU_FN(cuStreamBeginCapture)
    HYB_CU_FN(cuStreamEndCapture)
    HYB_CU_FN(cuGraphInstantiate)
    HYB_CU_FN(cuGraphLaunch)
    HYB_CU_FN(cuGraphExecDestroy)
    HYB_CU_FN(cuGraphDestroy)
} hyb_cu_api;

typedef struct hyb_nvrtc_api {
    HYB_CU_FN(nvrtcVersion)
    HYB_CU_FN(nvrtcGetErrorString)
    HYB_CU_FN(nvrtcGetNumSupportedArchs)
    HYB_CU_FN(nvrtcGetSupportedArchs)
    HYB_CU_FN(nvrtcCreateProgram)
    HYB_CU_FN(nvrtcDestroyProgram)
    HYB_CU_FN(nvrtcCompileProgram)
    HYB_CU_FN(nvrtcGetProgramLogSize)
    HYB_CU_FN(nvrtcGetProgramLog)
    HYB_CU_FN(nvrtcGetPTXSize)
    HYB_CU_FN(nvrtcGetPTX)
    HYB_CU_FN(nvrtcGetCUBINSize)
    HYB_CU_FN(nvrtcGetCUBIN)
} hyb_nvrtc_api;

typedef struct hyb_cublas_api {
    HYB_CU_FN(cublasCreate)
    HYB_CU_FN(cublasDestroy)
    HYB_CU_FN(cublasSetStream)
    HYB_CU_FN(cublasSetMathMode)
    HYB_CU_FN(cublasGetStatusString)
    HYB_CU_FN(cublasSgemm)
    HYB_CU_FN(cublasGemmEx)
    HYB_CU_FN(cublasSetWorkspace) /* a fixed workspace: cuBLAS inside a graph capture */
} hyb_cublas_api;

extern hyb_cu_api hyb_cu;
extern hyb_nvrtc_api hyb_nvrtc;
extern hyb_cublas_api hyb_cublas;

/* Turn a failed call into a hyb_status with the error set: "<call> failed: <NAME> (<string>) at
 * file:line". They return HYB_OK for success. */
int hyb_cu_check(CUresult r, const char *call, const char *file, int line);
int hyb_nvrtc_check(nvrtcResult r, const char *call, const char *file, int line);
int hyb_cublas_check(cublasStatus_t r, const char *call, const char *file, int line);

/* The check-macro family: evaluate a CU / NVRTC / cuBLAS call; on failure set the error (naming
 * the call, the library's error string, file:line) and return the status from the enclosing
 * function (which returns int). The *_GOTO forms store the status in `rc` and jump to `label`. */
#define CU_CHECK(call)                                                                             \
    do {                                                                                           \
        int cu_rc_ = hyb_cu_check((call), #call, __FILE__, __LINE__);                              \
        if (cu_rc_ != HYB_OK) return cu_rc_;                                                       \
    } while (0)
#define NVRTC_CHECK(call)                                                                          \
    do {                                                                                           \
        int cu_rc_ = hyb_nvrtc_check((call), #call, __FILE__, __LINE__);                           \
        if (cu_rc_ != HYB_OK) return cu_rc_;                                                       \
    } while (0)
#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        int cu_rc_ = hyb_cublas_check((call), #call, __FILE__, __LINE__);                          \
        if (cu_rc_ != HYB_OK) return cu_rc_;                                                       \
    } while (0)
#define CU_CHECK_GOTO(call, rc, label)                                                             \
    do {                                                                                           \
        if (((rc) = hyb_cu_check((call), #call, __FILE__, __LINE__)) != HYB_OK) goto label;        \
    } while (0)
#define NVRTC_CHECK_GOTO(call, rc, label)                                                          \
    do {                                                                                           \
        if (((rc) = hyb_nvrtc_check((call), #call, __FILE__, __LINE__)) != HYB_OK) goto label;     \
    } while (0)

/* Device state (cuda_device.c). */
typedef struct hyb_cuda_state {
    int ready;
    int ordinal, arch, n_sm;
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;
    cublasHandle_t blas;
    char name[128];
} hyb_cuda_state;
extern hyb_cuda_state hyb_cuda_g;
/* Make the context current on this thread (cheap after the first call per thread). */
int hyb_cuda_bind(void);

/* A kernel of an embedded file, compiled and loaded on first use (cuda_ops.c). NULL + error. */
CUfunction hyb_cuda_function(const char *file, const char *kernel);
/* Launch on the backend stream; the error names the kernel. */
int hyb_cuda_launch(CUfunction f, const char *kernel, unsigned gx, unsigned gy, unsigned bx,
                    void **args);
#endif
