/* core/tensor.c: dtype facts, dense tensors, f16/bf16 conversion, the deterministic RNG. */
#include "hyb/tensor.h"

#include "hyb/backend.h"
#include "backend/cpu/cpu_quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

// ---- dtypes ---------------------------------------------------------------------------------

static const struct {
    const char *name;
    int64_t block_elems, block_bytes;
} DT[HYB_DTYPE_COUNT] = {
    [HYB_F32] = {"f32", 1, 4},     [HYB_F16] = {"f16", 1, 2},       [HYB_BF16] = {"bf16", 1, 2},
    [HYB_I32] = {"i32", 1, 4},     [HYB_Q8_0] = {"q8_0", 32, 34},   [HYB_Q4_0] = {"q4_0", 32, 18},
    [HYB_Q4_1] = {"q4_1", 32, 20}, [HYB_Q4_K] = {"q4_k", 256, 144}, [HYB_Q6_K] = {"q6_k", 256, 210},
    [HYB_Q5_K] = {"q5_k", 256, 176},
    [HYB_Q5_0] = {"q5_0", 32, 22}, [HYB_Q5_1] = {"q5_1", 32, 24},
};

static int dtype_ok(hyb_dtype t) {
    return (int)t >= 0 && t < HYB_DTYPE_COUNT;
}

const char *hyb_dtype_name(hyb_dtype t) {
    return dtype_ok(t) ? DT[t].name : "?";
}

int hyb_dtype_from_name(const char *name, hyb_dtype *out) {
    if (!name) return hyb_error_set(HYB_ERR_ARG, "dtype name is NULL");
    for (int i = 0; i < HYB_DTYPE_COUNT; i++) {
        if (!strcasecmp(name, DT[i].name)) {
            *out = (hyb_dtype)i;
            return HYB_OK;
        }
    }
    static const struct {
        const char *alias;
        hyb_dtype t;
    } AL[] = {{"float32", HYB_F32}, {"float", HYB_F32},     {"float16", HYB_F16},
              {"half", HYB_F16},    {"bfloat16", HYB_BF16}, {"int32", HYB_I32}};
    for (size_t i = 0; i < sizeof AL / sizeof AL[0]; i++) {
        if (!strcasecmp(name, AL[i].alias)) {
            *out = AL[i].t;
            return HYB_OK;
        }
    }
    return hyb_error_set(
        HYB_ERR_ARG,
        "unknown dtype '%s' (known: f32 f16 bf16 i32 q8_0 q4_0 q4_1 q4_k q6_k q5_0 q5_1)", name);
}

int64_t hyb_dtype_block_elems(hyb_dtype t) {
    return dtype_ok(t) ? DT[t].block_elems : 0;
}
int64_t hyb_dtype_block_bytes(hyb_dtype t) {
    return dtype_ok(t) ? DT[t].block_bytes : 0;
}

// ---- tensors --------------------------------------------------------------------------------

const char *hyb_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

/* Validate dtype/shape, fill the metadata of t (contiguous strides). */
static int tensor_init(hyb_tensor *t, hyb_dtype dtype, int ndim, const int64_t *shape,
                       const char *who) {
    if (!dtype_ok(dtype))
        return hyb_error_set(HYB_ERR_ARG, "%s: invalid dtype %d", who, (int)dtype);
    if (ndim < 0 || ndim > HYB_MAX_DIMS)
        return hyb_error_set(HYB_ERR_ARG, "%s: ndim %d outside [0, %d]", who, ndim, HYB_MAX_DIMS);
    if (ndim > 0 && !shape) return hyb_error_set(HYB_ERR_ARG, "%s: shape is NULL", who);
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            char s[128];
            hyb_shape_str(ndim, shape, s, sizeof s);
            return hyb_error_set(HYB_ERR_ARG, "%s: negative dimension in shape %s", who, s);
        }
        if (shape[i] > 0 && numel > INT64_MAX / 16 / shape[i]) {
            char s[128];
            hyb_shape_str(ndim, shape, s, sizeof s);
            return hyb_error_set(HYB_ERR_ARG, "%s: shape %s is too large", who, s);
        }
        numel *= shape[i];
    }
    int64_t be = DT[dtype].block_elems;
    if (be > 1 && ndim > 0 && shape[ndim - 1] % be != 0) {
        char s[128];
        hyb_shape_str(ndim, shape, s, sizeof s);
        return hyb_error_set(HYB_ERR_ARG,
                             "%s: shape %s %s: innermost dimension is not a multiple of the "
                             "block size %lld",
                             who, s, DT[dtype].name, (long long)be);
    }
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->device = HYB_DEV_CPU;
    t->ndim = ndim;
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->stride[i] = st;
        st *= shape[i];
    }
    for (int i = ndim; i < HYB_MAX_DIMS; i++) {
        t->shape[i] = 1;
        t->stride[i] = 1;
    }
    return HYB_OK;
}

