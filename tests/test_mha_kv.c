/* tests/test_mha_kv.c: the row conversions of the mha KV cache (plugins/mha/mha_kv.h).
 *  - f32 -> f16: the scalar rounding against GCC's _Float16 conversion (libgcc's soft-float, an
 *    independent implementation) for special values and 2^20 random bit patterns over the whole
 *    f16 range, subnormals included; the AVX2 + F16C store bitwise against the scalar one;
 *  - f16 -> f32: every one of the 65536 halves, scalar against _Float16 and against F16C;
 *  - row loads (f16 and q8_0, head dims with and without 8-value tails and partial 32-value
 *    blocks): the AVX2 path bitwise against the scalar one;
 *  - q8_0: a stored row loads back within half a step of its block (amax (1/254 + 2^-11)), a zero
 *    block stays zero, the row layout (scales first, then int8) and its size.
 * The SIMD comparisons skip (with a line saying so) on a CPU without AVX2 + F16C. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "../plugins/mha/mha_kv.h"

static uint32_t rng_state = 12345u;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}
static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static int is_nan_h(uint16_t h) {
    return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
}

static uint16_t ref_f2h(float f) { /* GCC's _Float16: libgcc's __truncsfhf2 (or F16C) */
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}
static float ref_h2f(uint16_t u) {
    _Float16 h;
    memcpy(&h, &u, 2);
    return (float)h;
}

static void test_f2h_scalar_vs_reference(void) {
    const float special[] = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, 1e6f,
                             -1e9f, 6.103515625e-05f, 6.1e-05f, 5.960464477539063e-08f,
                             2.98023223876953125e-08f, 2.99e-08f, 1.5e-08f, 3.0e-05f, 0.1f,
                             INFINITY, -INFINITY, 1.00048828125f, 1.000732421875f};
    int bad = 0;
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
        uint16_t a = mha_f2h(special[i]), b = ref_f2h(special[i]);
        if (a != b && bad++ < 5) printf("  %.9g: %04x vs %04x\n", special[i], a, b);
    }
    for (int i = 0; i < (1 << 20); i++) {
        /* exponents around the f16 range (2^-26 .. 2^17), any mantissa and sign */
        uint32_t e = 101u + rnd() % 44u, u = (rnd() & 0x807fffffu) | (e << 23);
        float f = bits_f(u);
        uint16_t a = mha_f2h(f), b = ref_f2h(f);
        if (a != b && bad++ < 5) printf("  %.9g (%08x): %04x vs %04x\n", f, u, a, b);
    }
    CHECK_MSG(bad == 0, "%d f16 roundings differ from _Float16", bad);
    CHECK(is_nan_h(mha_f2h(NAN)));
}

static void test_h2f_all(void) {
    int bad = 0, bad_simd = 0;
    float simd[8];
    for (uint32_t h = 0; h < 65536; h++) {
        float a = mha_h2f((uint16_t)h), b = ref_h2f((uint16_t)h);
        if (is_nan_h((uint16_t)h)) {
            if (a == a) bad++;
            continue;
        }
        if (memcmp(&a, &b, 4) != 0 && bad++ < 5) printf("  %04x: %.9g vs %.9g\n", h, a, b);
#if MHA_KV_X86
        if (mha_kv_have_avx2() && h % 8 == 0) {
            uint16_t row[8];
            float sc[8];
            for (int k = 0; k < 8; k++)
                row[k] = (uint16_t)(h + k);
            mha_kv_load_avx2(simd, row, 16, 1, 8, HYB_KV_F16);
            mha_kv_load_scalar(sc, row, 16, 1, 8, HYB_KV_F16);
            for (int k = 0; k < 8; k++)
                if (!is_nan_h(row[k]) && memcmp(&simd[k], &sc[k], 4) != 0) bad_simd++;
        }
#endif
    }
    CHECK_MSG(bad == 0, "%d halves widen differently from _Float16", bad);
    CHECK_MSG(bad_simd == 0, "%d halves widen differently in F16C and scalar", bad_simd);
}

