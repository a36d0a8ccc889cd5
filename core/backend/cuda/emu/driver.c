/* core/backend/cuda/emu/driver.c: the CUDA driver API subset that core/backend/cuda uses, served
 * on the host (libhyb_cuda_emu.so, loaded instead of libcuda.so.1 when HYB_CUDA_EMULATE=1).
 *
 * One device ("hyb CUDA emulator"), compute capability HYB_CUDA_EMU_ARCH (default 80), a primary
 * context; device memory is host memory (posix_memalign, exact size, so AddressSanitizer sees
 * overruns of a cuMemAlloc block), limited to HYB_CUDA_EMU_MEM_MB (default 16384) so that an
 * impossible request is CUDA_ERROR_OUT_OF_MEMORY; every stream runs in order and synchronously
 * (each call has finished when it returns). A module is an emulated build (nvrtc_emu.c): the image
 * names a .so that is dlopen'ed; kernels are looked up by name; cuLaunchKernel runs the grid
 * block by block on fibers (runtime.c). A failed launch (deadlock, divergent warp operation,
 * __trap) returns CUDA_ERROR_LAUNCH_FAILED and prints the reason on stderr. */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_internal.h"

struct CUctx_st {
    int dummy;
};
struct CUstream_st {
    int dummy;
};
struct CUfunc_st {
    void (*entry)(void **);
    char name[256];
    int max_dyn_shared;
    struct CUfunc_st *next; /* the module's functions, freed with it (as the driver does) */
};
struct CUmod_st {
    void *dl;
    struct CUfunc_st *fns;
    struct CUmod_st *next; /* the context's modules: they live until unloaded, as in the driver */
};
static struct CUmod_st *g_mods;

static struct CUctx_st g_ctx;
static int g_init;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- settings ------------------------------------------------------------------------------ */
static int env_int(const char *name, int def) {
    const char *e = getenv(name);
    return e && *e ? atoi(e) : def;
}
int hyb_emu_order(void) {
    const char *e = getenv("HYB_CUDA_EMU_ORDER");
    if (!e || !*e || strcmp(e, "forward") == 0) return HYB_EMU_ORDER_FORWARD;
    if (strcmp(e, "reverse") == 0) return HYB_EMU_ORDER_REVERSE;
    if (strcmp(e, "random") == 0) return HYB_EMU_ORDER_RANDOM;
    fprintf(stderr, "hyb cuda emu: HYB_CUDA_EMU_ORDER=%s is not forward|reverse|random: forward\n", e);
    return HYB_EMU_ORDER_FORWARD;
}
uint64_t hyb_emu_seed(void) {
    const char *e = getenv("HYB_CUDA_EMU_SEED");
    uint64_t s = e && *e ? strtoull(e, NULL, 0) : 1;
    s = s * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    return s ? s : 1;
}
static int emu_arch(void) {
    int a = env_int("HYB_CUDA_EMU_ARCH", 80);
    return a >= 50 && a < 200 ? a : 80;
}
static size_t mem_total(void) {
    return (size_t)env_int("HYB_CUDA_EMU_MEM_MB", 16384) << 20;
}

/* ---- allocations (pointer -> size), for cuMemFree and cuMemGetInfo ------------------------- */
typedef struct {
    uintptr_t p;
    size_t n;
} slot;
static slot *g_tab;
static size_t g_cap, g_count, g_bytes;

static size_t h_ptr(uintptr_t p, size_t cap) {
    return (size_t)((p >> 4) * 0x9e3779b97f4a7c15ull) & (cap - 1);
}
static int tab_put(uintptr_t p, size_t n) {
    if ((g_count + 1) * 2 > g_cap) {
        size_t nc = g_cap ? g_cap * 2 : 1024;
        slot *t = calloc(nc, sizeof *t);
        if (!t) return 0;
        for (size_t i = 0; i < g_cap; i++)
            if (g_tab[i].p) {
                size_t k = h_ptr(g_tab[i].p, nc);
                while (t[k].p) k = (k + 1) & (nc - 1);
                t[k] = g_tab[i];
            }
        free(g_tab);
        g_tab = t;
        g_cap = nc;
    }
    size_t k = h_ptr(p, g_cap);
    while (g_tab[k].p) k = (k + 1) & (g_cap - 1);
    g_tab[k].p = p;
    g_tab[k].n = n;
    g_count++;
    g_bytes += n;
    return 1;
}
static int tab_del(uintptr_t p) {
    if (!g_cap) return 0;
    size_t k = h_ptr(p, g_cap);
    while (g_tab[k].p && g_tab[k].p != p) k = (k + 1) & (g_cap - 1);
    if (!g_tab[k].p) return 0;
    g_bytes -= g_tab[k].n;
    g_count--;
    /* backward-shift deletion */
    size_t i = k;
    for (;;) {
        g_tab[i].p = 0;
        size_t j = i;
        for (;;) {
            j = (j + 1) & (g_cap - 1);
            if (!g_tab[j].p) return 1;
            size_t h = h_ptr(g_tab[j].p, g_cap);
            if ((j > i && (h <= i || h > j)) || (j < i && (h <= i && h > j))) break;
        }
        g_tab[i] = g_tab[j];
        i = j;
    }
}

