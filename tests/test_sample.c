/* Sampler: greedy, repetition penalty (HF formula), temperature / top-k / top-p distributions
 * against independently computed expectations, fixed-seed determinism, argument errors. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/sample.h"

/* softmax in double, independent of the sampler's code path */
static void softmax_d(const float *x, int n, double t, double *p) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++)
        if (x[i] / t > mx) mx = x[i] / t;
    for (int i = 0; i < n; i++)
        s += (p[i] = exp(x[i] / t - mx));
    for (int i = 0; i < n; i++)
        p[i] /= s;
}

static hyb_sampler *mk(int V, float temp, int k, float p, float pen, uint64_t seed) {
    hyb_sampler_params sp = {temp, k, p, pen};
    hyb_sampler *s = NULL;
    int rc = hyb_sampler_new(V, &sp, seed, &s);
    CHECK_MSG(rc == HYB_OK, "hyb_sampler_new: %s", hyb_error());
    return s;
}

static void test_greedy(void) {
    float l[6] = {0.1f, 2.0f, NAN, 2.0f, -1.0f, 1.5f};
    CHECK(hyb_sample_argmax(l, 6) == 1); /* tie 1 vs 3: lowest index, NaN never wins */
    hyb_sampler *s = mk(6, 0.0f, 0, 1.0f, 1.0f, 1);
    for (int i = 0; i < 5; i++)
        CHECK(hyb_sampler_sample(s, l, NULL, 0) == 1);
    float pr[6];
    CHECK(hyb_sampler_probs(s, l, NULL, 0, pr) == HYB_OK);
    CHECK(pr[1] == 1.0f && pr[0] == 0.0f && pr[3] == 0.0f);
    hyb_sampler_free(s);
    /* top_k = 1 is greedy too, whatever the temperature */
    s = mk(6, 5.0f, 1, 1.0f, 1.0f, 2);
    for (int i = 0; i < 20; i++)
        CHECK(hyb_sampler_sample(s, l, NULL, 0) == 1);
    hyb_sampler_free(s);
}

static void test_repetition_penalty_formula(void) {
    float l[5] = {2.0f, -1.0f, 0.5f, 3.0f, -0.25f};
    int32_t h[4] = {0, 1, 1, 4}; /* token 1 twice: penalised once */
    CHECK(hyb_sample_repetition_penalty(l, 5, h, 4, 2.0f) == HYB_OK);
    CHECK_NEAR(l[0], 1.0, 0);
    CHECK_NEAR(l[1], -2.0, 0);
    CHECK_NEAR(l[2], 0.5, 0);
    CHECK_NEAR(l[3], 3.0, 0);
    CHECK_NEAR(l[4], -0.5, 0);
    /* penalty < 1 rewards: 2.0 / 0.5 = 4 */
    float m[2] = {2.0f, -2.0f};
    int32_t h2[2] = {0, 1};
    CHECK(hyb_sample_repetition_penalty(m, 2, h2, 2, 0.5f) == HYB_OK);
    CHECK_NEAR(m[0], 4.0, 0);
    CHECK_NEAR(m[1], -1.0, 0);
    /* in the sampler: greedy choice moves off the repeated token; caller's logits untouched */
    float g[3] = {3.0f, 2.0f, 1.0f};
    hyb_sampler *s = mk(3, 0.0f, 0, 1.0f, 1.6f, 3);
    int32_t hist[1] = {0};
    CHECK(hyb_sampler_sample(s, g, hist, 1) == 1); /* 3/1.6 = 1.875 < 2 */
    CHECK(hyb_sampler_sample(s, g, NULL, 0) == 0);
    CHECK(g[0] == 3.0f);
    hyb_sampler_free(s);
}

/* empirical frequencies of n draws within 5 sigma of the expected probabilities */
static void check_freq(hyb_sampler *s, const float *l, int V, const int32_t *h, int nh,
                       const double *expect, int n) {
    int *cnt = calloc((size_t)V, sizeof *cnt);
    for (int i = 0; i < n; i++) {
        int32_t t = hyb_sampler_sample(s, l, h, nh);
        CHECK(t >= 0 && t < V);
        if (t >= 0 && t < V) cnt[t]++;
    }
    for (int v = 0; v < V; v++) {
        double f = (double)cnt[v] / n, sd = sqrt(expect[v] * (1 - expect[v]) / n);
        if (expect[v] == 0.0)
            CHECK_MSG(cnt[v] == 0, "token %d drawn %d times, prob 0", v, cnt[v]);
        else
            CHECK_MSG(fabs(f - expect[v]) <= 5 * sd + 1e-12, "token %d: freq %.4f vs p %.4f", v, f,
                      expect[v]);
    }
    free(cnt);
}

