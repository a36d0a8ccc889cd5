/* core/tokenizer/tokenizer_save.c: a tokenizer written as HF tokenizer.json (+ tokenizer_config.json),
 * whatever it was loaded from (a GGUF vocabulary included), so a saved model directory carries the
 * tokenizer it was trained with. The writer is the inverse of tokenizer_json.c: every pipeline step
 * the loader understands is written in the form the loader (and HF `tokenizers`) reads, so
 * save -> load gives the same ids for every text (tests/model_tokenizer_save.c checks that on the
 * default model's GGUF tokenizer and on a SentencePiece-style spec).
 *
 *   normalizer      Sequence of Prepend / Replace (SentencePiece-style models), or null
 *   pre_tokenizer   Sequence of Split {Regex} / ByteLevel / Metaspace, or null
 *   model           BPE: vocab (the model vocabulary), merges as [a, b] pairs in rank order,
 *                   unk_token (the token encode emits for what the vocabulary lacks), byte_fallback,
 *                   fuse_unk, ignore_merges
 *   added_tokens    every token matched in raw text (special = control/unknown, else user-defined)
 *   post_processor  TemplateProcessing with the bos/eos that HYB_TOK_ADD_SPECIAL adds, or null
 *   decoder         ByteLevel, or Sequence of Replace "▁" -> " " / ByteFallback / Fuse / Strip
 *
 * Merge ranks are written in rank order; two merges of one rank (possible only in SentencePiece
 * models whose merges come from scores) get consecutive ranks, in (rank, left id, right id) order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "hyb/atomic.h"
#include "hyb/common.h"
#include "hyb/gguf.h"
#include "tok_internal.h"

typedef struct merge_row {
    int32_t rank, a, b;
} merge_row;

static int cmp_merge(const void *x, const void *y) {
    const merge_row *p = x, *q = y;
    if (p->rank != q->rank) return p->rank < q->rank ? -1 : 1;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    return (p->b > q->b) - (p->b < q->b);
}

static const char *const SPLIT_NAMES[] = {"Isolated", "Removed", "MergedWithPrevious",
                                          "MergedWithNext", "Contiguous"};

static cJSON *add_obj(cJSON *parent, const char *key) {
    cJSON *o = cJSON_CreateObject();
    if (o) {
        if (key)
            cJSON_AddItemToObject(parent, key, o);
        else
            cJSON_AddItemToArray(parent, o);
    }
    return o;
}

static cJSON *normalizer_json(const hyb_tokenizer *t) {
    if (t->n_norms == 0) return cJSON_CreateNull();
    cJSON *seq = cJSON_CreateObject();
    cJSON_AddStringToObject(seq, "type", "Sequence");
    cJSON *arr = cJSON_AddArrayToObject(seq, "normalizers");
    for (int i = 0; i < t->n_norms; i++) {
        const tok_norm *n = &t->norms[i];
        cJSON *o = add_obj(arr, NULL);
        if (n->kind == TOK_NORM_PREPEND) {
            cJSON_AddStringToObject(o, "type", "Prepend");
            cJSON_AddStringToObject(o, "prepend", n->a);
        } else {
            cJSON_AddStringToObject(o, "type", "Replace");
            cJSON *pat = add_obj(o, "pattern");
            cJSON_AddStringToObject(pat, "String", n->a);
            cJSON_AddStringToObject(o, "content", n->b);
        }
    }
    return seq;
}

static cJSON *pretok_json(const hyb_tokenizer *t) {
    if (t->n_pretoks == 0) return cJSON_CreateNull();
    cJSON *seq = cJSON_CreateObject();
    cJSON_AddStringToObject(seq, "type", "Sequence");
    cJSON *arr = cJSON_AddArrayToObject(seq, "pretokenizers");
    for (int i = 0; i < t->n_pretoks; i++) {
        const tok_pretok *p = &t->pretoks[i];
        cJSON *o = add_obj(arr, NULL);
        if (p->kind == TOK_PT_SPLIT) {
            cJSON_AddStringToObject(o, "type", "Split");
            cJSON *pat = add_obj(o, "pattern");
            cJSON_AddStringToObject(pat, "Regex", p->pattern ? p->pattern : "");
            cJSON_AddStringToObject(o, "behavior", SPLIT_NAMES[p->behavior]);
            cJSON_AddBoolToObject(o, "invert", p->invert);
        } else if (p->kind == TOK_PT_BYTELEVEL) {
            cJSON_AddStringToObject(o, "type", "ByteLevel");
            cJSON_AddBoolToObject(o, "add_prefix_space", p->add_prefix_space);
            cJSON_AddBoolToObject(o, "trim_offsets", 1);
            cJSON_AddBoolToObject(o, "use_regex", p->re != NULL);
        } else {
            static const char *const schemes[] = {"always", "first", "never"};
            cJSON_AddStringToObject(o, "type", "Metaspace");
            cJSON_AddStringToObject(o, "replacement", "\xE2\x96\x81");
            cJSON_AddStringToObject(o, "prepend_scheme", schemes[p->prepend_scheme]);
            cJSON_AddBoolToObject(o, "split", p->split);
        }
    }
    return seq;
}

static cJSON *model_json(const hyb_tokenizer *t) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "type", "BPE");
    cJSON_AddNullToObject(m, "dropout");
    if (t->enc_unk_id >= 0)
        cJSON_AddStringToObject(m, "unk_token", t->text[t->enc_unk_id]);
    else
        cJSON_AddNullToObject(m, "unk_token");
    cJSON_AddNullToObject(m, "continuing_subword_prefix");
    cJSON_AddNullToObject(m, "end_of_word_suffix");
    cJSON_AddBoolToObject(m, "fuse_unk", t->fuse_unk);
    cJSON_AddBoolToObject(m, "byte_fallback", t->byte_fallback);
    cJSON_AddBoolToObject(m, "ignore_merges", t->ignore_merges);
    /* the vocabulary in id order (the map's order is a hash's) */
    cJSON *vocab = add_obj(m, "vocab");
    int32_t *by_id = malloc((size_t)(t->n_vocab > 0 ? t->n_vocab : 1) * sizeof *by_id);
    if (!by_id) {
        cJSON_Delete(m);
        return NULL;
    }
    for (int32_t i = 0; i < t->n_vocab; i++)
        by_id[i] = -1;
    for (size_t i = 0; i < t->vocab.cap; i++)
        if (t->vocab.keys[i] && t->vocab.vals[i] >= 0 && t->vocab.vals[i] < t->n_vocab)
            by_id[t->vocab.vals[i]] = (int32_t)i;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (by_id[id] >= 0) cJSON_AddNumberToObject(vocab, t->vocab.keys[by_id[id]], id);
    free(by_id);
    /* merges in rank order, as [a, b] pairs (a token may hold a space) */
    merge_row *rows = malloc((t->merges.n ? t->merges.n : 1) * sizeof *rows);
    if (!rows) {
        cJSON_Delete(m);
        return NULL;
    }
    size_t n = 0;
    for (size_t i = 0; i < t->merges.cap; i++)
        if (t->merges.keys[i] != UINT64_MAX)
            rows[n++] = (merge_row){t->merges.rank[i], (int32_t)(t->merges.keys[i] >> 32),
                                    (int32_t)(t->merges.keys[i] & 0xffffffffu)};
    qsort(rows, n, sizeof *rows, cmp_merge);
    cJSON *merges = cJSON_AddArrayToObject(m, "merges");
    for (size_t i = 0; i < n; i++) {
        const char *pair[2] = {t->text[rows[i].a], t->text[rows[i].b]};
        cJSON_AddItemToArray(merges, cJSON_CreateStringArray(pair, 2));
    }
    free(rows);
    return m;
}

