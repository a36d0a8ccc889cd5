/* core/backend/cuda/kernels/tensor.cu: the tensor-op kernels of the Lua tensor library (mirrors of
 * core/backend/cpu/cpu_tensor.c; hyb/backend.h documents each entry). Grid-stride loops, one
 * thread per output element (or per reduced column); shapes are 4 dims and the strides come in a
 * small device array `meta` (cuda_tensor.c uploads it). Op numbers: hyb_ew_op / hyb_axis_op. */

/* hyb_ew_op */
#define EW_COPY 0
#define EW_ADD 1
#define EW_SUB 2
#define EW_MUL 3
#define EW_DIV 4
#define EW_WHERE 5
#define EW_AFFINE 6
#define EW_RDIV 7
#define EW_POW 8
#define EW_EXP 9
#define EW_LOG 10
#define EW_SIGMOID 11
#define EW_SILU 12
#define EW_SOFTPLUS 13
#define EW_TANH 14
#define EW_SQRT 15
#define EW_RSQRT 16
#define EW_GT 17
#define EW_LT 18
#define EW_GE 19
#define EW_LE 20
#define EW_EQ 21
#define EW_MAXIMUM 22
#define EW_MINIMUM 23
#define EW_ABS 24
/* hyb_axis_op */
#define AX_SUM 0
#define AX_MAX 1
#define AX_LSE 2
#define AX_SOFTMAX 3
#define AX_LOGSOFTMAX 4
#define AX_CUMSUM 5

__device__ __forceinline__ float t_sigmoid(float x) {
    return x >= 0.0f ? 1.0f / (1.0f + expf(-x)) : expf(x) / (1.0f + expf(x));
}

__device__ float t_ew_f(int op, float a, float b, float c, float alpha, float beta) {
    switch (op) {
    case EW_COPY: return a;
    case EW_ADD: return a + b;
    case EW_SUB: return a - b;
    case EW_MUL: return a * b;
    case EW_DIV: return a / b;
    case EW_WHERE: return a != 0.0f ? b : c;
    case EW_AFFINE: return alpha * a + beta;
    case EW_RDIV: return alpha / a;
    case EW_POW: return powf(a, alpha);
    case EW_EXP: return expf(a);
    case EW_LOG: return logf(a);
    case EW_SIGMOID: return t_sigmoid(a);
    case EW_SILU: return a * t_sigmoid(a);
    case EW_SOFTPLUS: return a > 20.0f ? a : log1pf(expf(a));
    case EW_TANH: return tanhf(a);
    case EW_SQRT: return sqrtf(a);
    case EW_RSQRT: return 1.0f / sqrtf(a);
    case EW_GT: return a > b ? 1.0f : 0.0f;
    case EW_LT: return a < b ? 1.0f : 0.0f;
    case EW_GE: return a >= b ? 1.0f : 0.0f;
    case EW_LE: return a <= b ? 1.0f : 0.0f;
    case EW_EQ: return a == b ? 1.0f : 0.0f;
    case EW_MAXIMUM: return a >= b ? a : b;
    case EW_MINIMUM: return a <= b ? a : b;
    case EW_ABS: return fabsf(a);
    default: return 0.0f / 0.0f;
    }
}

