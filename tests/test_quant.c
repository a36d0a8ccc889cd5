/* test_quant.c: the quantized matmul kernels (core/backend/cpu/cpu_quant.c).
 *
 * Random GGUF blocks (every byte random, scales random valid f16) and activations with outliers,
 * on odd shapes. Checked:
 *  1. every AVX2 kernel gives bit-identical results to the portable scalar kernel (all types,
 *     PRECISE / FAST at several activation schemes / EMUL); skipped with a message without AVX2;
 *  2. PRECISE equals dequantise-then-dot (double) within 2e-5 * sum|w x| per output;
 *  3. FAST is within its rounding bound of the exact product: sum_e |w_e| s_e / 2 (each x_e is
 *     rounded to a multiple of its scale s_e) plus the f32 tolerance of 2.;
 *  4. FAST equals EMUL (the same rounding applied in f32) within the f32 tolerance;
 *  5. M > HYB_QUANT_GEMV_MAX_M (tile dequantisation + sgemm) within the PRECISE tolerance;
 *  6. on outlier-heavy activations, 4-value scales give a smaller error than llama.cpp's 32-value
 *     f16 scales (the reason FAST defaults to g4);
 *  7. bad input: unknown mode/scheme text, unsupported weight type, K not a multiple of 32. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu.h"
#include "backend/cpu/cpu_quant.h"
#include "harness.h"
#include "hyb/gguf.h"
#include "io/quant_load.h"
#include "hyb/tensor.h"

static const hyb_dtype TYPES[] = {HYB_Q8_0, HYB_Q4_0, HYB_Q4_1, HYB_Q5_0,
                                  HYB_Q5_1, HYB_Q4_K, HYB_Q5_K, HYB_Q6_K};
#define NTYPES 8

static uint8_t *random_blocks(hyb_rng *r, hyb_dtype t, int N, int K) {
    const int64_t rb = hyb_quant_row_bytes(t, K), nbytes = rb * N;
    uint8_t *w = malloc((size_t)nbytes);
    for (int64_t i = 0; i < nbytes; i++)
        w[i] = (uint8_t)(hyb_rng_next(r) >> 56);
    const int bb = (int)hyb_dtype_block_bytes(t);
    /* the f16 scales: d (Q6_K: at byte 208; K-quants smaller, they multiply 6/8-bit scales) and
     * Q4_1's m / Q4_K's dmin after it */
    const int doff = t == HYB_Q6_K ? 208 : 0;
    const float dmax = t == HYB_Q4_K ? 0.002f : t == HYB_Q5_K ? 0.001f : t == HYB_Q6_K ? 0.0005f : 0.05f;
    for (int64_t off = 0; off < nbytes; off += bb) {
        uint16_t d = hyb_f32_to_f16(dmax * (0.02f + hyb_rng_uniform(r)));
        memcpy(w + off + doff, &d, 2);
        if (t == HYB_Q4_1 || t == HYB_Q5_1 || t == HYB_Q4_K || t == HYB_Q5_K) {
            const float mmax = t == HYB_Q4_K ? 0.004f : t == HYB_Q5_K ? 0.004f : -0.4f;
            uint16_t m = hyb_f32_to_f16(mmax * hyb_rng_uniform(r));
            memcpy(w + off + 2, &m, 2);
        }
    }
    return w;
}

/* N(0,1) with one in 40 values scaled by 20-60: SmolLM2-like activation outliers */
static float *random_x(hyb_rng *r, int M, int K) {
    float *x = malloc(sizeof(float) * (size_t)M * (size_t)K);
    for (int64_t i = 0; i < (int64_t)M * K; i++) {
        x[i] = hyb_rng_normal(r);
        if (hyb_rng_uniform(r) < 0.025f) x[i] *= 20.0f + 40.0f * hyb_rng_uniform(r);
    }
    return x;
}

typedef struct {
    int M, N, K;
} shape;
static const shape SHAPES[] = {{1, 1, 32}, {1, 7, 96}, {3, 67, 576}, {8, 33, 160}, {2, 130, 1536}};
#define NSHAPES 5

