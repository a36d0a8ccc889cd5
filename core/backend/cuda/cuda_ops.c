/* core/backend/cuda/cuda_ops.c: the hyb_cuda_<op> kernels (launchers of the kernels/ sources) and
 * the CUDA backend table. Kernels are compiled on first use (nvrtc.c, cached on disk) and loaded
 * into the context; all launches go to the one stream, so results are stream-ordered and pool
 * blocks freed after a launch can be reused by later work on that stream. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

#define BLOCK 256 /* = -DHYB_BLOCK of hyb_cuda_compile_builtin */

/* ---- modules and functions ----------------------------------------------------------------- */
#define MAX_MODULES 16
#define MAX_FUNCS 64
static struct {
    pthread_mutex_t mu;
    struct {
        const char *file;
        const char *variant; /* the extra -D option, NULL for the standard build */
        CUmodule mod;
    } mods[MAX_MODULES];
    int nmods;
    struct {
        const char *kernel;
        CUfunction fn;
    } fns[MAX_FUNCS];
    int nfns;
} g_k = {.mu = PTHREAD_MUTEX_INITIALIZER};
/* the multi-tensor AdamW table (hyb_cuda_adamw_multi) */
#define ADAMW_CHUNK 4096 /* = HYB_ADAMW_CHUNK of elementwise.cu */
static struct {
    pthread_mutex_t mu;
    hyb_adamw_tensor *host; /* what dev holds (count entries); scratch: host + cap */
    void *dev;
    int cap, count;
} g_aw = {.mu = PTHREAD_MUTEX_INITIALIZER, .count = -1};

/* Compile `src` (NULL: the embedded file `file`, with the backend's standard options) for this
 * device through the kernel cache and load it; a cached image that does not load (stale or
 * damaged) is rebuilt once without the cache. */
static int compile_and_load(const char *file, const char *src, const char *const *opts, int nopts,
                            CUmodule *out) {
    hyb_cuda_image img;
    for (int use_cache = 1;; use_cache = 0) {
        HYB_TRY(
            src ? hyb_cuda_nvrtc_compile(file, src, opts, nopts, hyb_cuda_g.arch, use_cache, &img)
                : hyb_cuda_compile_builtin_opts(file, opts, nopts, hyb_cuda_g.arch, use_cache,
                                                &img));
        CUresult r = hyb_cu.cuModuleLoadData(out, img.data);
        const int retry = r != CUDA_SUCCESS && img.from_cache;
        if (retry)
            hyb_log(HYB_LOG_WARN, "cached kernel %s (%s) did not load: recompiling", file, img.key);
        hyb_cuda_image_free(&img);
        if (!retry) return hyb_cu_check(r, "cuModuleLoadData", __FILE__, __LINE__);
    }
}

/* The module of embedded file `file` built with the standard options plus `variant` (one -D
 * option, a static string; NULL: none). */
static int load_module(const char *file, const char *variant, CUmodule *out) {
    for (int i = 0; i < g_k.nmods; i++)
        if (strcmp(g_k.mods[i].file, file) == 0 &&
            (variant ? g_k.mods[i].variant && strcmp(g_k.mods[i].variant, variant) == 0
                     : !g_k.mods[i].variant)) {
            *out = g_k.mods[i].mod;
            return HYB_OK;
        }
    if (g_k.nmods == MAX_MODULES)
        return hyb_error_set(HYB_ERR, "CUDA: too many kernel modules (%d)", MAX_MODULES);
    CUmodule mod = NULL;
    int rc = compile_and_load(file, NULL, variant ? &variant : NULL, variant ? 1 : 0, &mod);
    if (rc != HYB_OK)
        return hyb_error_wrap(rc, "loading kernels of %s%s%s", file, variant ? " " : "",
                              variant ? variant : "");
    g_k.mods[g_k.nmods].variant = variant;
    g_k.mods[g_k.nmods].file = file;
    g_k.mods[g_k.nmods].mod = mod;
    g_k.nmods++;
    *out = mod;
    return HYB_OK;
}

CUfunction hyb_cuda_function(const char *file, const char *kernel) {
    CUfunction fn = NULL;
    if (hyb_cuda_bind() != HYB_OK) return NULL;
    pthread_mutex_lock(&g_k.mu);
    for (int i = 0; i < g_k.nfns; i++)
        if (strcmp(g_k.fns[i].kernel, kernel) == 0) {
            fn = g_k.fns[i].fn;
            goto out;
        }
    CUmodule mod = NULL;
    if (load_module(file, NULL, &mod) != HYB_OK) goto out;
    if (hyb_cu_check(hyb_cu.cuModuleGetFunction(&fn, mod, kernel), "cuModuleGetFunction", __FILE__,
                     __LINE__) != HYB_OK) {
        hyb_error_wrap(HYB_ERR, "kernel %s of %s", kernel, file);
        fn = NULL;
        goto out;
    }
    if (g_k.nfns < MAX_FUNCS) {
        g_k.fns[g_k.nfns].kernel = kernel;
        g_k.fns[g_k.nfns].fn = fn;
        g_k.nfns++;
    }
out:
    pthread_mutex_unlock(&g_k.mu);
    return fn;
}

/* kernel `kernel` of the `variant` build of `file` (variants share kernel names, so they are
 * cached apart from hyb_cuda_function's); NULL + error */
#define MAX_VARIANT_FUNCS 16
static struct {
    const char *variant, *kernel;
    CUfunction fn;
} g_vf[MAX_VARIANT_FUNCS];
static int g_nvf;
static CUfunction variant_function(const char *file, const char *variant, const char *kernel) {
    CUfunction fn = NULL;
    if (hyb_cuda_bind() != HYB_OK) return NULL;
    pthread_mutex_lock(&g_k.mu);
    for (int i = 0; i < g_nvf; i++)
        if (strcmp(g_vf[i].variant, variant) == 0 && strcmp(g_vf[i].kernel, kernel) == 0) {
            fn = g_vf[i].fn;
            goto out;
        }
    CUmodule mod = NULL;
    if (load_module(file, variant, &mod) != HYB_OK) goto out;
    if (hyb_cu_check(hyb_cu.cuModuleGetFunction(&fn, mod, kernel), "cuModuleGetFunction", __FILE__,
                     __LINE__) != HYB_OK) {
        hyb_error_wrap(HYB_ERR, "kernel %s of %s %s", kernel, file, variant);
        fn = NULL;
        goto out;
    }
    if (g_nvf < MAX_VARIANT_FUNCS) {
        g_vf[g_nvf].variant = variant;
        g_vf[g_nvf].kernel = kernel;
        g_vf[g_nvf].fn = fn;
        g_nvf++;
    }
out:
    pthread_mutex_unlock(&g_k.mu);
    return fn;
}

