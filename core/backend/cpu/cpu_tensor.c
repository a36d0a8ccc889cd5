/* core/backend/cpu/cpu_tensor.c: the CPU kernels of the tensor-op entries of hyb/backend.h
 * (ewise, ewise_bwd, axis, axis_bwd, tri, conv1d_causal, gather, sgemm_batched) that the Lua
 * tensor library (runtime/lua_autograd.c) calls: one call per op on a whole tensor, OpenMP over
 * the outer dims. Shapes are 4 dims (left-padded with 1s), strides in elements (0 = broadcast). */
#include <math.h>
#include <stdint.h>

#include "backend/cpu/cpu.h"
#include "hyb/backend.h"
#include "hyb/common.h"

static inline float sigmoidf_(float x) {
    return x >= 0 ? 1.0f / (1.0f + expf(-x)) : expf(x) / (1.0f + expf(x));
}

/* f(a, b, c) of one element. */
static inline float ew_f(int op, float a, float b, float c, float alpha, float beta) {
    switch (op) {
    case HYB_EW_COPY:
        return a;
    case HYB_EW_ADD:
        return a + b;
    case HYB_EW_SUB:
        return a - b;
    case HYB_EW_MUL:
        return a * b;
    case HYB_EW_DIV:
        return a / b;
    case HYB_EW_WHERE:
        return a != 0.0f ? b : c;
    case HYB_EW_AFFINE:
        return alpha * a + beta;
    case HYB_EW_RDIV:
        return alpha / a;
    case HYB_EW_POW:
        return powf(a, alpha);
    case HYB_EW_EXP:
        return expf(a);
    case HYB_EW_LOG:
        return logf(a);
    case HYB_EW_SIGMOID:
        return sigmoidf_(a);
    case HYB_EW_SILU:
        return a * sigmoidf_(a);
    case HYB_EW_SOFTPLUS:
        return a > 20.0f ? a : log1pf(expf(a));
    case HYB_EW_TANH:
        return tanhf(a);
    case HYB_EW_SQRT:
        return sqrtf(a);
    case HYB_EW_RSQRT:
        return 1.0f / sqrtf(a);
    case HYB_EW_GT:
        return a > b ? 1.0f : 0.0f;
    case HYB_EW_LT:
        return a < b ? 1.0f : 0.0f;
    case HYB_EW_GE:
        return a >= b ? 1.0f : 0.0f;
    case HYB_EW_LE:
        return a <= b ? 1.0f : 0.0f;
    case HYB_EW_EQ:
        return a == b ? 1.0f : 0.0f;
    case HYB_EW_MAXIMUM:
        return a >= b ? a : b;
    case HYB_EW_MINIMUM:
        return a <= b ? a : b;
    case HYB_EW_ABS:
        return fabsf(a);
    default:
        return NAN;
    }
}

/* d f / d operand `which` at (a, b, c). */
static inline float ew_d(int op, int which, float a, float b, float c, float alpha) {
    (void)c;
    switch (op) {
    case HYB_EW_COPY:
        return 1.0f;
    case HYB_EW_ADD:
        return 1.0f;
    case HYB_EW_SUB:
        return which == 0 ? 1.0f : -1.0f;
    case HYB_EW_MUL:
        return which == 0 ? b : a;
    case HYB_EW_DIV:
        return which == 0 ? 1.0f / b : -a / (b * b);
    case HYB_EW_WHERE:
        return which == 0 ? 0.0f : which == 1 ? (a != 0.0f) : (a == 0.0f);
    case HYB_EW_AFFINE:
        return alpha;
    case HYB_EW_RDIV:
        return -alpha / (a * a);
    case HYB_EW_POW:
        return alpha == 0.0f ? 0.0f : alpha * powf(a, alpha - 1.0f);
    case HYB_EW_EXP:
        return expf(a);
    case HYB_EW_LOG:
        return 1.0f / a;
    case HYB_EW_SIGMOID: {
        float s = sigmoidf_(a);
        return s * (1.0f - s);
    }
    case HYB_EW_SILU: {
        float s = sigmoidf_(a);
        return s * (1.0f + a * (1.0f - s));
    }
    case HYB_EW_SOFTPLUS:
        return sigmoidf_(a);
    case HYB_EW_TANH: {
        float t = tanhf(a);
        return 1.0f - t * t;
    }
    case HYB_EW_SQRT:
        return 0.5f / sqrtf(a);
    case HYB_EW_RSQRT:
        return -0.5f / (a * sqrtf(a));
    case HYB_EW_MAXIMUM:
        return (which == 0) == (a >= b) ? 1.0f : 0.0f;
    case HYB_EW_MINIMUM:
        return (which == 0) == (a <= b) ? 1.0f : 0.0f;
    case HYB_EW_ABS:
        return a > 0 ? 1.0f : a < 0 ? -1.0f : 0.0f;
    default:
        return 0.0f; /* comparisons */
    }
}

