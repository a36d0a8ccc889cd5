/* tests/test_mha.c: what only fits the `mha` mixer (plugins/mha). The golden HF references,
 * finite differences, decode, chunked prefill, snapshot / restore, the graph op, backends and bad
 * input run for every mixer in tests/test_mixers.c; here:
 *  - long sequences: the blocked prefill (64-query blocks) against the per-token decode and a
 *    chunked prefill whose chunks straddle block boundaries
 *  - a decode step large enough to open the OpenMP region; decode across the 512-key chunks with
 *    GQA groups (and alone == batched, bitwise)
 *  - forward and backward bitwise independent of the thread count (1, 2, 3)
 *  - CUDA (when the backend opens, e.g. HYB_CUDA_EMULATE=1): decode across the 64-key chunks and
 *    the splits of the flash-decoding kernel (lengths on both sides of chunk boundaries, splits
 *    of several chunks, GQA groups of 10 > the 8 query heads a block serves), from caches the
 *    CPU prefilled (the same byte layout), against the CPU decode: outputs and the appended
 *    cache rows
 *  - CUDA, attn_precision = "bf16" (the forward on tensor cores): training forward and a
 *    continued prefill against the CPU's f32 forward at a bf16 tolerance, 1e-2 of max(|ref|, 1)
 *    (flash-attention's bf16 tests, like the other peers, hold ~1e-2); a wrong fragment index
 *    gives errors of the size of the output
 *  - CUDA: a head_dim mha_attn.cu has no variant for is HYB_ERR_UNSUPPORTED naming the mixer, the
 *    op and the shape, for forward, backward and decode, before any device work (checked on the
 *    CUDA backend when it opens, e.g. HYB_CUDA_EMULATE=1, else on the CPU backend handed to the
 *    CUDA kernels, which refuse before touching memory)
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "mixer_harness.h"

#define DD 16
static const char *DEC_TOML = "n_heads = 4\nn_kv_heads = 2\nhead_dim = 8\nrope_theta = 10000.0\n";

static int inst_new(mh_inst *I, int D, const char *toml, uint64_t seed, float wscale) {
    if (mh_inst_new(I, "mha", D, toml, seed) != 0) return -1;
    /* larger than the N(0, 0.02) init so the softmax is far from uniform */
    mh_init_normal(I, seed * 7 + 1, wscale);
    return 0;
}

/* Long sequences: the blocked prefill (64-query blocks) against the per-token decode path (a
 * separate implementation), and a chunked prefill whose chunks straddle block boundaries. */
static void test_long_sequence(void) {
    mh_inst I;
    if (inst_new(&I, DD, DEC_TOML, 15, 0.3f) == 0) {
        enum { T = 150, C1 = 70, MAXC = 160 };
        const int len[2] = {T, T}, pre[2] = {1, T - 1}, first = C1;
        double ec, es;
        mh_chunked_vs_whole(&I, 1, &first, T - C1, MAXC, -1, 9, &ec, &es);
        /* sequence 0 token by token, sequence 1 a prefill of T - 1 tokens (and one decode) */
        double ed = mh_decode_vs_forward(&I, 2, len, pre, MAXC, -1, 9, NULL);
        printf("   T=%d: chunked (%d+%d) vs one prefill %.3g (caches %.3g), token-by-token "
               "decode and prefill vs forward %.3g\n",
               T, C1, T - C1, ec, es, ed);
        CHECK_MSG(ec < 1e-5 && es < 1e-6 && ed < 1e-5, "chunked %g (caches %g) decode %g", ec, es,
                  ed);
    }
    mh_inst_free(&I);
}

/* Decode across the 512-key chunks of mha's decode (tasks per sequence x KV head x chunk, merged
 * afterwards), GQA groups of 3, a batch of sequences at different lengths on both sides of the
 * chunk boundaries: equals the full forward, and a sequence decoded alone gives bitwise the same
 * output as in the batch (the chunking depends only on its own length). */
