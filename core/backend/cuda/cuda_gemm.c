/* core/backend/cuda/cuda_gemm.c: row-major GEMMs over cuBLAS (column-major).
 *
 * A row-major [M, N] matrix with leading dimension ld is, read column-major, its transpose
 * [N, M]. So C = op(A) op(B) (row-major) is computed as C^T = op(B)^T op(A)^T (column-major):
 * cuBLAS gets (opB, opA, m = N, n = M, k = K, B, ldb, A, lda, C, ldc). */
#include "backend/cuda/cuda_internal.h"

static int check_dims(const char *fn, int tA, int tB, int M, int N, int K, int lda, int ldb,
                      int ldc) {
    const int need_a = tA ? M : K, need_b = tB ? K : N;
    if (M < 0 || N < 0 || K < 0 || lda < (need_a > 1 ? need_a : 1) ||
        ldb < (need_b > 1 ? need_b : 1) || ldc < (N > 1 ? N : 1))
        return hyb_error_set(HYB_ERR_ARG,
                             "%s: bad shape M=%d N=%d K=%d transA=%d transB=%d lda=%d ldb=%d "
                             "ldc=%d",
                             fn, M, N, K, tA, tB, lda, ldb, ldc);
    return HYB_OK;
}

int hyb_cuda_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    HYB_TRY(check_dims("hyb_cuda_sgemm", transA, transB, M, N, K, lda, ldb, ldc));
    if (M == 0 || N == 0) return HYB_OK;
    CUBLAS_CHECK(hyb_cublas.cublasSgemm(hyb_cuda_g.blas, transB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                        transA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                                        ldb, A, lda, &beta, C, ldc));
    return HYB_OK;
}

int hyb_cuda_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const void *A,
                       int lda, const void *B, int ldb, float beta, void *C, int ldc, int c_f32) {
    HYB_TRY(check_dims("hyb_cuda_gemm_bf16", transA, transB, M, N, K, lda, ldb, ldc));
    if (M == 0 || N == 0) return HYB_OK;
    CUBLAS_CHECK(hyb_cublas.cublasGemmEx(
        hyb_cuda_g.blas, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, N,
        M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C,
        c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return HYB_OK;
}