int hyb_cuda_launch(CUfunction f, const char *kernel, unsigned gx, unsigned gy, unsigned bx,
                    void **args) {
    CUresult r = hyb_cu.cuLaunchKernel(f, gx, gy, 1, bx, 1, 1, 0, hyb_cuda_g.stream, args, NULL);
    if (r != CUDA_SUCCESS)
        return hyb_error_wrap(hyb_cu_check(r, "cuLaunchKernel", __FILE__, __LINE__),
                              "kernel %s (grid %u x %u, block %u)", kernel, gx, gy, bx);
    return HYB_OK;
}

/* ---- plugins' kernels (be->kernel / be->launch) --------------------------------------------- */
#define MAX_PLUGIN_FUNCS 256
static struct {
    uint64_t key; /* source + options + kernel name (the arch is the context's) */
    CUmodule mod;
    CUfunction fn;
} g_pk[MAX_PLUGIN_FUNCS];
static int g_npk;

static int plugin_kernel(const char *file, const char *source, const char *kernel,
                         const char *const *opts, int nopts, void **out) {
    *out = NULL;
    if (!file || !source || !kernel || nopts < 0 || (nopts > 0 && !opts))
        return hyb_error_set(HYB_ERR_ARG, "cuda kernel: file, source and kernel name are required");
    HYB_TRY(hyb_cuda_bind());
    uint64_t key = hyb_fnv1a64(HYB_FNV64_INIT, source, strlen(source) + 1);
    for (int i = 0; i < nopts; i++)
        key = hyb_fnv1a64(key, opts[i], strlen(opts[i]) + 1);
    key = hyb_fnv1a64(key, kernel, strlen(kernel) + 1);
    int rc = HYB_OK;
    pthread_mutex_lock(&g_k.mu);
    for (int i = 0; i < g_npk; i++)
        if (g_pk[i].key == key) {
            *out = (void *)g_pk[i].fn;
            goto done;
        }
    if (g_npk == MAX_PLUGIN_FUNCS) {
        rc = hyb_error_set(HYB_ERR, "cuda kernel %s of %s: too many plugin kernels (%d)", kernel,
                           file, MAX_PLUGIN_FUNCS);
        goto done;
    }
    CUmodule mod = NULL;
    if ((rc = compile_and_load(file, source, opts, nopts, &mod)) != HYB_OK) {
        rc = hyb_error_wrap(rc, "cuda kernel %s: loading %s", kernel, file);
        goto done;
    }
    CUfunction fn = NULL;
    rc = hyb_cu_check(hyb_cu.cuModuleGetFunction(&fn, mod, kernel), "cuModuleGetFunction", __FILE__,
                      __LINE__);
    if (rc != HYB_OK) {
        hyb_cu.cuModuleUnload(mod);
        rc = hyb_error_wrap(rc, "cuda kernel %s: not in %s (declare it extern \"C\" __global__)",
                            kernel, file);
        goto done;
    }
    g_pk[g_npk].key = key;
    g_pk[g_npk].mod = mod;
    g_pk[g_npk].fn = fn;
    g_npk++;
    *out = (void *)fn;
done:
    pthread_mutex_unlock(&g_k.mu);
    return rc;
}

static int plugin_launch(void *fn, const char *kernel, const unsigned grid[3],
                         const unsigned block[3], unsigned shared_bytes, void **args) {
    if (!fn || !grid || !block)
        return hyb_error_set(HYB_ERR_ARG, "cuda launch %s: no function or sizes",
                             kernel ? kernel : "?");
    CUresult r =
        hyb_cu.cuLaunchKernel((CUfunction)fn, grid[0], grid[1], grid[2], block[0], block[1],
                              block[2], shared_bytes, hyb_cuda_g.stream, args, NULL);
    if (r != CUDA_SUCCESS)
        return hyb_error_wrap(hyb_cu_check(r, "cuLaunchKernel", __FILE__, __LINE__),
                              "kernel %s (grid %u x %u x %u, block %u x %u x %u, %u shared bytes)",
                              kernel ? kernel : "?", grid[0], grid[1], grid[2], block[0], block[1],
                              block[2], shared_bytes);
    return HYB_OK;
}

void hyb_cuda_ops_reset(void) { /* after the context went away (hyb_cuda_shutdown) */
    pthread_mutex_lock(&g_k.mu);
    g_k.nmods = g_k.nfns = 0;
    g_npk = 0;
    g_nvf = 0;
    pthread_mutex_unlock(&g_k.mu);
    pthread_mutex_lock(&g_aw.mu); /* the table's device memory went with the context */
    g_aw.dev = NULL;
    g_aw.cap = 0;
    g_aw.count = -1;
    pthread_mutex_unlock(&g_aw.mu);
}

#define GET(file, name)                                                                            \
    CUfunction fn_ = hyb_cuda_function(file, name);                                                \
    if (!fn_) return HYB_ERR
#define LAUNCH(name, gx, gy, bx, ...)                                                              \
    do {                                                                                           \
        void *args_[] = {__VA_ARGS__};                                                             \
        HYB_TRY(hyb_cuda_launch(fn_, name, (gx), (gy), (bx), args_));                              \
    } while (0)

/* blocks for a grid-stride loop over n elements */
static unsigned grid_for(int64_t n) {
    int64_t g = (n + BLOCK - 1) / BLOCK,
            cap = (int64_t)(hyb_cuda_g.n_sm > 0 ? hyb_cuda_g.n_sm : 1) * 32;
    if (g > cap) g = cap;
    return (unsigned)(g < 1 ? 1 : g);
}
static int rows_ok(const char *op, int64_t rows) {
    if (rows > 0x7fffffff)
        return hyb_error_set(HYB_ERR_ARG, "%s: %lld rows exceed the grid limit", op,
                             (long long)rows);
    return HYB_OK;
}

/* upload a host array into a pool block; NULL + error on failure */
static void *upload_tmp(const void *host, size_t nbytes) {
    void *d = hyb_cuda_malloc(nbytes);
    if (d && hyb_cuda_upload(d, host, nbytes) != HYB_OK) {
        hyb_cuda_free(d);
        return NULL;
    }
    return d;
}

