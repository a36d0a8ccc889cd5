/* core/tokenizer/tokenizer.c: BPE tokenizer core: building, encoding (added tokens, normalizers,
 * pre-tokenizers, rank-ordered BPE with a priority queue and a word cache) and decoding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

const char *const tok_regex_gpt2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char *const tok_regex_llama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const char *const tok_regex_tekken =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

#define CACHE_MAX_WORD 256
#define CACHE_MAX_ENTRIES (1u << 17)

/* ---- hashing ---------------------------------------------------------------------------------*/

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static int strmap_grow(tok_strmap *m) {
    size_t ncap = m->cap ? m->cap * 2 : 64;
    char **nk = calloc(ncap, sizeof *nk);
    uint32_t *nl = calloc(ncap, sizeof *nl);
    int32_t *nv = calloc(ncap, sizeof *nv);
    if (!nk || !nl || !nv) {
        free(nk), free(nl), free(nv);
        return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory (hash map of %zu)", ncap);
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t j = hash_bytes(m->keys[i], m->klen[i]) & (ncap - 1);
        while (nk[j])
            j = (j + 1) & (ncap - 1);
        nk[j] = m->keys[i], nl[j] = m->klen[i], nv[j] = m->vals[i];
    }
    free(m->keys), free(m->klen), free(m->vals);
    m->keys = nk, m->klen = nl, m->vals = nv, m->cap = ncap;
    return HYB_OK;
}

int tok_strmap_get(const tok_strmap *m, const char *k, size_t len, int32_t *val) {
    if (!m->cap) return 0;
    size_t j = hash_bytes(k, len) & (m->cap - 1);
    while (m->keys[j]) {
        if (m->klen[j] == len && memcmp(m->keys[j], k, len) == 0) {
            *val = m->vals[j];
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

/* Insert or overwrite. */
int tok_strmap_put(tok_strmap *m, const char *k, size_t len, int32_t val) {
    if ((m->n + 1) * 2 > m->cap) HYB_TRY(strmap_grow(m));
    size_t j = hash_bytes(k, len) & (m->cap - 1);
    while (m->keys[j]) {
        if (m->klen[j] == len && memcmp(m->keys[j], k, len) == 0) {
            m->vals[j] = val;
            return HYB_OK;
        }
        j = (j + 1) & (m->cap - 1);
    }
    char *c = malloc(len + 1);
    if (!c) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(c, k, len);
    c[len] = 0;
    m->keys[j] = c, m->klen[j] = (uint32_t)len, m->vals[j] = val;
    m->n++;
    return HYB_OK;
}

void tok_strmap_free(tok_strmap *m) {
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys), free(m->klen), free(m->vals);
    memset(m, 0, sizeof *m);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int pairmap_grow(tok_pairmap *m) {
    size_t ncap = m->cap ? m->cap * 2 : 1024;
    uint64_t *nk = malloc(ncap * sizeof *nk);
    int32_t *nr = malloc(ncap * sizeof *nr), *ni = malloc(ncap * sizeof *ni);
    if (!nk || !nr || !ni) {
        free(nk), free(nr), free(ni);
        return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory (merge table of %zu)", ncap);
    }
    memset(nk, 0xff, ncap * sizeof *nk);
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == UINT64_MAX) continue;
        size_t j = hash_u64(m->keys[i]) & (ncap - 1);
        while (nk[j] != UINT64_MAX)
            j = (j + 1) & (ncap - 1);
        nk[j] = m->keys[i], nr[j] = m->rank[i], ni[j] = m->id[i];
    }
    free(m->keys), free(m->rank), free(m->id);
    m->keys = nk, m->rank = nr, m->id = ni, m->cap = ncap;
    return HYB_OK;
}

static inline int pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank,
                              int32_t *id) {
    if (!m->cap) return 0;
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t j = hash_u64(k) & (m->cap - 1);
    while (m->keys[j] != UINT64_MAX) {
        if (m->keys[j] == k) {
            *rank = m->rank[j], *id = m->id[j];
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

/* Keeps the first (lowest-rank) entry for a pair, as HF does when a merge is listed twice. */
static int pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    if ((m->n + 1) * 2 > m->cap) HYB_TRY(pairmap_grow(m));
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t j = hash_u64(k) & (m->cap - 1);
    while (m->keys[j] != UINT64_MAX) {
        if (m->keys[j] == k) {
            if (rank < m->rank[j]) m->rank[j] = rank, m->id[j] = id;
            return HYB_OK;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->keys[j] = k, m->rank[j] = rank, m->id[j] = id;
    m->n++;
    return HYB_OK;
}

/* ---- UTF-8 and the GPT-2 byte table ----------------------------------------------------------*/

/* Length of the UTF-8 character at s (1 for an invalid or truncated sequence). */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t l = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (l > n) return 1;
    for (size_t i = 1; i < l; i++)
        if ((s[i] & 0xC0) != 0x80) return 1;
    return l;
}

static size_t utf8_put(char *o, unsigned cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 63));
        return 2;
    }
    o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | ((cp >> 6) & 63));
    o[2] = (char)(0x80 | (cp & 63));
    return 3;
}

/* byte -> code point of its printable stand-in, and the inverse (code points < 324). */
static unsigned bl_cp[256];
static int bl_inv[324];
static char bl_utf8[256][2];
static unsigned char bl_utf8_len[256];
static pthread_once_t bl_once = PTHREAD_ONCE_INIT;

static void bl_init(void) {
    unsigned n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        bl_cp[b] = keep ? (unsigned)b : 256 + n++;
    }
    for (int i = 0; i < 324; i++)
        bl_inv[i] = -1;
    for (int b = 0; b < 256; b++) {
        bl_inv[bl_cp[b]] = b;
        bl_utf8_len[b] = (unsigned char)utf8_put(bl_utf8[b], bl_cp[b]);
    }
}

/* Decode a byte-level token text into bytes. Returns the length, or -1 if some character is not
 * in the byte table (then the token's own UTF-8 is its bytes, as HF's ByteLevel decoder does). */
static long bl_decode(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)s + i;
        size_t l = utf8_len(u, n - i);
        unsigned cp;
        if (l == 1 && u[0] < 0x80)
            cp = u[0];
        else if (l == 2)
            cp = (unsigned)(u[0] & 31) << 6 | (u[1] & 63);
        else
            return -1;
        if (cp >= 324 || bl_inv[cp] < 0) return -1;
        out[o++] = (char)bl_inv[cp];
        i += l;
    }
    return (long)o;
}

/* ---- building --------------------------------------------------------------------------------*/