static void test_decode_chunks(void) {
    enum { D = 48, NS = 4, MAXC = 1200, STEPS = 4 };
    mh_inst I;
    if (inst_new(&I, D, "n_heads = 6\nn_kv_heads = 2\nhead_dim = 16\nrope_theta = 10000.0\n", 17,
                 0.15f) != 0) {
        mh_inst_free(&I);
        return;
    }
    /* decode positions pre .. pre+STEPS-1: 509..512 crosses one boundary (1 -> 2 chunks),
     * 1021..1024 the next, 3 stays in one chunk, 700 in two */
    const int pre[NS] = {509, 1021, 3, 700};
    hyb_rng r;
    hyb_rng_seed(&r, 11);
    size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    void *st[NS], *st1[NS];
    float *x[NS], *yf[NS];
    for (int s = 0; s < NS; s++) {
        int len = pre[s] + STEPS;
        x[s] = mh_randn(&r, (size_t)len * D, 1.0f);
        yf[s] = malloc((size_t)len * D * 4);
        st[s] = calloc(1, sb);
        st1[s] = calloc(1, sb);
        CHECK(mh_fwd(&I, 1, len, x[s], yf[s], NULL, NULL, NULL, 0) == HYB_OK);
        float *yp = malloc((size_t)pre[s] * D * 4);
        void *sp[1] = {st[s]};
        CHECK(mh_fwd(&I, 1, pre[s], x[s], yp, NULL, sp, NULL, MAXC) == HYB_OK);
        memcpy(st1[s], st[s], sb);
        free(yp);
    }
    double worst = 0;
    int same = 1;
    for (int k = 0; k < STEPS; k++) {
        float xs[NS * D], ys[NS * D], y1[D];
        int32_t pos[NS];
        for (int s = 0; s < NS; s++) {
            pos[s] = pre[s] + k;
            memcpy(xs + s * D, x[s] + (size_t)pos[s] * D, D * 4);
        }
        CHECK_MSG(mh_dec(&I, NS, xs, ys, st, pos, MAXC) == HYB_OK, "%s", hyb_error());
        for (int s = 0; s < NS; s++) {
            double e = harness_max_rel(ys + s * D, yf[s] + (size_t)pos[s] * D, D, 1.0);
            worst = e > worst ? e : worst;
            void *sp[1] = {st1[s]};
            CHECK(mh_dec(&I, 1, xs + s * D, y1, sp, &pos[s], MAXC) == HYB_OK);
            same &= memcmp(y1, ys + s * D, sizeof y1) == 0;
        }
    }
    for (int s = 0; s < NS; s++) {
        free(x[s]);
        free(yf[s]);
        free(st[s]);
        free(st1[s]);
    }
    printf("   n=%d, positions up to %d (H=6, KV=2, hd=16): max rel err vs forward %.3g, "
           "alone == batched: %s\n",
           NS, pre[1] + STEPS - 1, worst, same ? "yes" : "no");
    CHECK_MSG(worst < 1e-5, "decode across chunks: %g", worst);
    CHECK_MSG(same, "a sequence decoded alone differs from the same sequence in a batch");
    mh_inst_free(&I);
}

/* Forward and backward must not depend on the number of threads: the prefill/training region
 * splits (sequence, head, query block) tasks and backward (sequence, KV head) tasks over threads
 * with dynamic scheduling, and each task must own its outputs and keep a fixed summation order.
 * Large enough to open the regions (score work > 2e5 multiply-adds); bitwise comparison. */