/* ---- element-wise ---------------------------------------------------------------------------- */
/* Launch the grid-stride kernel `name` of elementwise.cu over n elements (nothing when n <= 0). */
static int elementwise(const char *name, int64_t n, void **args) {
    if (n <= 0) return HYB_OK;
    CUfunction fn = hyb_cuda_function("elementwise.cu", name);
    if (!fn) return HYB_ERR;
    return hyb_cuda_launch(fn, name, grid_for(n), 1, BLOCK, args);
}
int hyb_cuda_add(const float *a, const float *b, float *y, int64_t n) {
    void *args[] = {&a, &b, &y, &n};
    return elementwise("hyb_add", n, args);
}
int hyb_cuda_axpy(float *dst, const float *src, float alpha, int64_t n) {
    void *args[] = {&dst, &src, &alpha, &n};
    return elementwise("hyb_axpy", n, args);
}
int hyb_cuda_swiglu_fwd(const float *gate, const float *up, float *y, int64_t n) {
    void *args[] = {&gate, &up, &y, &n};
    return elementwise("hyb_swiglu_fwd", n, args);
}
int hyb_cuda_swiglu_bwd(const float *gate, const float *up, const float *dy, float *dgate,
                        float *dup, int64_t n) {
    if (!dgate && !dup) return HYB_OK;
    void *args[] = {&gate, &up, &dy, &dgate, &dup, &n};
    return elementwise("hyb_swiglu_bwd", n, args);
}
int hyb_cuda_f32_to_bf16(const float *x, void *y, int64_t n) {
    void *args[] = {&x, &y, &n};
    return elementwise("hyb_f32_to_bf16", n, args);
}
int hyb_cuda_bf16_to_f32(const void *x, float *y, int64_t n) {
    void *args[] = {&x, &y, &n};
    return elementwise("hyb_bf16_to_f32", n, args);
}
int hyb_cuda_adamw(float *p, const float *g, float *m, float *v, int64_t n, float b1, float b2,
                   float eps, float shrink, float step_size, float inv_sqrt_bc2) {
    void *args[] = {&p, &g, &m, &v, &n, &b1, &b2, &eps, &shrink, &step_size, &inv_sqrt_bc2};
    return elementwise("hyb_adamw", n, args);
}
/* Multi-tensor AdamW: the table of non-empty tensors with their first virtual block, kept on the
 * device between calls and uploaded again only when its contents change (an optimiser passes the
 * same pointers every step; equal contents are a valid table whatever allocated them). */

int hyb_cuda_adamw_multi(const hyb_adamw_tensor *t, int count, float b1, float b2, float eps,
                         float inv_sqrt_bc2) {
    if (count < 0 || (count > 0 && !t))
        return hyb_error_set(HYB_ERR_ARG, "adamw_multi: bad tensor table (count %d)", count);
    for (int i = 0; i < count; i++)
        if (t[i].n < 0 || (t[i].n > 0 && (!t[i].p || !t[i].g || !t[i].m || !t[i].v)))
            return hyb_error_set(HYB_ERR_ARG,
                                 "adamw_multi: tensor %d of %d: n = %lld, a NULL buffer", i, count,
                                 (long long)t[i].n);
    if (count == 0) return HYB_OK;
    GET("elementwise.cu", "hyb_adamw_multi");
    int rc = HYB_OK;
    pthread_mutex_lock(&g_aw.mu);
    if (count > g_aw.cap) {
        hyb_adamw_tensor *h = realloc(g_aw.host, sizeof *h * 2 * (size_t)count);
        if (!h) {
            rc = hyb_error_set(HYB_ERR_NOMEM, "adamw_multi: out of memory (%d tensors)", count);
            goto out;
        }
        g_aw.host = h;
        if (g_aw.dev) hyb_cuda_free(g_aw.dev);
        g_aw.dev = hyb_cuda_malloc(sizeof *h * (size_t)count);
        g_aw.cap = g_aw.dev ? count : 0;
        g_aw.count = -1;
        if (!g_aw.dev) {
            rc = hyb_error_wrap(HYB_ERR_NOMEM, "adamw_multi: table of %d tensors", count);
            goto out;
        }
    }
    hyb_adamw_tensor *tab = g_aw.host + g_aw.cap; /* the new table, built in the scratch half */
    int k = 0;
    int64_t blocks = 0;
    for (int i = 0; i < count; i++) {
        if (t[i].n == 0) continue;
        tab[k] = t[i];
        tab[k].first_block = blocks;
        blocks += (t[i].n + ADAMW_CHUNK - 1) / ADAMW_CHUNK;
        k++;
    }
    if (k == 0) goto out;
    if (k != g_aw.count || memcmp(tab, g_aw.host, sizeof *tab * (size_t)k) != 0) {
        g_aw.count = -1;
        if ((rc = hyb_cuda_upload(g_aw.dev, tab, sizeof *tab * (size_t)k)) != HYB_OK) goto out;
        memcpy(g_aw.host, tab, sizeof *tab * (size_t)k);
        g_aw.count = k;
    }
    int64_t cap = (int64_t)(hyb_cuda_g.n_sm > 0 ? hyb_cuda_g.n_sm : 1) * 32;
    unsigned grid = (unsigned)(blocks < cap ? blocks : cap);
    void *args[] = {&g_aw.dev, &k, &blocks, &b1, &b2, &eps, &inv_sqrt_bc2};
    rc = hyb_cuda_launch(fn_, "hyb_adamw_multi", grid, 1, BLOCK, args);
    if (rc != HYB_OK)
        rc = hyb_error_wrap(rc, "adamw_multi: %d tensors, %lld blocks of %d", k, (long long)blocks,
                            ADAMW_CHUNK);
out:
    pthread_mutex_unlock(&g_aw.mu);
    return rc;
}
int hyb_cuda_scale(float *x, float alpha, int64_t n) {
    void *args[] = {&x, &alpha, &n};
    return elementwise("hyb_scale", n, args);
}
int hyb_cuda_sumsq(const float *x, int64_t n, double *out) {
    *out = 0.0;
    if (n <= 0) return HYB_OK;
    GET("elementwise.cu", "hyb_sumsq");
    unsigned grid = grid_for(n);
    double *dpart = hyb_cuda_malloc(sizeof(double) * grid);
    double *hpart = malloc(sizeof(double) * grid);
    int rc = HYB_ERR_NOMEM;
    if (!dpart || !hpart) {
        if (!hpart) hyb_error_set(HYB_ERR_NOMEM, "sumsq: out of memory");
        goto out;
    }
    void *args[] = {&x, &dpart, &n};
    rc = hyb_cuda_launch(fn_, "hyb_sumsq", grid, 1, BLOCK, args);
    if (rc == HYB_OK) rc = hyb_cuda_download(hpart, dpart, sizeof(double) * grid);
    if (rc == HYB_OK) {
        double s = 0.0;
        for (unsigned b = 0; b < grid; b++)
            s += hpart[b];
        *out = s;
    }
out:
    free(hpart);
    hyb_cuda_free(dpart);
    return rc;
}

