/* The default teacher, SmolLM2-135M-Instruct (GGUF Q4_1), against HF transformers' golden logits
 * (tests/reference/logits_ref.py -> tests/data/teacher/): full-forward logits, the greedy
 * continuation through prefill + decode with the KV cache, and prefill-then-decode == forward.
 * Needs the model file: $HYB_MODEL or ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf
 * (exit 77 = skipped when absent). */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/hf.h"
#include "hyb/sample.h"
#include "hyb/tokenizer.h"

static hyb_model *M;
static cJSON *J;
static char DATA[512];

static float *golden(const char *file, size_t expect_floats) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", DATA, file);
    size_t n = 0;
    float *p = (float *)harness_read_file(path, &n);
    CHECK_MSG(p != NULL && n == expect_floats * sizeof(float), "golden %s: %zu bytes, want %zu",
              path, n, expect_floats * sizeof(float));
    return p;
}

static int32_t *json_ids(const cJSON *arr, int *n) {
    *n = cJSON_GetArraySize(arr);
    int32_t *ids = malloc(sizeof *ids * (size_t)(*n > 0 ? *n : 1));
    for (int i = 0; i < *n; i++)
        ids[i] = (int32_t)cJSON_GetArrayItem(arr, i)->valuedouble;
    return ids;
}

/* max |a - b| / max |b|: the error relative to the logits' scale */
static double rel_err(const float *a, const float *b, long n) {
    double e = 0, s = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > e || d != d) e = d != d ? INFINITY : d;
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return e / (s > 0 ? s : 1);
}

static float *forward(const int32_t *ids, int T) {
    hyb_graph *g = hyb_graph_new();
    hyb_graph_set_grad(g, 0);
    hyb_tensor *lg = hyb_model_forward(M, g, ids, 1, T);
    CHECK_MSG(lg != NULL, "forward: %s", hyb_error());
    float *out = NULL;
    if (lg) {
        out = malloc(sizeof(float) * (size_t)T * M->V);
        memcpy(out, lg->data, sizeof(float) * (size_t)T * M->V);
    }
    hyb_graph_free(g);
    return out;
}

static double worst_logit_err;

static void test_forward_vs_hf(void) {
    const int V = M->V;
    CHECK(V == cJSON_GetObjectItem(J, "vocab_size")->valueint);
    cJSON *ids_all = cJSON_GetObjectItem(J, "ids");
    int np = cJSON_GetArraySize(ids_all);
    float *last = golden("last_logits.bin", (size_t)np * V);
    const int nfull =
        cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(J, "full_logits"), "shape"), 0)
            ->valueint;
    float *full = golden("full_logits.bin", (size_t)nfull * V);
    if (!last || !full) return;
    for (int p = 0; p < np; p++) {
        int T;
        int32_t *ids = json_ids(cJSON_GetArrayItem(ids_all, p), &T);
        double t0 = hyb_time_now();
        float *lg = forward(ids, T);
        double dt = hyb_time_now() - t0;
        if (lg) {
            double e = rel_err(lg + (size_t)(T - 1) * V, last + (size_t)p * V, V);
            printf("  prompt %d (T=%d, %.2f s): last-position max rel err %.3e\n", p, T, dt, e);
            CHECK_MSG(e < 2e-4, "prompt %d: max rel err %.3e", p, e);
            if (e > worst_logit_err) worst_logit_err = e;
            if (p == 0)
                for (int t = 0; t < nfull && t < T; t++) {
                    double et = rel_err(lg + (size_t)t * V, full + (size_t)t * V, V);
                    printf("  prompt 0 position %d: max rel err %.3e\n", t, et);
                    CHECK_MSG(et < 2e-4, "position %d: max rel err %.3e", t, et);
                    if (et > worst_logit_err) worst_logit_err = et;
                }
        }
        free(lg);
        free(ids);
    }
    printf("  worst max rel err vs HF: %.3e\n", worst_logit_err);
    free(last);
    free(full);
}

/* teacher.json's greedy case: its prompt's ids (*np of them) and HF's greedy continuation (*ng). */
static void greedy_case(int32_t **prompt, int *np, int32_t **gen, int *ng) {
    const cJSON *gr = cJSON_GetObjectItem(J, "greedy");
    const int k = cJSON_GetObjectItem(gr, "prompt")->valueint;
    *prompt = json_ids(cJSON_GetArrayItem(cJSON_GetObjectItem(J, "ids"), k), np);
    *gen = json_ids(cJSON_GetObjectItem(gr, "ids"), ng);
}

