/* plugins/mha/mha_kv.h: rows of the `mha` KV cache in its storage types (hyb_kv_dtype, plugin.h):
 * the conversions a row goes through on store (f32 -> f16 / q8_0, after RoPE for K) and on load
 * (a tile of rows back to f32 in a small per-thread buffer, never the whole cache). Header-only
 * (static functions) so that tests/test_mha_kv.c checks the SIMD paths against the scalar ones.
 *
 * Row of hd values, by type (bytes = mha_kv_row_bytes):
 *   f32   hd floats
 *   f16   hd IEEE halves (round to nearest even on store; overflow to +-inf, NaN kept)
 *   q8_0  nb = ceil(hd / 32) f16 scales, then hd int8: block b (values 32 b .. 32 b + 31, the
 *         last block shorter when hd % 32 != 0) is q = round(x / d) with d = absmax / 127 of the
 *         block (d = 0: all zero), d stored as f16, and loads as f16(d) * q. GGUF Q8_0's 34-byte
 *         blocks hold the same numbers; here the scales of a row come first so that its int8 run
 *         is contiguous (one 8-wide load per 8 values) and any even head_dim works.
 * Paths: scalar C, and AVX2 + F16C (8 values a step), picked once from cpuid; both give the
 * same bits (a half or an int8 times a half widens to f32 exactly; the f16 store rounds to
 * nearest even in both). */
#ifndef HYB_PLUGIN_MHA_KV_H
#define HYB_PLUGIN_MHA_KV_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hyb/plugin.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MHA_KV_X86 1
#else
#define MHA_KV_X86 0
#endif

#define MHA_Q8_BLK 32

static inline size_t mha_kv_row_bytes(int hd, int kv) {
    switch (kv) {
    case HYB_KV_F16:
        return (size_t)hd * 2;
    case HYB_KV_Q8_0:
        return (size_t)((hd + MHA_Q8_BLK - 1) / MHA_Q8_BLK) * 2 + (size_t)hd;
    default:
        return (size_t)hd * 4;
    }
}

/* ---- scalar f16 <-> f32 ----------------------------------------------------------------------*/
static inline float mha_h2f(uint16_t h) {
    const uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t u;
    if (e == 0x1f)
        u = s | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0); /* inf; NaN made quiet (F16C) */
    else if (e)
        u = s | ((e + 112u) << 23) | (m << 13);
    else if (!m)
        u = s;
    else { /* subnormal: m * 2^-24, exact in f32 */
        float f = (float)m * 5.9604644775390625e-8f;
        memcpy(&u, &f, 4);
        u |= s;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t mha_f2h(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t s = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf / NaN (quiet, top payload bits kept) */
        return (uint16_t)(s | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0));
    if (a >= 0x477ff000u) return (uint16_t)(s | 0x7c00u); /* rounds to >= 65520: inf */
    if (a < 0x38800000u) { /* below 2^-14: a subnormal half (or 0) */
        if (a < 0x33000000u) return s; /* below 2^-25: 0 (2^-25 itself ties to even 0) */
        const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        const int sh = (int)(126 - e); /* value = m 2^(e-150) = (m >> sh) 2^-24 (+ rest) */
        uint32_t q = m >> sh, rem = m & ((1u << sh) - 1), half = 1u << (sh - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(s | q);
    }
    /* normal: drop 13 mantissa bits, round to nearest even (a carry into the exponent is right) */
    uint32_t r = a - 0x38000000u; /* rebias 127 -> 15 */
    r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    return (uint16_t)(s | r);
}

/* ---- rows: store (f32 -> type) ---------------------------------------------------------------*/
static inline void mha_kv_store_f16_scalar(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i++)
        dst[i] = mha_f2h(src[i]);
}

#if MHA_KV_X86
__attribute__((target("avx2,f16c"))) static inline void
mha_kv_store_f16_avx2(uint16_t *dst, const float *src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = mha_f2h(src[i]);
}
#endif

/* q8_0 (scalar only: a store is one row per token, the loads are what streams) */
static inline void mha_kv_store_q8(void *dst, const float *src, int hd) {
    const int nb = (hd + MHA_Q8_BLK - 1) / MHA_Q8_BLK;
    uint16_t *d16 = dst;
    int8_t *q = (int8_t *)((char *)dst + 2 * (size_t)nb);
    for (int b = 0; b < nb; b++) {
        const int i0 = b * MHA_Q8_BLK, n = hd - i0 < MHA_Q8_BLK ? hd - i0 : MHA_Q8_BLK;
        float amax = 0.0f;
        for (int i = 0; i < n; i++)
            amax = fabsf(src[i0 + i]) > amax ? fabsf(src[i0 + i]) : amax;
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        d16[b] = mha_f2h(d);
        for (int i = 0; i < n; i++) {
            float v = nearbyintf(src[i0 + i] * id);
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            q[i0 + i] = (int8_t)v;
        }
    }
}