static int ids_kernel(const char *name, float *a, const int32_t *ids, float *b, int64_t n,
                      int64_t D) {
    if (n <= 0 || D <= 0) return HYB_OK;
    GET("elementwise.cu", name);
    void *dids = upload_tmp(ids, sizeof(int32_t) * (size_t)n);
    if (!dids) return hyb_error_wrap(HYB_ERR, "%s: ids [%lld]", name, (long long)n);
    void *args[] = {&a, &dids, &b, &n, &D};
    int rc = hyb_cuda_launch(fn_, name, grid_for(n * D), 1, BLOCK, args);
    hyb_cuda_free(dids);
    return rc;
}
int hyb_cuda_embedding_fwd(const float *W, const int32_t *ids, float *y, int64_t n, int64_t D) {
    return ids_kernel("hyb_embedding_fwd", (float *)W, ids, y, n, D);
}
int hyb_cuda_embedding_bwd(float *dW, const int32_t *ids, const float *dy, int64_t n, int64_t D) {
    return ids_kernel("hyb_embedding_bwd", dW, ids, (float *)dy, n, D);
}

int hyb_cuda_rope(float *x, int B, int T, int H, int hd, const int32_t *pos, float theta,
                  int inverse) {
    if (hd % 2 != 0) return hyb_error_set(HYB_ERR_ARG, "rope: head size %d is odd", hd);
    if (B <= 0 || T <= 0 || H <= 0 || hd == 0) return HYB_OK;
    GET("elementwise.cu", "hyb_rope");
    int32_t *hpos = NULL;
    if (!pos) { /* positions 0..T-1, as the CPU kernel */
        hpos = malloc(sizeof(int32_t) * (size_t)T);
        if (!hpos) return hyb_error_set(HYB_ERR_NOMEM, "rope: out of memory");
        for (int t = 0; t < T; t++)
            hpos[t] = t;
        pos = hpos;
    }
    void *dpos = upload_tmp(pos, sizeof(int32_t) * (size_t)T);
    free(hpos);
    if (!dpos) return hyb_error_wrap(HYB_ERR, "rope: pos [%d]", T);
    int64_t BT = (int64_t)B * T;
    void *args[] = {&x, &BT, &T, &H, &hd, &dpos, &theta, &inverse};
    int rc = hyb_cuda_launch(fn_, "hyb_rope", grid_for(BT * H * (hd / 2)), 1, BLOCK, args);
    hyb_cuda_free(dpos);
    return rc;
}

/* ---- row-wise ----------------------------------------------------------------------------------
 */
int hyb_cuda_rmsnorm_fwd(const float *x, const float *w, float *y, float *rstd, int64_t rows,
                         int64_t D, float eps) {
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("rmsnorm_fwd", rows));
    GET("rows.cu", "hyb_rmsnorm_fwd");
    LAUNCH("hyb_rmsnorm_fwd", (unsigned)rows, 1, BLOCK, &x, &w, &y, &rstd, &rows, &D, &eps);
    return HYB_OK;
}
int hyb_cuda_add_rmsnorm_fwd(const float *a, const float *b, const float *w, float *h, float *y,
                             float *rstd, int64_t rows, int64_t D, float eps) {
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("add_rmsnorm_fwd", rows));
    GET("rows.cu", "hyb_add_rmsnorm_fwd");
    LAUNCH("hyb_add_rmsnorm_fwd", (unsigned)rows, 1, BLOCK, &a, &b, &w, &h, &y, &rstd, &rows, &D,
           &eps);
    return HYB_OK;
}
int hyb_cuda_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dy,
                         float *dx, float *dw, int64_t rows, int64_t D) {
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("rmsnorm_bwd", rows));
    if (dx) {
        GET("rows.cu", "hyb_rmsnorm_bwd_dx");
        LAUNCH("hyb_rmsnorm_bwd_dx", (unsigned)rows, 1, BLOCK, &x, &w, &rstd, &dy, &dx, &rows, &D);
    }
    if (dw) {
        GET("rows.cu", "hyb_rmsnorm_bwd_dw");
        /* enough blocks to fill the GPU: split the rows into chunks of >= 64 */
        const unsigned gx = (unsigned)((D + BLOCK - 1) / BLOCK);
        int64_t chunks = ((int64_t)hyb_cuda_g.n_sm * 4 + gx - 1) / gx;
        if (chunks > (rows + 63) / 64) chunks = (rows + 63) / 64;
        if (chunks < 1) chunks = 1;
        int64_t per = (rows + chunks - 1) / chunks;
        chunks = (rows + per - 1) / per;
        LAUNCH("hyb_rmsnorm_bwd_dw", gx, (unsigned)chunks, BLOCK, &x, &rstd, &dy, &dw, &rows, &D,
               &per);
    }
    return HYB_OK;
}
int hyb_cuda_softmax_fwd(const float *x, float *y, int64_t rows, int64_t V) {
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("softmax_fwd", rows));
    GET("rows.cu", "hyb_softmax_fwd");
    LAUNCH("hyb_softmax_fwd", (unsigned)rows, 1, BLOCK, &x, &y, &rows, &V);
    return HYB_OK;
}
int hyb_cuda_softmax_bwd(const float *y, const float *dy, float *dx, int64_t rows, int64_t V) {
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("softmax_bwd", rows));
    GET("rows.cu", "hyb_softmax_bwd");
    LAUNCH("hyb_softmax_bwd", (unsigned)rows, 1, BLOCK, &y, &dy, &dx, &rows, &V);
    return HYB_OK;
}

/* ---- losses ------------------------------------------------------------------------------------
 */
int hyb_cuda_ce_fwd(const float *logits, const int32_t *targets, const float *w, float *lse,
                    int64_t rows, int64_t V, double *loss_sum) {
    *loss_sum = 0.0;
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("ce_fwd", rows));
    GET("loss.cu", "hyb_ce_fwd");
    int rc = HYB_ERR;
    float *hloss = malloc(sizeof(float) * (size_t)rows);
    void *dt = upload_tmp(targets, sizeof(int32_t) * (size_t)rows);
    void *dw = upload_tmp(w, sizeof(float) * (size_t)rows);
    void *dl = hyb_cuda_malloc(sizeof(float) * (size_t)rows);
    if (!hloss || !dt || !dw || !dl) {
        if (!hloss) hyb_error_set(HYB_ERR_NOMEM, "ce_fwd: out of memory");
        goto out;
    }
    void *args[] = {&logits, &dt, &dw, &lse, &dl, &rows, &V};
    rc = hyb_cuda_launch(fn_, "hyb_ce_fwd", (unsigned)rows, 1, BLOCK, args);
    if (rc == HYB_OK) rc = hyb_cuda_download(hloss, dl, sizeof(float) * (size_t)rows);
    if (rc == HYB_OK) {
        double sum = 0.0; /* row order, in double: independent of the launch shape */
        for (int64_t r = 0; r < rows; r++)
            if (w[r] != 0.0f) sum += (double)w[r] * hloss[r];
        *loss_sum = sum;
    }
