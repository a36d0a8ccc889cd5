/* core/io/safetensors.c: safetensors reader (mmap + cJSON header, validated) and atomic writer.
 * See hyb/safetensors.h for the format and the guarantees. Assumes a little-endian host, as the
 * format stores little-endian values. */
#include "hyb/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hyb/atomic.h"
#include "strbuf.h"

#define ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024) /* as the reference implementation */

// ---- dtypes ------------------------------------------------------------------------------------

static const struct {
    const char *name;
    int size;
} ST_DTYPES[HYB_ST_DTYPE_COUNT] = {
    [HYB_ST_BOOL] = {"BOOL", 1},       [HYB_ST_U8] = {"U8", 1},
    [HYB_ST_I8] = {"I8", 1},           [HYB_ST_I16] = {"I16", 2},
    [HYB_ST_U16] = {"U16", 2},         [HYB_ST_F16] = {"F16", 2},
    [HYB_ST_BF16] = {"BF16", 2},       [HYB_ST_I32] = {"I32", 4},
    [HYB_ST_U32] = {"U32", 4},         [HYB_ST_F32] = {"F32", 4},
    [HYB_ST_F64] = {"F64", 8},         [HYB_ST_I64] = {"I64", 8},
    [HYB_ST_U64] = {"U64", 8},         [HYB_ST_F8_E4M3] = {"F8_E4M3", 1},
    [HYB_ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *hyb_st_dtype_name(hyb_st_dtype t) {
    return (unsigned)t < HYB_ST_DTYPE_COUNT ? ST_DTYPES[t].name : "?";
}
int hyb_st_dtype_size(hyb_st_dtype t) {
    return (unsigned)t < HYB_ST_DTYPE_COUNT ? ST_DTYPES[t].size : 0;
}
int hyb_st_dtype_from_name(const char *name, hyb_st_dtype *out) {
    for (int i = 0; i < HYB_ST_DTYPE_COUNT; i++)
        if (strcmp(name, ST_DTYPES[i].name) == 0) {
            *out = (hyb_st_dtype)i;
            return HYB_OK;
        }
    return HYB_ERR_NOTFOUND;
}

// ---- reader ------------------------------------------------------------------------------------

struct hyb_safetensors {
    char *path;
    void *map;
    size_t map_size;
    const uint8_t *data; /* start of the data section */
    uint64_t data_size;
    int n;
    hyb_st_tensor *t;
    int *by_name; /* indices sorted by name */
    int n_meta;
    char **meta_k, **meta_v;
};

const char *hyb_safetensors_path(const hyb_safetensors *st) {
    return st->path;
}
int hyb_safetensors_count(const hyb_safetensors *st) {
    return st->n;
}
const hyb_st_tensor *hyb_safetensors_tensor(const hyb_safetensors *st, int i) {
    return (i >= 0 && i < st->n) ? &st->t[i] : NULL;
}
int hyb_safetensors_meta_count(const hyb_safetensors *st) {
    return st->n_meta;
}
const char *hyb_safetensors_meta_key(const hyb_safetensors *st, int i) {
    return (i >= 0 && i < st->n_meta) ? st->meta_k[i] : NULL;
}
const char *hyb_safetensors_meta(const hyb_safetensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_k[i], key) == 0) return st->meta_v[i];
    return NULL;
}

/* Free n metadata key/value strings and their two arrays (a reader's or a writer's). */
static void free_meta(char **k, char **v, int n) {
    for (int i = 0; i < n; i++) {
        free(k[i]);
        free(v[i]);
    }
    free(k);
    free(v);
}

void hyb_safetensors_close(hyb_safetensors *st) {
    if (!st) return;
    if (st->map) munmap(st->map, st->map_size);
    for (int i = 0; i < st->n; i++)
        free((char *)st->t[i].name);
    free_meta(st->meta_k, st->meta_v, st->n_meta);
    free(st->t);
    free(st->by_name);
    free(st->path);
    free(st);
}

/* A JSON number that is a non-negative integer representable exactly. */
static int json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!isfinite(d) || d < 0 || d != floor(d) || d > 9007199254740992.0) return 0;
    *out = (uint64_t)d;
    return 1;
}

static _Thread_local const hyb_safetensors *t_sort_st;

