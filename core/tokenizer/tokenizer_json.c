/* core/tokenizer/tokenizer_json.c: load an HF tokenizer.json (BPE models) with cJSON.
 *
 * What is read (everything else that changes the output is rejected with its name):
 *   model            {type BPE, vocab, merges ("a b" strings or [a, b] pairs), unk_token,
 *                     byte_fallback, fuse_unk, ignore_merges, dropout null}
 *   added_tokens     [{id, content, special, lstrip, rstrip}]
 *   normalizer       null | Sequence | Prepend | Replace (string pattern)
 *   pre_tokenizer    null | Sequence | ByteLevel | Split | Digits | Metaspace
 *   post_processor   null | TemplateProcessing | ByteLevel | RobertaProcessing | BertProcessing |
 *                    Sequence   (what HYB_TOK_ADD_SPECIAL adds around a single sequence)
 *   decoder          null | ByteLevel | Metaspace | Sequence of Replace/ByteFallback/Fuse/Strip
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

typedef struct {
    const char *name; /* file name for messages */
    hyb_tokenizer *t;
} jctx;

/* A token id: an integer (not 3.5) in [0, 1e8]. */
static int is_id(const cJSON *v) {
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 1e8 &&
           v->valuedouble == (double)(int32_t)v->valuedouble;
}

static const char *jtype(const cJSON *o) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Escape a literal string into a PCRE2 pattern. Caller frees. */
static char *regex_escape(const char *s) {
    size_t n = strlen(s);
    char *o = malloc(2 * n + 1), *p = o;
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (strchr("\\^$.|?*+()[]{}-/#", s[i]) || s[i] == ' ') *p++ = '\\';
        *p++ = s[i];
    }
    *p = 0;
    return o;
}

static int load_normalizer(jctx *c, const cJSON *n, const char *path) {
    if (!n || cJSON_IsNull(n)) return HYB_OK;
    const char *ty = jtype(n);
    if (!ty) return hyb_error_set(HYB_ERR_FORMAT, "%s: %s has no \"type\"", c->name, path);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *it;
        if (!cJSON_IsArray(arr))
            return hyb_error_set(HYB_ERR_FORMAT, "%s: %s.normalizers is not an array", c->name,
                                 path);
        cJSON_ArrayForEach(it, arr) HYB_TRY(load_normalizer(c, it, path));
        return HYB_OK;
    }
    if (!strcmp(ty, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: %s Prepend has no \"prepend\"", c->name,
                                 path);
        return tok_add_norm(c->t, TOK_NORM_PREPEND, p, strlen(p), NULL, 0);
    }
    if (!strcmp(ty, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *from = jstr(pat, "String"), *to = jstr(n, "content");
        if (!from || !to)
            return hyb_error_set(
                HYB_ERR_UNSUPPORTED,
                "%s: %s Replace: only a {\"String\": ...} pattern with a \"content\" "
                "is supported",
                c->name, path);
        return tok_add_norm(c->t, TOK_NORM_REPLACE, from, strlen(from), to, strlen(to));
    }
    return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: unsupported normalizer type \"%s\" in %s",
                         c->name, ty, path);
}

