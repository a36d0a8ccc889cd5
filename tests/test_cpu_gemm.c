/* tests/test_cpu_gemm.c: hyb_cpu_sgemm against a naive double-precision product, over every path
 * it takes: the skinny x W^T kernel (M <= 16, serial and OpenMP-split), the OpenMP slices of
 * BLAS calls (split along N and along M), all four transpose cases, alpha/beta, leading
 * dimensions wider than the matrices, and calls from inside a parallel region. */
#include <omp.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"
#include "harness.h"
#include "hyb/tensor.h"

static void fill(float *x, int64_t n, uint64_t seed) {
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    hyb_rng_fill_normal(&r, x, n, 0.0f, 1.0f);
}

/* One case: op(A) [M, K], op(B) [K, N]; padded leading dimensions; compares every element of C
 * (and that the padding is untouched) with a double reference. */
static void check_case(int tA, int tB, int M, int N, int K, float alpha, float beta) {
    const int pad = 3;
    int lda = (tA ? M : K) + pad, ldb = (tB ? K : N) + pad, ldc = N + pad;
    int64_t na = (int64_t)(tA ? K : M) * lda, nb = (int64_t)(tB ? N : K) * ldb,
            nc = (int64_t)M * ldc;
    float *A = malloc(sizeof(float) * (size_t)na), *B = malloc(sizeof(float) * (size_t)nb);
    float *C = malloc(sizeof(float) * (size_t)nc), *C0 = malloc(sizeof(float) * (size_t)nc);
    fill(A, na, 1 + (uint64_t)M);
    fill(B, nb, 2 + (uint64_t)N);
    fill(C, nc, 3 + (uint64_t)K);
    for (int64_t i = 0; i < nc; i++)
        C0[i] = C[i];
    hyb_cpu_sgemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    double worst = 0;
    int pad_ok = 1;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double s = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                double a = tA ? A[(int64_t)k * lda + i] : A[(int64_t)i * lda + k];
                double b = tB ? B[(int64_t)j * ldb + k] : B[(int64_t)k * ldb + j];
                s += a * b;
                mag += fabs(a * b);
            }
            double want =
                alpha * s + (beta == 0.0f ? 0.0 : beta * (double)C0[(int64_t)i * ldc + j]);
            double err = fabs(C[(int64_t)i * ldc + j] - want) / (fabs(alpha) * mag + 1.0);
            if (err > worst) worst = err;
        }
        for (int j = N; j < ldc; j++)
            if (C[(int64_t)i * ldc + j] != C0[(int64_t)i * ldc + j]) pad_ok = 0;
    }
    CHECK_MSG(worst < 1e-5, "tA=%d tB=%d M=%d N=%d K=%d alpha=%g beta=%g: rel err %g", tA, tB, M, N,
              K, alpha, beta, worst);
    CHECK_MSG(pad_ok, "tA=%d tB=%d M=%d N=%d K=%d: wrote into the padding of C", tA, tB, M, N, K);
    free(A);
    free(B);
    free(C);
    free(C0);
}

static void test_skinny(void) {
    /* M <= 16, x W^T: the decode path; sizes below and above the parallel threshold, M not a
     * multiple of 4, N not a multiple of the slice granularity */
    int Ms[] = {1, 2, 3, 4, 5, 7, 16};
    for (size_t i = 0; i < sizeof Ms / sizeof *Ms; i++) {
        check_case(0, 1, Ms[i], 37, 19, 1.0f, 0.0f);
        check_case(0, 1, Ms[i], 1000, 577, 1.0f, 0.0f);
        check_case(0, 1, Ms[i], 1001, 300, 0.5f, 2.0f);
    }
}

static void test_blas_slices(void) {
    for (int tA = 0; tA < 2; tA++)
        for (int tB = 0; tB < 2; tB++) {
            check_case(tA, tB, 17, 700, 120, 1.0f, 0.0f); /* split along N */
            check_case(tA, tB, 700, 33, 120, 0.7f, 1.0f); /* split along M */
            check_case(tA, tB, 3, 5, 7, -1.0f, 0.5f);     /* serial */
            check_case(tA, tB, 64, 64, 1, 1.0f, 0.0f);    /* K = 1 */
        }
}

static void test_inside_parallel(void) {
    /* the attention plugin calls sgemm from its own parallel regions: no nested split, same
     * result */
    int bad = 0;
#pragma omp parallel reduction(+ : bad)
    {
        int before = harness_checks_failed;
#pragma omp critical
        {
            check_case(0, 1, 1, 800, 400, 1.0f, 0.0f);
            check_case(0, 0, 40, 600, 64, 1.0f, 0.0f);
        }
        bad += harness_checks_failed != before;
    }
    CHECK(bad == 0);
}

static void test_empty_k(void) {
    float C[6] = {1, 2, 3, 4, 5, 6};
    hyb_cpu_sgemm(0, 1, 2, 3, 0, 1.0f, NULL, 1, NULL, 1, 2.0f, C, 3);
    CHECK_NEAR(C[5], 12.0, 0);
    hyb_cpu_sgemm(0, 1, 2, 3, 0, 1.0f, NULL, 1, NULL, 1, 0.0f, C, 3);
    CHECK_NEAR(C[0], 0.0, 0);
}

int main(void) {
    RUN(test_skinny);
    RUN(test_blas_slices);
    RUN(test_inside_parallel);
    RUN(test_empty_k);
    return harness_done();
}