hyb_tokenizer *tok_alloc(int32_t n_vocab) {
    pthread_once(&bl_once, bl_init);
    if (n_vocab <= 0) {
        hyb_error_set(HYB_ERR_FORMAT, "tokenizer: empty vocabulary");
        return NULL;
    }
    hyb_tokenizer *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->n_vocab = n_vocab;
    t->text = calloc((size_t)n_vocab, sizeof *t->text);
    t->piece = calloc((size_t)n_vocab, sizeof *t->piece);
    t->piece_len = calloc((size_t)n_vocab, sizeof *t->piece_len);
    t->type = calloc((size_t)n_vocab, sizeof *t->type);
    pthread_mutex_init(&t->cache_lock, NULL);
    if (!t->text || !t->piece || !t->piece_len || !t->type) {
        hyb_tokenizer_free(t);
        goto oom;
    }
    for (int32_t i = 0; i < n_vocab; i++)
        t->type[i] = HYB_TOKEN_UNUSED;
    t->unk_id = t->bos_id = t->eos_id = t->pad_id = t->enc_unk_id = -1;
    return t;
oom:
    hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory (vocab of %d)", (int)n_vocab);
    return NULL;
}

int tok_set_token(hyb_tokenizer *t, int32_t id, const char *text, size_t len, int type,
                  int in_model) {
    if (id < 0 || id >= t->n_vocab)
        return hyb_error_set(HYB_ERR_FORMAT, "tokenizer: token id %d out of range [0, %d)", (int)id,
                             (int)t->n_vocab);
    char *c = malloc(len + 1);
    if (!c) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(c, text, len);
    c[len] = 0;
    free(t->text[id]);
    t->text[id] = c;
    t->type[id] = type;
    if (in_model) HYB_TRY(tok_strmap_put(&t->vocab, text, len, id));
    return HYB_OK;
}

int tok_add_merge(hyb_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                  int32_t rank, const char *where) {
    int32_t ia, ib, in;
    if (!tok_strmap_get(&t->vocab, a, alen, &ia))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: merge %d names unknown token \"%.*s\"", where,
                             (int)rank, (int)alen, a);
    if (!tok_strmap_get(&t->vocab, b, blen, &ib))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: merge %d names unknown token \"%.*s\"", where,
                             (int)rank, (int)blen, b);
    char stackbuf[256];
    char *m = alen + blen <= sizeof stackbuf ? stackbuf : malloc(alen + blen);
    if (!m) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(m, a, alen);
    memcpy(m + alen, b, blen);
    int found = tok_strmap_get(&t->vocab, m, alen + blen, &in);
    if (m != stackbuf) free(m);
    if (!found)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: merge %d (\"%.*s\" \"%.*s\") makes a token not in the vocab",
                             where, (int)rank, (int)alen, a, (int)blen, b);
    return pairmap_put(&t->merges, ia, ib, rank, in);
}

typedef struct {
    float score;
    int32_t id;
} score_id;