__device__ float t_ew_d(int op, int which, float a, float b, float alpha) {
    switch (op) {
    case EW_COPY: return 1.0f;
    case EW_ADD: return 1.0f;
    case EW_SUB: return which == 0 ? 1.0f : -1.0f;
    case EW_MUL: return which == 0 ? b : a;
    case EW_DIV: return which == 0 ? 1.0f / b : -a / (b * b);
    case EW_WHERE: return which == 0 ? 0.0f : which == 1 ? (a != 0.0f ? 1.0f : 0.0f) : (a == 0.0f ? 1.0f : 0.0f);
    case EW_AFFINE: return alpha;
    case EW_RDIV: return -alpha / (a * a);
    case EW_POW: return alpha == 0.0f ? 0.0f : alpha * powf(a, alpha - 1.0f);
    case EW_EXP: return expf(a);
    case EW_LOG: return 1.0f / a;
    case EW_SIGMOID: {
        float s = t_sigmoid(a);
        return s * (1.0f - s);
    }
    case EW_SILU: {
        float s = t_sigmoid(a);
        return s * (1.0f + a * (1.0f - s));
    }
    case EW_SOFTPLUS: return t_sigmoid(a);
    case EW_TANH: {
        float t = tanhf(a);
        return 1.0f - t * t;
    }
    case EW_SQRT: return 0.5f / sqrtf(a);
    case EW_RSQRT: return -0.5f / (a * sqrtf(a));
    case EW_MAXIMUM: return (which == 0) == (a >= b) ? 1.0f : 0.0f;
    case EW_MINIMUM: return (which == 0) == (a <= b) ? 1.0f : 0.0f;
    case EW_ABS: return a > 0.0f ? 1.0f : a < 0.0f ? -1.0f : 0.0f;
    default: return 0.0f;
    }
}

/* meta: shape[4], sy[4], sa[4], sb[4], sc[4]; n = numel(shape). NULL operands read 0 (strides 0,
 * and the launcher passes a pointer to a zero). */
extern "C" __global__ void hyb_t_ewise(int op, float *y, const float *a, const float *b,
                                       const float *c, const i64 *meta, float alpha, float beta,
                                       i64 n) {
    const i64 *s = meta, *sy = meta + 4, *sa = meta + 8, *sb = meta + 12, *sc = meta + 16;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
        i64 r = e, oy = 0, oa = 0, ob = 0, oc = 0;
        for (int k = 3; k >= 0; k--) {
            i64 i = r % s[k];
            r /= s[k];
            oy += i * sy[k];
            oa += i * sa[k];
            ob += i * sb[k];
            oc += i * sc[k];
        }
        y[oy] = t_ew_f(op, a[oa], b[ob], c[oc], alpha, beta);
    }
}

/* meta: shape[4], dshape[4], sa[4], sb[4], sc[4]; d: contiguous [dshape] += sum over the broadcast
 * dims of dy (contiguous [shape]) * df/d operand `which`; nd = numel(dshape) */
extern "C" __global__ void hyb_t_ewise_bwd(int op, int which, const float *a, const float *b,
                                           const float *c, const float *dy, float *d,
                                           const i64 *meta, float alpha, i64 nd) {
    const i64 *s = meta, *ds = meta + 4, *sa = meta + 8, *sb = meta + 12;
    (void)c;
    i64 sdy[4], red[4];
    sdy[3] = 1;
    for (int k = 2; k >= 0; k--) sdy[k] = sdy[k + 1] * s[k + 1];
    for (int k = 0; k < 4; k++) red[k] = ds[k] == s[k] ? 1 : s[k];
    for (i64 j = blockIdx.x * (i64)blockDim.x + threadIdx.x; j < nd; j += (i64)gridDim.x * blockDim.x) {
        i64 dj[4], r = j;
        for (int k = 3; k >= 0; k--) {
            dj[k] = r % ds[k];
            r /= ds[k];
        }
        double acc = 0.0;
        for (i64 r0 = 0; r0 < red[0]; r0++)
            for (i64 r1 = 0; r1 < red[1]; r1++)
                for (i64 r2 = 0; r2 < red[2]; r2++)
                    for (i64 r3 = 0; r3 < red[3]; r3++) {
                        i64 i[4] = {red[0] > 1 ? r0 : dj[0], red[1] > 1 ? r1 : dj[1],
                                    red[2] > 1 ? r2 : dj[2], red[3] > 1 ? r3 : dj[3]};
                        i64 oa = 0, ob = 0, oy = 0;
                        for (int k = 0; k < 4; k++) {
                            oa += i[k] * sa[k];
                            ob += i[k] * sb[k];
                            oy += i[k] * sdy[k];
                        }
                        float g = dy[oy];
                        if (g != 0.0f) acc += (double)g * t_ew_d(op, which, a[oa], b[ob], alpha);
                    }
        d[j] += (float)acc;
    }
}