static void test_simd_vs_scalar(void) {
#if MHA_KV_X86
    if (!mha_kv_have_avx2()) {
        printf("  skip: this CPU has no AVX2 + F16C (the scalar path is the only one)\n");
        return;
    }
    const int hds[] = {4, 6, 8, 12, 40, 64, 72, 128};
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
        const int hd = hds[hi], nrow = 5;
        float *x = malloc(sizeof(float) * (size_t)nrow * hd);
        for (int i = 0; i < nrow * hd; i++)
            x[i] = ((int)(rnd() % 20001) - 10000) * 1e-3f * (i % 7 == 0 ? 30.0f : 1.0f);
        for (int kv = HYB_KV_F16; kv <= HYB_KV_Q8_0; kv++) {
            const size_t rowb = mha_kv_row_bytes(hd, kv) + 6; /* rows not packed: stride honoured */
            char *st = calloc((size_t)nrow, rowb), *st2 = calloc((size_t)nrow, rowb);
            for (int r = 0; r < nrow; r++) {
                mha_kv_store(st + (size_t)r * rowb, x + (size_t)r * hd, hd, kv);
                if (kv == HYB_KV_F16)
                    mha_kv_store_f16_scalar((uint16_t *)(st2 + (size_t)r * rowb),
                                            x + (size_t)r * hd, hd);
                else
                    mha_kv_store_q8(st2 + (size_t)r * rowb, x + (size_t)r * hd, hd);
            }
            CHECK_MSG(memcmp(st, st2, (size_t)nrow * rowb) == 0, "hd %d kv %d: stores differ",
                      hd, kv);
            float *a = malloc(sizeof(float) * (size_t)nrow * hd),
                  *b = malloc(sizeof(float) * (size_t)nrow * hd);
            mha_kv_load_avx2(a, st, rowb, nrow, hd, kv);
            mha_kv_load_scalar(b, st, rowb, nrow, hd, kv);
            CHECK_MSG(memcmp(a, b, sizeof(float) * (size_t)nrow * hd) == 0,
                      "hd %d kv %d: AVX2 and scalar loads differ", hd, kv);
            free(a);
            free(b);
            free(st);
            free(st2);
        }
        free(x);
    }
#else
    printf("  skip: not x86-64 (the scalar path is the only one)\n");
#endif
}

static void test_q8_rows(void) {
    const int hds[] = {4, 32, 40, 64};
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
        const int hd = hds[hi], nb = (hd + 31) / 32;
        CHECK(mha_kv_row_bytes(hd, HYB_KV_Q8_0) == (size_t)(2 * nb + hd));
        CHECK(mha_kv_row_bytes(hd, HYB_KV_F16) == (size_t)(2 * hd));
        float x[64], y[64];
        for (int i = 0; i < hd; i++)
            x[i] = ((int)(rnd() % 2001) - 1000) * 1e-2f;
        if (hd == 64)
            for (int i = 32; i < 64; i++)
                x[i] = 0.0f; /* a zero block */
        char row[2 * 2 + 64];
        mha_kv_store_q8(row, x, hd);
        mha_kv_load_scalar(y, row, sizeof row, 1, hd, HYB_KV_Q8_0);
        for (int b = 0; b < nb; b++) {
            const int i0 = b * 32, n = hd - i0 < 32 ? hd - i0 : 32;
            float amax = 0;
            for (int i = 0; i < n; i++)
                amax = fmaxf(amax, fabsf(x[i0 + i]));
            const double tol = amax * (1.0 / 254 + 1.0 / 2048) * (1 + 1e-6);
            /* the scale of block b is the first f16 of the row, then the int8 run */
            uint16_t d16;
            memcpy(&d16, row + 2 * b, 2);
            CHECK(d16 == mha_f2h(amax / 127.0f));
            for (int i = 0; i < n; i++) {
                CHECK_MSG(fabs((double)y[i0 + i] - x[i0 + i]) <= tol,
                          "hd %d: value %d: %g -> %g (tol %g)", hd, i0 + i, x[i0 + i], y[i0 + i],
                          tol);
                CHECK(y[i0 + i] == mha_h2f(d16) * (float)((const int8_t *)(row + 2 * nb))[i0 + i]);
            }
            if (amax == 0)
                for (int i = 0; i < n; i++)
                    CHECK(y[i0 + i] == 0.0f);
        }
    }
}

int main(void) {
    RUN(test_f2h_scalar_vs_reference);
    RUN(test_h2f_all);
    RUN(test_simd_vs_scalar);
    RUN(test_q8_rows);
    return harness_done();
}