static cJSON *added_json(const hyb_tokenizer *t) {
    cJSON *arr = cJSON_CreateArray();
    /* in id order (the tokenizer keeps them longest first) */
    int32_t *order = malloc((size_t)(t->n_added > 0 ? t->n_added : 1) * sizeof *order);
    if (!order) {
        cJSON_Delete(arr);
        return NULL;
    }
    for (int i = 0; i < t->n_added; i++)
        order[i] = i;
    for (int i = 1; i < t->n_added; i++) /* insertion sort: a few hundred at most */
        for (int j = i; j > 0 && t->added[order[j - 1]].id > t->added[order[j]].id; j--) {
            int32_t x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    for (int i = 0; i < t->n_added; i++) {
        const tok_added *a = &t->added[order[i]];
        cJSON *o = add_obj(arr, NULL);
        cJSON_AddNumberToObject(o, "id", a->id);
        cJSON_AddStringToObject(o, "content", a->text);
        cJSON_AddBoolToObject(o, "single_word", 0);
        cJSON_AddBoolToObject(o, "lstrip", a->lstrip);
        cJSON_AddBoolToObject(o, "rstrip", a->rstrip);
        cJSON_AddBoolToObject(o, "normalized", !a->special);
        cJSON_AddBoolToObject(o, "special", a->special);
    }
    free(order);
    return arr;
}

static void template_piece(cJSON *arr, const char *special, const char *seq) {
    cJSON *o = add_obj(arr, NULL), *in = add_obj(o, special ? "SpecialToken" : "Sequence");
    cJSON_AddStringToObject(in, "id", special ? special : seq);
    cJSON_AddNumberToObject(in, "type_id", 0);
}

static cJSON *post_json(const hyb_tokenizer *t) {
    if (t->n_prefix == 0 && t->n_suffix == 0) return cJSON_CreateNull();
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "TemplateProcessing");
    static const char *const keys[2] = {"single", "pair"};
    for (int k = 0; k < 2; k++) {
        cJSON *arr = cJSON_AddArrayToObject(p, keys[k]);
        for (int s = 0; s <= k; s++) {
            for (int i = 0; i < t->n_prefix; i++)
                template_piece(arr, t->text[t->prefix_ids[i]], NULL);
            template_piece(arr, NULL, s ? "B" : "A");
            for (int i = 0; i < t->n_suffix; i++)
                template_piece(arr, t->text[t->suffix_ids[i]], NULL);
        }
    }
    cJSON *sp = add_obj(p, "special_tokens");
    for (int side = 0; side < 2; side++) {
        const int32_t *ids = side ? t->suffix_ids : t->prefix_ids;
        for (int i = 0; i < (side ? t->n_suffix : t->n_prefix); i++) {
            const char *name = t->text[ids[i]];
            if (cJSON_GetObjectItemCaseSensitive(sp, name)) continue;
            cJSON *o = add_obj(sp, name);
            cJSON_AddStringToObject(o, "id", name);
            cJSON *idarr = cJSON_AddArrayToObject(o, "ids");
            cJSON_AddItemToArray(idarr, cJSON_CreateNumber(ids[i]));
            cJSON *tarr = cJSON_AddArrayToObject(o, "tokens");
            cJSON_AddItemToArray(tarr, cJSON_CreateString(name));
        }
    }
    return p;
}