out:
    free(hloss);
    hyb_cuda_free(dt);
    hyb_cuda_free(dw);
    hyb_cuda_free(dl);
    return rc;
}
int hyb_cuda_ce_bwd(const float *logits, const int32_t *targets, const float *w, const float *lse,
                    float *dlogits, int64_t rows, int64_t V, float scale) {
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("ce_bwd", rows));
    GET("loss.cu", "hyb_ce_bwd");
    int rc = HYB_ERR;
    void *dt = upload_tmp(targets, sizeof(int32_t) * (size_t)rows);
    void *dw = upload_tmp(w, sizeof(float) * (size_t)rows);
    if (dt && dw) {
        void *args[] = {&logits, &dt, &dw, &lse, &dlogits, &rows, &V, &scale};
        rc = hyb_cuda_launch(fn_, "hyb_ce_bwd", (unsigned)rows, 1, BLOCK, args);
    }
    hyb_cuda_free(dt);
    hyb_cuda_free(dw);
    return rc;
}
int hyb_cuda_kl_fwd(const float *s, const float *t, const float *w, float *stats, int64_t rows,
                    int64_t V, float temperature, int reverse, double *loss_sum) {
    *loss_sum = 0.0;
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("kl_fwd", rows));
    GET("loss.cu", "hyb_kl_fwd");
    int rc = HYB_ERR;
    float *hst = malloc(sizeof(float) * 3 * (size_t)rows);
    void *dw = upload_tmp(w, sizeof(float) * (size_t)rows);
    if (!hst || !dw) {
        if (!hst) hyb_error_set(HYB_ERR_NOMEM, "kl_fwd: out of memory");
        goto out;
    }
    void *args[] = {&s, &t, &dw, &stats, &rows, &V, &temperature, &reverse};
    rc = hyb_cuda_launch(fn_, "hyb_kl_fwd", (unsigned)rows, 1, BLOCK, args);
    if (rc == HYB_OK) rc = hyb_cuda_download(hst, stats, sizeof(float) * 3 * (size_t)rows);
    if (rc == HYB_OK) {
        double sum = 0.0;
        for (int64_t r = 0; r < rows; r++)
            if (w[r] != 0.0f) sum += (double)w[r] * hst[3 * r + 2];
        *loss_sum = sum;
    }
out:
    free(hst);
    hyb_cuda_free(dw);
    return rc;
}
int hyb_cuda_kl_bwd(const float *s, const float *t, const float *w, const float *stats, float *ds,
                    int64_t rows, int64_t V, float temperature, int reverse, float scale) {
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("kl_bwd", rows));
    GET("loss.cu", "hyb_kl_bwd");
    void *dw = upload_tmp(w, sizeof(float) * (size_t)rows);
    if (!dw) return HYB_ERR;
    void *args[] = {&s, &t, &dw, &stats, &ds, &rows, &V, &temperature, &reverse, &scale};
    int rc = hyb_cuda_launch(fn_, "hyb_kl_bwd", (unsigned)rows, 1, BLOCK, args);
    hyb_cuda_free(dw);
    return rc;
}

/* ---- bf16 storage (kernels/store.cu built with -DHYB_STORE_BF16) ----------------------------- */
static const char BF16[] = "-DHYB_STORE_BF16";
#define GET_BF16(name)                                                                             \
    CUfunction fn_ = variant_function("store.cu", BF16, name);                                     \
    if (!fn_) return HYB_ERR
int hyb_cuda_rmsnorm_fwd_bf16(const void *x, const void *w, void *y, float *rstd, int64_t rows,
                              int64_t D, float eps) {
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("rmsnorm_fwd_bf16", rows));
    GET_BF16("hyb_st_rmsnorm_fwd");
    LAUNCH("hyb_st_rmsnorm_fwd (bf16)", (unsigned)rows, 1, BLOCK, &x, &w, &y, &rstd, &rows, &D,
           &eps);
    return HYB_OK;
}
int hyb_cuda_add_rmsnorm_fwd_bf16(const void *a, const void *b, const void *w, void *h, void *y,
                                  float *rstd, int64_t rows, int64_t D, float eps) {
    if (rows <= 0) return HYB_OK;
    HYB_TRY(rows_ok("add_rmsnorm_fwd_bf16", rows));
    GET_BF16("hyb_st_add_rmsnorm_fwd");
    LAUNCH("hyb_st_add_rmsnorm_fwd (bf16)", (unsigned)rows, 1, BLOCK, &a, &b, &w, &h, &y, &rstd,
           &rows, &D, &eps);
    return HYB_OK;
}
int hyb_cuda_swiglu_fwd_bf16(const void *gate, const void *up, void *y, int64_t n) {
    if (n <= 0) return HYB_OK;
    GET_BF16("hyb_st_swiglu_fwd");
    LAUNCH("hyb_st_swiglu_fwd (bf16)", grid_for(n), 1, BLOCK, &gate, &up, &y, &n);
    return HYB_OK;
}
int hyb_cuda_add_bf16(const void *a, const void *b, void *y, int64_t n) {
    if (n <= 0) return HYB_OK;
    GET_BF16("hyb_st_add");
    LAUNCH("hyb_st_add (bf16)", grid_for(n), 1, BLOCK, &a, &b, &y, &n);
    return HYB_OK;
}

/* ---- sampling ---------------------------------------------------------------------------------
 */
typedef struct { /* = hyb_sample_param of sample.cu */
    float temperature;
    int top_k;
    float top_p;
    float penalty;
    float u;
    int greedy;
} sample_param;

