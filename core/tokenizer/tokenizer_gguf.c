/* core/tokenizer/tokenizer_gguf.c: build a tokenizer from GGUF metadata (tokenizer.ggml.*),
 * read through hyb/gguf.h. */
#include <stdlib.h>
#include <string.h>

#include "hyb/gguf.h"
#include "tok_internal.h"

/* tokenizer.ggml.pre -> pre-tokenizer (byte-level models). */
static int pretok_from_name(const char *pre) {
    static const struct {
        const char *name;
        int kind;
    } map[] = {
        {"default", HYB_PRETOK_GPT2},    {"gpt2", HYB_PRETOK_GPT2},
        {"gpt-2", HYB_PRETOK_GPT2},      {"smollm", HYB_PRETOK_SMOLLM},
        {"llama3", HYB_PRETOK_LLAMA3},   {"llama-bpe", HYB_PRETOK_LLAMA3},
        {"llama-v3", HYB_PRETOK_LLAMA3}, {"tekken", HYB_PRETOK_TEKKEN},
    };
    if (!pre) return HYB_PRETOK_GPT2;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(pre, map[i].name)) return map[i].kind;
    return -1;
}

static int32_t get_id(const hyb_gguf *g, const char *key) {
    int64_t v;
    if (hyb_gguf_get_int(g, key, &v) != HYB_OK || v < 0 || v > INT32_MAX) {
        hyb_error_clear();
        return -1;
    }
    return (int32_t)v;
}

static int get_flag(const hyb_gguf *g, const char *key, int dflt) {
    int v;
    if (hyb_gguf_get_bool(g, key, &v) != HYB_OK) {
        hyb_error_clear();
        return dflt;
    }
    return v;
}

/* malloc(n * size), or NULL with "<path>: out of memory" set */
static void *alloc_or_err(uint64_t n, size_t size, const char *path) {
    void *p = malloc(n * size);
    if (!p) hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    return p;
}

/* String array `key` into a pointer array (pointers into g). */
static int str_array(const hyb_gguf *g, const char *key, const char ***out, uint64_t *n,
                     const char *path, int required) {
    *out = NULL, *n = 0;
    int64_t kv = hyb_gguf_find_key(g, key);
    if (kv < 0) {
        if (required)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: no %s in the GGUF metadata", path, key);
        return HYB_OK;
    }
    if (hyb_gguf_kv_type(g, kv) != HYB_GGUF_ARRAY || hyb_gguf_kv_arr_type(g, kv) != HYB_GGUF_STRING)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: %s is not an array of strings", path, key);
    uint64_t len = hyb_gguf_kv_arr_len(g, kv);
    if (len > INT32_MAX)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: %s has %llu entries", path, key,
                             (unsigned long long)len);
    const char **a = alloc_or_err(len ? len : 1, sizeof *a, path);
    if (!a) return HYB_ERR_NOMEM;
    for (uint64_t i = 0; i < len; i++) {
        uint64_t sl;
        a[i] = hyb_gguf_kv_arr_str(g, kv, i, &sl);
        if (!a[i] || strlen(a[i]) != sl) {
            free(a);
            return hyb_error_set(HYB_ERR_FORMAT, "%s: %s[%llu] is not a plain string", path, key,
                                 (unsigned long long)i);
        }
    }
    *out = a, *n = len;
    return HYB_OK;
}

