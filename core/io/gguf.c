/* gguf.c: GGUF v2/v3 reader (see hyb/gguf.h).
 *
 * File layout (little-endian; GGUF specification, ggml docs/gguf.md):
 *   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
 *   kv_count x { string key | u32 value_type | value }
 *   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] (innermost first) | u32 type |
 *                    u64 offset (from the data section, multiple of the alignment) }
 *   padding to general.alignment (default 32) | data section
 * string = u64 length + bytes (no NUL); array = u32 element type + u64 count + elements.
 *
 * Everything is parsed and validated in hyb_gguf_open; after that the handle is read-only.
 * Allocation is bounded by the file size: every count is checked against the bytes left before
 * anything is allocated for it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hyb/gguf.h"

#define GGUF_MAX_NEST 8   /* arrays of arrays of ... */
#define GGUF_MAX_NAME 255 /* longest tensor name accepted */

typedef struct gguf_kv {
    uint64_t key; /* arena offset */
    int type;     /* hyb_gguf_vtype */
    int arr_type; /* element type for arrays */
    uint64_t n;   /* array length */
    uint64_t pos; /* file offset of the value (scalars) or first element (arrays) */
    uint64_t str; /* string value: arena offset */
    uint64_t str_len;
    uint64_t *str_offs; /* string arrays: n + 1 arena offsets (string i: [offs[i], offs[i+1]-1)) */
} gguf_kv;

struct hyb_gguf {
    char *path;
    const uint8_t *base;
    uint64_t size;
    int mapped;
    uint32_t version, alignment;
    uint64_t data_off;
    int64_t n_kv, kv_cap;
    gguf_kv *kv;
    int64_t n_tensors, tensors_cap;
    hyb_gguf_tensor *tensors;
    uint64_t *tensor_name_off; /* arena offsets, resolved into tensors[i].name at the end */
    char *arena;
    uint64_t arena_len, arena_cap;
};

/* ---- helpers ---------------------------------------------------------------------------------*/