/* the shape for type t: K rounded up to t's block size (256 for the K-quants) */
static shape for_type(hyb_dtype t, shape s) {
    const int be = (int)hyb_dtype_block_elems(t);
    s.K = (s.K + be - 1) / be * be;
    return s;
}

static hyb_quant_config cfg(hyb_quant_mode mode, int group, int f16, hyb_quant_isa isa) {
    hyb_quant_config c = {mode, group, f16, isa};
    return c;
}

static float *run(hyb_dtype t, const uint8_t *W, const float *x, shape s, hyb_quant_config c) {
    float *y = malloc(sizeof(float) * (size_t)s.M * (size_t)s.N);
    for (int i = 0; i < s.M * s.N; i++)
        y[i] = NAN;
    int rc = hyb_cpu_quant_matmul(t, W, x, y, s.M, s.N, s.K, &c);
    CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
    return y;
}

static void test_simd_equals_scalar(void) {
    if (!hyb_quant_have_avx2()) {
        printf("  (no AVX2/FMA/F16C on this CPU: only the scalar kernels run)\n");
        return;
    }
    hyb_rng r;
    hyb_rng_seed(&r, 1);
    const hyb_quant_config modes[] = {
        cfg(HYB_QUANT_PRECISE, 4, 0, 0), cfg(HYB_QUANT_FAST, 4, 0, 0),
        cfg(HYB_QUANT_FAST, 8, 0, 0),    cfg(HYB_QUANT_FAST, 32, 1, 0),
        cfg(HYB_QUANT_EMUL, 16, 0, 0),   cfg(HYB_QUANT_EMUL, 32, 1, 0)};
    int compared = 0;
    for (int ti = 0; ti < NTYPES; ti++)
        for (int si = 0; si < NSHAPES; si++) {
            shape s = for_type(TYPES[ti], SHAPES[si]);
            uint8_t *W = random_blocks(&r, TYPES[ti], s.N, s.K);
            float *x = random_x(&r, s.M, s.K);
            for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++) {
                hyb_quant_config a = modes[mi], b = modes[mi];
                a.isa = HYB_QISA_SCALAR;
                b.isa = HYB_QISA_AVX2;
                float *ya = run(TYPES[ti], W, x, s, a), *yb = run(TYPES[ti], W, x, s, b);
                int diff = memcmp(ya, yb, sizeof(float) * (size_t)s.M * (size_t)s.N) != 0;
                CHECK_MSG(!diff, "%s %s g%d%s [%d,%d,%d]: AVX2 differs from scalar (y[0] %.9g vs %.9g)",
                          hyb_dtype_name(TYPES[ti]), hyb_quant_mode_name(a.mode), a.group,
                          a.f16_scale ? "h" : "", s.M, s.N, s.K, ya[0], yb[0]);
                compared++;
                free(ya), free(yb);
            }
            free(W), free(x);
        }
    CHECK(compared == NTYPES * NSHAPES * 6);
}

/* Batched decode: each row of an M-row product is bit-identical to the same row computed alone,
 * in every mode and type (the PRECISE multi-row AVX2 kernels unpack a weight block once for all
 * rows, in each row's own operation order), so a sequence decodes the same alone or in a batch. */
