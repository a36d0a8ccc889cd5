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
/* ---- CUDA graphs (stream capture) -------------------------------------------------------------
 * While a stream captures (cuStreamBeginCapture), the work queued on it is recorded, not run:
 * kernel launches (their arguments copied by value, as the driver does, with the sizes the
 * emulated build exports per kernel: hyb_emu_argsizes_<name>), device copies and memsets, and
 * copies to and from host memory (the host pointer is kept: a replay reads / writes it then).
 * cuGraphLaunch replays the records in order. A synchronising call on a capturing stream
 * (cuStreamSynchronize; the backend's downloads do one) fails with
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the capture, as on a GPU, so
 * cuStreamEndCapture then returns CUDA_ERROR_STREAM_CAPTURE_INVALIDATED. The emulated cuBLAS
 * records its GEMMs as host calls (hyb_emu_capture_hostfn), with alpha and beta by value. */
enum { EMU_NODE_KERNEL = 0, EMU_NODE_COPY, EMU_NODE_SET8, EMU_NODE_SET32, EMU_NODE_HOST };
typedef struct emu_node {
    int kind;
    struct CUfunc_st *f;
    unsigned grid[3], blk[3], shmem;
    unsigned nargs;
    void **args;   /* [nargs] pointers into argbuf */
    char *argbuf;  /* the argument values, copied at capture */
    void *dst;
    const void *src;
    size_t n;
    unsigned val;
    void (*hostfn)(const void *); /* EMU_NODE_HOST: hostfn(argbuf) */
} emu_node;
struct CUgraph_st {
    emu_node *nodes;
    int n, cap;
};
struct CUgraphExec_st {
    struct CUgraph_st g;
};
struct CUstream_st {
    struct CUgraph_st *capture; /* non-NULL while capturing */
    int invalidated;            /* a synchronising call happened during the capture */
};
struct CUfunc_st {
    void (*entry)(void **);
    unsigned (*argsizes)(unsigned *sz, unsigned cap); /* NULL: not capturable */
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

/* ---- graph records (see "CUDA graphs" above) -------------------------------------------------- */
static emu_node *graph_add(struct CUgraph_st *g) {
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 32;
        emu_node *nn = realloc(g->nodes, sizeof *nn * (size_t)cap);
        if (!nn) return NULL;
        g->nodes = nn;
        g->cap = cap;
    }
    emu_node *e = &g->nodes[g->n++];
    memset(e, 0, sizeof *e);
    return e;
}
static void graph_clear(struct CUgraph_st *g) {
    for (int i = 0; i < g->n; i++) {
        free(g->nodes[i].args);
        free(g->nodes[i].argbuf);
    }
    free(g->nodes);
    memset(g, 0, sizeof *g);
}
/* copy a node's argument values (8-byte aligned slots) */
static int node_args(emu_node *e, unsigned nargs, const unsigned *sz, void *const *params) {
    size_t off = 0;
    for (unsigned i = 0; i < nargs; i++)
        off += (sz[i] + 7u) & ~(size_t)7;
    e->nargs = nargs;
    e->args = calloc(nargs ? nargs : 1, sizeof(void *));
    e->argbuf = calloc(off ? off : 1, 1);
    if (!e->args || !e->argbuf) return 0;
    off = 0;
    for (unsigned i = 0; i < nargs; i++) {
        memcpy(e->argbuf + off, params[i], sz[i]);
        e->args[i] = e->argbuf + off;
        off += (sz[i] + 7u) & ~(size_t)7;
    }
    return 1;
}
static CUresult capture_kernel(CUstream st, struct CUfunc_st *f, const unsigned grid[3],
                               const unsigned blk[3], unsigned shmem, void **params) {
    if (!f->argsizes) {
        fprintf(stderr, "hyb cuda emu: cuLaunchKernel(%s) during capture: the module has no "
                        "argument sizes (rebuilt kernel cache needed)\n", f->name);
        st->invalidated = 1;
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    unsigned sz[256];
    unsigned n = f->argsizes(sz, 256);
    if (n > 256 || (n && !params)) return CUDA_ERROR_INVALID_VALUE;
    emu_node *e = graph_add(st->capture);
    if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
    e->kind = EMU_NODE_KERNEL;
    e->f = f;
    memcpy(e->grid, grid, sizeof e->grid);
    memcpy(e->blk, blk, sizeof e->blk);
    e->shmem = shmem;
    if (!node_args(e, n, sz, params)) return CUDA_ERROR_OUT_OF_MEMORY;
    return CUDA_SUCCESS;
}
int hyb_emu_capture_hostfn(void *stream, void (*fn)(const void *), const void *data, size_t n) {
    CUstream st = stream;
    if (!st || !st->capture) return 0;
    emu_node *e = graph_add(st->capture);
    char *copy = malloc(n ? n : 1);
    if (!e || !copy) { /* cannot record: the capture is unusable */
        free(copy);
        if (e) st->capture->n--;
        st->invalidated = 1;
        return 1;
    }
    memcpy(copy, data, n);
    e->kind = EMU_NODE_HOST;
    e->hostfn = fn;
    e->argbuf = copy;
    e->n = n;
    return 1;
}
static CUresult capture_mem(CUstream st, int kind, void *dst, const void *src, size_t n,
                            unsigned val) {
    emu_node *e = graph_add(st->capture);
    if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
    e->kind = kind;
    e->dst = dst;
    e->src = src;
    e->n = n;
    e->val = val;
    return CUDA_SUCCESS;
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
    if (s && s->capture) {
        graph_clear(s->capture);
        free(s->capture);
    }
    free(s);
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream s) {
    if (s && s->capture) { /* as the driver: not allowed while capturing, and it ends the capture's use */
        s->invalidated = 1;
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
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
    if (st && st->capture) return capture_mem(st, EMU_NODE_COPY, (void *)(uintptr_t)d, s, n, 0);
    if (n) memcpy((void *)(uintptr_t)d, s, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync(void *d, CUdeviceptr s, size_t n, CUstream st) {
    if (st && st->capture) return capture_mem(st, EMU_NODE_COPY, d, (const void *)(uintptr_t)s, n, 0);
    if (n) memcpy(d, (const void *)(uintptr_t)s, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) {
    if (st && st->capture)
        return capture_mem(st, EMU_NODE_COPY, (void *)(uintptr_t)d, (const void *)(uintptr_t)s, n, 0);
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
    if (st && st->capture) return capture_mem(st, EMU_NODE_SET8, (void *)(uintptr_t)d, NULL, n, v);
    if (n) memset((void *)(uintptr_t)d, v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream st) {
    if (st && st->capture) return capture_mem(st, EMU_NODE_SET32, (void *)(uintptr_t)d, NULL, n, v);
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
    snprintf(sym, sizeof sym, "hyb_emu_argsizes_%s", name);
    fn->argsizes = (unsigned (*)(unsigned *, unsigned))dlsym(m->dl, sym);
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
    if (st && st->capture) return capture_kernel(st, f, grid, blk, shmem, params);
    char err[1024];
    if (hyb_emu_run(f->entry, params, f->name, grid, blk, shmem, err, sizeof err) != 0) {
        fprintf(stderr, "hyb cuda emu: launch failed: %s\n", err);
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    return CUDA_SUCCESS;
}

/* ---- CUDA graphs -------------------------------------------------------------------------------- */
CUresult cuStreamBeginCapture(CUstream st, CUstreamCaptureMode mode) {
    NEED_INIT();
    (void)mode;
    if (!st) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; /* the legacy stream cannot capture */
    if (st->capture) return CUDA_ERROR_ILLEGAL_STATE;
    st->capture = calloc(1, sizeof *st->capture);
    st->invalidated = 0;
    return st->capture ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuStreamEndCapture(CUstream st, CUgraph *g) {
    if (!st || !g) return CUDA_ERROR_INVALID_VALUE;
    if (!st->capture) return CUDA_ERROR_ILLEGAL_STATE;
    struct CUgraph_st *cg = st->capture;
    st->capture = NULL;
    *g = NULL;
    if (st->invalidated) {
        st->invalidated = 0;
        graph_clear(cg);
        free(cg);
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *g = cg;
    return CUDA_SUCCESS;
}
CUresult cuGraphInstantiate(CUgraphExec *ex, CUgraph g, unsigned long long flags) {
    (void)flags;
    if (!ex || !g) return CUDA_ERROR_INVALID_VALUE;
    struct CUgraphExec_st *x = calloc(1, sizeof *x);
    if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < g->n; i++) { /* a deep copy: the graph may be destroyed first */
        const emu_node *a = &g->nodes[i];
        emu_node *b = graph_add(&x->g);
        if (!b) goto oom;
        *b = *a;
        b->args = NULL;
        b->argbuf = NULL;
        if (a->kind == EMU_NODE_KERNEL) {
            unsigned sz[256];
            a->f->argsizes(sz, 256);
            if (!node_args(b, a->nargs, sz, a->args)) goto oom;
        } else if (a->kind == EMU_NODE_HOST) {
            if (!(b->argbuf = malloc(a->n ? a->n : 1))) goto oom;
            memcpy(b->argbuf, a->argbuf, a->n);
        }
    }
    *ex = x;
    return CUDA_SUCCESS;
oom:
    graph_clear(&x->g);
    free(x);
    return CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuGraphLaunch(CUgraphExec x, CUstream st) {
    NEED_INIT();
    if (!x) return CUDA_ERROR_INVALID_VALUE;
    if (st && st->capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; /* not emulated */
    for (int i = 0; i < x->g.n; i++) {
        const emu_node *e = &x->g.nodes[i];
        switch (e->kind) {
        case EMU_NODE_KERNEL: {
            char err[1024];
            if (hyb_emu_run(e->f->entry, e->args, e->f->name, e->grid, e->blk, e->shmem, err,
                            sizeof err) != 0) {
                fprintf(stderr, "hyb cuda emu: graph launch failed at node %d: %s\n", i, err);
                return CUDA_ERROR_LAUNCH_FAILED;
            }
            break;
        }
        case EMU_NODE_COPY:
            if (e->n) memmove(e->dst, e->src, e->n);
            break;
        case EMU_NODE_SET8:
            if (e->n) memset(e->dst, (int)e->val, e->n);
            break;
        case EMU_NODE_SET32:
            for (size_t k = 0; k < e->n; k++)
                ((unsigned *)e->dst)[k] = e->val;
            break;
        case EMU_NODE_HOST:
            e->hostfn(e->argbuf);
            break;
        }
    }
    return CUDA_SUCCESS;
}
CUresult cuGraphExecDestroy(CUgraphExec x) {
    if (!x) return CUDA_ERROR_INVALID_VALUE;
    graph_clear(&x->g);
    free(x);
    return CUDA_SUCCESS;
}
CUresult cuGraphDestroy(CUgraph g) {
    if (!g) return CUDA_ERROR_INVALID_VALUE;
    graph_clear(g);
    free(g);
    return CUDA_SUCCESS;
}
