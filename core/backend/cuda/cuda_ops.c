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
        CUmodule mod;
    } mods[MAX_MODULES];
    int nmods;
    struct {
        const char *kernel;
        CUfunction fn;
    } fns[MAX_FUNCS];
    int nfns;
} g_k = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int load_module(const char *file, CUmodule *out) {
    for (int i = 0; i < g_k.nmods; i++)
        if (strcmp(g_k.mods[i].file, file) == 0) {
            *out = g_k.mods[i].mod;
            return HYB_OK;
        }
    if (g_k.nmods == MAX_MODULES)
        return hyb_error_set(HYB_ERR, "CUDA: too many kernel modules (%d)", MAX_MODULES);
    hyb_cuda_image img;
    HYB_TRY(hyb_cuda_compile_builtin(file, hyb_cuda_g.arch, 1, &img));
    CUmodule mod = NULL;
    CUresult r = hyb_cu.cuModuleLoadData(&mod, img.data);
    if (r != CUDA_SUCCESS && img.from_cache) { /* a stale or damaged cache entry: rebuild it */
        hyb_log(HYB_LOG_WARN, "cached kernel %s (%s) did not load: recompiling", file, img.key);
        hyb_cuda_image_free(&img);
        HYB_TRY(hyb_cuda_compile_builtin(file, hyb_cuda_g.arch, 0, &img));
        r = hyb_cu.cuModuleLoadData(&mod, img.data);
    }
    hyb_cuda_image_free(&img);
    int rc = hyb_cu_check(r, "cuModuleLoadData", __FILE__, __LINE__);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "loading kernels of %s", file);
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
    if (load_module(file, &mod) != HYB_OK) goto out;
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

int hyb_cuda_launch(CUfunction f, const char *kernel, unsigned gx, unsigned gy, unsigned bx,
                    void **args) {
    CUresult r = hyb_cu.cuLaunchKernel(f, gx, gy, 1, bx, 1, 1, 0, hyb_cuda_g.stream, args, NULL);
    if (r != CUDA_SUCCESS)
        return hyb_error_wrap(hyb_cu_check(r, "cuLaunchKernel", __FILE__, __LINE__),
                              "kernel %s (grid %u x %u, block %u)", kernel, gx, gy, bx);
    return HYB_OK;
}

