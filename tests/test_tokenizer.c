/* tests/test_tokenizer.c: the BPE tokenizer against HF `tokenizers` golden outputs
 * (tests/reference/tokenizer_ref.py): SmolLM2's byte-level tokenizer (Digits + ByteLevel),
 * the same vocab with the plain GPT-2 regex, small SentencePiece-style tokenizers with byte
 * fallback (llama-2 Prepend/Replace normalizer, Metaspace with and without split), a small
 * llama-3-regex tokenizer; the in-memory spec API; malformed tokenizer.json files; threads; speed.
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/common.h"
#include "hyb/gguf.h"
#include "hyb/tokenizer.h"

#define data_path(name) harness_data_file("tokenizer", name) /* tests/data/tokenizer/<name> */

static cJSON *read_json(const char *name) {
    return harness_read_json(data_path(name));
}

/* Compare encode(text) with the golden array `key`; returns 1 when equal. */
static int ids_equal(const int32_t *ids, long n, const cJSON *gold) {
    if (n != cJSON_GetArraySize(gold)) return 0;
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, gold) if (ids[i++] != v->valueint) return 0;
    return 1;
}

static void print_ids(const char *what, const int32_t *ids, long n) {
    fprintf(stderr, "  %s (%ld):", what, n);
    for (long i = 0; i < n && i < 40; i++)
        fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

static int has_replacement_char(const char *s) {
    return strstr(s, "\xEF\xBF\xBD") != NULL;
}

/* Check one tokenizer against a golden file: ids, ids with specials, decode (raw text equality
 * when `roundtrip`), decode skipping specials. `key` picks the golden ids ("ids" or "ids_gpt2"). */
static void check_golden(const hyb_tokenizer *tok, const char *golden, const char *key,
                         int roundtrip, int check_special) {
    cJSON *g = read_json(golden);
    CHECK_MSG(g != NULL, "cannot read %s", golden);
    if (!g) return;
    const cJSON *e;
    int k = 0, n_ok = 0, n_dec = 0;
    cJSON_ArrayForEach(e, g) {
        const char *text = cJSON_GetObjectItem(e, "text")->valuestring;
        const cJSON *gold = cJSON_GetObjectItem(e, key);
        size_t len = strlen(text);
        size_t cap = hyb_tokenizer_max_tokens(tok, len);
        int32_t *ids = malloc(cap * sizeof *ids);
        long n = hyb_tokenizer_encode(tok, text, len, 0, ids, cap);
        CHECK_MSG(n >= 0 && (size_t)n <= cap, "%s #%d: encode rc %ld: %s", golden, k, n,
                  hyb_error());
        if (n < 0) {
            free(ids);
            k++;
            continue;
        }
        int eq = ids_equal(ids, n, gold);
        CHECK_MSG(eq, "%s #%d (%s): ids differ from HF for \"%.60s\"", golden, k, key, text);
        if (!eq) {
            print_ids("hyb", ids, n);
            char *gs = cJSON_PrintUnformatted(gold);
            fprintf(stderr, "  HF : %.300s\n", gs);
            free(gs);
        }
        n_ok += eq;
        if (check_special) {
            int32_t *ids2 = malloc((cap + 8) * sizeof *ids2);
            long n2 = hyb_tokenizer_encode(tok, text, len, HYB_TOK_ADD_SPECIAL, ids2, cap + 8);
            CHECK_MSG(ids_equal(ids2, n2, cJSON_GetObjectItem(e, "ids_special")),
                      "%s #%d: ids with add_special differ", golden, k);
            free(ids2);
        }
        /* decode */
        const char *hfdec = cJSON_GetObjectItem(e, "decode")->valuestring;
        const char *hfskip = cJSON_GetObjectItem(e, "decode_skip")->valuestring;
        long need = hyb_tokenizer_decode(tok, ids, (size_t)n, 0, NULL, 0); /* size query */
        size_t ocap = need > 0 ? (size_t)need : 1;
        char *out = malloc(ocap);
        long nb = hyb_tokenizer_decode(tok, ids, (size_t)n, 0, out, ocap);
        CHECK(nb == need);
        CHECK_MSG(nb >= 0, "%s #%d: decode failed: %s", golden, k, hyb_error());
        if (nb >= 0) {
            if (roundtrip)
                CHECK_MSG((size_t)nb == len && memcmp(out, text, len) == 0,
                          "%s #%d: decode(encode(x)) != x: \"%.*s\"", golden, k, (int)nb, out);
            if (!has_replacement_char(hfdec)) {
                n_dec++;
                CHECK_MSG((size_t)nb == strlen(hfdec) && memcmp(out, hfdec, (size_t)nb) == 0,
                          "%s #%d: decode \"%.*s\" != HF \"%s\"", golden, k, (int)nb, out, hfdec);
            }
        }
        nb = hyb_tokenizer_decode(tok, ids, (size_t)n, HYB_TOK_SKIP_SPECIAL, out, ocap);
        if (nb >= 0 && !has_replacement_char(hfskip))
            CHECK_MSG((size_t)nb == strlen(hfskip) && memcmp(out, hfskip, (size_t)nb) == 0,
                      "%s #%d: decode(skip special) \"%.*s\" != HF \"%s\"", golden, k, (int)nb, out,
                      hfskip);
        free(out);
        free(ids);
        k++;
    }
    printf("  %s [%s]: %d/%d samples identical to HF, %d decodes compared\n", golden, key, n_ok, k,
           n_dec);
    cJSON_Delete(g);
}

/* t written with hyb_tokenizer_save_hf and read back (tokenizer.json + tokenizer_config.json):
 * the copy must tokenize exactly as t, so each golden check runs on it too. NULL on failure. */
static hyb_tokenizer *saved_again(const hyb_tokenizer *t) {
    char dir[256];
    CHECK(harness_mkdtemp(dir, sizeof dir, "toksave") == 0);
    int rc = hyb_tokenizer_save_hf(t, dir, "{{ messages }}", 2048);
    CHECK_MSG(rc == HYB_OK, "save_hf: %s", hyb_error());
    hyb_tokenizer *u = NULL;
    if (rc == HYB_OK) {
        u = hyb_tokenizer_load_json(harness_sub(dir, "tokenizer.json"));
        CHECK_MSG(u != NULL, "reload of the saved tokenizer: %s", hyb_error());
    }
    if (u) {
        CHECK(hyb_tokenizer_vocab_size(u) == hyb_tokenizer_vocab_size(t));
        CHECK_MSG(hyb_tokenizer_bos_id(u) == hyb_tokenizer_bos_id(t) &&
                      hyb_tokenizer_eos_id(u) == hyb_tokenizer_eos_id(t),
                  "saved bos/eos %d/%d, want %d/%d", hyb_tokenizer_bos_id(u),
                  hyb_tokenizer_eos_id(u), hyb_tokenizer_bos_id(t), hyb_tokenizer_eos_id(t));
        int bad = 0;
        for (int32_t i = 0; i < hyb_tokenizer_vocab_size(t); i++) {
            size_t la, lb;
            const char *a = hyb_tokenizer_token_to_piece(t, i, &la);
            const char *b = hyb_tokenizer_token_to_piece(u, i, &lb);
            bad += !(a && b && la == lb && memcmp(a, b, la) == 0);
            bad += (hyb_tokenizer_token_type(t, i) == HYB_TOKEN_CONTROL) !=
                   (hyb_tokenizer_token_type(u, i) == HYB_TOKEN_CONTROL);
        }
        CHECK_MSG(bad == 0, "%d token pieces/types differ after save + load", bad);
        printf("  saved as tokenizer.json and read back:\n");
    }
    harness_rm_rf(dir);
    return u;
}

/* check_golden on t, then on t saved and read back */
static void check_golden_saved(const hyb_tokenizer *t, const char *golden, const char *key,
                               int roundtrip, int check_special) {
    check_golden(t, golden, key, roundtrip, check_special);
    hyb_tokenizer *u = saved_again(t);
    if (u) check_golden(u, golden, key, roundtrip, check_special);
    hyb_tokenizer_free(u);
}

static hyb_tokenizer *load(const char *name) {
    hyb_tokenizer *t = hyb_tokenizer_load_json(data_path(name));
    CHECK_MSG(t != NULL, "load %s: %s", name, hyb_error());
    return t;
}

static void test_smollm2_json(void) {
    hyb_tokenizer *t = load("smollm2.tokenizer.json");
    if (!t) return;
    CHECK(hyb_tokenizer_vocab_size(t) == 49152);
    CHECK(hyb_tokenizer_token_id(t, "<|im_start|>") == 1);
    CHECK(hyb_tokenizer_token_id(t, "<|im_end|>") == 2);
    CHECK(hyb_tokenizer_token_type(t, 1) == HYB_TOKEN_CONTROL);
    CHECK(hyb_tokenizer_token_type(t, 100) == HYB_TOKEN_NORMAL);
    size_t pl;
    const char *p = hyb_tokenizer_token_to_piece(t, hyb_tokenizer_token_id(t, "\xC4\xA0the"), &pl);
    CHECK(p && pl == 4 && memcmp(p, " the", 4) == 0);
    CHECK(hyb_tokenizer_token_to_piece(t, 49152, &pl) == NULL);
    check_golden_saved(t, "smollm2_golden.json", "ids", 1, 1);
    CHECK(hyb_tokenizer_eos_id(t) == 0); /* guessed from "<|endoftext|>": no template */
    CHECK(hyb_tokenizer_set_special_ids(t, 1, 2) == HYB_OK);
    CHECK(hyb_tokenizer_bos_id(t) == 1 && hyb_tokenizer_eos_id(t) == 2);
    CHECK(hyb_tokenizer_set_special_ids(t, 1, 49152) == HYB_ERR_ARG);
    hyb_tokenizer_free(t);
}

/* Build a spec from a tokenizer.json's vocab and merges (ids in order). */
typedef struct {
    hyb_tokenizer_spec spec;
    char **vocab, **merges;
    int32_t *types;
} spec_holder;

static int spec_from_json(const char *name, spec_holder *h) {
    memset(h, 0, sizeof *h);
    cJSON *j = read_json(name);
    if (!j) return 0;
    cJSON *model = cJSON_GetObjectItem(j, "model");
    cJSON *vocab = cJSON_GetObjectItem(model, "vocab"),
          *merges = cJSON_GetObjectItem(model, "merges");
    int nv = cJSON_GetArraySize(vocab), nm = cJSON_GetArraySize(merges);
    h->vocab = calloc((size_t)nv, sizeof(char *));
    h->merges = calloc((size_t)nm, sizeof(char *));
    h->types = calloc((size_t)nv, sizeof(int32_t));
    cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (it->valueint < nv) h->vocab[it->valueint] = strdup(it->string);
    }
    for (int i = 0; i < nv; i++)
        h->types[i] = HYB_TOKEN_NORMAL;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, "added_tokens")) {
        int id = cJSON_GetObjectItem(it, "id")->valueint;
        if (id < nv) h->types[id] = HYB_TOKEN_CONTROL;
    }
    int i = 0;
    cJSON_ArrayForEach(it, merges) {
        const char *a = cJSON_GetArrayItem(it, 0)->valuestring,
                   *b = cJSON_GetArrayItem(it, 1)->valuestring;
        h->merges[i] = malloc(strlen(a) + strlen(b) + 2);
        sprintf(h->merges[i++], "%s %s", a, b);
    }
    h->spec.vocab = (const char *const *)h->vocab;
    h->spec.n_vocab = nv;
    h->spec.merges = (const char *const *)h->merges;
    h->spec.n_merges = nm;
    h->spec.token_types = h->types;
    h->spec.bos_id = h->spec.eos_id = h->spec.unk_id = h->spec.pad_id = -1;
    cJSON_Delete(j);
    return 1;
}