int hyb_cuda_sample(const float *logits, int64_t n, int64_t V, const hyb_sample_row *rows,
                    int32_t *out) {
    if (n <= 0) return HYB_OK;
    if (V <= 0 || V > 0x7fffffff)
        return hyb_error_set(HYB_ERR_ARG, "sample: V = %lld outside [1, 2^31)", (long long)V);
    HYB_TRY(rows_ok("sample", n));
    if (n > 0x7ffffffe || (uint64_t)n * (uint64_t)V > ((uint64_t)1 << 40))
        return hyb_error_set(HYB_ERR_ARG, "sample: [%lld, %lld] is too large", (long long)n,
                             (long long)V);
    /* the table: params [n], then pen_off [n + 1] and the distinct penalised tokens (ints) */
    int64_t n_pen = 0;
    for (int64_t i = 0; i < n; i++) {
        const hyb_sample_row *r = &rows[i];
        if (!(r->temperature >= 0.0f && r->temperature <= 100.0f) || r->top_k < 0 ||
            !(r->top_p >= 0.0f && r->top_p <= 1.0f) ||
            !(r->repetition_penalty > 0.0f && r->repetition_penalty <= 100.0f) ||
            !(r->u >= 0.0f && r->u < 1.0f) || r->n_history < 0 || (r->n_history > 0 && !r->history))
            return hyb_error_set(HYB_ERR_ARG,
                                 "sample: row %lld: bad settings (temperature %g, top_k %d, top_p "
                                 "%g, repetition_penalty %g, u %g, %d history tokens)",
                                 (long long)i, (double)r->temperature, r->top_k, (double)r->top_p,
                                 (double)r->repetition_penalty, (double)r->u, r->n_history);
        for (int j = 0; j < r->n_history; j++)
            if (r->history[j] < 0 || r->history[j] >= V)
                return hyb_error_set(HYB_ERR_ARG,
                                     "sample: row %lld: history token %d at position %d is "
                                     "outside [0, %lld)",
                                     (long long)i, r->history[j], j, (long long)V);
        if (r->repetition_penalty != 1.0f) n_pen += r->n_history;
    }
    const size_t tab_bytes =
        sizeof(sample_param) * (size_t)n + sizeof(int) * (size_t)(n + 1 + (n_pen ? n_pen : 1));
    char *tab = malloc(tab_bytes);
    uint8_t *seen = n_pen ? calloc((size_t)V, 1) : NULL;
    int32_t *hout = malloc(sizeof(int32_t) * (size_t)n);
    char *dtab = NULL;
    float *scratch = NULL;
    int rc = HYB_ERR_NOMEM;
    if (!tab || !hout || (n_pen && !seen)) {
        hyb_error_set(HYB_ERR_NOMEM, "sample: out of memory");
        goto out;
    }
    sample_param *prm = (sample_param *)tab;
    int *off = (int *)(tab + sizeof(sample_param) * (size_t)n), *tok = off + n + 1;
    int np = 0;
    for (int64_t i = 0; i < n; i++) {
        const hyb_sample_row *r = &rows[i];
        prm[i] = (sample_param){r->temperature, r->top_k,
                                r->top_p,       r->repetition_penalty,
                                r->u,           r->temperature <= 0.0f || r->top_k == 1};
        off[i] = np;
        if (r->repetition_penalty == 1.0f) continue;
        const int first = np;
        for (int j = 0; j < r->n_history; j++)
            if (!seen[r->history[j]]) seen[r->history[j]] = 1, tok[np++] = r->history[j];
        for (int j = first; j < np; j++)
            seen[tok[j]] = 0;
    }
    off[n] = np;
    CUfunction fn_ = hyb_cuda_function("sample.cu", "hyb_sample");
    if (!fn_) {
        rc = HYB_ERR;
        goto out;
    }
    dtab = hyb_cuda_malloc(tab_bytes);
    scratch = hyb_cuda_malloc(sizeof(float) * 2 * (size_t)n * (size_t)V);
    int *dout = hyb_cuda_malloc(sizeof(int32_t) * (size_t)n);
    if (!dtab || !scratch || !dout) {
        rc = hyb_error_wrap(HYB_ERR_NOMEM, "sample [%lld, %lld]", (long long)n, (long long)V);
        hyb_cuda_free(dout);
        goto out;
    }
    rc = hyb_cuda_upload(dtab, tab, tab_bytes);
    if (rc == HYB_OK) {
        float *dw = scratch, *dp = scratch + (size_t)n * (size_t)V;
        sample_param *dprm = (sample_param *)dtab;
        int *doff = (int *)(dtab + sizeof(sample_param) * (size_t)n), *dtok = doff + n + 1;
        void *args[] = {&logits, &dw, &dp, &dprm, &doff, &dtok, &dout, &V};
        rc = hyb_cuda_launch(fn_, "hyb_sample", (unsigned)n, 1, BLOCK, args);
    }
    if (rc == HYB_OK) rc = hyb_cuda_download(hout, dout, sizeof(int32_t) * (size_t)n);
    hyb_cuda_free(dout);
    for (int64_t i = 0; rc == HYB_OK && i < n; i++) {
        if (hout[i] < 0 || hout[i] >= V)
            rc = hyb_error_set(HYB_ERR_ARG, "sample: row %lld: all %lld logits are NaN or -inf",
                               (long long)i, (long long)V);
        out[i] = hout[i];
    }
out:
    free(tab);
    free(seen);
    free(hout);
    hyb_cuda_free(dtab);
    hyb_cuda_free(scratch);
    return rc;
}

/* ---- the backend table ------------------------------------------------------------------------
 */
static char g_cuda_name[32] = "cuda:0";

/* Every entry returns the kernel's status; a failure's message is prefixed with the backend and
 * the op ("cuda sgemm: ..."; the launchers already name the kernel, grid and sizes). */
static int report(int rc, const char *fmt, ...) {
    if (rc == HYB_OK) return HYB_OK;
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return hyb_error_wrap(rc, "%s %s", g_cuda_name, what);
}
/* An entry that drops `be`, runs hyb_cuda_<name> and reports a failure with the printf-style
 * description that follows (the op and its sizes). */
#define CUDA_ENTRY(name, params, args, ...)                                                        \
    static int be_##name params {                                                                  \
        (void)be;                                                                                  \
        return report(hyb_cuda_##name args, __VA_ARGS__);                                          \
    }

CUDA_ENTRY(ewise,
           (const hyb_backend *be, int op, float *y, const int64_t *sy, const float *a,
            const int64_t *sa, const float *b, const int64_t *sb, const float *c, const int64_t *sc,
            const int64_t *shape, float alpha, float beta),
           (op, y, sy, a, sa, b, sb, c, sc, shape, alpha, beta),
           "ewise op %d [%lld, %lld, %lld, %lld]", op, (long long)shape[0], (long long)shape[1],
           (long long)shape[2], (long long)shape[3])
CUDA_ENTRY(ewise_bwd,
           (const hyb_backend *be, int op, int which, const float *a, const int64_t *sa,
            const float *b, const int64_t *sb, const float *c, const int64_t *sc, const float *dy,
            float *d, const int64_t *shape, const int64_t *dshape, float alpha, float beta),
           (op, which, a, sa, b, sb, c, sc, dy, d, shape, dshape, alpha, beta),
           "ewise_bwd op %d operand %d", op, which)