static void test_threads_bitwise(void) {
#ifdef _OPENMP
    mh_inst I;
    if (inst_new(&I, DD, DEC_TOML, 17, 0.3f) != 0) {
        mh_inst_free(&I);
        return;
    }
    enum { B = 3, T = 150 };
    const long n = (long)B * T * DD;
    hyb_rng r;
    hyb_rng_seed(&r, 21);
    float *x = mh_randn(&r, (size_t)n, 1.0f), *dy = mh_randn(&r, (size_t)n, 1.0f);
    void *saved = mh_saved_new(&I, B, T);
    const int threads[3] = {1, 2, 3};
    float *out[3][2 + 8] = {{0}};
    const int saved_threads = omp_get_max_threads();
    for (int k = 0; k < 3; k++) {
        omp_set_num_threads(threads[k]);
        for (int i = 0; i < I.m->n_params; i++)
            memset(I.gp[i], 0, (size_t)hyb_tensor_numel(I.m->params[i]) * sizeof(float));
        out[k][0] = malloc((size_t)n * 4);
        out[k][1] = calloc((size_t)n, 4);
        CHECK(mh_fwd(&I, B, T, x, out[k][0], saved, NULL, NULL, 0) == HYB_OK);
        CHECK(mh_bwd(&I, B, T, x, dy, out[k][1], saved) == HYB_OK);
        for (int i = 0; i < I.m->n_params; i++) {
            size_t bytes = (size_t)hyb_tensor_numel(I.m->params[i]) * sizeof(float);
            out[k][2 + i] = malloc(bytes);
            memcpy(out[k][2 + i], I.gp[i], bytes);
        }
    }
    omp_set_num_threads(saved_threads);
    for (int k = 1; k < 3; k++) {
        CHECK_MSG(memcmp(out[k][0], out[0][0], (size_t)n * 4) == 0, "y: %d threads != 1 thread",
                  threads[k]);
        CHECK_MSG(memcmp(out[k][1], out[0][1], (size_t)n * 4) == 0, "dx: %d threads != 1 thread",
                  threads[k]);
        for (int i = 0; i < I.m->n_params; i++)
            CHECK_MSG(memcmp(out[k][2 + i], out[0][2 + i],
                             (size_t)hyb_tensor_numel(I.m->params[i]) * sizeof(float)) == 0,
                      "grad of %s: %d threads != 1 thread", I.m->params[i]->name, threads[k]);
    }
    printf("   B=%d T=%d: y, dx and %d parameter grads bitwise equal with 1, 2 and 3 threads\n", B,
           T, I.m->n_params);
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 2 + I.m->n_params; i++)
            free(out[k][i]);
    free(x);
    free(dy);
    free(saved);
    mh_inst_free(&I);
#else
    printf("   skip: built without OpenMP\n");
#endif
}

/* CUDA decode steps of NS sequences (caches the CPU prefilled with pre[i] tokens, byte copies)
 * against the CPU decode: outputs and the appended cache rows */