hyb_tensor *hyb_tensor_new(hyb_dtype dtype, int ndim, const int64_t *shape) {
    hyb_tensor tmp;
    if (tensor_init(&tmp, dtype, ndim, shape, "hyb_tensor_new") != HYB_OK) return NULL;
    hyb_tensor *t = hyb_malloc(sizeof *t);
    if (!t) return NULL;
    *t = tmp;
    t->owner = HYB_OWN_HEAP;
    t->data = hyb_malloc(hyb_tensor_nbytes(t));
    if (!t->data) {
        char s[128];
        hyb_error_wrap(HYB_ERR_NOMEM, "hyb_tensor_new %s", hyb_tensor_shape_str(t, s, sizeof s));
        hyb_free(t);
        return NULL;
    }
    return t;
}

hyb_tensor *hyb_param_no_data(hyb_dtype dtype, int ndim, const int64_t *shape) {
    hyb_tensor tmp;
    if (tensor_init(&tmp, dtype, ndim, shape, "hyb_param_no_data") != HYB_OK) return NULL;
    hyb_tensor *t = hyb_malloc(sizeof *t);
    if (!t) return NULL;
    *t = tmp;
    t->owner = HYB_OWN_HEAP;
    t->data = NULL;
    return t;
}

hyb_tensor *hyb_tensor_wrap(hyb_dtype dtype, int ndim, const int64_t *shape, void *data) {
    hyb_tensor tmp;
    if (tensor_init(&tmp, dtype, ndim, shape, "hyb_tensor_wrap") != HYB_OK) return NULL;
    if (!data && hyb_tensor_numel(&tmp) > 0) {
        hyb_error_set(HYB_ERR_ARG, "hyb_tensor_wrap: data is NULL");
        return NULL;
    }
    hyb_tensor *t = hyb_malloc(sizeof *t);
    if (!t) return NULL;
    *t = tmp;
    t->owner = HYB_OWN_EXTERNAL;
    t->data = data;
    return t;
}

hyb_tensor *hyb_tensor_view(hyb_tensor *t, int ndim, const int64_t *shape) {
    if (!t) {
        hyb_error_set(HYB_ERR_ARG, "hyb_tensor_view: tensor is NULL");
        return NULL;
    }
    char a[128];
    if (!hyb_tensor_is_contiguous(t)) {
        hyb_error_set(HYB_ERR_ARG, "hyb_tensor_view: tensor %s is not contiguous",
                      hyb_tensor_shape_str(t, a, sizeof a));
        return NULL;
    }
    hyb_tensor tmp;
    if (tensor_init(&tmp, t->dtype, ndim, shape, "hyb_tensor_view") != HYB_OK) return NULL;
    if (hyb_tensor_numel(&tmp) != hyb_tensor_numel(t)) {
        char b[128];
        hyb_shape_str(ndim, shape, b, sizeof b);
        hyb_error_set(HYB_ERR_ARG,
                      "hyb_tensor_view: cannot view %s as %s: element counts differ "
                      "(%lld vs %lld)",
                      hyb_tensor_shape_str(t, a, sizeof a), b, (long long)hyb_tensor_numel(t),
                      (long long)hyb_tensor_numel(&tmp));
        return NULL;
    }
    hyb_tensor *v = hyb_malloc(sizeof *v);
    if (!v) return NULL;
    *v = tmp;
    v->owner = HYB_OWN_VIEW;
    v->device = t->device;
    v->data = t->data;
    v->requires_grad = t->requires_grad; /* a view of a trainable tensor still wants a grad: the
                                            tape reports it (no ->grad) rather than dropping it */
    memcpy(v->name, t->name, sizeof v->name);
    return v;
}