static int cmp_score_desc(const void *x, const void *y) {
    const score_id *a = x, *b = y;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

int tok_merges_from_scores(hyb_tokenizer *t, const float *scores) {
    score_id *order = malloc((size_t)t->n_vocab * sizeof *order);
    if (!order) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    for (int32_t i = 0; i < t->n_vocab; i++)
        order[i].score = scores[i], order[i].id = i;
    qsort(order, (size_t)t->n_vocab, sizeof *order, cmp_score_desc);
    int rc = HYB_OK;
    for (int32_t r = 0; r < t->n_vocab && rc == HYB_OK; r++) {
        int32_t id = order[r].id;
        if (t->type[id] != HYB_TOKEN_NORMAL && t->type[id] != HYB_TOKEN_USER_DEFINED) continue;
        const char *s = t->text[id];
        size_t n = strlen(s);
        for (size_t k = 1; k < n; k++) {
            int32_t ia, ib;
            if ((s[k] & 0xC0) == 0x80) continue; /* split on character boundaries */
            if (tok_strmap_get(&t->vocab, s, k, &ia) &&
                tok_strmap_get(&t->vocab, s + k, n - k, &ib))
                if ((rc = pairmap_put(&t->merges, ia, ib, r, id)) != HYB_OK) break;
        }
    }
    free(order);
    return rc;
}

int tok_add_added(hyb_tokenizer *t, const char *text, size_t len, int32_t id, int special,
                  int lstrip, int rstrip) {
    if (len == 0) return HYB_OK;
    tok_added *na = realloc(t->added, (size_t)(t->n_added + 1) * sizeof *na);
    if (!na) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    t->added = na;
    tok_added *a = &t->added[t->n_added];
    a->text = malloc(len + 1);
    if (!a->text) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(a->text, text, len);
    a->text[len] = 0;
    a->len = len, a->id = id, a->special = special, a->lstrip = lstrip, a->rstrip = rstrip;
    t->n_added++;
    return HYB_OK;
}

int tok_add_norm(hyb_tokenizer *t, int kind, const char *a, size_t alen, const char *b,
                 size_t blen) {
    tok_norm *nn = realloc(t->norms, (size_t)(t->n_norms + 1) * sizeof *nn);
    if (!nn) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    t->norms = nn;
    tok_norm *n = &t->norms[t->n_norms];
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->a = malloc(alen + 1), n->b = malloc(blen + 1);
    if (!n->a || !n->b) {
        free(n->a), free(n->b);
        return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    }
    memcpy(n->a, a, alen), n->a[alen] = 0, n->alen = alen;
    if (b) memcpy(n->b, b, blen);
    n->b[blen] = 0, n->blen = blen;
    t->n_norms++;
    return HYB_OK;
}

static tok_pretok *push_pretok(hyb_tokenizer *t) {
    tok_pretok *np = realloc(t->pretoks, (size_t)(t->n_pretoks + 1) * sizeof *np);
    if (!np) {
        hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
        return NULL;
    }
    t->pretoks = np;
    tok_pretok *p = &t->pretoks[t->n_pretoks++];
    memset(p, 0, sizeof *p);
    return p;
}

static pcre2_code *compile_re(const char *pattern, size_t plen, const char *where) {
    int err;
    PCRE2_SIZE off;
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)pattern, plen, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF,
                      &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        hyb_error_set(HYB_ERR_FORMAT, "%s: regex \"%.*s\" does not compile at offset %zu: %s",
                      where, (int)plen, pattern, (size_t)off, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: falls back to the interpreter */
    return re;
}

int tok_add_split(hyb_tokenizer *t, const char *pattern, size_t plen, int behavior, int invert,
                  const char *where) {
    pcre2_code *re = compile_re(pattern, plen, where);
    if (!re) return HYB_ERR_FORMAT;
    tok_pretok *p = push_pretok(t);
    if (!p) {
        pcre2_code_free(re);
        return HYB_ERR_NOMEM;
    }
    p->kind = TOK_PT_SPLIT, p->re = re, p->behavior = behavior, p->invert = invert;
    if (!(p->pattern = malloc(plen + 1))) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(p->pattern, pattern, plen);
    p->pattern[plen] = 0;
    return HYB_OK;
}

int tok_add_bytelevel(hyb_tokenizer *t, int add_prefix_space, int use_regex) {
    pcre2_code *re = NULL;
    if (use_regex && !(re = compile_re(tok_regex_gpt2, strlen(tok_regex_gpt2), "ByteLevel")))
        return HYB_ERR_FORMAT;
    tok_pretok *p = push_pretok(t);
    if (!p) {
        pcre2_code_free(re);
        return HYB_ERR_NOMEM;
    }
    p->kind = TOK_PT_BYTELEVEL, p->re = re, p->add_prefix_space = add_prefix_space;
    t->byte_level = 1;
    return HYB_OK;
}

int tok_add_metaspace(hyb_tokenizer *t, int prepend_scheme, int split) {
    tok_pretok *p = push_pretok(t);
    if (!p) return HYB_ERR_NOMEM;
    p->kind = TOK_PT_METASPACE, p->prepend_scheme = prepend_scheme, p->split = split;
    return HYB_OK;
}

static int cmp_added_len(const void *x, const void *y) {
    const tok_added *a = x, *b = y;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int hexval(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                  : -1;
}

/* Bytes of `s` after replacing every `a` by `b` (the normalizer's Replace). */
static size_t replace_str(const char *s, size_t n, const tok_norm *r, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (r->alen && i + r->alen <= n && memcmp(s + i, r->a, r->alen) == 0) {
            if (out) memcpy(out + o, r->b, r->blen);
            o += r->blen, i += r->alen;
        } else {
            if (out) out[o] = s[i];
            o++, i++;
        }
    }
    return o;
}

/* Worst-case ids per input byte. Every id covers at least one byte of the final normalized,
 * pre-tokenized text, so bound that text: Replace a -> b grows it by at most max(1, |b|/|a|),
 * Prepend adds its bytes once per segment (segments <= len + 1), ByteLevel's prefix space at most
 * doubles it (one per piece), Metaspace at most triples it (" " -> "▁") and adds 3 bytes per
 * piece. */
static int compute_bound(hyb_tokenizer *t) {
    double mult = 1, add = 0;
    char *pre = NULL; /* what the Prepends put before a segment, through the later Replaces */
    size_t npre = 0;
    for (int i = 0; i < t->n_norms; i++) {
        const tok_norm *nm = &t->norms[i];
        size_t nn =
            nm->kind == TOK_NORM_PREPEND ? nm->alen + npre : replace_str(pre, npre, nm, NULL);
        char *np = malloc(nn + 1);
        if (!np) {
            free(pre);
            return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
        }
        if (nm->kind == TOK_NORM_PREPEND) {
            memcpy(np, nm->a, nm->alen);
            if (npre) memcpy(np + nm->alen, pre, npre);
        } else {
            replace_str(pre, npre, nm, np);
            double r = nm->alen ? (double)nm->blen / (double)nm->alen : 1;
            mult *= r > 1 ? r : 1;
        }
        free(pre);
        pre = np, npre = nn;
    }
    free(pre);
    add = (double)npre;
    for (int i = 0; i < t->n_pretoks; i++) {
        double f = t->pretoks[i].kind == TOK_PT_METASPACE                                     ? 6
                   : t->pretoks[i].kind == TOK_PT_BYTELEVEL && t->pretoks[i].add_prefix_space ? 2
                                                                                              : 1;
        mult *= f, add *= f;
    }
    t->bound_mult = mult, t->bound_add = add;
    return HYB_OK;
}

int tok_finish(hyb_tokenizer *t) {
    HYB_TRY(compute_bound(t));
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (!t->text[i]) {
            t->text[i] = calloc(1, 1);
            if (!t->text[i]) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
        }
        const char *s = t->text[i];
        size_t n = strlen(s);
        char *p = malloc(n + 1);
        if (!p) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
        long pl = -1;
        if (t->dec_mode == TOK_DEC_BYTE_LEVEL) pl = bl_decode(s, n, p);
        if (t->dec_mode == TOK_DEC_SPM) {
            int hi = n == 6 ? hexval(s[3]) : -1, lo = n == 6 ? hexval(s[4]) : -1;
            if (t->dec_byte_fallback && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
                hi >= 0 && lo >= 0) {
                p[0] = (char)(hi * 16 + lo);
                pl = 1;
            } else { /* "▁" (E2 96 81) -> ' ' */
                size_t o = 0;
                for (size_t k = 0; k < n;) {
                    if (k + 3 <= n && memcmp(s + k, "\xE2\x96\x81", 3) == 0)
                        p[o++] = ' ', k += 3;
                    else
                        p[o++] = s[k++];
                }
                pl = (long)o;
            }
        }
        if (pl < 0) memcpy(p, s, n), pl = (long)n;
        p[pl] = 0;
        t->piece[i] = p, t->piece_len[i] = (uint32_t)pl;
    }
    for (int b = 0; b < 256; b++) {
        t->byte_id[b] = -1;
        if (!tok_strmap_get(&t->vocab, bl_utf8[b], bl_utf8_len[b], &t->byte_id[b]))
            t->byte_id[b] = -1;
        char hex[8];
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        if (!tok_strmap_get(&t->vocab, hex, 6, &t->bytefb_id[b])) t->bytefb_id[b] = -1;
    }
    if (t->n_added > 1) qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added_len);
    memset(t->added_first, 0, sizeof t->added_first);
    for (int k = 0; k < t->n_added; k++)
        t->added_first[(unsigned char)t->added[k].text[0]] = 1;
    return HYB_OK;
}