/* ---- rows: load (type -> f32), n rows of hd values from rows `rowb` bytes apart ---------------*/
static inline void mha_kv_load_scalar(float *dst, const void *src, size_t rowb, int nrow, int hd,
                                      int kv) {
    const int nb = (hd + MHA_Q8_BLK - 1) / MHA_Q8_BLK;
    for (int r = 0; r < nrow; r++) {
        const char *row = (const char *)src + (size_t)r * rowb;
        float *o = dst + (size_t)r * hd;
        if (kv == HYB_KV_F16) {
            const uint16_t *h = (const uint16_t *)row;
            for (int i = 0; i < hd; i++)
                o[i] = mha_h2f(h[i]);
        } else if (kv == HYB_KV_Q8_0) {
            const uint16_t *d16 = (const uint16_t *)row;
            const int8_t *q = (const int8_t *)(row + 2 * (size_t)nb);
            for (int i = 0; i < hd; i++)
                o[i] = mha_h2f(d16[i / MHA_Q8_BLK]) * (float)q[i];
        } else
            memcpy(o, row, (size_t)hd * sizeof(float));
    }
}

#if MHA_KV_X86
__attribute__((target("avx2,f16c"))) static inline void
mha_kv_load_avx2(float *dst, const void *src, size_t rowb, int nrow, int hd, int kv) {
    const int nb = (hd + MHA_Q8_BLK - 1) / MHA_Q8_BLK;
    for (int r = 0; r < nrow; r++) {
        const char *row = (const char *)src + (size_t)r * rowb;
        float *o = dst + (size_t)r * hd;
        int i = 0;
        if (kv == HYB_KV_F16) {
            const uint16_t *h = (const uint16_t *)row;
            for (; i + 8 <= hd; i += 8)
                _mm256_storeu_ps(o + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
            for (; i < hd; i++)
                o[i] = mha_h2f(h[i]);
        } else if (kv == HYB_KV_Q8_0) {
            const uint16_t *d16 = (const uint16_t *)row;
            const int8_t *q = (const int8_t *)(row + 2 * (size_t)nb);
            for (int b = 0; b < nb; b++) {
                const int i0 = b * MHA_Q8_BLK, n = hd - i0 < MHA_Q8_BLK ? hd - i0 : MHA_Q8_BLK;
                const float d = mha_h2f(d16[b]);
                const __m256 vd = _mm256_set1_ps(d);
                int k = 0;
                for (; k + 8 <= n; k += 8) {
                    const __m128i q8 = _mm_loadl_epi64((const __m128i *)(q + i0 + k));
                    const __m256 qf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
                    _mm256_storeu_ps(o + i0 + k, _mm256_mul_ps(vd, qf));
                }
                for (; k < n; k++)
                    o[i0 + k] = d * (float)q[i0 + k];
            }
        } else
            memcpy(o, row, (size_t)hd * sizeof(float));
    }
}
#endif

/* ---- dispatch (cpuid once) -------------------------------------------------------------------*/
static inline int mha_kv_have_avx2(void) {
#if MHA_KV_X86
    static int have = -1;
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return have;
#else
    return 0;
#endif
}

/* nrow rows of the cache (rowb bytes apart) to f32 [nrow, hd] */
static inline void mha_kv_load(float *dst, const void *src, size_t rowb, int nrow, int hd, int kv) {
#if MHA_KV_X86
    if (mha_kv_have_avx2()) {
        mha_kv_load_avx2(dst, src, rowb, nrow, hd, kv);
        return;
    }
#endif
    mha_kv_load_scalar(dst, src, rowb, nrow, hd, kv);
}

/* one row of hd f32 values into the cache's type */
static inline void mha_kv_store(void *dst, const float *src, int hd, int kv) {
    if (kv == HYB_KV_F16) {
#if MHA_KV_X86
        if (mha_kv_have_avx2()) {
            mha_kv_store_f16_avx2(dst, src, hd);
            return;
        }
#endif
        mha_kv_store_f16_scalar(dst, src, hd);
    } else if (kv == HYB_KV_Q8_0)
        mha_kv_store_q8(dst, src, hd);
    else
        memcpy(dst, src, (size_t)hd * sizeof(float));
}

#endif