void hyb_cuda_ops_reset(void) { /* after the context went away (hyb_cuda_shutdown) */
    pthread_mutex_lock(&g_k.mu);
    g_k.nmods = g_k.nfns = 0;
    pthread_mutex_unlock(&g_k.mu);
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
int hyb_cuda_add(const float *a, const float *b, float *y, int64_t n) {
    if (n <= 0) return HYB_OK;
    GET("elementwise.cu", "hyb_add");
    LAUNCH("hyb_add", grid_for(n), 1, BLOCK, &a, &b, &y, &n);
    return HYB_OK;
}
int hyb_cuda_axpy(float *dst, const float *src, float alpha, int64_t n) {
    if (n <= 0) return HYB_OK;
    GET("elementwise.cu", "hyb_axpy");
    LAUNCH("hyb_axpy", grid_for(n), 1, BLOCK, &dst, &src, &alpha, &n);
    return HYB_OK;
}
int hyb_cuda_swiglu_fwd(const float *gate, const float *up, float *y, int64_t n) {
    if (n <= 0) return HYB_OK;
    GET("elementwise.cu", "hyb_swiglu_fwd");
    LAUNCH("hyb_swiglu_fwd", grid_for(n), 1, BLOCK, &gate, &up, &y, &n);
    return HYB_OK;
}
int hyb_cuda_swiglu_bwd(const float *gate, const float *up, const float *dy, float *dgate,
                        float *dup, int64_t n) {
    if (n <= 0 || (!dgate && !dup)) return HYB_OK;
    GET("elementwise.cu", "hyb_swiglu_bwd");
    LAUNCH("hyb_swiglu_bwd", grid_for(n), 1, BLOCK, &gate, &up, &dy, &dgate, &dup, &n);
    return HYB_OK;
}
int hyb_cuda_f32_to_bf16(const float *x, void *y, int64_t n) {
    if (n <= 0) return HYB_OK;
    GET("elementwise.cu", "hyb_f32_to_bf16");
    LAUNCH("hyb_f32_to_bf16", grid_for(n), 1, BLOCK, &x, &y, &n);
    return HYB_OK;
}
int hyb_cuda_bf16_to_f32(const void *x, float *y, int64_t n) {
    if (n <= 0) return HYB_OK;
    GET("elementwise.cu", "hyb_bf16_to_f32");
    LAUNCH("hyb_bf16_to_f32", grid_for(n), 1, BLOCK, &x, &y, &n);
    return HYB_OK;
}
int hyb_cuda_adamw(float *p, const float *g, float *m, float *v, int64_t n, float b1, float b2,
                   float eps, float shrink, float step_size, float inv_sqrt_bc2) {
    if (n <= 0) return HYB_OK;
    GET("elementwise.cu", "hyb_adamw");
    LAUNCH("hyb_adamw", grid_for(n), 1, BLOCK, &p, &g, &m, &v, &n, &b1, &b2, &eps, &shrink,
           &step_size, &inv_sqrt_bc2);
    return HYB_OK;
}
int hyb_cuda_scale(float *x, float alpha, int64_t n) {
    if (n <= 0) return HYB_OK;
    GET("elementwise.cu", "hyb_scale");
    LAUNCH("hyb_scale", grid_for(n), 1, BLOCK, &x, &alpha, &n);
    return HYB_OK;
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
static void *be_alloc(const hyb_backend *be, size_t n) {
    (void)be;
    return hyb_cuda_malloc(n);
}
static void be_free(const hyb_backend *be, void *p) {
    (void)be;
    hyb_cuda_free(p);
}
static int be_memset0(const hyb_backend *be, void *p, size_t n) {
    (void)be;
    return report(hyb_cuda_memset0(p, n), "memset0 %zu bytes", n);
}
static int be_copy(const hyb_backend *be, void *d, const void *s, size_t n) {
    (void)be;
    return report(hyb_cuda_copy(d, s, n), "copy %zu bytes", n);
}
static int be_upload(const hyb_backend *be, void *d, const void *s, size_t n) {
    (void)be;
    return report(hyb_cuda_upload(d, s, n), "upload %zu bytes", n);
}
static int be_download(const hyb_backend *be, void *d, const void *s, size_t n) {
    (void)be;
    return report(hyb_cuda_download(d, s, n), "download %zu bytes", n);
}
static int be_sgemm(const hyb_backend *be, int tA, int tB, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc) {
    (void)be;
    return report(hyb_cuda_sgemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc),
                  "sgemm M=%d N=%d K=%d (trans %d%d)", M, N, K, tA, tB);
}
static int be_rope(const hyb_backend *be, float *x, int B, int T, int H, int hd, const int32_t *pos,
                   float theta, int inverse) {
    (void)be;
    return report(hyb_cuda_rope(x, B, T, H, hd, pos, theta, inverse), "rope [%d, %d, %d, %d]", B, T,
                  H, hd);
}
static int be_embedding_fwd(const hyb_backend *be, const float *W, const int32_t *ids, float *y,
                            int64_t n, int64_t D) {
    (void)be;
    return report(hyb_cuda_embedding_fwd(W, ids, y, n, D), "embedding_fwd n=%lld D=%lld",
                  (long long)n, (long long)D);
}
static int be_embedding_bwd(const hyb_backend *be, float *dW, const int32_t *ids, const float *dy,
                            int64_t n, int64_t D) {
    (void)be;
    return report(hyb_cuda_embedding_bwd(dW, ids, dy, n, D), "embedding_bwd n=%lld D=%lld",
                  (long long)n, (long long)D);
}
static int be_rmsnorm_fwd(const hyb_backend *be, const float *x, const float *w, float *y,
                          float *rstd, int64_t rows, int64_t D, float eps) {
    (void)be;
    return report(hyb_cuda_rmsnorm_fwd(x, w, y, rstd, rows, D, eps), "rmsnorm_fwd [%lld, %lld]",
                  (long long)rows, (long long)D);
}
static int be_rmsnorm_bwd(const hyb_backend *be, const float *x, const float *w, const float *rstd,
                          const float *dy, float *dx, float *dw, int64_t rows, int64_t D) {
    (void)be;
    return report(hyb_cuda_rmsnorm_bwd(x, w, rstd, dy, dx, dw, rows, D), "rmsnorm_bwd [%lld, %lld]",
                  (long long)rows, (long long)D);
}
static int be_swiglu_fwd(const hyb_backend *be, const float *g, const float *u, float *y,
                         int64_t n) {
    (void)be;
    return report(hyb_cuda_swiglu_fwd(g, u, y, n), "swiglu_fwd n=%lld", (long long)n);
}
static int be_swiglu_bwd(const hyb_backend *be, const float *g, const float *u, const float *dy,
                         float *dg, float *du, int64_t n) {
    (void)be;
    return report(hyb_cuda_swiglu_bwd(g, u, dy, dg, du, n), "swiglu_bwd n=%lld", (long long)n);
}
static int be_add(const hyb_backend *be, const float *a, const float *b, float *y, int64_t n) {
    (void)be;
    return report(hyb_cuda_add(a, b, y, n), "add n=%lld", (long long)n);
}
static int be_axpy(const hyb_backend *be, float *d, const float *s, float alpha, int64_t n) {
    (void)be;
    return report(hyb_cuda_axpy(d, s, alpha, n), "axpy n=%lld", (long long)n);
}
static int be_softmax_fwd(const hyb_backend *be, const float *x, float *y, int64_t rows,
                          int64_t V) {
    (void)be;
    return report(hyb_cuda_softmax_fwd(x, y, rows, V), "softmax_fwd [%lld, %lld]", (long long)rows,
                  (long long)V);
}
static int be_softmax_bwd(const hyb_backend *be, const float *y, const float *dy, float *dx,
                          int64_t rows, int64_t V) {
    (void)be;
    return report(hyb_cuda_softmax_bwd(y, dy, dx, rows, V), "softmax_bwd [%lld, %lld]",
                  (long long)rows, (long long)V);
}
static int be_ce_fwd(const hyb_backend *be, const float *logits, const int32_t *targets,
                     const float *w, float *lse, int64_t rows, int64_t V, double *loss_sum) {
    (void)be;
    return report(hyb_cuda_ce_fwd(logits, targets, w, lse, rows, V, loss_sum),
                  "ce_fwd [%lld, %lld]", (long long)rows, (long long)V);
}
static int be_ce_bwd(const hyb_backend *be, const float *logits, const int32_t *targets,
                     const float *w, const float *lse, float *dlogits, int64_t rows, int64_t V,
                     float scale) {
    (void)be;
    return report(hyb_cuda_ce_bwd(logits, targets, w, lse, dlogits, rows, V, scale),
                  "ce_bwd [%lld, %lld]", (long long)rows, (long long)V);
}
static int be_kl_fwd(const hyb_backend *be, const float *s, const float *t, const float *w,
                     float *stats, int64_t rows, int64_t V, float T, int reverse,
                     double *loss_sum) {
    (void)be;
    return report(hyb_cuda_kl_fwd(s, t, w, stats, rows, V, T, reverse, loss_sum),
                  "kl_fwd [%lld, %lld]", (long long)rows, (long long)V);
}
static int be_kl_bwd(const hyb_backend *be, const float *s, const float *t, const float *w,
                     const float *stats, float *ds, int64_t rows, int64_t V, float T, int reverse,
                     float scale) {
    (void)be;
    return report(hyb_cuda_kl_bwd(s, t, w, stats, ds, rows, V, T, reverse, scale),
                  "kl_bwd [%lld, %lld]", (long long)rows, (long long)V);
}

static int be_adamw(const hyb_backend *be, float *p, const float *g, float *m, float *v, int64_t n,
                    float b1, float b2, float eps, float shrink, float step_size,
                    float inv_sqrt_bc2) {
    (void)be;
    return report(hyb_cuda_adamw(p, g, m, v, n, b1, b2, eps, shrink, step_size, inv_sqrt_bc2),
                  "adamw n=%lld", (long long)n);
}
static int be_sumsq(const hyb_backend *be, const float *x, int64_t n, double *out) {
    (void)be;
    return report(hyb_cuda_sumsq(x, n, out), "sumsq n=%lld", (long long)n);
}
static int be_scale(const hyb_backend *be, float *x, float alpha, int64_t n) {
    (void)be;
    return report(hyb_cuda_scale(x, alpha, n), "scale n=%lld", (long long)n);
}

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
    .sumsq = be_sumsq,
    .scale = be_scale,
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
