/* tests/model_tokenizer.c: SmolLM2's tokenizer loaded from the model's GGUF metadata equals the
 * tokenizer.json rebuilt by tests/reference/tokenizer_ref.py, and both equal HF's golden ids on
 * the samples. Needs the GGUF: $HYB_MODEL or ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf
 * (skips with exit code 77 when absent). */
#define _GNU_SOURCE /* memmem */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "hyb/common.h"
#include "hyb/tokenizer.h"

static char model_path[4096];
static hyb_tokenizer *tg, *tj;

#define data_path(name) harness_data_file("tokenizer", name) /* tests/data/tokenizer/<name> */

static cJSON *read_json(const char *name) {
    return harness_read_json(data_path(name));
}

static void test_vocab_equal(void) {
    CHECK(hyb_tokenizer_vocab_size(tg) == 49152);
    CHECK(hyb_tokenizer_vocab_size(tg) == hyb_tokenizer_vocab_size(tj));
    CHECK(hyb_tokenizer_bos_id(tg) == 1 && hyb_tokenizer_eos_id(tg) == 2);
    int bad = 0;
    for (int32_t i = 0; i < hyb_tokenizer_vocab_size(tg); i++) {
        size_t la, lb;
        const char *a = hyb_tokenizer_token_to_piece(tg, i, &la);
        const char *b = hyb_tokenizer_token_to_piece(tj, i, &lb);
        bad += !(a && b && la == lb && memcmp(a, b, la) == 0);
        bad += strcmp(hyb_tokenizer_token_text(tg, i), hyb_tokenizer_token_text(tj, i)) != 0;
        int ta = hyb_tokenizer_token_type(tg, i), tb = hyb_tokenizer_token_type(tj, i);
        bad += (ta == HYB_TOKEN_CONTROL) != (tb == HYB_TOKEN_CONTROL);
    }
    CHECK_MSG(bad == 0, "%d token pieces/texts/types differ between GGUF and JSON", bad);
}

static void test_samples(void) {
    cJSON *g = read_json("smollm2_golden.json");
    CHECK(g != NULL);
    if (!g) return;
    const cJSON *e;
    int k = 0, same = 0;
    cJSON_ArrayForEach(e, g) {
        const char *text = cJSON_GetObjectItem(e, "text")->valuestring;
        const cJSON *gold = cJSON_GetObjectItem(e, "ids");
        size_t len = strlen(text);
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        CHECK(hyb_tokenizer_encode_alloc(tg, text, len, 0, &a, &na) == HYB_OK);
        CHECK(hyb_tokenizer_encode_alloc(tj, text, len, 0, &b, &nb) == HYB_OK);
        int eq = na == nb && (size_t)cJSON_GetArraySize(gold) == na;
        for (size_t i = 0; eq && i < na; i++)
            eq = a[i] == b[i] && a[i] == cJSON_GetArrayItem(gold, (int)i)->valueint;
        CHECK_MSG(eq, "sample %d: GGUF / JSON / HF ids differ for \"%.60s\"", k, text);
        same += eq;
        char *out = malloc(len + 1);
        long n = hyb_tokenizer_decode(tg, a, na, 0, out, len + 1);
        CHECK_MSG(n == (long)len && memcmp(out, text, len) == 0,
                  "sample %d: GGUF decode round trip", k);
        free(out), free(a), free(b);
        k++;
    }
    printf("  %d/%d samples: GGUF tokenizer = tokenizer.json = HF golden\n", same, k);
    cJSON_Delete(g);
}

