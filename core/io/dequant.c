/* dequant.c: GGML storage types -> f32.
 *
 * Block layouts follow the GGUF/GGML specification as published with ggml (docs/gguf.md) and
 * the python `gguf` package (gguf/constants.py GGML_QUANT_SIZES, gguf/quants.py). All scales are
 * little-endian IEEE half (f16) unless noted. QK_K = 256. Element e of a block is written y[e].
 *
 *   type  bytes/elems  layout                     value
 *   Q4_0   18 / 32     d:f16, qs[16]              y[j] = d * ((qs[j] & 15) - 8), y[j+16]: qs[j] >>
 * 4 Q4_1   20 / 32     d, m, qs[16]               y = d * q + m     (q: nibbles as above) Q5_0   22
 * / 32     d, qh:u32, qs[16]          q = nibble | (bit e of qh) << 4; y = d * (q - 16) Q5_1   24 /
 * 32     d, m, qh:u32, qs[16]       y = d * q + m Q8_0   34 / 32     d, qs:i8[32]               y =
 * qs[e] * d Q2_K   84 / 256    scales[16], qs[64], d, dmin Q3_K  110 / 256    hmask[32], qs[64],
 * scales[12] (16 x 6 bit), d Q4_K  144 / 256    d, dmin, scales[12] (8 scales + 8 mins, 6 bit),
 * qs[128] Q5_K  176 / 256    d, dmin, scales[12], qh[32], qs[128] Q6_K  210 / 256    ql[128],
 * qh[64], scales:i8[16], d Q8_K  292 / 256    d:f32, qs:i8[256], bsums:i16[16]    y = d * qs[e] The
 * per-type comments below give the bit positions.
 *
 * Arithmetic: every product and sum is done in f32 in the order the reference formulas use, so
 * the results are bit-identical to the python reference (tests/test_gguf.c checks every type).
 * For these formats the products feeding an addition (f16 scale x small integer) are exact in
 * f32, so a fused multiply-add would round the same; contraction is still switched off for this
 * file so that the guarantee does not rest on that argument.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <string.h>

#include "hyb/gguf.h"

#define QK_K 256

/* ---- type table -------------------------------------------------------------------------------*/

typedef void (*dq_fn)(const uint8_t *src, float *dst, int64_t nblocks);

typedef struct type_info {
    const char *name;
    int64_t blck; /* elements per block */
    int64_t size; /* bytes per block */
    dq_fn fn;     /* NULL: known size, not decoded */
} type_info;

static void dq_f32(const uint8_t *s, float *y, int64_t nb);
static void dq_f16(const uint8_t *s, float *y, int64_t nb);
static void dq_bf16(const uint8_t *s, float *y, int64_t nb);
static void dq_f64(const uint8_t *s, float *y, int64_t nb);
static void dq_i8(const uint8_t *s, float *y, int64_t nb);
static void dq_i16(const uint8_t *s, float *y, int64_t nb);
static void dq_i32(const uint8_t *s, float *y, int64_t nb);
static void dq_i64(const uint8_t *s, float *y, int64_t nb);
static void dq_q4_0(const uint8_t *s, float *y, int64_t nb);
static void dq_q4_1(const uint8_t *s, float *y, int64_t nb);
static void dq_q5_0(const uint8_t *s, float *y, int64_t nb);
static void dq_q5_1(const uint8_t *s, float *y, int64_t nb);
static void dq_q8_0(const uint8_t *s, float *y, int64_t nb);
static void dq_q2_k(const uint8_t *s, float *y, int64_t nb);
static void dq_q3_k(const uint8_t *s, float *y, int64_t nb);
static void dq_q4_k(const uint8_t *s, float *y, int64_t nb);
static void dq_q5_k(const uint8_t *s, float *y, int64_t nb);
static void dq_q6_k(const uint8_t *s, float *y, int64_t nb);
static void dq_q8_k(const uint8_t *s, float *y, int64_t nb);

