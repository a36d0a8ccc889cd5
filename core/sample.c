/* Sampler over logits [V]: repetition penalty, greedy, temperature, top-k, top-p (hyb/sample.h). */
#include "hyb/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

hyb_sampler_params hyb_sampler_defaults(void) {
    hyb_sampler_params p = {0.0f, 0, 1.0f, 1.0f};
    return p;
}

/* The stated ranges (hyb/sample.h): temperature [0, 100], top_k >= 0, top_p [0, 1], repetition
 * penalty (0, 100]; "-1" or "2" is a mistake, not a way to say "off". */
static int check_params(const hyb_sampler_params *p) {
    if (!(p->temperature >= 0.0f && p->temperature <= 100.0f))
        return hyb_error_set(HYB_ERR_ARG, "sampler: temperature must be in [0, 100] (0: greedy), "
                             "got %g", (double)p->temperature);
    if (p->top_k < 0)
        return hyb_error_set(HYB_ERR_ARG, "sampler: top_k must be >= 0 (0: off), got %d", p->top_k);
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f))
        return hyb_error_set(HYB_ERR_ARG, "sampler: top_p must be in [0, 1] (0 or 1: off), got %g",
                             (double)p->top_p);
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= 100.0f))
        return hyb_error_set(HYB_ERR_ARG,
                             "sampler: repetition_penalty must be in (0, 100] (1: off), got %g",
                             (double)p->repetition_penalty);
    return HYB_OK;
}

int hyb_sampler_new(int V, const hyb_sampler_params *p, uint64_t seed, hyb_sampler **out) {
    *out = NULL;
    if (V <= 0)
        return hyb_error_set(HYB_ERR_ARG, "sampler: vocabulary size must be > 0, got %d", V);
    hyb_sampler_params def = hyb_sampler_defaults();
    if (!p) p = &def;
    HYB_TRY(check_params(p));
    hyb_sampler *s = calloc(1, sizeof *s);
    if (!s) return hyb_error_set(HYB_ERR_NOMEM, "sampler: out of memory");
    s->p = *p;
    s->V = V;
    s->work = malloc((size_t)V * sizeof *s->work);
    s->idx = malloc((size_t)V * sizeof *s->idx);
    s->seen = calloc((size_t)V, 1);
    if (!s->work || !s->idx || !s->seen) {
        hyb_sampler_free(s);
        return hyb_error_set(HYB_ERR_NOMEM, "sampler: out of memory (V = %d)", V);
    }
    hyb_rng_seed(&s->rng, seed);
    *out = s;
    return HYB_OK;
}

void hyb_sampler_free(hyb_sampler *s) {
    if (!s) return;
    free(s->work);
    free(s->idx);
    free(s->seen);
    free(s);
}

void hyb_sampler_reseed(hyb_sampler *s, uint64_t seed) {
    hyb_rng_seed(&s->rng, seed);
}

int32_t hyb_sample_argmax(const float *x, int n) {
    int32_t best = -1;
    for (int i = 0; i < n; i++)
        if (!isnan(x[i]) && (best < 0 || x[i] > x[best])) best = i;
    return best;
}

static int penalise(float *logits, int V, const int32_t *hist, int n, float penalty,
                    uint8_t *seen) {
    for (int i = 0; i < n; i++)
        if (hist[i] < 0 || hist[i] >= V)
            return hyb_error_set(HYB_ERR_ARG,
                                 "sampler: history token %d at position %d is outside [0, %d)",
                                 hist[i], i, V);
    if (penalty == 1.0f) return HYB_OK;
    for (int i = 0; i < n; i++) {
        int32_t t = hist[i];
        if (seen[t]) continue;
        seen[t] = 1;
        float l = logits[t];
        logits[t] = l < 0.0f ? l * penalty : l / penalty;
    }
    for (int i = 0; i < n; i++)
        seen[hist[i]] = 0;
    return HYB_OK;
}