static const char *VTYPE_NAMES[HYB_GGUF_VTYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
static const int VTYPE_SIZE[HYB_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static const char *vtype_name(int t) {
    return (t >= 0 && t < HYB_GGUF_VTYPE_COUNT) ? VTYPE_NAMES[t] : "invalid";
}

static uint16_t ld_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t ld_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t ld_u64(const uint8_t *p) {
    return (uint64_t)ld_u32(p) | ((uint64_t)ld_u32(p + 4) << 32);
}
static float ld_f32(const uint8_t *p) {
    uint32_t u = ld_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static double ld_f64(const uint8_t *p) {
    uint64_t u = ld_u64(p);
    double d;
    memcpy(&d, &u, 8);
    return d;
}

typedef struct reader {
    hyb_gguf *g;
    uint64_t pos;
} reader;

#define FERR(g, off, ...) fmt_err((g), (off), __VA_ARGS__)
static int fmt_err(const hyb_gguf *g, uint64_t off, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static int fmt_err(const hyb_gguf *g, uint64_t off, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return hyb_error_set(HYB_ERR_FORMAT, "%s: offset %" PRIu64 ": %s", g->path, off, msg);
}

/* n more bytes available at r->pos? */
static int need(reader *r, uint64_t n, const char *what) {
    uint64_t left = r->g->size - r->pos;
    if (n > left)
        return FERR(r->g, r->pos,
                    "truncated file: %s needs %" PRIu64 " bytes, only %" PRIu64
                    " left (file is %" PRIu64 " bytes)",
                    what, n, left, r->g->size);
    return HYB_OK;
}

static int rd_u32(reader *r, uint32_t *v, const char *what) {
    HYB_TRY(need(r, 4, what));
    *v = ld_u32(r->g->base + r->pos);
    r->pos += 4;
    return HYB_OK;
}

static int rd_u64(reader *r, uint64_t *v, const char *what) {
    HYB_TRY(need(r, 8, what));
    *v = ld_u64(r->g->base + r->pos);
    r->pos += 8;
    return HYB_OK;
}

/* Append len bytes + NUL to the arena; *off receives the offset. */
static int arena_put(hyb_gguf *g, const uint8_t *s, uint64_t len, uint64_t *off) {
    uint64_t need_cap = g->arena_len + len + 1;
    if (need_cap > g->arena_cap) {
        uint64_t cap = g->arena_cap ? g->arena_cap : 4096;
        while (cap < need_cap)
            cap *= 2;
        char *a = realloc(g->arena, (size_t)cap);
        if (!a)
            return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory (%" PRIu64 " bytes for strings)",
                                 g->path, cap);
        g->arena = a;
        g->arena_cap = cap;
    }
    *off = g->arena_len;
    if (len) memcpy(g->arena + g->arena_len, s, (size_t)len);
    g->arena[g->arena_len + len] = '\0';
    g->arena_len += len + 1;
    return HYB_OK;
}

/* Make room for `need` elements of `elem` bytes in *p (capacity *cap, at most `max`), zeroing
 * the new part. Arrays grow with what was actually parsed, so a corrupt count costs nothing. */
static int grow(hyb_gguf *g, void **p, int64_t *cap, int64_t need, size_t elem, int64_t max) {
    if (need <= *cap) return HYB_OK;
    int64_t nc = *cap < 16 ? 16 : *cap * 2;
    if (nc < need) nc = need;
    if (nc > max) nc = max;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", g->path);
    memset((char *)q + (size_t)*cap * elem, 0, (size_t)(nc - *cap) * elem);
    *p = q;
    *cap = nc;
    return HYB_OK;
}

/* Read a string (u64 length + bytes) into the arena. nul_ok: embedded NUL bytes allowed. */
static int rd_str(reader *r, uint64_t *off, uint64_t *len_out, const char *what, int nul_ok) {
    uint64_t at = r->pos, len;
    HYB_TRY(rd_u64(r, &len, what));
    if (len > r->g->size - r->pos)
        return FERR(r->g, at,
                    "bad string length %" PRIu64 " for %s: only %" PRIu64 " bytes left in the file",
                    len, what, r->g->size - r->pos);
    const uint8_t *s = r->g->base + r->pos;
    if (!nul_ok && memchr(s, 0, (size_t)len)) return FERR(r->g, at, "%s contains a NUL byte", what);
    HYB_TRY(arena_put(r->g, s, len, off));
    r->pos += len;
    if (len_out) *len_out = len;
    return HYB_OK;
}

/* Skip one value of type t (nested arrays), validating it. */
static int skip_value(reader *r, int t, int depth, const char *what) {
    if (t < 0 || t >= HYB_GGUF_VTYPE_COUNT)
        return FERR(r->g, r->pos, "unknown value type %d in %s", t, what);
    if (t == HYB_GGUF_STRING) {
        uint64_t at = r->pos, len;
        HYB_TRY(rd_u64(r, &len, what));
        if (len > r->g->size - r->pos)
            return FERR(r->g, at,
                        "bad string length %" PRIu64 " in %s: only %" PRIu64 " bytes left", len,
                        what, r->g->size - r->pos);
        r->pos += len;
        return HYB_OK;
    }
    if (t != HYB_GGUF_ARRAY) {
        HYB_TRY(need(r, (uint64_t)VTYPE_SIZE[t], what));
        r->pos += (uint64_t)VTYPE_SIZE[t];
        return HYB_OK;
    }
    if (depth >= GGUF_MAX_NEST)
        return FERR(r->g, r->pos, "arrays nested deeper than %d in %s", GGUF_MAX_NEST, what);
    uint32_t et;
    uint64_t n, at;
    HYB_TRY(rd_u32(r, &et, what));
    at = r->pos;
    HYB_TRY(rd_u64(r, &n, what));
    if (et >= HYB_GGUF_VTYPE_COUNT)
        return FERR(r->g, at - 4, "unknown array element type %u in %s", et, what);
    uint64_t min = et == HYB_GGUF_STRING ? 8 : et == HYB_GGUF_ARRAY ? 12 : (uint64_t)VTYPE_SIZE[et];
    if (n > (r->g->size - r->pos) / min)
        return FERR(r->g, at,
                    "array length %" PRIu64 " of %s exceeds the file (%" PRIu64 " bytes left)", n,
                    what, r->g->size - r->pos);
    if (et != HYB_GGUF_STRING && et != HYB_GGUF_ARRAY) {
        r->pos += n * min;
        return HYB_OK;
    }
    for (uint64_t i = 0; i < n; i++)
        HYB_TRY(skip_value(r, (int)et, depth + 1, what));
    return HYB_OK;
}

/* ---- key/value section ------------------------------------------------------------------------*/

static int parse_kv(reader *r, int64_t idx, gguf_kv *kv) {
    hyb_gguf *g = r->g;
    char what[160];
    snprintf(what, sizeof what, "the key of kv %" PRId64, idx);
    uint64_t key_at = r->pos, key_len;
    HYB_TRY(rd_str(r, &kv->key, &key_len, what, 0));
    if (key_len == 0) return FERR(g, key_at, "kv %" PRId64 " has an empty key", idx);
    /* a copy for messages: the arena may move while the value is read */
    char key[80];
    snprintf(key, sizeof key, "%s%s", g->arena + kv->key, key_len >= sizeof key ? "..." : "");
    snprintf(what, sizeof what, "the value of '%s'", key);
    uint32_t t;
    uint64_t type_at = r->pos;
    HYB_TRY(rd_u32(r, &t, what));
    if (t >= HYB_GGUF_VTYPE_COUNT)
        return FERR(g, type_at, "key '%s': unknown value type %u", key, t);
    kv->type = (int)t;
    kv->arr_type = -1;
    kv->pos = r->pos;
    if (t == HYB_GGUF_STRING) return rd_str(r, &kv->str, &kv->str_len, what, 1);
    if (t != HYB_GGUF_ARRAY) {
        HYB_TRY(need(r, (uint64_t)VTYPE_SIZE[t], what));
        if (t == HYB_GGUF_BOOL && g->base[r->pos] > 1)
            return FERR(g, r->pos, "key '%s': bool value %u is neither 0 nor 1", key,
                        g->base[r->pos]);
        r->pos += (uint64_t)VTYPE_SIZE[t];
        return HYB_OK;
    }
    uint32_t et;
    uint64_t et_at = r->pos, n_at;
    HYB_TRY(rd_u32(r, &et, what));
    if (et >= HYB_GGUF_VTYPE_COUNT)
        return FERR(g, et_at, "key '%s': unknown array element type %u", key, et);
    n_at = r->pos;
    HYB_TRY(rd_u64(r, &kv->n, what));
    kv->arr_type = (int)et;
    kv->pos = r->pos;
    uint64_t left = g->size - r->pos, n = kv->n;
    uint64_t min = et == HYB_GGUF_STRING ? 8 : et == HYB_GGUF_ARRAY ? 12 : (uint64_t)VTYPE_SIZE[et];
    if (n > left / min)
        return FERR(g, n_at,
                    "key '%s': array length %" PRIu64 " of %s needs at least %" PRIu64
                    " bytes per element, only %" PRIu64 " bytes left in the file",
                    key, n, vtype_name((int)et), min, left);
    if (et == HYB_GGUF_STRING) {
        int64_t cap = 0;
        snprintf(what, sizeof what, "a string in array '%s'", key);
        for (uint64_t i = 0; i <= n; i++) {
            HYB_TRY(grow(g, (void **)&kv->str_offs, &cap, (int64_t)i + 1, sizeof(uint64_t),
                         (int64_t)n + 1));
            if (i == n)
                kv->str_offs[n] = g->arena_len;
            else
                HYB_TRY(rd_str(r, &kv->str_offs[i], NULL, what, 1));
        }
        return HYB_OK;
    }
    if (et == HYB_GGUF_ARRAY) {
        for (uint64_t i = 0; i < n; i++)
            HYB_TRY(skip_value(r, HYB_GGUF_ARRAY, 1, what));
        return HYB_OK;
    }
    if (et == HYB_GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++)
            if (g->base[r->pos + i] > 1)
                return FERR(g, r->pos + i,
                            "key '%s': bool element %" PRIu64 " is %u, neither 0 nor 1", key, i,
                            g->base[r->pos + i]);
    r->pos += n * min;
    return HYB_OK;
}

/* ---- tensor infos -----------------------------------------------------------------------------*/

static int parse_tensor_info(reader *r, int64_t idx) {
    hyb_gguf *g = r->g;
    hyb_gguf_tensor *t = &g->tensors[idx];
    char what[96];
    snprintf(what, sizeof what, "the name of tensor %" PRId64, idx);
    uint64_t at = r->pos, len;
    HYB_TRY(rd_str(r, &g->tensor_name_off[idx], &len, what, 0));
    const char *name = g->arena + g->tensor_name_off[idx];
    if (len == 0) return FERR(g, at, "tensor %" PRId64 " has an empty name", idx);
    if (len > GGUF_MAX_NAME)
        return FERR(g, at, "tensor %" PRId64 ": name is %" PRIu64 " bytes (at most %d)", idx, len,
                    GGUF_MAX_NAME);
    snprintf(what, sizeof what, "tensor '%.60s'", name);
    uint32_t nd;
    at = r->pos;
    HYB_TRY(rd_u32(r, &nd, what));
    if (nd < 1 || nd > HYB_GGUF_MAX_DIMS)
        return FERR(g, at, "tensor '%s': %u dimensions (must be 1..%d)", name, nd,
                    HYB_GGUF_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t ne[HYB_GGUF_MAX_DIMS] = {1, 1, 1, 1};
    int64_t numel = 1;
    for (uint32_t d = 0; d < nd; d++) {
        at = r->pos;
        HYB_TRY(rd_u64(r, &ne[d], what));
        if (ne[d] > (uint64_t)INT64_MAX)
            return FERR(g, at, "tensor '%s': dimension %u is %" PRIu64 " (too large)", name, d,
                        ne[d]);
        if (ne[d] != 0 && (uint64_t)numel > (uint64_t)INT64_MAX / ne[d])
            return FERR(g, at, "tensor '%s': element count overflows 64 bits", name);
        numel *= (int64_t)ne[d];
    }
    for (int d = 0; d < HYB_GGUF_MAX_DIMS; d++)
        t->shape[d] = 1;
    for (uint32_t d = 0; d < nd; d++)
        t->shape[nd - 1 - d] = (int64_t)ne[d];
    t->numel = numel;
    uint32_t type;
    at = r->pos;
    HYB_TRY(rd_u32(r, &type, what));
    int64_t blck = hyb_ggml_block_elems((int)type), bsz = hyb_ggml_block_bytes((int)type);
    if (type > INT32_MAX || blck <= 0)
        return FERR(g, at, "tensor '%s': unknown tensor type %u", name, type);
    t->type = (int)type;
    if (ne[0] % (uint64_t)blck != 0)
        return FERR(g, at,
                    "tensor '%s': innermost dimension %" PRIu64
                    " is not a multiple of the %s block size %" PRId64,
                    name, ne[0], hyb_ggml_type_name((int)type), blck);
    /* bytes = numel / blck * bsz, without overflow */
    uint64_t nblocks = (uint64_t)numel / (uint64_t)blck;
    if (nblocks > UINT64_MAX / (uint64_t)bsz)
        return FERR(g, at, "tensor '%s': byte size overflows", name);
    t->nbytes = nblocks * (uint64_t)bsz;
    at = r->pos;
    HYB_TRY(rd_u64(r, &t->offset, what));
    if (t->offset % g->alignment != 0)
        return FERR(g, at,
                    "tensor '%s': data offset %" PRIu64 " is not a multiple of the alignment %u",
                    name, t->offset, g->alignment);
    return HYB_OK;
}

typedef struct span {
    uint64_t off, nbytes;
    int64_t idx;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off ? 1 : (x->idx > y->idx) - (x->idx < y->idx);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* No two keys are the same (sorted, so a file with a million keys stays fast). */
static int check_keys(hyb_gguf *g) {
    int64_t n = g->n_kv;
    if (n < 2) return HYB_OK;
    const char **keys = malloc((size_t)n * sizeof(char *));
    if (!keys) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", g->path);
    for (int64_t i = 0; i < n; i++)
        keys[i] = g->arena + g->kv[i].key;
    qsort(keys, (size_t)n, sizeof(char *), cmp_name);
    int rc = HYB_OK;
    for (int64_t k = 1; k < n && rc == HYB_OK; k++)
        if (strcmp(keys[k - 1], keys[k]) == 0) {
            int64_t at = hyb_gguf_find_key(g, keys[k]);
            rc = FERR(g, g->kv[at].pos, "duplicate key '%s'", keys[k]);
        }
    free(keys);
    return rc;
}

/* No two tensors share a name or overlap in the data section. */
static int check_unique(hyb_gguf *g) {
    int64_t n = g->n_tensors;
    if (n < 2) return HYB_OK;
    span *sp = malloc((size_t)n * sizeof(span));
    const char **names = malloc((size_t)n * sizeof(char *));
    if (!sp || !names) {
        free(sp);
        free(names);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", g->path);
    }
    for (int64_t i = 0; i < n; i++) {
        sp[i] = (span){g->tensors[i].offset, g->tensors[i].nbytes, i};
        names[i] = g->tensors[i].name;
    }
    qsort(sp, (size_t)n, sizeof(span), cmp_span);
    qsort(names, (size_t)n, sizeof(char *), cmp_name);
    int rc = HYB_OK;
    for (int64_t k = 1; k < n && rc == HYB_OK; k++) {
        if (strcmp(names[k - 1], names[k]) == 0)
            rc = FERR(g, g->data_off, "two tensors are named '%s'", names[k]);
    }
    uint64_t end = 0;
    int64_t last = -1;
    for (int64_t k = 0; k < n && rc == HYB_OK; k++) {
        if (sp[k].nbytes == 0) continue;
        if (last >= 0 && sp[k].off < end) {
            const hyb_gguf_tensor *a = &g->tensors[last], *b = &g->tensors[sp[k].idx];
            rc = FERR(g, b->file_offset,
                      "tensor '%s' (data offset %" PRIu64
                      ") overlaps tensor '%s' (data offsets %" PRIu64 "..%" PRIu64 ")",
                      b->name, b->offset, a->name, a->offset, a->offset + a->nbytes);
        }
        if (sp[k].off + sp[k].nbytes > end) {
            end = sp[k].off + sp[k].nbytes;
            last = sp[k].idx;
        }
    }
    free(sp);
    free(names);
    return rc;
}

/* ---- open / close -----------------------------------------------------------------------------*/

/* A count read from the header (at file offset off) that cannot fit: each `item` takes at least
 * `min_bytes` and only `left` bytes follow the header. */
static int check_count(const hyb_gguf *g, uint64_t off, const char *what, const char *item,
                       uint64_t count, uint64_t min_bytes, uint64_t left) {
    if (count <= left / min_bytes) return HYB_OK;
    return FERR(g, off,
                "%s count %" PRIu64 " is impossible: %s takes at least %" PRIu64
                " bytes and only %" PRIu64
                " bytes follow the header (truncated file or corrupt count)",
                what, count, item, min_bytes, left);
}

static int parse(hyb_gguf *g) {
    reader r = {g, 0};
    uint32_t magic;
    if (g->size < 4)
        return FERR(g, 0, "truncated file: %" PRIu64 " bytes, too small for a GGUF header",
                    g->size);
    magic = ld_u32(g->base);
    if (magic != 0x46554747u) /* "GGUF" */
        return FERR(g, 0, "bad magic %02x %02x %02x %02x (expected \"GGUF\"): not a GGUF file",
                    g->base[0], g->base[1], g->base[2], g->base[3]);
    r.pos = 4;
    HYB_TRY(rd_u32(&r, &g->version, "the version"));
    if (g->version == 0x02000000u || g->version == 0x03000000u)
        return FERR(g, 4, "big-endian GGUF files are not supported");
    if (g->version == 1)
        return FERR(g, 4, "GGUF version 1 is not supported (versions 2 and 3 are)");
    if (g->version != 2 && g->version != 3)
        return FERR(g, 4, "unsupported GGUF version %u (versions 2 and 3 are)", g->version);
    uint64_t n_tensors, n_kv;
    HYB_TRY(rd_u64(&r, &n_tensors, "the tensor count"));
    HYB_TRY(rd_u64(&r, &n_kv, "the kv count"));
    uint64_t left = g->size - r.pos;
    /* a kv is at least 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes; a tensor info at
     * least 8 + 1 (name) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset) */
    HYB_TRY(check_count(g, 16, "kv", "a kv", n_kv, 14, left));
    HYB_TRY(check_count(g, 8, "tensor", "a tensor info", n_tensors, 33, left));
    /* metadata */
    g->alignment = HYB_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        HYB_TRY(
            grow(g, (void **)&g->kv, &g->kv_cap, (int64_t)i + 1, sizeof(gguf_kv), (int64_t)n_kv));
        HYB_TRY(parse_kv(&r, (int64_t)i, &g->kv[i]));
        g->n_kv = (int64_t)i + 1;
    }
    HYB_TRY(check_keys(g));
    int64_t al = hyb_gguf_find_key(g, "general.alignment");
    if (al >= 0) {
        const gguf_kv *kv = &g->kv[al];
        if (kv->type != HYB_GGUF_U32)
            return FERR(g, kv->pos, "general.alignment has type %s (must be u32)",
                        vtype_name(kv->type));
        uint32_t a = ld_u32(g->base + kv->pos);
        if (a == 0 || (a & (a - 1)) != 0)
            return FERR(g, kv->pos, "general.alignment is %u (must be a power of two)", a);
        g->alignment = a;
    }

    /* tensor infos */
    for (uint64_t i = 0; i < n_tensors; i++) {
        int64_t cap = g->tensors_cap;
        HYB_TRY(grow(g, (void **)&g->tensors, &g->tensors_cap, (int64_t)i + 1,
                     sizeof(hyb_gguf_tensor), (int64_t)n_tensors));
        HYB_TRY(grow(g, (void **)&g->tensor_name_off, &cap, (int64_t)i + 1, sizeof(uint64_t),
                     (int64_t)n_tensors));
        HYB_TRY(parse_tensor_info(&r, (int64_t)i));
        g->n_tensors = (int64_t)i + 1;
    }
    uint64_t end_infos = r.pos;
    uint64_t data = end_infos + (g->alignment - end_infos % g->alignment) % g->alignment;
    g->data_off = data;

    /* names: resolve pointers (the arena does not move any more) */
    for (int64_t i = 0; i < g->n_tensors; i++)
        g->tensors[i].name = g->arena + g->tensor_name_off[i];

    /* data ranges */
    for (int64_t i = 0; i < g->n_tensors; i++) {
        hyb_gguf_tensor *t = &g->tensors[i];
        if (t->nbytes == 0) {
            t->file_offset = data;
            t->data = g->base + (data <= g->size ? data : g->size);
            continue;
        }
        if (data > g->size)
            return FERR(g, end_infos,
                        "tensor '%s': the data section would start at %" PRIu64
                        ", beyond the end of the file (%" PRIu64 " bytes)",
                        t->name, data, g->size);
        uint64_t room = g->size - data;
        if (t->offset > room || t->nbytes > room - t->offset)
            return FERR(g, t->offset <= room ? data + t->offset : data,
                        "tensor '%s' (%s, %" PRIu64 " bytes at data offset %" PRIu64
                        ") extends beyond the end of the file (%" PRIu64
                        " bytes; data section starts at %" PRIu64 ")",
                        t->name, hyb_ggml_type_name(t->type), t->nbytes, t->offset, g->size, data);
        t->file_offset = data + t->offset;
        t->data = g->base + t->file_offset;
    }

    return check_unique(g);
}

static void gguf_free_parts(hyb_gguf *g) {
    /* the kv after the last complete one may hold a partly filled string array */
    for (int64_t i = 0; i < g->kv_cap && i <= g->n_kv; i++)
        free(g->kv[i].str_offs);
    free(g->kv);
    free(g->tensors);
    free(g->tensor_name_off);
    free(g->arena);
    free(g->path);
}

void hyb_gguf_close(hyb_gguf *g) {
    if (!g) return;
    if (g->mapped && g->base) munmap((void *)g->base, (size_t)g->size);
    gguf_free_parts(g);
    free(g);
}

static hyb_gguf *gguf_alloc(const char *name) {
    hyb_gguf *g = calloc(1, sizeof(hyb_gguf));
    if (!g) return NULL;
    g->path = strdup(name ? name : "<memory>");
    if (!g->path) {
        free(g);
        return NULL;
    }
    return g;
}

/* Parse, and on failure free everything (the mapping included). */
static int gguf_finish(hyb_gguf *g, hyb_gguf **out) {
    int rc = parse(g);
    if (rc != HYB_OK) {
        hyb_gguf_close(g);
        return rc;
    }
    *out = g;
    return HYB_OK;
}

int hyb_gguf_open_memory(const void *buf, size_t size, const char *name, hyb_gguf **out) {
    if (!out) return hyb_error_set(HYB_ERR_ARG, "hyb_gguf_open_memory: out is NULL");
    *out = NULL;
    if (!buf && size) return hyb_error_set(HYB_ERR_ARG, "hyb_gguf_open_memory: NULL buffer");
    hyb_gguf *g = gguf_alloc(name);
    if (!g)
        return hyb_error_set(HYB_ERR_NOMEM, "out of memory opening %s", name ? name : "<memory>");
    g->base = buf;
    g->size = size;
    return gguf_finish(g, out);
}

int hyb_gguf_open(const char *path, hyb_gguf **out) {
    if (!out || !path) return hyb_error_set(HYB_ERR_ARG, "hyb_gguf_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return hyb_error_set(HYB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return hyb_error_set(HYB_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return hyb_error_set(HYB_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size < 24) {
        close(fd);
        return hyb_error_set(
            HYB_ERR_FORMAT,
            "%s: offset 0: truncated file: %lld bytes, too small for a GGUF header (24 bytes)",
            path, (long long)st.st_size);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return hyb_error_set(HYB_ERR_IO, "%s: cannot map %lld bytes: %s", path,
                             (long long)st.st_size, strerror(e));
    hyb_gguf *g = gguf_alloc(path);
    if (!g) {
        munmap(p, (size_t)st.st_size);
        return hyb_error_set(HYB_ERR_NOMEM, "out of memory opening %s", path);
    }
    g->base = p;
    g->size = (uint64_t)st.st_size;
    g->mapped = 1;
    return gguf_finish(g, out);
}

const char *hyb_gguf_path(const hyb_gguf *g) {
    return g->path;
}
uint32_t hyb_gguf_version(const hyb_gguf *g) {
    return g->version;
}
uint32_t hyb_gguf_alignment(const hyb_gguf *g) {
    return g->alignment;
}
uint64_t hyb_gguf_data_offset(const hyb_gguf *g) {
    return g->data_off;
}
uint64_t hyb_gguf_file_size(const hyb_gguf *g) {
    return g->size;
}

/* ---- metadata getters -------------------------------------------------------------------------*/

int64_t hyb_gguf_kv_count(const hyb_gguf *g) {
    return g->n_kv;
}

int64_t hyb_gguf_find_key(const hyb_gguf *g, const char *key) {
    if (!key) return -1;
    for (int64_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->arena + g->kv[i].key, key) == 0) return i;
    return -1;
}

static const gguf_kv *kv_at(const hyb_gguf *g, int64_t kv) {
    return (kv >= 0 && kv < g->n_kv) ? &g->kv[kv] : NULL;
}

const char *hyb_gguf_kv_key(const hyb_gguf *g, int64_t kv) {
    const gguf_kv *e = kv_at(g, kv);
    return e ? g->arena + e->key : NULL;
}

hyb_gguf_vtype hyb_gguf_kv_type(const hyb_gguf *g, int64_t kv) {
    const gguf_kv *e = kv_at(g, kv);
    return e ? (hyb_gguf_vtype)e->type : HYB_GGUF_VTYPE_COUNT;
}

hyb_gguf_vtype hyb_gguf_kv_arr_type(const hyb_gguf *g, int64_t kv) {
    const gguf_kv *e = kv_at(g, kv);
    return (e && e->type == HYB_GGUF_ARRAY) ? (hyb_gguf_vtype)e->arr_type : HYB_GGUF_VTYPE_COUNT;
}

uint64_t hyb_gguf_kv_arr_len(const hyb_gguf *g, int64_t kv) {
    const gguf_kv *e = kv_at(g, kv);
    return (e && e->type == HYB_GGUF_ARRAY) ? e->n : 0;
}

const char *hyb_gguf_kv_arr_str(const hyb_gguf *g, int64_t kv, uint64_t i, uint64_t *len) {
    const gguf_kv *e = kv_at(g, kv);
    if (!e || e->type != HYB_GGUF_ARRAY || e->arr_type != HYB_GGUF_STRING || i >= e->n) return NULL;
    if (len) *len = e->str_offs[i + 1] - e->str_offs[i] - 1;
    return g->arena + e->str_offs[i];
}

const void *hyb_gguf_kv_arr_data(const hyb_gguf *g, int64_t kv) {
    const gguf_kv *e = kv_at(g, kv);
    if (!e || e->type != HYB_GGUF_ARRAY || e->arr_type == HYB_GGUF_STRING ||
        e->arr_type == HYB_GGUF_ARRAY)
        return NULL;
    return g->base + e->pos;
}

/* Decode one number of type t at p. is_int: an integer type (bool included). */
typedef struct num {
    int is_int, is_unsigned;
    int64_t i;
    uint64_t u;
    double f;
} num;

/* The little-endian unsigned integer of n (1, 2, 4 or 8) bytes at p. */
static uint64_t ld_uint(const uint8_t *p, int n) {
    uint64_t u = 0;
    for (int i = n - 1; i >= 0; i--)
        u = (u << 8) | p[i];
    return u;
}

static int num_load(int t, const uint8_t *p, num *v) {
    memset(v, 0, sizeof *v);
    v->is_int = 1;
    switch (t) {
    case HYB_GGUF_U8:
    case HYB_GGUF_BOOL:
    case HYB_GGUF_U16:
    case HYB_GGUF_U32:
    case HYB_GGUF_U64:
        v->u = ld_uint(p, VTYPE_SIZE[t]);
        v->is_unsigned = 1;
        break;
    case HYB_GGUF_I8:
    case HYB_GGUF_I16:
    case HYB_GGUF_I32:
    case HYB_GGUF_I64: {
        const int bits = 8 * VTYPE_SIZE[t];
        const uint64_t u = ld_uint(p, VTYPE_SIZE[t]);
        if (bits == 64) {
            v->i = (int64_t)u;
        } else { /* sign-extend: (u ^ m) - m with m the sign bit */
            const int64_t m = (int64_t)1 << (bits - 1);
            v->i = (int64_t)(u ^ (uint64_t)m) - m;
        }
        break;
    }
    case HYB_GGUF_F32:
    case HYB_GGUF_F64:
        v->f = t == HYB_GGUF_F32 ? (double)ld_f32(p) : ld_f64(p);
        v->is_int = 0;
        return HYB_OK;
    default:
        return HYB_ERR;
    }
    if (v->is_unsigned) {
        v->f = (double)v->u;
        v->i = (int64_t)v->u;
    } else {
        v->f = (double)v->i;
        v->u = (uint64_t)v->i;
    }
    return HYB_OK;
}

static int num_to_int(const num *v, int64_t *out) {
    if (!v->is_int) return HYB_ERR;
    if (v->is_unsigned && v->u > (uint64_t)INT64_MAX) return HYB_ERR;
    *out = v->i;
    return HYB_OK;
}

/* Element i of the numeric array kv, loaded into *v; *key names the key for messages. */
static int arr_num_at(const hyb_gguf *g, int64_t kv, uint64_t i, num *v, const char **key) {
    const gguf_kv *e = kv_at(g, kv);
    if (!e) return hyb_error_set(HYB_ERR_ARG, "%s: kv index %" PRId64 " out of range", g->path, kv);
    *key = g->arena + e->key;
    if (e->type != HYB_GGUF_ARRAY || e->arr_type == HYB_GGUF_STRING ||
        e->arr_type == HYB_GGUF_ARRAY)
        return hyb_error_set(HYB_ERR_ARG, "%s: '%s' is not an array of numbers", g->path, *key);
    if (i >= e->n)
        return hyb_error_set(HYB_ERR_ARG,
                             "%s: '%s': index %" PRIu64 " out of range (length %" PRIu64 ")",
                             g->path, *key, i, e->n);
    num_load(e->arr_type, g->base + e->pos + i * (uint64_t)VTYPE_SIZE[e->arr_type], v);
    return HYB_OK;
}

int hyb_gguf_kv_arr_int(const hyb_gguf *g, int64_t kv, uint64_t i, int64_t *out) {
    num v;
    const char *key;
    HYB_TRY(arr_num_at(g, kv, i, &v, &key));
    if (num_to_int(&v, out) != HYB_OK)
        return hyb_error_set(HYB_ERR_ARG,
                             "%s: '%s'[%" PRIu64 "] (%s) is not representable as int64", g->path,
                             key, i, vtype_name(kv_at(g, kv)->arr_type));
    return HYB_OK;
}

int hyb_gguf_kv_arr_float(const hyb_gguf *g, int64_t kv, uint64_t i, double *out) {
    num v;
    const char *key;
    HYB_TRY(arr_num_at(g, kv, i, &v, &key));
    *out = v.f;
    return HYB_OK;
}

/* The entry for key, of type want (-1: any). */
static int lookup(const hyb_gguf *g, const char *key, int want, const gguf_kv **out) {
    int64_t i = hyb_gguf_find_key(g, key);
    if (i < 0)
        return hyb_error_set(HYB_ERR_NOTFOUND, "%s: key '%s' not found", g->path,
                             key ? key : "(null)");
    const gguf_kv *e = &g->kv[i];
    if (want >= 0 && e->type != want) {
        if (e->type == HYB_GGUF_ARRAY)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: key '%s' is an array of %s, not a %s",
                                 g->path, key, vtype_name(e->arr_type), vtype_name(want));
        return hyb_error_set(HYB_ERR_FORMAT, "%s: key '%s' has type %s, not %s", g->path, key,
                             vtype_name(e->type), vtype_name(want));
    }
    *out = e;
    return HYB_OK;
}

#define GETTER(fn, vt, ctype, load)                                                                \
    int fn(const hyb_gguf *g, const char *key, ctype *out) {                                       \
        const gguf_kv *e = NULL;                                                                   \
        HYB_TRY(lookup(g, key, vt, &e));                                                           \
        const uint8_t *p = g->base + e->pos;                                                       \
        (void)p;                                                                                   \
        *out = (ctype)(load);                                                                      \
        return HYB_OK;                                                                             \
    }

GETTER(hyb_gguf_get_u8, HYB_GGUF_U8, uint8_t, p[0])
GETTER(hyb_gguf_get_i8, HYB_GGUF_I8, int8_t, (int8_t)p[0])
GETTER(hyb_gguf_get_u16, HYB_GGUF_U16, uint16_t, ld_u16(p))
GETTER(hyb_gguf_get_i16, HYB_GGUF_I16, int16_t, (int16_t)ld_u16(p))
GETTER(hyb_gguf_get_u32, HYB_GGUF_U32, uint32_t, ld_u32(p))
GETTER(hyb_gguf_get_i32, HYB_GGUF_I32, int32_t, (int32_t)ld_u32(p))
GETTER(hyb_gguf_get_u64, HYB_GGUF_U64, uint64_t, ld_u64(p))
GETTER(hyb_gguf_get_i64, HYB_GGUF_I64, int64_t, (int64_t)ld_u64(p))
GETTER(hyb_gguf_get_bool, HYB_GGUF_BOOL, int, p[0] != 0)

GETTER(hyb_gguf_get_f32, HYB_GGUF_F32, float, ld_f32(p))
GETTER(hyb_gguf_get_f64, HYB_GGUF_F64, double, ld_f64(p))

int hyb_gguf_get_str(const hyb_gguf *g, const char *key, const char **out, uint64_t *len) {
    const gguf_kv *e = NULL;
    HYB_TRY(lookup(g, key, HYB_GGUF_STRING, &e));
    *out = g->arena + e->str;
    if (len) *len = e->str_len;
    return HYB_OK;
}

int hyb_gguf_get_int(const hyb_gguf *g, const char *key, int64_t *out) {
    const gguf_kv *e = NULL;
    HYB_TRY(lookup(g, key, -1, &e));
    num v;
    if (e->type == HYB_GGUF_STRING || e->type == HYB_GGUF_ARRAY ||
        num_load(e->type, g->base + e->pos, &v) != HYB_OK || !v.is_int)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: key '%s' has type %s, not an integer", g->path,
                             key, vtype_name(e->type));
    if (num_to_int(&v, out) != HYB_OK)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: key '%s' = %" PRIu64 " does not fit in int64",
                             g->path, key, v.u);
    return HYB_OK;
}

int hyb_gguf_get_float(const hyb_gguf *g, const char *key, double *out) {
    const gguf_kv *e = NULL;
    HYB_TRY(lookup(g, key, -1, &e));
    num v;
    if (e->type == HYB_GGUF_STRING || e->type == HYB_GGUF_ARRAY || e->type == HYB_GGUF_BOOL ||
        num_load(e->type, g->base + e->pos, &v) != HYB_OK)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: key '%s' has type %s, not a number", g->path, key,
                             vtype_name(e->type));
    *out = v.f;
    return HYB_OK;
}