static void cuda_decode_vs_cpu(const hyb_backend *be, int NS, const int *pre, int MAXC, int STEPS) {
    enum { D = 32, HD = 16 };
    mh_inst I;
    if (inst_new(&I, D, "n_heads = 10\nn_kv_heads = 1\nhead_dim = 16\nrope_theta = 10000.0\n", 23,
                 0.15f) != 0) {
        mh_inst_free(&I);
        return;
    }
    const hyb_mixer_kernels *k = &I.m->desc->kernels[HYB_DEV_CUDA];
    const size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
    hyb_rng r;
    hyb_rng_seed(&r, 5);
    void **hs = calloc((size_t)NS, sizeof *hs), **ds = calloc((size_t)NS, sizeof *ds);
    int32_t *pos = calloc((size_t)NS, sizeof *pos);
    int ok = 1, pmin = MAXC, pmax = 0;
    for (int i = 0; i < NS; i++) {
        hs[i] = calloc(1, sb);
        if (pre[i] > 0) {
            float *x = mh_randn(&r, (size_t)pre[i] * D, 1.0f), *y = malloc((size_t)pre[i] * D * 4);
            CHECK(mh_fwd(&I, 1, pre[i], x, y, NULL, &hs[i], NULL, MAXC) == HYB_OK);
            free(x);
            free(y);
        }
        ds[i] = be->alloc(be, sb);
        ok &= ds[i] && be->upload(be, ds[i], hs[i], sb) == HYB_OK;
        pmin = pre[i] < pmin ? pre[i] : pmin;
        pmax = pre[i] > pmax ? pre[i] : pmax;
    }
    const int np = I.m->n_params;
    const float **dp = calloc((size_t)np, sizeof *dp);
    for (int i = 0; i < np; i++) {
        float *p = be->alloc(be, (size_t)mh_pnumel(&I, i) * 4);
        ok &= p && be->upload(be, p, I.pp[i], (size_t)mh_pnumel(&I, i) * 4) == HYB_OK;
        dp[i] = p;
    }
    float *xd = mh_randn(&r, (size_t)NS * D, 1.0f), *y0 = malloc((size_t)NS * D * 4),
          *y1 = malloc((size_t)NS * D * 4), *st = malloc(sb);
    float *dx = be->alloc(be, (size_t)NS * D * 4), *dy = be->alloc(be, (size_t)NS * D * 4);
    ok &= dx && dy;
    CHECK_MSG(ok, "device buffers: %s", hyb_error());
    double ey = 0, es = 0;
    for (int s = 0; ok && s < STEPS; s++) {
        for (int i = 0; i < NS; i++)
            pos[i] = pre[i] + s;
        CHECK(mh_dec(&I, NS, xd, y0, hs, pos, MAXC) == HYB_OK);
        CHECK(be->upload(be, dx, xd, (size_t)NS * D * 4) == HYB_OK);
        hyb_mixer_dec da = {.n = NS,
                            .be = be,
                            .x = dx,
                            .y = dy,
                            .params = dp,
                            .states = ds,
                            .pos = pos,
                            .max_ctx = MAXC};
        CHECK_MSG(k->decode(I.m->self, &da) == HYB_OK, "%s", hyb_error());
        CHECK(be->download(be, y1, dy, (size_t)NS * D * 4) == HYB_OK);
        double e = harness_max_rel(y1, y0, (long)NS * D, 1.0);
        ey = e > ey ? e : ey;
        /* the appended K and V rows (K after RoPE) of every sequence */
        const size_t hstride = (size_t)HD * MAXC;
        for (int i = 0; i < NS; i++) {
            CHECK(be->download(be, st, ds[i], sb) == HYB_OK);
            for (int kv = 0; kv < 2; kv++) {
                const size_t off = kv * hstride + (size_t)pos[i] * HD;
                e = harness_max_rel(st + off, (const float *)hs[i] + off, HD, 1.0);
                es = e > es ? e : es;
            }
        }
        for (long j = 0; j < (long)NS * D; j++)
            xd[j] = 0.5f * xd[j] + 0.25f;
    }
    printf("   %d sequences, cache lengths %d..%d, %d steps: y max rel %.3g, new cache rows %.3g\n",
           NS, pmin, pmax + STEPS, STEPS, ey, es);
    CHECK_MSG(ey < 1e-5 && es < 1e-6, "decode y %g, cache rows %g", ey, es);
    for (int i = 0; i < NS; i++) {
        be->free(be, ds[i]);
        free(hs[i]);
    }
    for (int i = 0; i < np; i++)
        be->free(be, (void *)dp[i]);
    be->free(be, dx);
    be->free(be, dy);
    free(dp);
    free(hs);
    free(ds);
    free(pos);
    free(xd);
    free(y0);
    free(y1);
    free(st);
    mh_inst_free(&I);
}

static void test_cuda_decode_splits(void) {
    const hyb_backend *be = NULL;
    if (hyb_backend_open("cuda", &be) != HYB_OK || !be) {
        printf("   skip: no CUDA backend: %s\n", hyb_error());
        return;
    }
    /* MAXC = 4096: a state is 2 * 16 * 4096 floats = 512 KiB, so a read past a cache's end
     * reaches AddressSanitizer's redzone (an emulated ASan build) also where the backend's pool
     * rounds sizes up; the last sequence ends on the last row. Keys = pos + 1 on both sides of
     * 64 and 128 (one chunk per split), and 2901.. and 4095.. keys: more chunks than the 36
     * splits a launch of 7 x 1 x 2 blocks gets (mha_cuda.c: 512 blocks), so a split runs over 2
     * chunks, the last one partial. */
    static const int pre[7] = {62, 63, 64, 127, 128, 2900, 4094};
    cuda_decode_vs_cpu(be, 7, pre, 4096, 2);
    /* 67 sequences in one step (two launches of at most 64), one of them with an empty cache */
    int many[67];
    for (int i = 0; i < 67; i++)
        many[i] = (i * 7) % 40;
    cuda_decode_vs_cpu(be, 67, many, 48, 1);
}