hyb_tensor *hyb_tensor_clone(const hyb_tensor *t) {
    if (!t) {
        hyb_error_set(HYB_ERR_ARG, "hyb_tensor_clone: tensor is NULL");
        return NULL;
    }
    char a[128];
    if (t->device != HYB_DEV_CPU) {
        hyb_error_set(HYB_ERR_UNSUPPORTED, "hyb_tensor_clone: tensor %s is not on the CPU",
                      hyb_tensor_shape_str(t, a, sizeof a));
        return NULL;
    }
    hyb_tensor *c = hyb_tensor_new(t->dtype, t->ndim, t->shape);
    if (!c) return NULL;
    if (hyb_tensor_is_contiguous(t)) {
        memcpy(c->data, t->data, hyb_tensor_nbytes(t));
    } else {
        /* element-wise strided copy (non-block dtypes only: block dtypes are always contiguous) */
        size_t es = (size_t)DT[t->dtype].block_bytes;
        int64_t n = hyb_tensor_numel(t);
        for (int64_t i = 0; i < n; i++) {
            int64_t rem = i, off = 0;
            for (int d = t->ndim - 1; d >= 0; d--) {
                off += (rem % t->shape[d]) * t->stride[d];
                rem /= t->shape[d];
            }
            memcpy((char *)c->data + (size_t)i * es, (const char *)t->data + (size_t)off * es, es);
        }
    }
    memcpy(c->name, t->name, sizeof c->name);
    return c;
}

void hyb_tensor_free(hyb_tensor *t) {
    if (!t) return;
    if (t->owner == HYB_OWN_ARENA) return; /* struct and data belong to the arena */
    if (t->owner == HYB_OWN_HEAP || t->owner == HYB_OWN_PARAM) {
        if (t->device == HYB_DEV_CPU) {
            hyb_free(t->data);
        } else {
            const hyb_backend *be = hyb_backend_get(t->device);
            if (be && t->data) be->free(be, t->data);
        }
    }
    hyb_free(t);
}

hyb_tensor *hyb_tensor_new_on(const hyb_backend *be, hyb_dtype dtype, int ndim,
                              const int64_t *shape) {
    if (!be || be->device == HYB_DEV_CPU) return hyb_tensor_new(dtype, ndim, shape);
    hyb_tensor tmp;
    if (tensor_init(&tmp, dtype, ndim, shape, "hyb_tensor_new_on") != HYB_OK) return NULL;
    hyb_tensor *t = hyb_malloc(sizeof *t);
    if (!t) return NULL;
    *t = tmp;
    t->owner = HYB_OWN_HEAP;
    t->device = be->device;
    size_t nb = hyb_tensor_nbytes(t);
    t->data = be->alloc(be, nb ? nb : 1);
    char s[128];
    if (!t->data || be->memset0(be, t->data, nb) != HYB_OK) {
        hyb_error_wrap(HYB_ERR_NOMEM, "hyb_tensor_new_on %s: %s %s", be->name,
                       hyb_tensor_shape_str(t, s, sizeof s), t->name);
        if (t->data) be->free(be, t->data);
        hyb_free(t);
        return NULL;
    }
    return t;
}

int hyb_tensor_download(const hyb_tensor *t, void *host_dst) {
    size_t nb = hyb_tensor_nbytes(t);
    if (t->device == HYB_DEV_CPU) {
        if (nb) memcpy(host_dst, t->data, nb);
        return HYB_OK;
    }
    const hyb_backend *be = hyb_backend_get(t->device);
    if (!be) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "reading tensor '%s'", t->name);
    return be->download(be, host_dst, t->data, nb);
}

int hyb_tensor_upload(hyb_tensor *t, const void *host_src) {
    size_t nb = hyb_tensor_nbytes(t);
    if (t->device == HYB_DEV_CPU) {
        if (nb) memcpy(t->data, host_src, nb);
        return HYB_OK;
    }
    const hyb_backend *be = hyb_backend_get(t->device);
    if (!be) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "writing tensor '%s'", t->name);
    return be->upload(be, t->data, host_src, nb);
}

/* Move the data of an owning tensor to another device in place (its ->grad too). */
int hyb_tensor_move(hyb_tensor *t, const hyb_backend *be) {
    char s[128];
    if (!t || !be) return hyb_error_set(HYB_ERR_ARG, "hyb_tensor_move: NULL argument");
    if (t->device == be->device) return HYB_OK;
    if (t->owner != HYB_OWN_HEAP && t->owner != HYB_OWN_PARAM)
        return hyb_error_set(HYB_ERR_ARG, "hyb_tensor_move: '%s' %s does not own its data", t->name,
                             hyb_tensor_shape_str(t, s, sizeof s));
    if (!hyb_tensor_is_contiguous(t))
        return hyb_error_set(HYB_ERR_ARG, "hyb_tensor_move: '%s' is not contiguous", t->name);
    size_t nb = hyb_tensor_nbytes(t);
    void *host = NULL; /* the data as host memory */
    int rc = HYB_OK;
    if (t->device == HYB_DEV_CPU)
        host = t->data;
    else {
        host = hyb_malloc(nb ? nb : 1);
        if (!host) return hyb_error_set(HYB_ERR_NOMEM, "hyb_tensor_move: out of memory");
        rc = hyb_tensor_download(t, host);
    }
    void *dst = NULL;
    if (rc == HYB_OK) {
        if (be->device == HYB_DEV_CPU)
            dst = host;
        else {
            dst = be->alloc(be, nb ? nb : 1);
            if (!dst)
                rc = hyb_error_wrap(HYB_ERR_NOMEM, "moving '%s' %s to %s", t->name,
                                    hyb_tensor_shape_str(t, s, sizeof s), be->name);
            else if ((rc = be->upload(be, dst, host, nb)) != HYB_OK)
                be->free(be, dst);
        }
    }
    if (rc != HYB_OK) {
        if (host != t->data) hyb_free(host);
        return rc;
    }
    /* release the old storage (the host copy is kept when it is the destination) */
    if (t->device == HYB_DEV_CPU) {
        if (dst != host) hyb_free(host);
    } else {
        const hyb_backend *old = hyb_backend_get(t->device);
        if (old) old->free(old, t->data);
        if (dst != host) hyb_free(host);
    }
    t->data = dst;
    t->device = be->device;
    if (t->grad) return hyb_tensor_move(t->grad, be);
    return HYB_OK;
}