/* hyb_sampler_probs within 1e-6 of expect; then, when n > 0, n draws follow it (check_freq) */
static void check_dist(hyb_sampler *s, const float *l, int V, const int32_t *h, int nh,
                       const double *expect, int n) {
    float *pr = calloc((size_t)V, sizeof *pr);
    CHECK(hyb_sampler_probs(s, l, h, nh, pr) == HYB_OK);
    for (int v = 0; v < V; v++)
        CHECK_NEAR(pr[v], expect[v], 1e-6);
    free(pr);
    if (n > 0) check_freq(s, l, V, h, nh, expect, n);
}

static void test_temperature_distribution(void) {
    const int V = 8;
    float l[8] = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -2.0f, 1.2f, 0.7f};
    double ex[8];
    const float temps[3] = {0.5f, 1.0f, 2.0f};
    for (int ti = 0; ti < 3; ti++) {
        softmax_d(l, V, temps[ti], ex);
        hyb_sampler *s = mk(V, temps[ti], 0, 1.0f, 1.0f, 100 + ti);
        check_dist(s, l, V, NULL, 0, ex, 40000);
        hyb_sampler_free(s);
    }
}

static void test_top_k(void) {
    const int V = 6;
    float l[6] = {0.0f, 3.0f, 1.0f, 2.0f, 2.0f, -1.0f};
    double ex[6] = {0};
    /* k = 2: the 2nd largest is 2.0, tokens 3 and 4 tie at it: HF keeps both -> {1, 3, 4} */
    float kept[3] = {3.0f, 2.0f, 2.0f};
    double pk[3];
    softmax_d(kept, 3, 1.0, pk);
    ex[1] = pk[0];
    ex[3] = pk[1];
    ex[4] = pk[2];
    hyb_sampler *s = mk(V, 1.0f, 2, 1.0f, 1.0f, 7);
    check_dist(s, l, V, NULL, 0, ex, 20000);
    hyb_sampler_free(s);
    /* k >= V: no filtering */
    s = mk(V, 1.0f, 100, 1.0f, 1.0f, 7);
    softmax_d(l, V, 1.0, ex);
    check_dist(s, l, V, NULL, 0, ex, 0);
    hyb_sampler_free(s);
}

static void test_top_p(void) {
    const int V = 5;
    const double p[5] = {0.05, 0.5, 0.1, 0.2, 0.15}; /* sorted: 1 (.5), 3 (.2), 4 (.15), 2, 0 */
    float l[5];
    for (int v = 0; v < V; v++)
        l[v] = (float)log(p[v]);
    float pr[5];
    struct {
        float top_p;
        int keep[5];
    } cases[] = {
        {0.30f, {0, 1, 0, 0, 0}}, /* mass 0.5 >= 0.3 already */
        {0.60f, {0, 1, 0, 1, 0}}, /* 0.5 < 0.6 -> add 0.2 */
        {0.75f, {0, 1, 0, 1, 1}}, /* 0.7 < 0.75 -> add 0.15 */
        {0.99f, {1, 1, 1, 1, 1}},
    };
    for (int c = 0; c < 4; c++) {
        double mass = 0, ex[5];
        for (int v = 0; v < V; v++)
            if (cases[c].keep[v]) mass += p[v];
        for (int v = 0; v < V; v++)
            ex[v] = cases[c].keep[v] ? p[v] / mass : 0.0;
        hyb_sampler *s = mk(V, 1.0f, 0, cases[c].top_p, 1.0f, 11 + c);
        CHECK(hyb_sampler_probs(s, l, NULL, 0, pr) == HYB_OK);
        double kept_mass = 0;
        for (int v = 0; v < V; v++) {
            CHECK_MSG(fabs(pr[v] - ex[v]) <= 1e-6, "top_p %.2f token %d: %.6f vs %.6f",
                      cases[c].top_p, v, pr[v], ex[v]);
            if (pr[v] > 0) kept_mass += p[v];
        }
        CHECK(kept_mass >= cases[c].top_p); /* the kept set holds at least top_p of the mass */
        check_freq(s, l, V, NULL, 0, ex, 20000);
        hyb_sampler_free(s);
    }
}

static void test_combined_order(void) {
    /* penalty, then temperature, then top-k, then top-p, as HF applies them */
    const int V = 6;
    float l[6] = {4.0f, 3.5f, 1.0f, 0.5f, -1.0f, 3.0f};
    int32_t h[1] = {0};
    float t[6];
    memcpy(t, l, sizeof t);
    t[0] = 4.0f / 2.0f; /* penalised: 2.0 */
    /* T = 0.5 -> scaled 4, 7, 2, 1, -2, 6; top-k 3 keeps {1, 5, 0} */
    float kept[3] = {t[1] / 0.5f, t[5] / 0.5f, t[0] / 0.5f};
    double pk[3];
    softmax_d(kept, 3, 1.0, pk); /* .7054, .2595, .0351 */
    /* top-p 0.9: 0.7054 < 0.9 -> add 0.2595 -> 0.965 >= 0.9: keep {1, 5} */
    double ex[6] = {0};
    ex[1] = pk[0] / (pk[0] + pk[1]);
    ex[5] = pk[1] / (pk[0] + pk[1]);
    hyb_sampler *s = mk(V, 0.5f, 3, 0.9f, 2.0f, 5);
    check_dist(s, l, V, h, 1, ex, 20000);
    hyb_sampler_free(s);
}