/* one thread per (o, i) column of x: [outer, n, inner] */
extern "C" __global__ void hyb_t_axis(int op, const float *x, float *y, i64 outer, i64 n, i64 inner,
                                      float alpha) {
    const i64 cols = outer * inner;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < cols; e += (i64)gridDim.x * blockDim.x) {
        const i64 o = e / inner, i = e % inner;
        const float *xr = x + o * n * inner + i;
        float *yr = op >= AX_SOFTMAX ? y + o * n * inner + i : y + o * inner + i;
        if (op == AX_SUM) {
            double s = 0.0;
            for (i64 k = 0; k < n; k++) s += xr[k * inner];
            *yr = (float)(s * alpha);
        } else if (op == AX_MAX) {
            float m = xr[0];
            for (i64 k = 1; k < n; k++)
                if (xr[k * inner] > m || xr[k * inner] != xr[k * inner]) m = xr[k * inner];
            *yr = m;
        } else if (op == AX_CUMSUM) {
            double s = 0.0;
            for (i64 k = 0; k < n; k++) {
                s += xr[k * inner];
                yr[k * inner] = (float)s;
            }
        } else {
            float m = -HYB_INF;
            for (i64 k = 0; k < n; k++)
                if (xr[k * inner] > m) m = xr[k * inner];
            if (m == -HYB_INF) m = 0.0f;
            double s = 0.0;
            for (i64 k = 0; k < n; k++) s += exp((double)xr[k * inner] - m);
            double lse = m + log(s);
            if (op == AX_LSE)
                *yr = (float)lse;
            else
                for (i64 k = 0; k < n; k++)
                    yr[k * inner] = op == AX_SOFTMAX ? (float)exp((double)xr[k * inner] - lse)
                                                     : (float)((double)xr[k * inner] - lse);
        }
    }
}

extern "C" __global__ void hyb_t_axis_bwd(int op, const float *x, const float *y, const float *dy,
                                          float *dx, i64 outer, i64 n, i64 inner, float alpha) {
    const i64 cols = outer * inner;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < cols; e += (i64)gridDim.x * blockDim.x) {
        const i64 o = e / inner, i = e % inner;
        const float *xr = x + o * n * inner + i;
        float *dxr = dx + o * n * inner + i;
        const int full = op >= AX_SOFTMAX;
        const float *yr = full ? y + o * n * inner + i : y + o * inner + i;
        const float *dyr = full ? dy + o * n * inner + i : dy + o * inner + i;
        if (op == AX_SUM) {
            for (i64 k = 0; k < n; k++) dxr[k * inner] += alpha * dyr[0];
        } else if (op == AX_MAX) {
            for (i64 k = 0; k < n; k++)
                if (xr[k * inner] == yr[0]) {
                    dxr[k * inner] += dyr[0];
                    break;
                }
        } else if (op == AX_LSE) {
            for (i64 k = 0; k < n; k++) dxr[k * inner] += dyr[0] * expf(xr[k * inner] - yr[0]);
        } else if (op == AX_SOFTMAX) {
            double s = 0.0;
            for (i64 k = 0; k < n; k++) s += (double)dyr[k * inner] * yr[k * inner];
            for (i64 k = 0; k < n; k++) dxr[k * inner] += yr[k * inner] * (dyr[k * inner] - (float)s);
        } else if (op == AX_LOGSOFTMAX) {
            double s = 0.0;
            for (i64 k = 0; k < n; k++) s += dyr[k * inner];
            for (i64 k = 0; k < n; k++) dxr[k * inner] += dyr[k * inner] - expf(yr[k * inner]) * (float)s;
        } else if (op == AX_CUMSUM) {
            double s = 0.0;
            for (i64 k = n - 1; k >= 0; k--) {
                s += dyr[k * inner];
                dxr[k * inner] += (float)s;
            }
        }
    }
}