static int cmp_name(const void *a, const void *b) {
    const hyb_safetensors *st = t_sort_st;
    return strcmp(st->t[*(const int *)a].name, st->t[*(const int *)b].name);
}
static int cmp_offset(const void *a, const void *b) {
    const hyb_safetensors *st = t_sort_st;
    uint64_t x = st->t[*(const int *)a].offset, y = st->t[*(const int *)b].offset;
    return x < y ? -1 : x > y;
}

const hyb_st_tensor *hyb_safetensors_find(const hyb_safetensors *st, const char *name) {
    int lo = 0, hi = st->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(st->t[st->by_name[mid]].name, name);
        if (c == 0) return &st->t[st->by_name[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

static int parse_tensor(hyb_safetensors *st, const cJSON *item, hyb_st_tensor *t) {
    const char *P = st->path, *N = item->string;
    if (!cJSON_IsObject(item))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object",
                             P, N);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(jd))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s': missing or non-string 'dtype'", P,
                             N);
    if (hyb_st_dtype_from_name(jd->valuestring, &t->dtype) != HYB_OK)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", P, N,
                             jd->valuestring);
    if (!cJSON_IsArray(js))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s': missing or non-array 'shape'", P, N);
    int nd = cJSON_GetArraySize(js);
    if (nd > HYB_ST_MAX_DIMS)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: tensor '%s': %d dimensions (at most %d supported)", P, N, nd,
                             HYB_ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    int overflow = 0;
    for (int i = 0; i < nd; i++) {
        uint64_t v;
        if (!json_u64(cJSON_GetArrayItem(js, i), &v))
            return hyb_error_set(HYB_ERR_FORMAT,
                                 "%s: tensor '%s': shape[%d] is not a non-negative integer", P, N,
                                 i);
        t->shape[i] = (int64_t)v;
        if (v != 0 && numel > UINT64_MAX / v)
            overflow = 1;
        else
            numel *= v;
    }
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s': 'data_offsets' must be [begin, end]",
                             P, N);
    uint64_t b, e;
    if (!json_u64(cJSON_GetArrayItem(jo, 0), &b) || !json_u64(cJSON_GetArrayItem(jo, 1), &e))
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: tensor '%s': data_offsets are not non-negative integers", P, N);
    if (e < b)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", P,
                             N, (unsigned long long)b, (unsigned long long)e);
    if (e > st->data_size)
        return hyb_error_set(
            HYB_ERR_FORMAT,
            "%s: tensor '%s': data_offsets [%llu, %llu] point past the end of the data "
            "section (%llu bytes): file truncated or corrupt",
            P, N, (unsigned long long)b, (unsigned long long)e, (unsigned long long)st->data_size);
    uint64_t es = (uint64_t)hyb_st_dtype_size(t->dtype);
    if (overflow || numel > UINT64_MAX / es || numel * es != e - b)
        return hyb_error_set(
            HYB_ERR_FORMAT,
            "%s: tensor '%s': %s with %llu elements needs %llu bytes but data_offsets "
            "[%llu, %llu] span %llu",
            P, N, jd->valuestring, (unsigned long long)numel, (unsigned long long)(numel * es),
            (unsigned long long)b, (unsigned long long)e, (unsigned long long)(e - b));
    t->numel = (int64_t)numel;
    t->offset = b;
    t->nbytes = e - b;
    t->data = st->data + b;
    return HYB_OK;
}

static int parse_meta(hyb_safetensors *st, const cJSON *meta) {
    if (cJSON_IsNull(meta)) return HYB_OK;
    if (!cJSON_IsObject(meta))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: __metadata__ is not a JSON object", st->path);
    int n = cJSON_GetArraySize(meta);
    st->meta_k = calloc((size_t)n + 1, sizeof(char *));
    st->meta_v = calloc((size_t)n + 1, sizeof(char *));
    if (!st->meta_k || !st->meta_v)
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", st->path);
    const cJSON *it;
    cJSON_ArrayForEach(it, meta) {
        if (!cJSON_IsString(it))
            return hyb_error_set(HYB_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string",
                                 st->path, it->string);
        st->meta_k[st->n_meta] = strdup(it->string);
        st->meta_v[st->n_meta] = strdup(it->valuestring);
        st->n_meta++;
        if (!st->meta_k[st->n_meta - 1] || !st->meta_v[st->n_meta - 1])
            return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", st->path);
    }
    return HYB_OK;
}

