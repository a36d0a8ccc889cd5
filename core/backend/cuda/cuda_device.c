/* core/backend/cuda/cuda_device.c: device initialisation, the stream, memory transfers and the
 * caching memory pool. One device per process (the first hyb_cuda_init wins). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

hyb_cuda_state hyb_cuda_g;

/* Make the device's context current on the calling thread (the driver's current context is per
 * thread; OpenMP or runtime threads may call in). Once per thread. */
int hyb_cuda_bind(void) {
    static _Thread_local CUcontext bound;
    if (!hyb_cuda_g.ready)
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "CUDA is not initialised (hyb_cuda_init)");
    if (bound == hyb_cuda_g.ctx) return HYB_OK;
    CU_CHECK(hyb_cu.cuCtxSetCurrent(hyb_cuda_g.ctx));
    bound = hyb_cuda_g.ctx;
    return HYB_OK;
}

int hyb_cuda_emulated(void); /* cuda_emu_select.c */

/* ---- caching pool -------------------------------------------------------------------------- */
/* Size classes: 256 B, 512 B, ... 32 MiB (powers of two), then multiples of 2 MiB. A freed block
 * goes to the free list of its class; an allocation takes a block of exactly its class size. */
#define POOL_MIN_SHIFT 8
#define POOL_POW2_MAX_SHIFT 25 /* 32 MiB */
#define POOL_LARGE_STEP ((size_t)2 << 20)
#define POOL_NCLASS (POOL_POW2_MAX_SHIFT - POOL_MIN_SHIFT + 2) /* + one list for large blocks */
#define POOL_HASH 4096

typedef struct pool_block {
    CUdeviceptr ptr;
    size_t size; /* class size actually allocated */
    struct pool_block *next;
} pool_block;

static struct {
    pthread_mutex_t mu;
    pool_block *free_lists[POOL_NCLASS];
    pool_block *live[POOL_HASH]; /* handed-out blocks by pointer */
    size_t in_use, cached;
} g_pool = {.mu = PTHREAD_MUTEX_INITIALIZER};

static size_t class_size(size_t n, int *cls) {
    if (n <= ((size_t)1 << POOL_POW2_MAX_SHIFT)) {
        int s = POOL_MIN_SHIFT;
        while (((size_t)1 << s) < n)
            s++;
        *cls = s - POOL_MIN_SHIFT;
        return (size_t)1 << s;
    }
    *cls = POOL_NCLASS - 1;
    return (n + POOL_LARGE_STEP - 1) / POOL_LARGE_STEP * POOL_LARGE_STEP;
}
static unsigned live_hash(CUdeviceptr p) {
    return (unsigned)((p >> 8) ^ (p >> 20)) & (POOL_HASH - 1);
}

/* with the lock held */
static void pool_trim_locked(void) {
    for (int c = 0; c < POOL_NCLASS; c++) {
        pool_block *b = g_pool.free_lists[c];
        while (b) {
            pool_block *nx = b->next;
            hyb_cu.cuMemFree(b->ptr);
            g_pool.cached -= b->size;
            free(b);
            b = nx;
        }
        g_pool.free_lists[c] = NULL;
    }
}

void hyb_cuda_pool_trim(void) {
    if (!hyb_cuda_g.ready) return;
    pthread_mutex_lock(&g_pool.mu);
    pool_trim_locked();
    pthread_mutex_unlock(&g_pool.mu);
}

void hyb_cuda_pool_stats(size_t *in_use, size_t *cached) {
    pthread_mutex_lock(&g_pool.mu);
    if (in_use) *in_use = g_pool.in_use;
    if (cached) *cached = g_pool.cached;
    pthread_mutex_unlock(&g_pool.mu);
}