static void test_determinism(void) {
    const int V = 1000;
    float *l = malloc(V * sizeof *l);
    hyb_rng r;
    hyb_rng_seed(&r, 99);
    hyb_rng_fill_normal(&r, l, V, 0.0f, 2.0f);
    int32_t a[64], b[64], c[64];
    hyb_sampler *s1 = mk(V, 0.8f, 50, 0.95f, 1.1f, 1234);
    hyb_sampler *s2 = mk(V, 0.8f, 50, 0.95f, 1.1f, 1234);
    hyb_sampler *s3 = mk(V, 0.8f, 50, 0.95f, 1.1f, 4321);
    for (int i = 0; i < 64; i++) {
        a[i] = hyb_sampler_sample(s1, l, a, i);
        b[i] = hyb_sampler_sample(s2, l, b, i);
        c[i] = hyb_sampler_sample(s3, l, c, i);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
    hyb_sampler_reseed(s1, 1234);
    for (int i = 0; i < 64; i++)
        CHECK(hyb_sampler_sample(s1, l, a, i) == a[i]);
    hyb_sampler_free(s1);
    hyb_sampler_free(s2);
    hyb_sampler_free(s3);
    free(l);
}

static void test_errors(void) {
    hyb_sampler *s = NULL;
    hyb_sampler_params bad = {1.0f, -1, 1.0f, 1.0f};
    CHECK(hyb_sampler_new(10, &bad, 1, &s) == HYB_ERR_ARG && s == NULL);
    CHECK(strstr(hyb_error(), "top_k") != NULL);
    bad = (hyb_sampler_params){1.0f, 0, 1.0f, 0.0f};
    CHECK(hyb_sampler_new(10, &bad, 1, &s) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "repetition_penalty") != NULL);
    bad = (hyb_sampler_params){NAN, 0, 1.0f, 1.0f};
    CHECK(hyb_sampler_new(10, &bad, 1, &s) == HYB_ERR_ARG);
    /* stated ranges (issue 19: --temperature -1 and --top-p 2 were accepted) */
    bad = (hyb_sampler_params){-1.0f, 0, 1.0f, 1.0f};
    CHECK(hyb_sampler_new(10, &bad, 1, &s) == HYB_ERR_ARG && s == NULL);
    CHECK_MSG(strstr(hyb_error(), "temperature must be in [0, 100]") != NULL, "%s", hyb_error());
    bad = (hyb_sampler_params){0.7f, 0, 2.0f, 1.0f};
    CHECK(hyb_sampler_new(10, &bad, 1, &s) == HYB_ERR_ARG && s == NULL);
    CHECK_MSG(strstr(hyb_error(), "top_p must be in [0, 1]") != NULL, "%s", hyb_error());
    bad = (hyb_sampler_params){0.7f, 0, 1.0f, 1000.0f};
    CHECK(hyb_sampler_new(10, &bad, 1, &s) == HYB_ERR_ARG && s == NULL);
    CHECK(hyb_sampler_new(0, NULL, 1, &s) == HYB_ERR_ARG);

    s = mk(4, 1.0f, 0, 1.0f, 1.2f, 1);
    float l[4] = {0, 1, 2, 3};
    int32_t h[2] = {1, 7};
    CHECK(hyb_sampler_sample(s, l, h, 2) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "7") != NULL);
    float ninf[4] = {-INFINITY, -INFINITY, NAN, -INFINITY};
    CHECK(hyb_sampler_sample(s, ninf, NULL, 0) == HYB_ERR_ARG);
    /* -inf entries are never drawn */
    float mask[4] = {-INFINITY, 0.0f, -INFINITY, 0.0f};
    for (int i = 0; i < 200; i++) {
        int32_t t = hyb_sampler_sample(s, mask, NULL, 0);
        CHECK(t == 1 || t == 3);
    }
    hyb_sampler_free(s);
}