/* Line/column-free position of a JSON error inside the header, for the message. */
static int parse_header(hyb_safetensors *st, const char *hdr, size_t len) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, len, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr ? (size_t)(end - hdr) : 0;
        const char *ep = cJSON_GetErrorPtr();
        if (ep && ep >= hdr && ep <= hdr + len) at = (size_t)(ep - hdr);
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: header is not valid JSON (error near byte %zu of %zu)", st->path,
                             at, len);
    }
    /* Anything after the JSON value must be padding whitespace. */
    if (end)
        for (const char *p = end; p < hdr + len; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != 0) {
                cJSON_Delete(root);
                return hyb_error_set(HYB_ERR_FORMAT,
                                     "%s: trailing bytes after the header JSON (byte %zu)",
                                     st->path, (size_t)(p - hdr));
            }
    int rc = HYB_OK;
    if (!cJSON_IsObject(root)) {
        rc = hyb_error_set(HYB_ERR_FORMAT, "%s: header is not a JSON object", st->path);
        goto done;
    }
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, root) n += strcmp(it->string, "__metadata__") != 0;
    st->t = calloc((size_t)n + 1, sizeof *st->t);
    st->by_name = calloc((size_t)n + 1, sizeof(int));
    if (!st->t || !st->by_name) {
        rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", st->path);
        goto done;
    }
    cJSON_ArrayForEach(it, root) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if ((rc = parse_meta(st, it)) != HYB_OK) goto done;
            continue;
        }
        hyb_st_tensor *t = &st->t[st->n];
        if (!(t->name = strdup(it->string))) {
            rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", st->path);
            goto done;
        }
        st->n++;
        if ((rc = parse_tensor(st, it, t)) != HYB_OK) goto done;
    }
    /* duplicate names (JSON allows them, the format does not) and overlapping data */
    for (int i = 0; i < st->n; i++)
        st->by_name[i] = i;
    t_sort_st = st;
    qsort(st->by_name, (size_t)st->n, sizeof(int), cmp_name);
    for (int i = 1; i < st->n; i++)
        if (strcmp(st->t[st->by_name[i]].name, st->t[st->by_name[i - 1]].name) == 0) {
            rc = hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s' appears twice in the header",
                               st->path, st->t[st->by_name[i]].name);
            goto done;
        }
    int *ord = malloc(((size_t)st->n + 1) * sizeof(int));
    if (!ord) {
        rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", st->path);
        goto done;
    }
    for (int i = 0; i < st->n; i++)
        ord[i] = i;
    qsort(ord, (size_t)st->n, sizeof(int), cmp_offset);
    for (int i = 1; i < st->n; i++) {
        const hyb_st_tensor *a = &st->t[ord[i - 1]], *b = &st->t[ord[i]];
        if (b->offset < a->offset + a->nbytes) {
            rc = hyb_error_set(HYB_ERR_FORMAT,
                               "%s: tensors '%s' and '%s' overlap in the data section", st->path,
                               a->name, b->name);
            break;
        }
    }
    free(ord);
done:
    cJSON_Delete(root);
    return rc;
}

/* Validate the bytes [p, p + size) (the whole file) and fill st. */
static int parse_buffer(hyb_safetensors *st, const uint8_t *p, uint64_t size) {
    const char *path = st->path;
    if (size < 8)
        return hyb_error_set(
            HYB_ERR_FORMAT,
            "%s: file is %llu bytes, too short for a safetensors header (truncated?)", path,
            (unsigned long long)size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    if (hlen > ST_MAX_HEADER)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: header length %llu is larger than the limit %llu "
                             "(not a safetensors file?)",
                             path, (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
    if (hlen > size - 8)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: header length %llu exceeds the file (%llu bytes): "
                             "truncated or not a safetensors file",
                             path, (unsigned long long)hlen, (unsigned long long)size);
    if (hlen < 2)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: header length %llu is too short for a JSON object", path,
                             (unsigned long long)hlen);
    st->data = p + 8 + hlen;
    st->data_size = size - 8 - hlen;
    char *hdr = malloc((size_t)hlen + 1);
    if (!hdr)
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory for a %llu-byte header", path,
                             (unsigned long long)hlen);
    memcpy(hdr, p + 8, (size_t)hlen);
    hdr[hlen] = 0;
    int rc = parse_header(st, hdr, (size_t)hlen);
    free(hdr);
    return rc;
}

