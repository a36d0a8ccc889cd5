/* core/backend/cpu/cpu_quant.c: y = x W^T from GGUF blocks (see cpu_quant.h).
 *
 * Block layouts (GGUF, as core/io/dequant.c documents them): Q8_0 = d:f16, qs:i8[32];
 * Q4_0 = d:f16, qs[16] (byte j: element j in the low nibble, element j + 16 in the high), value
 * d * (nibble - 8); Q4_1 = d:f16, m:f16, qs[16], value d * nibble + m.
 * Q5_0 = d, qh:u32, qs[16]: value d * (q - 16), q = nibble | (bit e of qh) << 4; Q5_1 = d, m, qh,
 * qs[16]: value d * q + m.
 * K-quants, 256 values: Q4_K = d, dmin, scales[12] (8 six-bit scales + mins), qs[128]; sub-block j
 * (32 values) is nibble j%2 of qs[32(j/2) ..], value d sc_j q - dmin mn_j: the kernels treat each
 * sub-block as a Q4_1 block with scale d sc_j and offset -dmin mn_j. Q5_K = d, dmin, scales[12],
 * qh[32], qs[128]: Q4_K's layout with qh inserted and a fifth bit, bit j of qh[l] for element l of
 * sub-block j (values 0..31). Q6_K = ql[128], qh[64],
 * scales:i8[16], d; 32-value block u of half h: low nibble u/2 of ql[64h + 32(u%2) + l], high two
 * bits 2u of qh[32h + l], value d sc_(e/16) (q - 32): a Q8_0-like block with two scales.
 * The activation side is unchanged: 32-value blocks (sub-blocks of a K-quant super-block).
 *
 * Lanes. Every kernel keeps 8 f32 partial sums ("lanes") and reduces them at the end in one fixed
 * order, ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), which is what the AVX2 reduction
 * computes; the scalar kernels walk the same lanes with fmaf where the AVX2 code fuses, so both
 * round identically. This file is compiled without FP contraction (the pragma below) so that the
 * compiler cannot fuse what the source does not.
 *   PRECISE: vector k of a block holds elements 8k..8k+7, so lane l accumulates elements 8k + l;
 *            per block t = w0 x0 (mul), t += w1 x1, w2 x2, w3 x3 (fma), lane += t * d (fma).
 *   FAST:    maddubs + madd give lane l the exact integer sum of elements 4l..4l+3, which is why
 *            activation scales can be per 4 values at no cost: lane += isum * (s_l * d) (fma).
 * Q4_1's offset m * sum(x) is accumulated per block in a separate scalar (fmaf in both); FAST
 * takes sum(x') of the rounded activations, as EMUL does.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "backend/cpu/cpu_quant.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HYB_QUANT_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_pool.h"

#define QK 32

typedef enum { T_Q8_0 = 0, T_Q4_0, T_Q4_1, T_Q4_K, T_Q6_K, T_Q5_0, T_Q5_1, T_Q5_K, T_COUNT } qtype;

static int qtype_of(hyb_dtype t) {
    switch (t) {
    case HYB_Q8_0:
        return T_Q8_0;
    case HYB_Q4_0:
        return T_Q4_0;
    case HYB_Q4_1:
        return T_Q4_1;
    case HYB_Q4_K:
        return T_Q4_K;
    case HYB_Q6_K:
        return T_Q6_K;
    case HYB_Q5_0:
        return T_Q5_0;
    case HYB_Q5_1:
        return T_Q5_1;
    case HYB_Q5_K:
        return T_Q5_K;
    default:
        return -1;
    }
}

static const int BLOCK_BYTES[T_COUNT] = {34, 18, 20, 144, 210, 22, 24, 176};
static const int BLOCK_ELEMS[T_COUNT] = {32, 32, 32, 256, 256, 32, 32, 256};

int hyb_quant_supported(hyb_dtype t) {
    return qtype_of(t) >= 0;
}

int64_t hyb_quant_row_bytes(hyb_dtype t, int64_t K) {
    return K / hyb_dtype_block_elems(t) * hyb_dtype_block_bytes(t);
}

/* ---- the activation row handed to a dot kernel ------------------------------------------------*/

typedef struct xrow {
    const float *x;    /* PRECISE/EMUL: the f32 row */
    const int8_t *q;   /* FAST: int8 row */
    const float *s;    /* FAST: K/4 lane scales */
    const float *xsum; /* K/32 per-block sums of the f32 row (Q4_1's offset term) */
} xrow;

typedef float (*dot_fn)(const uint8_t *w, const xrow *xr, int nb);
/* the same for M rows at once: out[m] = dot(w, xr[m]) (PRECISE, AVX2; see mdot_p_q8_0_avx2) */
typedef void (*mdot_fn)(const uint8_t *w, const xrow *xr, int M, int nb, float *out);

static inline uint16_t ld16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline float hsum8(const float a[8]) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* ---- portable scalar kernels ------------------------------------------------------------------*/

/* element e of a 4-bit block (nibble, 0..15) */
static inline int nib(const uint8_t *qs, int e) {
    return e < 16 ? (qs[e] & 0x0F) : (qs[e - 16] >> 4);
}

/* One 32-value block q (integers) into the 8 lanes. PRECISE: x the f32 activations, scale d.
 * FAST: xq the int8 activations, s their 8 lane scales; lanes 0-3 take d_lo, lanes 4-7 d_hi. */
static inline void block_p_sc(float acc[8], const int8_t *q, const float *x, float d) {
    for (int l = 0; l < 8; l++) {
        float t = (float)q[l] * x[l];
        t = fmaf((float)q[8 + l], x[8 + l], t);
        t = fmaf((float)q[16 + l], x[16 + l], t);
        t = fmaf((float)q[24 + l], x[24 + l], t);
        acc[l] = fmaf(t, d, acc[l]);
    }
}

static inline void block_f_sc(float acc[8], const int8_t *q, const int8_t *xq, const float *s,
                              float d_lo, float d_hi) {
    for (int l = 0; l < 8; l++) {
        int32_t i = 0;
        for (int j = 4 * l; j < 4 * l + 4; j++)
            i += (int32_t)q[j] * xq[j];
        acc[l] = fmaf((float)i, s[l] * (l < 4 ? d_lo : d_hi), acc[l]);
    }
}