/* Greedy continuation through prefill + decode (KV cache) == HF's 64 tokens. */
static void test_greedy_decode(void) {
    const int V = M->V;
    int np, ng;
    int32_t *prompt, *want;
    greedy_case(&prompt, &np, &want, &ng);
    hyb_kvstate *s = NULL;
    int rc = hyb_kvstate_new(M, 1, np + ng + 8, &s);
    CHECK_MSG(rc == HYB_OK, "kvstate: %s", hyb_error());
    if (rc != HYB_OK) goto done;
    float *lg = malloc(sizeof(float) * V);
    double t0 = hyb_time_now();
    rc = hyb_model_prefill(M, s, 0, prompt, np, lg);
    double t_prefill = hyb_time_now() - t0;
    CHECK_MSG(rc == HYB_OK, "prefill: %s", hyb_error());
    int32_t got[256];
    int n_ok = 0;
    t0 = hyb_time_now();
    for (int i = 0; i < ng && rc == HYB_OK; i++) {
        got[i] = hyb_sample_argmax(lg, V);
        if (got[i] == want[i] && n_ok == i) n_ok++;
        int32_t seq = 0;
        if (i + 1 < ng) rc = hyb_model_decode(M, s, 1, &seq, &got[i], lg);
        CHECK_MSG(rc == HYB_OK, "decode step %d: %s", i, hyb_error());
    }
    double t_decode = hyb_time_now() - t0;
    printf("  greedy: %d/%d tokens match HF (prefill %d tok %.2f s, decode %.1f tok/s)\n", n_ok, ng,
           np, t_prefill, (ng - 1) / (t_decode > 0 ? t_decode : 1));
    CHECK_MSG(n_ok == ng, "greedy continuation diverges from HF at token %d (got %d, want %d)",
              n_ok, n_ok < ng ? got[n_ok] : -1, n_ok < ng ? want[n_ok] : -1);
    CHECK(s->pos[0] == np + ng - 1);
    free(lg);
done:
    hyb_kvstate_free(s);
    free(prompt);
    free(want);
}

/* Prefill (in two chunks) then decode, position by position == one full forward. */
static void test_prefill_decode_equals_forward(void) {
    const int V = M->V;
    int np, ng;
    int32_t *prompt, *gen;
    greedy_case(&prompt, &np, &gen, &ng); /* gen continues prompt */
    const int T = np + 8, T1 = 5, T2 = np;
    int32_t *seq = malloc(sizeof *seq * T);
    memcpy(seq, prompt, sizeof *seq * np);
    memcpy(seq + np, gen, sizeof *seq * 8);
    float *full = forward(seq, T);
    hyb_kvstate *s = NULL;
    int rc = hyb_kvstate_new_ex(M, 2, T + 4, HYB_KV_F32, &s); /* f32 cache: == forward */
    CHECK_MSG(rc == HYB_OK, "kvstate: %s", hyb_error());
    float *lg = malloc(sizeof(float) * 2 * V);
    if (full && rc == HYB_OK) {
        /* slot 1 holds an unrelated sequence, so batched decode must keep them apart */
        int32_t other[3] = {1, 2, 3};
        CHECK(hyb_model_prefill(M, s, 1, other, 3, NULL) == HYB_OK);
        CHECK(hyb_model_prefill(M, s, 0, seq, T1, lg) == HYB_OK);
        double e = rel_err(lg, full + (size_t)(T1 - 1) * V, V), worst = e;
        CHECK(hyb_model_prefill(M, s, 0, seq + T1, T2 - T1, lg) == HYB_OK);
        e = rel_err(lg, full + (size_t)(T2 - 1) * V, V);
        if (e > worst) worst = e;
        for (int t = T2; t < T; t++) {
            int32_t seqs[2] = {0, 1}, ids[2] = {seq[t], 7};
            rc = hyb_model_decode(M, s, 2, seqs, ids, lg);
            CHECK_MSG(rc == HYB_OK, "decode: %s", hyb_error());
            if (rc != HYB_OK) break;
            e = rel_err(lg, full + (size_t)t * V, V);
            if (e > worst) worst = e;
        }
        printf("  prefill(2 chunks)+decode vs forward: max rel err %.3e\n", worst);
        CHECK_MSG(worst < 1e-5, "prefill/decode vs forward: %.3e", worst);
        /* reset: the same slot replays from scratch */
        hyb_kvstate_reset_seq(s, 0);
        CHECK(s->pos[0] == 0);
        CHECK(hyb_model_prefill(M, s, 0, seq, T2, lg) == HYB_OK);
        e = rel_err(lg, full + (size_t)(T2 - 1) * V, V);
        CHECK_MSG(e < 1e-5, "after reset: %.3e", e);
    }
    free(lg);
    free(full);
    free(seq);
    hyb_kvstate_free(s);
    free(prompt);
    free(gen);
}