static void test_rows_independent(void) {
    hyb_rng r;
    hyb_rng_seed(&r, 7);
    const hyb_quant_config modes[] = {cfg(HYB_QUANT_PRECISE, 4, 0, 0), cfg(HYB_QUANT_FAST, 4, 0, 0)};
    int compared = 0;
    for (int ti = 0; ti < NTYPES; ti++) {
        shape s = for_type(TYPES[ti], (shape){HYB_QUANT_GEMV_MAX_M, 37, 576});
        uint8_t *W = random_blocks(&r, TYPES[ti], s.N, s.K);
        float *x = random_x(&r, s.M, s.K);
        for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++) {
            float *yb = run(TYPES[ti], W, x, s, modes[mi]);
            for (int m = 0; m < s.M; m++) {
                shape one = {1, s.N, s.K};
                float *y1 = run(TYPES[ti], W, x + (size_t)m * s.K, one, modes[mi]);
                CHECK_MSG(memcmp(y1, yb + (size_t)m * s.N, sizeof(float) * (size_t)s.N) == 0,
                          "%s %s: row %d of %d differs from the row alone",
                          hyb_dtype_name(TYPES[ti]), hyb_quant_mode_name(modes[mi].mode), m, s.M);
                compared++;
                free(y1);
            }
            free(yb);
        }
        free(W), free(x);
    }
    CHECK(compared == NTYPES * 2 * HYB_QUANT_GEMV_MAX_M);
}

/* reference: dequantise W, dot in double; also sum |w x| and the FAST rounding bound */
static void reference(hyb_dtype t, const uint8_t *W, const float *x, shape s, int group, int f16,
                      double *ref, double *absdot, double *bound, double *mdiff) {
    float *Wf = malloc(sizeof(float) * (size_t)s.N * (size_t)s.K);
    CHECK(hyb_dequantize(t, W, Wf, (int64_t)s.N * s.K) == HYB_OK);
    int8_t *q = malloc((size_t)s.K);
    float *sc = malloc(sizeof(float) * (size_t)s.K / 4);
    for (int m = 0; m < s.M; m++) {
        const float *xm = x + (size_t)m * s.K;
        hyb_quant_act_row(xm, s.K, group, f16, q, sc);
        for (int n = 0; n < s.N; n++) {
            const float *w = Wf + (size_t)n * s.K;
            double a = 0, ab = 0, bd = 0, md = 0;
            const int64_t rb = hyb_quant_row_bytes(t, s.K);
            (void)rb;
            for (int e = 0; e < s.K; e++) {
                a += (double)w[e] * xm[e];
                ab += fabs((double)w[e] * xm[e]);
                bd += fabs((double)w[e]) * sc[e / 4] * 0.5;
            }
            ref[(size_t)m * s.N + n] = a;
            absdot[(size_t)m * s.N + n] = ab;
            bound[(size_t)m * s.N + n] = bd;
            mdiff[(size_t)m * s.N + n] = md;
        }
    }
    free(Wf), free(q), free(sc);
}

#define F32_TOL 2e-5

static void test_against_dequantized(void) {
    hyb_rng r;
    hyb_rng_seed(&r, 2);
    const int groups[][2] = {{4, 0}, {32, 1}};
    for (int ti = 0; ti < NTYPES; ti++)
        for (int si = 0; si < NSHAPES; si++)
            for (int gi = 0; gi < 2; gi++) {
                shape s = for_type(TYPES[ti], SHAPES[si]);
                const int G = groups[gi][0], H = groups[gi][1];
                const size_t n = (size_t)s.M * s.N;
                uint8_t *W = random_blocks(&r, TYPES[ti], s.N, s.K);
                float *x = random_x(&r, s.M, s.K);
                double *ref = malloc(n * 8), *ab = malloc(n * 8), *bd = malloc(n * 8),
                       *md = malloc(n * 8);
                reference(TYPES[ti], W, x, s, G, H, ref, ab, bd, md);
                float *yp = run(TYPES[ti], W, x, s, cfg(HYB_QUANT_PRECISE, G, H, 0));
                float *yf = run(TYPES[ti], W, x, s, cfg(HYB_QUANT_FAST, G, H, 0));
                float *ye = run(TYPES[ti], W, x, s, cfg(HYB_QUANT_EMUL, G, H, 0));
                int badp = 0, badf = 0, bade = 0;
                for (size_t i = 0; i < n; i++) {
                    const double tol = F32_TOL * ab[i] + 1e-30;
                    badp += !(fabs(yp[i] - ref[i]) <= tol);
                    badf += !(fabs(yf[i] - ref[i]) <= bd[i] + 2 * tol);
                    bade += !(fabs(yf[i] - ye[i]) <= 2 * tol + F32_TOL * bd[i] + md[i]);
                }
                const char *tn = hyb_dtype_name(TYPES[ti]);
                CHECK_MSG(!badp, "%s [%d,%d,%d]: %d PRECISE outputs off (y0 %.9g ref %.9g)", tn,
                          s.M, s.N, s.K, badp, yp[0], ref[0]);
                CHECK_MSG(!badf, "%s g%d [%d,%d,%d]: %d FAST outputs beyond the rounding bound", tn,
                          G, s.M, s.N, s.K, badf);
                CHECK_MSG(!bade, "%s g%d [%d,%d,%d]: %d FAST outputs differ from EMUL", tn, G, s.M,
                          s.N, s.K, bade);
                free(W), free(x), free(ref), free(ab), free(bd), free(md), free(yp), free(yf),
                    free(ye);
            }
}

