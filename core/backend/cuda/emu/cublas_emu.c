/* core/backend/cuda/emu/cublas_emu.c: the cuBLAS calls of core/backend/cuda served by the CPU
 * (OpenBLAS cblas_sgemm, column-major like cuBLAS), for the CUDA emulation. Pointer mode host;
 * "device" memory is host memory. cublasGemmEx takes f32, f16 or bf16 A/B/C with f32 compute:
 * 16-bit inputs are widened to f32 (exact), the product accumulates in f32, a 16-bit C is read
 * and written with round-to-nearest-even. */
#include <cblas.h>
#include <cublas_v2.h>
#include <stdlib.h>
#include <string.h>

#include "emu_internal.h"          /* hyb_emu_capture_hostfn: GEMMs inside a graph capture */
#include "include/hyb_emu_half.h" /* the emulated device's f16/bf16 conversions */

struct cublasContext {
    cudaStream_t stream;
    cublasMath_t math;
};

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = calloc(1, sizeof(struct cublasContext));
    return *h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t n) {
    (void)ws, (void)n; /* the CPU GEMM needs none */
    return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED (emulated cuBLAS)";
    default: return "cuBLAS error (emulated)";
    }
}

static int bad_dims(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda,
                    int ldb, int ldc) {
    const int ra = ta == CUBLAS_OP_N ? m : k, rb = tb == CUBLAS_OP_N ? k : n;
    return m < 0 || n < 0 || k < 0 || lda < (ra > 1 ? ra : 1) || ldb < (rb > 1 ? rb : 1) ||
           ldc < (m > 1 ? m : 1);
}

/* a GEMM's arguments by value (alpha, beta too: pointer mode host), so that a graph capture can
 * record it (hyb_emu_capture_hostfn) and run it at each replay */
typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k;
    float alpha;
    const float *A;
    int lda;
    const float *B;
    int ldb;
    float beta;
    float *C;
    int ldc;
} sgemm_args;
static void sgemm_run(const void *p) {
    const sgemm_args *a = p;
    cblas_sgemm(CblasColMajor, a->ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                a->tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, a->m, a->n, a->k, a->alpha, a->A,
                a->lda, a->B, a->ldb, a->beta, a->C, a->ldc);
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (bad_dims(ta, tb, m, n, k, lda, ldb, ldc)) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    sgemm_args a = {ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc};
    if (!hyb_emu_capture_hostfn(h->stream, sgemm_run, &a, sizeof a)) sgemm_run(&a);
    return CUBLAS_STATUS_SUCCESS;
}

/* a column-major [rows, cols] matrix with leading dimension ld, as dense f32 (ld = rows) */
static float *widen(const void *p, cudaDataType t, int rows, int cols, int ld) {
    float *o = malloc(sizeof(float) * (size_t)(rows ? rows : 1) * (size_t)(cols ? cols : 1));
    if (!o) return NULL;
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++) {
            const size_t i = (size_t)c * (size_t)ld + (size_t)r;
            float v = t == CUDA_R_32F   ? ((const float *)p)[i]
                      : t == CUDA_R_16F ? hyb_emu_h2f(((const unsigned short *)p)[i])
                                        : hyb_emu_bf2f(((const unsigned short *)p)[i]);
            o[(size_t)c * (size_t)rows + (size_t)r] = v;
        }
    return o;
}

typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k;
    float alpha;
    const void *A;
    cudaDataType at;
    int lda;
    const void *B;
    cudaDataType bt;
    int ldb;
    float beta;
    void *C;
    cudaDataType ct;
    int ldc;
} gemmex_args;
static cublasStatus_t gemmex_run(const gemmex_args *g);
static void gemmex_replay(const void *p) {
    gemmex_run(p);
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t algo) {
    (void)algo;
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (bad_dims(ta, tb, m, n, k, lda, ldb, ldc)) return CUBLAS_STATUS_INVALID_VALUE;
    const int ok_t = (at == CUDA_R_32F || at == CUDA_R_16F || at == CUDA_R_16BF) &&
                     (bt == CUDA_R_32F || bt == CUDA_R_16F || bt == CUDA_R_16BF) &&
                     (ct == CUDA_R_32F || ct == CUDA_R_16F || ct == CUDA_R_16BF);
    if (!ok_t || (comp != CUBLAS_COMPUTE_32F && comp != CUBLAS_COMPUTE_32F_PEDANTIC))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    gemmex_args g = {ta, tb, m, n, k, *(const float *)alpha, A, at, lda, B, bt, ldb,
                     *(const float *)beta, C, ct, ldc};
    if (hyb_emu_capture_hostfn(h->stream, gemmex_replay, &g, sizeof g))
        return CUBLAS_STATUS_SUCCESS;
    return gemmex_run(&g);
}

static cublasStatus_t gemmex_run(const gemmex_args *g) {
    const cublasOperation_t ta = g->ta, tb = g->tb;
    const int m = g->m, n = g->n, k = g->k, lda = g->lda, ldb = g->ldb, ldc = g->ldc;
    const cudaDataType at = g->at, bt = g->bt, ct = g->ct;
    const void *A = g->A, *B = g->B;
    void *C = g->C;
    const int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    const int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    float *a = widen(A, at, ar, ac, lda), *b = widen(B, bt, br, bc, ldb);
    float *c = widen(C, ct, m, n, ldc);
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return CUBLAS_STATUS_ALLOC_FAILED;
    }
    const float al = g->alpha, be = g->beta;
    if (be == 0.0f) memset(c, 0, sizeof(float) * (size_t)m * (size_t)n); /* beta 0: C not read */
    cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, al, a, ar, b, br, be, c, m);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const float v = c[(size_t)j * (size_t)m + (size_t)i];
            const size_t o = (size_t)j * (size_t)ldc + (size_t)i;
            if (ct == CUDA_R_32F) ((float *)C)[o] = v;
            else if (ct == CUDA_R_16F) ((unsigned short *)C)[o] = hyb_emu_f2h_bits(v);
            else ((unsigned short *)C)[o] = hyb_emu_f2bf_bits(v);
        }
    free(a), free(b), free(c);
    return CUBLAS_STATUS_SUCCESS;
}
