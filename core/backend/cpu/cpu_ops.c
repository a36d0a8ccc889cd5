/* core/backend/cpu/cpu_ops.c: element-wise and row-wise CPU kernels (f32, OpenMP over rows).
 * Reductions accumulate in double; per-row results never depend on the thread count. */
/* FP operations never trap in hyb (no FP exceptions are enabled), so GCC may if-convert the
 * clamps and selects below into vector blends. Results are unchanged. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_math.h"
#include "hyb/common.h"

/* Work below this many elements runs on one thread: fork/join costs more than it saves. */
#define PAR_MIN 32768

/* This thread's slice [*lo, *hi) of n items inside a parallel region. */
static void omp_slice(int64_t n, int64_t *lo, int64_t *hi) {
    int nt = omp_get_num_threads(), id = omp_get_thread_num();
    int64_t chunk = (n + nt - 1) / nt;
    *lo = (int64_t)id * chunk;
    *hi = *lo + chunk < n ? *lo + chunk : n;
    if (*lo > n) *lo = n;
}

// ---- embedding ------------------------------------------------------------------------------

void hyb_cpu_embedding_fwd(const float *W, const int32_t *ids, float *y, int64_t n, int64_t D) {
#pragma omp parallel for schedule(static) if (n * D > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        memcpy(y + i * D, W + (int64_t)ids[i] * D, sizeof(float) * (size_t)D);
}

void hyb_cpu_embedding_bwd(float *dW, const int32_t *ids, const float *dy, int64_t n, int64_t D) {
    /* scatter-add: repeated ids must not race, so threads split the columns, not the tokens */
#pragma omp parallel if (n * D > PAR_MIN)
    {
        int64_t lo, hi;
        omp_slice(D, &lo, &hi);
        for (int64_t i = 0; i < n; i++) {
            float *dst = dW + (int64_t)ids[i] * D;
            const float *src = dy + i * D;
#pragma omp simd
            for (int64_t d = lo; d < hi; d++)
                dst[d] += src[d];
        }
    }
}

// ---- rmsnorm --------------------------------------------------------------------------------

/* One row of the forward; the fused add + rmsnorm runs the same code on h, so both give the
 * same bits. */
static inline void rmsnorm_row(const float *xr, const float *w, float *yr, float *rstd, int64_t D,
                               float eps) {
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < D; i++)
        ss += (double)xr[i] * xr[i];
    float rs = (float)(1.0 / sqrt(ss / (double)D + (double)eps));
    *rstd = rs;
#pragma omp simd
    for (int64_t i = 0; i < D; i++)
        yr[i] = w[i] * (xr[i] * rs);
}

void hyb_cpu_rmsnorm_fwd(const float *x, const float *w, float *y, float *rstd, int64_t rows,
                         int64_t D, float eps) {
#pragma omp parallel for schedule(static) if (rows * D > PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        rmsnorm_row(x + r * D, w, y + r * D, rstd + r, D, eps);
}

void hyb_cpu_add_rmsnorm_fwd(const float *a, const float *b, const float *w, float *h, float *y,
                             float *rstd, int64_t rows, int64_t D, float eps) {
#pragma omp parallel for schedule(static) if (rows * D > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *ar = a + r * D, *br = b + r * D;
        float *hr = h + r * D;
#pragma omp simd
        for (int64_t i = 0; i < D; i++)
            hr[i] = ar[i] + br[i];
        rmsnorm_row(hr, w, y + r * D, rstd + r, D, eps);
    }
}