static void test_tiled(void) {
    hyb_rng r;
    hyb_rng_seed(&r, 3);
    /* the last spans three tiles of 455 rows (1 MiB of f32 at K = 576) and a partial one */
    const shape ss[] = {{HYB_QUANT_GEMV_MAX_M + 1, 77, 96}, {40, 301, 576}, {18, 1400, 576}};
    for (int ti = 0; ti < NTYPES; ti++)
        for (int si = 0; si < 3; si++) {
            shape s = for_type(TYPES[ti], ss[si]);
            const size_t n = (size_t)s.M * s.N;
            uint8_t *W = random_blocks(&r, TYPES[ti], s.N, s.K);
            float *x = random_x(&r, s.M, s.K);
            double *ref = malloc(n * 8), *ab = malloc(n * 8), *bd = malloc(n * 8),
                   *md = malloc(n * 8);
            reference(TYPES[ti], W, x, s, 4, 0, ref, ab, bd, md);
            for (int mode = HYB_QUANT_PRECISE; mode <= HYB_QUANT_FAST; mode++) {
                float *y = run(TYPES[ti], W, x, s, cfg((hyb_quant_mode)mode, 4, 0, 0));
                int bad = 0;
                for (size_t i = 0; i < n; i++)
                    bad += !(fabs(y[i] - ref[i]) <= F32_TOL * ab[i] + 1e-30);
                CHECK_MSG(!bad, "%s [%d,%d,%d]: %d tiled outputs off", hyb_dtype_name(TYPES[ti]),
                          s.M, s.N, s.K, bad);
                free(y);
            }
            free(W), free(x), free(ref), free(ab), free(bd), free(md);
        }
}

static void test_finer_scales_help(void) {
    hyb_rng r;
    hyb_rng_seed(&r, 4);
    shape s = {4, 256, 576};
    const size_t n = (size_t)s.M * s.N;
    uint8_t *W = random_blocks(&r, HYB_Q8_0, s.N, s.K);
    float *x = random_x(&r, s.M, s.K);
    double *ref = malloc(n * 8), *ab = malloc(n * 8), *bd = malloc(n * 8), *md = malloc(n * 8);
    reference(HYB_Q8_0, W, x, s, 4, 0, ref, ab, bd, md);
    float *y4 = run(HYB_Q8_0, W, x, s, cfg(HYB_QUANT_FAST, 4, 0, 0));
    float *y32 = run(HYB_Q8_0, W, x, s, cfg(HYB_QUANT_FAST, 32, 1, 0));
    double e4 = 0, e32 = 0;
    for (size_t i = 0; i < n; i++) {
        e4 += (y4[i] - ref[i]) * (y4[i] - ref[i]);
        e32 += (y32[i] - ref[i]) * (y32[i] - ref[i]);
    }
    printf("  rms error, 4-value f32 scales %.4g, 32-value f16 scales %.4g\n", sqrt(e4 / n),
           sqrt(e32 / n));
    CHECK(e4 < 0.5 * e32);
    free(W), free(x), free(ref), free(ab), free(bd), free(md), free(y4), free(y32);
}