static const int64_t ZERO_STRIDES[4] = {0, 0, 0, 0};

/* y: [s0, s1, s2, s3] through sy; a, b, c through their strides (NULL operands read 0). */
int hyb_cpu_ewise(int op, float *y, const int64_t *sy, const float *a, const int64_t *sa,
                  const float *b, const int64_t *sb, const float *c, const int64_t *sc,
                  const int64_t *s, float alpha, float beta) {
    static const float zero = 0.0f;
    if (!a) a = &zero, sa = ZERO_STRIDES;
    if (!b) b = &zero, sb = ZERO_STRIDES;
    if (!c) c = &zero, sc = ZERO_STRIDES;
    int64_t n = s[0] * s[1] * s[2] * s[3];
#pragma omp parallel for collapse(2) schedule(static) if (n > 32768)
    for (int64_t i0 = 0; i0 < s[0]; i0++)
        for (int64_t i1 = 0; i1 < s[1]; i1++) {
            float *yy = y + i0 * sy[0] + i1 * sy[1];
            const float *aa = a + i0 * sa[0] + i1 * sa[1];
            const float *bb = b + i0 * sb[0] + i1 * sb[1];
            const float *cc = c + i0 * sc[0] + i1 * sc[1];
            for (int64_t i2 = 0; i2 < s[2]; i2++)
                for (int64_t i3 = 0; i3 < s[3]; i3++)
                    yy[i2 * sy[2] + i3 * sy[3]] =
                        ew_f(op, aa[i2 * sa[2] + i3 * sa[3]], bb[i2 * sb[2] + i3 * sb[3]],
                             cc[i2 * sc[2] + i3 * sc[3]], alpha, beta);
        }
    return HYB_OK;
}