/* Q5_0 / Q5_1: element e (0..31) of a block, 0..31 */
static inline int q5(const uint8_t *qs, uint32_t qh, int e) {
    return nib(qs, e) | (int)(((qh >> e) & 1u) << 4);
}
static inline uint32_t ld32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* A 32-value block of type t (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): its values q, scale d and (Q4_1,
 * Q5_1) offset m; returns whether it has the offset. */
static inline int unpack32_sc(int t, const uint8_t *w, int8_t q[QK], float *d, float *m) {
    *d = hyb_f16_to_f32(ld16(w));
    switch (t) {
    case T_Q8_0:
        memcpy(q, w + 2, QK);
        return 0;
    case T_Q4_0:
        for (int e = 0; e < QK; e++)
            q[e] = (int8_t)(nib(w + 2, e) - 8);
        return 0;
    case T_Q4_1:
        *m = hyb_f16_to_f32(ld16(w + 2));
        for (int e = 0; e < QK; e++)
            q[e] = (int8_t)nib(w + 4, e);
        return 1;
    case T_Q5_0:
        for (int e = 0; e < QK; e++)
            q[e] = (int8_t)(q5(w + 6, ld32(w + 2), e) - 16);
        return 0;
    default: /* T_Q5_1 */
        *m = hyb_f16_to_f32(ld16(w + 2));
        for (int e = 0; e < QK; e++)
            q[e] = (int8_t)q5(w + 8, ld32(w + 4), e);
        return 1;
    }
}

/* The scalar kernel of a 32-value block type, PRECISE or FAST; the offset m * sum(x) of Q4_1 and
 * Q5_1 is accumulated per block in sm. */
static inline float dot32_sc(int t, int fast, const uint8_t *w, const xrow *xr, int nb) {
    float acc[8] = {0}, sm = 0.0f;
    int has_m = 0;
    int8_t q[QK];
    for (int b = 0; b < nb; b++, w += BLOCK_BYTES[t]) {
        float d, m = 0.0f;
        has_m = unpack32_sc(t, w, q, &d, &m);
        if (fast)
            block_f_sc(acc, q, xr->q + (int64_t)b * QK, xr->s + (int64_t)b * 8, d, d);
        else
            block_p_sc(acc, q, xr->x + (int64_t)b * QK, d);
        if (has_m) sm = fmaf(m, xr->xsum[b], sm);
    }
    return has_m ? hsum8(acc) + sm : hsum8(acc);
}

/* The table's scalar entries: name() calls fn(args..., w, xr, nb); PRECISE passes fast = 0. */
#define SC_KERNEL(name, fn, ...)                                                                   \
    static float name(const uint8_t *w, const xrow *xr, int nb) {                                  \
        return fn(__VA_ARGS__, w, xr, nb);                                                         \
    }
SC_KERNEL(dot_p_q8_0_sc, dot32_sc, T_Q8_0, 0)
SC_KERNEL(dot_p_q4_0_sc, dot32_sc, T_Q4_0, 0)
SC_KERNEL(dot_p_q4_1_sc, dot32_sc, T_Q4_1, 0)
SC_KERNEL(dot_p_q5_0_sc, dot32_sc, T_Q5_0, 0)
SC_KERNEL(dot_p_q5_1_sc, dot32_sc, T_Q5_1, 0)
SC_KERNEL(dot_f_q8_0_sc, dot32_sc, T_Q8_0, 1)
SC_KERNEL(dot_f_q4_0_sc, dot32_sc, T_Q4_0, 1)
SC_KERNEL(dot_f_q4_1_sc, dot32_sc, T_Q4_1, 1)
SC_KERNEL(dot_f_q5_0_sc, dot32_sc, T_Q5_0, 1)
SC_KERNEL(dot_f_q5_1_sc, dot32_sc, T_Q5_1, 1)

/* Q4_K's six-bit scale and min of sub-block j (as core/io/dequant.c decodes them) */
static inline void k_scale_min(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q6_K: value (0..63) of element l of 32-value block u (0..7) of a super-block */
static inline int q6(const uint8_t *blk, int u, int l) {
    const int h = u / 4, uu = u % 4;
    const int lo = (blk[64 * h + 32 * (uu % 2) + l] >> (4 * (uu / 2))) & 0x0F;
    const int hi = (blk[128 + 32 * h + l] >> (2 * uu)) & 3;
    return lo | (hi << 4);
}

/* Q4_K: each sub-block j a Q4_1-like block of scale d sc_j and offset -dmin mn_j. Q5_K (k5): the
 * same with qh[32] before qs (176-byte blocks) and a fifth bit, bit j of qh[e] for element e of
 * sub-block j (values 0..31). */
static inline float dot_q4_k_sc(int k5, int fast, const uint8_t *w, const xrow *xr, int nb) {
    float acc[8] = {0}, sm = 0.0f;
    int8_t q[QK];
    for (int b = 0; b < nb; b++, w += k5 ? 176 : 144) {
        const float d = hyb_f16_to_f32(ld16(w)), dmin = hyb_f16_to_f32(ld16(w + 2));
        const uint8_t *qh = w + 16;
        for (int j = 0; j < 8; j++) {
            int isc, imn;
            k_scale_min(w + 4, j, &isc, &imn);
            const float dl = d * (float)isc, ml = dmin * (float)imn;
            const uint8_t *qs = w + (k5 ? 48 : 16) + 32 * (j / 2);
            const int sh = 4 * (j % 2);
            for (int e = 0; e < QK; e++)
                q[e] = (int8_t)(((qs[e] >> sh) & 15) | (k5 ? ((qh[e] >> j) & 1) << 4 : 0));
            const int64_t bj = (int64_t)b * 8 + j;
            if (fast)
                block_f_sc(acc, q, xr->q + bj * QK, xr->s + bj * 8, dl, dl);
            else
                block_p_sc(acc, q, xr->x + bj * QK, dl);
            sm = fmaf(ml, xr->xsum[bj], sm);
        }
    }
    return hsum8(acc) - sm;
}

/* Q6_K: each 32-value block u a Q8_0-like block with scale d sc_2u (values 0-15) and d sc_2u+1 */
static inline float dot_q6_k_sc(int fast, const uint8_t *w, const xrow *xr, int nb) {
    float acc[8] = {0};
    int8_t q[QK];
    for (int b = 0; b < nb; b++, w += 210) {
        const float d = hyb_f16_to_f32(ld16(w + 208));
        const int8_t *sc = (const int8_t *)(w + 192);
        for (int u = 0; u < 8; u++) {
            const float d0 = d * (float)sc[2 * u], d1 = d * (float)sc[2 * u + 1];
            const int64_t bu = (int64_t)b * 8 + u;
            for (int e = 0; e < QK; e++)
                q[e] = (int8_t)(q6(w, u, e) - 32);
            if (fast) {
                block_f_sc(acc, q, xr->q + bu * QK, xr->s + bu * 8, d0, d1);
                continue;
            }
            const float *x = xr->x + bu * QK;
            for (int l = 0; l < 8; l++) {
                float t0 = (float)q[l] * x[l];
                t0 = fmaf((float)q[8 + l], x[8 + l], t0);
                float t1 = (float)q[16 + l] * x[16 + l];
                t1 = fmaf((float)q[24 + l], x[24 + l], t1);
                acc[l] = fmaf(t0, d0, acc[l]);
                acc[l] = fmaf(t1, d1, acc[l]);
            }
        }
    }
    return hsum8(acc);
}

SC_KERNEL(dot_p_q4_k_sc, dot_q4_k_sc, 0, 0)
SC_KERNEL(dot_p_q6_k_sc, dot_q6_k_sc, 0)
SC_KERNEL(dot_f_q4_k_sc, dot_q4_k_sc, 0, 1)
SC_KERNEL(dot_f_q6_k_sc, dot_q6_k_sc, 1)
SC_KERNEL(dot_p_q5_k_sc, dot_q4_k_sc, 1, 0)
SC_KERNEL(dot_f_q5_k_sc, dot_q4_k_sc, 1, 1)

/* ---- AVX2 + FMA + F16C kernels ----------------------------------------------------------------*/

#ifdef HYB_QUANT_X86
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))

