/* hyb/backend.h: the backend vtable, one entry per kernel (in the spirit of ggml's backends).
 *
 *   const hyb_backend *be = hyb_backend_get(x->device);   // NULL + error if none registered
 *   be->rmsnorm_fwd(be, x, w, y, rstd, rows, D, eps);
 *
 * The graph ops (graph.h) check shapes, allocate outputs and record tape nodes; the arithmetic is
 * done by the backend of the inputs' device. The CPU backend (core/backend/cpu, OpenBLAS +
 * OpenMP) is always registered; a CUDA backend registers itself with hyb_backend_register and
 * fills the same table with hyb_cuda_<op> kernels (same names and argument orders as hyb_cpu_<op>).
 *
 * Conventions for every kernel:
 *  - tensors are f32, contiguous, row-major, on the backend's device; `rows` counts all leading
 *    dims ([B, T, D] -> rows = B*T);
 *  - index and weight arrays (ids, targets, pos, mask) are HOST pointers: a device backend uploads
 *    them itself;
 *  - a gradient output named d* is ACCUMULATED (+=) unless documented as written (=), and may be
 *    NULL when that gradient is not wanted;
 *  - scalar results (loss sums) are written to host memory.
 */
#ifndef HYB_BACKEND_H
#define HYB_BACKEND_H

#include "hyb/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hyb_backend hyb_backend;

struct hyb_backend {
    const char *name;  /* "cpu", "cuda" */
    hyb_device device; /* the device its memory lives on */
    void *ctx;         /* backend state (CUDA: context, stream, cuBLAS handle); NULL for CPU */
    void *stream;      /* the stream handed to plugins in hyb_mixer_fwd/bwd (NULL for CPU) */

    /* ---- memory (device memory, at least 64-byte aligned) ---- */
    void *(*alloc)(const hyb_backend *be, size_t nbytes); /* NULL + error on failure */
    void (*free)(const hyb_backend *be, void *p);
    void (*memset0)(const hyb_backend *be, void *p, size_t nbytes);
    void (*copy)(const hyb_backend *be, void *dst, const void *src, size_t nbytes); /* dev->dev */
    void (*upload)(const hyb_backend *be, void *dst, const void *host_src, size_t nbytes);
    void (*download)(const hyb_backend *be, void *host_dst, const void *src, size_t nbytes);

    /* ---- kernels ---- */
    /* C[M,N] = alpha op(A) op(B) + beta C (row-major; op = transpose when trans*) */
    void (*sgemm)(const hyb_backend *be, int transA, int transB, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
    /* x: [B, T, H, hd] in place, pos: [T] (host); HF half-split layout; inverse = transpose */
    void (*rope)(const hyb_backend *be, float *x, int B, int T, int H, int hd, const int32_t *pos,
                 float theta, int inverse);
    /* W: [V, D], ids: [n] (host, already range-checked) -> y: [n, D] written */
    void (*embedding_fwd)(const hyb_backend *be, const float *W, const int32_t *ids, float *y,
                          int64_t n, int64_t D);
    /* dW: [V, D] += scatter of dy: [n, D] by ids */
    void (*embedding_bwd)(const hyb_backend *be, float *dW, const int32_t *ids, const float *dy,
                          int64_t n, int64_t D);
    /* x: [rows, D], w: [D] -> y: [rows, D] written, rstd: [rows] written (1/sqrt(mean x^2 + eps))
     */
    void (*rmsnorm_fwd)(const hyb_backend *be, const float *x, const float *w, float *y,
                        float *rstd, int64_t rows, int64_t D, float eps);
    /* dx: [rows, D] +=, dw: [D] += (either may be NULL) */
    void (*rmsnorm_bwd)(const hyb_backend *be, const float *x, const float *w, const float *rstd,
                        const float *dy, float *dx, float *dw, int64_t rows, int64_t D);
    /* gate, up: [n] -> y = silu(gate) * up */
    void (*swiglu_fwd)(const hyb_backend *be, const float *gate, const float *up, float *y,
                       int64_t n);
    /* dgate, dup: [n] += (either may be NULL) */
    void (*swiglu_bwd)(const hyb_backend *be, const float *gate, const float *up, const float *dy,
                       float *dgate, float *dup, int64_t n);
    /* y = a + b, [n] */
    void (*add)(const hyb_backend *be, const float *a, const float *b, float *y, int64_t n);
    /* dst += alpha * src, [n] */
    void (*axpy)(const hyb_backend *be, float *dst, const float *src, float alpha, int64_t n);
    /* x: [rows, V] -> y: [rows, V] softmax over V */
    void (*softmax_fwd)(const hyb_backend *be, const float *x, float *y, int64_t rows, int64_t V);
    /* dx += y * (dy - sum(dy * y)) per row */
    void (*softmax_bwd)(const hyb_backend *be, const float *y, const float *dy, float *dx,
                        int64_t rows, int64_t V);
    /* Cross-entropy. logits: [rows, V]; targets: [rows] (host; < 0 = ignored, others in [0, V));
     * w: [rows] (host) per-row weight (mask * valid). lse: [rows] written (log-sum-exp of the
     * row). Returns sum_r w[r] * (lse[r] - logits[r, t_r]) into *loss_sum (host, double). */
    void (*ce_fwd)(const hyb_backend *be, const float *logits, const int32_t *targets,
                   const float *w, float *lse, int64_t rows, int64_t V, double *loss_sum);
    /* dlogits[r, v] += scale * w[r] * (softmax(logits)[r, v] - [v == t_r]) */
    void (*ce_bwd)(const hyb_backend *be, const float *logits, const int32_t *targets,
                   const float *w, const float *lse, float *dlogits, int64_t rows, int64_t V,
                   float scale);
    /* KL between softmax(clamp(s, -100, 100)) = q and softmax(clamp(t / T, -100, 100)) = p.
     * reverse = 1: KL(q || p) (student || teacher); 0: KL(p || q). s, t: [rows, V].
     * stats: [rows, 3] written (student lse, teacher lse, per-row KL) for the backward.
     * Returns sum_r w[r] * KL_r into *loss_sum. Rows with w[r] == 0 may be skipped (stats 0). */
    void (*kl_fwd)(const hyb_backend *be, const float *s, const float *t, const float *w,
                   float *stats, int64_t rows, int64_t V, float temperature, int reverse,
                   double *loss_sum);
    /* ds[r, v] += scale * w[r] * dKL_r/ds[r, v] (zero where s is outside [-100, 100]) */
    void (*kl_bwd)(const hyb_backend *be, const float *s, const float *t, const float *w,
                   const float *stats, float *ds, int64_t rows, int64_t V, float temperature,
                   int reverse, float scale);
};

/* The backend for a device: NULL and an error naming the device when none is registered. */
const hyb_backend *hyb_backend_get(hyb_device dev);
/* Register (or replace) the backend of be->device. The table must outlive its use. */
int hyb_backend_register(const hyb_backend *be);
/* The built-in CPU backend. */
const hyb_backend *hyb_backend_cpu(void);

#ifdef __cplusplus
}
#endif
#endif
