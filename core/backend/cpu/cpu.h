/* core/backend/cpu/cpu.h: CPU kernels (f32, row-major, OpenMP over the 2+ cores).
 * Internal to libhyb; the graph ops (graph.h) and the host service table (mixer.h) call these.
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
#endif