static void spec_free(spec_holder *h) {
    for (int i = 0; i < h->spec.n_vocab; i++)
        free(h->vocab[i]);
    for (int i = 0; i < h->spec.n_merges; i++)
        free(h->merges[i]);
    free(h->vocab), free(h->merges), free(h->types);
}

static void test_smollm2_spec(void) {
    spec_holder h;
    CHECK(spec_from_json("smollm2.tokenizer.json", &h));
    h.spec.model = HYB_TOK_BYTE_LEVEL;
    h.spec.pretok = HYB_PRETOK_SMOLLM;
    h.spec.bos_id = 1, h.spec.eos_id = 2;
    hyb_tokenizer *t = hyb_tokenizer_new_bpe(&h.spec);
    CHECK_MSG(t != NULL, "new_bpe: %s", hyb_error());
    if (t) check_golden_saved(t, "smollm2_golden.json", "ids", 1, 0);
    hyb_tokenizer_free(t);
    /* same vocab, plain GPT-2 regex: the tokenizer transformers builds from the GGUF */
    h.spec.pretok = HYB_PRETOK_GPT2;
    t = hyb_tokenizer_new_bpe(&h.spec);
    CHECK_MSG(t != NULL, "new_bpe: %s", hyb_error());
    if (t) check_golden_saved(t, "smollm2_golden.json", "ids_gpt2", 1, 0);
    hyb_tokenizer_free(t);
    spec_free(&h);
}