static cJSON *decoder_json(const hyb_tokenizer *t) {
    cJSON *d = cJSON_CreateObject();
    if (t->dec_mode == TOK_DEC_RAW) {
        cJSON_Delete(d);
        return cJSON_CreateNull();
    }
    if (t->dec_mode == TOK_DEC_BYTE_LEVEL) {
        cJSON_AddStringToObject(d, "type", "ByteLevel");
        cJSON_AddBoolToObject(d, "add_prefix_space", 1);
        cJSON_AddBoolToObject(d, "trim_offsets", 1);
        cJSON_AddBoolToObject(d, "use_regex", 1);
        return d;
    }
    cJSON_AddStringToObject(d, "type", "Sequence");
    cJSON *arr = cJSON_AddArrayToObject(d, "decoders");
    cJSON *r = add_obj(arr, NULL);
    cJSON_AddStringToObject(r, "type", "Replace");
    cJSON_AddStringToObject(add_obj(r, "pattern"), "String", "\xE2\x96\x81");
    cJSON_AddStringToObject(r, "content", " ");
    if (t->dec_byte_fallback) cJSON_AddStringToObject(add_obj(arr, NULL), "type", "ByteFallback");
    cJSON_AddStringToObject(add_obj(arr, NULL), "type", "Fuse");
    if (t->dec_strip_space) {
        cJSON *s = add_obj(arr, NULL);
        cJSON_AddStringToObject(s, "type", "Strip");
        cJSON_AddStringToObject(s, "content", " ");
        cJSON_AddNumberToObject(s, "start", 1);
        cJSON_AddNumberToObject(s, "stop", 0);
    }
    return d;
}