int hyb_gguf_get_arr(const hyb_gguf *g, const char *key, hyb_gguf_vtype *elem_type, uint64_t *len) {
    const gguf_kv *e = NULL;
    HYB_TRY(lookup(g, key, HYB_GGUF_ARRAY, &e));
    if (elem_type) *elem_type = (hyb_gguf_vtype)e->arr_type;
    if (len) *len = e->n;
    return HYB_OK;
}

/* ---- tensors ----------------------------------------------------------------------------------*/

int64_t hyb_gguf_tensor_count(const hyb_gguf *g) {
    return g->n_tensors;
}

int64_t hyb_gguf_find_tensor(const hyb_gguf *g, const char *name) {
    if (!name) return -1;
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return i;
    return -1;
}

const hyb_gguf_tensor *hyb_gguf_tensor_at(const hyb_gguf *g, int64_t i) {
    return (i >= 0 && i < g->n_tensors) ? &g->tensors[i] : NULL;
}

static const char *shape_str(const hyb_gguf_tensor *t, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int d = 0; d < t->ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%" PRId64, d ? ", " : "", t->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "] %s", hyb_ggml_type_name(t->type));
    return buf;
}

static int tensor_check(const hyb_gguf *g, int64_t i, const void *out, const hyb_gguf_tensor **t) {
    *t = hyb_gguf_tensor_at(g, i);
    if (!*t)
        return hyb_error_set(HYB_ERR_ARG,
                             "%s: tensor index %" PRId64 " out of range (%" PRId64 " tensors)",
                             g->path, i, g->n_tensors);
    if (!out && (*t)->numel)
        return hyb_error_set(HYB_ERR_ARG, "%s: tensor '%s': NULL output", g->path, (*t)->name);
    return HYB_OK;
}