/* ---- driver API ---------------------------------------------------------------------------- */
#define NEED_INIT()                                                                                \
    do {                                                                                           \
        if (!g_init) return CUDA_ERROR_NOT_INITIALIZED;                                            \
    } while (0)

CUresult cuInit(unsigned int flags) {
    (void)flags;
    g_init = 1;
    return CUDA_SUCCESS;
}
CUresult cuDriverGetVersion(int *v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = CUDA_VERSION;
    return CUDA_SUCCESS;
}

static const struct {
    CUresult r;
    const char *name, *str;
} g_errs[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE",
     "device kernel image is invalid (not an emulated module)"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED",
     "unspecified launch failure (emulated: see hyb_emu_last_error / stderr)"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
};
CUresult cuGetErrorName(CUresult r, const char **s) {
    for (size_t i = 0; i < sizeof g_errs / sizeof *g_errs; i++)
        if (g_errs[i].r == r) {
            *s = g_errs[i].name;
            return CUDA_SUCCESS;
        }
    *s = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}
CUresult cuGetErrorString(CUresult r, const char **s) {
    for (size_t i = 0; i < sizeof g_errs / sizeof *g_errs; i++)
        if (g_errs[i].r == r) {
            *s = g_errs[i].str;
            return CUDA_SUCCESS;
        }
    *s = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuDeviceGetCount(int *n) {
    NEED_INIT();
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    NEED_INIT();
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    NEED_INIT();
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "hyb CUDA emulator (host CPU, sm_%d)", emu_arch());
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d) {
    NEED_INIT();
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = emu_arch() / 10; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = emu_arch() % 10; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = env_int("HYB_CUDA_EMU_SMS", 4); break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = 64; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 0x7fffffff; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = 65535; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = 48 << 10; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = 227 << 10; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *v = 2048; break;
    default: *v = 0;
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) {
    NEED_INIT();
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *c = &g_ctx;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease(CUdevice d) {
    return d == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}
CUresult cuCtxSetCurrent(CUcontext c) {
    NEED_INIT();
    return c == NULL || c == &g_ctx ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}
CUresult cuCtxGetCurrent(CUcontext *c) {
    *c = &g_ctx;
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize(void) {
    return CUDA_SUCCESS;
}
CUresult cuStreamCreate(CUstream *s, unsigned int flags) {
    NEED_INIT();
    (void)flags;
    *s = calloc(1, sizeof(struct CUstream_st));
    return *s ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuStreamDestroy(CUstream s) {
    free(s);
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream s) {
    (void)s;
    return CUDA_SUCCESS; /* everything ran when it was queued */
}

CUresult cuMemAlloc(CUdeviceptr *dp, size_t n) {
    NEED_INIT();
    if (!dp) return CUDA_ERROR_INVALID_VALUE;
    if (n == 0) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    if (n > mem_total() - g_bytes) {
        pthread_mutex_unlock(&g_mu);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    void *p = NULL;
    if (posix_memalign(&p, 256, n) != 0 || !tab_put((uintptr_t)p, n)) {
        free(p);
        pthread_mutex_unlock(&g_mu);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_unlock(&g_mu);
    memset(p, 0xff, n); /* like fresh device memory: not zero (here a NaN pattern) */
    *dp = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}
CUresult cuMemFree(CUdeviceptr d) {
    if (!d) return CUDA_SUCCESS;
    pthread_mutex_lock(&g_mu);
    int ok = tab_del((uintptr_t)d);
    pthread_mutex_unlock(&g_mu);
    if (!ok) return CUDA_ERROR_INVALID_VALUE;
    free((void *)(uintptr_t)d);
    return CUDA_SUCCESS;
}
CUresult cuMemGetInfo(size_t *fr, size_t *tot) {
    pthread_mutex_lock(&g_mu);
    if (tot) *tot = mem_total();
    if (fr) *fr = mem_total() - g_bytes;
    pthread_mutex_unlock(&g_mu);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync(CUdeviceptr d, const void *s, size_t n, CUstream st) {
    (void)st;
    if (n) memcpy((void *)(uintptr_t)d, s, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync(void *d, CUdeviceptr s, size_t n, CUstream st) {
    (void)st;
    if (n) memcpy(d, (const void *)(uintptr_t)s, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) {
    (void)st;
    if (n) memmove((void *)(uintptr_t)d, (const void *)(uintptr_t)s, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoD(CUdeviceptr d, const void *s, size_t n) {
    return cuMemcpyHtoDAsync(d, s, n, NULL);
}
CUresult cuMemcpyDtoH(void *d, CUdeviceptr s, size_t n) {
    return cuMemcpyDtoHAsync(d, s, n, NULL);
}
CUresult cuMemcpyDtoD(CUdeviceptr d, CUdeviceptr s, size_t n) {
    return cuMemcpyDtoDAsync(d, s, n, NULL);
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream st) {
    (void)st;
    if (n) memset((void *)(uintptr_t)d, v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream st) {
    (void)st;
    unsigned int *p = (unsigned int *)(uintptr_t)d;
    for (size_t i = 0; i < n; i++) p[i] = v;
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadData(CUmodule *m, const void *image) {
    NEED_INIT();
    const hyb_emu_image *img = image;
    if (!img || memcmp(img->magic, HYB_EMU_IMAGE_MAGIC, 8) != 0 ||
        memchr(img->path, 0, sizeof img->path) == NULL)
        return CUDA_ERROR_INVALID_IMAGE;
    if (strcmp(img->sanitizer, hyb_emu_sanitize_mode()) != 0) {
        /* an uninstrumented module would run unchecked in a sanitizer process (and an
         * instrumented one does not load without the runtime): the caller recompiles */
        fprintf(stderr, "hyb cuda emu: module %s was built for sanitizer '%s', this process uses '%s'\n",
                img->path, img->sanitizer, hyb_emu_sanitize_mode());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    void *dl = dlopen(img->path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        fprintf(stderr, "hyb cuda emu: cannot load module %s: %s\n", img->path, dlerror());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    const int *abi = dlsym(dl, "hyb_emu_module_abi");
    const hyb_emu_api **rt = dlsym(dl, "hyb_emu_rt");
    if (!abi || !rt || *abi != HYB_EMU_ABI) {
        fprintf(stderr, "hyb cuda emu: module %s was built for another emulator ABI\n", img->path);
        dlclose(dl);
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *rt = &hyb_emu_api_table;
    struct CUmod_st *mod = calloc(1, sizeof *mod);
    if (!mod) {
        dlclose(dl);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    mod->dl = dl;
    pthread_mutex_lock(&g_mu);
    mod->next = g_mods;
    g_mods = mod;
    pthread_mutex_unlock(&g_mu);
    *m = mod;
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(CUmodule m) {
    if (!m) return CUDA_ERROR_INVALID_HANDLE;
    /* as with the driver, the module's CUfunction handles are invalid from now on; the .so
     * stays mapped (dlclose of a module whose fibers may still be on a stack is not worth it) */
    pthread_mutex_lock(&g_mu);
    for (struct CUmod_st **p = &g_mods; *p; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            break;
        }
    pthread_mutex_unlock(&g_mu);
    for (struct CUfunc_st *f = m->fns, *next; f; f = next) {
        next = f->next;
        free(f);
    }
    free(m);
    return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
    NEED_INIT();
    if (!m || !name) return CUDA_ERROR_INVALID_VALUE;
    char sym[300];
    snprintf(sym, sizeof sym, "hyb_emu_entry_%s", name);
    void *e = dlsym(m->dl, sym);
    if (!e) return CUDA_ERROR_NOT_FOUND;
    struct CUfunc_st *fn = calloc(1, sizeof *fn);
    if (!fn) return CUDA_ERROR_OUT_OF_MEMORY;
    fn->entry = (void (*)(void **))e;
    snprintf(fn->name, sizeof fn->name, "%s", name);
    fn->max_dyn_shared = 48 << 10;
    fn->next = m->fns;
    m->fns = fn;
    *f = fn;
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
        if (v < 0 || v > (227 << 10)) return CUDA_ERROR_INVALID_VALUE;
        f->max_dyn_shared = v;
    }
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                        CUstream st, void **params, void **extra) {
    NEED_INIT();
    (void)st;
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (extra) {
        fprintf(stderr, "hyb cuda emu: cuLaunchKernel(%s): `extra` is not emulated\n", f->name);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (!gx || !gy || !gz || !bx || !by || !bz || gy > 65535 || gz > 65535 || bx > 1024 ||
        by > 1024 || bz > 64 || (unsigned long long)bx * by * bz > 1024 ||
        (int)shmem > f->max_dyn_shared)
        return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {gx, gy, gz}, blk[3] = {bx, by, bz};
    char err[1024];
    if (hyb_emu_run(f->entry, params, f->name, grid, blk, shmem, err, sizeof err) != 0) {
        fprintf(stderr, "hyb cuda emu: launch failed: %s\n", err);
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    return CUDA_SUCCESS;
}