int hyb_tensor_grad_ensure(hyb_tensor *t) {
    char s[128];
    if (!t) return hyb_error_set(HYB_ERR_ARG, "hyb_tensor_grad_ensure: NULL tensor");
    if (t->grad) return HYB_OK;
    if (t->owner != HYB_OWN_PARAM)
        return hyb_error_set(HYB_ERR_ARG,
                             "tensor '%s' %s has no ->grad and is not a parameter (its owner "
                             "must allocate it)",
                             t->name, hyb_tensor_shape_str(t, s, sizeof s));
    const hyb_backend *be = hyb_backend_get(t->device);
    if (!be) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "gradient of '%s'", t->name);
    t->grad = hyb_tensor_new_on(be, HYB_F32, t->ndim, t->shape);
    if (!t->grad)
        return hyb_error_wrap(HYB_ERR_NOMEM, "gradient of '%s' %s", t->name,
                              hyb_tensor_shape_str(t, s, sizeof s));
    return HYB_OK;
}

int64_t hyb_tensor_numel(const hyb_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t hyb_tensor_nbytes(const hyb_tensor *t) {
    int64_t n = hyb_tensor_numel(t);
    return (size_t)(n / DT[t->dtype].block_elems * DT[t->dtype].block_bytes);
}

int hyb_tensor_is_contiguous(const hyb_tensor *t) {
    int64_t st = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != st) return 0;
        st *= t->shape[i];
    }
    return 1;
}

const char *hyb_tensor_shape_str(const hyb_tensor *t, char *buf, size_t n) {
    if (!buf || n == 0) return buf;
    if (!t) {
        snprintf(buf, n, "(null)");
        return buf;
    }
    char s[128];
    hyb_shape_str(t->ndim, t->shape, s, sizeof s);
    snprintf(buf, n, "%s %s", s, hyb_dtype_name(t->dtype));
    return buf;
}