void hyb_tokenizer_free(hyb_tokenizer *t) {
    if (!t) return;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (t->text) free(t->text[i]);
        if (t->piece) free(t->piece[i]);
    }
    free(t->text), free(t->piece), free(t->piece_len), free(t->type);
    tok_strmap_free(&t->vocab);
    free(t->merges.keys), free(t->merges.rank), free(t->merges.id);
    for (int i = 0; i < t->n_norms; i++)
        free(t->norms[i].a), free(t->norms[i].b);
    free(t->norms);
    for (int i = 0; i < t->n_pretoks; i++)
        pcre2_code_free(t->pretoks[i].re), free(t->pretoks[i].pattern);
    free(t->pretoks);
    for (int i = 0; i < t->n_added; i++)
        free(t->added[i].text);
    free(t->added);
    free(t->prefix_ids), free(t->suffix_ids);
    tok_strmap_free(&t->cache);
    free(t->cache_ids);
    pthread_mutex_destroy(&t->cache_lock);
    free(t);
}

/* ---- building from a spec --------------------------------------------------------------------*/

static int find_space(const char *s) {
    const char *sp = strchr(s, ' ');
    return sp ? (int)(sp - s) : -1;
}

hyb_tokenizer *hyb_tokenizer_new_bpe(const hyb_tokenizer_spec *spec) {
    if (!spec || !spec->vocab || spec->n_vocab <= 0 || (spec->n_merges > 0 && !spec->merges)) {
        hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_new_bpe: spec needs a vocab (and merges)");
        return NULL;
    }
    if (spec->model != HYB_TOK_BYTE_LEVEL && spec->model != HYB_TOK_SPM) {
        hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_new_bpe: unknown model kind %d", spec->model);
        return NULL;
    }
    hyb_tokenizer *t = tok_alloc(spec->n_vocab);
    if (!t) return NULL;
    int rc = HYB_OK;
    for (int32_t i = 0; i < spec->n_vocab && rc == HYB_OK; i++) {
        const char *s = spec->vocab[i] ? spec->vocab[i] : "";
        int type = spec->token_types ? spec->token_types[i] : HYB_TOKEN_NORMAL;
        if (type < HYB_TOKEN_NORMAL || type > HYB_TOKEN_BYTE) {
            rc = hyb_error_set(HYB_ERR_ARG, "tokenizer spec: token %d has type %d (want 1-6)",
                               (int)i, type);
            break;
        }
        rc = tok_set_token(t, i, s, strlen(s), type, 1);
        /* control, unknown and user-defined tokens are matched in text (HF: added tokens) */
        if (rc == HYB_OK && (type == HYB_TOKEN_CONTROL || type == HYB_TOKEN_UNKNOWN ||
                             type == HYB_TOKEN_USER_DEFINED))
            rc = tok_add_added(t, s, strlen(s), i, type != HYB_TOKEN_USER_DEFINED, 0, 0);
    }
    for (int32_t r = 0; r < spec->n_merges && rc == HYB_OK; r++) {
        const char *m = spec->merges[r];
        int sp = m ? find_space(m) : -1;
        if (sp < 0) {
            rc = hyb_error_set(HYB_ERR_FORMAT, "tokenizer spec: merge %d \"%s\" is not \"a b\"",
                               (int)r, m ? m : "(null)");
            break;
        }
        rc = tok_add_merge(t, m, (size_t)sp, m + sp + 1, strlen(m + sp + 1), r, "tokenizer spec");
    }
    if (rc == HYB_OK && spec->model == HYB_TOK_SPM && !spec->merges && spec->scores)
        rc = tok_merges_from_scores(t, spec->scores);
    int32_t ids[4] = {spec->bos_id, spec->eos_id, spec->unk_id, spec->pad_id};
    for (int k = 0; k < 4 && rc == HYB_OK; k++)
        if (ids[k] < -1 || ids[k] >= spec->n_vocab)
            rc = hyb_error_set(HYB_ERR_ARG, "tokenizer spec: special id %d out of range [0, %d)",
                               (int)ids[k], (int)spec->n_vocab);
    if (rc != HYB_OK) goto fail;
    t->bos_id = spec->bos_id, t->eos_id = spec->eos_id, t->unk_id = spec->unk_id;
    t->pad_id = spec->pad_id;
    /* A byte-level BPE (GGUF "gpt2") encodes with no unknown token, as HF does: SmolLM2's
     * tokenizer.json has model.unk_token null, while its GGUF's unknown_token_id (0,
     * <|endoftext|>) comes from tokenizer_config.json. A byte its vocabulary lacks (SmolLM2: 0x04,
     * 0xf1, ...) is dropped, never turned into a special token. SPM keeps its <unk> (sentencepiece
     * emits it), unless that id is a control token. */
    t->enc_unk_id = spec->model == HYB_TOK_SPM ? spec->unk_id : -1;
    if (t->enc_unk_id >= 0 && t->type[t->enc_unk_id] == HYB_TOKEN_CONTROL) t->enc_unk_id = -1;
    t->ignore_merges = spec->ignore_merges;
    if (spec->model == HYB_TOK_BYTE_LEVEL) {
        t->dec_mode = TOK_DEC_BYTE_LEVEL;
        switch (spec->pretok) {
        case HYB_PRETOK_NONE:
            rc = tok_add_bytelevel(t, 0, 0);
            break;
        case HYB_PRETOK_GPT2:
            rc = tok_add_bytelevel(t, 0, 1);
            break;
        case HYB_PRETOK_LLAMA3:
            rc = tok_add_split(t, tok_regex_llama3, strlen(tok_regex_llama3), TOK_SPLIT_ISOLATED, 0,
                               "llama3 pre-tokenizer");
            if (rc == HYB_OK) rc = tok_add_bytelevel(t, 0, 0);
            break;
        case HYB_PRETOK_TEKKEN:
            rc = tok_add_split(t, tok_regex_tekken, strlen(tok_regex_tekken), TOK_SPLIT_ISOLATED, 0,
                               "tekken pre-tokenizer");
            if (rc == HYB_OK) rc = tok_add_bytelevel(t, 0, 0);
            break;
        case HYB_PRETOK_SMOLLM:
            rc = tok_add_split(t, "\\p{N}", 5, TOK_SPLIT_ISOLATED, 0, "Digits");
            if (rc == HYB_OK) rc = tok_add_bytelevel(t, 0, 1);
            break;
        default:
            rc = hyb_error_set(HYB_ERR_ARG, "tokenizer spec: unknown pre-tokenizer %d",
                               spec->pretok);
        }
    } else {
        t->dec_mode = TOK_DEC_SPM;
        t->byte_fallback = t->dec_byte_fallback = spec->byte_fallback;
        t->fuse_unk = 1;
        if (spec->add_prefix_space) {
            rc = tok_add_norm(t, TOK_NORM_PREPEND, "\xE2\x96\x81", 3, NULL, 0);
            t->dec_strip_space = 1;
        }
        if (rc == HYB_OK) rc = tok_add_norm(t, TOK_NORM_REPLACE, " ", 1, "\xE2\x96\x81", 3);
        if (rc == HYB_OK && spec->pretok != HYB_PRETOK_NONE)
            rc = hyb_error_set(HYB_ERR_ARG, "tokenizer spec: SPM models take no pre-tokenizer");
    }
    if (rc != HYB_OK) goto fail;
    if (spec->add_bos && spec->bos_id >= 0) {
        t->prefix_ids = malloc(sizeof(int32_t));
        if (!t->prefix_ids) goto oom;
        t->prefix_ids[0] = spec->bos_id, t->n_prefix = 1;
    }
    if (spec->add_eos && spec->eos_id >= 0) {
        t->suffix_ids = malloc(sizeof(int32_t));
        if (!t->suffix_ids) goto oom;
        t->suffix_ids[0] = spec->eos_id, t->n_suffix = 1;
    }
    if (tok_finish(t) != HYB_OK) goto fail;
    return t;
oom:
    hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
fail:
    hyb_tokenizer_free(t);
    return NULL;
}