static int load_pretok(jctx *c, const cJSON *p, const char *path) {
    if (!p || cJSON_IsNull(p)) return HYB_OK;
    const char *ty = jtype(p);
    if (!ty) return hyb_error_set(HYB_ERR_FORMAT, "%s: %s has no \"type\"", c->name, path);
    if (!strcmp(ty, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"), *it;
        if (!cJSON_IsArray(arr))
            return hyb_error_set(HYB_ERR_FORMAT, "%s: %s.pretokenizers is not an array", c->name,
                                 path);
        cJSON_ArrayForEach(it, arr) HYB_TRY(load_pretok(c, it, path));
        return HYB_OK;
    }
    if (!strcmp(ty, "ByteLevel"))
        return tok_add_bytelevel(c->t, jbool(p, "add_prefix_space", 1), jbool(p, "use_regex", 1));
    if (!strcmp(ty, "Digits"))
        return tok_add_split(c->t, jbool(p, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+",
                             jbool(p, "individual_digits", 0) ? 5 : 6, TOK_SPLIT_ISOLATED, 0,
                             "Digits");
    if (!strcmp(ty, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
        const char *beh = jstr(p, "behavior");
        static const char *const names[] = {"Isolated", "Removed", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        int b = -1;
        for (int k = 0; k < 5 && beh; k++)
            if (!strcmp(beh, names[k])) b = k;
        if ((!re && !lit) || b < 0)
            return hyb_error_set(HYB_ERR_FORMAT,
                                 "%s: %s Split needs a pattern {\"Regex\"|\"String\": ...} and a "
                                 "behavior (got %s)",
                                 c->name, path, beh ? beh : "none");
        char *esc = NULL;
        if (!re) {
            if (!(esc = regex_escape(lit)))
                return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
            re = esc;
        }
        char where[512];
        snprintf(where, sizeof where, "%s: %s Split", c->name, path);
        int rc = tok_add_split(c->t, re, strlen(re), b, jbool(p, "invert", 0), where);
        free(esc);
        return rc;
    }
    if (!strcmp(ty, "Metaspace")) {
        const char *rep = jstr(p, "replacement");
        if (rep && strcmp(rep, "\xE2\x96\x81"))
            return hyb_error_set(
                HYB_ERR_UNSUPPORTED,
                "%s: %s Metaspace: only the replacement \"\xE2\x96\x81\" is supported", c->name,
                path);
        const char *scheme = jstr(p, "prepend_scheme");
        int ps = jbool(p, "add_prefix_space", 1) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
        if (scheme) {
            if (!strcmp(scheme, "always"))
                ps = TOK_PREPEND_ALWAYS;
            else if (!strcmp(scheme, "first"))
                ps = TOK_PREPEND_FIRST;
            else if (!strcmp(scheme, "never"))
                ps = TOK_PREPEND_NEVER;
            else
                return hyb_error_set(HYB_ERR_FORMAT,
                                     "%s: %s Metaspace: unknown prepend_scheme \"%s\"", c->name,
                                     path, scheme);
        }
        return tok_add_metaspace(c->t, ps, jbool(p, "split", 1));
    }
    return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: unsupported pre-tokenizer type \"%s\" in %s",
                         c->name, ty, path);
}

static int load_decoder(jctx *c, const cJSON *d) {
    hyb_tokenizer *t = c->t;
    if (!d || cJSON_IsNull(d)) {
        t->dec_mode = TOK_DEC_RAW;
        return HYB_OK;
    }
    const char *ty = jtype(d);
    if (!ty) return hyb_error_set(HYB_ERR_FORMAT, "%s: decoder has no \"type\"", c->name);
    if (!strcmp(ty, "ByteLevel")) {
        t->dec_mode = TOK_DEC_BYTE_LEVEL;
        return HYB_OK;
    }
    if (!strcmp(ty, "Metaspace")) {
        t->dec_mode = TOK_DEC_SPM;
        const char *scheme = jstr(d, "prepend_scheme");
        t->dec_strip_space =
            scheme ? strcmp(scheme, "never") != 0 : jbool(d, "add_prefix_space", 1);
        return HYB_OK;
    }
    if (!strcmp(ty, "ByteFallback")) {
        t->dec_mode = TOK_DEC_SPM;
        t->dec_byte_fallback = 1;
        return HYB_OK;
    }
    if (!strcmp(ty, "Fuse")) return HYB_OK; /* pieces are always fused */
    if (!strcmp(ty, "Replace")) {
        const char *from = jstr(cJSON_GetObjectItemCaseSensitive(d, "pattern"), "String");
        const char *to = jstr(d, "content");
        if (from && to && !strcmp(from, "\xE2\x96\x81") && !strcmp(to, " ")) {
            t->dec_mode = TOK_DEC_SPM;
            return HYB_OK;
        }
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "%s: decoder Replace: only \"\xE2\x96\x81\" -> \" \" is supported",
                             c->name);
    }
    if (!strcmp(ty, "Strip")) {
        const char *content = jstr(d, "content");
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(d, "start");
        const cJSON *stop = cJSON_GetObjectItemCaseSensitive(d, "stop");
        if (!content || strcmp(content, " ") || !cJSON_IsNumber(start) || start->valueint > 1 ||
            (cJSON_IsNumber(stop) && stop->valueint != 0))
            return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                 "%s: decoder Strip: only stripping one leading \" \" is supported",
                                 c->name);
        t->dec_strip_space = start->valueint == 1;
        return HYB_OK;
    }
    if (!strcmp(ty, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(d, "decoders"), *it;
        if (!cJSON_IsArray(arr))
            return hyb_error_set(HYB_ERR_FORMAT, "%s: decoder.decoders is not an array", c->name);
        cJSON_ArrayForEach(it, arr) HYB_TRY(load_decoder(c, it));
        return HYB_OK;
    }
    return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: unsupported decoder type \"%s\"", c->name, ty);
}

static int push_special(jctx *c, int prefix, int32_t id) {
    hyb_tokenizer *t = c->t;
    if (id < 0 || id >= t->n_vocab)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: post_processor names id %d out of range", c->name,
                             (int)id);
    int32_t **arr = prefix ? &t->prefix_ids : &t->suffix_ids;
    int *n = prefix ? &t->n_prefix : &t->n_suffix;
    int32_t *na = realloc(*arr, (size_t)(*n + 1) * sizeof *na);
    if (!na) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    na[(*n)++] = id;
    *arr = na;
    return HYB_OK;
}

