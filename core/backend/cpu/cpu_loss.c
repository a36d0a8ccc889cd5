/* core/backend/cpu/cpu_loss.c: cross-entropy and KL losses over large vocabularies.
 *
 * Each row is processed with a max-shifted log-sum-exp (exp in f32, sums in double) straight from
 * the logits: nothing of size [rows, V] is allocated; the backward recomputes the softmax from the
 * logits and the saved per-row log-sum-exp. Row sums are reduced serially afterwards, so the loss
 * does not depend on the number of threads. */
#include <math.h>

#include "backend/cpu/cpu.h"

#define PAR_MIN 32768
#define KL_CLAMP 100.0f

/* log sum exp of x[0..V) */
static double row_lse(const float *x, int64_t V) {
    float m = -INFINITY;
    for (int64_t v = 0; v < V; v++) m = x[v] > m ? x[v] : m;
    if (m == -INFINITY || m == INFINITY) return m;
    double s = 0.0;
    for (int64_t v = 0; v < V; v++) s += expf(x[v] - m);
    return (double)m + log(s);
}

void hyb_cpu_ce_fwd(const float *logits, const int32_t *targets, const float *w, float *lse,
                    int64_t rows, int64_t V, double *loss_sum) {
#pragma omp parallel for schedule(static) if (rows * V > PAR_MIN)
    for (int64_t r = 0; r < rows; r++) lse[r] = w[r] != 0.0f ? (float)row_lse(logits + r * V, V) : 0.0f;
    double sum = 0.0;
    for (int64_t r = 0; r < rows; r++)
        if (w[r] != 0.0f)
            sum += (double)w[r] * ((double)lse[r] - (double)logits[r * V + targets[r]]);
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
        for (int64_t v = 0; v < V; v++) d[v] += g * expf(x[v] - l);
        d[targets[r]] -= g;
    }
}

static inline float clampk(float x) { return x < -KL_CLAMP ? -KL_CLAMP : (x > KL_CLAMP ? KL_CLAMP : x); }

/* log-sum-exp of clamp(x / div) (div = 1 for the student) */
static double row_lse_clamped(const float *x, int64_t V, float div) {
    float m = -INFINITY;
    for (int64_t v = 0; v < V; v++) {
        float a = clampk(x[v] / div);
        m = a > m ? a : m;
    }
    double s = 0.0;
    for (int64_t v = 0; v < V; v++) s += expf(clampk(x[v] / div) - m);
    return (double)m + log(s);
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
        const float *sr = s + r * V, *tr = t + r * V;
        const double ls = row_lse_clamped(sr, V, 1.0f);
        const double lt = row_lse_clamped(tr, V, temperature);
        const float lsf = (float)ls, ltf = (float)lt;
        double kl = 0.0;
        for (int64_t v = 0; v < V; v++) {
            const float q = clampk(sr[v]) - lsf;              /* log student prob */
            const float p = clampk(tr[v] / temperature) - ltf; /* log teacher prob */
            kl += reverse ? (double)expf(q) * (double)(q - p) : (double)expf(p) * (double)(p - q);
        }
        st[0] = lsf;
        st[1] = ltf;
        st[2] = (float)kl;
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
        for (int64_t v = 0; v < V; v++) {
            const float x = sr[v];
            if (!(x >= -KL_CLAMP && x <= KL_CLAMP)) continue; /* clamp passes no gradient */
            const float q = x - lsf;
            const float p = clampk(tr[v] / temperature) - ltf;
            /* reverse: d/ds sum e^q (q - p) = e^q ((q - p) - KL);  forward: e^q - e^p */
            d[v] += g * (reverse ? expf(q) * ((q - p) - kl) : expf(q) - expf(p));
        }
    }
}
