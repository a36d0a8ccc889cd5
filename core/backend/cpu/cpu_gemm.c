/* core/backend/cpu/cpu_gemm.c: GEMM on the CPU.
 *
 * Threading: one thread pool, libgomp's. OpenBLAS (the pthread build) is pinned to one thread the
 * first time we call it, and large products are split here into OpenMP slices, each an
 * OpenBLAS call on one thread. With OpenBLAS's own pool as well, its spinning workers and the
 * OpenMP workers of the row-wise ops and the attention plugin (which calls sgemm from inside its
 * parallel regions) fought over the cores: measured 2-3x slower prefill on 2 cores
 * (docs/PERF_NOTES.md).
 *
 * Skinny products (decode: a few rows x a weight matrix, y = x W^T) skip BLAS: sgemm packs the
 * whole weight matrix on every call, which triples the memory traffic of a step whose cost is
 * reading the weights once. skinny_nt reads each weight row once for all M input rows. */
#include <cblas.h>
#include <omp.h>
#include <stdint.h>

#include "backend/cpu/cpu.h"

/* Products below this many multiply-adds run on the calling thread. */
#define PAR_MIN_FLOPS (1 << 18)
/* At most this many input rows take the skinny path (beyond it BLAS's packing pays off). */
#define SKINNY_MAX_M 16

static int blas_pinned;

static void blas_pin(void) {
    /* Benign race: every thread stores the same value; OpenBLAS's setter is idempotent. */
    if (!blas_pinned) {
        openblas_set_num_threads(1);
        blas_pinned = 1;
    }
}

static void blas_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                       int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* C[m, n] = alpha * sum_k A[m, k] W[n, k] + beta * C[m, n] for n in [n0, n1)
 * A: [M, K] (lda), W: [N, K] (ldw), C: [M, N] (ldc); M <= SKINNY_MAX_M. */
static void skinny_nt_rows(int M, int n0, int n1, int K, float alpha, const float *A, int lda,
                           const float *W, int ldw, float beta, float *C, int ldc) {
    for (int n = n0; n < n1; n++) {
        const float *w = W + (int64_t)n * ldw;
        int m = 0;
        for (; m + 4 <= M; m += 4) {
            const float *a0 = A + (int64_t)m * lda, *a1 = a0 + lda, *a2 = a1 + lda,
                        *a3 = a2 + lda;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int k = 0; k < K; k++) {
                s0 += a0[k] * w[k];
                s1 += a1[k] * w[k];
                s2 += a2[k] * w[k];
                s3 += a3[k] * w[k];
            }
            float s[4] = {s0, s1, s2, s3};
            for (int j = 0; j < 4; j++) {
                float *c = C + (int64_t)(m + j) * ldc + n;
                *c = alpha * s[j] + (beta == 0.0f ? 0.0f : beta * *c);
            }
        }
        for (; m < M; m++) {
            const float *a = A + (int64_t)m * lda;
            float s = 0;
#pragma omp simd reduction(+ : s)
            for (int k = 0; k < K; k++)
                s += a[k] * w[k];
            float *c = C + (int64_t)m * ldc + n;
            *c = alpha * s + (beta == 0.0f ? 0.0f : beta * *c);
        }
    }
}

void hyb_cpu_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        /* empty inner dimension: C = beta C (BLAS would reject lda = 0) */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                C[(int64_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(int64_t)i * ldc + j];
        return;
    }
    blas_pin();
    const double flops = (double)M * N * K;
    const int par = !omp_in_parallel() && omp_get_max_threads() > 1 && flops >= PAR_MIN_FLOPS;
    if (!transA && transB && M <= SKINNY_MAX_M) {
        if (!par) {
            skinny_nt_rows(M, 0, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
            return;
        }
#pragma omp parallel
        {
            int nt = omp_get_num_threads(), id = omp_get_thread_num();
            /* slices in multiples of 16 rows of W: whole cache lines of C per thread */
            int chunk = ((N + nt - 1) / nt + 15) & ~15;
            int n0 = id * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
            if (n0 < n1) skinny_nt_rows(M, n0, n1, K, alpha, A, lda, B, ldb, beta, C, ldc);
        }
        return;
    }
    if (!par) {
        blas_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* Split the larger of M and N across the threads; each slice is an independent product. */
    const int split_n = N >= M;
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int len = split_n ? N : M;
        int chunk = ((len + nt - 1) / nt + 15) & ~15;
        int lo = id * chunk, hi = lo + chunk < len ? lo + chunk : len;
        if (lo < hi) {
            if (split_n) {
                const float *Bs = transB ? B + (int64_t)lo * ldb : B + lo;
                blas_sgemm(transA, transB, M, hi - lo, K, alpha, A, lda, Bs, ldb, beta, C + lo,
                           ldc);
            } else {
                const float *As = transA ? A + lo : A + (int64_t)lo * lda;
                blas_sgemm(transA, transB, hi - lo, N, K, alpha, As, lda, B, ldb, beta,
                           C + (int64_t)lo * ldc, ldc);
            }
        }
    }
}