void *hyb_cuda_malloc(size_t nbytes) {
    if (hyb_cuda_bind() != HYB_OK) {
        hyb_error_wrap(HYB_ERR_UNSUPPORTED, "hyb_cuda_malloc(%zu)", nbytes);
        return NULL;
    }
    int cls;
    size_t sz = class_size(nbytes ? nbytes : 1, &cls);
    /* emulated: blocks of the exact size asked for (still cached), so AddressSanitizer on the
     * emulated kernels sees a read or write one element past a buffer instead of the class's
     * rounding slack hiding it */
    if (hyb_cuda_emulated()) sz = nbytes ? nbytes : 1;
    pthread_mutex_lock(&g_pool.mu);
    pool_block **pp = &g_pool.free_lists[cls], *b = NULL;
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->size == sz) {
            b = *pp;
            *pp = b->next;
            g_pool.cached -= sz;
            break;
        }
    if (!b) {
        b = malloc(sizeof *b);
        if (!b) {
            pthread_mutex_unlock(&g_pool.mu);
            hyb_error_set(HYB_ERR_NOMEM, "hyb_cuda_malloc: host out of memory");
            return NULL;
        }
        b->size = sz;
        CUresult r = hyb_cu.cuMemAlloc(&b->ptr, sz);
        if (r == CUDA_ERROR_OUT_OF_MEMORY) { /* give the cache back and retry once */
            pool_trim_locked();
            r = hyb_cu.cuMemAlloc(&b->ptr, sz);
        }
        if (r != CUDA_SUCCESS) {
            free(b);
            const size_t used = g_pool.in_use, cached = g_pool.cached;
            pthread_mutex_unlock(&g_pool.mu);
            size_t fr = 0, tot = 0;
            hyb_cu.cuMemGetInfo(&fr, &tot);
            if (r == CUDA_ERROR_OUT_OF_MEMORY)
                hyb_error_set(HYB_ERR_NOMEM,
                              "CUDA out of memory: requested %zu bytes (%.1f MiB); device %d (%s) "
                              "has %.1f MiB free of %.1f MiB (pool: %.1f MiB in use, %.1f MiB "
                              "cached)",
                              nbytes, sz / 1048576.0, hyb_cuda_g.ordinal, hyb_cuda_g.name,
                              fr / 1048576.0, tot / 1048576.0, used / 1048576.0,
                              cached / 1048576.0);
            else
                hyb_cu_check(r, "cuMemAlloc", __FILE__, __LINE__);
            return NULL;
        }
    }
    unsigned h = live_hash(b->ptr);
    b->next = g_pool.live[h];
    g_pool.live[h] = b;
    g_pool.in_use += sz;
    pthread_mutex_unlock(&g_pool.mu);
    return (void *)(uintptr_t)b->ptr;
}

void hyb_cuda_free(void *p) {
    if (!p) return;
    const CUdeviceptr d = (CUdeviceptr)(uintptr_t)p;
    pthread_mutex_lock(&g_pool.mu);
    pool_block **pp = &g_pool.live[live_hash(d)];
    while (*pp && (*pp)->ptr != d)
        pp = &(*pp)->next;
    pool_block *b = *pp;
    HYB_ASSERT(b != NULL); /* freeing a pointer this pool did not hand out */
    *pp = b->next;
    g_pool.in_use -= b->size;
    int cls;
    class_size(b->size, &cls);
    b->next = g_pool.free_lists[cls];
    g_pool.free_lists[cls] = b;
    g_pool.cached += b->size;
    pthread_mutex_unlock(&g_pool.mu);
}

/* ---- transfers ----------------------------------------------------------------------------- */
int hyb_cuda_upload(void *dst, const void *src, size_t n) {
    if (!n) return HYB_OK;
    HYB_TRY(hyb_cuda_bind());
    CU_CHECK(hyb_cu.cuMemcpyHtoDAsync((CUdeviceptr)(uintptr_t)dst, src, n, hyb_cuda_g.stream));
    /* the host buffer may be reused right after return (callers pass stack/temporary memory) */
    CU_CHECK(hyb_cu.cuStreamSynchronize(hyb_cuda_g.stream));
    return HYB_OK;
}
int hyb_cuda_download(void *dst, const void *src, size_t n) {
    if (!n) return HYB_OK;
    HYB_TRY(hyb_cuda_bind());
    CU_CHECK(hyb_cu.cuMemcpyDtoHAsync(dst, (CUdeviceptr)(uintptr_t)src, n, hyb_cuda_g.stream));
    CU_CHECK(hyb_cu.cuStreamSynchronize(hyb_cuda_g.stream));
    return HYB_OK;
}
int hyb_cuda_memset0(void *p, size_t n) {
    if (!n) return HYB_OK;
    HYB_TRY(hyb_cuda_bind());
    CU_CHECK(hyb_cu.cuMemsetD8Async((CUdeviceptr)(uintptr_t)p, 0, n, hyb_cuda_g.stream));
    return HYB_OK;
}
int hyb_cuda_copy(void *dst, const void *src, size_t n) {
    if (!n || dst == src) return HYB_OK;
    HYB_TRY(hyb_cuda_bind());
    CU_CHECK(hyb_cu.cuMemcpyDtoDAsync((CUdeviceptr)(uintptr_t)dst, (CUdeviceptr)(uintptr_t)src, n,
                                      hyb_cuda_g.stream));
    return HYB_OK;
}
int hyb_cuda_sync(void) {
    if (!hyb_cuda_g.ready) return HYB_OK;
    CU_CHECK(hyb_cu.cuStreamSynchronize(hyb_cuda_g.stream));
    return HYB_OK;
}

/* ---- init ---------------------------------------------------------------------------------- */
int hyb_cuda_ready(void) {
    return hyb_cuda_g.ready;
}
int hyb_cuda_arch(void) {
    return hyb_cuda_g.ready ? hyb_cuda_g.arch : 0;
}