static void test_bad_input(void) {
    hyb_quant_config c;
    CHECK(hyb_quant_parse("fastest", NULL, &c) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "fastest") != NULL);
    CHECK(hyb_quant_parse("fast", "g5", &c) == HYB_ERR_ARG);
    CHECK(hyb_quant_parse("fast", "g8x", &c) == HYB_ERR_ARG);
    CHECK(hyb_quant_parse("FAST", "g32h", &c) == HYB_OK && c.mode == HYB_QUANT_FAST &&
          c.group == 32 && c.f16_scale == 1);
    CHECK(hyb_quant_parse("precise", NULL, &c) == HYB_OK && c.mode == HYB_QUANT_PRECISE &&
          c.group == 4);
    float x[256] = {0}, y[1];
    uint8_t w[210] = {0};
    c = cfg(HYB_QUANT_PRECISE, 4, 0, 0);
    CHECK(hyb_cpu_quant_matmul(HYB_F16, w, x, y, 1, 1, 32, &c) == HYB_ERR_UNSUPPORTED);
    CHECK(strstr(hyb_error(), "f16") != NULL && strstr(hyb_error(), "q6_k") != NULL);
    CHECK(hyb_cpu_quant_matmul(HYB_Q8_0, w, x, y, 1, 1, 48, &c) == HYB_ERR_ARG);
    CHECK(hyb_cpu_quant_matmul(HYB_Q4_K, w, x, y, 1, 1, 32, &c) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "256") != NULL);
}

/* the loader's entry points: blocks kept with no f32 copy (pointing at the file's bytes), NaN/Inf
 * scales refused with the tensor's name, a type without a kernel left to f32, and q/k with GGUF's
 * per-head row order put back (the product from the permuted blocks must match the f32 rows in
 * HF order) */