static char MODEL_PATH[1024];

/* The GGUF tokenizer gives the ids HF's tokenizer gave for the golden prompts (the inputs above).
 */
static void test_prompt_ids(void) {
    hyb_tokenizer *tok = hyb_tokenizer_load_gguf(MODEL_PATH);
    CHECK_MSG(tok != NULL, "tokenizer: %s", hyb_error());
    if (!tok) return;
    cJSON *prompts = cJSON_GetObjectItem(J, "prompts"), *ids_all = cJSON_GetObjectItem(J, "ids");
    for (int p = 0; p < cJSON_GetArraySize(prompts); p++) {
        const char *text = cJSON_GetArrayItem(prompts, p)->valuestring;
        int n;
        int32_t *want = json_ids(cJSON_GetArrayItem(ids_all, p), &n);
        int32_t *got = NULL;
        size_t ng = 0;
        CHECK(hyb_tokenizer_encode_alloc(tok, text, strlen(text), 0, &got, &ng) == HYB_OK);
        CHECK_MSG(got && (int)ng == n && memcmp(got, want, sizeof *got * (size_t)n) == 0,
                  "prompt %d: token ids differ from HF's", p);
        free(got);
        free(want);
    }
    hyb_tokenizer_free(tok);
}

/* Optional (HYB_HF_DIR, made by tests/reference/export_hf_dir.py): the same weights read from an
 * HF directory by transformers' GGUF path and hyb's safetensors path are bit-identical. */
static void test_hf_dir_matches_gguf(void) {
    const char *dir = getenv("HYB_HF_DIR");
    if (!dir || !*dir) {
        printf("  (HYB_HF_DIR not set: HF-directory comparison skipped)\n");
        return;
    }
    hyb_model *h = NULL;
    int rc = hyb_model_load_hf_dir(dir, &h);
    CHECK_MSG(rc == HYB_OK, "hf dir: %s", hyb_error());
    if (!h) return;
    CHECK(h->n_params == M->n_params && h->map->tie_embeddings == M->map->tie_embeddings);
    long differ = 0;
    for (int i = 0; i < M->n_params; i++) {
        hyb_tensor *a = M->params[i], *b = hyb_model_param(h, a->name);
        CHECK_MSG(b != NULL, "%s missing in the HF directory model", a->name);
        if (b && memcmp(a->data, b->data, hyb_tensor_nbytes(a)) != 0) {
            differ++;
            printf("  %s differs\n", a->name);
        }
    }
    CHECK(differ == 0);
    printf("  HF directory %s: %d tensors, %ld differ from the GGUF load\n", dir, M->n_params,
           differ);
    hyb_model_free(h);
}

int main(void) {
    char *path = MODEL_PATH;
    const char *env = getenv("HYB_MODEL");
    if (env && *env)
        snprintf(path, sizeof MODEL_PATH, "%s", env);
    else
        snprintf(path, sizeof MODEL_PATH, "%s/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("skipped: model file %s not found (set HYB_MODEL or run scripts/setup.sh)\n", path);
        return HARNESS_SKIP;
    }
    fclose(f);
    const char *data = getenv("HYB_TEST_DATA");
    snprintf(DATA, sizeof DATA, "%s/teacher", data && *data ? data : "tests/data");
    char jpath[700];
    snprintf(jpath, sizeof jpath, "%s/teacher.json", DATA);
    char *text = harness_read_file(jpath, NULL);
    if (!text) {
        printf("FAIL: golden file %s missing\n", jpath);
        return 1;
    }
    J = cJSON_Parse(text);
    free(text);
    double t0 = hyb_time_now();
    if (!J || hyb_model_load_gguf(path, &M) != HYB_OK) {
        printf("FAIL: %s\n", J ? hyb_error() : "teacher.json does not parse");
        return 1;
    }
    printf("  loaded %s in %.2f s (%lld parameters)\n", path, hyb_time_now() - t0,
           (long long)hyb_model_n_elements(M));
    RUN(test_prompt_ids);
    RUN(test_forward_vs_hf);
    RUN(test_greedy_decode);
    RUN(test_prefill_decode_equals_forward);
    RUN(test_hf_dir_matches_gguf);
    hyb_model_free(M);
    cJSON_Delete(J);
    return harness_done();
}