int hyb_gguf_tensor_to_f32(const hyb_gguf *g, int64_t i, float *out) {
    const hyb_gguf_tensor *t;
    HYB_TRY(tensor_check(g, i, out, &t));
    int rc = hyb_ggml_dequantize(t->type, t->data, out, t->numel);
    if (rc != HYB_OK) {
        char buf[96];
        return hyb_error_wrap(rc, "%s: tensor '%s' %s", g->path, t->name,
                              shape_str(t, buf, sizeof buf));
    }
    return HYB_OK;
}

int hyb_gguf_tensor_to_bf16(const hyb_gguf *g, int64_t i, uint16_t *out) {
    const hyb_gguf_tensor *t;
    HYB_TRY(tensor_check(g, i, out, &t));
    if (t->type == HYB_GGML_BF16) {
        memcpy(out, t->data, (size_t)t->nbytes);
        return HYB_OK;
    }
    if (!hyb_ggml_can_dequantize(t->type)) {
        char buf[96];
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: tensor '%s' %s: type not supported", g->path,
                             t->name, shape_str(t, buf, sizeof buf));
    }
    /* through f32 in chunks (a multiple of every block size) */
    enum { CH = 4096 };
    float tmp[CH];
    const int64_t blck = hyb_ggml_block_elems(t->type), bsz = hyb_ggml_block_bytes(t->type);
    const uint8_t *src = t->data;
    for (int64_t e = 0; e < t->numel; e += CH) {
        int64_t n = t->numel - e < CH ? t->numel - e : CH;
        int rc = hyb_ggml_dequantize(t->type, src + e / blck * bsz, tmp, n);
        if (rc != HYB_OK) return hyb_error_wrap(rc, "%s: tensor '%s'", g->path, t->name);
        for (int64_t k = 0; k < n; k++)
            out[e + k] = hyb_f32_to_bf16(tmp[k]);
    }
    return HYB_OK;
}