AVX2_FN static inline float hsum_avx(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* l_i + l_i+4 */
    __m128 h = _mm_add_ps(a, _mm_movehl_ps(a, a));                                 /* a0+a2, a1+a3 */
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

/* 16 bytes of nibbles -> 32 bytes, byte e = element e */
AVX2_FN static inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
    return _mm256_set_m128i(hi, lo);
}

/* bytes (u8 or i8 as `sgn`) of a 32-byte vector -> 4 f32 vectors of elements 8k..8k+7 */
#define BYTES_TO_PS(v, sgn, w0, w1, w2, w3)                                                        \
    do {                                                                                           \
        __m128i lo_ = _mm256_castsi256_si128(v), hi_ = _mm256_extracti128_si256(v, 1);             \
        w0 = _mm256_cvtepi32_ps(_mm256_cvtep##sgn##8_epi32(lo_));                                  \
        w1 = _mm256_cvtepi32_ps(_mm256_cvtep##sgn##8_epi32(_mm_srli_si128(lo_, 8)));               \
        w2 = _mm256_cvtepi32_ps(_mm256_cvtep##sgn##8_epi32(hi_));                                  \
        w3 = _mm256_cvtepi32_ps(_mm256_cvtep##sgn##8_epi32(_mm_srli_si128(hi_, 8)));               \
    } while (0)

/* the 32 values of a Q4_0/Q4_1 block as 4 f32 vectors of elements 8k..8k+7: byte j of qs holds
 * element j (low nibble) and j + 16 (high), so bytes 0-7 give elements 0-7 and 16-23, bytes 8-15
 * give 8-15 and 24-31; `off` is subtracted (8 for Q4_0) */
#define NIBBLES_TO_PS(qs, off, w0, w1, w2, w3)                                                     \
    do {                                                                                           \
        const __m256i m15_ = _mm256_set1_epi32(15), o_ = _mm256_set1_epi32(off);                   \
        __m256i a_ = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs)));                 \
        __m256i b_ = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((qs) + 8)));           \
        w0 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(a_, m15_), o_));                 \
        w1 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(b_, m15_), o_));                 \
        w2 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(a_, 4), o_));                   \
        w3 = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(b_, 4), o_));                   \
    } while (0)

/* PRECISE: acc += (w0 x0 + w1 x1 + w2 x2 + w3 x3) * d over the block's 32 activations x */
AVX2_FN static inline __m256 precise_block(__m256 acc, const float *x, __m256 w0, __m256 w1,
                                           __m256 w2, __m256 w3, __m256 d) {
    __m256 t = _mm256_mul_ps(w0, _mm256_loadu_ps(x));
    t = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), t);
    t = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x + 16), t);
    t = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x + 24), t);
    return _mm256_fmadd_ps(t, d, acc);
}

/* the same for a block given as 32 bytes, signed (sgn) or unsigned */
AVX2_FN static inline __m256 precise_bytes(__m256 acc, const float *x, __m256i v, int sgn,
                                           __m256 d) {
    __m256 w0, w1, w2, w3;
    if (sgn)
        BYTES_TO_PS(v, i, w0, w1, w2, w3);
    else
        BYTES_TO_PS(v, u, w0, w1, w2, w3);
    return precise_block(acc, x, w0, w1, w2, w3, d);
}

AVX2_FN static float dot_p_q8_0_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, w += 34) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(ld16(w)));
        acc = precise_bytes(acc, xr->x + (int64_t)b * QK,
                            _mm256_loadu_si256((const __m256i *)(w + 2)), 1, d);
    }
    return hsum_avx(acc);
}

AVX2_FN static float dot_p_q4_0_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, w += 18) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(ld16(w)));
        __m256 w0, w1, w2, w3;
        NIBBLES_TO_PS(w + 2, 8, w0, w1, w2, w3);
        acc = precise_block(acc, xr->x + (int64_t)b * QK, w0, w1, w2, w3, d);
    }
    return hsum_avx(acc);
}

AVX2_FN static float dot_p_q4_1_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    float sm = 0.0f;
    for (int b = 0; b < nb; b++, w += 20) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(ld16(w)));
        const float m = _cvtsh_ss(ld16(w + 2));
        __m256 w0, w1, w2, w3;
        NIBBLES_TO_PS(w + 4, 0, w0, w1, w2, w3);
        acc = precise_block(acc, xr->x + (int64_t)b * QK, w0, w1, w2, w3, d);
        sm = fmaf(m, xr->xsum[b], sm);
    }
    return hsum_avx(acc) + sm;
}

/* PRECISE for M rows at once (batched decode): each block's weights are unpacked once and used
 * for every row, instead of once per row. Row m goes through exactly dot_p_<type>_avx2's
 * operations in the same order, so its result is bit-identical to the one-row kernel's: a sequence
 * decodes the same alone or in a batch (serve's concurrent-equals-alone test). M <= GEMV_MAX_M. */