/* H, KV, head_dim of an mha instance (from its parameter shapes) */
typedef struct {
    int H, KV, hd;
} mha_dims_t;
static mha_dims_t mha_dims(const mh_inst *I) {
    mha_dims_t d; /* describe: "mha H=%d KV=%d hd=%d ..." */
    char buf[128];
    I->m->desc->describe(I->m->self, buf, sizeof buf);
    if (sscanf(buf, "mha H=%d KV=%d hd=%d", &d.H, &d.KV, &d.hd) != 3) d.H = d.KV = d.hd = 1;
    return d;
}

/* f to bf16 (round to nearest even) and back */
static double bf16r(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* max |O - ref| / max |ref| of a saved block (mha.h layout, after the 64-byte header) where ref
 * is causal attention in double on the bf16-rounded Q, K, V of the same block: what is left is
 * the kernel's own rounding (P to bf16), not its inputs' */
static double bf16_attention_err(const float *sv, int B, int T, int H, int KV, int hd) {
    const size_t BT = (size_t)B * T, qd = (size_t)H * hd, kd = (size_t)KV * hd;
    const float *Q = sv + 16, *K = Q + BT * qd, *V = K + BT * kd, *O = V + BT * kd;
    const double scale = 1.0 / sqrt((double)hd);
    double *sc = malloc(sizeof(double) * (size_t)T), emax = 0, rmax = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const int g = h / (H / KV);
                const float *q = Q + ((size_t)b * T + i) * qd + (size_t)h * hd;
                double m = -INFINITY, l = 0;
                for (int j = 0; j <= i; j++) {
                    const float *k = K + ((size_t)b * T + j) * kd + (size_t)g * hd;
                    double a = 0;
                    for (int d = 0; d < hd; d++)
                        a += bf16r(q[d]) * bf16r(k[d]);
                    sc[j] = a * scale;
                    m = sc[j] > m ? sc[j] : m;
                }
                for (int j = 0; j <= i; j++)
                    l += (sc[j] = exp(sc[j] - m));
                for (int d = 0; d < hd; d++) {
                    double o = 0;
                    for (int j = 0; j <= i; j++)
                        o += sc[j] * bf16r(V[((size_t)b * T + j) * kd + (size_t)g * hd + d]);
                    o /= l;
                    const double e = fabs(O[((size_t)b * T + i) * qd + (size_t)h * hd + d] - o);
                    emax = e > emax ? e : emax;
                    rmax = fabs(o) > rmax ? fabs(o) : rmax;
                }
            }
    free(sc);
    return emax / (rmax > 0 ? rmax : 1);
}