/* Indexed by GGML type id. Sizes as in GGML_QUANT_SIZES (gguf-py constants.py). */
// clang-format off
static const type_info TYPES[] = {
    [0] = {"F32", 1, 4, dq_f32},
    [1] = {"F16", 1, 2, dq_f16},
    [2] = {"Q4_0", 32, 18, dq_q4_0},
    [3] = {"Q4_1", 32, 20, dq_q4_1},
    [6] = {"Q5_0", 32, 22, dq_q5_0},
    [7] = {"Q5_1", 32, 24, dq_q5_1},
    [8] = {"Q8_0", 32, 34, dq_q8_0},
    [9] = {"Q8_1", 32, 40, NULL},
    [10] = {"Q2_K", QK_K, 84, dq_q2_k},
    [11] = {"Q3_K", QK_K, 110, dq_q3_k},
    [12] = {"Q4_K", QK_K, 144, dq_q4_k},
    [13] = {"Q5_K", QK_K, 176, dq_q5_k},
    [14] = {"Q6_K", QK_K, 210, dq_q6_k},
    [15] = {"Q8_K", QK_K, 292, dq_q8_k},
    [16] = {"IQ2_XXS", QK_K, 66, NULL},
    [17] = {"IQ2_XS", QK_K, 74, NULL},
    [18] = {"IQ3_XXS", QK_K, 98, NULL},
    [19] = {"IQ1_S", QK_K, 50, NULL},
    [20] = {"IQ4_NL", 32, 18, NULL},
    [21] = {"IQ3_S", QK_K, 110, NULL},
    [22] = {"IQ2_S", QK_K, 82, NULL},
    [23] = {"IQ4_XS", QK_K, 136, NULL},
    [24] = {"I8", 1, 1, dq_i8},
    [25] = {"I16", 1, 2, dq_i16},
    [26] = {"I32", 1, 4, dq_i32},
    [27] = {"I64", 1, 8, dq_i64},
    [28] = {"F64", 1, 8, dq_f64},
    [29] = {"IQ1_M", QK_K, 56, NULL},
    [30] = {"BF16", 1, 2, dq_bf16},
    [34] = {"TQ1_0", QK_K, 54, NULL},
    [35] = {"TQ2_0", QK_K, 66, NULL},
    [39] = {"MXFP4", 32, 17, NULL},
};
// clang-format on
#define N_TYPES ((int)(sizeof(TYPES) / sizeof(TYPES[0])))

static const type_info *type_get(int type) {
    if (type < 0 || type >= N_TYPES || TYPES[type].name == NULL) return NULL;
    return &TYPES[type];
}

const char *hyb_ggml_type_name(int type) {
    const type_info *t = type_get(type);
    return t ? t->name : NULL;
}

int64_t hyb_ggml_block_elems(int type) {
    const type_info *t = type_get(type);
    return t ? t->blck : 0;
}

int64_t hyb_ggml_block_bytes(int type) {
    const type_info *t = type_get(type);
    return t ? t->size : 0;
}

int hyb_ggml_can_dequantize(int type) {
    const type_info *t = type_get(type);
    return t && t->fn;
}

int hyb_ggml_type_from_dtype(hyb_dtype t) {
    switch (t) {
    case HYB_F32:
        return HYB_GGML_F32;
    case HYB_F16:
        return HYB_GGML_F16;
    case HYB_BF16:
        return HYB_GGML_BF16;
    case HYB_I32:
        return HYB_GGML_I32;
    case HYB_Q8_0:
        return HYB_GGML_Q8_0;
    case HYB_Q4_0:
        return HYB_GGML_Q4_0;
    case HYB_Q4_1:
        return HYB_GGML_Q4_1;
    case HYB_Q4_K:
        return HYB_GGML_Q4_K;
    case HYB_Q6_K:
        return HYB_GGML_Q6_K;
    case HYB_Q5_0:
        return HYB_GGML_Q5_0;
    case HYB_Q5_1:
        return HYB_GGML_Q5_1;
    case HYB_Q5_K:
        return HYB_GGML_Q5_K;
    default:
        return -1;
    }
}