/* d: contiguous [dshape] += sum over the broadcast dims of dy * df/d(operand which). */
int hyb_cpu_ewise_bwd(int op, int which, const float *a, const int64_t *sa, const float *b,
                      const int64_t *sb, const float *c, const int64_t *sc, const float *dy,
                      float *d, const int64_t *s, const int64_t *ds, float alpha, float beta) {
    (void)beta;
    static const float zero = 0.0f;
    if (!a) a = &zero, sa = ZERO_STRIDES;
    if (!b) b = &zero, sb = ZERO_STRIDES;
    if (!c) c = &zero, sc = ZERO_STRIDES;
    int64_t sdy[4], red[4], nd = ds[0] * ds[1] * ds[2] * ds[3];
    sdy[3] = 1;
    for (int k = 2; k >= 0; k--)
        sdy[k] = sdy[k + 1] * s[k + 1];
    for (int k = 0; k < 4; k++)
        red[k] = ds[k] == s[k] ? 1 : s[k]; /* loop extent over the reduced dims */
    if (red[0] == 1 && red[1] == 1 && red[2] == 1 && red[3] == 1) {
        /* nothing reduced (the common case): walk the operands' strides without an index
         * division per element; the same float result as the general loop below (one term:
         * the double product of two floats is exact, rounded once) */
#pragma omp parallel for collapse(2) schedule(static) if (nd > 32768)
        for (int64_t i0 = 0; i0 < s[0]; i0++)
            for (int64_t i1 = 0; i1 < s[1]; i1++) {
                const int64_t base = (i0 * s[1] + i1) * s[2] * s[3];
                const float *aa = a + i0 * sa[0] + i1 * sa[1], *bb = b + i0 * sb[0] + i1 * sb[1],
                            *cc = c + i0 * sc[0] + i1 * sc[1];
                for (int64_t i2 = 0; i2 < s[2]; i2++)
                    for (int64_t i3 = 0; i3 < s[3]; i3++) {
                        const int64_t j = base + i2 * s[3] + i3;
                        const float g = dy[j];
                        if (g != 0.0f)
                            d[j] += (float)((double)g * ew_d(op, which, aa[i2 * sa[2] + i3 * sa[3]],
                                                             bb[i2 * sb[2] + i3 * sb[3]],
                                                             cc[i2 * sc[2] + i3 * sc[3]], alpha));
                    }
            }
        return HYB_OK;
    }
    /* the operands' strides along the reduced dims (0 elsewhere) */
    int64_t ra[4], rb[4], rc[4], ry[4];
    for (int k = 0; k < 4; k++) {
        const int r = red[k] > 1;
        ra[k] = r ? sa[k] : 0, rb[k] = r ? sb[k] : 0, rc[k] = r ? sc[k] : 0, ry[k] = r ? sdy[k] : 0;
    }
#pragma omp parallel for schedule(static) if (nd > 4096)
    for (int64_t j = 0; j < nd; j++) {
        int64_t dj[4], r = j;
        for (int k = 3; k >= 0; k--) {
            dj[k] = r % ds[k];
            r /= ds[k];
        }
        int64_t a0 = 0, b0 = 0, c0 = 0, y0 = 0; /* offsets of the kept dims */
        for (int k = 0; k < 4; k++)
            if (red[k] == 1) a0 += dj[k] * sa[k], b0 += dj[k] * sb[k], c0 += dj[k] * sc[k],
                    y0 += dj[k] * sdy[k];
        double acc = 0;
        for (int64_t r0 = 0; r0 < red[0]; r0++)
            for (int64_t r1 = 0; r1 < red[1]; r1++)
                for (int64_t r2 = 0; r2 < red[2]; r2++) {
                    const int64_t oa = a0 + r0 * ra[0] + r1 * ra[1] + r2 * ra[2],
                                  ob = b0 + r0 * rb[0] + r1 * rb[1] + r2 * rb[2],
                                  oc = c0 + r0 * rc[0] + r1 * rc[1] + r2 * rc[2],
                                  oy = y0 + r0 * ry[0] + r1 * ry[1] + r2 * ry[2];
                    for (int64_t r3 = 0; r3 < red[3]; r3++) {
                        float g = dy[oy + r3 * ry[3]];
                        if (g != 0.0f)
                            acc += (double)g * ew_d(op, which, a[oa + r3 * ra[3]], b[ob + r3 * rb[3]],
                                                    c[oc + r3 * rc[3]], alpha);
                    }
                }
        d[j] += (float)acc;
    }
    return HYB_OK;
}

