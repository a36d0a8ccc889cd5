/* tests/cuda_ops.c: every CUDA kernel against the CPU backend (label `cuda`), in the spirit of
 * ggml's test-backend-ops: fresh random inputs, the same call on both backends, outputs compared
 * by normalised MSE  nmse(a, b) = sum (a - b)^2 / sum b^2  (b = CPU).
 *
 * Thresholds: 1e-7 for the f32 ops (they differ from the CPU only in summation order and in
 * expf/sincosf rounding, a few ulp: nmse ~ 1e-12 or below). Backward gradients are ACCUMULATED
 * into random initial values on both sides, so "+=" versus "=" is caught too. The bf16 GEMM
 * compares with the CPU f32 GEMM of the SAME bf16-rounded inputs: products of bf16 numbers are
 * exact in f32, so the only difference is f32 accumulation order (relative error ~ sqrt(K) *
 * 2^-24 ~ 1e-6 for K = 256, nmse ~ 1e-12): 1e-7 still applies and catches a layout or transpose
 * bug (nmse ~ 1). A bf16 OUTPUT adds a rounding of relative size 2^-9 per element, nmse
 * <= (2^-9)^2 / 3 ~ 1.3e-6, so that case uses 1e-5.
 *
 * Exits 77 (skipped) with a message when there is no CUDA driver or no GPU. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/backend.h"
#include "hyb/common.h"

#ifdef HYB_HAVE_CUDA
#include "backend/cpu/cpu.h"
#include "backend/cuda/cuda.h"

#define TOL 1e-7

static const hyb_backend *cpu, *gpu;
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float urand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0) - 1.0); /* 24 bits / 2^23 - 1 */
}
static float *rnd(int64_t n, float scale) {
    float *p = malloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++)
        p[i] = scale * urand();
    return p;
}
static float *to_dev(const float *x, int64_t n) {
    float *d = gpu->alloc(gpu, sizeof(float) * (size_t)(n ? n : 1));
    HYB_ASSERT(d != NULL);
    gpu->upload(gpu, d, x, sizeof(float) * (size_t)n);
    return d;
}
/* download d into a new host array and free d */
static float *from_dev(float *d, int64_t n) {
    float *h = malloc(sizeof(float) * (size_t)(n ? n : 1));
    gpu->download(gpu, h, d, sizeof(float) * (size_t)n);
    gpu->free(gpu, d);
    return h;
}
static double nmse(const float *a, const float *b, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
        if (a[i] != a[i]) return INFINITY; /* NaN */
    }
    return num / (den > 1e-30 ? den : 1e-30);
}
#define CHECK_NMSE(gpu_out, cpu_out, n, tol)                                                       \
    do {                                                                                           \
        double e_ = nmse(gpu_out, cpu_out, n);                                                     \
        CHECK_MSG(e_ <= (tol), "%s vs %s: nmse %.3g > %g", #gpu_out, #cpu_out, e_, (double)(tol)); \
    } while (0)
/* Download (and free) device buffer d of n floats and check it against the CPU's result host. */
#define CHECK_DEV(d, host, n, tol)                                                                 \
    do {                                                                                           \
        float *g_ = from_dev(d, n);                                                                \
        CHECK_NMSE(g_, host, n, tol);                                                              \
        free(g_);                                                                                  \
    } while (0)

static void test_add_axpy(void) {
    const int64_t n = 100003;
    float *a = rnd(n, 1), *b = rnd(n, 1), *y = malloc(sizeof(float) * n);
    float *da = to_dev(a, n), *db = to_dev(b, n), *dy = to_dev(y, n);
    cpu->add(cpu, a, b, y, n);
    gpu->add(gpu, da, db, dy, n);
    float *gy = from_dev(dy, n);
    CHECK_NMSE(gy, y, n, TOL);
    cpu->axpy(cpu, a, b, -0.37f, n);
    gpu->axpy(gpu, da, db, -0.37f, n);
    float *ga = from_dev(da, n);
    CHECK_NMSE(ga, a, n, TOL);
    gpu->free(gpu, db);
    free(a), free(b), free(y), free(gy), free(ga);
}

static void test_swiglu(void) {
    const int64_t n = 70001;
    float *g = rnd(n, 4), *u = rnd(n, 2), *dy = rnd(n, 1), *y = malloc(sizeof(float) * n);
    float *dg = rnd(n, 1), *du = rnd(n, 1);
    float *d_g = to_dev(g, n), *d_u = to_dev(u, n), *d_dy = to_dev(dy, n), *d_y = to_dev(y, n);
    float *d_dg = to_dev(dg, n), *d_du = to_dev(du, n);
    cpu->swiglu_fwd(cpu, g, u, y, n);
    gpu->swiglu_fwd(gpu, d_g, d_u, d_y, n);
    cpu->swiglu_bwd(cpu, g, u, dy, dg, du, n);
    gpu->swiglu_bwd(gpu, d_g, d_u, d_dy, d_dg, d_du, n);
    CHECK_DEV(d_y, y, n, TOL);
    CHECK_DEV(d_dg, dg, n, TOL);
    CHECK_DEV(d_du, du, n, TOL);
    gpu->free(gpu, d_g), gpu->free(gpu, d_u), gpu->free(gpu, d_dy);
    free(g), free(u), free(dy), free(y), free(dg), free(du);
}

static void test_embedding(void) {
    const int64_t V = 1000, D = 96, n = 777;
    int32_t *ids = malloc(sizeof(int32_t) * n);
    for (int64_t i = 0; i < n; i++)
        ids[i] = (int32_t)((urand() + 1.0f) * 0.5f * 50); /* ids < 50: many repeats */
    ids[0] = (int32_t)(V - 1);
    float *W = rnd(V * D, 1), *y = malloc(sizeof(float) * n * D), *dy = rnd(n * D, 1);
    float *dW = rnd(V * D, 1);
    float *d_W = to_dev(W, V * D), *d_y = to_dev(y, n * D), *d_dy = to_dev(dy, n * D);
    float *d_dW = to_dev(dW, V * D);
    cpu->embedding_fwd(cpu, W, ids, y, n, D);
    gpu->embedding_fwd(gpu, d_W, ids, d_y, n, D);
    cpu->embedding_bwd(cpu, dW, ids, dy, n, D);
    gpu->embedding_bwd(gpu, d_dW, ids, d_dy, n, D);
    CHECK_DEV(d_y, y, n * D, TOL);
    CHECK_DEV(d_dW, dW, V * D, TOL);
    gpu->free(gpu, d_W), gpu->free(gpu, d_dy);
    free(ids), free(W), free(y), free(dy), free(dW);
}

static void test_rmsnorm(void) {
    const int64_t rows = 300, D = 576; /* D > block size and not a multiple of it */
    float *x = rnd(rows * D, 3), *w = rnd(D, 1), *dy = rnd(rows * D, 1);
    float *y = malloc(sizeof(float) * rows * D), *rstd = malloc(sizeof(float) * rows);
    float *dx = rnd(rows * D, 1), *dw = rnd(D, 1);
    float *d_x = to_dev(x, rows * D), *d_w = to_dev(w, D), *d_dy = to_dev(dy, rows * D);
    float *d_y = to_dev(y, rows * D), *d_rstd = to_dev(rstd, rows);
    float *d_dx = to_dev(dx, rows * D), *d_dw = to_dev(dw, D);
    cpu->rmsnorm_fwd(cpu, x, w, y, rstd, rows, D, 1e-5f);
    gpu->rmsnorm_fwd(gpu, d_x, d_w, d_y, d_rstd, rows, D, 1e-5f);
    /* the backward of each side uses its own rstd (as the graph would) */
    cpu->rmsnorm_bwd(cpu, x, w, rstd, dy, dx, dw, rows, D);
    gpu->rmsnorm_bwd(gpu, d_x, d_w, d_rstd, d_dy, d_dx, d_dw, rows, D);
    CHECK_DEV(d_y, y, rows * D, TOL);
    CHECK_DEV(d_rstd, rstd, rows, TOL);
    CHECK_DEV(d_dx, dx, rows * D, TOL);
    CHECK_DEV(d_dw, dw, D, TOL);
    gpu->free(gpu, d_x), gpu->free(gpu, d_w), gpu->free(gpu, d_dy);
    free(x), free(w), free(dy), free(y), free(rstd), free(dx), free(dw);
}

/* fused residual add + rmsnorm: the CPU entry is bit-identical to add then rmsnorm_fwd; CUDA
 * matches the CPU (h exactly: one f32 add; y and rstd to the f32 tolerance); in place (h = a)
 * too. D = 576 > the block size and not a multiple of it, D = 7 < one warp. */
static void test_add_rmsnorm(void) {
    static const int64_t shapes[2][2] = {{300, 576}, {5, 7}};
    for (int s = 0; s < 2; s++) {
        const int64_t rows = shapes[s][0], D = shapes[s][1], n = rows * D;
        float *a = rnd(n, 3), *b = rnd(n, 2), *w = rnd(D, 1);
        float *h = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
        float *rstd = malloc(sizeof(float) * rows), *h2 = malloc(sizeof(float) * n);
        float *y2 = malloc(sizeof(float) * n), *rstd2 = malloc(sizeof(float) * rows);
        CHECK(cpu->add_rmsnorm_fwd(cpu, a, b, w, h, y, rstd, rows, D, 1e-5f) == HYB_OK);
        cpu->add(cpu, a, b, h2, n);
        cpu->rmsnorm_fwd(cpu, h2, w, y2, rstd2, rows, D, 1e-5f);
        CHECK(memcmp(h, h2, sizeof(float) * n) == 0 && memcmp(y, y2, sizeof(float) * n) == 0 &&
              memcmp(rstd, rstd2, sizeof(float) * rows) == 0);
        float *d_a = to_dev(a, n), *d_b = to_dev(b, n), *d_w = to_dev(w, D);
        float *d_h = to_dev(h2, n), *d_y = to_dev(y2, n), *d_r = to_dev(rstd2, rows);
        CHECK_MSG(gpu->add_rmsnorm_fwd(gpu, d_a, d_b, d_w, d_h, d_y, d_r, rows, D, 1e-5f) == HYB_OK,
                  "%s", hyb_error());
        float *gh = from_dev(d_h, n);
        CHECK(memcmp(gh, h, sizeof(float) * n) == 0);
        CHECK_DEV(d_y, y, n, TOL);
        CHECK_DEV(d_r, rstd, rows, TOL);
        /* in place: h written over a */
        d_y = to_dev(y2, n), d_r = to_dev(rstd2, rows);
        CHECK(gpu->add_rmsnorm_fwd(gpu, d_a, d_b, d_w, d_a, d_y, d_r, rows, D, 1e-5f) == HYB_OK);
        float *ga = from_dev(d_a, n);
        CHECK(memcmp(ga, h, sizeof(float) * n) == 0);
        CHECK_DEV(d_y, y, n, TOL);
        CHECK_DEV(d_r, rstd, rows, TOL);
        gpu->free(gpu, d_b), gpu->free(gpu, d_w);
        free(a), free(b), free(w), free(h), free(y), free(rstd), free(h2), free(y2), free(rstd2);
        free(gh), free(ga);
    }
}

static void test_rope(void) {
    const int B = 2, T = 37, H = 3, hd = 64;
    const int64_t n = (int64_t)B * T * H * hd;
    int32_t pos[37];
    for (int t = 0; t < T; t++)
        pos[t] = 5 + 3 * t; /* not 0..T-1: the positions must be used */
    for (int inverse = 0; inverse < 2; inverse++) {
        float *x = rnd(n, 1), *d_x = to_dev(x, n);
        cpu->rope(cpu, x, B, T, H, hd, pos, 10000.0f, inverse);
        gpu->rope(gpu, d_x, B, T, H, hd, pos, 10000.0f, inverse);
        float *gx = from_dev(d_x, n);
        CHECK_NMSE(gx, x, n, TOL);
        free(x), free(gx);
    }
}

static void test_softmax(void) {
    const int64_t rows = 33, V = 5000;
    float *x = rnd(rows * V, 8), *dy = rnd(rows * V, 1), *y = malloc(sizeof(float) * rows * V);
    float *dx = rnd(rows * V, 1);
    float *d_x = to_dev(x, rows * V), *d_y = to_dev(y, rows * V), *d_dy = to_dev(dy, rows * V);
    float *d_dx = to_dev(dx, rows * V);
    cpu->softmax_fwd(cpu, x, y, rows, V);
    gpu->softmax_fwd(gpu, d_x, d_y, rows, V);
    cpu->softmax_bwd(cpu, y, dy, dx, rows, V);
    gpu->softmax_bwd(gpu, d_y, d_dy, d_dx, rows, V);
    CHECK_DEV(d_y, y, rows * V, TOL);
    CHECK_DEV(d_dx, dx, rows * V, TOL);
    gpu->free(gpu, d_x), gpu->free(gpu, d_dy);
    free(x), free(dy), free(y), free(dx);
}

/* large vocabulary, ignored rows (w = 0, target -1), weighted rows */
static void test_cross_entropy(void) {
    const int64_t rows = 24, V = 49152 + 17;
    float *x = rnd(rows * V, 10), *w = malloc(sizeof(float) * rows);
    int32_t *t = malloc(sizeof(int32_t) * rows);
    for (int64_t r = 0; r < rows; r++) {
        t[r] = (int32_t)((urand() + 1.0f) * 0.5f * (float)(V - 1));
        w[r] = r % 5 == 3 ? 0.0f : 0.5f + 0.5f * (urand() + 1.0f);
        if (w[r] == 0.0f) t[r] = -1;
    }
    float *lse = malloc(sizeof(float) * rows), *dx = rnd(rows * V, 1e-4f);
    float *d_x = to_dev(x, rows * V), *d_lse = to_dev(lse, rows), *d_dx = to_dev(dx, rows * V);
    double lc = 0, lg = 0;
    cpu->ce_fwd(cpu, x, t, w, lse, rows, V, &lc);
    gpu->ce_fwd(gpu, d_x, t, w, d_lse, rows, V, &lg);
    CHECK_MSG(fabs(lg - lc) <= 1e-5 * fabs(lc), "ce loss: cuda %.9g cpu %.9g", lg, lc);
    cpu->ce_bwd(cpu, x, t, w, lse, dx, rows, V, 0.25f);
    gpu->ce_bwd(gpu, d_x, t, w, d_lse, d_dx, rows, V, 0.25f);
    float *glse = from_dev(d_lse, rows), *gdx = from_dev(d_dx, rows * V);
    CHECK_NMSE(glse, lse, rows, TOL);
    CHECK_NMSE(gdx, dx, rows * V, TOL);
    gpu->free(gpu, d_x);
    free(x), free(w), free(t), free(lse), free(dx), free(glse), free(gdx);
}

static void test_kl(void) {
    const int64_t rows = 12, V = 32768 + 5;
    for (int reverse = 0; reverse < 2; reverse++) {
        float *s = rnd(rows * V, 6), *t = rnd(rows * V, 12), *w = malloc(sizeof(float) * rows);
        s[7] = 150.0f, s[V + 3] = -130.0f, t[11] = 400.0f; /* outside the clamp */
        for (int64_t r = 0; r < rows; r++)
            w[r] = r == 4 ? 0.0f : 1.0f + (float)r / 8.0f;
        float *st = malloc(sizeof(float) * rows * 3), *ds = rnd(rows * V, 1e-4f);
        float *d_s = to_dev(s, rows * V), *d_t = to_dev(t, rows * V);
        float *d_st = to_dev(st, rows * 3), *d_ds = to_dev(ds, rows * V);
        double lc = 0, lg = 0;
        cpu->kl_fwd(cpu, s, t, w, st, rows, V, 2.0f, reverse, &lc);
        gpu->kl_fwd(gpu, d_s, d_t, w, d_st, rows, V, 2.0f, reverse, &lg);
        CHECK_MSG(fabs(lg - lc) <= 1e-4 * fabs(lc) + 1e-7,
                  "kl(reverse=%d) loss: cuda %.9g cpu %.9g", reverse, lg, lc);
        cpu->kl_bwd(cpu, s, t, w, st, ds, rows, V, 2.0f, reverse, 0.5f);
        gpu->kl_bwd(gpu, d_s, d_t, w, d_st, d_ds, rows, V, 2.0f, reverse, 0.5f);
        float *gst = from_dev(d_st, rows * 3), *gds = from_dev(d_ds, rows * V);
        /* the lse columns; the KL itself is checked through the loss above (it is a small
         * difference of large sums, so its relative error is larger than 1e-7 nmse allows) */
        float lc2[2 * 12], lg2[2 * 12];
        for (int64_t r = 0; r < rows; r++)
            lc2[2 * r] = st[3 * r], lc2[2 * r + 1] = st[3 * r + 1], lg2[2 * r] = gst[3 * r],
                    lg2[2 * r + 1] = gst[3 * r + 1];
        CHECK_NMSE(lg2, lc2, 2 * rows, TOL);
        CHECK_NMSE(gds, ds, rows * V, TOL);
        gpu->free(gpu, d_s), gpu->free(gpu, d_t);
        free(s), free(t), free(w), free(st), free(ds), free(gst), free(gds);
    }
}

static void test_sgemm(void) {
    const int M = 67, N = 45, K = 129;
    for (int tA = 0; tA < 2; tA++)
        for (int tB = 0; tB < 2; tB++) {
            float *A = rnd((int64_t)M * K, 1), *B = rnd((int64_t)K * N, 1),
                  *C = rnd((int64_t)M * N, 1);
            const int lda = tA ? M : K, ldb = tB ? K : N;
            float *dA = to_dev(A, (int64_t)M * K), *dB = to_dev(B, (int64_t)K * N);
            float *dC = to_dev(C, (int64_t)M * N);
            cpu->sgemm(cpu, tA, tB, M, N, K, 0.7f, A, lda, B, ldb, 0.3f, C, N);
            gpu->sgemm(gpu, tA, tB, M, N, K, 0.7f, dA, lda, dB, ldb, 0.3f, dC, N);
            float *gC = from_dev(dC, (int64_t)M * N);
            CHECK_NMSE(gC, C, (int64_t)M * N, TOL);
            gpu->free(gpu, dA), gpu->free(gpu, dB);
            free(A), free(B), free(C), free(gC);
        }
}

static float f32_of(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_bf16_convert(void) {
    const int64_t n = 10007;
    float *x = rnd(n, 100);
    x[0] = 1.00390625f; /* exactly halfway between two bf16 values: ties to even */
    x[1] = NAN;
    float *d_x = to_dev(x, n);
    uint16_t *d_b = gpu->alloc(gpu, 2 * (size_t)n), *hb = malloc(2 * (size_t)n);
    CHECK(hyb_cuda_f32_to_bf16(d_x, d_b, n) == HYB_OK);
    gpu->download(gpu, hb, d_b, 2 * (size_t)n);
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += hb[i] != harness_bf16(x[i]);
    CHECK_MSG(bad == 0, "%d of %lld bf16 values differ from round-to-nearest-even", bad,
              (long long)n);
    CHECK(hyb_cuda_bf16_to_f32(d_b, d_x, n) == HYB_OK);
    float *back = from_dev(d_x, n);
    bad = 0;
    for (int64_t i = 2; i < n; i++)
        bad += back[i] != f32_of(hb[i]);
    CHECK(bad == 0);
    CHECK(back[1] != back[1]); /* NaN survives */
    gpu->free(gpu, d_b);
    free(x), free(hb), free(back);
}

/* bf16 GEMMs for forward (x W^T), dX (dy W) and dW (dy^T x), against the CPU f32 GEMM of the
 * same bf16-rounded inputs (thresholds: see the top of the file) */
static void test_gemm_bf16(void) {
    const int M = 70, N = 96, K = 256;
    static const int cases[3][2] = {{0, 1}, {0, 0}, {1, 0}};
    for (int c = 0; c < 3; c++)
        for (int cf32 = 0; cf32 < 2; cf32++) {
            const int tA = cases[c][0], tB = cases[c][1];
            const int64_t na = (int64_t)M * K, nb = (int64_t)K * N, nc = (int64_t)M * N;
            float *A = rnd(na, 1), *B = rnd(nb, 1), *C = malloc(sizeof(float) * nc);
            for (int64_t i = 0; i < na; i++)
                A[i] = f32_of(harness_bf16(A[i]));
            for (int64_t i = 0; i < nb; i++)
                B[i] = f32_of(harness_bf16(B[i]));
            const int lda = tA ? M : K, ldb = tB ? K : N;
            float *dA = to_dev(A, na), *dB = to_dev(B, nb), *dC = to_dev(C, nc);
            void *a16 = gpu->alloc(gpu, 2 * (size_t)na), *b16 = gpu->alloc(gpu, 2 * (size_t)nb);
            void *c16 = gpu->alloc(gpu, 2 * (size_t)nc);
            CHECK(hyb_cuda_f32_to_bf16(dA, a16, na) == HYB_OK);
            CHECK(hyb_cuda_f32_to_bf16(dB, b16, nb) == HYB_OK);
            cpu->sgemm(cpu, tA, tB, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
            CHECK(hyb_cuda_gemm_bf16(tA, tB, M, N, K, 1.0f, a16, lda, b16, ldb, 0.0f,
                                     cf32 ? (void *)dC : c16, N, cf32) == HYB_OK);
            if (!cf32) CHECK(hyb_cuda_bf16_to_f32(c16, dC, nc) == HYB_OK);
            float *gC = from_dev(dC, nc);
            CHECK_NMSE(gC, C, nc, cf32 ? TOL : 1e-5);
            gpu->free(gpu, dA), gpu->free(gpu, dB), gpu->free(gpu, a16), gpu->free(gpu, b16);
            gpu->free(gpu, c16);
            free(A), free(B), free(C), free(gC);
        }
}

/* AdamW kernel vs the update of core/optim.c written out here in f32 */
static void test_adamw(void) {
    const int64_t n = 50001;
    float *p = rnd(n, 1), *g = rnd(n, 0.1f), *m = rnd(n, 0.01f), *v = rnd(n, 0.001f);
    for (int64_t i = 0; i < n; i++)
        v[i] = fabsf(v[i]);
    float *d_p = to_dev(p, n), *d_g = to_dev(g, n), *d_m = to_dev(m, n), *d_v = to_dev(v, n);
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, lr = 1e-3f, wd = 0.1f;
    const double t = 7;
    const float shrink = 1.0f - lr * wd, step = (float)(lr / (1.0 - pow(b1, t)));
    const float isb = (float)(1.0 / sqrt(1.0 - pow(b2, t)));
    CHECK(hyb_cuda_adamw(d_p, d_g, d_m, d_v, n, b1, b2, eps, shrink, step, isb) == HYB_OK);
    for (int64_t k = 0; k < n; k++) {
        const float mk = b1 * m[k] + (1.0f - b1) * g[k];
        const float vk = b2 * v[k] + (1.0f - b2) * g[k] * g[k];
        m[k] = mk, v[k] = vk;
        p[k] = p[k] * shrink - step * mk / (sqrtf(vk) * isb + eps);
    }
    float *gp = from_dev(d_p, n), *gm = from_dev(d_m, n), *gv = from_dev(d_v, n);
    CHECK_NMSE(gp, p, n, TOL);
    CHECK_NMSE(gm, m, n, TOL);
    CHECK_NMSE(gv, v, n, TOL);
    gpu->free(gpu, d_g);
    free(p), free(g), free(m), free(v), free(gp), free(gm), free(gv);
}

/* bf16 storage variants (kernels/store.cu with -DHYB_STORE_BF16): inputs are bf16, the reference
 * is the CPU's f32 op on the same (decoded) inputs, rounded to bf16 (round to nearest even).
 * Stated tolerance: every output within ONE bf16 ulp of that reference (|d| <= 2^-7 |ref|, bf16
 * keeping 8 significant bits): the
 * f32 results differ from the CPU's only in summation order / expf rounding (~1e-7 relative),
 * which can flip a rounding decision but never by more than one ulp. add and the stored residual
 * h of add + rmsnorm are exact (one f32 add of two bf16 values, rounded once). */
static uint16_t *bf16_arr(float *x, int64_t n) { /* x rounded in place; its bf16 bits */
    uint16_t *b = malloc(2 * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) {
        b[i] = harness_bf16(x[i]);
        x[i] = f32_of(b[i]);
    }
    return b;
}
static void *bf16_dev(const uint16_t *b, int64_t n) {
    void *d = gpu->alloc(gpu, 2 * (size_t)(n ? n : 1));
    gpu->upload(gpu, d, b, 2 * (size_t)n);
    return d;
}
/* outputs of d (bf16, n) off by more than one bf16 ulp from ref (f32) rounded; frees d */
static int64_t bf16_off(void *d, const float *ref, int64_t n, int exact) {
    uint16_t *g = malloc(2 * (size_t)(n ? n : 1));
    gpu->download(gpu, g, d, 2 * (size_t)n);
    gpu->free(gpu, d);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        const float r = f32_of(harness_bf16(ref[i])), x = f32_of(g[i]);
        bad +=
            exact ? g[i] != harness_bf16(ref[i]) : !(fabsf(x - r) <= 0x1p-7f * fabsf(r) + 1e-30f);
    }
    free(g);
    return bad;
}
static void test_store_bf16(void) {
    const int64_t rows = 37, D = 576, n = rows * D;
    float *a = rnd(n, 3), *b = rnd(n, 2), *w = rnd(D, 1);
    uint16_t *ab = bf16_arr(a, n), *bb = bf16_arr(b, n), *wb = bf16_arr(w, D);
    float *h = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    float *rs = malloc(sizeof(float) * rows);
    void *da = bf16_dev(ab, n), *db = bf16_dev(bb, n), *dw = bf16_dev(wb, D);
    /* add: exact */
    cpu->add(cpu, a, b, h, n);
    void *dy = gpu->alloc(gpu, 2 * (size_t)n);
    CHECK_MSG(hyb_cuda_add_bf16(da, db, dy, n) == HYB_OK, "%s", hyb_error());
    CHECK(bf16_off(dy, h, n, 1) == 0);
    /* swiglu */
    cpu->swiglu_fwd(cpu, a, b, y, n);
    dy = gpu->alloc(gpu, 2 * (size_t)n);
    CHECK(hyb_cuda_swiglu_fwd_bf16(da, db, dy, n) == HYB_OK);
    int64_t off = bf16_off(dy, y, n, 0);
    CHECK_MSG(off == 0, "swiglu bf16: %lld outputs off by more than one bf16 ulp", (long long)off);
    /* rmsnorm */
    cpu->rmsnorm_fwd(cpu, a, w, y, rs, rows, D, 1e-5f);
    dy = gpu->alloc(gpu, 2 * (size_t)n);
    float *drs = gpu->alloc(gpu, sizeof(float) * rows);
    CHECK(hyb_cuda_rmsnorm_fwd_bf16(da, dw, dy, drs, rows, D, 1e-5f) == HYB_OK);
    off = bf16_off(dy, y, n, 0);
    CHECK_MSG(off == 0, "rmsnorm bf16: %lld outputs off by more than one bf16 ulp", (long long)off);
    CHECK_DEV(drs, rs, rows, TOL);
    /* add + rmsnorm: h exact, the norm of the rounded h */
    for (int64_t i = 0; i < n; i++)
        h[i] = f32_of(harness_bf16(a[i] + b[i]));
    cpu->rmsnorm_fwd(cpu, h, w, y, rs, rows, D, 1e-5f);
    void *dh = gpu->alloc(gpu, 2 * (size_t)n);
    dy = gpu->alloc(gpu, 2 * (size_t)n);
    drs = gpu->alloc(gpu, sizeof(float) * rows);
    CHECK(hyb_cuda_add_rmsnorm_fwd_bf16(da, db, dw, dh, dy, drs, rows, D, 1e-5f) == HYB_OK);
    CHECK(bf16_off(dh, h, n, 1) == 0);
    off = bf16_off(dy, y, n, 0);
    CHECK_MSG(off == 0, "add_rmsnorm bf16: %lld outputs off by more than one bf16 ulp",
              (long long)off);
    CHECK_DEV(drs, rs, rows, TOL);
    gpu->free(gpu, da), gpu->free(gpu, db), gpu->free(gpu, dw);
    free(a), free(b), free(w), free(ab), free(bb), free(wb), free(h), free(y), free(rs);
}

/* |a - b| <= rel |b| + 1e-30 element by element; the count of those that are not */
static int64_t n_off(const float *a, const float *b, int64_t n, double rel) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += !(fabs((double)a[i] - b[i]) <= rel * fabs((double)b[i]) + 1e-30);
    return bad;
}

/* multi-tensor AdamW: tensors of sizes around the kernel's 4096-element chunk (and an empty one),
 * per-tensor shrink and step sizes, three steps: the second reuses the cached device table, the
 * third passes another table (a subset, reordered) that must be uploaded. CUDA vs CPU 1e-6
 * relative per element; the CPU entry is bitwise the loop of single-tensor calls. */
static void test_adamw_multi(void) {
    enum { NT = 6 };
    static const int64_t sizes[NT] = {4096, 1, 0, 4097, 10000, 50001};
    hyb_adamw_tensor tc[NT], tg[NT];
    float *p[NT], *g[NT], *m[NT], *v[NT], *pr[NT], *mr[NT], *vr[NT];
    for (int i = 0; i < NT; i++) {
        const int64_t n = sizes[i];
        p[i] = rnd(n, 1), g[i] = rnd(n, 0.1f), m[i] = rnd(n, 0.01f), v[i] = rnd(n, 0.001f);
        for (int64_t k = 0; k < n; k++)
            v[i][k] = fabsf(v[i][k]);
        pr[i] = malloc(sizeof(float) * (size_t)(n ? n : 1));
        mr[i] = malloc(sizeof(float) * (size_t)(n ? n : 1));
        vr[i] = malloc(sizeof(float) * (size_t)(n ? n : 1));
        memcpy(pr[i], p[i], sizeof(float) * (size_t)n);
        memcpy(mr[i], m[i], sizeof(float) * (size_t)n);
        memcpy(vr[i], v[i], sizeof(float) * (size_t)n);
        const float shrink = i % 2 ? 1.0f : 0.9999f, step = 1e-3f * (float)(i + 1);
        tc[i] = (hyb_adamw_tensor){p[i], g[i], m[i], v[i], n, 0, shrink, step};
        tg[i] = (hyb_adamw_tensor){
            to_dev(p[i], n), to_dev(g[i], n), to_dev(m[i], n), to_dev(v[i], n), n, 0, shrink, step};
    }
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, isb = 1.02f;
    for (int step = 0; step < 3; step++) {
        int cnt = NT;
        const hyb_adamw_tensor *c = tc, *d = tg;
        hyb_adamw_tensor sc[NT], sg[NT];
        if (step == 2) { /* tensors 5, 3, 0 only */
            static const int pick[3] = {5, 3, 0};
            for (int j = 0; j < 3; j++)
                sc[j] = tc[pick[j]], sg[j] = tg[pick[j]];
            cnt = 3, c = sc, d = sg;
        }
        CHECK(cpu->adamw_multi(cpu, c, cnt, b1, b2, eps, isb) == HYB_OK);
        CHECK_MSG(gpu->adamw_multi(gpu, d, cnt, b1, b2, eps, isb) == HYB_OK, "%s", hyb_error());
        for (int j = 0; j < cnt; j++) { /* the reference: one single-tensor call each */
            const int i = step == 2 ? (j == 0 ? 5 : j == 1 ? 3 : 0) : j;
            hyb_cpu_adamw(pr[i], g[i], mr[i], vr[i], sizes[i], b1, b2, eps, tc[i].shrink,
                          tc[i].step_size, isb);
        }
    }
    for (int i = 0; i < NT; i++) {
        const int64_t n = sizes[i];
        CHECK(memcmp(p[i], pr[i], sizeof(float) * (size_t)n) == 0 &&
              memcmp(m[i], mr[i], sizeof(float) * (size_t)n) == 0 &&
              memcmp(v[i], vr[i], sizeof(float) * (size_t)n) == 0);
        float *gp = malloc(sizeof(float) * (size_t)(n ? n : 1)),
              *gm = malloc(sizeof(float) * (size_t)(n ? n : 1));
        float *gv = malloc(sizeof(float) * (size_t)(n ? n : 1));
        gpu->download(gpu, gp, tg[i].p, sizeof(float) * (size_t)n);
        gpu->download(gpu, gm, tg[i].m, sizeof(float) * (size_t)n);
        gpu->download(gpu, gv, tg[i].v, sizeof(float) * (size_t)n);
        int64_t bad =
            n_off(gp, p[i], n, 1e-6) + n_off(gm, m[i], n, 1e-6) + n_off(gv, v[i], n, 1e-6);
        CHECK_MSG(bad == 0, "adamw_multi tensor %d (n = %lld): %lld values off by > 1e-6", i,
                  (long long)n, (long long)bad);
        gpu->free(gpu, tg[i].p), gpu->free(gpu, (void *)tg[i].g), gpu->free(gpu, tg[i].m);
        gpu->free(gpu, tg[i].v);
        free(p[i]), free(g[i]), free(m[i]), free(v[i]), free(pr[i]), free(mr[i]), free(vr[i]);
        free(gp), free(gm), free(gv);
    }
    /* a bad table is an error naming the op, not a crash */
    hyb_adamw_tensor badt = {NULL, NULL, NULL, NULL, 5, 0, 1.0f, 1.0f};
    CHECK(gpu->adamw_multi(gpu, &badt, 1, b1, b2, eps, isb) != HYB_OK);
    CHECK_MSG(strstr(hyb_error(), "adamw_multi"), "%s", hyb_error());
}

/* On-device sampling against the CPU entry (= core/sample.c's hyb_sample_with) over many
 * settings and draws. Rows have repeated values (ties for top-k, top-p order and the arg max),
 * NaN and -inf entries, and histories with repeats. Contract (hyb/backend.h): the same token,
 * except when u lies within ~1e-6 of a boundary between two tokens' cumulative probabilities;
 * such a draw counts as a boundary case when the CPU picks the device's token at u -+ 1e-6, and
 * there may be at most 1% of them (under emulation expf is the host's, so there are ~none). */
static void test_sample(void) {
    enum { N = 8, V = 3000, H = 40 };
    static const struct {
        float t;
        int k;
        float p, pen;
    } cfg[] = {{0.0f, 0, 1.0f, 1.0f},    {0.0f, 0, 1.0f, 1.3f},  {1.0f, 1, 1.0f, 1.0f},
               {0.7f, 0, 1.0f, 1.0f},    {1.0f, 40, 1.0f, 1.0f}, {1.3f, 0, 0.9f, 1.0f},
               {0.8f, 50, 0.8f, 1.0f},   {1.0f, 0, 0.95f, 1.3f}, {1.0f, 0, 0.01f, 1.0f},
               {2.0f, 2999, 0.5f, 0.7f}, {0.5f, 7, 0.0f, 1.1f},  {1.0f, 3000, 0.99f, 1.0f}};
    const int n_cfg = (int)(sizeof cfg / sizeof cfg[0]), reps = 4;
    float *lg = malloc(sizeof(float) * N * V);
    int32_t hist[N][H], tc[N], tg[N];
    hyb_sample_row rows[N];
    int draws = 0, exact = 0, boundary = 0, bad = 0;
    for (int c = 0; c < n_cfg; c++)
        for (int rep = 0; rep < reps; rep++) {
            for (int64_t i = 0; i < (int64_t)N * V; i++) {
                float x = 3.0f * urand();
                if ((i % 97) == 5) x = 2.5f;                           /* repeats */
                if ((i % 1500) == 700 || (i % 1500) == 1200) x = 3.0f; /* tied maxima */
                if ((i % 1009) == 11) x = -INFINITY;
                if ((i % 1013) == 17) x = NAN;
                lg[i] = x;
            }
            for (int r = 0; r < N; r++) {
                for (int j = 0; j < H; j++)
                    hist[r][j] = (int32_t)((urand() + 1.0f) * 0.5f * 200.0f) % V; /* repeats */
                rows[r] = (hyb_sample_row){
                    cfg[c].t, cfg[c].k,     cfg[c].p, cfg[c].pen, (urand() + 1.0f) * 0.5f,
                    hist[r],  r % 3 ? H : 0};
                if (rows[r].u >= 1.0f) rows[r].u = 0.999f;
            }
            if (rep == 1) rows[0].u = 0.0f, rows[1].u = 0.99999994f; /* the ends */
            float *d = to_dev(lg, (int64_t)N * V);
            CHECK(cpu->sample(cpu, lg, N, V, rows, tc) == HYB_OK);
            CHECK_MSG(gpu->sample(gpu, d, N, V, rows, tg) == HYB_OK, "%s", hyb_error());
            gpu->free(gpu, d);
            for (int r = 0; r < N; r++) {
                draws++;
                if (tg[r] == tc[r]) {
                    exact++;
                    continue;
                }
                hyb_sample_row lo = rows[r], hi = rows[r];
                int32_t tl = -1, th = -1;
                lo.u = rows[r].u > 1e-6f ? rows[r].u - 1e-6f : 0.0f;
                hi.u = rows[r].u + 1e-6f < 1.0f ? rows[r].u + 1e-6f : rows[r].u;
                cpu->sample(cpu, lg + (int64_t)r * V, 1, V, &lo, &tl);
                cpu->sample(cpu, lg + (int64_t)r * V, 1, V, &hi, &th);
                if (tg[r] == tl || tg[r] == th)
                    boundary++;
                else {
                    bad++;
                    printf("  cfg %d rep %d row %d (u %.9g): cuda %d, cpu %d\n", c, rep, r,
                           (double)rows[r].u, tg[r], tc[r]);
                }
            }
        }
    printf("  %d draws: %d the same token, %d boundary cases, %d different\n", draws, exact,
           boundary, bad);
    CHECK(bad == 0 && boundary * 100 <= draws);
    /* +inf logits: uniform over them; an all-NaN/-inf row and a bad history id are errors */
    for (int64_t i = 0; i < (int64_t)N * V; i++)
        lg[i] = (i % V) % 500 == 3 ? INFINITY : (i % V) == 9 ? NAN : -INFINITY;
    for (int64_t i = V; i < 2 * V; i++)
        lg[i] = NAN;
    for (int r = 0; r < N; r++)
        rows[r] = (hyb_sample_row){1.0f, 0, 0.9f, 1.0f, (float)r / N, NULL, 0};
    float *d = to_dev(lg, (int64_t)N * V);
    CHECK(cpu->sample(cpu, lg, 1, V, rows, tc) == HYB_OK);
    CHECK(gpu->sample(gpu, d, 1, V, rows, tg) == HYB_OK && tg[0] == tc[0]);
    for (int r = 2; r < N; r++) {
        CHECK(cpu->sample(cpu, lg + (int64_t)r * V, 1, V, rows + r, tc + r) == HYB_OK);
        CHECK(gpu->sample(gpu, d + (int64_t)r * V, 1, V, rows + r, tg + r) == HYB_OK &&
              tg[r] == tc[r]);
    }
    CHECK(gpu->sample(gpu, d, N, V, rows, tg) != HYB_OK); /* row 1: all NaN */
    CHECK_MSG(strstr(hyb_error(), "row 1") && strstr(hyb_error(), "NaN"), "%s", hyb_error());
    int32_t badh = V;
    rows[0].history = &badh, rows[0].n_history = 1;
    CHECK(gpu->sample(gpu, d, 1, V, rows, tg) != HYB_OK);
    CHECK_MSG(strstr(hyb_error(), "sample") && strstr(hyb_error(), "history"), "%s", hyb_error());
    gpu->free(gpu, d);
    free(lg);
}

/* scale and sumsq (gradient clipping) and the adamw entry, through the backend tables */
static void test_clip_entries(void) {
    const int64_t n = 65537;
    float *x = rnd(n, 1);
    float *dx = to_dev(x, n);
    double sc = 0, sg = 0;
    CHECK(cpu->sumsq(cpu, x, n, &sc) == HYB_OK);
    CHECK(gpu->sumsq(gpu, dx, n, &sg) == HYB_OK);
    CHECK_MSG(fabs(sg - sc) <= 1e-9 * sc, "sumsq gpu %.17g cpu %.17g", sg, sc);
    CHECK(cpu->scale(cpu, x, 0.37f, n) == HYB_OK);
    CHECK(gpu->scale(gpu, dx, 0.37f, n) == HYB_OK);
    float *gx = from_dev(dx, n);
    CHECK_NMSE(gx, x, n, TOL);
    /* adamw through both tables (the optimiser's route) */
    float *p = rnd(n, 1), *g = rnd(n, 0.1f), *m = rnd(n, 0.01f), *v = rnd(n, 0.001f);
    for (int64_t i = 0; i < n; i++)
        v[i] = fabsf(v[i]);
    float *d_p = to_dev(p, n), *d_g = to_dev(g, n), *d_m = to_dev(m, n), *d_v = to_dev(v, n);
    CHECK(cpu->adamw(cpu, p, g, m, v, n, 0.9f, 0.999f, 1e-8f, 0.999f, 1e-3f, 1.02f) == HYB_OK);
    CHECK(gpu->adamw(gpu, d_p, d_g, d_m, d_v, n, 0.9f, 0.999f, 1e-8f, 0.999f, 1e-3f, 1.02f) ==
          HYB_OK);
    float *gp = from_dev(d_p, n), *gm = from_dev(d_m, n), *gv = from_dev(d_v, n);
    CHECK_NMSE(gp, p, n, TOL);
    CHECK_NMSE(gm, m, n, TOL);
    CHECK_NMSE(gv, v, n, TOL);
    gpu->free(gpu, d_g);
    free(x), free(gx), free(p), free(g), free(m), free(v), free(gp), free(gm), free(gv);
}

/* a plugin's own kernel: compiled from source through be->kernel, run with be->launch */
static const char *PLUGIN_SRC =
    "extern \"C\" __global__ void twice_plus(const float *x, float *y, float c, long long n) {\n"
    "    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;\n"
    "         i += (long long)gridDim.x * blockDim.x)\n"
    "        y[i] = SCALE * x[i] + c;\n"
    "}\n";
static void test_plugin_kernel(void) {
    CHECK(cpu->kernel == NULL && cpu->launch == NULL); /* the CPU's kernels are plain C */
    const char *opts[] = {"-DSCALE=2.0f"};
    void *fn = NULL, *fn2 = NULL;
    CHECK_MSG(gpu->kernel(gpu, "twice.cu", PLUGIN_SRC, "twice_plus", opts, 1, &fn) == HYB_OK, "%s",
              hyb_error());
    CHECK(gpu->kernel(gpu, "twice.cu", PLUGIN_SRC, "twice_plus", opts, 1, &fn2) == HYB_OK &&
          fn2 == fn); /* cached */
    long long n = 1000;
    float *x = rnd(n, 1), *dx = to_dev(x, n), *dy = gpu->alloc(gpu, sizeof(float) * (size_t)n);
    float c = 0.5f;
    void *args[] = {&dx, &dy, &c, &n};
    const unsigned grid[3] = {4, 1, 1}, block[3] = {128, 1, 1};
    CHECK_MSG(gpu->launch(gpu, fn, "twice_plus", grid, block, 0, args) == HYB_OK, "%s",
              hyb_error());
    float *y = from_dev(dy, n);
    int ok = 1;
    for (long long i = 0; i < n; i++)
        ok &= y[i] == 2.0f * x[i] + 0.5f;
    CHECK(ok);
    /* a kernel name that is not there, and a source that does not compile, are named */
    CHECK(gpu->kernel(gpu, "twice.cu", PLUGIN_SRC, "nope", opts, 1, &fn2) != HYB_OK);
    CHECK_MSG(strstr(hyb_error(), "nope") && strstr(hyb_error(), "twice.cu"), "%s", hyb_error());
    CHECK(gpu->kernel(gpu, "broken.cu", "extern \"C\" __global__ void k( {", "k", NULL, 0, &fn2) !=
          HYB_OK);
    CHECK_MSG(strstr(hyb_error(), "broken.cu"), "%s", hyb_error());
    gpu->free(gpu, dx);
    free(x), free(y);
}

/* the pool reuses freed blocks, and an impossible request is a clear NOMEM error */
static void test_pool(void) {
    void *a = gpu->alloc(gpu, 1000);
    CHECK(a != NULL);
    gpu->free(gpu, a);
    /* same 1 KiB class: the cached block (emulated, blocks are cached at their exact size so
     * that ASan sees overruns: the same size is reused) */
    const int emulated = getenv("HYB_CUDA_EMULATE") && atoi(getenv("HYB_CUDA_EMULATE")) == 1;
    void *b = gpu->alloc(gpu, emulated ? 1000 : 900);
    CHECK(b == a);
    gpu->free(gpu, b);
    void *huge = gpu->alloc(gpu, (size_t)1 << 50);
    CHECK(huge == NULL);
    CHECK_MSG(strstr(hyb_error(), "out of memory") && strstr(hyb_error(), "requested"),
              "OOM message: %s", hyb_error());
    printf("  (OOM message: %s)\n", hyb_error());
}

int main(void) {
    if (hyb_cuda_init(0) != HYB_OK) {
        printf("skipped: no GPU: %s\n", hyb_error());
        return HARNESS_SKIP;
    }
    cpu = hyb_backend_cpu();
    gpu = hyb_backend_get(HYB_DEV_CUDA);
    if (!gpu) {
        printf("CUDA backend not registered: %s\n", hyb_error());
        return 1;
    }
    printf("device: sm_%d\n", hyb_cuda_arch());
    RUN(test_add_axpy);
    RUN(test_swiglu);
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_add_rmsnorm);
    RUN(test_rope);
    RUN(test_softmax);
    RUN(test_cross_entropy);
    RUN(test_kl);
    RUN(test_sgemm);
    RUN(test_bf16_convert);
    RUN(test_gemm_bf16);
    RUN(test_adamw);
    RUN(test_adamw_multi);
    RUN(test_sample);
    RUN(test_store_bf16);
    RUN(test_clip_entries);
    RUN(test_plugin_kernel);
    RUN(test_pool);
    hyb_cuda_shutdown();
    return harness_done();
}
#else
int main(void) {
    printf("skipped: no GPU: built without the CUDA headers\n");
    return HARNESS_SKIP;
}
#endif