static void test_loader(void) {
    hyb_rng r;
    hyb_rng_seed(&r, 6);
    const int N = 16, K = 64; /* 2 heads of 8 rows (with 4 rows the permutation is its own
                               * inverse, and a reversed one would pass) */
    const int64_t rb = hyb_quant_row_bytes(HYB_Q4_1, K), nbytes = rb * N;
    uint8_t *W = random_blocks(&r, HYB_Q4_1, N, K);
    int64_t sh[2] = {N, K};

    hyb_tensor *t = hyb_param_no_data(HYB_F32, 2, sh);
    CHECK(hyb_quant_keep_gguf(t, "blk.3.ffn_up.weight", HYB_GGML_Q4_1, W, (uint64_t)nbytes, 0,
                              0) == 1);
    CHECK(t->dtype == HYB_Q4_1 && !t->requires_grad && t->data == W &&
          t->owner == HYB_OWN_EXTERNAL);
    hyb_tensor_free(t); /* leaves W alone (ASan would catch a free of it) */

    CHECK(hyb_quant_check_scales("blk.3.ffn_up.weight", HYB_GGML_Q4_1, W, (uint64_t)nbytes) ==
          HYB_OK);
    uint8_t *bad = malloc((size_t)nbytes);
    memcpy(bad, W, (size_t)nbytes);
    bad[5 * 20 + 3] = 0x7e; /* block 5's m: f16 exponent all ones = NaN */
    CHECK(hyb_quant_check_scales("blk.3.ffn_up.weight", HYB_GGML_Q4_1, bad, (uint64_t)nbytes) ==
          HYB_ERR_FORMAT);
    CHECK(strstr(hyb_error(), "blk.3.ffn_up.weight") && strstr(hyb_error(), "block 5") &&
          strstr(hyb_error(), "Q4_1"));
    memcpy(bad, W, (size_t)nbytes);
    bad[2 * 20 + 1] = 0x7c; /* block 2's d: +Inf */
    CHECK(hyb_quant_check_scales("blk.3.ffn_up.weight", HYB_GGML_Q4_1, bad, (uint64_t)nbytes) ==
          HYB_ERR_FORMAT);
    CHECK(strstr(hyb_error(), "block 2"));
    /* Q6_K's d sits at byte 208 of its 210 */
    uint8_t k6[210 * 2];
    memset(k6, 0, sizeof k6);
    CHECK(hyb_quant_check_scales("blk.0.ffn_down.weight", HYB_GGML_Q6_K, k6, sizeof k6) == HYB_OK);
    k6[210 + 209] = 0xfc; /* block 1: -Inf */
    CHECK(hyb_quant_check_scales("blk.0.ffn_down.weight", HYB_GGML_Q6_K, k6, sizeof k6) ==
          HYB_ERR_FORMAT);
    CHECK(strstr(hyb_error(), "blk.0.ffn_down.weight") && strstr(hyb_error(), "block 1"));
    /* wrong byte count for the shape */
    t = hyb_param_no_data(HYB_F32, 2, sh);
    CHECK(hyb_quant_keep_gguf(t, "blk.3.ffn_up.weight", HYB_GGML_Q4_1, W, (uint64_t)nbytes - 20,
                              0, 0) == HYB_ERR_FORMAT);
    CHECK(strstr(hyb_error(), "blk.3.ffn_up.weight") && t->dtype == HYB_F32 && !t->data);
    /* a block type without a kernel (Q2_K) stays for the f32 path */
    int64_t sh2[2] = {1, 256};
    hyb_tensor *t2 = hyb_param_no_data(HYB_F32, 2, sh2);
    uint8_t q2[84] = {0};
    CHECK(hyb_quant_keep_gguf(t2, "blk.0.ffn_gate.weight", HYB_GGML_Q2_K, q2, sizeof q2, 0, 0) ==
          0);
    CHECK(t2->dtype == HYB_F32 && !t2->data);
    hyb_tensor_free(t2);
    hyb_tensor_free(t);

    /* q_proj: GGUF row h*hd + 2i + j is HF row h*hd + j*hd/2 + i */
    const hyb_quant_config saved = hyb_quant_get(), pre = cfg(HYB_QUANT_PRECISE, 4, 0, 0);
    hyb_quant_set(&pre);
    t = hyb_param_no_data(HYB_F32, 2, sh);
    float *gg = malloc(sizeof(float) * (size_t)N * K), *hf = malloc(sizeof(float) * (size_t)N * K);
    CHECK(hyb_dequantize(HYB_Q4_1, W, gg, (int64_t)N * K) == HYB_OK);
    const int hd = 8, half = 4;
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(hf + (size_t)(h * hd + j * half + i) * K,
                       gg + (size_t)(h * hd + 2 * i + j) * K, sizeof(float) * K);
    CHECK(hyb_quant_keep_gguf(t, "blk.3.attn_q.weight", HYB_GGML_Q4_1, W, (uint64_t)nbytes, 2,
                              hd) == 1);
    CHECK(t->data != W && t->owner == HYB_OWN_PARAM && t->dtype == HYB_Q4_1);
    float *x = random_x(&r, 1, K), yq[16];
    CHECK(hyb_cpu_quant_matmul(HYB_Q4_1, t->data, x, yq, 1, N, K, &pre) == HYB_OK);
    for (int n = 0; n < N; n++) {
        double a = 0, ab = 0;
        for (int k = 0; k < K; k++) {
            a += (double)x[k] * hf[(size_t)n * K + k];
            ab += fabs((double)x[k] * hf[(size_t)n * K + k]);
        }
        CHECK_MSG(fabs(yq[n] - a) <= F32_TOL * ab + 1e-30, "row %d: blocks %.9g vs f32 %.9g", n,
                  yq[n], a);
    }
    hyb_tensor_free(t);
    hyb_quant_set(&saved);
    free(W), free(bad), free(gg), free(hf), free(x);
}

int main(void) {
    RUN(test_simd_equals_scalar);
    RUN(test_rows_independent);
    RUN(test_against_dequantized);
    RUN(test_tiled);
    RUN(test_finer_scales_help);
    RUN(test_bad_input);
    RUN(test_loader);
    return harness_done();
}
