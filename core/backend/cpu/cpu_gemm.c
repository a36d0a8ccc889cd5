/* core/backend/cpu/cpu_gemm.c: GEMM through OpenBLAS (row-major cblas). */
#include <cblas.h>

#include "backend/cpu/cpu.h"

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
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