/* x, y: [batch, R, C] */
extern "C" __global__ void hyb_t_tri(const float *x, float *y, i64 batch, i64 R, i64 C, i64 k,
                                     int upper, int accumulate) {
    const i64 n = batch * R * C;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
        const i64 j = e % C, i = e / C % R;
        const int keep = upper ? j >= i + k : j <= i + k;
        const float v = keep ? x[e] : 0.0f;
        if (accumulate)
            y[e] += v;
        else
            y[e] = v;
    }
}

/* x: [B, T, C], w: [C, K] -> y: [B, T, C] */
extern "C" __global__ void hyb_t_conv1d(const float *x, const float *w, float *y, i64 B, i64 T,
                                        i64 C, i64 K) {
    const i64 n = B * T * C;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
        const i64 c = e % C, t = e / C % T, b = e / (C * T);
        float s = 0.0f;
        for (i64 j = 0; j < K; j++) {
            const i64 tt = t - K + 1 + j;
            if (tt >= 0) s += w[c * K + j] * x[(b * T + tt) * C + c];
        }
        y[e] = s;
    }
}

/* dx: [B, T, C] += (one thread per element) */
extern "C" __global__ void hyb_t_conv1d_dx(const float *w, const float *dy, float *dx, i64 B, i64 T,
                                           i64 C, i64 K) {
    const i64 n = B * T * C;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
        const i64 c = e % C, t = e / C % T, b = e / (C * T);
        float s = 0.0f;
        for (i64 j = 0; j < K; j++) {
            const i64 to = t + K - 1 - j;
            if (to < T) s += w[c * K + j] * dy[(b * T + to) * C + c];
        }
        dx[e] += s;
    }
}

/* dw: [C, K] += (one thread per weight, summing over B and T) */
extern "C" __global__ void hyb_t_conv1d_dw(const float *x, const float *dy, float *dw, i64 B, i64 T,
                                           i64 C, i64 K) {
    const i64 n = C * K;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)gridDim.x * blockDim.x) {
        const i64 c = e / K, j = e % K;
        double s = 0.0;
        for (i64 b = 0; b < B; b++)
            for (i64 t = 0; t < T; t++) {
                const i64 tt = t - K + 1 + j;
                if (tt >= 0) s += (double)dy[(b * T + t) * C + c] * x[(b * T + tt) * C + c];
            }
        dw[e] += (float)s;
    }
}

/* y: [outer, m, inner] = x[o, idx, i]; an index outside [0, n) leaves 0 and lowers *bad to its
 * position (the launcher reads it back and reports it) */
extern "C" __global__ void hyb_t_gather(const float *x, const int *idx, float *y, i64 outer, i64 n,
                                        i64 inner, i64 m, unsigned long long *bad) {
    const i64 total = outer * m * inner;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)gridDim.x * blockDim.x) {
        const int k = idx[e];
        const i64 o = e / (m * inner), i = e % inner;
        if (k < 0 || k >= n) {
            atomicMin(bad, (unsigned long long)e);
            y[e] = 0.0f;
        } else {
            y[e] = x[(o * n + k) * inner + i];
        }
    }
}

/* dx: [outer, n, inner] += scatter of dy by idx (one thread per (o, i) column: no races) */
extern "C" __global__ void hyb_t_gather_bwd(const int *idx, const float *dy, float *dx, i64 outer,
                                            i64 n, i64 inner, i64 m) {
    const i64 cols = outer * inner;
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < cols; e += (i64)gridDim.x * blockDim.x) {
        const i64 o = e / inner, i = e % inner;
        for (i64 j = 0; j < m; j++) {
            const i64 p = (o * m + j) * inner + i;
            const int k = idx[p];
            if (k >= 0 && k < n) dx[(o * n + k) * inner + i] += dy[p];
        }
    }
}
