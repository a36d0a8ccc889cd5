/* core/backend/cpu/cpu_gemm.c: GEMM on the CPU.
 *
 * Threading: skinny products (decode) run on hyb's persistent pool (cpu_pool.h), whose workers
 * spin briefly then sleep; larger ones on libgomp's. OpenBLAS (the pthread build) is pinned to one thread the
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
#include "backend/cpu/cpu_pool.h"
#include "backend/cpu/cpu_quant.h"

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

static inline void store_c(float *c, float s, float alpha, float beta) {
    *c = alpha * s + (beta == 0.0f ? 0.0f : beta * *c);
}

/* C[m, n] = alpha * sum_k A[m, k] W[n, k] + beta * C[m, n] for n in [n0, n1)
 * A: [M, K] (lda), W: [N, K] (ldw), C: [M, N] (ldc); M <= SKINNY_MAX_M.
 * Blocks of 4 weight rows x 4 input rows (16 accumulators; leftover input rows 4): independent
 * accumulators (a single one is bound by the add latency, not by memory), and the weight block
 * (4 K floats) stays in L1 across the M rows, so the weights stream from memory once. Built for
 * AVX-512, AVX2+FMA and baseline x86-64, picked at load time (ifunc); results differ from BLAS
 * only by summation order and FMA rounding. */
/* (not under ThreadSanitizer: the ifunc resolver runs before TSan's runtime and crashes) */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void
skinny_nt_rows(int M, int n0, int n1, int K, float alpha, const float *A, int lda, const float *W,
               int ldw, float beta, float *C, int ldc) {
    int n = n0;
    for (; n + 4 <= n1; n += 4) {
        const float *w0 = W + (int64_t)n * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        int m = 0;
        for (; m + 4 <= M; m += 4) { /* 4 x 4 block: 16 accumulators, 8 loads per 16 FMAs */
            const float *a0 = A + (int64_t)m * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
            float s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, \
                               s31, s32, s33)
            for (int k = 0; k < K; k++) {
                const float x0 = w0[k], x1 = w1[k], x2 = w2[k], x3 = w3[k];
                s00 += a0[k] * x0, s01 += a0[k] * x1, s02 += a0[k] * x2, s03 += a0[k] * x3;
                s10 += a1[k] * x0, s11 += a1[k] * x1, s12 += a1[k] * x2, s13 += a1[k] * x3;
                s20 += a2[k] * x0, s21 += a2[k] * x1, s22 += a2[k] * x2, s23 += a2[k] * x3;
                s30 += a3[k] * x0, s31 += a3[k] * x1, s32 += a3[k] * x2, s33 += a3[k] * x3;
            }
            const float r[4][4] = {{s00, s01, s02, s03},
                                   {s10, s11, s12, s13},
                                   {s20, s21, s22, s23},
                                   {s30, s31, s32, s33}};
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    store_c(C + (int64_t)(m + i) * ldc + n + j, r[i][j], alpha, beta);
        }
        for (; m < M; m++) {
            const float *a = A + (int64_t)m * lda;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int k = 0; k < K; k++) {
                s0 += a[k] * w0[k];
                s1 += a[k] * w1[k];
                s2 += a[k] * w2[k];
                s3 += a[k] * w3[k];
            }
            float *c = C + (int64_t)m * ldc + n;
            store_c(c, s0, alpha, beta);
            store_c(c + 1, s1, alpha, beta);
            store_c(c + 2, s2, alpha, beta);
            store_c(c + 3, s3, alpha, beta);
        }
    }
    for (; n < n1; n++) {
        const float *w = W + (int64_t)n * ldw;
        for (int m = 0; m < M; m++) {
            const float *a = A + (int64_t)m * lda;
            float s = 0;
#pragma omp simd reduction(+ : s)
            for (int k = 0; k < K; k++)
                s += a[k] * w[k];
            store_c(C + (int64_t)m * ldc + n, s, alpha, beta);
        }
    }
}

/* A pool chunk of the skinny product: output columns (weight rows) [lo, hi). */
typedef struct skinny_job {
    int M, K;
    float alpha;
    const float *A;
    int lda;
    const float *B;
    int ldb;
    float beta;
    float *C;
    int ldc;
} skinny_job;

static int skinny_chunk(void *ctx, int64_t lo, int64_t hi, int tid) {
    const skinny_job *j = ctx;
    (void)tid;
    skinny_nt_rows(j->M, (int)lo, (int)hi, j->K, j->alpha, j->A, j->lda, j->B, j->ldb, j->beta,
                   j->C, j->ldc);
    return HYB_OK;
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
    if (!transA && transB && M <= SKINNY_MAX_M) {
        skinny_job j = {M, K, alpha, A, lda, B, ldb, beta, C, ldc};
        if (flops < PAR_MIN_FLOPS) {
            skinny_chunk(&j, 0, N, 0);
            return;
        }
        /* the pool (cpu_pool.h), slices in multiples of 16 rows of W: whole cache lines of C */
        (void)hyb_pool_parallel_for(N, 16, skinny_chunk, &j); /* skinny_chunk cannot fail */
        return;
    }
    const int par = !omp_in_parallel() && omp_get_max_threads() > 1 && flops >= PAR_MIN_FLOPS;
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