/* ---- encoding --------------------------------------------------------------------------------*/

typedef struct {
    size_t off, len;
    int first; /* starts at offset 0 of the whole input (Metaspace prepend_scheme "first") */
} piece;

typedef struct {
    size_t a, b;
    int m;
} run;

typedef struct {
    char *buf; /* normalized text of the current segment, plus rewritten pieces */
    size_t n, cap;
    piece *p, *q; /* current pieces, next pieces */
    size_t np, nq, capp, capq;
    int32_t *ids;
    size_t nids, capids;
    /* BPE scratch */
    int32_t *sym_id, *sym_prev, *sym_next, *sym_len;
    size_t capsym;
    struct heap_ent {
        int32_t rank, pos, id;
    } * heap;
    size_t nheap, capheap;
    char *wbuf;
    size_t capw;
    run *runs;
    size_t nruns, capruns;
    pcre2_match_data *md;
} enc_state;

#define GROW(ptr, cap, need)                                                                       \
    do {                                                                                           \
        if ((need) > (cap)) {                                                                      \
            size_t nc_ = (cap) ? (cap) : 16;                                                       \
            while (nc_ < (need))                                                                   \
                nc_ *= 2;                                                                          \
            void *np_ = realloc((ptr), nc_ * sizeof *(ptr));                                       \
            if (!np_) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");             \
            (ptr) = np_;                                                                           \
            (cap) = nc_;                                                                           \
        }                                                                                          \
    } while (0)

static int push_id(enc_state *s, int32_t id) {
    GROW(s->ids, s->capids, s->nids + 1);
    s->ids[s->nids++] = id;
    return HYB_OK;
}

static int buf_append(enc_state *s, const char *d, size_t n) {
    GROW(s->buf, s->cap, s->n + n + 1);
    memcpy(s->buf + s->n, d, n);
    s->n += n;
    return HYB_OK;
}

static int push_q(enc_state *s, size_t off, size_t len, int first) {
    if (len == 0) return HYB_OK;
    GROW(s->q, s->capq, s->nq + 1);
    s->q[s->nq].off = off, s->q[s->nq].len = len, s->q[s->nq].first = first;
    s->nq++;
    return HYB_OK;
}

static void swap_pq(enc_state *s) {
    piece *tp = s->p;
    size_t tc = s->capp;
    s->p = s->q, s->capp = s->capq, s->np = s->nq;
    s->q = tp, s->capq = tc, s->nq = 0;
}

/* Split piece pc at regex matches with an HF SplitDelimiterBehavior. */
static int split_piece(enc_state *s, const tok_pretok *pt, const piece *pc) {
    const char *subj = s->buf + pc->off;
    size_t n = pc->len, pos = 0, gap = 0;
    s->nruns = 0;
    /* runs: gaps and matches, in order, none empty */
    while (pos < n) {
        int rc = pcre2_match(pt->re, (PCRE2_SPTR)subj, n, pos, 0, s->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0)
            return hyb_error_set(HYB_ERR, "tokenizer: regex match failed (pcre2 error %d)", rc);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* empty match: no piece; continue after the next character */
            if (ms >= n) break;
            pos = ms + utf8_len((const unsigned char *)subj + ms, n - ms);
            continue;
        }
        GROW(s->runs, s->capruns, s->nruns + 2);
        if (ms > gap) s->runs[s->nruns++] = (run){gap, ms, 0};
        s->runs[s->nruns++] = (run){ms, me, 1};
        pos = gap = me;
    }
    if (gap < n) {
        GROW(s->runs, s->capruns, s->nruns + 1);
        s->runs[s->nruns++] = (run){gap, n, 0};
    }
    if (pt->invert)
        for (size_t i = 0; i < s->nruns; i++)
            s->runs[i].m = !s->runs[i].m;
    /* fold the runs into pieces the way HF does */
    size_t out0 = s->nruns, nout = 0; /* output runs are appended after the input runs */
    GROW(s->runs, s->capruns, 2 * s->nruns + 1);
    run *in = s->runs, *out = s->runs + out0;
    int prev = 0;
    switch (pt->behavior) {
    case TOK_SPLIT_ISOLATED:
        for (size_t i = 0; i < out0; i++)
            out[nout++] = in[i];
        break;
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < out0; i++)
            if (!in[i].m) out[nout++] = in[i];
        break;
    case TOK_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < out0; i++) {
            if (in[i].m && !prev && nout)
                out[nout - 1].b = in[i].b;
            else
                out[nout++] = in[i];
            prev = in[i].m;
        }
        break;
    case TOK_SPLIT_MERGED_NEXT: /* built backwards, then reversed */
        for (size_t i = out0; i-- > 0;) {
            if (in[i].m && !prev && nout)
                out[nout - 1].a = in[i].a;
            else
                out[nout++] = in[i];
            prev = in[i].m;
        }
        for (size_t i = 0; i < nout / 2; i++) {
            run tmp = out[i];
            out[i] = out[nout - 1 - i], out[nout - 1 - i] = tmp;
        }
        break;
    case TOK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < out0; i++) {
            if (in[i].m == prev && nout)
                out[nout - 1].b = in[i].b;
            else
                out[nout++] = in[i];
            prev = in[i].m;
        }
        break;
    }
    for (size_t i = 0; i < nout; i++)
        HYB_TRY(push_q(s, pc->off + out[i].a, out[i].b - out[i].a, pc->first && out[i].a == 0));
    return HYB_OK;
}