AVX2_FN static void mdot_p_q8_0_avx2(const uint8_t *w, const xrow *xr, int M, int nb, float *out) {
    __m256 acc[HYB_QUANT_GEMV_MAX_M];
    for (int m = 0; m < M; m++)
        acc[m] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, w += 34) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(ld16(w)));
        const __m256i v = _mm256_loadu_si256((const __m256i *)(w + 2));
        __m256 w0, w1, w2, w3;
        BYTES_TO_PS(v, i, w0, w1, w2, w3);
        for (int m = 0; m < M; m++)
            acc[m] = precise_block(acc[m], xr[m].x + (int64_t)b * QK, w0, w1, w2, w3, d);
    }
    for (int m = 0; m < M; m++)
        out[m] = hsum_avx(acc[m]);
}

AVX2_FN static void mdot_p_q4_0_avx2(const uint8_t *w, const xrow *xr, int M, int nb, float *out) {
    __m256 acc[HYB_QUANT_GEMV_MAX_M];
    for (int m = 0; m < M; m++)
        acc[m] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, w += 18) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(ld16(w)));
        __m256 w0, w1, w2, w3;
        NIBBLES_TO_PS(w + 2, 8, w0, w1, w2, w3);
        for (int m = 0; m < M; m++)
            acc[m] = precise_block(acc[m], xr[m].x + (int64_t)b * QK, w0, w1, w2, w3, d);
    }
    for (int m = 0; m < M; m++)
        out[m] = hsum_avx(acc[m]);
}

AVX2_FN static void mdot_p_q4_1_avx2(const uint8_t *w, const xrow *xr, int M, int nb, float *out) {
    __m256 acc[HYB_QUANT_GEMV_MAX_M];
    float sm[HYB_QUANT_GEMV_MAX_M];
    for (int m = 0; m < M; m++)
        acc[m] = _mm256_setzero_ps(), sm[m] = 0.0f;
    for (int b = 0; b < nb; b++, w += 20) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(ld16(w)));
        const float mn = _cvtsh_ss(ld16(w + 2));
        __m256 w0, w1, w2, w3;
        NIBBLES_TO_PS(w + 4, 0, w0, w1, w2, w3);
        for (int m = 0; m < M; m++) {
            acc[m] = precise_block(acc[m], xr[m].x + (int64_t)b * QK, w0, w1, w2, w3, d);
            sm[m] = fmaf(mn, xr[m].xsum[b], sm[m]);
        }
    }
    for (int m = 0; m < M; m++)
        out[m] = hsum_avx(acc[m]) + sm[m];
}

/* lane l = sum of the 4 products of bytes 4l..4l+3; a: unsigned bytes, b: signed */
AVX2_FN static inline __m256 lanes_us(__m256i a, __m256i b) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)));
}
/* the same for two signed byte vectors: |a| * (b with a's sign) */
AVX2_FN static inline __m256 lanes_ss(__m256i a, __m256i b) {
    return lanes_us(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}
/* FAST: acc += lanes(wv, int8 block j of the row) * (lane scales of block j * d); signed weights
 * (lanes_ss) or unsigned (lanes_us) */
AVX2_FN static inline __m256 fast_block(__m256 acc, __m256i wv, int sgn, const xrow *xr, int64_t j,
                                        __m256 d) {
    const __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(xr->s + j * 8), d);
    const __m256i xv = _mm256_loadu_si256((const __m256i *)(xr->q + j * QK));
    return _mm256_fmadd_ps(sgn ? lanes_ss(wv, xv) : lanes_us(wv, xv), sc, acc);
}

AVX2_FN static float dot_f_q8_0_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, w += 34) {
        acc = fast_block(acc, _mm256_loadu_si256((const __m256i *)(w + 2)), 1, xr, b,
                         _mm256_set1_ps(_cvtsh_ss(ld16(w))));
    }
    return hsum_avx(acc);
}

AVX2_FN static float dot_f_q4_0_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i off = _mm256_set1_epi8(8);
    for (int b = 0; b < nb; b++, w += 18) {
        acc = fast_block(acc, _mm256_sub_epi8(unpack_nibbles(w + 2), off), 1, xr, b,
                         _mm256_set1_ps(_cvtsh_ss(ld16(w))));
    }
    return hsum_avx(acc);
}

AVX2_FN static float dot_f_q4_1_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    float sm = 0.0f;
    for (int b = 0; b < nb; b++, w += 20) {
        const float m = _cvtsh_ss(ld16(w + 2));
        acc = fast_block(acc, unpack_nibbles(w + 4), 0, xr, b, _mm256_set1_ps(_cvtsh_ss(ld16(w))));
        sm = fmaf(m, xr->xsum[b], sm);
    }
    return hsum_avx(acc) + sm;
}
/* Q4_K: the 32 nibbles of sub-blocks 2c (low) and 2c+1 (high) of qs[32c ..] */
AVX2_FN static inline void q4k_pair(const uint8_t *qs, __m256i *lo, __m256i *hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_loadu_si256((const __m256i *)qs);
    *lo = _mm256_and_si256(v, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
}

/* Q4_K, and Q5_K when k5 (qh[32] at byte 16, qs at 48, bit j of qh[e] the fifth bit of element e
 * of sub-block j); k5 is a constant in each caller, so each gets its own code */
AVX2_FN static inline float dot_p_qk45_avx2(int k5, const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    float sm = 0.0f;
    for (int b = 0; b < nb; b++, w += k5 ? 176 : 144) {
        const float d = _cvtsh_ss(ld16(w)), dmin = _cvtsh_ss(ld16(w + 2));
        __m256i bh[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                         _mm256_setzero_si256()};
        if (k5)
            for (int k = 0; k < 4; k++)
                bh[k] = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(w + 16 + 8 * k)));
        for (int c = 0; c < 4; c++) {
            /* bytes 8k..8k+7 of qs[32c ..] widened once; nibble t is sub-block 2c + t */
            const uint8_t *qs = w + (k5 ? 48 : 16) + 32 * c;
            __m256i bq[4];
            for (int k = 0; k < 4; k++)
                bq[k] = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * k)));
            for (int t = 0; t < 2; t++) {
                const int j = 2 * c + t;
                int isc, imn;
                k_scale_min(w + 4, j, &isc, &imn);
                const __m256 dl = _mm256_set1_ps(d * (float)isc);
                const __m256i m15 = _mm256_set1_epi32(15), one = _mm256_set1_epi32(1);
                __m256 wk[4];
                for (int k = 0; k < 4; k++) {
                    __m256i v = t ? _mm256_srli_epi32(bq[k], 4) : _mm256_and_si256(bq[k], m15);
                    if (k5) /* | ((qh >> j) & 1) << 4 */
                        v = _mm256_or_si256(
                            v, _mm256_slli_epi32(
                                   _mm256_and_si256(_mm256_srli_epi32(bh[k], j), one), 4));
                    wk[k] = _mm256_cvtepi32_ps(v);
                }
                const __m256 w0 = wk[0], w1 = wk[1], w2 = wk[2], w3 = wk[3];
                acc = precise_block(acc, xr->x + ((int64_t)b * 8 + j) * QK, w0, w1, w2, w3, dl);
                sm = fmaf(dmin * (float)imn, xr->xsum[(int64_t)b * 8 + j], sm);
            }
        }
    }
    return hsum_avx(acc) - sm;
}