static void test_spm_json(void) {
    static const char *const layouts[] = {"spm_llama2", "spm_metaspace", "spm_metaspace_split"};
    for (int i = 0; i < 3; i++) {
        char a[128], b[128];
        snprintf(a, sizeof a, "%s.tokenizer.json", layouts[i]);
        snprintf(b, sizeof b, "%s_golden.json", layouts[i]);
        hyb_tokenizer *t = load(a);
        if (!t) continue;
        CHECK(hyb_tokenizer_bos_id(t) == 1);
        CHECK(hyb_tokenizer_unk_id(t) == 0);
        check_golden_saved(t, b, "ids", 0, 1);
        hyb_tokenizer_free(t);
    }
}

static void test_spm_spec(void) {
    spec_holder h;
    CHECK(spec_from_json("spm_llama2.tokenizer.json", &h));
    h.spec.model = HYB_TOK_SPM;
    h.spec.pretok = HYB_PRETOK_NONE;
    h.spec.byte_fallback = 1;
    h.spec.add_prefix_space = 1;
    h.spec.unk_id = 0, h.spec.bos_id = 1, h.spec.eos_id = 2;
    h.spec.add_bos = 1;
    for (int b = 0; b < 256; b++)
        h.types[3 + b] = HYB_TOKEN_BYTE;
    hyb_tokenizer *t = hyb_tokenizer_new_bpe(&h.spec);
    CHECK_MSG(t != NULL, "new_bpe: %s", hyb_error());
    if (t) {
        check_golden_saved(t, "spm_llama2_golden.json", "ids", 0, 1);
        CHECK(hyb_tokenizer_max_tokens(t, 10) == 6 * 10 + 4 + 1);
        size_t pl;
        const char *p = hyb_tokenizer_token_to_piece(t, 3 + 0xE4, &pl);
        CHECK(p && pl == 1 && (unsigned char)p[0] == 0xE4);
    }
    hyb_tokenizer_free(t);
    spec_free(&h);
}

/* A regex pre-tokenizer model from its tokenizer.json, then again from a hand-made spec with the
 * given pre-tokenizer: both match the golden ids. */
static void check_regex(const char *json, const char *golden, hyb_pretok_kind pretok) {
    hyb_tokenizer *t = load(json);
    if (t) check_golden_saved(t, golden, "ids", 1, 1);
    hyb_tokenizer_free(t);
    spec_holder h;
    CHECK(spec_from_json(json, &h));
    h.spec.model = HYB_TOK_BYTE_LEVEL;
    h.spec.pretok = pretok;
    h.spec.ignore_merges = 1;
    h.spec.bos_id = 0, h.spec.add_bos = 1;
    t = hyb_tokenizer_new_bpe(&h.spec);
    CHECK_MSG(t != NULL, "new_bpe: %s", hyb_error());
    if (t) check_golden_saved(t, golden, "ids", 1, 1);
    hyb_tokenizer_free(t);
    spec_free(&h);
}

static void test_llama3_regex(void) {
    check_regex("llama3_tiny.tokenizer.json", "llama3_tiny_golden.json", HYB_PRETOK_LLAMA3);
}

static void test_tekken_regex(void) {
    check_regex("tekken_tiny.tokenizer.json", "tekken_tiny_golden.json", HYB_PRETOK_TEKKEN);
}

