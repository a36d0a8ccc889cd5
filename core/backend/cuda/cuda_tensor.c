/* core/backend/cuda/cuda_tensor.c: launchers of kernels/tensor.cu, the CUDA mirrors of
 * core/backend/cpu/cpu_tensor.c (the tensor-op entries of hyb/backend.h: ewise, ewise_bwd, axis,
 * axis_bwd, tri, conv1d_causal(_bwd), gather(_bwd), sgemm_batched). The shapes and strides of an
 * ewise call go to the device in one small upload (a pool block, freed after the launch: the
 * pool reuses it only for later work on the same stream). */
#include <string.h>

#include "backend/cuda/cuda_internal.h"

#define TBLOCK 256
#define TFILE "tensor.cu"

static unsigned tgrid(int64_t n) {
    int64_t g = (n + TBLOCK - 1) / TBLOCK,
            cap = (int64_t)(hyb_cuda_g.n_sm > 0 ? hyb_cuda_g.n_sm : 1) * 32;
    if (g > cap) g = cap;
    return (unsigned)(g < 1 ? 1 : g);
}

static int tlaunch(const char *kernel, int64_t n, void **args) {
    if (n <= 0) return HYB_OK;
    CUfunction fn = hyb_cuda_function(TFILE, kernel);
    if (!fn) return HYB_ERR;
    return hyb_cuda_launch(fn, kernel, tgrid(n), 1, TBLOCK, args);
}

/* a device block holding 20 int64 (shape and four stride sets) and one zero float after them */
static void *upload_meta(const int64_t *m20) {
    unsigned char host[20 * sizeof(int64_t) + sizeof(float)];
    memcpy(host, m20, 20 * sizeof(int64_t));
    memset(host + 20 * sizeof(int64_t), 0, sizeof(float));
    void *d = hyb_cuda_malloc(sizeof host);
    if (d && hyb_cuda_upload(d, host, sizeof host) != HYB_OK) {
        hyb_cuda_free(d);
        return NULL;
    }
    return d;
}

static const int64_t Z4[4] = {0, 0, 0, 0};

int hyb_cuda_ewise(int op, float *y, const int64_t *sy, const float *a, const int64_t *sa,
                   const float *b, const int64_t *sb, const float *c, const int64_t *sc,
                   const int64_t *shape, float alpha, float beta) {
    int64_t meta[20];
    memcpy(meta, shape, 32);
    memcpy(meta + 4, sy, 32);
    memcpy(meta + 8, a ? sa : Z4, 32);
    memcpy(meta + 12, b ? sb : Z4, 32);
    memcpy(meta + 16, c ? sc : Z4, 32);
    int64_t n = shape[0] * shape[1] * shape[2] * shape[3];
    void *m = upload_meta(meta);
    if (!m) return HYB_ERR_NOMEM;
    const float *zero = (const float *)((char *)m + 20 * sizeof(int64_t));
    if (!a) a = zero;
    if (!b) b = zero;
    if (!c) c = zero;
    void *args[] = {&op, &y, &a, &b, &c, &m, &alpha, &beta, &n};
    int rc = tlaunch("hyb_t_ewise", n, args);
    hyb_cuda_free(m);
    return rc;
}

int hyb_cuda_ewise_bwd(int op, int which, const float *a, const int64_t *sa, const float *b,
                       const int64_t *sb, const float *c, const int64_t *sc, const float *dy,
                       float *d, const int64_t *shape, const int64_t *dshape, float alpha,
                       float beta) {
    (void)beta;
    int64_t meta[20];
    memcpy(meta, shape, 32);
    memcpy(meta + 4, dshape, 32);
    memcpy(meta + 8, a ? sa : Z4, 32);
    memcpy(meta + 12, b ? sb : Z4, 32);
    memcpy(meta + 16, c ? sc : Z4, 32);
    int64_t nd = dshape[0] * dshape[1] * dshape[2] * dshape[3];
    void *m = upload_meta(meta);
    if (!m) return HYB_ERR_NOMEM;
    const float *zero = (const float *)((char *)m + 20 * sizeof(int64_t));
    if (!a) a = zero;
    if (!b) b = zero;
    if (!c) c = zero;
    void *args[] = {&op, &which, &a, &b, &c, &dy, &d, &m, &alpha, &nd};
    int rc = tlaunch("hyb_t_ewise_bwd", nd, args);
    hyb_cuda_free(m);
    return rc;
}