AVX2_FN static float dot_p_q4_k_avx2(const uint8_t *w, const xrow *xr, int nb) {
    return dot_p_qk45_avx2(0, w, xr, nb);
}
AVX2_FN static float dot_p_q5_k_avx2(const uint8_t *w, const xrow *xr, int nb) {
    return dot_p_qk45_avx2(1, w, xr, nb);
}

AVX2_FN static inline float dot_f_qk45_avx2(int k5, const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    float sm = 0.0f;
    const __m256i one = _mm256_set1_epi8(1);
    for (int b = 0; b < nb; b++, w += k5 ? 176 : 144) {
        const float d = _cvtsh_ss(ld16(w)), dmin = _cvtsh_ss(ld16(w + 2));
        const __m256i qh =
            k5 ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q[2];
            q4k_pair(w + (k5 ? 48 : 16) + 32 * c, &q[0], &q[1]);
            if (k5) /* bit 2c + t of qh[e] -> bit 4 of element e of sub-block 2c + t */
                for (int t = 0; t < 2; t++) {
                    const __m256i hb = _mm256_and_si256(
                        _mm256_srli_epi16(qh, 2 * c + t), one); /* per byte: bit (2c+t) */
                    q[t] = _mm256_or_si256(q[t], _mm256_slli_epi16(hb, 4));
                }
            for (int t = 0; t < 2; t++) {
                const int64_t j = (int64_t)b * 8 + 2 * c + t;
                int isc, imn;
                k_scale_min(w + 4, 2 * c + t, &isc, &imn);
                acc = fast_block(acc, q[t], 0, xr, j, _mm256_set1_ps(d * (float)isc));
                sm = fmaf(dmin * (float)imn, xr->xsum[j], sm);
            }
        }
    }
    return hsum_avx(acc) - sm;
}

AVX2_FN static float dot_f_q4_k_avx2(const uint8_t *w, const xrow *xr, int nb) {
    return dot_f_qk45_avx2(0, w, xr, nb);
}
AVX2_FN static float dot_f_q5_k_avx2(const uint8_t *w, const xrow *xr, int nb) {
    return dot_f_qk45_avx2(1, w, xr, nb);
}

/* Q6_K: the 32 values (0..63) of 32-value block u of a super-block, as bytes */
AVX2_FN static inline __m256i q6k_block(const uint8_t *w, int u) {
    const int h = u / 4, uu = u % 4;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    __m256i lo = _mm256_loadu_si256((const __m256i *)(w + 64 * h + 32 * (uu % 2)));
    if (uu / 2) lo = _mm256_srli_epi16(lo, 4);
    lo = _mm256_and_si256(lo, m4);
    __m256i hi = _mm256_loadu_si256((const __m256i *)(w + 128 + 32 * h));
    hi = _mm256_and_si256(_mm256_srl_epi16(hi, _mm_cvtsi32_si128(2 * uu)), m3);
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
}

AVX2_FN static float dot_p_q6_k_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i off = _mm256_set1_epi8(32);
    for (int b = 0; b < nb; b++, w += 210) {
        const float d = _cvtsh_ss(ld16(w + 208));
        const int8_t *sc = (const int8_t *)(w + 192);
        for (int u = 0; u < 8; u++) {
            __m256i v = _mm256_sub_epi8(q6k_block(w, u), off);
            __m256 w0, w1, w2, w3;
            BYTES_TO_PS(v, i, w0, w1, w2, w3);
            const float *x = xr->x + ((int64_t)b * 8 + u) * QK;
            __m256 t0 = _mm256_mul_ps(w0, _mm256_loadu_ps(x));
            t0 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), t0);
            __m256 t1 = _mm256_mul_ps(w2, _mm256_loadu_ps(x + 16));
            t1 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x + 24), t1);
            acc = _mm256_fmadd_ps(t0, _mm256_set1_ps(d * (float)sc[2 * u]), acc);
            acc = _mm256_fmadd_ps(t1, _mm256_set1_ps(d * (float)sc[2 * u + 1]), acc);
        }
    }
    return hsum_avx(acc);
}

AVX2_FN static float dot_f_q6_k_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i off = _mm256_set1_epi8(32);
    for (int b = 0; b < nb; b++, w += 210) {
        const float d = _cvtsh_ss(ld16(w + 208));
        const int8_t *sc = (const int8_t *)(w + 192);
        for (int u = 0; u < 8; u++) {
            const int64_t j = (int64_t)b * 8 + u;
            __m256i v = _mm256_sub_epi8(q6k_block(w, u), off);
            const __m256 dl = _mm256_set_m128(_mm_set1_ps(d * (float)sc[2 * u + 1]),
                                              _mm_set1_ps(d * (float)sc[2 * u]));
            acc = fast_block(acc, v, 1, xr, j, dl);
        }
    }
    return hsum_avx(acc);
}
/* Q5_0 / Q5_1: the 32 values (0..31) of a block as bytes: nibbles | (bit e of qh) << 4 */
AVX2_FN static inline __m256i q5_bytes(const uint8_t *qs, uint32_t qh) {
    const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                         2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i h = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), sel); /* byte e: byte e/8 of qh */
    h = _mm256_cmpeq_epi8(_mm256_and_si256(h, bit), bit);               /* 0xFF where bit e set */
    return _mm256_or_si256(unpack_nibbles(qs), _mm256_and_si256(h, _mm256_set1_epi8(0x10)));
}