/* Hand-checked BPE: merges apply lowest rank first, leftmost first on ties. */
static void test_bpe_by_hand(void) {
    const char *vocab[] = {"a", "b", "c", "aa", "ab", "bc", "abc", "<s>", "Ġ", "Ġa"};
    const char *merges[] = {"a a", "b c", "a b", "a bc", "Ġ a"};
    hyb_tokenizer_spec s = {0};
    s.model = HYB_TOK_BYTE_LEVEL, s.pretok = HYB_PRETOK_GPT2;
    s.vocab = vocab, s.n_vocab = 10, s.merges = merges, s.n_merges = 5;
    int32_t types[10] = {1, 1, 1, 1, 1, 1, 1, 3, 1, 1};
    s.token_types = types;
    s.bos_id = 7, s.eos_id = s.unk_id = s.pad_id = -1, s.add_bos = 1;
    hyb_tokenizer *t = hyb_tokenizer_new_bpe(&s);
    CHECK_MSG(t != NULL, "%s", hyb_error());
    if (!t) return;
    int32_t ids[16];
    long n = hyb_tokenizer_encode(t, "aaa", 3, 0, ids, 16); /* (aa)(a) */
    CHECK(n == 2 && ids[0] == 3 && ids[1] == 0);
    n = hyb_tokenizer_encode(t, "abc", 3, 0, ids, 16); /* b c (rank 1) before a b (rank 2) */
    CHECK(n == 1 && ids[0] == 6);
    n = hyb_tokenizer_encode(t, "aabc<s> a", 9, HYB_TOK_ADD_SPECIAL, ids, 16);
    CHECK(n == 5 && ids[0] == 7 && ids[1] == 3 && ids[2] == 5 && ids[3] == 7 && ids[4] == 9);
    n = hyb_tokenizer_encode(t, "a<s>", 4, HYB_TOK_NO_PARSE_SPECIAL, ids, 16);
    CHECK(n == 1 && ids[0] == 0); /* '<', 's', '>' have no token and are dropped, as in HF */
    n = hyb_tokenizer_encode(t, "a<s>", 4, 0, ids, 16);
    CHECK(n == 2 && ids[0] == 0 && ids[1] == 7);
    CHECK(hyb_tokenizer_max_tokens(t, 10) == 12); /* 10 bytes + 1 + bos */
    /* a too-small buffer reports the size needed */
    n = hyb_tokenizer_encode(t, "a a a a", 7, 0, ids, 2);
    CHECK(n == 4);
    char out[16];
    int32_t bad[2] = {0, 10};
    CHECK(hyb_tokenizer_decode(t, bad, 2, 0, out, sizeof out) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "10") != NULL);
    int32_t good[3] = {6, 9, 7};
    long nb = hyb_tokenizer_decode(t, good, 3, 0, out, sizeof out);
    CHECK(nb == 8 && memcmp(out, "abc a<s>", 8) == 0);
    nb = hyb_tokenizer_decode(t, good, 3, HYB_TOK_SKIP_SPECIAL, out, 2); /* truncated */
    CHECK(nb == 5 && memcmp(out, "ab", 2) == 0);
    hyb_tokenizer_free(t);
    /* a merge naming an unknown token */
    const char *bad_merges[] = {"a zz"};
    s.merges = bad_merges, s.n_merges = 1;
    CHECK(hyb_tokenizer_new_bpe(&s) == NULL);
    CHECK(strstr(hyb_error(), "zz") != NULL);
}

static void expect_load_error(const char *json, const char *needle) {
    hyb_tokenizer *t = hyb_tokenizer_load_json_mem(json, strlen(json), "bad.json");
    CHECK_MSG(t == NULL, "malformed tokenizer.json accepted: %.80s", json);
    hyb_tokenizer_free(t);
    CHECK_MSG(strstr(hyb_error(), needle) != NULL, "error \"%s\" lacks \"%s\"", hyb_error(),
              needle);
}

static void test_malformed(void) {
    expect_load_error("{\"model\": {\"vocab\": {\"a\": 0,}", "bad.json:1:");
    expect_load_error("{\n  \"model\": [1, 2,\n  }", "bad.json:3:");
    expect_load_error("{\"version\": \"1.0\"}", "no \"model\"");
    expect_load_error("[]", "not an object");
    expect_load_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "WordPiece");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2},"
                      " \"merges\": [\"a c\"]}}",
                      "unknown token \"c\"");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1},"
                      " \"merges\": [[\"a\", \"b\"]]}}",
                      "not in the vocab");
    expect_load_error(
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"ab\"]}}",
        "merges[0]");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}",
                      "model.vocab");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                      " \"pre_tokenizer\": {\"type\": \"Whitespace\"}}",
                      "unsupported pre-tokenizer type \"Whitespace\"");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                      " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": "
                      "[{\"type\": \"Digits\"}, {\"type\": \"UnicodeScripts\"}]}}",
                      "UnicodeScripts");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                      " \"normalizer\": {\"type\": \"NFKC\"}}",
                      "NFKC");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                      " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"},"
                      " \"behavior\": \"Isolated\"}}",
                      "does not compile");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [],"
                      " \"unk_token\": \"<unk>\"}}",
                      "unk_token");
    /* ids must be integers (3.5 used to be read as 3); a NUL in a key is named with its place */
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 3.5}, "
                      "\"merges\": []}}",
                      "model.vocab[\"b\"]");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                      " \"added_tokens\": [{\"id\": 1.5, \"content\": \"<s>\"}]}",
                      "valid id");
    expect_load_error("{\"model\": {\"type\": \"BPE\",\n \"vocab\": {\"a\": 0, \"x\\u0000y\": 1}, "
                      "\"merges\": []}}",
                      "bad.json:2:22: a string holds \\u0000 (a NUL byte)");
    {   /* an escaped backslash before u0000 is not a NUL */
        const char *ok = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"\\\\u0000\": 1}, "
                         "\"merges\": []}}";
        hyb_tokenizer *t = hyb_tokenizer_load_json_mem(ok, strlen(ok), "ok.json");
        CHECK_MSG(t != NULL, "%s", hyb_error());
        hyb_tokenizer_free(t);
    }
    CHECK(hyb_tokenizer_load_json("/nonexistent/tokenizer.json") == NULL);
    CHECK(strstr(hyb_error(), "/nonexistent/tokenizer.json") != NULL);
    /* every truncation of a real file fails cleanly (or loads, when the cut is harmless) */
    size_t len;
    char *s = harness_read_file(data_path("spm_llama2.tokenizer.json"), &len);
    CHECK(s != NULL);
    if (!s) return;
    int failures = 0;
    for (size_t cut = 0; cut < len; cut += 997) {
        hyb_tokenizer *t = hyb_tokenizer_load_json_mem(s, cut, "cut.json");
        if (!t) failures++;
        hyb_tokenizer_free(t);
    }
    CHECK(failures > 0);
    free(s);
    expect_load_error(
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 99999999}, \"merges\": []}}",
        "far beyond");
}