/* cJSON reports allocation failures only through NULLs deep inside the tree: print it and
 * treat a NULL text as out of memory. */
static int write_json(const char *path, cJSON *root) {
    char *text = root ? cJSON_PrintBuffered(root, 1 << 20, 1) : NULL;
    cJSON_Delete(root);
    if (!text) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory writing the tokenizer", path);
    hyb_atomic_file *f = NULL;
    int rc = hyb_atomic_open(path, &f);
    if (rc == HYB_OK) rc = hyb_atomic_write(f, text, strlen(text));
    if (rc == HYB_OK) rc = hyb_atomic_write(f, "\n", 1);
    if (rc == HYB_OK)
        rc = hyb_atomic_commit(f);
    else if (f)
        hyb_atomic_abort(f);
    cJSON_free(text);
    return rc;
}

int hyb_tokenizer_save_json(const hyb_tokenizer *t, const char *path) {
    if (!t || !path) return hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_save_json: NULL argument");
    for (int i = 0; i < t->n_pretoks; i++)
        if (t->pretoks[i].kind == TOK_PT_SPLIT && !t->pretoks[i].pattern)
            return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: pre-tokenizer step %d has no regex source",
                                 path, i);
    cJSON *root = cJSON_CreateObject();
    if (!root) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *parts[6] = {added_json(t),  normalizer_json(t), pretok_json(t),
                       post_json(t),   decoder_json(t),    model_json(t)};
    static const char *const keys[6] = {"added_tokens", "normalizer",  "pre_tokenizer",
                                        "post_processor", "decoder",   "model"};
    int ok = 1;
    for (int i = 0; i < 6; i++) {
        if (!parts[i]) ok = 0;
        if (parts[i]) cJSON_AddItemToObject(root, keys[i], parts[i]);
    }
    if (!ok) {
        cJSON_Delete(root);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    }
    return write_json(path, root);
}

/* HF writes special tokens in tokenizer_config.json as plain strings or {"content": ...}. */
static void add_token_name(cJSON *root, const char *key, const hyb_tokenizer *t, int32_t id) {
    if (id >= 0 && id < t->n_vocab)
        cJSON_AddStringToObject(root, key, t->text[id]);
    else
        cJSON_AddNullToObject(root, key);
}

int hyb_tokenizer_save_hf(const hyb_tokenizer *t, const char *dir, const char *chat_template,
                          int model_max_length) {
    if (!t || !dir) return hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_save_hf: NULL argument");
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    HYB_TRY(hyb_tokenizer_save_json(t, path));
    cJSON *root = cJSON_CreateObject();
    if (!root) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", dir);
    cJSON_AddStringToObject(root, "tokenizer_class", "PreTrainedTokenizerFast");
    add_token_name(root, "bos_token", t, t->bos_id);
    add_token_name(root, "eos_token", t, t->eos_id);
    add_token_name(root, "unk_token", t, t->enc_unk_id);
    add_token_name(root, "pad_token", t, t->pad_id);
    cJSON_AddBoolToObject(root, "add_bos_token", t->n_prefix > 0);
    cJSON_AddBoolToObject(root, "add_eos_token", t->n_suffix > 0);
    cJSON_AddBoolToObject(root, "clean_up_tokenization_spaces", 0);
    if (model_max_length > 0) cJSON_AddNumberToObject(root, "model_max_length", model_max_length);
    if (chat_template && chat_template[0])
        cJSON_AddStringToObject(root, "chat_template", chat_template);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    return write_json(path, root);
}

/* tokenizer_config.json beside a tokenizer.json: its bos_token / eos_token (a string or an
 * object with "content") name the ids generation stops at, as HF's tokenizer classes take them;
 * null means none. A missing file or key changes nothing; a token the vocabulary lacks is an error naming it. */