hyb_tokenizer *hyb_tokenizer_from_gguf(const struct hyb_gguf *g) {
    if (!g) {
        hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_from_gguf: NULL handle");
        return NULL;
    }
    const char *path = hyb_gguf_path(g);
    if (!path) path = "gguf";
    const char *model = NULL, *pre = NULL;
    if (hyb_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL) != HYB_OK) {
        hyb_error_wrap(HYB_ERR_FORMAT, "%s: tokenizer.ggml.model", path);
        return NULL;
    }
    if (hyb_gguf_find_key(g, "tokenizer.ggml.pre") >= 0 &&
        hyb_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL) != HYB_OK) {
        hyb_error_wrap(HYB_ERR_FORMAT, "%s: tokenizer.ggml.pre", path);
        return NULL;
    }
    hyb_tokenizer_spec spec;
    memset(&spec, 0, sizeof spec);
    if (!strcmp(model, "gpt2")) {
        spec.model = HYB_TOK_BYTE_LEVEL;
        spec.pretok = pretok_from_name(pre);
        if (spec.pretok < 0) {
            hyb_error_set(HYB_ERR_UNSUPPORTED,
                          "%s: unsupported pre-tokenizer tokenizer.ggml.pre = \"%s\"", path, pre);
            return NULL;
        }
    } else if (!strcmp(model, "llama")) {
        spec.model = HYB_TOK_SPM;
        spec.pretok = HYB_PRETOK_NONE;
        spec.add_prefix_space = get_flag(g, "tokenizer.ggml.add_space_prefix", 1);
    } else {
        hyb_error_set(HYB_ERR_UNSUPPORTED,
                      "%s: unsupported tokenizer.ggml.model \"%s\" (supported: gpt2, llama)", path,
                      model);
        return NULL;
    }
    const char **tokens = NULL, **merges = NULL;
    uint64_t n_tokens = 0, n_merges = 0;
    int32_t *types = NULL;
    float *scores = NULL;
    hyb_tokenizer *t = NULL;
    if (str_array(g, "tokenizer.ggml.tokens", &tokens, &n_tokens, path, 1) != HYB_OK ||
        str_array(g, "tokenizer.ggml.merges", &merges, &n_merges, path,
                  spec.model == HYB_TOK_BYTE_LEVEL) != HYB_OK)
        goto done;
    if (n_tokens == 0) {
        hyb_error_set(HYB_ERR_FORMAT, "%s: tokenizer.ggml.tokens is empty", path);
        goto done;
    }
    int64_t kv = hyb_gguf_find_key(g, "tokenizer.ggml.token_type");
    if (kv >= 0) {
        if (hyb_gguf_kv_arr_len(g, kv) != n_tokens) {
            hyb_error_set(
                HYB_ERR_FORMAT, "%s: tokenizer.ggml.token_type has %llu entries for %llu tokens",
                path, (unsigned long long)hyb_gguf_kv_arr_len(g, kv), (unsigned long long)n_tokens);
            goto done;
        }
        types = alloc_or_err(n_tokens, sizeof *types, path);
        if (!types) goto done;
        for (uint64_t i = 0; i < n_tokens; i++) {
            int64_t v;
            if (hyb_gguf_kv_arr_int(g, kv, i, &v) != HYB_OK) {
                hyb_error_wrap(HYB_ERR_FORMAT, "%s: tokenizer.ggml.token_type[%llu]", path,
                               (unsigned long long)i);
                goto done;
            }
            /* llama.cpp's enum: 0 undefined (read as normal), 1 normal ... 6 byte */
            if (v < 0 || v > HYB_TOKEN_BYTE) {
                hyb_error_set(HYB_ERR_FORMAT,
                              "%s: tokenizer.ggml.token_type[%llu] = %lld is not a token type "
                              "(0-6: undefined, normal, unknown, control, user-defined, unused, "
                              "byte)",
                              path, (unsigned long long)i, (long long)v);
                goto done;
            }
            types[i] = v == 0 ? HYB_TOKEN_NORMAL : (int32_t)v;
            if (v == HYB_TOKEN_BYTE) spec.byte_fallback = 1;
        }
    }
    if (spec.model == HYB_TOK_SPM && !merges) {
        kv = hyb_gguf_find_key(g, "tokenizer.ggml.scores");
        if (kv < 0 || hyb_gguf_kv_arr_len(g, kv) != n_tokens) {
            hyb_error_set(HYB_ERR_FORMAT,
                          "%s: a llama tokenizer needs tokenizer.ggml.merges or "
                          "tokenizer.ggml.scores (one per token)",
                          path);
            goto done;
        }
        scores = alloc_or_err(n_tokens, sizeof *scores, path);
        if (!scores) goto done;
        for (uint64_t i = 0; i < n_tokens; i++) {
            double v;
            if (hyb_gguf_kv_arr_float(g, kv, i, &v) != HYB_OK) {
                hyb_error_wrap(HYB_ERR_FORMAT, "%s: tokenizer.ggml.scores[%llu]", path,
                               (unsigned long long)i);
                goto done;
            }
            scores[i] = (float)v;
        }
    }
    spec.vocab = tokens, spec.n_vocab = (int32_t)n_tokens;
    spec.merges = merges, spec.n_merges = (int32_t)n_merges;
    spec.scores = scores;
    spec.token_types = types;
    spec.bos_id = get_id(g, "tokenizer.ggml.bos_token_id");
    spec.eos_id = get_id(g, "tokenizer.ggml.eos_token_id");
    spec.unk_id = get_id(g, "tokenizer.ggml.unknown_token_id");
    spec.pad_id = get_id(g, "tokenizer.ggml.padding_token_id");
    int32_t *ids[4] = {&spec.bos_id, &spec.eos_id, &spec.unk_id, &spec.pad_id};
    for (int k = 0; k < 4; k++)
        if (*ids[k] >= spec.n_vocab) *ids[k] = -1; /* converters write ids past the vocab */
    int tekken = spec.model == HYB_TOK_BYTE_LEVEL && spec.pretok == HYB_PRETOK_TEKKEN;
    spec.ignore_merges = spec.model == HYB_TOK_BYTE_LEVEL &&
                         (spec.pretok == HYB_PRETOK_LLAMA3 || spec.pretok == HYB_PRETOK_TEKKEN);
    spec.add_bos = get_flag(g, "tokenizer.ggml.add_bos_token", spec.model == HYB_TOK_SPM || tekken);
    spec.add_eos = get_flag(g, "tokenizer.ggml.add_eos_token", 0);
    t = hyb_tokenizer_new_bpe(&spec);
    if (!t) hyb_error_wrap(hyb_error()[0] ? HYB_ERR_FORMAT : HYB_ERR, "%s", path);
done:
    free(tokens), free(merges), free(types), free(scores);
    return t;
}

hyb_tokenizer *hyb_tokenizer_load_gguf(const char *path) {
    hyb_gguf *g = NULL;
    if (hyb_gguf_open(path, &g) != HYB_OK) return NULL;
    hyb_tokenizer *t = hyb_tokenizer_from_gguf(g);
    hyb_gguf_close(g);
    return t;
}