static hyb_safetensors *st_alloc(const char *path) {
    hyb_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    return st;
}

int hyb_safetensors_open_memory(const void *data, size_t size, const char *name,
                                hyb_safetensors **out) {
    *out = NULL;
    hyb_safetensors *st = st_alloc(name ? name : "(memory)");
    if (!st) return HYB_ERR_NOMEM;
    int rc = parse_buffer(st, data, (uint64_t)size);
    if (rc != HYB_OK) {
        hyb_safetensors_close(st);
        return rc;
    }
    *out = st;
    return HYB_OK;
}

int hyb_safetensors_open(const char *path, hyb_safetensors **out) {
    *out = NULL;
    hyb_safetensors *st = st_alloc(path);
    if (!st) return HYB_ERR_NOMEM;
    int rc = HYB_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = hyb_error_set(HYB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        rc = hyb_error_set(HYB_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = hyb_error_set(HYB_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size >= 8) {
        st->map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (st->map == MAP_FAILED) {
            st->map = NULL;
            rc = hyb_error_set(HYB_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
            goto fail;
        }
        st->map_size = (size_t)size;
    }
    close(fd);
    fd = -1;
    if ((rc = parse_buffer(st, st->map, size)) != HYB_OK) goto fail;
    *out = st;
    return HYB_OK;
fail:
    if (fd >= 0) close(fd);
    hyb_safetensors_close(st);
    return rc;
}

/* The little-endian integer of `size` bytes at p, as f32 with the one rounding of a C cast from
 * its own type (widening to 64 bits first changes no value). */
static float int_to_f32(const uint8_t *p, int size, int is_signed) {
    uint64_t u = 0;
    for (int b = size - 1; b >= 0; b--)
        u = (u << 8) | p[b];
    if (!is_signed) return (float)u;
    if (size == 8) return (float)(int64_t)u;
    const int64_t m = (int64_t)1 << (8 * size - 1); /* sign-extend: (u ^ m) - m */
    return (float)((int64_t)(u ^ (uint64_t)m) - m);
}

int hyb_safetensors_read_f32(const hyb_safetensors *st, const hyb_st_tensor *t, float *dst,
                             int64_t n) {
    if (n != t->numel)
        return hyb_error_set(HYB_ERR_ARG, "%s: tensor '%s': has %lld elements, caller expects %lld",
                             st->path, t->name, (long long)t->numel, (long long)n);
    const uint8_t *s = t->data;
    switch (t->dtype) {
    case HYB_ST_F32:
        memcpy(dst, s, (size_t)n * 4);
        break;
#define CONV(T, EXPR)                                                                              \
    for (int64_t i = 0; i < n; i++) {                                                              \
        T v;                                                                                       \
        memcpy(&v, s + (size_t)i * sizeof(T), sizeof(T));                                          \
        dst[i] = (EXPR);                                                                           \
    }                                                                                              \
    break;
    case HYB_ST_F16:
        CONV(uint16_t, hyb_f16_to_f32(v))
    case HYB_ST_BF16:
        CONV(uint16_t, hyb_bf16_to_f32(v))
    case HYB_ST_F64:
        CONV(double, (float)v)
    case HYB_ST_BOOL:
        CONV(uint8_t, v ? 1.0f : 0.0f)
    case HYB_ST_I8:
    case HYB_ST_I16:
    case HYB_ST_I32:
    case HYB_ST_I64:
    case HYB_ST_U8:
    case HYB_ST_U16:
    case HYB_ST_U32:
    case HYB_ST_U64: {
        const int size = hyb_st_dtype_size(t->dtype);
        const int is_signed = t->dtype == HYB_ST_I8 || t->dtype == HYB_ST_I16 ||
                              t->dtype == HYB_ST_I32 || t->dtype == HYB_ST_I64;
        for (int64_t i = 0; i < n; i++)
            dst[i] = int_to_f32(s + (size_t)i * (size_t)size, size, is_signed);
        break;
    }
#undef CONV
    default:
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "%s: tensor '%s': dtype %s cannot be converted to f32", st->path,
                             t->name, hyb_st_dtype_name(t->dtype));
    }
    return HYB_OK;
}

hyb_tensor *hyb_safetensors_load_f32(const hyb_safetensors *st, const hyb_st_tensor *t) {
    if (t->ndim > HYB_MAX_DIMS) {
        hyb_error_set(HYB_ERR_UNSUPPORTED,
                      "%s: tensor '%s': %d dimensions, hyb tensors have at most %d", st->path,
                      t->name, t->ndim, HYB_MAX_DIMS);
        return NULL;
    }
    int64_t one = 1;
    hyb_tensor *out =
        t->ndim ? hyb_tensor_new(HYB_F32, t->ndim, t->shape) : hyb_tensor_new(HYB_F32, 1, &one);
    if (!out) {
        hyb_error_wrap(HYB_ERR_NOMEM, "%s: tensor '%s'", st->path, t->name);
        return NULL;
    }
    if (hyb_safetensors_read_f32(st, t, hyb_tensor_f32(out), t->numel) != HYB_OK) {
        hyb_tensor_free(out);
        return NULL;
    }
    snprintf(out->name, sizeof out->name, "%s", t->name);
    return out;
}

int hyb_safetensors_read_tensor(const hyb_safetensors *st, const hyb_st_tensor *t,
                                hyb_tensor *dst) {
    if (dst->dtype != HYB_F32 || !hyb_tensor_is_contiguous(dst))
        return hyb_error_set(HYB_ERR_ARG, "%s: tensor '%s': destination must be contiguous f32",
                             st->path, t->name);
    const int64_t n = hyb_tensor_numel(dst);
    if (dst->device == HYB_DEV_CPU) return hyb_safetensors_read_f32(st, t, dst->data, n);
    float *host = hyb_malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!host) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory for '%s'", st->path, t->name);
    int rc = hyb_safetensors_read_f32(st, t, host, n);
    if (rc == HYB_OK) rc = hyb_tensor_upload(dst, host);
    hyb_free(host);
    return rc;
}

// ---- writer ------------------------------------------------------------------------------------

typedef struct {
    char *name;
    hyb_st_dtype dtype;
    int ndim;
    int64_t shape[HYB_ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
    void *owned; /* a host copy of a device tensor's data (freed with the writer) */
} st_entry;

struct hyb_st_writer {
    int n, cap;
    st_entry *e;
    int n_meta;
    char **meta_k, **meta_v;
};

hyb_st_writer *hyb_st_writer_new(void) {
    hyb_st_writer *w = calloc(1, sizeof *w);
    if (!w) hyb_error_set(HYB_ERR_NOMEM, "hyb_st_writer_new: out of memory");
    return w;
}

void hyb_st_writer_free(hyb_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->e[i].name);
        hyb_free(w->e[i].owned);
    }
    free_meta(w->meta_k, w->meta_v, w->n_meta);
    free(w->e);
    free(w);
}