static void test_chat_template_tokens(void) {
    const char *chat = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    int32_t ids[64];
    long n = hyb_tokenizer_encode(tg, chat, strlen(chat), HYB_TOK_ADD_SPECIAL, ids, 64);
    CHECK(n > 4 && ids[0] == 1); /* add_bos_token is false in SmolLM2's GGUF: nothing prepended */
    int n_ctrl = 0;
    for (long i = 0; i < n; i++)
        n_ctrl += hyb_tokenizer_token_type(tg, ids[i]) == HYB_TOKEN_CONTROL;
    CHECK(n_ctrl == 3);
    char out[128];
    long nb = hyb_tokenizer_decode(tg, ids, (size_t)n, HYB_TOK_SKIP_SPECIAL, out, sizeof out);
    CHECK(nb == 18 && memcmp(out, "user\nHi\nassistant\n", 18) == 0);
}

/* Bytes the vocabulary lacks (issue 19): HF drops them (its BPE has no unk_token); they used to
 * become the GGUF's unknown id 0 = <|endoftext|>. Golden: tests/reference/tokenizer_unknown_ref.py.
 * Then invalid UTF-8 (which HF cannot take as text): no control token, and the decode is the
 * input less exactly the bytes the vocab lacks. */
static int count_control(const hyb_tokenizer *t, const int32_t *ids, size_t n) {
    int c = 0;
    for (size_t i = 0; i < n; i++)
        c += hyb_tokenizer_token_type(t, ids[i]) == HYB_TOKEN_CONTROL;
    return c;
}

static void test_unknown_bytes(void) {
    cJSON *g = read_json("smollm2_unknown_golden.json");
    CHECK(g != NULL);
    if (!g) return;
    int missing[256] = {0};
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(g, "missing_bytes")) missing[e->valueint & 255] = 1;
    int k = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(g, "samples")) {
        const char *text = cJSON_GetObjectItem(e, "text")->valuestring;
        const cJSON *gold = cJSON_GetObjectItem(e, "ids");
        const char *hf_dec = cJSON_GetObjectItem(e, "decode")->valuestring;
        size_t len = strlen(text);
        for (int which = 0; which < 2; which++) {
            const hyb_tokenizer *t = which ? tj : tg;
            int32_t *ids = NULL;
            size_t n = 0;
            CHECK(hyb_tokenizer_encode_alloc(t, text, len, 0, &ids, &n) == HYB_OK);
            int eq = (size_t)cJSON_GetArraySize(gold) == n;
            for (size_t i = 0; eq && i < n; i++)
                eq = ids[i] == cJSON_GetArrayItem(gold, (int)i)->valueint;
            CHECK_MSG(eq, "%s: sample %d: ids differ from HF (%zu vs %d ids%s)",
                      which ? "tokenizer.json" : "GGUF", k, n, cJSON_GetArraySize(gold),
                      n ? "" : ", none");
            char *out = malloc(len + 64);
            long nb = hyb_tokenizer_decode(t, ids, n, 0, out, len + 64);
            CHECK(nb >= 0 && nb <= (long)len);
            if (nb >= 0 && !strstr(hf_dec, "\xEF\xBF\xBD")) /* HF decodes partial UTF-8 lossily */
                CHECK_MSG((size_t)nb == strlen(hf_dec) && memcmp(out, hf_dec, (size_t)nb) == 0,
                          "sample %d: decode differs from HF's", k);
            CHECK(nb < 0 || !memmem(out, (size_t)nb, "<|endoftext|>", 13));
            free(out), free(ids);
        }
        k++;
    }
    cJSON_Delete(g);
    /* invalid UTF-8 and every lacking byte alone: no special token, decode = input less them */
    char in[600], want[600];
    size_t n = 0, nw = 0;
    const char *parts[] = {"lone ", "\xC0\xAF", " overlong ", "\xF1", "\xF2\x80", " cut ",
                           "\xFF\xFE", " end\x04\x1d"};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        for (const char *p = parts[i]; *p; p++) in[n++] = *p;
    for (int b = 1; b < 256; b++) in[n++] = (char)b, in[n++] = 'q';
    for (size_t i = 0; i < n; i++)
        if (!missing[(unsigned char)in[i]]) want[nw++] = in[i];
    int32_t *ids = NULL;
    size_t ni = 0;
    CHECK(hyb_tokenizer_encode_alloc(tg, in, n, 0, &ids, &ni) == HYB_OK);
    CHECK_MSG(count_control(tg, ids, ni) == 0, "%d control tokens for ordinary bytes",
              count_control(tg, ids, ni));
    char out[700];
    long nb = hyb_tokenizer_decode(tg, ids, ni, 0, out, sizeof out);
    CHECK_MSG(nb == (long)nw && memcmp(out, want, nw) == 0,
              "decode of invalid UTF-8: %ld bytes, want %zu (the input less the lacking bytes)", nb,
              nw);
    free(ids);
}