static int load_post(jctx *c, const cJSON *p) {
    if (!p || cJSON_IsNull(p)) return HYB_OK;
    const char *ty = jtype(p);
    if (!ty) return hyb_error_set(HYB_ERR_FORMAT, "%s: post_processor has no \"type\"", c->name);
    if (!strcmp(ty, "ByteLevel")) return HYB_OK;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(p, "processors"), *it;
        if (!cJSON_IsArray(arr))
            return hyb_error_set(HYB_ERR_FORMAT, "%s: post_processor.processors is not an array",
                                 c->name);
        cJSON_ArrayForEach(it, arr) HYB_TRY(load_post(c, it));
        return HYB_OK;
    }
    if (!strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(p, "cls");
        const cJSON *sep = cJSON_GetObjectItemCaseSensitive(p, "sep");
        const cJSON *ci = cJSON_GetArrayItem(cls, 1), *si = cJSON_GetArrayItem(sep, 1);
        if (!is_id(ci) || !is_id(si))
            return hyb_error_set(HYB_ERR_FORMAT, "%s: %s needs cls and sep [token, integer id]", c->name,
                                 ty);
        HYB_TRY(push_special(c, 1, (int32_t)ci->valueint));
        return push_special(c, 0, (int32_t)si->valueint);
    }
    if (!strcmp(ty, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single"), *it;
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
        int seen_a = 0;
        cJSON_ArrayForEach(it, single) {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
                seen_a = 1;
                continue;
            }
            const char *name = jstr(st, "id");
            const cJSON *def = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids"), *idv;
            if (!name || !cJSON_IsArray(ids))
                return hyb_error_set(HYB_ERR_FORMAT,
                                     "%s: post_processor TemplateProcessing: special token %s has "
                                     "no ids in special_tokens",
                                     c->name, name ? name : "(unnamed)");
            cJSON_ArrayForEach(idv, ids) {
                if (!is_id(idv))
                    return hyb_error_set(HYB_ERR_FORMAT,
                                         "%s: post_processor: %s ids are not integer ids",
                                         c->name, name);
                HYB_TRY(push_special(c, !seen_a, (int32_t)idv->valueint));
            }
        }
        return HYB_OK;
    }
    return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: unsupported post_processor type \"%s\"", c->name,
                         ty);
}

static void line_col(const char *s, size_t len, const char *at, int *line, int *col) {
    *line = 1, *col = 1;
    for (const char *p = s; p < at && p < s + len; p++) {
        if (*p == '\n')
            (*line)++, *col = 1;
        else
            (*col)++;
    }
}