/* Random mutations of a real tokenizer.json: each either loads (and then encodes and decodes a
 * sample) or fails with a message; never a crash (run under ASan/UBSan in the sanitizer build). */
static void test_mutations(void) {
    size_t len;
    char *orig = harness_read_file(data_path("spm_metaspace_split.tokenizer.json"), &len);
    CHECK(orig != NULL);
    if (!orig) return;
    char *s = malloc(len + 64);
    unsigned seed = 99;
    static const char alphabet[] = "{}[]\",:0123456789ab \\-.eE\xE2\x96\x81<>";
    int loaded = 0, failed = 0, silent = 0;
    for (int it = 0; it < 150; it++) {
        memcpy(s, orig, len);
        size_t n = len;
        int muts = 1 + it % 4;
        for (int m = 0; m < muts; m++) {
            seed = seed * 1103515245u + 12345u;
            size_t pos = (seed >> 8) % n;
            seed = seed * 1103515245u + 12345u;
            switch ((seed >> 16) % 3) {
            case 0:
                s[pos] = alphabet[(seed >> 4) % (sizeof alphabet - 1)];
                break;
            case 1:
                memmove(s + pos, s + pos + 1, n - pos - 1), n--;
                break; /* delete */
            default:
                memmove(s + pos + 1, s + pos, n - pos), n++;
                s[pos] = alphabet[(seed >> 4) % (sizeof alphabet - 1)];
            }
        }
        hyb_error_clear();
        hyb_tokenizer *t = hyb_tokenizer_load_json_mem(s, n, "mutated.json");
        if (t) {
            loaded++;
            int32_t ids[256];
            const char *text = "Hello wörld 123 <s> 中文 \xF0\x9F\x98\x80";
            long k = hyb_tokenizer_encode(t, text, strlen(text), HYB_TOK_ADD_SPECIAL, ids, 256);
            char out[1024];
            if (k >= 0 && k <= 256) hyb_tokenizer_decode(t, ids, (size_t)k, 0, out, sizeof out);
            hyb_tokenizer_free(t);
        } else {
            failed++;
            silent += hyb_error()[0] == 0;
        }
    }
    printf("  mutated tokenizer.json: %d loaded, %d rejected\n", loaded, failed);
    CHECK(failed > 0 && silent == 0);
    free(s);
    free(orig);
}

/* ---- a tiny GGUF writer, to test loading from GGUF metadata without the model ------------- */
typedef struct {
    unsigned char *b;
    size_t n, cap;
    uint64_t n_kv;
} gbuf;

static void gput(gbuf *g, const void *d, size_t n) {
    if (g->n + n > g->cap) {
        g->cap = (g->n + n) * 2 + 256;
        g->b = realloc(g->b, g->cap);
    }
    memcpy(g->b + g->n, d, n);
    g->n += n;
}
static void gu32(gbuf *g, uint32_t v) {
    gput(g, &v, 4);
} /* little-endian host */
static void gu64(gbuf *g, uint64_t v) {
    gput(g, &v, 8);
}
static void gstr(gbuf *g, const char *s) {
    gu64(g, strlen(s));
    gput(g, s, strlen(s));
}
static void gkey(gbuf *g, const char *k, uint32_t type) {
    gstr(g, k);
    gu32(g, type);
    g->n_kv++;
}
static void kv_str(gbuf *g, const char *k, const char *v) {
    gkey(g, k, HYB_GGUF_STRING), gstr(g, v);
}
static void kv_u32(gbuf *g, const char *k, uint32_t v) {
    gkey(g, k, HYB_GGUF_U32), gu32(g, v);
}
static void kv_strs(gbuf *g, const char *k, const char *const *v, int n) {
    gkey(g, k, HYB_GGUF_ARRAY);
    gu32(g, HYB_GGUF_STRING), gu64(g, (uint64_t)n);
    for (int i = 0; i < n; i++)
        gstr(g, v[i]);
}
static void kv_i32s(gbuf *g, const char *k, const int32_t *v, int n) {
    gkey(g, k, HYB_GGUF_ARRAY);
    gu32(g, HYB_GGUF_I32), gu64(g, (uint64_t)n), gput(g, v, 4 * (size_t)n);
}
static void kv_f32s(gbuf *g, const char *k, const float *v, int n) {
    gkey(g, k, HYB_GGUF_ARRAY);
    gu32(g, HYB_GGUF_F32), gu64(g, (uint64_t)n), gput(g, v, 4 * (size_t)n);
}
/* The finished image: header + kvs + padding to 32. Caller frees. */
static unsigned char *gfinish(gbuf *g, size_t *size) {
    gbuf h = {0};
    gput(&h, "GGUF", 4), gu32(&h, 3), gu64(&h, 0), gu64(&h, g->n_kv);
    gput(&h, g->b, g->n);
    while (h.n % 32)
        gput(&h, "\0", 1);
    free(g->b);
    *size = h.n;
    return h.b;
}