void hyb_cpu_rmsnorm_bwd(const float *x, const float *w, const float *rstd, const float *dy,
                         float *dx, float *dw, int64_t rows, int64_t D) {
    /* y_i = w_i x_i r, r = (mean x^2 + eps)^-1/2:
     *   dx_i = r w_i dy_i - r^3 x_i (sum_j w_j dy_j x_j) / D;   dw_i = sum_rows dy_i x_i r */
    if (dx) {
#pragma omp parallel for schedule(static) if (rows * D > PAR_MIN)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * D, *gr = dy + r * D;
            float *dr = dx + r * D;
            double c = 0.0;
#pragma omp simd reduction(+ : c)
            for (int64_t i = 0; i < D; i++)
                c += (double)w[i] * gr[i] * xr[i];
            const float rs = rstd[r];
            const float k = (float)((double)rs * rs * rs * c / (double)D);
#pragma omp simd
            for (int64_t i = 0; i < D; i++)
                dr[i] += rs * w[i] * gr[i] - k * xr[i];
        }
    }
    if (dw) {
        double *acc = calloc((size_t)D, sizeof(double));
        HYB_ASSERT(acc != NULL);
#pragma omp parallel if (rows * D > PAR_MIN)
        {
            int64_t lo, hi;
            omp_slice(D, &lo, &hi);
            for (int64_t r = 0; r < rows; r++) {
                const float *xr = x + r * D, *gr = dy + r * D;
                const double rs = rstd[r];
#pragma omp simd
                for (int64_t i = lo; i < hi; i++)
                    acc[i] += (double)gr[i] * xr[i] * rs;
            }
        }
        for (int64_t i = 0; i < D; i++)
            dw[i] += (float)acc[i];
        free(acc);
    }
}

// ---- swiglu, add, axpy ----------------------------------------------------------------------

static inline float sigmoidf(float g) {
    return 1.0f / (1.0f + hyb_fast_expf(-g));
}

void hyb_cpu_swiglu_fwd(const float *gate, const float *up, float *y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = gate[i] * sigmoidf(gate[i]) * up[i];
}

void hyb_cpu_swiglu_bwd(const float *gate, const float *up, const float *dy, float *dgate,
                        float *dup, int64_t n) {
    /* d silu(g)/dg = s (1 + g (1 - s)), s = sigmoid(g) */
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i], s = sigmoidf(g);
        if (dgate) dgate[i] += dy[i] * up[i] * s * (1.0f + g * (1.0f - s));
        if (dup) dup[i] += dy[i] * g * s;
    }
}

void hyb_cpu_add(const float *a, const float *b, float *y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

void hyb_cpu_axpy(float *dst, const float *src, float alpha, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        dst[i] += alpha * src[i];
}

// ---- softmax --------------------------------------------------------------------------------

void hyb_cpu_softmax_fwd(const float *x, float *y, int64_t rows, int64_t V) {
#pragma omp parallel for schedule(static) if (rows * V > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * V;
        float *yr = y + r * V;
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int64_t v = 0; v < V; v++)
            m = xr[v] > m ? xr[v] : m;
        if (m == -INFINITY) m = 0.0f; /* an all -inf row: avoid inf - inf */
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t v = 0; v < V; v++) {
            yr[v] = hyb_fast_expf(xr[v] - m);
            s += yr[v];
        }
        const float inv = (float)(1.0 / s);
#pragma omp simd
        for (int64_t v = 0; v < V; v++)
            yr[v] *= inv;
    }
}

void hyb_cpu_softmax_bwd(const float *y, const float *dy, float *dx, int64_t rows, int64_t V) {
#pragma omp parallel for schedule(static) if (rows * V > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * V, *gr = dy + r * V;
        float *dr = dx + r * V;
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int64_t v = 0; v < V; v++)
            dot += (double)gr[v] * yr[v];
        const float d = (float)dot;
#pragma omp simd
        for (int64_t v = 0; v < V; v++)
            dr[v] += yr[v] * (gr[v] - d);
    }
}

/* ---- optimiser ---- (the loops core/optim.c ran itself before the one compute route) */

void hyb_cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, float b1, float b2,
                   float eps, float shrink, float step_size, float inv_sqrt_bc2) {
#pragma omp parallel for if (n > 65536)
    for (int64_t k = 0; k < n; k++) {
        float gk = g[k];
        float mk = b1 * m[k] + (1.0f - b1) * gk;
        float vk = b2 * v[k] + (1.0f - b2) * gk * gk;
        m[k] = mk;
        v[k] = vk;
        p[k] = p[k] * shrink - step_size * mk / (sqrtf(vk) * inv_sqrt_bc2 + eps);
    }
}

double hyb_cpu_sumsq(const float *x, int64_t n) {
    double s = 0;
#pragma omp parallel for reduction(+ : s) if (n > 65536)
    for (int64_t k = 0; k < n; k++)
        s += (double)x[k] * (double)x[k];
    return s;
}

void hyb_cpu_scale(float *x, float alpha, int64_t n) {
#pragma omp parallel for if (n > 65536)
    for (int64_t k = 0; k < n; k++)
        x[k] *= alpha;
}