AVX2_FN static float dot_p_q5_0_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i off = _mm256_set1_epi8(16);
    for (int b = 0; b < nb; b++, w += 22) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(ld16(w)));
        acc = precise_bytes(acc, xr->x + (int64_t)b * QK,
                            _mm256_sub_epi8(q5_bytes(w + 6, ld32(w + 2)), off), 1, d);
    }
    return hsum_avx(acc);
}

AVX2_FN static float dot_p_q5_1_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    float sm = 0.0f;
    for (int b = 0; b < nb; b++, w += 24) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(ld16(w)));
        const float m = _cvtsh_ss(ld16(w + 2));
        acc = precise_bytes(acc, xr->x + (int64_t)b * QK, q5_bytes(w + 8, ld32(w + 4)), 0, d);
        sm = fmaf(m, xr->xsum[b], sm);
    }
    return hsum_avx(acc) + sm;
}

AVX2_FN static float dot_f_q5_0_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i off = _mm256_set1_epi8(16);
    for (int b = 0; b < nb; b++, w += 22) {
        acc = fast_block(acc, _mm256_sub_epi8(q5_bytes(w + 6, ld32(w + 2)), off), 1, xr, b,
                         _mm256_set1_ps(_cvtsh_ss(ld16(w))));
    }
    return hsum_avx(acc);
}

AVX2_FN static float dot_f_q5_1_avx2(const uint8_t *w, const xrow *xr, int nb) {
    __m256 acc = _mm256_setzero_ps();
    float sm = 0.0f;
    for (int b = 0; b < nb; b++, w += 24) {
        const float m = _cvtsh_ss(ld16(w + 2));
        acc = fast_block(acc, q5_bytes(w + 8, ld32(w + 4)), 0, xr, b,
                         _mm256_set1_ps(_cvtsh_ss(ld16(w))));
        sm = fmaf(m, xr->xsum[b], sm);
    }
    return hsum_avx(acc) + sm;
}
#endif

/* ---- dispatch ---------------------------------------------------------------------------------*/

typedef struct kernels {
    dot_fn precise[T_COUNT], fast[T_COUNT];
    mdot_fn mprecise[T_COUNT]; /* several rows per weight row, where there is one (else NULL) */
} kernels;

static const kernels K_SCALAR = {
    {dot_p_q8_0_sc, dot_p_q4_0_sc, dot_p_q4_1_sc, dot_p_q4_k_sc, dot_p_q6_k_sc, dot_p_q5_0_sc,
     dot_p_q5_1_sc, dot_p_q5_k_sc},
    {dot_f_q8_0_sc, dot_f_q4_0_sc, dot_f_q4_1_sc, dot_f_q4_k_sc, dot_f_q6_k_sc, dot_f_q5_0_sc,
     dot_f_q5_1_sc, dot_f_q5_k_sc},
    {NULL}}; /* no multi-row scalar kernels: the row-by-row loop is the same arithmetic */
#ifdef HYB_QUANT_X86
static const kernels K_AVX2 = {
    {dot_p_q8_0_avx2, dot_p_q4_0_avx2, dot_p_q4_1_avx2, dot_p_q4_k_avx2, dot_p_q6_k_avx2,
     dot_p_q5_0_avx2, dot_p_q5_1_avx2, dot_p_q5_k_avx2},
    {dot_f_q8_0_avx2, dot_f_q4_0_avx2, dot_f_q4_1_avx2, dot_f_q4_k_avx2, dot_f_q6_k_avx2,
     dot_f_q5_0_avx2, dot_f_q5_1_avx2, dot_f_q5_k_avx2},
    {mdot_p_q8_0_avx2, mdot_p_q4_0_avx2, mdot_p_q4_1_avx2}};
#endif

int hyb_quant_have_avx2(void) {
#ifdef HYB_QUANT_X86
    static int cached = -1;
    if (cached < 0) {
        unsigned a, b, c, d;
        int ok = 0;
        if (__get_cpuid(1, &a, &b, &c, &d)) {
            const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1,
                      f16c = (c >> 29) & 1;
            if (osxsave && avx && fma && f16c) {
                unsigned lo, hi;
                __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
                if ((lo & 6) == 6 && __get_cpuid_count(7, 0, &a, &b, &c, &d)) ok = (b >> 5) & 1;
            }
        }
        cached = ok;
    }
    return cached;
#else
    return 0;
#endif
}

/* ---- settings ---------------------------------------------------------------------------------*/

static hyb_quant_config g_cfg;
static int g_cfg_init, g_cfg_chosen; /* chosen: HYB_QUANT set, or hyb_quant_set called */

const char *hyb_quant_mode_name(hyb_quant_mode m) {
    static const char *N[] = {"off", "precise", "fast", "emul"};
    return (unsigned)m < 4 ? N[m] : "?";
}

int hyb_quant_parse(const char *mode, const char *act, hyb_quant_config *c) {
    hyb_quant_config r = {HYB_QUANT_OFF, 4, 0, HYB_QISA_AUTO};
    if (mode && *mode) {
        int found = 0;
        for (int i = 0; i < 4 && !found; i++)
            if (!strcasecmp(mode, hyb_quant_mode_name((hyb_quant_mode)i))) {
                r.mode = (hyb_quant_mode)i;
                found = 1;
            }
        if (!found)
            return hyb_error_set(HYB_ERR_ARG, "HYB_QUANT='%s': expected off, precise, fast or emul",
                                 mode);
    }
    if (act && *act) {
        char *end;
        long gsz = (act[0] == 'g' || act[0] == 'G') ? strtol(act + 1, &end, 10) : 0;
        if (gsz != 4 && gsz != 8 && gsz != 16 && gsz != 32)
            return hyb_error_set(HYB_ERR_ARG,
                                 "HYB_QUANT_ACT='%s': expected g4, g8, g16 or g32, optionally "
                                 "followed by h (f16 scales)",
                                 act);
        if (*end == 'h' || *end == 'H') r.f16_scale = 1, end++;
        if (*end)
            return hyb_error_set(HYB_ERR_ARG, "HYB_QUANT_ACT='%s': trailing '%s'", act, end);
        r.group = (int)gsz;
    }
    *c = r;
    return HYB_OK;
}