int hyb_ggml_type_to_dtype(int type, hyb_dtype *out) {
    for (int d = 0; d < HYB_DTYPE_COUNT; d++) {
        if (hyb_ggml_type_from_dtype((hyb_dtype)d) == type) {
            *out = (hyb_dtype)d;
            return HYB_OK;
        }
    }
    const char *name = hyb_ggml_type_name(type);
    return hyb_error_set(HYB_ERR_UNSUPPORTED, "GGML type %s (%d) has no hyb dtype",
                         name ? name : "unknown", type);
}

/* ---- dispatch ---------------------------------------------------------------------------------*/

int hyb_ggml_dequantize(int type, const void *src, float *dst, int64_t n) {
    const type_info *t = type_get(type);
    if (!t) return hyb_error_set(HYB_ERR_UNSUPPORTED, "dequantize: unknown GGML type %d", type);
    if (!t->fn)
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "dequantize: GGML type %s (%d) is not supported",
                             t->name, type);
    if (n < 0 || n % t->blck != 0)
        return hyb_error_set(
            HYB_ERR_ARG, "dequantize %s: %lld elements is not a multiple of the block size %lld",
            t->name, (long long)n, (long long)t->blck);
    if (n == 0) return HYB_OK;
    if (!src || !dst) return hyb_error_set(HYB_ERR_ARG, "dequantize %s: NULL buffer", t->name);
    const int64_t nb = n / t->blck;
    /* Chunks of about 64 KiB of output; each chunk is independent, so the result does not depend
     * on the thread count. */
    int64_t chunk = (16384 + t->blck - 1) / t->blck;
    const int64_t nchunks = (nb + chunk - 1) / chunk;
    const uint8_t *s = (const uint8_t *)src;
#pragma omp parallel for schedule(static) if (nchunks > 4)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t b0 = c * chunk;
        int64_t cnt = nb - b0 < chunk ? nb - b0 : chunk;
        t->fn(s + b0 * t->size, dst + b0 * t->blck, cnt);
    }
    return HYB_OK;
}

int hyb_dequantize(hyb_dtype type, const void *src, float *dst, int64_t n) {
    int g = hyb_ggml_type_from_dtype(type);
    if (g < 0)
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "dequantize: dtype %d has no decoder", (int)type);
    return hyb_ggml_dequantize(g, src, dst, n);
}

/* ---- little-endian loads (no alignment assumed) -----------------------------------------------*/

static inline uint16_t ld_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t ld_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t ld_u64(const uint8_t *p) {
    return (uint64_t)ld_u32(p) | ((uint64_t)ld_u32(p + 4) << 32);
}
static inline float ld_h(const uint8_t *p) {
    return hyb_f16_to_f32(ld_u16(p));
}
static inline float ld_f32(const uint8_t *p) {
    uint32_t u = ld_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- plain types ------------------------------------------------------------------------------*/

static void dq_f32(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = ld_f32(s + 4 * i);
}
static void dq_f16(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = ld_h(s + 2 * i);
}
/* bf16 is the top half of an f32: exact, NaN payloads kept. */
static void dq_bf16(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)ld_u16(s + 2 * i) << 16;
        memcpy(&y[i], &u, 4);
    }
}
static void dq_f64(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint64_t u = ld_u64(s + 8 * i);
        double d;
        memcpy(&d, &u, 8);
        y[i] = (float)d;
    }
}
static void dq_i8(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(int8_t)s[i];
}
static void dq_i16(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(int16_t)ld_u16(s + 2 * i);
}
static void dq_i32(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(int32_t)ld_u32(s + 4 * i);
}
static void dq_i64(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)(int64_t)ld_u64(s + 8 * i);
}