/* The bf16 tensor-core forward against the CPU's f32 forward */
static void test_cuda_bf16_forward(void) {
    const hyb_backend *be = NULL;
    if (hyb_backend_open("cuda", &be) != HYB_OK || !be) {
        printf("   skip: no CUDA backend: %s\n", hyb_error());
        return;
    }
    static const char *TOMLS[] = {
        "n_heads = 4\nn_kv_heads = 2\nhead_dim = 64\nattn_precision = \"bf16\"\n",
        "n_heads = 3\nn_kv_heads = 1\nhead_dim = 16\nattn_precision = \"bf16\"\n"};
    /* weights N(0, 0.1): y against the CPU's f32 (bf16 inputs: errors grow with the logits);
     * N(0, 0.3), sharp softmax: only the attention against the bf16-rounded reference */
    static const float SCALES[] = {0.1f, 0.3f};
    for (int c = 0; c < 4; c++) {
        const float wscale = SCALES[c / 2];
        enum { D = 32, B = 2, T = 70, P0 = 30, MAXC = 128 };
        mh_inst I;
        if (inst_new(&I, D, TOMLS[c % 2], 31 + c, wscale) != 0) {
            mh_inst_free(&I);
            continue;
        }
        const hyb_mixer_kernels *k = &I.m->desc->kernels[HYB_DEV_CUDA];
        hyb_rng r;
        hyb_rng_seed(&r, 8);
        const size_t nx = (size_t)B * T * D;
        float *x = mh_randn(&r, nx, 1.0f), *y0 = malloc(nx * 4), *y1 = malloc(nx * 4);
        const size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
        void *hs[B], *ds[B];
        int ok = 1;
        for (int b = 0; b < B; b++) {
            hs[b] = calloc(1, sb);
            ds[b] = be->alloc(be, sb);
            ok &= ds[b] != NULL;
        }
        const int np = I.m->n_params;
        const float **dp = calloc((size_t)np, sizeof *dp);
        for (int i = 0; i < np; i++) {
            float *p = be->alloc(be, (size_t)mh_pnumel(&I, i) * 4);
            ok &= p && be->upload(be, p, I.pp[i], (size_t)mh_pnumel(&I, i) * 4) == HYB_OK;
            dp[i] = p;
        }
        const size_t svb = I.m->desc->saved_bytes(I.m->self, B, T);
        float *dx = be->alloc(be, nx * 4), *dy = be->alloc(be, nx * 4);
        void *dsaved = be->alloc(be, svb);
        ok &= dx && dy && dsaved && be->upload(be, dx, x, nx * 4) == HYB_OK;
        CHECK_MSG(ok, "device buffers: %s", hyb_error());
        double ef = 1, ep = 1, eo = 1;
        if (ok) {
            /* training forward (whole sequences) */
            CHECK(mh_fwd(&I, B, T, x, y0, NULL, NULL, NULL, 0) == HYB_OK);
            hyb_mixer_fwd fa = {
                .B = B, .T = T, .be = be, .x = dx, .y = dy, .params = dp, .saved = dsaved};
            CHECK_MSG(k->forward(I.m->self, &fa) == HYB_OK, "%s", hyb_error());
            CHECK(be->download(be, y1, dy, nx * 4) == HYB_OK);
            ef = harness_max_rel(y1, y0, (long)nx, 1.0);
            float *sv = malloc(svb);
            CHECK(be->download(be, sv, dsaved, svb) == HYB_OK);
            const mha_dims_t md = mha_dims(&I);
            eo = bf16_attention_err(sv, B, T, md.H, md.KV, md.hd);
            free(sv);
            /* a prefill of P0 tokens, then T - P0 more continuing at pos = P0: the bf16 kernel
             * reading the cache, queries at positions > 0 */
            const int32_t pos[B] = {P0, P0};
            float *xa = malloc((size_t)B * P0 * D * 4), *xb = malloc((size_t)B * (T - P0) * D * 4);
            for (int b = 0; b < B; b++) {
                memcpy(xa + (size_t)b * P0 * D, x + (size_t)b * T * D, (size_t)P0 * D * 4);
                memcpy(xb + (size_t)b * (T - P0) * D, x + ((size_t)b * T + P0) * D,
                       (size_t)(T - P0) * D * 4);
            }
            CHECK(mh_fwd(&I, B, P0, xa, y0, NULL, hs, NULL, MAXC) == HYB_OK);
            CHECK(mh_fwd(&I, B, T - P0, xb, y0, NULL, hs, pos, MAXC) == HYB_OK);
            CHECK(be->upload(be, dx, xa, (size_t)B * P0 * D * 4) == HYB_OK);
            hyb_mixer_fwd pa = {.B = B,
                                .T = P0,
                                .be = be,
                                .x = dx,
                                .y = dy,
                                .params = dp,
                                .states = ds,
                                .max_ctx = MAXC};
            CHECK_MSG(k->forward(I.m->self, &pa) == HYB_OK, "%s", hyb_error());
            CHECK(be->upload(be, dx, xb, (size_t)B * (T - P0) * D * 4) == HYB_OK);
            hyb_mixer_fwd pb = {.B = B,
                                .T = T - P0,
                                .be = be,
                                .x = dx,
                                .y = dy,
                                .params = dp,
                                .states = ds,
                                .pos = pos,
                                .max_ctx = MAXC};
            CHECK_MSG(k->forward(I.m->self, &pb) == HYB_OK, "%s", hyb_error());
            CHECK(be->download(be, y1, dy, (size_t)B * (T - P0) * D * 4) == HYB_OK);
            ep = harness_max_rel(y1, y0, (long)B * (T - P0) * D, 1.0);
            free(xa);
            free(xb);
        }
        char desc[128];
        I.m->desc->describe(I.m->self, desc, sizeof desc);
        printf("   %s, weights x%.1f, B=%d T=%d: attention vs bf16-input reference %.3g; y vs cpu "
               "f32 max rel %.3g, continued prefill %.3g (bounds 1e-2%s)\n",
               desc, wscale, B, T, eo, ef, ep, c < 2 ? "" : "; y not checked");
        CHECK_MSG(eo < 1e-2, "bf16 attention vs reference %g", eo);
        if (c < 2)
            CHECK_MSG(ef < 1e-2 && ep < 1e-2, "bf16 forward %g, continued prefill %g", ef, ep);
        for (int b = 0; b < B; b++) {
            be->free(be, ds[b]);
            free(hs[b]);
        }
        for (int i = 0; i < np; i++)
            be->free(be, (void *)dp[i]);
        be->free(be, dx);
        be->free(be, dy);
        be->free(be, dsaved);
        free(dp);
        free(x);
        free(y0);
        free(y1);
        mh_inst_free(&I);
    }
}