int hyb_cuda_axis(int op, const float *x, float *y, int64_t outer, int64_t n, int64_t inner,
                  float alpha) {
    void *args[] = {&op, &x, &y, &outer, &n, &inner, &alpha};
    return tlaunch("hyb_t_axis", outer * inner, args);
}

int hyb_cuda_axis_bwd(int op, const float *x, const float *y, const float *dy, float *dx,
                      int64_t outer, int64_t n, int64_t inner, float alpha) {
    void *args[] = {&op, &x, &y, &dy, &dx, &outer, &n, &inner, &alpha};
    return tlaunch("hyb_t_axis_bwd", outer * inner, args);
}

int hyb_cuda_tri(const float *x, float *y, int64_t batch, int64_t R, int64_t C, int64_t k,
                 int upper, int accumulate) {
    void *args[] = {&x, &y, &batch, &R, &C, &k, &upper, &accumulate};
    return tlaunch("hyb_t_tri", batch * R * C, args);
}

int hyb_cuda_conv1d_causal(const float *x, const float *w, float *y, int64_t B, int64_t T,
                           int64_t C, int64_t K) {
    void *args[] = {&x, &w, &y, &B, &T, &C, &K};
    return tlaunch("hyb_t_conv1d", B * T * C, args);
}

int hyb_cuda_conv1d_causal_bwd(const float *x, const float *w, const float *dy, float *dx,
                               float *dw, int64_t B, int64_t T, int64_t C, int64_t K) {
    if (dx) {
        void *args[] = {&w, &dy, &dx, &B, &T, &C, &K};
        HYB_TRY(tlaunch("hyb_t_conv1d_dx", B * T * C, args));
    }
    if (dw) {
        void *args[] = {&x, &dy, &dw, &B, &T, &C, &K};
        HYB_TRY(tlaunch("hyb_t_conv1d_dw", C * K, args));
    }
    return HYB_OK;
}

int hyb_cuda_gather(const float *x, const int32_t *idx, float *y, int64_t outer, int64_t n,
                    int64_t inner, int64_t m) {
    int64_t total = outer * m * inner;
    if (total <= 0) return HYB_OK;
    unsigned long long none = ~0ull, bad = 0;
    void *flag = hyb_cuda_malloc(sizeof none);
    if (!flag) return HYB_ERR_NOMEM;
    int rc = hyb_cuda_upload(flag, &none, sizeof none);
    if (rc == HYB_OK) {
        void *args[] = {&x, &idx, &y, &outer, &n, &inner, &m, &flag};
        rc = tlaunch("hyb_t_gather", total, args);
    }
    if (rc == HYB_OK) rc = hyb_cuda_download(&bad, flag, sizeof bad);
    hyb_cuda_free(flag);
    if (rc == HYB_OK && bad != none) {
        int32_t v = 0;
        hyb_cuda_download(&v, idx + bad, sizeof v);
        int64_t e = (int64_t)bad;
        return hyb_error_set(HYB_ERR_ARG,
                             "cuda gather: index %d at [outer %lld, %lld, inner %lld] is outside "
                             "[0, %lld)",
                             (int)v, (long long)(e / (m * inner)), (long long)(e / inner % m),
                             (long long)(e % inner), (long long)n);
    }
    return rc;
}

int hyb_cuda_gather_bwd(const int32_t *idx, const float *dy, float *dx, int64_t outer, int64_t n,
                        int64_t inner, int64_t m) {
    void *args[] = {&idx, &dy, &dx, &outer, &n, &inner, &m};
    return tlaunch("hyb_t_gather_bwd", outer * inner, args);
}

int hyb_cuda_sgemm_batched(int tA, int tB, int M, int N, int K, float alpha, const float *A,
                           int lda, int64_t sA, const float *B, int ldb, int64_t sB, float beta,
                           float *C, int ldc, int64_t sC, int batch) {
    /* one cuBLAS GEMM per batch entry on the stream (a strided-batched call is the next step) */
    for (int i = 0; i < batch; i++)
        HYB_TRY(hyb_cuda_sgemm(tA, tB, M, N, K, alpha, A + i * sA, lda, B + i * sB, ldb, beta,
                               C + i * sC, ldc));
    return HYB_OK;
}
