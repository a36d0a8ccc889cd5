/* core/backend/cpu/cpu_loss.c: cross-entropy and KL losses over large vocabularies.
 *
 * Each row is processed with a max-shifted log-sum-exp straight from the logits (exp in f32 with
 * the vectorised hyb_fast_expf, sums in double): nothing of size [rows, V] is allocated; the
 * backward recomputes the softmaxes from the logits and the per-row statistics saved by the
 * forward. Row results are reduced serially afterwards, so the loss does not depend on the number
 * of threads. */
/* FP operations never trap in hyb (no FP exceptions are enabled), so GCC may if-convert the
 * clamps and selects below into vector blends. Results are unchanged. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <math.h>
#include <stdlib.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_math.h"
#include "hyb/common.h"

#define PAR_MIN 32768
#define KL_CLAMP 100.0f

static inline float clampk(float x) {
    return x < -KL_CLAMP ? -KL_CLAMP : (x > KL_CLAMP ? KL_CLAMP : x);
}

/* log sum exp of x[0..V) */
static double row_lse(const float *x, int64_t V) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t v = 0; v < V; v++)
        m = x[v] > m ? x[v] : m;
    if (m == -INFINITY || m == INFINITY) return m;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t v = 0; v < V; v++)
        s += hyb_fast_expf(x[v] - m);
    return (double)m + log(s);
}

void hyb_cpu_ce_fwd(const float *logits, const int32_t *targets, const float *w, float *lse,
                    int64_t rows, int64_t V, double *loss_sum) {
    /* per-row losses from the double log-sum-exp (the f32 copy in lse is for the backward) */
    double *row_loss = malloc(sizeof(double) * (size_t)(rows ? rows : 1));
    HYB_ASSERT(row_loss != NULL);
#pragma omp parallel for schedule(static) if (rows * V > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        if (w[r] == 0.0f) {
            lse[r] = 0.0f;
            row_loss[r] = 0.0;
            continue;
        }
        const double l = row_lse(logits + r * V, V);
        lse[r] = (float)l;
        row_loss[r] = l - (double)logits[r * V + targets[r]];
    }
    double sum = 0.0;
    for (int64_t r = 0; r < rows; r++)
        if (w[r] != 0.0f) sum += (double)w[r] * row_loss[r];
    free(row_loss);
    *loss_sum = sum;
}

void hyb_cpu_ce_bwd(const float *logits, const int32_t *targets, const float *w, const float *lse,
                    float *dlogits, int64_t rows, int64_t V, float scale) {
#pragma omp parallel for schedule(static) if (rows * V > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        if (w[r] == 0.0f) continue;
        const float g = scale * w[r], l = lse[r];
        const float *x = logits + r * V;
        float *d = dlogits + r * V;
#pragma omp simd
        for (int64_t v = 0; v < V; v++)
            d[v] += g * hyb_fast_expf(x[v] - l);
        d[targets[r]] -= g;
    }
}

/* One KL row: log-sum-exps of a = clamp(s) and b = clamp(t / T) (sums in double), then the KL. */
static void kl_row(const float *sr, const float *tr, int64_t V, float T, int reverse, float *st) {
    float ms = -INFINITY, mt = -INFINITY;
#pragma omp simd reduction(max : ms, mt)
    for (int64_t v = 0; v < V; v++) {
        const float a = clampk(sr[v]), b = clampk(tr[v] / T);
        ms = a > ms ? a : ms;
        mt = b > mt ? b : mt;
    }
    double ss = 0.0, stt = 0.0;
#pragma omp simd reduction(+ : ss, stt)
    for (int64_t v = 0; v < V; v++) {
        ss += hyb_fast_expf(clampk(sr[v]) - ms);
        stt += hyb_fast_expf(clampk(tr[v] / T) - mt);
    }
    const double ls = (double)ms + log(ss), lt = (double)mt + log(stt);
    /* log-probabilities in f32, q_f = a - ls_f and p_f = b - lt_f with the lse rounded to f32;
     * the rounding (ds = ls_f - ls, dt = lt_f - lt, the same for every v) is corrected exactly
     * afterwards in double: with q = q_f + ds, p = p_f + dt,
     *   sum e^q (q - p) = e^ds (sum e^q_f (q_f - p_f) + (ds - dt) sum e^q_f)   and likewise */
    const float lsf = (float)ls, ltf = (float)lt;
    const double ds = (double)lsf - ls, dt = (double)ltf - lt;
    double acc = 0.0, mass = 0.0;
    if (reverse) {
#pragma omp simd reduction(+ : acc, mass)
        for (int64_t v = 0; v < V; v++) {
            const float q = clampk(sr[v]) - lsf, p = clampk(tr[v] / T) - ltf;
            const float e = hyb_fast_expf(q);
            acc += e * (q - p);
            mass += e;
        }
    } else {
#pragma omp simd reduction(+ : acc, mass)
        for (int64_t v = 0; v < V; v++) {
            const float q = clampk(sr[v]) - lsf, p = clampk(tr[v] / T) - ltf;
            const float e = hyb_fast_expf(p);
            acc += e * (p - q);
            mass += e;
        }
    }
    const double kl =
        reverse ? exp(ds) * (acc + (ds - dt) * mass) : exp(dt) * (acc + (dt - ds) * mass);
    st[0] = (float)ls;
    st[1] = (float)lt;
    st[2] = (float)kl;
}

void hyb_cpu_kl_fwd(const float *s, const float *t, const float *w, float *stats, int64_t rows,
                    int64_t V, float temperature, int reverse, double *loss_sum) {
#pragma omp parallel for schedule(static) if (rows * V > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float *st = stats + 3 * r;
        if (w[r] == 0.0f) {
            st[0] = st[1] = st[2] = 0.0f;
            continue;
        }
        kl_row(s + r * V, t + r * V, V, temperature, reverse, st);
    }
    double sum = 0.0;
    for (int64_t r = 0; r < rows; r++)
        if (w[r] != 0.0f) sum += (double)w[r] * (double)stats[3 * r + 2];
    *loss_sum = sum;
}

void hyb_cpu_kl_bwd(const float *s, const float *t, const float *w, const float *stats, float *ds,
                    int64_t rows, int64_t V, float temperature, int reverse, float scale) {
#pragma omp parallel for schedule(static) if (rows * V > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        if (w[r] == 0.0f) continue;
        const float g = scale * w[r];
        const float lsf = stats[3 * r], ltf = stats[3 * r + 1], kl = stats[3 * r + 2];
        const float *sr = s + r * V, *tr = t + r * V;
        float *d = ds + r * V;
        /* the clamp passes no gradient outside [-100, 100] (as torch.clamp's backward) */
        if (reverse) {
            /* d/ds sum e^q (q - p) = e^q ((q - p) - KL) */
#pragma omp simd
            for (int64_t v = 0; v < V; v++) {
                const float x = sr[v], q = x - lsf, p = clampk(tr[v] / temperature) - ltf;
                const float gv = hyb_fast_expf(q) * ((q - p) - kl);
                d[v] += (x >= -KL_CLAMP && x <= KL_CLAMP) ? g * gv : 0.0f;
            }
        } else {
            /* d/ds sum e^p (p - q) = e^q - e^p */
#pragma omp simd
            for (int64_t v = 0; v < V; v++) {
                const float x = sr[v], q = x - lsf, p = clampk(tr[v] / temperature) - ltf;
                const float gv = hyb_fast_expf(q) - hyb_fast_expf(p);
                d[v] += (x >= -KL_CLAMP && x <= KL_CLAMP) ? g * gv : 0.0f;
            }
        }
    }
}