int hyb_cpu_axis(int op, const float *x, float *y, int64_t outer, int64_t n, int64_t inner,
                 float alpha) {
#pragma omp parallel for collapse(2) schedule(static) if (outer * inner > 64)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            const float *xr = x + o * n * inner + i;
            float *yr = op >= HYB_AX_SOFTMAX ? y + o * n * inner + i : y + o * inner + i;
            switch (op) {
            case HYB_AX_SUM: {
                double s = 0;
                for (int64_t k = 0; k < n; k++)
                    s += xr[k * inner];
                *yr = (float)(s * alpha);
                break;
            }
            case HYB_AX_MAX: {
                float m = xr[0];
                for (int64_t k = 1; k < n; k++)
                    if (xr[k * inner] > m || xr[k * inner] != xr[k * inner]) m = xr[k * inner];
                *yr = m;
                break;
            }
            case HYB_AX_LSE:
            case HYB_AX_SOFTMAX:
            case HYB_AX_LOGSOFTMAX: {
                float m = -INFINITY;
                for (int64_t k = 0; k < n; k++)
                    if (xr[k * inner] > m) m = xr[k * inner];
                double s = 0;
                if (m == -INFINITY) m = 0; /* all -inf: lse = -inf, softmax = NaN as in torch */
                for (int64_t k = 0; k < n; k++)
                    s += exp((double)xr[k * inner] - m);
                double lse = m + log(s);
                if (op == HYB_AX_LSE)
                    *yr = (float)lse;
                else
                    for (int64_t k = 0; k < n; k++)
                        yr[k * inner] = op == HYB_AX_SOFTMAX
                                            ? (float)exp((double)xr[k * inner] - lse)
                                            : (float)((double)xr[k * inner] - lse);
                break;
            }
            case HYB_AX_CUMSUM: {
                double s = 0;
                for (int64_t k = 0; k < n; k++) {
                    s += xr[k * inner];
                    yr[k * inner] = (float)s;
                }
                break;
            }
            default:
                break;
            }
        }
    return HYB_OK;
}

int hyb_cpu_axis_bwd(int op, const float *x, const float *y, const float *dy, float *dx,
                     int64_t outer, int64_t n, int64_t inner, float alpha) {
#pragma omp parallel for collapse(2) schedule(static) if (outer * inner > 64)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            const float *xr = x + o * n * inner + i;
            float *dxr = dx + o * n * inner + i;
            int full = op >= HYB_AX_SOFTMAX;
            const float *yr = full ? y + o * n * inner + i : y + o * inner + i;
            const float *dyr = full ? dy + o * n * inner + i : dy + o * inner + i;
            switch (op) {
            case HYB_AX_SUM:
                for (int64_t k = 0; k < n; k++)
                    dxr[k * inner] += alpha * dyr[0];
                break;
            case HYB_AX_MAX:
                for (int64_t k = 0; k < n; k++)
                    if (xr[k * inner] == yr[0]) {
                        dxr[k * inner] += dyr[0];
                        break;
                    }
                break;
            case HYB_AX_LSE:
                for (int64_t k = 0; k < n; k++)
                    dxr[k * inner] += dyr[0] * expf(xr[k * inner] - yr[0]);
                break;
            case HYB_AX_SOFTMAX: {
                double s = 0;
                for (int64_t k = 0; k < n; k++)
                    s += (double)dyr[k * inner] * yr[k * inner];
                for (int64_t k = 0; k < n; k++)
                    dxr[k * inner] += yr[k * inner] * (dyr[k * inner] - (float)s);
                break;
            }
            case HYB_AX_LOGSOFTMAX: {
                double s = 0;
                for (int64_t k = 0; k < n; k++)
                    s += dyr[k * inner];
                for (int64_t k = 0; k < n; k++)
                    dxr[k * inner] += dyr[k * inner] - expf(yr[k * inner]) * (float)s;
                break;
            }
            case HYB_AX_CUMSUM: {
                double s = 0;
                for (int64_t k = n - 1; k >= 0; k--) {
                    s += dyr[k * inner];
                    dxr[k * inner] += (float)s;
                }
                break;
            }
            default:
                break;
            }
        }
    return HYB_OK;
}

int hyb_cpu_tri(const float *x, float *y, int64_t batch, int64_t R, int64_t C, int64_t k, int upper,
                int accumulate) {
#pragma omp parallel for collapse(2) schedule(static) if (batch * R * C > 32768)
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0; i < R; i++) {
            const float *xr = x + (b * R + i) * C;
            float *yr = y + (b * R + i) * C;
            for (int64_t j = 0; j < C; j++) {
                int keep = upper ? j >= i + k : j <= i + k;
                float v = keep ? xr[j] : 0.0f;
                if (accumulate)
                    yr[j] += v;
                else
                    yr[j] = v;
            }
        }
    return HYB_OK;
}