int hyb_tensor_same_shape(const hyb_tensor *a, const hyb_tensor *b) {
    if (!a || !b || a->dtype != b->dtype || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

// ---- f16 / bf16 -----------------------------------------------------------------------------

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float hyb_bf16_to_f32(uint16_t h) {
    return u2f((uint32_t)h << 16);
}

uint16_t hyb_f32_to_bf16(float f) {
    uint32_t x = f2u(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign and top payload, force quiet */
        return (uint16_t)((x >> 16) | 0x0040u);
    /* round to nearest even; overflow past the largest finite bf16 lands on inf */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float hyb_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 exactly */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) return u2f(sign | 0x7f800000u | (mant << 13)); /* inf / NaN (payload kept) */
    return u2f(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t hyb_f32_to_f16(float f) {
    uint32_t x = f2u(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) { /* inf or NaN */
        if (x == 0x7f800000u) return sign | 0x7c00u;
        return (uint16_t)(sign | 0x7e00u | ((x >> 13) & 0x3ffu)); /* quiet NaN */
    }
    if (x >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to inf */
    uint32_t exp = x >> 23;
    if (exp < 113) {
        /* result is an f16 subnormal (or zero): value = m * 2^-24 */
        uint32_t mant = (x & 0x7fffffu) | (exp ? 0x800000u : 0);
        uint32_t shift = 126 - exp;              /* >= 14 */
        if (exp == 0 || shift > 24) return sign; /* below half the smallest subnormal */
        uint32_t m = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (m & 1u))) m++; /* m == 0x400 is the smallest normal */
        return (uint16_t)(sign | m);
    }
    uint32_t r = ((exp - 112u) << 10) | ((x >> 13) & 0x3ffu);
    uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++; /* carry may bump the exponent */
    return (uint16_t)(sign | r);
}

// ---- conversion -----------------------------------------------------------------------------

/* hyb_dequantize (quantised GGUF types) is implemented by the GGUF reader in core/io/dequant.c. */

int hyb_convert_to_f32(hyb_dtype src_type, const void *src, float *dst, int64_t n) {
    if (n < 0)
        return hyb_error_set(HYB_ERR_ARG, "hyb_convert_to_f32: negative count %lld", (long long)n);
    if (n > 0 && (!src || !dst))
        return hyb_error_set(HYB_ERR_ARG, "hyb_convert_to_f32: NULL buffer");
    switch (src_type) {
    case HYB_F32:
        if (n) memmove(dst, src, (size_t)n * 4);
        return HYB_OK;
    case HYB_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = hyb_f16_to_f32(s[i]);
        return HYB_OK;
    }
    case HYB_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = hyb_bf16_to_f32(s[i]);
        return HYB_OK;
    }
    case HYB_I32: {
        const int32_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = (float)s[i];
        return HYB_OK;
    }
    case HYB_Q8_0:
    case HYB_Q4_0:
    case HYB_Q4_1:
    case HYB_Q4_K:
    case HYB_Q6_K:
    case HYB_Q5_0:
    case HYB_Q5_1:
    case HYB_Q5_K:
        if (n % DT[src_type].block_elems)
            return hyb_error_set(HYB_ERR_ARG,
                                 "hyb_convert_to_f32: %lld elements of %s is not a whole number "
                                 "of %lld-element blocks",
                                 (long long)n, DT[src_type].name,
                                 (long long)DT[src_type].block_elems);
        return hyb_dequantize(src_type, src, dst, n);
    default:
        return hyb_error_set(HYB_ERR_ARG, "hyb_convert_to_f32: invalid dtype %d", (int)src_type);
    }
}

int hyb_convert_from_f32(hyb_dtype dst_type, const float *src, void *dst, int64_t n) {
    if (n < 0)
        return hyb_error_set(HYB_ERR_ARG, "hyb_convert_from_f32: negative count %lld",
                             (long long)n);
    if (n > 0 && (!src || !dst))
        return hyb_error_set(HYB_ERR_ARG, "hyb_convert_from_f32: NULL buffer");
    switch (dst_type) {
    case HYB_F32:
        if (n) memmove(dst, src, (size_t)n * 4);
        return HYB_OK;
    case HYB_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = hyb_f32_to_f16(src[i]);
        return HYB_OK;
    }
    case HYB_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = hyb_f32_to_bf16(src[i]);
        return HYB_OK;
    }
    default:
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "hyb_convert_from_f32: conversion to %s is not supported "
                             "(f32, f16, bf16 only)",
                             hyb_dtype_name(dst_type));
    }
}

// ---- RNG: xoshiro256** seeded by splitmix64 -------------------------------------------------

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

void hyb_rng_seed(hyb_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

uint64_t hyb_rng_next(hyb_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float hyb_rng_uniform(hyb_rng *r) {
    return (float)(hyb_rng_next(r) >> 40) * 0x1p-24f;
}

/* Box-Muller from two 53-bit uniforms; u1 in (0, 1] so log(u1) is finite. */
static void box_muller(hyb_rng *r, double *z0, double *z1) {
    double u1 = ((double)(hyb_rng_next(r) >> 11) + 1.0) * 0x1p-53;
    double u2 = (double)(hyb_rng_next(r) >> 11) * 0x1p-53;
    double rad = sqrt(-2.0 * log(u1));
    double a = 6.283185307179586476925 * u2;
    *z0 = rad * cos(a);
    if (z1) *z1 = rad * sin(a);
}

float hyb_rng_normal(hyb_rng *r) {
    double z;
    box_muller(r, &z, NULL);
    return (float)z;
}

void hyb_rng_fill_normal(hyb_rng *r, float *x, int64_t n, float mean, float std) {
    int64_t i = 0;
    for (; i + 1 < n; i += 2) {
        double z0, z1;
        box_muller(r, &z0, &z1);
        x[i] = (float)(mean + std * z0);
        x[i + 1] = (float)(mean + std * z1);
    }
    if (i < n) x[i] = (float)(mean + std * hyb_rng_normal(r));
}

void hyb_rng_fill_uniform(hyb_rng *r, float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) {
        float u = hyb_rng_uniform(r);
        float v = lo + (hi - lo) * u;
        x[i] = v < hi ? v : lo; /* rounding must not reach hi */
    }
}