static hyb_tokenizer *tok_from_image(unsigned char *img, size_t size) {
    hyb_gguf *gg = NULL;
    hyb_tokenizer *t = NULL;
    if (hyb_gguf_open_memory(img, size, "mem.gguf", &gg) == HYB_OK) t = hyb_tokenizer_from_gguf(gg);
    hyb_gguf_close(gg);
    return t;
}

/* A SentencePiece-style ("llama", scores, no merges) GGUF tokenizer of n tokens, bos 1, eos 2,
 * unknown 0; *img is its GGUF image, which the caller frees after the tokenizer. */
static hyb_tokenizer *llama_scores_tok(const char *const *toks, const int32_t *types,
                                       const float *scores, int n, unsigned char **img) {
    gbuf g = {0};
    kv_str(&g, "tokenizer.ggml.model", "llama");
    kv_strs(&g, "tokenizer.ggml.tokens", toks, n);
    kv_i32s(&g, "tokenizer.ggml.token_type", types, n);
    kv_f32s(&g, "tokenizer.ggml.scores", scores, n);
    kv_u32(&g, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(&g, "tokenizer.ggml.eos_token_id", 2);
    kv_u32(&g, "tokenizer.ggml.unknown_token_id", 0);
    size_t size;
    *img = gfinish(&g, &size);
    return tok_from_image(*img, size);
}

static void test_gguf_llama_scores(void) {
    /* SentencePiece-style, no merges: merge priority comes from the merged token's score */
    const char *toks[] = {"<unk>",
                          "<s>",
                          "</s>",
                          "<0x21>",
                          "\xE2\x96\x81",
                          "a",
                          "b",
                          "ab",
                          "\xE2\x96\x81"
                          "a",
                          "\xE2\x96\x81"
                          "ab"};
    int32_t types[] = {2, 3, 3, 6, 1, 1, 1, 1, 1, 1};
    float scores[] = {0, 0, 0, 0, -10, -10, -10, -1, -2, -3};
    unsigned char *img;
    hyb_tokenizer *t = llama_scores_tok(toks, types, scores, 10, &img);
    CHECK_MSG(t != NULL, "%s", hyb_error());
    if (t) {
        int32_t ids[16];
        /* "▁ab": ab (score -1) first, then ▁ + ab -> ▁ab; bos added by default for llama */
        long n = hyb_tokenizer_encode(t, "ab", 2, HYB_TOK_ADD_SPECIAL, ids, 16);
        CHECK(n == 2 && ids[0] == 1 && ids[1] == 9);
        /* no "ba": ▁ b a, and '!' by byte fallback */
        n = hyb_tokenizer_encode(t, "ba!", 3, 0, ids, 16);
        CHECK(n == 4 && ids[0] == 4 && ids[1] == 6 && ids[2] == 5 && ids[3] == 3);
        char out[16];
        long nb = hyb_tokenizer_decode(t, ids, (size_t)n, 0, out, sizeof out);
        CHECK(nb == 3 && memcmp(out, "ba!", 3) == 0);
        /* é has neither a token nor byte tokens: unk */
        n = hyb_tokenizer_encode(t, "a\xC3\xA9", 3, 0, ids, 16);
        CHECK(n == 2 && ids[0] == 8 && ids[1] == 0);
        /* control tokens in text */
        n = hyb_tokenizer_encode(t, "<s>a", 4, 0, ids, 16);
        CHECK(n == 2 && ids[0] == 1 && ids[1] == 8);
        n = hyb_tokenizer_encode(t, "<unk>a", 6, 0, ids, 16); /* unknown-type token, as HF */
        CHECK(n == 2 && ids[0] == 0 && ids[1] == 8);
        nb = hyb_tokenizer_decode(t, ids, (size_t)n, HYB_TOK_SKIP_SPECIAL, out, sizeof out);
        CHECK(nb == 1 && out[0] == 'a'); /* skipped tokens do not count: "▁a" is first */
        nb = hyb_tokenizer_decode(t, ids, (size_t)n, 0, out, sizeof out);
        CHECK(nb == 7 && memcmp(out, "<unk> a", 7) == 0); /* only a leading space is dropped */
        CHECK(hyb_tokenizer_unk_id(t) == 0 && hyb_tokenizer_eos_id(t) == 2);
    }
    hyb_tokenizer_free(t);
    free(img);
}

/* tokenizer.ggml.token_type is llama.cpp's enum 0-6: 99 used to be accepted */
static void test_gguf_bad_token_type(void) {
    const char *toks[] = {"<unk>", "<s>", "</s>", "a", "b", "ab"};
    float scores[] = {0, 0, 0, -1, -1, -0.5f};
    for (int bad = 0; bad < 2; bad++) {
        int32_t types[] = {2, 3, 3, 1, bad ? 99 : 0, 1};
        gbuf g = {0};
        kv_str(&g, "tokenizer.ggml.model", "llama");
        kv_strs(&g, "tokenizer.ggml.tokens", toks, 6);
        kv_i32s(&g, "tokenizer.ggml.token_type", types, 6);
        kv_f32s(&g, "tokenizer.ggml.scores", scores, 6);
        size_t size;
        unsigned char *img = gfinish(&g, &size);
        hyb_tokenizer *t = tok_from_image(img, size);
        if (bad) {
            CHECK(t == NULL);
            CHECK_MSG(strstr(hyb_error(), "tokenizer.ggml.token_type[4] = 99 is not a token type"),
                      "%s", hyb_error());
        } else { /* 0 (llama.cpp's "undefined") reads as normal */
            CHECK_MSG(t != NULL, "%s", hyb_error());
            if (t) CHECK(hyb_tokenizer_token_type(t, 4) == HYB_TOKEN_NORMAL);
        }
        hyb_tokenizer_free(t);
        free(img);
    }
}

/* A GGUF "llama" tokenizer (pieces + scores, no merges) against Google's sentencepiece itself:
 * a small BPE model with byte fallback trained by tests/reference/tokenizer_ref.py. sentencepiece
 * does not parse control tokens in text, hence HYB_TOK_NO_PARSE_SPECIAL. */
static void test_gguf_vs_sentencepiece(void) {
    cJSON *j = read_json("spm_real.json");
    CHECK(j != NULL);
    if (!j) return;
    const cJSON *jt = cJSON_GetObjectItem(j, "tokens"), *js = cJSON_GetObjectItem(j, "scores");
    const cJSON *jy = cJSON_GetObjectItem(j, "types"), *it;
    int n = cJSON_GetArraySize(jt), i = 0;
    const char **toks = calloc((size_t)n, sizeof *toks);
    float *scores = calloc((size_t)n, sizeof *scores);
    int32_t *types = calloc((size_t)n, sizeof *types);
    cJSON_ArrayForEach(it, jt) toks[i++] = it->valuestring;
    i = 0;
    cJSON_ArrayForEach(it, js) scores[i++] = (float)it->valuedouble;
    i = 0;
    cJSON_ArrayForEach(it, jy) types[i++] = it->valueint;
    unsigned char *img;
    hyb_tokenizer *t = llama_scores_tok(toks, types, scores, n, &img);
    CHECK_MSG(t != NULL, "%s", hyb_error());
    int k = 0, same = 0, ndec = 0;
    const cJSON *e;
    const cJSON *golden = t ? cJSON_GetObjectItem(j, "golden") : NULL;
    cJSON_ArrayForEach(e, golden) {
        const char *text = cJSON_GetObjectItem(e, "text")->valuestring;
        const char *dec = cJSON_GetObjectItem(e, "decode")->valuestring;
        int32_t *ids = NULL;
        size_t nids = 0;
        CHECK(hyb_tokenizer_encode_alloc(t, text, strlen(text), HYB_TOK_NO_PARSE_SPECIAL, &ids,
                                         &nids) == HYB_OK);
        int eq = ids_equal(ids, (long)nids, cJSON_GetObjectItem(e, "ids"));
        CHECK_MSG(eq, "sentencepiece sample %d: ids differ for \"%.60s\"", k, text);
        if (!eq) print_ids("hyb", ids, (long)nids);
        same += eq;
        long need = hyb_tokenizer_decode(t, ids, nids, 0, NULL, 0);
        char *out = malloc((size_t)need + 1);
        long nb = hyb_tokenizer_decode(t, ids, nids, 0, out, (size_t)need + 1);
        if (!has_replacement_char(dec)) {
            ndec++;
            CHECK_MSG(nb == (long)strlen(dec) && memcmp(out, dec, (size_t)nb) == 0,
                      "sentencepiece sample %d: decode \"%.*s\" != \"%s\"", k, (int)nb, out, dec);
        }
        free(out);
        free(ids);
        k++;
    }
    printf("  GGUF llama (scores) vs sentencepiece: %d/%d samples identical, %d decodes compared\n",
           same, k, ndec);
    hyb_tokenizer_free(t);
    free(img), free(toks), free(scores), free(types);
    cJSON_Delete(j);
}

/* parts: 1 = tokens, 2 = merges */
static void expect_gguf_error(const char *model, const char *pre, int parts, const char *needle) {
    const char *toks[] = {"a", "b", "ab"};
    const char *merges[] = {"a b"};
    gbuf g = {0};
    kv_str(&g, "tokenizer.ggml.model", model);
    if (pre) kv_str(&g, "tokenizer.ggml.pre", pre);
    if (parts & 1) kv_strs(&g, "tokenizer.ggml.tokens", toks, 3);
    if (parts & 2) kv_strs(&g, "tokenizer.ggml.merges", merges, 1);
    size_t size;
    unsigned char *img = gfinish(&g, &size);
    hyb_tokenizer *t = tok_from_image(img, size);
    CHECK_MSG(t == NULL, "GGUF tokenizer (%s, %s) accepted", model, pre ? pre : "-");
    CHECK_MSG(strstr(hyb_error(), needle) != NULL, "error \"%s\" lacks \"%s\"", hyb_error(),
              needle);
    hyb_tokenizer_free(t);
    free(img);
}

static void test_gguf_errors(void) {
    expect_gguf_error("bert", NULL, 3, "\"bert\"");
    expect_gguf_error("gpt2", "qwen2", 3, "\"qwen2\"");
    expect_gguf_error("gpt2", "smollm", 2, "tokenizer.ggml.tokens");
    expect_gguf_error("gpt2", "smollm", 1, "tokenizer.ggml.merges");
    expect_gguf_error("llama", NULL, 1, "tokenizer.ggml.scores");
}

/* Random and invalid-UTF-8 bytes: byte-level encode/decode is an exact round trip (for the bytes
 * the vocab has a token for: SmolLM2 has none for 04 06 13 14 16 1D C0 C1 F1 F2 F5..FF; HF drops
 * those too). */
static void test_random_bytes(void) {
    hyb_tokenizer *t = load("smollm2.tokenizer.json");
    if (!t) return;
    int have[256] = {0}, n_have = 0;
    for (int32_t id = 0; id < hyb_tokenizer_vocab_size(t); id++) {
        size_t pl;
        const char *p = hyb_tokenizer_token_to_piece(t, id, &pl);
        if (pl == 1 && hyb_tokenizer_token_type(t, id) == HYB_TOKEN_NORMAL)
            have[(unsigned char)p[0]] = 1;
    }
    for (int b = 0; b < 256; b++)
        n_have += have[b];
    CHECK(n_have == 256 - 21); /* also no 04 06 13 14 16 1D */
    unsigned seed = 7;
    char text[600], out[600];
    int32_t ids[2500];
    int bad = 0;
    for (int it = 0; it < 300; it++) {
        size_t len = (size_t)(it * 2);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            unsigned r = seed >> 16;
            /* mix ASCII, spaces/digits and arbitrary (often invalid UTF-8) bytes */
            unsigned c = r % 4 == 0   ? (r >> 3) & 0xFF
                         : r % 4 == 1 ? (unsigned char)" 0\n\t"[(r >> 4) % 4]
                                      : 'a' + (r >> 5) % 26;
            text[i] = (char)(have[c] ? c : 'x');
        }
        long n = hyb_tokenizer_encode(t, text, len, 0, ids, 2500);
        long nb = n >= 0 ? hyb_tokenizer_decode(t, ids, (size_t)n, 0, out, sizeof out) : -1;
        bad += !(n >= 0 && nb == (long)len && memcmp(out, text, len) == 0);
    }
    CHECK_MSG(bad == 0, "%d random byte strings did not round-trip", bad);
    hyb_tokenizer_free(t);
}