/* Replace every occurrence of `a` by `b` in [off, off+len) of s->buf, appending the result to
 * s->buf; returns the new offset in *noff and length in *nlen. */
static int replace_into(enc_state *s, size_t off, size_t len, const char *a, size_t alen,
                        const char *b, size_t blen, size_t *noff, size_t *nlen) {
    size_t start = s->n;
    for (size_t i = 0; i < len;) {
        if (alen && i + alen <= len && memcmp(s->buf + off + i, a, alen) == 0) {
            HYB_TRY(buf_append(s, b, blen));
            i += alen;
        } else {
            size_t j = i + 1;
            while (j < len && s->buf[off + j] != a[0])
                j++;
            GROW(s->buf, s->cap, s->n + (j - i) + 1);
            memcpy(s->buf + s->n, s->buf + off + i, j - i);
            s->n += j - i;
            i = j;
        }
    }
    *noff = start, *nlen = s->n - start;
    return HYB_OK;
}

static int prepend_into(enc_state *s, size_t off, size_t len, const char *a, size_t alen,
                        size_t *noff, size_t *nlen) {
    size_t start = s->n;
    HYB_TRY(buf_append(s, a, alen));
    GROW(s->buf, s->cap, s->n + len + 1);
    memcpy(s->buf + s->n, s->buf + off, len);
    s->n += len;
    *noff = start, *nlen = s->n - start;
    return HYB_OK;
}

static int run_pretok(const hyb_tokenizer *t, enc_state *s, const tok_pretok *pt) {
    s->nq = 0;
    for (size_t i = 0; i < s->np; i++) {
        piece pc = s->p[i];
        if (pt->kind == TOK_PT_SPLIT) {
            HYB_TRY(split_piece(s, pt, &pc));
        } else if (pt->kind == TOK_PT_BYTELEVEL) {
            if (pt->add_prefix_space && s->buf[pc.off] != ' ')
                HYB_TRY(prepend_into(s, pc.off, pc.len, " ", 1, &pc.off, &pc.len));
            if (pt->re)
                HYB_TRY(split_piece(s, pt, &pc));
            else
                HYB_TRY(push_q(s, pc.off, pc.len, pc.first));
        } else { /* METASPACE */
            static const char rep[] = "\xE2\x96\x81";
            HYB_TRY(replace_into(s, pc.off, pc.len, " ", 1, rep, 3, &pc.off, &pc.len));
            int starts = pc.len >= 3 && memcmp(s->buf + pc.off, rep, 3) == 0;
            if (!starts && (pt->prepend_scheme == TOK_PREPEND_ALWAYS ||
                            (pt->prepend_scheme == TOK_PREPEND_FIRST && pc.first)))
                HYB_TRY(prepend_into(s, pc.off, pc.len, rep, 3, &pc.off, &pc.len));
            if (pt->split) { /* MergedWithNext on "▁" */
                size_t st = pc.off, e = pc.off + pc.len;
                for (size_t k = pc.off + 1; k + 3 <= e; k++)
                    if (memcmp(s->buf + k, rep, 3) == 0) {
                        HYB_TRY(push_q(s, st, k - st, pc.first && st == pc.off));
                        st = k;
                        k += 2;
                    }
                HYB_TRY(push_q(s, st, e - st, pc.first && st == pc.off));
            } else
                HYB_TRY(push_q(s, pc.off, pc.len, pc.first));
        }
    }
    (void)t;
    swap_pq(s);
    return HYB_OK;
}