/* ---- 32-element blocks ------------------------------------------------------------------------*/

/* Q4_0: d, then 16 bytes; byte j holds element j (low nibble) and element j + 16 (high). */
static void dq_q4_0(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 18, y += 32) {
        const float d = ld_h(s);
        const uint8_t *qs = s + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((qs[j] & 0x0F) - 8);
            y[j + 16] = d * (float)((qs[j] >> 4) - 8);
        }
    }
}

/* Q4_1: d, m (min), nibbles as Q4_0 without the offset. */
static void dq_q4_1(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 20, y += 32) {
        const float d = ld_h(s), m = ld_h(s + 2);
        const uint8_t *qs = s + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(qs[j] & 0x0F) + m;
            y[j + 16] = d * (float)(qs[j] >> 4) + m;
        }
    }
}

/* Q5_0: d, qh (u32: bit e is the fifth bit of element e), nibbles as Q4_0; offset 16. */
static void dq_q5_0(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 22, y += 32) {
        const float d = ld_h(s);
        const uint32_t qh = ld_u32(s + 2);
        const uint8_t *qs = s + 6;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            y[j] = d * (float)(lo - 16);
            y[j + 16] = d * (float)(hi - 16);
        }
    }
}

/* Q5_1: d, m, qh, nibbles; y = d * q + m. */
static void dq_q5_1(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 24, y += 32) {
        const float d = ld_h(s), m = ld_h(s + 2);
        const uint32_t qh = ld_u32(s + 4);
        const uint8_t *qs = s + 8;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            y[j] = d * (float)lo + m;
            y[j + 16] = d * (float)hi + m;
        }
    }
}

/* Q8_0: d, 32 signed bytes. */
static void dq_q8_0(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 34, y += 32) {
        const float d = ld_h(s);
        for (int j = 0; j < 32; j++)
            y[j] = (float)(int8_t)s[2 + j] * d;
    }
}

/* ---- 256-element super-blocks -----------------------------------------------------------------*/

/* Q2_K: scales[16] (low nibble: scale, high nibble: min, one pair per 16 elements), qs[64]
 * (2 bits each), d, dmin. Element e = 128 h + 32 s + l (h < 2, s < 4, l < 32) is bits 2s..2s+1
 * of qs[32 h + l]; its group is e / 16. y = (d * sc) * q - (dmin * mn). */
static void dq_q2_k(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 84, y += QK_K) {
        const uint8_t *sc = s, *qs = s + 16;
        const float d = ld_h(s + 80), dmin = ld_h(s + 82);
        for (int h = 0; h < 2; h++)
            for (int sh = 0; sh < 4; sh++)
                for (int l = 0; l < 32; l++) {
                    int e = 128 * h + 32 * sh + l;
                    int g = e / 16;
                    float dl = d * (float)(sc[g] & 0x0F);
                    float ml = dmin * (float)(sc[g] >> 4);
                    int q = (qs[32 * h + l] >> (2 * sh)) & 3;
                    y[e] = dl * (float)q - ml;
                }
    }
}

/* Q3_K: hmask[32], qs[64], scales[12], d. 16 six-bit scales: scale k has its low 4 bits in
 * scales[k] (k < 8, low nibble) or scales[k - 8] (high nibble), its high 2 bits at bits
 * 2(k / 4)..+1 of scales[8 + k % 4]; value = that - 32. Element e = 128 h + 32 s + l has low
 * bits 2s..2s+1 of qs[32 h + l] and its high bit at bit e / 32 of hmask[e % 32]; q = low - 4
 * when that bit is clear, else low. y = (d * scale[e / 16]) * q. */