CUDA_ENTRY(axis,
           (const hyb_backend *be, int op, const float *x, float *y, int64_t outer, int64_t n,
            int64_t inner, float alpha),
           (op, x, y, outer, n, inner, alpha), "axis op %d [%lld, %lld, %lld]", op,
           (long long)outer, (long long)n, (long long)inner)
CUDA_ENTRY(axis_bwd,
           (const hyb_backend *be, int op, const float *x, const float *y, const float *dy,
            float *dx, int64_t outer, int64_t n, int64_t inner, float alpha),
           (op, x, y, dy, dx, outer, n, inner, alpha), "axis_bwd op %d [%lld, %lld, %lld]", op,
           (long long)outer, (long long)n, (long long)inner)
CUDA_ENTRY(tri,
           (const hyb_backend *be, const float *x, float *y, int64_t batch, int64_t R, int64_t C,
            int64_t k, int upper, int accumulate),
           (x, y, batch, R, C, k, upper, accumulate), "tri [%lld, %lld, %lld]", (long long)batch,
           (long long)R, (long long)C)
CUDA_ENTRY(conv1d_causal,
           (const hyb_backend *be, const float *x, const float *w, float *y, int64_t B, int64_t T,
            int64_t C, int64_t K),
           (x, w, y, B, T, C, K), "conv1d_causal [%lld, %lld, %lld] K=%lld", (long long)B,
           (long long)T, (long long)C, (long long)K)
CUDA_ENTRY(conv1d_causal_bwd,
           (const hyb_backend *be, const float *x, const float *w, const float *dy, float *dx,
            float *dw, int64_t B, int64_t T, int64_t C, int64_t K),
           (x, w, dy, dx, dw, B, T, C, K), "conv1d_causal_bwd [%lld, %lld, %lld] K=%lld",
           (long long)B, (long long)T, (long long)C, (long long)K)
CUDA_ENTRY(gather,
           (const hyb_backend *be, const float *x, const int32_t *idx, float *y, int64_t outer,
            int64_t n, int64_t inner, int64_t m),
           (x, idx, y, outer, n, inner, m), "gather [%lld, %lld, %lld] m=%lld", (long long)outer,
           (long long)n, (long long)inner, (long long)m)
CUDA_ENTRY(gather_bwd,
           (const hyb_backend *be, const int32_t *idx, const float *dy, float *dx, int64_t outer,
            int64_t n, int64_t inner, int64_t m),
           (idx, dy, dx, outer, n, inner, m), "gather_bwd [%lld, %lld, %lld] m=%lld",
           (long long)outer, (long long)n, (long long)inner, (long long)m)
CUDA_ENTRY(sgemm_batched,
           (const hyb_backend *be, int tA, int tB, int M, int N, int K, float alpha, const float *A,
            int lda, int64_t sA, const float *B, int ldb, int64_t sB, float beta, float *C, int ldc,
            int64_t sC, int batch),
           (tA, tB, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch),
           "sgemm_batched M=%d N=%d K=%d batch=%d", M, N, K, batch)

static void *be_alloc(const hyb_backend *be, size_t n) {
    (void)be;
    return hyb_cuda_malloc(n);
}
static void be_free(const hyb_backend *be, void *p) {
    (void)be;
    hyb_cuda_free(p);
}
CUDA_ENTRY(memset0, (const hyb_backend *be, void *p, size_t n), (p, n), "memset0 %zu bytes", n)
CUDA_ENTRY(copy, (const hyb_backend *be, void *d, const void *s, size_t n), (d, s, n),
           "copy %zu bytes", n)
CUDA_ENTRY(upload, (const hyb_backend *be, void *d, const void *s, size_t n), (d, s, n),
           "upload %zu bytes", n)
CUDA_ENTRY(download, (const hyb_backend *be, void *d, const void *s, size_t n), (d, s, n),
           "download %zu bytes", n)
CUDA_ENTRY(sgemm,
           (const hyb_backend *be, int tA, int tB, int M, int N, int K, float alpha, const float *A,
            int lda, const float *B, int ldb, float beta, float *C, int ldc),
           (tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc),
           "sgemm M=%d N=%d K=%d (trans %d%d)", M, N, K, tA, tB)
CUDA_ENTRY(rope,
           (const hyb_backend *be, float *x, int B, int T, int H, int hd, const int32_t *pos,
            float theta, int inverse),
           (x, B, T, H, hd, pos, theta, inverse), "rope [%d, %d, %d, %d]", B, T, H, hd)
CUDA_ENTRY(embedding_fwd,
           (const hyb_backend *be, const float *W, const int32_t *ids, float *y, int64_t n,
            int64_t D),
           (W, ids, y, n, D), "embedding_fwd n=%lld D=%lld", (long long)n, (long long)D)
CUDA_ENTRY(embedding_bwd,
           (const hyb_backend *be, float *dW, const int32_t *ids, const float *dy, int64_t n,
            int64_t D),
           (dW, ids, dy, n, D), "embedding_bwd n=%lld D=%lld", (long long)n, (long long)D)
CUDA_ENTRY(rmsnorm_fwd,
           (const hyb_backend *be, const float *x, const float *w, float *y, float *rstd,
            int64_t rows, int64_t D, float eps),
           (x, w, y, rstd, rows, D, eps), "rmsnorm_fwd [%lld, %lld]", (long long)rows, (long long)D)
CUDA_ENTRY(add_rmsnorm_fwd,
           (const hyb_backend *be, const float *a, const float *b, const float *w, float *h,
            float *y, float *rstd, int64_t rows, int64_t D, float eps),
           (a, b, w, h, y, rstd, rows, D, eps), "add_rmsnorm_fwd [%lld, %lld]", (long long)rows,
           (long long)D)
CUDA_ENTRY(rmsnorm_bwd,
           (const hyb_backend *be, const float *x, const float *w, const float *rstd,
            const float *dy, float *dx, float *dw, int64_t rows, int64_t D),
           (x, w, rstd, dy, dx, dw, rows, D), "rmsnorm_bwd [%lld, %lld]", (long long)rows,
           (long long)D)
CUDA_ENTRY(swiglu_fwd, (const hyb_backend *be, const float *g, const float *u, float *y, int64_t n),
           (g, u, y, n), "swiglu_fwd n=%lld", (long long)n)
CUDA_ENTRY(swiglu_bwd,
           (const hyb_backend *be, const float *g, const float *u, const float *dy, float *dg,
            float *du, int64_t n),
           (g, u, dy, dg, du, n), "swiglu_bwd n=%lld", (long long)n)
CUDA_ENTRY(add, (const hyb_backend *be, const float *a, const float *b, float *y, int64_t n),
           (a, b, y, n), "add n=%lld", (long long)n)