hyb_quant_config hyb_quant_get(void) {
    if (!g_cfg_init) {
        hyb_quant_config c;
        if (hyb_quant_parse(getenv("HYB_QUANT"), getenv("HYB_QUANT_ACT"), &c) != HYB_OK) {
            hyb_log(HYB_LOG_WARN, "%s; quantized compute is off", hyb_error());
            c = (hyb_quant_config){HYB_QUANT_OFF, 4, 0, HYB_QISA_AUTO};
        }
        const char *env = getenv("HYB_QUANT");
        g_cfg_chosen = env && *env;
        const char *isa = getenv("HYB_QUANT_ISA");
        if (isa && !strcasecmp(isa, "scalar")) c.isa = HYB_QISA_SCALAR;
        g_cfg = c;
        g_cfg_init = 1;
    }
    return g_cfg;
}

void hyb_quant_set(const hyb_quant_config *c) {
    g_cfg = *c;
    g_cfg_init = 1;
    g_cfg_chosen = 1;
}

int hyb_quant_is_chosen(void) {
    (void)hyb_quant_get();
    return g_cfg_chosen;
}

/* ---- activations ------------------------------------------------------------------------------*/

/* Rounding: x / s to the nearest integer, ties to even (nearbyintf; _mm256_round_ps), clamped
 * to [-127, 127] (an f16-rounded scale can be a hair below absmax/127). Block sums of a row are
 * taken in the lane order of the kernels: p_l = ((x[l] + x[8+l]) + x[16+l]) + x[24+l], then the
 * fixed 8-lane reduction. */
void hyb_quant_act_row(const float *x, int K, int group, int f16_scale, int8_t *q, float *scale) {
    for (int g0 = 0; g0 < K; g0 += group) {
        float amax = 0.0f;
        for (int e = g0; e < g0 + group; e++)
            amax = fmaxf(amax, fabsf(x[e]));
        float s = amax / 127.0f;
        if (f16_scale) s = hyb_f16_to_f32(hyb_f32_to_f16(s));
        for (int e = g0; e < g0 + group; e++) {
            float r = s > 0.0f ? nearbyintf(x[e] / s) : 0.0f;
            r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
            q[e] = (int8_t)(int)r;
        }
        for (int l = g0 / 4; l < (g0 + group) / 4; l++)
            scale[l] = s;
    }
}

static void block_sums_sc(const float *x, int K, float *xsum) {
    for (int b = 0; b < K / QK; b++) {
        const float *xb = x + b * QK;
        float p[8];
        for (int l = 0; l < 8; l++)
            p[l] = ((xb[l] + xb[8 + l]) + xb[16 + l]) + xb[24 + l];
        xsum[b] = hsum8(p);
    }
}

/* one activation row for FAST/EMUL: q, lane scales, x' = q * s and the block sums of x' */
static void prep_row_sc(const float *x, int K, int group, int f16, int8_t *q, float *scale,
                        float *xe, float *xsum) {
    hyb_quant_act_row(x, K, group, f16, q, scale);
    for (int e = 0; e < K; e++)
        xe[e] = (float)q[e] * scale[e / 4];
    block_sums_sc(xe, K, xsum);
}

#ifdef HYB_QUANT_X86
AVX2_FN static void block_sums_avx2(const float *x, int K, float *xsum) {
    for (int b = 0; b < K / QK; b++) {
        const float *xb = x + b * QK;
        __m256 v = _mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8));
        v = _mm256_add_ps(v, _mm256_loadu_ps(xb + 16));
        xsum[b] = hsum_avx(_mm256_add_ps(v, _mm256_loadu_ps(xb + 24)));
    }
}

/* the same as prep_row_sc, 32 values at a time: group maxima by in-register shuffles */
AVX2_FN static void prep_row_avx2(const float *x, int K, int group, int f16, int8_t *q,
                                  float *scale, float *xe, float *xsum) {
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 r127 = _mm256_set1_ps(127.0f), n127 = _mm256_set1_ps(-127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < K / QK; b++) {
        const float *xb = x + b * QK;
        __m256 v[4], m[4];
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            __m256 a = _mm256_and_ps(v[k], absm);
            a = _mm256_max_ps(a, _mm256_permute_ps(a, 0xB1)); /* pairs */
            m[k] = _mm256_max_ps(a, _mm256_permute_ps(a, 0x4E)); /* groups of 4 */
            if (group >= 8) m[k] = _mm256_max_ps(m[k], _mm256_permute2f128_ps(m[k], m[k], 1));
        }
        if (group >= 16) {
            m[0] = m[1] = _mm256_max_ps(m[0], m[1]);
            m[2] = m[3] = _mm256_max_ps(m[2], m[3]);
        }
        if (group >= 32) m[0] = m[1] = m[2] = m[3] = _mm256_max_ps(m[0], m[2]);
        __m256i iv[4];
        __m256 sum = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            __m256 sk = _mm256_div_ps(m[k], r127);
            if (f16) sk = _mm256_cvtph_ps(_mm256_cvtps_ph(sk, _MM_FROUND_TO_NEAREST_INT));
            __m256 r = _mm256_round_ps(_mm256_div_ps(v[k], sk),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = _mm256_min_ps(_mm256_max_ps(r, n127), r127);
            /* s == 0: the whole group is zero (x/0 is NaN there) */
            r = _mm256_and_ps(r, _mm256_cmp_ps(sk, _mm256_setzero_ps(), _CMP_GT_OQ));
            iv[k] = _mm256_cvttps_epi32(r);
            const __m256 e = _mm256_mul_ps(r, sk);
            _mm256_storeu_ps(xe + b * QK + 8 * k, e);
            sum = k ? _mm256_add_ps(sum, e) : e;
            float t[8];
            _mm256_storeu_ps(t, sk);
            scale[b * 8 + 2 * k] = t[0];
            scale[b * 8 + 2 * k + 1] = t[4];
        }
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]),
                                       _mm256_packs_epi32(iv[2], iv[3]));
        _mm256_storeu_si256((__m256i *)(q + b * QK), _mm256_permutevar8x32_epi32(p, order));
        xsum[b] = hsum_avx(sum);
    }
}
#endif

/* ---- matmul -----------------------------------------------------------------------------------*/

/* Weight rows decoded per sgemm tile (M > HYB_QUANT_GEMV_MAX_M): about 1 MiB of f32. Measured
 * on the default model's forward over 2 x 128 tokens (2 threads, interleaved): 256 KiB tiles
 * took 1.18-1.29x the f32 model's time, 1 MiB tiles 0.98-1.02x (fewer, larger sgemm calls: the
 * activations are packed once per tile). */
static int tile_rows(int K) {
    int r = (262144 / K) & ~15;
    return r < 16 ? 16 : r;
}