int hyb_sample_repetition_penalty(float *logits, int V, const int32_t *history, int n_history,
                                  float penalty) {
    if (!(penalty > 0.0f))
        return hyb_error_set(HYB_ERR_ARG, "sampler: repetition_penalty must be > 0, got %g",
                             (double)penalty);
    if (V <= 0) return hyb_error_set(HYB_ERR_ARG, "sampler: V must be > 0, got %d", V);
    uint8_t *seen = calloc((size_t)V, 1);
    if (!seen) return hyb_error_set(HYB_ERR_NOMEM, "sampler: out of memory");
    int rc = penalise(logits, V, history, n_history, penalty, seen);
    free(seen);
    return rc;
}

/* ---- candidate selection ----------------------------------------------------------------------*/

/* Descending value, ascending index on ties: a total order, so results never depend on qsort. */
static const float *g_cmp_vals; /* set only for the duration of one qsort call */
static int cmp_desc(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = g_cmp_vals[i], y = g_cmp_vals[j];
    if (x > y) return -1;
    if (x < y) return 1;
    return (i > j) - (i < j);
}

static void sort_desc(int32_t *idx, int n, const float *vals) {
    /* qsort has no context argument in C11; keep the global private and short-lived. */
    g_cmp_vals = vals;
    qsort(idx, (size_t)n, sizeof *idx, cmp_desc);
    g_cmp_vals = NULL;
}

/* k-th largest of vals[idx[0..n)] (1 <= k <= n) with a size-k min-heap. */
static float kth_largest(const float *vals, const int32_t *idx, int n, int k, float *heap) {
    int h = 0;
    for (int c = 0; c < n; c++) {
        float v = vals[idx[c]];
        if (h < k) {
            int i = h++;
            heap[i] = v;
            while (i > 0 && heap[(i - 1) / 2] > heap[i]) {
                float t = heap[i];
                heap[i] = heap[(i - 1) / 2];
                heap[(i - 1) / 2] = t;
                i = (i - 1) / 2;
            }
        } else if (v > heap[0]) {
            heap[0] = v;
            int i = 0;
            for (;;) {
                int l = 2 * i + 1, r = l + 1, m = i;
                if (l < h && heap[l] < heap[m]) m = l;
                if (r < h && heap[r] < heap[m]) m = r;
                if (m == i) break;
                float t = heap[i];
                heap[i] = heap[m];
                heap[m] = t;
                i = m;
            }
        }
    }
    return heap[0];
}

/* Fill idx[0..*n_out) with the kept tokens and w[tok] with their normalised probabilities
 * (w, idx: [V] scratch, seen: [V] zeros, left zero). *greedy_tok >= 0 when the choice is
 * deterministic. */
static int prepare_in(const hyb_sampler_params *sp, int V, float *w, int32_t *idx, uint8_t *seen,
                      const float *logits, const int32_t *hist, int n_hist, int *n_out,
                      int32_t *greedy_tok) {
    *n_out = 0;
    *greedy_tok = -1;
    memcpy(w, logits, (size_t)V * sizeof *w);
    HYB_TRY(penalise(w, V, hist, n_hist, sp->repetition_penalty, seen));

    if (sp->temperature <= 0.0f || sp->top_k == 1) {
        int32_t t = hyb_sample_argmax(w, V);
        if (t < 0 || (isinf(w[t]) && w[t] < 0))
            return hyb_error_set(HYB_ERR_ARG, "sampler: all %d logits are NaN or -inf", V);
        *greedy_tok = t;
        return HYB_OK;
    }

    const float inv_t = 1.0f / sp->temperature;
    int n = 0;
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        float v = w[i] * inv_t;
        w[i] = v;
        if (isnan(v) || (isinf(v) && v < 0)) continue;
        idx[n++] = i;
        if (v > mx) mx = v;
    }
    if (n == 0) return hyb_error_set(HYB_ERR_ARG, "sampler: all %d logits are NaN or -inf", V);
    if (isinf(mx)) { /* +inf logits: uniform over them (the limit of the softmax) */
        int m = 0;
        for (int c = 0; c < n; c++)
            if (isinf(w[idx[c]])) idx[m++] = idx[c];
        for (int c = 0; c < m; c++)
            w[idx[c]] = 1.0f / (float)m;
        *n_out = m;
        return HYB_OK;
    }

    if (sp->top_k > 0 && sp->top_k < n) {
        float *heap = malloc((size_t)sp->top_k * sizeof *heap);
        if (!heap) return hyb_error_set(HYB_ERR_NOMEM, "sampler: out of memory");
        float thr = kth_largest(w, idx, n, sp->top_k, heap);
        free(heap);
        int m = 0;
        for (int c = 0; c < n; c++)
            if (w[idx[c]] >= thr) idx[m++] = idx[c];
        n = m;
    }
    const int use_top_p = sp->top_p > 0.0f && sp->top_p < 1.0f;
    if (use_top_p) {
        sort_desc(idx, n, w);
    }

    /* softmax over the kept set (sum in double) */
    double sum = 0.0;
    for (int c = 0; c < n; c++) {
        float e = expf(w[idx[c]] - mx);
        w[idx[c]] = e;
        sum += e;
    }
    for (int c = 0; c < n; c++)
        w[idx[c]] = (float)(w[idx[c]] / sum);

    if (use_top_p) { /* keep token c iff the mass before it (descending order) is < top_p */
        double before = 0.0;
        int m = 0;
        while (m < n && (m == 0 || before < (double)sp->top_p))
            before += w[idx[m++]];
        n = m;
        double kept = 0.0;
        for (int c = 0; c < n; c++)
            kept += w[idx[c]];
        for (int c = 0; c < n; c++)
            w[idx[c]] = (float)(w[idx[c]] / kept);
    }
    *n_out = n;
    return HYB_OK;
}