int tok_apply_hf_config(hyb_tokenizer *t, const char *tokenizer_json_path) {
    char path[4096];
    const char *slash = strrchr(tokenizer_json_path, '/');
    if (slash)
        snprintf(path, sizeof path, "%.*s/tokenizer_config.json",
                 (int)(slash - tokenizer_json_path), tokenizer_json_path);
    else
        snprintf(path, sizeof path, "tokenizer_config.json");
    FILE *f = fopen(path, "rb");
    if (!f) return HYB_OK;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n < 0 || n > (64l << 20)) {
        fclose(f);
        return hyb_error_set(HYB_ERR_FORMAT, "%s: %ld bytes is not a tokenizer config", path, n);
    }
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return hyb_error_set(HYB_ERR_IO, "%s: read error", path);
    }
    fclose(f);
    buf[n] = 0;
    cJSON *root = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return hyb_error_set(HYB_ERR_FORMAT, "%s: not a JSON object", path);
    }
    int32_t ids[2] = {t->bos_id, t->eos_id};
    static const char *const keys[2] = {"bos_token", "eos_token"};
    int rc = HYB_OK;
    for (int k = 0; k < 2 && rc == HYB_OK; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsNull(v)) ids[k] = -1; /* written as null: there is none */
        if (!cJSON_IsString(v)) continue;
        int32_t id = hyb_tokenizer_token_id(t, v->valuestring);
        if (id < 0)
            rc = hyb_error_set(HYB_ERR_FORMAT, "%s: %s \"%s\" is not a token of the vocabulary",
                               path, keys[k], v->valuestring);
        else
            ids[k] = id;
    }
    cJSON_Delete(root);
    if (rc == HYB_OK) {
        t->bos_id = ids[0];
        t->eos_id = ids[1];
    }
    return rc;
}

/* The chat template that comes with a tokenizer: a GGUF's tokenizer.chat_template, or the
 * chat_template of the tokenizer_config.json beside a tokenizer.json (path: the .gguf, the
 * tokenizer.json or a directory holding one). malloc'ed; NULL when there is none (no error). */
char *hyb_tokenizer_chat_template(const char *path) {
    size_t n = strlen(path);
    if (n > 5 && !strcmp(path + n - 5, ".gguf")) {
        hyb_gguf *g = NULL;
        if (hyb_gguf_open(path, &g) != HYB_OK) {
            hyb_error_clear();
            return NULL;
        }
        const char *s = NULL;
        uint64_t len = 0;
        char *out = NULL;
        if (hyb_gguf_get_str(g, "tokenizer.chat_template", &s, &len) == HYB_OK && s &&
            (out = malloc(len + 1))) {
            memcpy(out, s, len);
            out[len] = 0;
        }
        hyb_error_clear();
        hyb_gguf_close(g);
        return out;
    }
    char cfg[4096];
    const char *slash = strrchr(path, '/');
    if (n > 5 && !strcmp(path + n - 5, ".json"))
        snprintf(cfg, sizeof cfg, "%.*s/tokenizer_config.json", slash ? (int)(slash - path) : 1,
                 slash ? path : ".");
    else
        snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", path);
    FILE *f = fopen(cfg, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && len < (64l << 20) &&
        fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)len + 1)) &&
        fread(buf, 1, (size_t)len, f) == (size_t)len)
        buf[len] = 0;
    else
        len = -1;
    fclose(f);
    char *out = NULL;
    cJSON *root = len >= 0 ? cJSON_ParseWithLength(buf, (size_t)len) : NULL;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (cJSON_IsString(t) && (out = malloc(strlen(t->valuestring) + 1)))
        memcpy(out, t->valuestring, strlen(t->valuestring) + 1);
    cJSON_Delete(root);
    free(buf);
    return out;
}

char *hyb_tokenizer_special_text(const hyb_tokenizer *tok, int32_t id) {
    size_t len = 0;
    const char *p = id >= 0 ? hyb_tokenizer_token_to_piece(tok, id, &len) : NULL;
    if (!p) len = 0;
    char *t = malloc(len + 1);
    if (t) {
        if (len) memcpy(t, p, len);
        t[len] = 0;
    }
    return t;
}