CUDA_ENTRY(axpy, (const hyb_backend *be, float *d, const float *s, float alpha, int64_t n),
           (d, s, alpha, n), "axpy n=%lld", (long long)n)
CUDA_ENTRY(softmax_fwd, (const hyb_backend *be, const float *x, float *y, int64_t rows, int64_t V),
           (x, y, rows, V), "softmax_fwd [%lld, %lld]", (long long)rows, (long long)V)
CUDA_ENTRY(softmax_bwd,
           (const hyb_backend *be, const float *y, const float *dy, float *dx, int64_t rows,
            int64_t V),
           (y, dy, dx, rows, V), "softmax_bwd [%lld, %lld]", (long long)rows, (long long)V)
CUDA_ENTRY(ce_fwd,
           (const hyb_backend *be, const float *logits, const int32_t *targets, const float *w,
            float *lse, int64_t rows, int64_t V, double *loss_sum),
           (logits, targets, w, lse, rows, V, loss_sum), "ce_fwd [%lld, %lld]", (long long)rows,
           (long long)V)
CUDA_ENTRY(ce_bwd,
           (const hyb_backend *be, const float *logits, const int32_t *targets, const float *w,
            const float *lse, float *dlogits, int64_t rows, int64_t V, float scale),
           (logits, targets, w, lse, dlogits, rows, V, scale), "ce_bwd [%lld, %lld]",
           (long long)rows, (long long)V)
CUDA_ENTRY(kl_fwd,
           (const hyb_backend *be, const float *s, const float *t, const float *w, float *stats,
            int64_t rows, int64_t V, float T, int reverse, double *loss_sum),
           (s, t, w, stats, rows, V, T, reverse, loss_sum), "kl_fwd [%lld, %lld]", (long long)rows,
           (long long)V)
CUDA_ENTRY(kl_bwd,
           (const hyb_backend *be, const float *s, const float *t, const float *w,
            const float *stats, float *ds, int64_t rows, int64_t V, float T, int reverse,
            float scale),
           (s, t, w, stats, ds, rows, V, T, reverse, scale), "kl_bwd [%lld, %lld]", (long long)rows,
           (long long)V)

CUDA_ENTRY(adamw,
           (const hyb_backend *be, float *p, const float *g, float *m, float *v, int64_t n,
            float b1, float b2, float eps, float shrink, float step_size, float inv_sqrt_bc2),
           (p, g, m, v, n, b1, b2, eps, shrink, step_size, inv_sqrt_bc2), "adamw n=%lld",
           (long long)n)
CUDA_ENTRY(adamw_multi,
           (const hyb_backend *be, const hyb_adamw_tensor *t, int count, float b1, float b2,
            float eps, float inv_sqrt_bc2),
           (t, count, b1, b2, eps, inv_sqrt_bc2), "adamw_multi (%d tensors)", count)
CUDA_ENTRY(sample,
           (const hyb_backend *be, const float *logits, int64_t n, int64_t V,
            const hyb_sample_row *rows, int32_t *out),
           (logits, n, V, rows, out), "sample [%lld, %lld]", (long long)n, (long long)V)
CUDA_ENTRY(sumsq, (const hyb_backend *be, const float *x, int64_t n, double *out), (x, n, out),
           "sumsq n=%lld", (long long)n)
static int be_kernel(const hyb_backend *be, const char *file, const char *source,
                     const char *kernel, const char *const *opts, int nopts, void **fn) {
    (void)be;
    return plugin_kernel(file, source, kernel, opts, nopts, fn);
}
static int be_launch(const hyb_backend *be, void *fn, const char *kernel, const unsigned grid[3],
                     const unsigned block[3], unsigned shared_bytes, void **args) {
    (void)be;
    return plugin_launch(fn, kernel, grid, block, shared_bytes, args);
}
CUDA_ENTRY(scale, (const hyb_backend *be, float *x, float alpha, int64_t n), (x, alpha, n),
           "scale n=%lld", (long long)n)

static hyb_backend g_cuda_backend = {
    .name = g_cuda_name,
    .device = HYB_DEV_CUDA,
    .alloc = be_alloc,
    .free = be_free,
    .memset0 = be_memset0,
    .copy = be_copy,
    .upload = be_upload,
    .download = be_download,
    .sgemm = be_sgemm,
    .rope = be_rope,
    .embedding_fwd = be_embedding_fwd,
    .embedding_bwd = be_embedding_bwd,
    .rmsnorm_fwd = be_rmsnorm_fwd,
    .add_rmsnorm_fwd = be_add_rmsnorm_fwd,
    .rmsnorm_bwd = be_rmsnorm_bwd,
    .swiglu_fwd = be_swiglu_fwd,
    .swiglu_bwd = be_swiglu_bwd,
    .add = be_add,
    .axpy = be_axpy,
    .softmax_fwd = be_softmax_fwd,
    .softmax_bwd = be_softmax_bwd,
    .ce_fwd = be_ce_fwd,
    .ce_bwd = be_ce_bwd,
    .kl_fwd = be_kl_fwd,
    .kl_bwd = be_kl_bwd,
    .adamw = be_adamw,
    .adamw_multi = be_adamw_multi,
    .sample = be_sample,
    .sumsq = be_sumsq,
    .scale = be_scale,
    .ewise = be_ewise,
    .ewise_bwd = be_ewise_bwd,
    .axis = be_axis,
    .axis_bwd = be_axis_bwd,
    .tri = be_tri,
    .conv1d_causal = be_conv1d_causal,
    .conv1d_causal_bwd = be_conv1d_causal_bwd,
    .gather = be_gather,
    .gather_bwd = be_gather_bwd,
    .sgemm_batched = be_sgemm_batched,
    .kernel = be_kernel,
    .launch = be_launch,
    .graph_begin = hyb_cuda_graph_begin, /* cuda_graph.c */
    .graph_end = hyb_cuda_graph_end,
    .graph_launch = hyb_cuda_graph_launch,
    .graph_free = hyb_cuda_graph_free,
};

const hyb_backend *hyb_backend_cuda(void) {
    return hyb_cuda_g.ready ? &g_cuda_backend : NULL;
}

int hyb_cuda_register_backend(void) {
    g_cuda_backend.ordinal = hyb_cuda_g.ordinal;
    snprintf(g_cuda_name, sizeof g_cuda_name, "cuda:%d", hyb_cuda_g.ordinal);
    g_cuda_backend.ctx = &hyb_cuda_g;
    g_cuda_backend.stream = (void *)hyb_cuda_g.stream;
    return hyb_backend_register(&g_cuda_backend);
}