/* CUDA kernels for a head_dim without a compiled variant: refused, never a CPU fallback */
static void test_cuda_unsupported_head_dim(void) {
    mh_inst I;
    if (inst_new(&I, 8, "n_heads = 2\nn_kv_heads = 1\nhead_dim = 6\n", 3, 0.3f) != 0) {
        mh_inst_free(&I);
        return;
    }
    const hyb_mixer_kernels *k = &I.m->desc->kernels[HYB_DEV_CUDA];
    CHECK(k->forward && k->backward && k->decode);
    if (!k->forward || !k->backward || !k->decode) {
        mh_inst_free(&I);
        return;
    }
    const hyb_backend *be = NULL;
    if (hyb_backend_open("cuda", &be) != HYB_OK || !be) {
        printf("   (no CUDA backend: %s; the CPU backend stands in)\n", hyb_error());
        be = hyb_backend_cpu();
    }
    enum { B = 2, T = 5, MAXC = 8 };
    float *x = be->alloc(be, sizeof(float) * B * T * 8),
          *y = be->alloc(be, sizeof(float) * B * T * 8);
    void *saved = be->alloc(be, I.m->desc->saved_bytes(I.m->self, B, T));
    const size_t sb = I.m->desc->state_bytes(I.m->self, MAXC);
    void *st[B] = {be->alloc(be, sb), be->alloc(be, sb)};
    int32_t pos[B] = {3, 4};
    const float *const *P = (const float *const *)I.pp;
    hyb_mixer_fwd fa = {.B = B, .T = T, .be = be, .x = x, .y = y, .params = P, .saved = saved};
    hyb_mixer_bwd ba = {.B = B,
                        .T = T,
                        .be = be,
                        .x = x,
                        .dy = y,
                        .dx = y,
                        .params = P,
                        .grads = I.gp,
                        .saved = saved};
    hyb_mixer_dec da = {
        .n = B, .be = be, .x = x, .y = y, .params = P, .states = st, .pos = pos, .max_ctx = MAXC};
    for (int op = 0; op < 3; op++) {
        static const char *name[3] = {"forward", "backward", "decode"};
        static const char *shape[3] = {"T = 5", "T = 5", "n = 2"};
        int rc = op == 0   ? k->forward(I.m->self, &fa)
                 : op == 1 ? k->backward(I.m->self, &ba)
                           : k->decode(I.m->self, &da);
        CHECK_MSG(rc == HYB_ERR_UNSUPPORTED, "%s: rc %d", name[op], rc);
        const char *e = hyb_error();
        CHECK_MSG(strstr(e, "mha (layer") && strstr(e, name[op]) && strstr(e, "head_dim = 6") &&
                      strstr(e, shape[op]),
                  "%s: %s", name[op], e);
        printf("   %s: %s\n", name[op], e);
    }
    be->free(be, x);
    be->free(be, y);
    be->free(be, saved);
    be->free(be, st[0]);
    be->free(be, st[1]);
    mh_inst_free(&I);
}

int main(void) {
    if (mh_require("mha", NULL)) return 1;
    RUN(test_cuda_unsupported_head_dim);
    RUN(test_cuda_decode_splits);
    RUN(test_cuda_bf16_forward);
    RUN(test_long_sequence);
    RUN(test_threads_bitwise);
    RUN(test_decode_chunks);
    return harness_done();
}