static hyb_tokenizer *load_root(jctx *c, const cJSON *root) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        hyb_error_set(HYB_ERR_FORMAT, "%s: no \"model\" object", c->name);
        return NULL;
    }
    const char *mty = jtype(model);
    if (mty && strcmp(mty, "BPE")) {
        hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: unsupported model type \"%s\" (only BPE)", c->name,
                      mty);
        return NULL;
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        hyb_error_set(HYB_ERR_FORMAT, "%s: model needs a \"vocab\" object and a \"merges\" array",
                      c->name);
        return NULL;
    }
    if (added && !cJSON_IsArray(added)) {
        hyb_error_set(HYB_ERR_FORMAT, "%s: \"added_tokens\" is not an array", c->name);
        return NULL;
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) {
        hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: BPE dropout %g is not supported", c->name,
                      dropout->valuedouble);
        return NULL;
    }
    const char *cont = jstr(model, "continuing_subword_prefix");
    const char *eow = jstr(model, "end_of_word_suffix");
    if ((cont && *cont) || (eow && *eow)) {
        hyb_error_set(HYB_ERR_UNSUPPORTED,
                      "%s: BPE continuing_subword_prefix/end_of_word_suffix are not supported",
                      c->name);
        return NULL;
    }
    /* vocab size: the largest id + 1 over vocab and added tokens */
    long maxid = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!is_id(it)) {
            hyb_error_set(HYB_ERR_FORMAT,
                          "%s: model.vocab[\"%s\"] = %s is not a valid id (an integer in [0, "
                          "1e8])",
                          c->name, it->string ? it->string : "",
                          cJSON_IsNumber(it) ? "a number" : "not a number");
            return NULL;
        }
        if (it->valueint > maxid) maxid = it->valueint;
    }
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!is_id(id) || !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(it, "content"))) {
            hyb_error_set(HYB_ERR_FORMAT,
                          "%s: added_tokens entry without a valid id (an integer in [0, 1e8]) and "
                          "content",
                          c->name);
            return NULL;
        }
        if (id->valueint > maxid) maxid = id->valueint;
    }
    long n_entries = (long)cJSON_GetArraySize(vocab) + (long)cJSON_GetArraySize(added);
    if (maxid >= 2 * n_entries + 1024) { /* holes are fine, a vocab of mostly holes is not */
        hyb_error_set(HYB_ERR_FORMAT, "%s: token id %ld is far beyond the %ld tokens listed",
                      c->name, maxid, n_entries);
        return NULL;
    }
    hyb_tokenizer *t = tok_alloc((int32_t)(maxid + 1));
    if (!t) return NULL;
    c->t = t;
    int rc = HYB_OK;
    cJSON_ArrayForEach(it, vocab) {
        if ((rc = tok_set_token(t, (int32_t)it->valueint, it->string, strlen(it->string),
                                HYB_TOKEN_NORMAL, 1)) != HYB_OK)
            goto fail;
    }
    cJSON_ArrayForEach(it, added) {
        const char *content = jstr(it, "content");
        int32_t id = (int32_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valueint;
        int special = jbool(it, "special", 0);
        if ((rc = tok_set_token(t, id, content, strlen(content),
                                special ? HYB_TOKEN_CONTROL : HYB_TOKEN_USER_DEFINED, 0)) != HYB_OK)
            goto fail;
        if ((rc = tok_add_added(t, content, strlen(content), id, special, jbool(it, "lstrip", 0),
                                jbool(it, "rstrip", 0))) != HYB_OK)
            goto fail;
    }
    int32_t rank = 0;
    char where[300];
    snprintf(where, sizeof where, "%s: model.merges", c->name);
    cJSON_ArrayForEach(it, merges) {
        if (cJSON_IsString(it)) {
            const char *m = it->valuestring, *sp = strchr(m, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                rc = hyb_error_set(HYB_ERR_FORMAT, "%s[%d]: \"%s\" is not \"a b\"", where,
                                   (int)rank, m);
                goto fail;
            }
            rc = tok_add_merge(t, m, (size_t)(sp - m), sp + 1, strlen(sp + 1), rank, where);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            const char *a = cJSON_GetArrayItem(it, 0)->valuestring;
            const char *b = cJSON_GetArrayItem(it, 1)->valuestring;
            rc = tok_add_merge(t, a, strlen(a), b, strlen(b), rank, where);
        } else {
            rc = hyb_error_set(HYB_ERR_FORMAT, "%s[%d]: neither \"a b\" nor [\"a\", \"b\"]", where,
                               (int)rank);
        }
        if (rc != HYB_OK) goto fail;
        rank++;
    }
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    const char *unk = jstr(model, "unk_token");
    if (unk) {
        int32_t uid;
        if (!tok_strmap_get(&t->vocab, unk, strlen(unk), &uid)) {
            rc = hyb_error_set(HYB_ERR_FORMAT, "%s: model.unk_token \"%s\" is not in the vocab",
                               c->name, unk);
            goto fail;
        }
        t->unk_id = t->enc_unk_id = uid; /* HF emits model.unk_token for what the vocab lacks */
    }
    if ((rc = load_normalizer(c, cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                              "normalizer")) ||
        (rc = load_pretok(c, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                          "pre_tokenizer")) ||
        (rc = load_decoder(c, cJSON_GetObjectItemCaseSensitive(root, "decoder"))) ||
        (rc = load_post(c, cJSON_GetObjectItemCaseSensitive(root, "post_processor"))))
        goto fail;
    /* bos/eos: the template's first prefix / last suffix token, else common names */
    if (t->n_prefix) t->bos_id = t->prefix_ids[0];
    if (t->n_suffix) t->eos_id = t->suffix_ids[t->n_suffix - 1];
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<|endoftext|>", "<bos>"};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"};
    for (int k = 0; k < 4 && t->bos_id < 0; k++)
        t->bos_id = hyb_tokenizer_token_id(t, bos_names[k]);
    for (int k = 0; k < 4 && t->eos_id < 0; k++)
        t->eos_id = hyb_tokenizer_token_id(t, eos_names[k]);
    if ((rc = tok_finish(t)) != HYB_OK) goto fail;
    return t;