int hyb_st_writer_add(hyb_st_writer *w, const char *name, hyb_dtype dtype, int ndim,
                      const int64_t *shape, const void *data) {
    hyb_st_dtype sd;
    switch (dtype) {
    case HYB_F32:
        sd = HYB_ST_F32;
        break;
    case HYB_F16:
        sd = HYB_ST_F16;
        break;
    case HYB_BF16:
        sd = HYB_ST_BF16;
        break;
    case HYB_I32:
        sd = HYB_ST_I32;
        break;
    default:
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "safetensors writer: tensor '%s': dtype %s cannot be stored", name,
                             hyb_dtype_name(dtype));
    }
    if (!name || !*name || strcmp(name, "__metadata__") == 0)
        return hyb_error_set(HYB_ERR_ARG, "safetensors writer: invalid tensor name '%s'",
                             name ? name : "");
    if (ndim < 0 || ndim > HYB_ST_MAX_DIMS)
        return hyb_error_set(HYB_ERR_ARG, "safetensors writer: tensor '%s': bad ndim %d", name,
                             ndim);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->e[i].name, name) == 0)
            return hyb_error_set(HYB_ERR_ARG, "safetensors writer: tensor '%s' added twice", name);
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return hyb_error_set(HYB_ERR_ARG, "safetensors writer: tensor '%s': negative dim %lld",
                                 name, (long long)shape[i]);
        numel *= (uint64_t)shape[i];
    }
    if (!data && numel > 0)
        return hyb_error_set(HYB_ERR_ARG,
                             "safetensors writer: tensor '%s': no data for %llu elements", name,
                             (unsigned long long)numel);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        st_entry *e = realloc(w->e, (size_t)cap * sizeof *e);
        if (!e) return hyb_error_set(HYB_ERR_NOMEM, "safetensors writer: out of memory");
        w->e = e;
        w->cap = cap;
    }
    st_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name)))
        return hyb_error_set(HYB_ERR_NOMEM, "safetensors writer: out of memory");
    e->dtype = sd;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->nbytes = numel * (uint64_t)hyb_st_dtype_size(sd);
    e->data = data;
    w->n++;
    return HYB_OK;
}