/* Against transformers' own processors (tests/reference/sample_ref.py). */
static void test_vs_hf_processors(void) {
    const char *dir = getenv("HYB_TEST_DATA");
    char path[600];
    snprintf(path, sizeof path, "%s/sample/hf_probs.json", dir && *dir ? dir : "tests/data");
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    CHECK(fread(text, 1, (size_t)n, f) == (size_t)n);
    text[n] = 0;
    fclose(f);
    cJSON *root = cJSON_Parse(text);
    free(text);
    CHECK(root != NULL);
    if (!root) return;
    const int V = cJSON_GetObjectItem(root, "V")->valueint;
    float *l = malloc(sizeof(float) * V), *pr = malloc(sizeof(float) * V);
    const cJSON *c;
    int ncase = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        hyb_sampler_params p = {(float)cJSON_GetObjectItem(c, "temperature")->valuedouble,
                                cJSON_GetObjectItem(c, "top_k")->valueint,
                                (float)cJSON_GetObjectItem(c, "top_p")->valuedouble,
                                (float)cJSON_GetObjectItem(c, "repetition_penalty")->valuedouble};
        const cJSON *hl = cJSON_GetObjectItem(c, "history");
        int nh = cJSON_GetArraySize(hl);
        int32_t hist[64];
        for (int i = 0; i < nh && i < 64; i++)
            hist[i] = cJSON_GetArrayItem(hl, i)->valueint;
        for (int v = 0; v < V; v++)
            l[v] = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "logits"), v)->valuedouble;
        hyb_sampler *s = NULL;
        CHECK(hyb_sampler_new(V, &p, 1, &s) == HYB_OK);
        CHECK(hyb_sampler_probs(s, l, hist, nh, pr) == HYB_OK);
        double worst = 0;
        int support_differs = 0;
        for (int v = 0; v < V; v++) {
            double want = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "probs"), v)->valuedouble;
            if ((want == 0.0) != (pr[v] == 0.0f)) support_differs++;
            if (fabs(pr[v] - want) > worst) worst = fabs(pr[v] - want);
        }
        CHECK_MSG(support_differs == 0 && worst < 2e-6,
                  "case %d (T %.2f k %d p %.2f rp %.2f): %d tokens kept differently, max |dp| %.3g",
                  ncase, (double)p.temperature, p.top_k, (double)p.top_p,
                  (double)p.repetition_penalty, support_differs, worst);
        hyb_sampler_free(s);
        ncase++;
    }
    CHECK(ncase == 6);
    free(l);
    free(pr);
    cJSON_Delete(root);
}

/* hyb_sample_with (the reference of be->sample) picks hyb_sampler_sample's token when given the
 * uniform the sampler's RNG yields, and the RNG is drawn only when the choice is not greedy */
static void test_sample_with_contract(void) {
    enum { V = 500 };
    float lg[V];
    int32_t hist[20];
    static const hyb_sampler_params ps[] = {{0.0f, 0, 1.0f, 1.0f}, {0.8f, 0, 1.0f, 1.2f},
                                            {1.0f, 1, 1.0f, 1.0f}, {1.1f, 20, 1.0f, 1.0f},
                                            {0.9f, 0, 0.7f, 1.1f}, {1.3f, 30, 0.9f, 0.8f}};
    hyb_rng data;
    hyb_rng_seed(&data, 3);
    int same = 0, total = 0;
    for (size_t c = 0; c < sizeof ps / sizeof ps[0]; c++) {
        hyb_sampler *s = NULL;
        CHECK(hyb_sampler_new(V, &ps[c], 77 + c, &s) == HYB_OK);
        if (!s) return;
        for (int rep = 0; rep < 50; rep++) {
            for (int i = 0; i < V; i++)
                lg[i] = 4.0f * (hyb_rng_uniform(&data) - 0.5f);
            for (int i = 0; i < 20; i++)
                hist[i] = (int32_t)(hyb_rng_uniform(&data) * 100);
            hyb_rng before = s->rng, mine = s->rng;
            const float u = hyb_sampler_greedy(&ps[c]) ? 0.0f : hyb_rng_uniform(&mine);
            const int32_t ref = hyb_sampler_sample(s, lg, hist, 20);
            const int32_t got = hyb_sample_with(&ps[c], lg, V, hist, 20, u);
            CHECK(memcmp(&s->rng, &mine, sizeof mine) == 0); /* the same draws were consumed */
            CHECK(hyb_sampler_greedy(&ps[c]) == (memcmp(&before, &s->rng, sizeof before) == 0));
            same += ref == got;
            total++;
        }
        hyb_sampler_free(s);
    }
    CHECK_MSG(same == total, "%d of %d tokens differ", total - same, total);
}

int main(void) {
    RUN(test_greedy);
    RUN(test_repetition_penalty_formula);
    RUN(test_temperature_distribution);
    RUN(test_top_k);
    RUN(test_top_p);
    RUN(test_combined_order);
    RUN(test_determinism);
    RUN(test_errors);
    RUN(test_vs_hf_processors);
    RUN(test_sample_with_contract);
    return harness_done();
}