typedef struct {
    const hyb_tokenizer *tok;
    const char *text;
    size_t len;
    int32_t *ids;
    long n;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *j = arg;
    for (int r = 0; r < 3; r++)
        j->n = hyb_tokenizer_encode(j->tok, j->text, j->len, 0, j->ids, j->len + 8);
    return NULL;
}

/* Builds ~1 MB of text from the samples with varied words, encodes it cold and warm, prints the
 * speed (not an assertion), checks the round trip, and encodes it from two threads at once. */
static void test_speed_and_threads(void) {
    hyb_tokenizer *t = load("smollm2.tokenizer.json");
    if (!t) return;
    cJSON *g = read_json("samples.json");
    size_t cap = 1100000, n = 0;
    char *text = malloc(cap + 4096);
    unsigned seed = 12345;
    const cJSON *e;
    while (n < 1000000) {
        cJSON_ArrayForEach(e, g) {
            size_t l = strlen(e->valuestring);
            memcpy(text + n, e->valuestring, l);
            n += l;
            /* a made-up word so the cache does not see only repeats */
            seed = seed * 1103515245u + 12345u;
            n += (size_t)sprintf(text + n, " w%cx%uq%c ", 'a' + (seed >> 16) % 26,
                                 (seed >> 8) % 9973, 'a' + (seed >> 20) % 26);
        }
    }
    cJSON_Delete(g);
    int32_t *ids = malloc((n + 8) * sizeof *ids);
    double t0 = hyb_time_now();
    long nt = hyb_tokenizer_encode(t, text, n, 0, ids, n + 8);
    double t1 = hyb_time_now();
    long nt2 = hyb_tokenizer_encode(t, text, n, 0, ids, n + 8);
    double t2 = hyb_time_now();
    CHECK(nt > 0 && nt == nt2);
    printf("  encode speed: %.2f MB/s cold cache, %.2f MB/s warm (%zu bytes -> %ld tokens, one "
           "core)\n",
           n / 1e6 / (t1 - t0), n / 1e6 / (t2 - t1), n, nt);
    char *out = malloc(n + 16);
    long nb = hyb_tokenizer_decode(t, ids, (size_t)nt, 0, out, n + 16);
    double t3 = hyb_time_now();
    printf("  decode speed: %.1f MB/s\n", n / 1e6 / (t3 - t2));
    /* SentencePiece style (llama-2 layout: no pre-tokenizer, so long segments are one word) */
    hyb_tokenizer *ts = load("spm_llama2.tokenizer.json");
    if (ts) {
        size_t scap = hyb_tokenizer_max_tokens(ts, n);
        int32_t *sids = malloc(scap * sizeof *sids);
        double s0 = hyb_time_now();
        long ns = hyb_tokenizer_encode(ts, text, n, 0, sids, scap);
        double s1 = hyb_time_now();
        CHECK(ns > 0 && (size_t)ns <= scap);
        printf("  encode speed (SentencePiece-style, tiny vocab): %.2f MB/s (%ld tokens)\n",
               n / 1e6 / (s1 - s0), ns);
        free(sids);
        hyb_tokenizer_free(ts);
    }
    CHECK(nb == (long)n && memcmp(out, text, n) == 0);
    /* two threads sharing one tokenizer (and its cache) */
    thread_job jobs[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        jobs[k] = (thread_job){t, text + k * 1000, 200000, malloc(200008 * sizeof(int32_t)), 0};
        pthread_create(&th[k], NULL, thread_main, &jobs[k]);
    }
    for (int k = 0; k < 2; k++) {
        pthread_join(th[k], NULL);
        int32_t *ref = malloc(200008 * sizeof(int32_t));
        long nr = hyb_tokenizer_encode(t, text + k * 1000, 200000, 0, ref, 200008);
        CHECK(jobs[k].n == nr && memcmp(ref, jobs[k].ids, (size_t)nr * sizeof(int32_t)) == 0);
        free(ref);
        free(jobs[k].ids);
    }
    free(out), free(ids), free(text);
    hyb_tokenizer_free(t);
}

int main(void) {
    RUN(test_bpe_by_hand);
    RUN(test_smollm2_json);
    RUN(test_smollm2_spec);
    RUN(test_spm_json);
    RUN(test_spm_spec);
    RUN(test_llama3_regex);
    RUN(test_tekken_regex);
    RUN(test_malformed);
    RUN(test_mutations);
    RUN(test_gguf_llama_scores);
    RUN(test_gguf_bad_token_type);
    RUN(test_gguf_errors);
    RUN(test_gguf_vs_sentencepiece);
    RUN(test_random_bytes);
    RUN(test_speed_and_threads);
    return harness_done();
}