static int prepare(hyb_sampler *s, const float *logits, const int32_t *hist, int n_hist, int *n_out,
                   int32_t *greedy_tok) {
    return prepare_in(&s->p, s->V, s->work, s->idx, s->seen, logits, hist, n_hist, n_out,
                      greedy_tok);
}

/* Step 5: inverse CDF at u over the kept tokens idx[0..n) in their fixed order (index order, or
 * descending probability with top-p), masses w[idx[c]] summed in double. */
static int32_t draw(const float *w, const int32_t *idx, int n, float uf) {
    double u = (double)uf, acc = 0.0;
    double total = 0.0;
    for (int c = 0; c < n; c++)
        total += w[idx[c]];
    u *= total;
    for (int c = 0; c < n; c++) {
        acc += w[idx[c]];
        if (u < acc) return idx[c];
    }
    return idx[n - 1]; /* u rounded up to the total */
}

int hyb_sampler_greedy(const hyb_sampler_params *p) {
    return p->temperature <= 0.0f || p->top_k == 1;
}

int32_t hyb_sample_with(const hyb_sampler_params *p, const float *logits, int V,
                        const int32_t *history, int n_history, float u) {
    HYB_TRY(check_params(p));
    if (V <= 0) return hyb_error_set(HYB_ERR_ARG, "sampler: V must be > 0, got %d", V);
    float *w = malloc((size_t)V * sizeof *w);
    int32_t *idx = malloc((size_t)V * sizeof *idx);
    uint8_t *seen = calloc((size_t)V, 1);
    int32_t tok;
    if (!w || !idx || !seen) {
        tok = hyb_error_set(HYB_ERR_NOMEM, "sampler: out of memory (V = %d)", V);
    } else {
        int n;
        int32_t g;
        tok = prepare_in(p, V, w, idx, seen, logits, history, n_history, &n, &g);
        if (tok == HYB_OK) tok = g >= 0 ? g : draw(w, idx, n, u);
    }
    free(w);
    free(idx);
    free(seen);
    return tok;
}

int hyb_sampler_probs(hyb_sampler *s, const float *logits, const int32_t *history, int n_history,
                      float *probs) {
    int n;
    int32_t g;
    HYB_TRY(prepare(s, logits, history, n_history, &n, &g));
    memset(probs, 0, (size_t)s->V * sizeof *probs);
    if (g >= 0) {
        probs[g] = 1.0f;
        return HYB_OK;
    }
    for (int c = 0; c < n; c++)
        probs[s->idx[c]] = s->work[s->idx[c]];
    return HYB_OK;
}

int32_t hyb_sampler_sample(hyb_sampler *s, const float *logits, const int32_t *history,
                           int n_history) {
    int n;
    int32_t g;
    int rc = prepare(s, logits, history, n_history, &n, &g);
    if (rc != HYB_OK) return rc;
    if (g >= 0) return g;
    return draw(s->work, s->idx, n, hyb_rng_uniform(&s->rng));
}