static inline int heap_less(const struct heap_ent *a, const struct heap_ent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(enc_state *s, int32_t rank, int32_t pos, int32_t id) {
    GROW(s->heap, s->capheap, s->nheap + 1);
    size_t i = s->nheap++;
    struct heap_ent e = {rank, pos, id};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
    return HYB_OK;
}

static struct heap_ent heap_pop(enc_state *s) {
    struct heap_ent top = s->heap[0], last = s->heap[--s->nheap];
    size_t i = 0, n = s->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(&s->heap[c + 1], &s->heap[c])) c++;
        if (!heap_less(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

/* BPE of one word (raw bytes, before byte-level mapping) appended to s->ids. */
static int bpe_word(const hyb_tokenizer *t, enc_state *s, const char *w, size_t n) {
    /* whole-word lookup (ignore_merges) */
    if (t->ignore_merges) {
        const char *key = w;
        size_t klen = n;
        if (t->byte_level) {
            GROW(s->wbuf, s->capw, 2 * n + 1);
            klen = 0;
            for (size_t i = 0; i < n; i++) {
                unsigned char b = (unsigned char)w[i];
                memcpy(s->wbuf + klen, bl_utf8[b], bl_utf8_len[b]);
                klen += bl_utf8_len[b];
            }
            key = s->wbuf;
        }
        int32_t id;
        if (tok_strmap_get(&t->vocab, key, klen, &id)) return push_id(s, id);
    }
    /* initial symbols */
    if (n + 1 > s->capsym) {
        size_t nc = s->capsym ? s->capsym : 64;
        while (nc < n + 1)
            nc *= 2;
        int32_t **arr[4] = {&s->sym_id, &s->sym_prev, &s->sym_next, &s->sym_len};
        for (int k = 0; k < 4; k++) {
            int32_t *na = realloc(*arr[k], nc * sizeof(int32_t));
            if (!na) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
            *arr[k] = na;
        }
        s->capsym = nc;
    }
    int32_t ns = 0;
    int last_unk = 0;
    for (size_t i = 0; i < n;) {
        int32_t id = -1;
        size_t l;
        if (t->byte_level) {
            l = 1;
            id = t->byte_id[(unsigned char)w[i]];
        } else {
            l = utf8_len((const unsigned char *)w + i, n - i);
            if (!tok_strmap_get(&t->vocab, w + i, l, &id)) id = -1;
        }
        if (id < 0 && t->byte_fallback) {
            int all = 1;
            for (size_t k = 0; k < l; k++)
                all &= t->bytefb_id[(unsigned char)w[i + k]] >= 0;
            if (all) {
                for (size_t k = 0; k < l; k++) {
                    s->sym_id[ns] = t->bytefb_id[(unsigned char)w[i + k]];
                    s->sym_len[ns++] = 1;
                }
                last_unk = 0;
                i += l;
                continue;
            }
        }
        if (id < 0) {
            if (t->enc_unk_id >= 0) {
                if (t->fuse_unk && last_unk) {
                    s->sym_len[ns - 1] += (int32_t)l;
                } else {
                    s->sym_id[ns] = t->enc_unk_id, s->sym_len[ns++] = (int32_t)l;
                }
                last_unk = 1;
            } /* no unk token: the character is dropped, as HF does */
            i += l;
            continue;
        }
        last_unk = 0;
        s->sym_id[ns] = id, s->sym_len[ns++] = (int32_t)l;
        i += l;
    }
    for (int32_t k = 0; k < ns; k++)
        s->sym_prev[k] = k - 1, s->sym_next[k] = k + 1 < ns ? k + 1 : -1;
    s->nheap = 0;
    for (int32_t k = 0; k + 1 < ns; k++) {
        int32_t r, id;
        if (pairmap_get(&t->merges, s->sym_id[k], s->sym_id[k + 1], &r, &id))
            HYB_TRY(heap_push(s, r, k, id));
    }
    while (s->nheap) {
        struct heap_ent e = heap_pop(s);
        int32_t p = e.pos;
        if (s->sym_len[p] == 0) continue;
        int32_t q = s->sym_next[p];
        if (q < 0) continue;
        int32_t r, id;
        if (!pairmap_get(&t->merges, s->sym_id[p], s->sym_id[q], &r, &id) || id != e.id) continue;
        s->sym_id[p] = id;
        s->sym_len[p] += s->sym_len[q];
        s->sym_len[q] = 0;
        s->sym_next[p] = s->sym_next[q];
        if (s->sym_next[q] >= 0) s->sym_prev[s->sym_next[q]] = p;
        int32_t pp = s->sym_prev[p], nn = s->sym_next[p], nid;
        if (pp >= 0 && pairmap_get(&t->merges, s->sym_id[pp], id, &r, &nid))
            HYB_TRY(heap_push(s, r, pp, nid));
        if (nn >= 0 && pairmap_get(&t->merges, id, s->sym_id[nn], &r, &nid))
            HYB_TRY(heap_push(s, r, p, nid));
    }
    for (int32_t k = 0; k >= 0 && k < ns; k = s->sym_next[k])
        HYB_TRY(push_id(s, s->sym_id[k]));
    return HYB_OK;
}

static int bpe_word_cached(const hyb_tokenizer *t, enc_state *s, const char *w, size_t n) {
    hyb_tokenizer *mt = (hyb_tokenizer *)t; /* the cache is internal mutable state */
    if (n <= CACHE_MAX_WORD) {
        int32_t off;
        pthread_mutex_lock(&mt->cache_lock);
        if (tok_strmap_get(&mt->cache, w, n, &off)) {
            int32_t cnt = mt->cache_ids[off];
            int rc = HYB_OK;
            if (s->nids + (size_t)cnt > s->capids) {
                size_t nc = s->capids ? s->capids : 16;
                while (nc < s->nids + (size_t)cnt)
                    nc *= 2;
                int32_t *ni = realloc(s->ids, nc * sizeof *ni);
                if (!ni)
                    rc = hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
                else
                    s->ids = ni, s->capids = nc;
            }
            if (rc == HYB_OK && cnt > 0) {
                memcpy(s->ids + s->nids, mt->cache_ids + off + 1, (size_t)cnt * sizeof(int32_t));
                s->nids += (size_t)cnt;
            }
            pthread_mutex_unlock(&mt->cache_lock);
            return rc;
        }
        pthread_mutex_unlock(&mt->cache_lock);
    }
    size_t before = s->nids;
    HYB_TRY(bpe_word(t, s, w, n));
    if (n <= CACHE_MAX_WORD) {
        size_t cnt = s->nids - before;
        pthread_mutex_lock(&mt->cache_lock);
        if (mt->cache.n >= CACHE_MAX_ENTRIES || mt->cache_ids_n + cnt + 1 > (1u << 24)) {
            tok_strmap_free(&mt->cache);
            mt->cache_ids_n = 0;
        }
        size_t need = mt->cache_ids_n + cnt + 1;
        if (need > mt->cache_ids_cap) {
            size_t nc = mt->cache_ids_cap ? mt->cache_ids_cap * 2 : 4096;
            while (nc < need)
                nc *= 2;
            int32_t *ni = realloc(mt->cache_ids, nc * sizeof *ni);
            if (ni) mt->cache_ids = ni, mt->cache_ids_cap = nc;
        }
        if (need <= mt->cache_ids_cap) {
            if (tok_strmap_put(&mt->cache, w, n, (int32_t)mt->cache_ids_n) == HYB_OK) {
                mt->cache_ids[mt->cache_ids_n] = (int32_t)cnt;
                if (cnt)
                    memcpy(mt->cache_ids + mt->cache_ids_n + 1, s->ids + before,
                           cnt * sizeof(int32_t));
                mt->cache_ids_n = need;
            } else {
                hyb_error_clear(); /* a failed cache insert is not an error of the encode */
            }
        }
        pthread_mutex_unlock(&mt->cache_lock);
    }
    return HYB_OK;
}

/* Encode one segment of plain text (no added tokens in it). */
static int encode_segment(const hyb_tokenizer *t, enc_state *s, const char *text, size_t len,
                          int first) {
    if (len == 0) return HYB_OK;
    s->n = 0;
    HYB_TRY(buf_append(s, text, len));
    size_t off = 0, n = len;
    for (int i = 0; i < t->n_norms; i++) {
        const tok_norm *nm = &t->norms[i];
        if (nm->kind == TOK_NORM_PREPEND) {
            if (n) HYB_TRY(prepend_into(s, off, n, nm->a, nm->alen, &off, &n));
        } else
            HYB_TRY(replace_into(s, off, n, nm->a, nm->alen, nm->b, nm->blen, &off, &n));
    }
    s->np = 0, s->nq = 0;
    HYB_TRY(push_q(s, off, n, first));
    swap_pq(s);
    for (int i = 0; i < t->n_pretoks; i++)
        HYB_TRY(run_pretok(t, s, &t->pretoks[i]));
    for (size_t i = 0; i < s->np; i++)
        HYB_TRY(bpe_word_cached(t, s, s->buf + s->p[i].off, s->p[i].len));
    return HYB_OK;
}

static int is_ws(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static void enc_state_free(enc_state *s) {
    free(s->buf), free(s->p), free(s->q), free(s->ids);
    free(s->sym_id), free(s->sym_prev), free(s->sym_next), free(s->sym_len);
    free(s->heap), free(s->wbuf), free(s->runs);
    if (s->md) pcre2_match_data_free(s->md);
}

static int encode_all(const hyb_tokenizer *t, enc_state *s, const char *text, size_t len,
                      int flags) {
    s->md = pcre2_match_data_create(4, NULL);
    if (!s->md) return hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
    if (flags & HYB_TOK_ADD_SPECIAL)
        for (int i = 0; i < t->n_prefix; i++)
            HYB_TRY(push_id(s, t->prefix_ids[i]));
    int parse = !(flags & HYB_TOK_NO_PARSE_SPECIAL) && t->n_added > 0;
    size_t seg = 0, i = 0;
    while (parse && i < len) {
        const tok_added *hit = NULL;
        if (!t->added_first[(unsigned char)text[i]]) {
            i++;
            continue;
        }
        for (int k = 0; k < t->n_added; k++) {
            const tok_added *a = &t->added[k];
            if (a->text[0] == text[i] && a->len <= len - i &&
                memcmp(text + i, a->text, a->len) == 0) {
                hit = a; /* sorted longest first */
                break;
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        size_t ms = i, me = i + hit->len;
        if (hit->lstrip)
            while (ms > seg && is_ws((unsigned char)text[ms - 1]))
                ms--;
        if (hit->rstrip)
            while (me < len && is_ws((unsigned char)text[me]))
                me++;
        HYB_TRY(encode_segment(t, s, text + seg, ms - seg, seg == 0));
        HYB_TRY(push_id(s, hit->id));
        seg = i = me;
    }
    HYB_TRY(encode_segment(t, s, text + seg, len - seg, seg == 0));
    if (flags & HYB_TOK_ADD_SPECIAL)
        for (int k = 0; k < t->n_suffix; k++)
            HYB_TRY(push_id(s, t->suffix_ids[k]));
    return HYB_OK;
}

long hyb_tokenizer_encode(const hyb_tokenizer *t, const char *text, size_t len, int flags,
                          int32_t *ids, size_t cap) {
    if (!t || (!text && len) || (!ids && cap))
        return hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_encode: NULL argument");
    enc_state s;
    memset(&s, 0, sizeof s);
    int rc = encode_all(t, &s, text ? text : "", len, flags);
    long n = rc == HYB_OK ? (long)s.nids : rc;
    if (rc == HYB_OK && s.nids && cap)
        memcpy(ids, s.ids, (s.nids < cap ? s.nids : cap) * sizeof *ids);
    enc_state_free(&s);
    return n;
}

int hyb_tokenizer_encode_alloc(const hyb_tokenizer *t, const char *text, size_t len, int flags,
                               int32_t **ids, size_t *n_ids) {
    if (!t || (!text && len) || !ids || !n_ids)
        return hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_encode_alloc: NULL argument");
    enc_state s;
    memset(&s, 0, sizeof s);
    int rc = encode_all(t, &s, text ? text : "", len, flags);
    if (rc == HYB_OK) {
        *ids = s.ids ? s.ids : malloc(sizeof(int32_t));
        if (!*ids) rc = hyb_error_set(HYB_ERR_NOMEM, "tokenizer: out of memory");
        *n_ids = s.nids;
        s.ids = NULL;
    }
    enc_state_free(&s);
    return rc;
}

size_t hyb_tokenizer_max_tokens(const hyb_tokenizer *t, size_t len) {
    if (!t) return 0;
    double b = (double)len * t->bound_mult + ((double)len + 1) * t->bound_add;
    return (size_t)b + 1 + (size_t)(t->n_prefix + t->n_suffix);
}

/* ---- decoding and queries --------------------------------------------------------------------*/

long hyb_tokenizer_decode(const hyb_tokenizer *t, const int32_t *ids, size_t n, int flags,
                          char *out, size_t cap) {
    if (!t || (!ids && n) || (!out && cap))
        return hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_decode: NULL argument");
    size_t o = 0;
    int at_start = 1;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab)
            return hyb_error_set(HYB_ERR_ARG,
                                 "hyb_tokenizer_decode: id %d at %zu out of range [0, %d)", (int)id,
                                 i, (int)t->n_vocab);
        if ((flags & HYB_TOK_SKIP_SPECIAL) &&
            (t->type[id] == HYB_TOKEN_CONTROL || t->type[id] == HYB_TOKEN_UNKNOWN))
            continue;
        const char *p = t->piece[id];
        size_t pl = t->piece_len[id];
        if (at_start && pl > 0) {
            if (t->dec_strip_space && p[0] == ' ') p++, pl--;
            at_start = 0;
        }
        for (size_t k = 0; k < pl; k++, o++)
            if (o < cap) out[o] = p[k];
    }
    return (long)o;
}

const char *hyb_tokenizer_token_to_piece(const hyb_tokenizer *t, int32_t id, size_t *len) {
    if (!t || id < 0 || id >= t->n_vocab) return NULL;
    if (len) *len = t->piece_len[id];
    return t->piece[id];
}

const char *hyb_tokenizer_token_text(const hyb_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_vocab) return NULL;
    return t->text[id];
}

int32_t hyb_tokenizer_token_id(const hyb_tokenizer *t, const char *text) {
    if (!t || !text) return -1;
    size_t n = strlen(text);
    for (int k = 0; k < t->n_added; k++)
        if (t->added[k].len == n && memcmp(t->added[k].text, text, n) == 0) return t->added[k].id;
    int32_t id;
    return tok_strmap_get(&t->vocab, text, n, &id) ? id : -1;
}

int32_t hyb_tokenizer_vocab_size(const hyb_tokenizer *t) {
    return t ? t->n_vocab : 0;
}
int hyb_tokenizer_token_type(const hyb_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab ? t->type[id] : 0;
}
int32_t hyb_tokenizer_bos_id(const hyb_tokenizer *t) {
    return t ? t->bos_id : -1;
}
int32_t hyb_tokenizer_eos_id(const hyb_tokenizer *t) {
    return t ? t->eos_id : -1;
}
int32_t hyb_tokenizer_unk_id(const hyb_tokenizer *t) {
    return t ? t->unk_id : -1;
}
int32_t hyb_tokenizer_pad_id(const hyb_tokenizer *t) {
    return t ? t->pad_id : -1;
}
int hyb_tokenizer_set_special_ids(hyb_tokenizer *t, int32_t bos_id, int32_t eos_id) {
    if (!t) return hyb_error_set(HYB_ERR_ARG, "hyb_tokenizer_set_special_ids: NULL tokenizer");
    if (bos_id < -1 || bos_id >= t->n_vocab || eos_id < -1 || eos_id >= t->n_vocab)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_tokenizer_set_special_ids: bos %d / eos %d out of range [0, %d)",
                             (int)bos_id, (int)eos_id, (int)t->n_vocab);
    t->bos_id = bos_id, t->eos_id = eos_id;
    return HYB_OK;
}
