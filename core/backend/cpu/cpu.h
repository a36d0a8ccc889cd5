/* core/backend/cpu/cpu.h: CPU kernels (f32, row-major, OpenMP over the 2+ cores).
 * Internal to libhyb: only the CPU backend table (cpu_backend.c) calls these; everything else
 * reaches them through hyb/backend.h.
 * The CUDA backend mirrors these names and argument orders (hyb_cuda_<op>). */
#ifndef HYB_BACKEND_CPU_H
#define HYB_BACKEND_CPU_H
#include <stdint.h>

/* C[M,N] = alpha * op(A) op(B) + beta * C through OpenBLAS (row-major, op = transpose if t*). */
void hyb_cpu_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* Rotary embedding in place, x: [T, H, hd], positions pos[T]; HF half-split layout:
 * for i < hd/2, (x[i], x[i+hd/2]) rotated by angle pos * theta^(-2i/hd). inverse: rotate by -angle
 * (the backward of the forward). */
void hyb_cpu_rope(float *x, int T, int H, int hd, const int32_t *pos, float theta, int inverse);

/* The remaining kernels of the backend table (hyb/backend.h documents each one; `rows` counts all
 * leading dims, gradients d* are accumulated (+=) and may be NULL). */
void hyb_cpu_embedding_fwd(const float *W, const int32_t *ids, float *y, int64_t n, int64_t D);
void hyb_cpu_embedding_bwd(float *dW, const int32_t *ids, const float *dy, int64_t n, int64_t D);
void hyb_cpu_rmsnorm_fwd(const float *x, const float *w, float *y, float *rstd, int64_t rows,
                         int64_t D, float eps);
void hyb_cpu_add_rmsnorm_fwd(const float *a, const float *b, const float *w, float *h, float *y,
                             float *rstd, int64_t rows, int64_t D, float eps);
void hyb_cpu_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dy,
                         float *dx, float *dw, int64_t rows, int64_t D);
void hyb_cpu_swiglu_fwd(const float *gate, const float *up, float *y, int64_t n);
void hyb_cpu_swiglu_bwd(const float *gate, const float *up, const float *dy, float *dgate,
                        float *dup, int64_t n);
void hyb_cpu_add(const float *a, const float *b, float *y, int64_t n);
void hyb_cpu_axpy(float *dst, const float *src, float alpha, int64_t n);
void hyb_cpu_softmax_fwd(const float *x, float *y, int64_t rows, int64_t V);
void hyb_cpu_softmax_bwd(const float *y, const float *dy, float *dx, int64_t rows, int64_t V);
void hyb_cpu_ce_fwd(const float *logits, const int32_t *targets, const float *w, float *lse,
                    int64_t rows, int64_t V, double *loss_sum);
void hyb_cpu_ce_bwd(const float *logits, const int32_t *targets, const float *w, const float *lse,
                    float *dlogits, int64_t rows, int64_t V, float scale);
void hyb_cpu_kl_fwd(const float *s, const float *t, const float *w, float *stats, int64_t rows,
                    int64_t V, float temperature, int reverse, double *loss_sum);
void hyb_cpu_kl_bwd(const float *s, const float *t, const float *w, const float *stats, float *ds,
                    int64_t rows, int64_t V, float temperature, int reverse, float scale);
void hyb_cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, float b1, float b2,
                   float eps, float shrink, float step_size, float inv_sqrt_bc2);
double hyb_cpu_sumsq(const float *x, int64_t n);
void hyb_cpu_scale(float *x, float alpha, int64_t n);
/* Tensor-op kernels (cpu_tensor.c; hyb/backend.h documents each entry; these return HYB_OK or,
 * for gather with an index out of range, an error). */
int hyb_cpu_ewise(int op, float *y, const int64_t *sy, const float *a, const int64_t *sa,
                  const float *b, const int64_t *sb, const float *c, const int64_t *sc,
                  const int64_t *shape, float alpha, float beta);
int hyb_cpu_ewise_bwd(int op, int which, const float *a, const int64_t *sa, const float *b,
                      const int64_t *sb, const float *c, const int64_t *sc, const float *dy,
                      float *d, const int64_t *shape, const int64_t *dshape, float alpha,
                      float beta);
int hyb_cpu_axis(int op, const float *x, float *y, int64_t outer, int64_t n, int64_t inner,
                 float alpha);
int hyb_cpu_axis_bwd(int op, const float *x, const float *y, const float *dy, float *dx,
                     int64_t outer, int64_t n, int64_t inner, float alpha);
int hyb_cpu_tri(const float *x, float *y, int64_t batch, int64_t R, int64_t C, int64_t k, int upper,
                int accumulate);
int hyb_cpu_conv1d_causal(const float *x, const float *w, float *y, int64_t B, int64_t T, int64_t C,
                          int64_t K);
int hyb_cpu_conv1d_causal_bwd(const float *x, const float *w, const float *dy, float *dx, float *dw,
                              int64_t B, int64_t T, int64_t C, int64_t K);
int hyb_cpu_gather(const float *x, const int32_t *idx, float *y, int64_t outer, int64_t n,
                   int64_t inner, int64_t m);
int hyb_cpu_gather_bwd(const int32_t *idx, const float *dy, float *dx, int64_t outer, int64_t n,
                       int64_t inner, int64_t m);
int hyb_cpu_sgemm_batched(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                          int64_t sA, const float *B, int ldb, int64_t sB, float beta, float *C,
                          int ldc, int64_t sC, int batch);
#endif