int hyb_gguf_tensor_load(const hyb_gguf *g, int64_t i, hyb_dtype as, hyb_tensor **out) {
    const hyb_gguf_tensor *t;
    if (!out) return hyb_error_set(HYB_ERR_ARG, "hyb_gguf_tensor_load: out is NULL");
    *out = NULL;
    HYB_TRY(tensor_check(g, i, out, &t));
    if (as != HYB_F32 && as != HYB_BF16)
        return hyb_error_set(HYB_ERR_ARG, "%s: tensor '%s': can load as f32 or bf16 only", g->path,
                             t->name);
    if (strlen(t->name) >= sizeof((*out)->name))
        return hyb_error_set(HYB_ERR_ARG, "%s: tensor name '%s' is longer than %zu bytes", g->path,
                             t->name, sizeof((*out)->name) - 1);
    hyb_tensor *x = hyb_tensor_new(as, t->ndim, t->shape);
    if (!x) return hyb_error_wrap(HYB_ERR_NOMEM, "%s: tensor '%s'", g->path, t->name);
    int rc = as == HYB_F32 ? hyb_gguf_tensor_to_f32(g, i, (float *)x->data)
                           : hyb_gguf_tensor_to_bf16(g, i, (uint16_t *)x->data);
    if (rc != HYB_OK) {
        hyb_tensor_free(x);
        return rc;
    }
    snprintf(x->name, sizeof x->name, "%s", t->name);
    *out = x;
    return HYB_OK;
}