/* The GGUF tokenizer written as tokenizer.json + tokenizer_config.json (what a saved student
 * carries) and read back: bos/eos and every sample's ids as HF's. */
static void test_saved_from_gguf(void) {
    char dir[256];
    CHECK(harness_mkdtemp(dir, sizeof dir, "toksave") == 0);
    CHECK_MSG(hyb_tokenizer_save_hf(tg, dir, NULL, 8192) == HYB_OK, "%s", hyb_error());
    hyb_tokenizer *u = hyb_tokenizer_load_json(harness_sub(dir, "tokenizer.json"));
    CHECK_MSG(u != NULL, "%s", hyb_error());
    if (u) {
        CHECK(hyb_tokenizer_bos_id(u) == 1 && hyb_tokenizer_eos_id(u) == 2);
        cJSON *g = read_json("smollm2_golden.json");
        const cJSON *e;
        int k = 0, same = 0;
        cJSON_ArrayForEach(e, g) {
            const char *text = cJSON_GetObjectItem(e, "text")->valuestring;
            const cJSON *gold = cJSON_GetObjectItem(e, "ids");
            int32_t *a = NULL;
            size_t na = 0;
            CHECK(hyb_tokenizer_encode_alloc(u, text, strlen(text), 0, &a, &na) == HYB_OK);
            int eq = (size_t)cJSON_GetArraySize(gold) == na;
            for (size_t i = 0; eq && i < na; i++)
                eq = a[i] == cJSON_GetArrayItem(gold, (int)i)->valueint;
            CHECK_MSG(eq, "sample %d: the saved tokenizer's ids differ from HF for \"%.60s\"", k,
                      text);
            same += eq;
            free(a);
            k++;
        }
        printf("  %d/%d samples: GGUF tokenizer saved as tokenizer.json = HF golden\n", same, k);
        cJSON_Delete(g);
    }
    hyb_tokenizer_free(u);
    harness_rm_rf(dir);
}

int main(void) {
    const char *env = getenv("HYB_MODEL");
    if (env && *env)
        snprintf(model_path, sizeof model_path, "%s", env);
    else
        snprintf(model_path, sizeof model_path,
                 "%s/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
    if (access(model_path, R_OK) != 0) {
        printf("skip: %s not found (set HYB_MODEL)\n", model_path);
        return HARNESS_SKIP;
    }
    double t0 = hyb_time_now();
    tg = hyb_tokenizer_load_gguf(model_path);
    double t1 = hyb_time_now();
    tj = hyb_tokenizer_load_json(data_path("smollm2.tokenizer.json"));
    double t2 = hyb_time_now();
    if (!tg || !tj) {
        fprintf(stderr, "load failed: %s\n", hyb_error());
        return 1;
    }
    printf("  load: GGUF %.1f ms, tokenizer.json %.1f ms\n", (t1 - t0) * 1e3, (t2 - t1) * 1e3);
    RUN(test_vocab_equal);
    RUN(test_samples);
    RUN(test_chat_template_tokens);
    RUN(test_unknown_bytes);
    RUN(test_saved_from_gguf);
    hyb_tokenizer_free(tg);
    hyb_tokenizer_free(tj);
    return harness_done();
}