int hyb_st_writer_add_tensor(hyb_st_writer *w, const char *name, const hyb_tensor *t) {
    if (!hyb_tensor_is_contiguous(t))
        return hyb_error_set(HYB_ERR_ARG, "safetensors writer: tensor '%s' must be contiguous",
                             name);
    if (t->device == HYB_DEV_CPU)
        return hyb_st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data);
    /* a device tensor: a host copy now (the writer writes at save time) */
    size_t nb = hyb_tensor_nbytes(t);
    void *host = hyb_malloc(nb ? nb : 1);
    if (!host)
        return hyb_error_set(HYB_ERR_NOMEM, "safetensors writer: out of memory for '%s'", name);
    int rc = hyb_tensor_download(t, host);
    if (rc == HYB_OK) rc = hyb_st_writer_add(w, name, t->dtype, t->ndim, t->shape, host);
    if (rc != HYB_OK) {
        hyb_free(host);
        return rc;
    }
    w->e[w->n - 1].owned = host;
    return HYB_OK;
}

int hyb_st_writer_add_tensor_as(hyb_st_writer *w, const char *name, const hyb_tensor *t,
                                hyb_dtype store) {
    if (store == t->dtype) return hyb_st_writer_add_tensor(w, name, t);
    if (t->dtype != HYB_F32 || (store != HYB_BF16 && store != HYB_F16))
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "safetensors writer: tensor '%s': %s cannot be stored as %s", name,
                             hyb_dtype_name(t->dtype), hyb_dtype_name(store));
    if (!hyb_tensor_is_contiguous(t))
        return hyb_error_set(HYB_ERR_ARG, "safetensors writer: tensor '%s' must be contiguous",
                             name);
    const int64_t n = hyb_tensor_numel(t);
    float *tmp = NULL;
    const float *x = t->device == HYB_DEV_CPU ? (const float *)t->data : NULL;
    if (!x) { /* a device tensor: read it back first */
        tmp = hyb_malloc((size_t)(n ? n : 1) * sizeof *tmp);
        if (!tmp)
            return hyb_error_set(HYB_ERR_NOMEM, "safetensors writer: out of memory for '%s'", name);
        int rc = hyb_tensor_download(t, tmp);
        if (rc != HYB_OK) {
            hyb_free(tmp);
            return rc;
        }
        x = tmp;
    }
    uint16_t *h = hyb_malloc((size_t)(n ? n : 1) * sizeof *h);
    if (!h) {
        hyb_free(tmp);
        return hyb_error_set(HYB_ERR_NOMEM, "safetensors writer: out of memory for '%s'", name);
    }
    for (int64_t i = 0; i < n; i++) /* round to nearest even, as torch's .to(bfloat16) */
        h[i] = store == HYB_BF16 ? hyb_f32_to_bf16(x[i]) : hyb_f32_to_f16(x[i]);
    hyb_free(tmp);
    int rc = hyb_st_writer_add(w, name, store, t->ndim, t->shape, h);
    if (rc != HYB_OK) {
        hyb_free(h);
        return rc;
    }
    w->e[w->n - 1].owned = h;
    return HYB_OK;
}