static int matmul_tiled(hyb_dtype wt, const uint8_t *W, int64_t rb, const float *x, float *y,
                        int M, int N, int K, int par) {
    const int TR = tile_rows(K);
    const int ntiles = (N + TR - 1) / TR;
    int failed = 0;
#pragma omp parallel if (par)
    {
        float *buf = malloc((size_t)TR * (size_t)K * sizeof *buf);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int t = 0; t < ntiles; t++) {
            if (!buf) continue;
            const int n0 = t * TR, nn = N - n0 < TR ? N - n0 : TR;
            hyb_dequantize(wt, W + (int64_t)n0 * rb, buf, (int64_t)nn * K);
            hyb_cpu_sgemm(0, 1, M, nn, K, 1.0f, x, K, buf, K, 0.0f, y + n0, N);
        }
        free(buf);
    }
    return failed ? hyb_error_set(HYB_ERR_NOMEM, "quantized matmul: out of memory for a tile")
                  : HYB_OK;
}

/* The GEMV's output rows [lo, hi) (a pool chunk): y[m, n] = dot(W[n], x[m]). */
typedef struct gemv_job {
    dot_fn dot;
    mdot_fn mdot; /* or NULL: then dot row by row */
    const uint8_t *W;
    int64_t rb;
    const xrow *xr;
    float *y;
    int M, N, nb;
} gemv_job;

static int gemv_rows(void *ctx, int64_t lo, int64_t hi, int tid) {
    const gemv_job *j = ctx;
    (void)tid;
    float t[HYB_QUANT_GEMV_MAX_M];
    for (int64_t n = lo; n < hi; n++) {
        const uint8_t *wn = j->W + n * j->rb;
        if (j->mdot && j->M > 1) {
            j->mdot(wn, j->xr, j->M, j->nb, t);
            for (int m = 0; m < j->M; m++)
                j->y[(size_t)m * j->N + n] = t[m];
            continue;
        }
        for (int m = 0; m < j->M; m++)
            j->y[(size_t)m * j->N + n] = j->dot(wn, &j->xr[m], j->nb);
    }
    return HYB_OK;
}

int hyb_cpu_quant_matmul(hyb_dtype wt, const void *W, const float *x, float *y, int M, int N,
                         int K, const hyb_quant_config *c) {
    const int qt = qtype_of(wt);
    if (qt < 0)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "quantized matmul: weight type %s is not supported (supported: "
                             "q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k)",
                             hyb_dtype_name(wt));
    if (M < 0 || N < 0 || K < 0 || K % BLOCK_ELEMS[qt])
        return hyb_error_set(HYB_ERR_ARG,
                             "quantized matmul: bad shape M=%d N=%d K=%d (K must be a multiple "
                             "of %d for %s)",
                             M, N, K, BLOCK_ELEMS[qt], hyb_dtype_name(wt));
    if (M == 0 || N == 0) return HYB_OK;
    if (K == 0) {
        memset(y, 0, (size_t)M * (size_t)N * sizeof *y);
        return HYB_OK;
    }
    const kernels *kt = &K_SCALAR;
    if (c->isa == HYB_QISA_AVX2 && !hyb_quant_have_avx2())
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "quantized matmul: this CPU lacks AVX2/FMA/F16C");
#ifdef HYB_QUANT_X86
    if (c->isa != HYB_QISA_SCALAR && hyb_quant_have_avx2()) kt = &K_AVX2;
#endif
    const int64_t rb = (int64_t)(K / BLOCK_ELEMS[qt]) * BLOCK_BYTES[qt];
    const int nb = K / BLOCK_ELEMS[qt]; /* weight blocks per row (the kernels' loop count) */
    const int par = !omp_in_parallel() && (double)M * N * K >= (double)(1 << 18);
    if (M > HYB_QUANT_GEMV_MAX_M)
        return matmul_tiled(wt, W, rb, x, y, M, N, K, par && omp_get_max_threads() > 1);

    /* prepare the activation rows */
    const int fast = c->mode == HYB_QUANT_FAST, emul = c->mode == HYB_QUANT_EMUL;
    const size_t MK = (size_t)M * (size_t)K;
    const int nx = K / QK; /* 32-value activation blocks per row */
    float *xsum = malloc((size_t)M * (size_t)nx * sizeof *xsum);
    float *xe = (fast || emul) ? malloc(MK * sizeof *xe) : NULL;
    int8_t *q = (fast || emul) ? malloc(MK) : NULL;
    float *s = (fast || emul) ? malloc(MK / 4 * sizeof *s) : NULL;
    if (!xsum || ((fast || emul) && (!q || !s || !xe))) {
        free(xsum), free(xe), free(q), free(s);
        return hyb_error_set(HYB_ERR_NOMEM, "quantized matmul: out of memory");
    }
    void (*prep)(const float *, int, int, int, int8_t *, float *, float *, float *) = prep_row_sc;
    void (*bsums)(const float *, int, float *) = block_sums_sc;
#ifdef HYB_QUANT_X86
    if (kt == &K_AVX2) prep = prep_row_avx2, bsums = block_sums_avx2;
#endif
    xrow xr[HYB_QUANT_GEMV_MAX_M];
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * K;
        int8_t *qm = q ? q + (size_t)m * K : NULL;
        float *sm = s ? s + (size_t)m * K / 4 : NULL;
        if (fast || emul) {
            /* x' = q * s: EMUL's row; FAST's Q4_1 offset term m * sum(x') takes the same sums
             * (measured: the exact sum(x) raises the mean KL 4x on SmolLM2, because the rounding
             * errors of x then meet d*q = w - m instead of w, which is not centred) */
            float *em = xe + (size_t)m * K;
            prep(xm, K, c->group, c->f16_scale, qm, sm, em, xsum + (size_t)m * nx);
            if (emul) xm = em;
        } else {
            bsums(xm, K, xsum + (size_t)m * nx);
        }
        xr[m] = (xrow){xm, qm, sm, xsum + (size_t)m * nx};
    }
    gemv_job job = {fast ? kt->fast[qt] : kt->precise[qt], fast || emul ? NULL : kt->mprecise[qt],
                    (const uint8_t *)W, rb, xr, y, M, N, nb};
    int rc = par ? hyb_pool_parallel_for(N, 16, gemv_rows, &job) : gemv_rows(&job, 0, N, 0);
    free(xsum), free(xe), free(q), free(s);
    return rc;
}