int hyb_cuda_register_backend(void); /* cuda_ops.c */
void hyb_cuda_ops_reset(void);       /* cuda_ops.c */

int hyb_cuda_init(int ordinal) {
    if (hyb_cuda_g.ready) return HYB_OK;
    HYB_TRY(hyb_cuda_load());
    hyb_cuda_state s;
    memset(&s, 0, sizeof s);
    s.ordinal = ordinal;
    CU_CHECK(hyb_cu.cuInit(0));
    int n = 0;
    CU_CHECK(hyb_cu.cuDeviceGetCount(&n));
    if (n <= 0)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "the CUDA driver found no GPU");
    if (ordinal < 0 || ordinal >= n)
        return hyb_error_set(HYB_ERR_ARG, "CUDA device %d does not exist (%d device%s present)",
                             ordinal, n, n == 1 ? "" : "s");
    CU_CHECK(hyb_cu.cuDeviceGet(&s.dev, ordinal));
    CU_CHECK(hyb_cu.cuDeviceGetName(s.name, (int)sizeof s.name - 1, s.dev));
    int major = 0, minor = 0;
    CU_CHECK(hyb_cu.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, s.dev));
    CU_CHECK(hyb_cu.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, s.dev));
    CU_CHECK(hyb_cu.cuDeviceGetAttribute(&s.n_sm, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, s.dev));
    s.arch = major * 10 + minor;
    CU_CHECK(hyb_cu.cuDevicePrimaryCtxRetain(&s.ctx, s.dev));
    int rc = hyb_cu_check(hyb_cu.cuCtxSetCurrent(s.ctx), "cuCtxSetCurrent", __FILE__, __LINE__);
    if (rc == HYB_OK)
        rc = hyb_cu_check(hyb_cu.cuStreamCreate(&s.stream, CU_STREAM_NON_BLOCKING),
                          "cuStreamCreate", __FILE__, __LINE__);
    if (rc == HYB_OK)
        rc = hyb_cublas_check(hyb_cublas.cublasCreate(&s.blas), "cublasCreate", __FILE__,
                              __LINE__);
    if (rc == HYB_OK)
        rc = hyb_cublas_check(hyb_cublas.cublasSetStream(s.blas, (cudaStream_t)s.stream),
                              "cublasSetStream", __FILE__, __LINE__);
    /* exact f32 GEMMs (no TF32) unless a caller asks for the bf16 path explicitly */
    if (rc == HYB_OK)
        rc = hyb_cublas_check(hyb_cublas.cublasSetMathMode(s.blas, CUBLAS_DEFAULT_MATH),
                              "cublasSetMathMode", __FILE__, __LINE__);
    if (rc != HYB_OK) {
        if (s.blas) hyb_cublas.cublasDestroy(s.blas);
        if (s.stream) hyb_cu.cuStreamDestroy(s.stream);
        hyb_cu.cuDevicePrimaryCtxRelease(s.dev);
        return rc;
    }
    s.ready = 1;
    hyb_cuda_g = s;
    HYB_TRY(hyb_cuda_bind());
    hyb_log(HYB_LOG_INFO, "CUDA device %d: %s (sm_%d, %d SMs)", ordinal, s.name, s.arch, s.n_sm);
    return hyb_cuda_register_backend();
}

static int provider_open(int ordinal, const hyb_backend **out) {
    if (hyb_cuda_g.ready && hyb_cuda_g.ordinal != ordinal)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "this process already uses cuda:%d (one CUDA device per process)",
                             hyb_cuda_g.ordinal);
    HYB_TRY(hyb_cuda_init(ordinal));
    *out = hyb_backend_cuda();
    return HYB_OK;
}

static int provider_probe(void) {
    HYB_TRY(hyb_cuda_load());
    CU_CHECK(hyb_cu.cuInit(0));
    int n = 0;
    CU_CHECK(hyb_cu.cuDeviceGetCount(&n));
    if (n <= 0) return hyb_error_set(HYB_ERR_UNSUPPORTED, "the CUDA driver found no GPU");
    return n;
}

const hyb_backend_provider hyb_cuda_provider = {
    .kind = "cuda", .device = HYB_DEV_CUDA, .open = provider_open, .probe = provider_probe};

void hyb_cuda_shutdown(void) {
    if (!hyb_cuda_g.ready) return;
    hyb_cu.cuStreamSynchronize(hyb_cuda_g.stream);
    hyb_cuda_pool_trim();
    hyb_cublas.cublasDestroy(hyb_cuda_g.blas);
    hyb_cu.cuStreamDestroy(hyb_cuda_g.stream);
    hyb_cu.cuDevicePrimaryCtxRelease(hyb_cuda_g.dev);
    hyb_cuda_ops_reset();
    hyb_cuda_g.ready = 0;
}