int hyb_st_writer_meta(hyb_st_writer *w, const char *key, const char *value) {
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_k[i], key) == 0) {
            char *v = strdup(value);
            if (!v) return hyb_error_set(HYB_ERR_NOMEM, "safetensors writer: out of memory");
            free(w->meta_v[i]);
            w->meta_v[i] = v;
            return HYB_OK;
        }
    char **k = realloc(w->meta_k, ((size_t)w->n_meta + 1) * sizeof(char *));
    if (!k) return hyb_error_set(HYB_ERR_NOMEM, "safetensors writer: out of memory");
    w->meta_k = k;
    char **v = realloc(w->meta_v, ((size_t)w->n_meta + 1) * sizeof(char *));
    if (!v) return hyb_error_set(HYB_ERR_NOMEM, "safetensors writer: out of memory");
    w->meta_v = v;
    w->meta_k[w->n_meta] = strdup(key);
    w->meta_v[w->n_meta] = strdup(value);
    if (!w->meta_k[w->n_meta] || !w->meta_v[w->n_meta]) {
        free(w->meta_k[w->n_meta]);
        free(w->meta_v[w->n_meta]);
        return hyb_error_set(HYB_ERR_NOMEM, "safetensors writer: out of memory");
    }
    w->n_meta++;
    return HYB_OK;
}

static void sb_json_str(hyb_strbuf *b, const char *s) {
    hyb_strbuf_putn(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"')
            hyb_strbuf_putn(b, "\\\"", 2);
        else if (*p == '\\')
            hyb_strbuf_putn(b, "\\\\", 2);
        else if (*p < 0x20)
            hyb_strbuf_printf(b, "\\u%04x", *p);
        else
            hyb_strbuf_putn(b, (const char *)p, 1);
    }
    hyb_strbuf_putn(b, "\"", 1);
}

typedef struct {
    hyb_st_writer *w;
    hyb_strbuf *hdr;
} save_ctx;

static int save_cb(hyb_atomic_file *f, void *vctx) {
    save_ctx *c = vctx;
    uint64_t hlen = c->hdr->n;
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(hlen >> (8 * i));
    HYB_TRY(hyb_atomic_write(f, le, 8));
    HYB_TRY(hyb_atomic_write(f, c->hdr->p, c->hdr->n));
    for (int i = 0; i < c->w->n; i++)
        if (c->w->e[i].nbytes)
            HYB_TRY(hyb_atomic_write(f, c->w->e[i].data, (size_t)c->w->e[i].nbytes));
    return HYB_OK;
}

int hyb_st_writer_save(hyb_st_writer *w, const char *path) {
    hyb_strbuf b = {0};
    uint64_t off = 0;
    hyb_strbuf_puts(&b, "{");
    int first = 1;
    if (w->n_meta) {
        hyb_strbuf_puts(&b, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) hyb_strbuf_puts(&b, ",");
            sb_json_str(&b, w->meta_k[i]);
            hyb_strbuf_puts(&b, ":");
            sb_json_str(&b, w->meta_v[i]);
        }
        hyb_strbuf_puts(&b, "}");
        first = 0;
    }
    for (int i = 0; i < w->n; i++) {
        const st_entry *e = &w->e[i];
        if (!first) hyb_strbuf_puts(&b, ",");
        first = 0;
        sb_json_str(&b, e->name);
        hyb_strbuf_puts(&b, ":{\"dtype\":\"");
        hyb_strbuf_puts(&b, hyb_st_dtype_name(e->dtype));
        hyb_strbuf_puts(&b, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++)
            hyb_strbuf_printf(&b, d ? ",%lld" : "%lld", (long long)e->shape[d]);
        hyb_strbuf_printf(&b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                          (unsigned long long)(off + e->nbytes));
        off += e->nbytes;
    }
    hyb_strbuf_puts(&b, "}");
    while ((8 + b.n) % 8)
        hyb_strbuf_puts(&b, " "); /* data section starts 8-byte aligned */
    if (b.oom) {
        hyb_strbuf_free(&b);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory building the safetensors header",
                             path);
    }
    save_ctx c = {w, &b};
    int rc = hyb_atomic_write_file(path, save_cb, &c);
    hyb_strbuf_free(&b);
    return rc;
}