static void dq_q3_k(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 110, y += QK_K) {
        const uint8_t *hm = s, *qs = s + 32, *sc = s + 96;
        const float d = ld_h(s + 108);
        float dl[16];
        for (int k = 0; k < 16; k++) {
            int lo = k < 8 ? (sc[k] & 0x0F) : (sc[k - 8] >> 4);
            int hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
            dl[k] = d * (float)((lo | (hi << 4)) - 32);
        }
        for (int h = 0; h < 2; h++)
            for (int sh = 0; sh < 4; sh++)
                for (int l = 0; l < 32; l++) {
                    int e = 128 * h + 32 * sh + l;
                    int q = (qs[32 * h + l] >> (2 * sh)) & 3;
                    if (!((hm[l] >> (e / 32)) & 1)) q -= 4;
                    y[e] = dl[e / 16] * (float)q;
                }
    }
}

/* The 12-byte scale/min block of Q4_K and Q5_K: 8 six-bit scales and 8 six-bit mins.
 * j < 4: sc = s[j] & 63, mn = s[j + 4] & 63.
 * j >= 4: sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4).
 */
static void k_scale_min(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K: d, dmin, scales[12], qs[128]. Sub-block j (32 elements) = 2c + t takes nibble t (low
 * first) of qs[32 c .. 32 c + 31]. y = (d * sc_j) * q - (dmin * mn_j). */
static void dq_q4_k(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 144, y += QK_K) {
        const float d = ld_h(s), dmin = ld_h(s + 2);
        const uint8_t *sc = s + 4, *qs = s + 16;
        for (int j = 0; j < 8; j++) {
            int isc, imn;
            k_scale_min(sc, j, &isc, &imn);
            const float dl = d * (float)isc, ml = dmin * (float)imn;
            const uint8_t *q = qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++)
                y[32 * j + l] = dl * (float)((q[l] >> shift) & 0x0F) - ml;
        }
    }
}

/* Q5_K: d, dmin, scales[12], qh[32], qs[128]. As Q4_K plus a fifth bit: bit j of qh[l] for
 * element l of sub-block j. */
static void dq_q5_k(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 176, y += QK_K) {
        const float d = ld_h(s), dmin = ld_h(s + 2);
        const uint8_t *sc = s + 4, *qh = s + 16, *qs = s + 48;
        for (int j = 0; j < 8; j++) {
            int isc, imn;
            k_scale_min(sc, j, &isc, &imn);
            const float dl = d * (float)isc, ml = dmin * (float)imn;
            const uint8_t *q = qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; l++) {
                int v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
                y[32 * j + l] = dl * (float)v - ml;
            }
        }
    }
}

/* Q6_K: ql[128], qh[64], scales:i8[16], d. In half h (128 elements), element 64 t + i
 * (t < 2, i < 64) has low nibble t of ql[64 h + i]; element 32 u + l (u < 4, l < 32) has its
 * top two bits at bits 2u..2u+1 of qh[32 h + l]. q - 32 is scaled by d * scales[e / 16]. */
static void dq_q6_k(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 210, y += QK_K) {
        const uint8_t *ql = s, *qh = s + 128;
        const int8_t *sc = (const int8_t *)(s + 192);
        const float d = ld_h(s + 208);
        float dl[16];
        for (int k = 0; k < 16; k++)
            dl[k] = d * (float)sc[k];
        for (int h = 0; h < 2; h++)
            for (int e = 0; e < 128; e++) {
                int lo = (ql[64 * h + e % 64] >> (4 * (e / 64))) & 0x0F;
                int hi = (qh[32 * h + e % 32] >> (2 * (e / 32))) & 3;
                int ee = 128 * h + e;
                y[ee] = dl[ee / 16] * (float)((lo | (hi << 4)) - 32);
            }
    }
}

/* Q8_K: d:f32, 256 signed bytes, then 16 i16 block sums (not needed to decode). */
static void dq_q8_k(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, s += 292, y += QK_K) {
        const float d = ld_f32(s);
        for (int e = 0; e < QK_K; e++)
            y[e] = d * (float)(int8_t)s[4 + e];
    }
}