fail:
    hyb_tokenizer_free(t);
    c->t = NULL;
    return NULL;
}

hyb_tokenizer *hyb_tokenizer_load_json_mem(const char *json, size_t len, const char *name) {
    if (!json) {
        hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_load_json_mem: NULL text");
        return NULL;
    }
    jctx c = {name ? name : "tokenizer.json", NULL};
    /* A \u0000 escape: cJSON would cut the string there (a token "a\u0000b" would read as "a");
     * no real tokenizer has a NUL in a token, so say where it is. Only strings hold backslashes. */
    for (size_t i = 0; i + 5 < len; i++) {
        if (json[i] != '\\') continue;
        if (json[i + 1] == 'u' && !memcmp(json + i + 2, "0000", 4)) {
            int line, col;
            line_col(json, len, json + i, &line, &col);
            hyb_error_set(HYB_ERR_FORMAT,
                          "%s:%d:%d: a string holds \\u0000 (a NUL byte); tokens and keys "
                          "with NUL bytes are not supported",
                          c.name, line, col);
            return NULL;
        }
        i++; /* skip the escaped character (\\ too) */
    }
    const char *nul = memchr(json, 0, len);
    if (nul) {
        int line, col;
        line_col(json, len, nul, &line, &col);
        hyb_error_set(HYB_ERR_FORMAT, "%s:%d:%d: a NUL byte in the JSON text", c.name, line, col);
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        int line, col;
        const char *at = end ? end : cJSON_GetErrorPtr();
        if (!at || at < json || at > json + len) at = json + len;
        line_col(json, len, at, &line, &col);
        hyb_error_set(HYB_ERR_FORMAT, "%s:%d:%d: invalid JSON", c.name, line, col);
        return NULL;
    }
    hyb_tokenizer *t = NULL;
    if (!cJSON_IsObject(root))
        hyb_error_set(HYB_ERR_FORMAT, "%s:1:1: top level is not an object", c.name);
    else
        t = load_root(&c, root);
    cJSON_Delete(root);
    return t;
}

hyb_tokenizer *hyb_tokenizer_load_json(const char *path) {
    if (!path) {
        hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_load_json: NULL path");
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        hyb_error_set(HYB_ERR_IO, "%s: cannot open", path);
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory reading", path);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        hyb_error_set(HYB_ERR_IO, "%s: read error", path);
        return NULL;
    }
    hyb_tokenizer *t = hyb_tokenizer_load_json_mem(buf, n, path);
    free(buf);
    if (t && tok_apply_hf_config(t, path) != HYB_OK) { /* tokenizer_config.json beside it */
        hyb_tokenizer_free(t);
        return NULL;
    }
    return t;
}
