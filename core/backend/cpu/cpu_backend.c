/* core/backend/cpu/cpu_backend.c: the CPU backend table (hyb/backend.h) over the hyb_cpu_* kernels.
 * The CPU kernels cannot fail once their arguments are checked by the caller: every entry returns
 * HYB_OK. */
#include <string.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_quant.h"
#include "hyb/backend.h"
#include "hyb/sample.h"

/* An entry that forwards its arguments (all but `be`) to the kernel hyb_cpu_<name>. */
#define CPU_ENTRY(name, params, args)                                                              \
    static int cpu_##name params {                                                                 \
        (void)be;                                                                                  \
        hyb_cpu_##name args;                                                                       \
        return HYB_OK;                                                                             \
    }

static void *cpu_alloc(const hyb_backend *be, size_t n) {
    (void)be;
    return hyb_malloc(n);
}
static void cpu_free(const hyb_backend *be, void *p) {
    (void)be;
    hyb_free(p);
}
static int cpu_memset0(const hyb_backend *be, void *p, size_t n) {
    (void)be;
    if (n) memset(p, 0, n);
    return HYB_OK;
}
static int cpu_copy(const hyb_backend *be, void *dst, const void *src, size_t n) {
    (void)be;
    if (n && dst != src) memmove(dst, src, n);
    return HYB_OK;
}
CPU_ENTRY(sgemm,
          (const hyb_backend *be, int tA, int tB, int M, int N, int K, float alpha, const float *A,
           int lda, const float *B, int ldb, float beta, float *C, int ldc),
          (tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
static int cpu_rope(const hyb_backend *be, float *x, int B, int T, int H, int hd,
                    const int32_t *pos, float theta, int inverse) {
    (void)be;
    for (int b = 0; b < B; b++)
        hyb_cpu_rope(x + (int64_t)b * T * H * hd, T, H, hd, pos, theta, inverse);
    return HYB_OK;
}
CPU_ENTRY(embedding_fwd,
          (const hyb_backend *be, const float *W, const int32_t *ids, float *y, int64_t n,
           int64_t D),
          (W, ids, y, n, D))
CPU_ENTRY(embedding_bwd,
          (const hyb_backend *be, float *dW, const int32_t *ids, const float *dy, int64_t n,
           int64_t D),
          (dW, ids, dy, n, D))
CPU_ENTRY(rmsnorm_fwd,
          (const hyb_backend *be, const float *x, const float *w, float *y, float *rstd,
           int64_t rows, int64_t D, float eps),
          (x, w, y, rstd, rows, D, eps))
CPU_ENTRY(add_rmsnorm_fwd,
          (const hyb_backend *be, const float *a, const float *b, const float *w, float *h,
           float *y, float *rstd, int64_t rows, int64_t D, float eps),
          (a, b, w, h, y, rstd, rows, D, eps))
CPU_ENTRY(rmsnorm_bwd,
          (const hyb_backend *be, const float *x, const float *w, const float *rstd,
           const float *dy, float *dx, float *dw, int64_t rows, int64_t D),
          (x, w, rstd, dy, dx, dw, rows, D))
CPU_ENTRY(swiglu_fwd, (const hyb_backend *be, const float *g, const float *u, float *y, int64_t n),
          (g, u, y, n))
CPU_ENTRY(swiglu_bwd,
          (const hyb_backend *be, const float *g, const float *u, const float *dy, float *dg,
           float *du, int64_t n),
          (g, u, dy, dg, du, n))
CPU_ENTRY(add, (const hyb_backend *be, const float *a, const float *b, float *y, int64_t n),
          (a, b, y, n))
CPU_ENTRY(axpy, (const hyb_backend *be, float *dst, const float *src, float alpha, int64_t n),
          (dst, src, alpha, n))
CPU_ENTRY(softmax_fwd, (const hyb_backend *be, const float *x, float *y, int64_t rows, int64_t V),
          (x, y, rows, V))
CPU_ENTRY(softmax_bwd,
          (const hyb_backend *be, const float *y, const float *dy, float *dx, int64_t rows,
           int64_t V),
          (y, dy, dx, rows, V))
CPU_ENTRY(ce_fwd,
          (const hyb_backend *be, const float *logits, const int32_t *targets, const float *w,
           float *lse, int64_t rows, int64_t V, double *loss_sum),
          (logits, targets, w, lse, rows, V, loss_sum))
CPU_ENTRY(ce_bwd,
          (const hyb_backend *be, const float *logits, const int32_t *targets, const float *w,
           const float *lse, float *dlogits, int64_t rows, int64_t V, float scale),
          (logits, targets, w, lse, dlogits, rows, V, scale))
CPU_ENTRY(kl_fwd,
          (const hyb_backend *be, const float *s, const float *t, const float *w, float *stats,
           int64_t rows, int64_t V, float T, int reverse, double *loss_sum),
          (s, t, w, stats, rows, V, T, reverse, loss_sum))
CPU_ENTRY(kl_bwd,
          (const hyb_backend *be, const float *s, const float *t, const float *w,
           const float *stats, float *ds, int64_t rows, int64_t V, float T, int reverse,
           float scale),
          (s, t, w, stats, ds, rows, V, T, reverse, scale))

CPU_ENTRY(adamw,
          (const hyb_backend *be, float *p, const float *g, float *m, float *v, int64_t n, float b1,
           float b2, float eps, float shrink, float step_size, float inv_sqrt_bc2),
          (p, g, m, v, n, b1, b2, eps, shrink, step_size, inv_sqrt_bc2))
static int cpu_adamw_multi(const hyb_backend *be, const hyb_adamw_tensor *t, int count, float b1,
                           float b2, float eps, float inv_sqrt_bc2) {
    (void)be;
    for (int i = 0; i < count; i++)
        hyb_cpu_adamw(t[i].p, t[i].g, t[i].m, t[i].v, t[i].n, b1, b2, eps, t[i].shrink,
                      t[i].step_size, inv_sqrt_bc2);
    return HYB_OK;
}
static int cpu_sample(const hyb_backend *be, const float *logits, int64_t n, int64_t V,
                      const hyb_sample_row *rows, int32_t *out) {
    (void)be;
    if (V <= 0 || V > 0x7fffffff)
        return hyb_error_set(HYB_ERR_ARG, "cpu sample: V = %lld", (long long)V);
    for (int64_t i = 0; i < n; i++) {
        const hyb_sample_row *r = &rows[i];
        hyb_sampler_params p = {r->temperature, r->top_k, r->top_p, r->repetition_penalty};
        int32_t t = hyb_sample_with(&p, logits + i * V, (int)V, r->history, r->n_history, r->u);
        if (t < 0)
            return hyb_error_wrap(t, "cpu sample: row %lld of %lld", (long long)i, (long long)n);
        out[i] = t;
    }
    return HYB_OK;
}
static int cpu_sumsq(const hyb_backend *be, const float *x, int64_t n, double *out) {
    (void)be;
    *out = hyb_cpu_sumsq(x, n);
    return HYB_OK;
}
CPU_ENTRY(scale, (const hyb_backend *be, float *x, float alpha, int64_t n), (x, alpha, n))

/* the activation path (precise / fast) and scheme come from HYB_QUANT / HYB_QUANT_ACT; a
 * quantized weight always computes, precise when HYB_QUANT is off */
static int cpu_qmatmul(const hyb_backend *be, int wt, const void *W, const float *x, float *y,
                       int M, int N, int K) {
    (void)be;
    hyb_quant_config c = hyb_quant_get();
    if (c.mode == HYB_QUANT_OFF) c.mode = HYB_QUANT_PRECISE;
    return hyb_cpu_quant_matmul((hyb_dtype)wt, W, x, y, M, N, K, &c);
}

/* The tensor-op entries forward to cpu_tensor.c (which returns the status). */
#define CPU_ENTRY_RC(name, params, args)                                                           \
    static int cpu_##name params {                                                                 \
        (void)be;                                                                                  \
        return hyb_cpu_##name args;                                                                \
    }
CPU_ENTRY_RC(ewise,
             (const hyb_backend *be, int op, float *y, const int64_t *sy, const float *a,
              const int64_t *sa, const float *b, const int64_t *sb, const float *c,
              const int64_t *sc, const int64_t *shape, float alpha, float beta),
             (op, y, sy, a, sa, b, sb, c, sc, shape, alpha, beta))
CPU_ENTRY_RC(ewise_bwd,
             (const hyb_backend *be, int op, int which, const float *a, const int64_t *sa,
              const float *b, const int64_t *sb, const float *c, const int64_t *sc, const float *dy,
              float *d, const int64_t *shape, const int64_t *dshape, float alpha, float beta),
             (op, which, a, sa, b, sb, c, sc, dy, d, shape, dshape, alpha, beta))
CPU_ENTRY_RC(axis,
             (const hyb_backend *be, int op, const float *x, float *y, int64_t outer, int64_t n,
              int64_t inner, float alpha),
             (op, x, y, outer, n, inner, alpha))
CPU_ENTRY_RC(axis_bwd,
             (const hyb_backend *be, int op, const float *x, const float *y, const float *dy,
              float *dx, int64_t outer, int64_t n, int64_t inner, float alpha),
             (op, x, y, dy, dx, outer, n, inner, alpha))
CPU_ENTRY_RC(tri,
             (const hyb_backend *be, const float *x, float *y, int64_t batch, int64_t R, int64_t C,
              int64_t k, int upper, int accumulate),
             (x, y, batch, R, C, k, upper, accumulate))
CPU_ENTRY_RC(conv1d_causal,
             (const hyb_backend *be, const float *x, const float *w, float *y, int64_t B, int64_t T,
              int64_t C, int64_t K),
             (x, w, y, B, T, C, K))
CPU_ENTRY_RC(conv1d_causal_bwd,
             (const hyb_backend *be, const float *x, const float *w, const float *dy, float *dx,
              float *dw, int64_t B, int64_t T, int64_t C, int64_t K),
             (x, w, dy, dx, dw, B, T, C, K))
CPU_ENTRY_RC(gather,
             (const hyb_backend *be, const float *x, const int32_t *idx, float *y, int64_t outer,
              int64_t n, int64_t inner, int64_t m),
             (x, idx, y, outer, n, inner, m))
CPU_ENTRY_RC(gather_bwd,
             (const hyb_backend *be, const int32_t *idx, const float *dy, float *dx, int64_t outer,
              int64_t n, int64_t inner, int64_t m),
             (idx, dy, dx, outer, n, inner, m))
CPU_ENTRY_RC(sgemm_batched,
             (const hyb_backend *be, int tA, int tB, int M, int N, int K, float alpha,
              const float *A, int lda, int64_t sA, const float *B, int ldb, int64_t sB, float beta,
              float *C, int ldc, int64_t sC, int batch),
             (tA, tB, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch))

static const hyb_backend CPU_BACKEND = {
    .name = "cpu",
    .device = HYB_DEV_CPU,
    .ordinal = 0,
    .ctx = NULL,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memset0 = cpu_memset0,
    .copy = cpu_copy,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sgemm = cpu_sgemm,
    .rope = cpu_rope,
    .embedding_fwd = cpu_embedding_fwd,
    .embedding_bwd = cpu_embedding_bwd,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .add_rmsnorm_fwd = cpu_add_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .add = cpu_add,
    .axpy = cpu_axpy,
    .softmax_fwd = cpu_softmax_fwd,
    .softmax_bwd = cpu_softmax_bwd,
    .ce_fwd = cpu_ce_fwd,
    .ce_bwd = cpu_ce_bwd,
    .kl_fwd = cpu_kl_fwd,
    .kl_bwd = cpu_kl_bwd,
    .adamw = cpu_adamw,
    .adamw_multi = cpu_adamw_multi,
    .sample = cpu_sample,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .qmatmul = cpu_qmatmul,
    .ewise = cpu_ewise,
    .ewise_bwd = cpu_ewise_bwd,
    .axis = cpu_axis,
    .axis_bwd = cpu_axis_bwd,
    .tri = cpu_tri,
    .conv1d_causal = cpu_conv1d_causal,
    .conv1d_causal_bwd = cpu_conv1d_causal_bwd,
    .gather = cpu_gather,
    .gather_bwd = cpu_gather_bwd,
    .sgemm_batched = cpu_sgemm_batched,
};

const hyb_backend *hyb_backend_cpu(void) {
    return &CPU_BACKEND;
}