int hyb_cpu_conv1d_causal(const float *x, const float *w, float *y, int64_t B, int64_t T, int64_t C,
                          int64_t K) {
#pragma omp parallel for collapse(2) schedule(static) if (B * T * C * K > 32768)
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            float *yr = y + (b * T + t) * C;
            for (int64_t c = 0; c < C; c++) {
                float s = 0;
                for (int64_t j = 0; j < K; j++) {
                    int64_t tt = t - K + 1 + j;
                    if (tt >= 0) s += w[c * K + j] * x[(b * T + tt) * C + c];
                }
                yr[c] = s;
            }
        }
    return HYB_OK;
}

int hyb_cpu_conv1d_causal_bwd(const float *x, const float *w, const float *dy, float *dx, float *dw,
                              int64_t B, int64_t T, int64_t C, int64_t K) {
    if (dx) {
#pragma omp parallel for collapse(2) schedule(static) if (B * T * C * K > 32768)
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++)
                for (int64_t c = 0; c < C; c++) {
                    float s = 0; /* x[t] feeds y[t + K-1-j] through w[c, j] */
                    for (int64_t j = 0; j < K; j++) {
                        int64_t to = t + K - 1 - j;
                        if (to < T) s += w[c * K + j] * dy[(b * T + to) * C + c];
                    }
                    dx[(b * T + t) * C + c] += s;
                }
    }
    if (dw) {
#pragma omp parallel for schedule(static) if (B * T * C * K > 32768)
        for (int64_t c = 0; c < C; c++)
            for (int64_t j = 0; j < K; j++) {
                double s = 0;
                for (int64_t b = 0; b < B; b++)
                    for (int64_t t = 0; t < T; t++) {
                        int64_t tt = t - K + 1 + j;
                        if (tt >= 0) s += (double)dy[(b * T + t) * C + c] * x[(b * T + tt) * C + c];
                    }
                dw[c * K + j] += (float)s;
            }
    }
    return HYB_OK;
}

int hyb_cpu_gather(const float *x, const int32_t *idx, float *y, int64_t outer, int64_t n,
                   int64_t inner, int64_t m) {
    int64_t total = outer * m * inner;
    for (int64_t e = 0; e < total; e++)
        if (idx[e] < 0 || idx[e] >= n) {
            int64_t o = e / (m * inner), j = e / inner % m, i = e % inner;
            return hyb_error_set(HYB_ERR_ARG,
                                 "cpu gather: index %d at [outer %lld, %lld, inner %lld] is "
                                 "outside [0, %lld)",
                                 (int)idx[e], (long long)o, (long long)j, (long long)i,
                                 (long long)n);
        }
#pragma omp parallel for schedule(static) if (total > 32768)
    for (int64_t e = 0; e < total; e++) {
        int64_t o = e / (m * inner), i = e % inner;
        y[e] = x[(o * n + idx[e]) * inner + i];
    }
    return HYB_OK;
}

int hyb_cpu_gather_bwd(const int32_t *idx, const float *dy, float *dx, int64_t outer, int64_t n,
                       int64_t inner, int64_t m) {
    /* one thread per (o, i) column: the scatter within a column is sequential, so no races */
#pragma omp parallel for collapse(2) schedule(static) if (outer * inner * m > 32768)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++)
            for (int64_t j = 0; j < m; j++) {
                int64_t e = (o * m + j) * inner + i;
                int32_t k = idx[e];
                if (k >= 0 && k < n) dx[(o * n + k) * inner + i] += dy[e];
            }
    return HYB_OK;
}

int hyb_cpu_sgemm_batched(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda,
                          int64_t sA, const float *B, int ldb, int64_t sB, float beta, float *C,
                          int ldc, int64_t sC, int batch) {
    for (int i = 0; i < batch; i++)
        hyb_cpu_sgemm(tA, tB, M, N, K, alpha, A + i * sA, lda, B + i * sB, ldb, beta, C + i * sC,
                      ldc);
    return HYB_OK;
}
