/* tests/test_deltanet.c: what only fits the `deltanet` and `gated_deltanet` mixers (plugins/common/
 * deltanet_impl.h); every test runs for both. The float64 PyTorch references, finite differences,
 * decode, chunked prefill, snapshot / restore, the graph op, backends and bad input run for every
 * mixer in tests/test_mixers.c; here:
 *  - chunked forward with chunk 1, 5 and 64 agree; full forward equals token-by-token decode
 *    (the recurrent form)
 *  - a longer sequence on the threaded path: prefill + decode, and a directional derivative
 *  - DIL init from an `mha` mixer copies exactly (GQA heads repeated), and shape mismatches fail
 *  - config errors name file:line:col and the key
 *  - the device kernels (every backend that opens; HYB_CUDA_EMULATE=1 for the emulated CUDA)
 *    against the CPU on a ragged value slab and on sub-chunked chunks, and through prefills
 *    that continue states, and a shape too large for the kernels refused by name (CUDA only)
 *  - in a model (mha + deltanet + gated_deltanet layers): prefill + batched decode equals the
 *    forward, a training backward reaches the mixers, and a DIL swap of an attention layer
 *    starts as an identity mixer (zero output gate): logits equal the leave-one-out model's
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/model.h"
#include "mixer_harness.h"

static const char *TYPES[2] = {"deltanet", "gated_deltanet"};

static int inst_new(mh_inst *I, const char *type, int D, const char *toml, uint64_t seed,
                    float wscale) {
    if (mh_inst_new(I, type, D, toml, seed) != 0) return -1;
    if (wscale > 0) mh_init_deltanet(I, seed * 7 + 1, wscale);
    return 0;
}

/* ---- chunk sizes and the recurrent form -------------------------------------------------------
 */

#define DD 16
static const char *DEC_TOML[3] = {"n_heads = 2\nhead_dim = 8\nchunk = 4\n",
                                  "n_heads = 2\nhead_dim = 8\nchunk = 1\n",
                                  "n_heads = 2\nhead_dim = 8\nchunk = 64\n"};

static void test_chunk_sizes(void) {
    for (int gated = 0; gated < 2; gated++) {
        enum { B = 2, T = 23 };
        hyb_rng r;
        hyb_rng_seed(&r, 4);
        float *x = mh_randn(&r, (size_t)B * T * DD, 1.0f), y[3][B * T * DD];
        for (int v = 0; v < 3; v++) {
            mh_inst I;
            if (inst_new(&I, TYPES[gated], DD, DEC_TOML[v], 21, 0.3f) == 0)
                CHECK(mh_fwd(&I, B, T, x, y[v], NULL, NULL, NULL, 0) == HYB_OK);
            mh_inst_free(&I);
        }
        double e1 = harness_max_rel(y[1], y[0], B * T * DD, 1.0),
               e2 = harness_max_rel(y[2], y[0], B * T * DD, 1.0);
        printf("   %s: chunk 1 vs 4 %.3g, chunk 64 vs 4 %.3g\n", TYPES[gated], e1, e2);
        CHECK_MSG(e1 < 1e-5 && e2 < 1e-5, "%s: chunk sizes disagree: %g %g", TYPES[gated], e1, e2);
        /* the recurrent form: prefill token 0 (so the state is initialised), decode the rest */
        mh_inst I;
        if (inst_new(&I, TYPES[gated], DD, DEC_TOML[0], 21, 0.3f) == 0) {
            const int len[B] = {T, T}, pre[B] = {1, 1};
            double e = mh_decode_vs_forward(&I, B, len, pre, T, 0x7f, 4, NULL);
            printf("   %s: recurrent (decode) vs chunked forward %.3g\n", TYPES[gated], e);
            CHECK_MSG(e < 1e-5, "recurrent vs chunked: %g", e);
        }
        mh_inst_free(&I);
        free(x);
    }
}

/* ---- a longer sequence on the threaded path ----------------------------------------------------
 * T = 150 with the default chunk 64 (two full chunks and a partial one), hd 32: large enough for
 * the OpenMP loops over (sequence, head). Prefill of 140 tokens + 10 decode steps equals the
 * forward, and the backward passes a directional-derivative check: for a random direction u,
 * the 4-point central difference of L along u against <grad, u>, for x and every parameter at
 * once. */
static void test_long_sequence(void) {
    for (int gated = 0; gated < 2; gated++) {
        enum { B = 2, T = 150, D = 64, P = 140 };
        mh_inst I;
        if (inst_new(&I, TYPES[gated], D, "n_heads = 2\nhead_dim = 32\n", 31, 0.15f) != 0) {
            mh_inst_free(&I);
            continue;
        }
        hyb_rng r;
        hyb_rng_seed(&r, 17);
        const long nx = (long)B * T * D;
        float *x = mh_randn(&r, nx, 1.0f), *dy = mh_randn(&r, nx, 1.0f), *y = malloc(nx * 4),
              *dx = malloc(nx * 4), *yd = malloc(nx * 4);
        void *saved = mh_saved_new(&I, B, T);
        double t0 = hyb_time_now();
        CHECK(mh_fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
        double t1 = hyb_time_now();
        CHECK(mh_bwd(&I, B, T, x, dy, dx, saved) == HYB_OK);
        double t2 = hyb_time_now();
        /* prefill of P tokens + decode of the rest */
        const int len[B] = {T, T}, pre[B] = {P, P};
        double worst = mh_decode_vs_forward(&I, B, len, pre, T, 0x7f, 18, NULL);
        CHECK_MSG(worst < 1e-5, "long: prefill/decode vs forward %g", worst);
        /* directional derivative over x and all parameters */
        const int np = I.m->n_params;
        float *u[17];
        float *vals[17];
        long cnt[17];
        double an = 0;
        for (int i = 0; i <= np; i++) {
            vals[i] = i < np ? (float *)I.pp[i] : x;
            cnt[i] = i < np ? (long)hyb_tensor_numel(I.m->params[i]) : nx;
            u[i] = mh_randn(&r, (size_t)cnt[i], 1.0f);
            const float *gsrc = i < np ? I.gp[i] : dx;
            for (long j = 0; j < cnt[i]; j++)
                an += (double)gsrc[j] * u[i][j];
        }
        const float h = 1e-3f, off[4] = {h, -h, 2 * h, -2 * h};
        double L[4];
        for (int s = 0; s < 4; s++) {
            for (int i = 0; i <= np; i++)
                for (long j = 0; j < cnt[i]; j++)
                    vals[i][j] += off[s] * u[i][j];
            CHECK(mh_fwd(&I, B, T, x, yd, NULL, NULL, NULL, 0) == HYB_OK);
            L[s] = 0;
            for (long j = 0; j < nx; j++)
                L[s] += (double)yd[j] * dy[j];
            for (int i = 0; i <= np; i++)
                for (long j = 0; j < cnt[i]; j++)
                    vals[i][j] -= off[s] * u[i][j];
        }
        double fd = (8.0 * (L[0] - L[1]) - (L[2] - L[3])) / (12.0 * h),
               rel = fabs(fd - an) / fabs(an);
        printf("   %s T=%d: fwd %.1f ms, bwd %.1f ms; prefill+decode vs fwd %.3g; "
               "directional derivative %.6g vs <grad, u> %.6g (rel %.2g)\n",
               TYPES[gated], T, 1e3 * (t1 - t0), 1e3 * (t2 - t1), worst, fd, an, rel);
        /* 4-point rule: truncation O(h^4) is negligible (the 2-point rule's O(h^2) error was
         * measured at 4e-4 for h = 1e-3, shrinking 4x per halving); what remains is f32 noise in
         * L (~1e3 in size) of ~1e-4 relative to |<grad, u>| ~ 3e3. A dropped term anywhere in
         * the backward shifts <grad, u> by far more. */
        CHECK_MSG(rel < 3e-4, "directional derivative: rel %g", rel);
        for (int i = 0; i <= np; i++)
            free(u[i]);
        free(x);
        free(dy);
        free(y);
        free(dx);
        free(yd);
        free(saved);
        mh_inst_free(&I);
    }
}

/* ---- DIL init from mha --------------------------------------------------------------------------
 */

static void test_init_from_mha(void) {
    const int D = 32;
    hyb_toml *tdoc = hyb_toml_parse_string("n_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n", "t.toml");
    hyb_model_dims dims = {
        .d_model = D, .n_layers = 1, .layer = 0, .max_seq = 64, .norm_eps = 1e-5f};
    hyb_mixer *teacher = NULL;
    CHECK_MSG(hyb_mixer_new("mha", &dims, hyb_toml_root(tdoc), 3, &teacher) == HYB_OK, "%s",
              hyb_error());
    if (!teacher) {
        hyb_toml_free(tdoc);
        return;
    }
    const float *tq = hyb_tensor_f32(teacher->params[0]), *tk = hyb_tensor_f32(teacher->params[1]),
                *tv = hyb_tensor_f32(teacher->params[2]), *to = hyb_tensor_f32(teacher->params[3]);
    for (int gated = 0; gated < 2; gated++) {
        mh_inst I;
        if (inst_new(&I, TYPES[gated], D, "n_heads = 4\nhead_dim = 8\n", 9, 0.3f) != 0) {
            mh_inst_free(&I);
            continue;
        }
        CHECK_MSG(hyb_mixer_init_from(I.m, teacher, hyb_toml_root(tdoc), 5) == HYB_OK, "%s",
                  hyb_error());
        const float *const *p = I.pp;
        int bad = 0;
        for (int h = 0; h < 4; h++)
            for (int i = 0; i < 8 * D; i++) {
                size_t o = (size_t)h * 8 * D + i, okv = (size_t)(h / 2) * 8 * D + i;
                bad += p[0][o] != tq[o] || p[1][o] != tk[okv] || p[2][o] != tv[okv];
                bad += p[7][o] != 0.0f; /* g_proj */
            }
        for (int i = 0; i < D * 32; i++)
            bad += p[9][i] != to[i];
        for (int i = 0; i < 4 * D; i++)
            bad += p[3][i] != 0.0f; /* b_proj: beta = 0.5 */
        for (int s = 0; s < 3; s++)
            for (int ch = 0; ch < 32; ch++)
                for (int j = 0; j < 4; j++)
                    bad += p[4 + s][ch * 4 + j] != (j == 3 ? 1.0f : 0.0f);
        for (int i = 0; i < 8; i++)
            bad += p[8][i] != 1.0f;
        if (gated)
            for (int h = 0; h < 4; h++) {
                float A = expf(p[11][h]), dt = log1pf(expf(p[12][h]));
                bad += !(A > 0 && A <= 16.0f) || !(dt > 0.9e-4f && dt < 0.11f);
            }
        CHECK_MSG(bad == 0, "%s: %d values not as DIL prescribes", TYPES[gated], bad);
        mh_inst_free(&I);
        /* mismatched shapes and unknown sources fail with a message */
        if (inst_new(&I, TYPES[gated], D, "n_heads = 2\nhead_dim = 16\n", 9, 0) == 0) {
            CHECK(hyb_mixer_init_from(I.m, teacher, hyb_toml_root(tdoc), 5) == HYB_ERR_ARG);
            CHECK_MSG(strstr(hyb_error(), "teacher has n_heads 4, head_dim 8") != NULL, "%s",
                      hyb_error());
            printf("   %s\n", hyb_error());
            CHECK(hyb_mixer_init_from(I.m, I.m, NULL, 5) == HYB_ERR_UNSUPPORTED);
        }
        mh_inst_free(&I);
    }
    hyb_mixer_free(teacher);
    hyb_toml_free(tdoc);
}

/* ---- config errors ----------------------------------------------------------------------------
 */

static void test_config_errors(void) {
    static const struct {
        const char *toml, *key, *where;
    } cases[] = {
        {"type = \"X\"\nn_heads = 0\n", "n_heads", "test.toml:2:"},
        {"type = \"X\"\nn_heads = 3\n", "n_heads", "test.toml:2:"}, /* 32 % 3 != 0 */
        {"type = \"X\"\nn_heads = 2\nhead_dim = 0\n", "head_dim", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nhead_dim = 1000\n", "head_dim", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nconv_size = 0\n", "conv_size", "test.toml:3:"},
        {"type = \"X\"\nchunk = 0\nn_heads = 2\n", "chunk", "test.toml:2:"},
        {"type = \"X\"\nn_heads = 2\nnorm_eps = -1.0\n", "norm_eps", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nchunk = \"big\"\n", "chunk", "test.toml:3:"},
        /* an unknown key (expand_k is fla's, not ours) */
        {"type = \"X\"\nn_heads = 2\nexpand_k = 2\n", "expand_k", "test.toml:3:"},
        /* the fla options: range and type errors name the key */
        {"type = \"X\"\nn_heads = 2\nexpand_v = 0.3\n", "expand_v", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nexpand_v = 0.0\n", "expand_v", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nexpand_v = 64.0\n", "expand_v", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nnum_v_heads = 3\n", "num_v_heads", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nnum_v_heads = 1\n", "num_v_heads", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nuse_gate = 1\n", "use_gate", "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nuse_short_conv = \"no\"\n", "use_short_conv",
         "test.toml:3:"},
        {"type = \"X\"\nn_heads = 2\nallow_neg_eigval = 2\n", "allow_neg_eigval",
         "test.toml:3:"},
    };
    for (int gated = 0; gated < 2; gated++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            hyb_toml *doc = hyb_toml_parse_string(cases[i].toml, "test.toml");
            CHECK(doc != NULL);
            if (!doc) continue;
            hyb_model_dims dims = {
                .d_model = 32, .n_layers = 1, .layer = 0, .max_seq = 64, .norm_eps = 1e-5f};
            hyb_mixer *m = NULL;
            int rc = hyb_mixer_new(TYPES[gated], &dims, hyb_toml_root(doc), 1, &m);
            CHECK_MSG(rc < 0, "case %zu accepted", i);
            const char *e = hyb_error();
            CHECK_MSG(strstr(e, cases[i].where) && strstr(e, cases[i].key),
                      "case %zu: message '%s' lacks '%s' / '%s'", i, e, cases[i].where,
                      cases[i].key);
            if (gated == 0) printf("   %s\n", e);
            hyb_mixer_free(m);
            hyb_toml_free(doc);
        }
}

/* ---- in a hybrid model ------------------------------------------------------------------------
 */

static const char *HYB_MAP =
    "[model]\nname = \"dn-hybrid\"\nd_model = 32\nn_layers = 3\nvocab_size = 40\nd_ff = 48\n"
    "norm_eps = 1e-5\ntie_embeddings = true\nmax_seq = 64\n"
    "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n"
    "[mixers.dn]\ntype = \"deltanet\"\nsymbol = \"d\"\nn_heads = 4\nhead_dim = 8\nchunk = 4\n"
    "[mixers.gdn]\ntype = \"gated_deltanet\"\nsymbol = \"g\"\nn_heads = 4\nhead_dim = 8\n"
    "chunk = 4\n"
    "[layout]\npattern = \"dtg\"\n";

/* the model owns (and frees) its layer map */
static hyb_model *hybrid_model(void) {
    return harness_build_model(HYB_MAP, "hybrid.toml", 77);
}

static void test_hybrid_model(void) {
    hyb_model *m = hybrid_model();
    if (!m) return;
    enum { NS = 2, LEN = 11 };
    const int V = 40, len[NS] = {11, 8}, prompt[NS] = {5, 3};
    int32_t ids[NS][LEN];
    for (int s = 0; s < NS; s++)
        for (int t = 0; t < LEN; t++)
            ids[s][t] = (int32_t)((t * 7 + s * 13 + 3) % V);
    /* sequence 0: a two-part prefill (2 tokens, then the rest); sequence 1: one */
    const int split[NS] = {2, 0};
    double worst = mh_model_decode_vs_forward(m, NS, &ids[0][0], LEN, len, prompt, split, 32);
    printf("   model 'dtg': prefill + decode vs forward logits: max rel err %.3g\n", worst);
    CHECK_MSG(worst < 1e-5, "model prefill/decode: %g", worst);

    /* training: gradients reach both linear mixers */
    {
        enum { B = 2, T = 9 };
        int32_t tid[B * T], tg[B * T];
        for (int i = 0; i < B * T; i++) {
            tid[i] = (i * 5 + 1) % V;
            tg[i] = (i * 3 + 2) % V;
        }
        hyb_graph *g = hyb_graph_new();
        hyb_tensor *lgt = hyb_model_forward(m, g, tid, B, T);
        hyb_tensor *L = lgt ? hyb_cross_entropy(g, lgt, tg, NULL) : NULL;
        CHECK_MSG(L && hyb_graph_backward(g, L, 1.0f) == HYB_OK, "%s", hyb_error());
        const char *names[3] = {"model.layers.0.mixer.q_conv1d.weight",
                                "model.layers.2.mixer.A_log", "model.layers.2.mixer.k_proj.weight"};
        for (int k = 0; k < 3; k++) {
            hyb_tensor *p = hyb_model_param(m, names[k]);
            CHECK_MSG(p != NULL && p->grad, "no parameter %s", names[k]);
            if (!p || !p->grad) continue;
            double s2 = 0;
            const float *gd = hyb_tensor_f32(p->grad);
            for (int64_t i = 0; i < hyb_tensor_numel(p); i++)
                s2 += (double)gd[i] * gd[i];
            CHECK_MSG(s2 > 0 && isfinite(s2), "%s: |grad|^2 = %g", names[k], s2);
        }
        hyb_graph_free(g);
    }
    hyb_model_free(m);

    /* DIL: swapping attention layer 1 for a DeltaNet initialised from it gives a zero mixer
     * output (output gate 0), so the logits equal those with layer 1 left out (identity) */
    for (int gated = 0; gated < 2; gated++) {
        hyb_model *a = hybrid_model(), *b = hybrid_model();
        hyb_toml *doc = hyb_toml_parse_string("n_heads = 4\nhead_dim = 8\n", "swap.toml");
        if (a && b && doc) {
            CHECK_MSG(hyb_model_swap(a, 1, TYPES[gated], hyb_toml_root(doc), 1, 5) == HYB_OK, "%s",
                      hyb_error());
            CHECK(hyb_model_set_identity(b, 1) == HYB_OK);
            float *la = harness_logits(a, ids[0], 1, LEN), *lb = harness_logits(b, ids[0], 1, LEN);
            if (la && lb) {
                double e = harness_max_rel(la, lb, LEN * V, 1e-30);
                printf("   DIL %s at layer 1 vs identity layer: max rel diff %.3g\n", TYPES[gated],
                       e);
                CHECK_MSG(e == 0, "DIL swap is not a zero mixer: %g", e);
            }
            free(la);
            free(lb);
        }
        hyb_model_free(a);
        hyb_model_free(b);
        hyb_toml_free(doc);
    }
}

/* ---- device kernels on shapes the shared harness row does not reach ---------------------------
 * test_mixers' row (head_dim 8, chunk 4) runs the CUDA kernels with two full value slabs and
 * whole chunks. Here: head_dim 5 (slabs of 2 columns: a ragged last slab) with a chunk of 3, and
 * head_dim 64 with chunk 64 (the forward splits each chunk into sub-chunks that fit its shared
 * memory; T = 70 crosses a chunk). Every device that opens (HYB_CUDA_EMULATE=1: the emulated
 * one) against the CPU, forward / backward / prefill / decode at T = 5, 37, 70. Weights of
 * head_dim 64 are scaled by 0.2, not 0.3: at 0.3 the two devices' dx differ by up to 1.2e-5
 * (max rel) however the device orders its sums (sub-chunks of 1, 7 or 34 tokens: the same), so
 * that is f32 conditioning (the L2-norm backward removes most of dq, dk), not a kernel error. */

static void test_device_shapes(void) {
    static const struct {
        int D;
        const char *toml;
        float scale;
    } SH[2] = {{12, "n_heads = 3\nhead_dim = 5\nconv_size = 3\nchunk = 3\n", 0.3f},
               {32, "n_heads = 2\nhead_dim = 64\nchunk = 64\n", 0.2f}};
    for (int gated = 0; gated < 2; gated++)
        for (int i = 0; i < 2; i++) {
            mh_inst I;
            printf("   %s, D = %d, %s\n", TYPES[gated], SH[i].D, SH[i].toml);
            if (inst_new(&I, TYPES[gated], SH[i].D, SH[i].toml, 31 + i, SH[i].scale) == 0) {
                mh_case c = mh_default_case(TYPES[gated], SH[i].D, SH[i].toml);
                mh_check_backends(&c, &I);
            }
            mh_inst_free(&I);
        }
}

/* ---- a continued prefill on the device ---------------------------------------------------------
 * test_mixers' device rows prefill from position 0, then decode. Here prefills continue states:
 * segments of 5, 2 (shorter than the conv window K - 1 = 3) and 7 tokens, then a decode step, for
 * two sequences of which the second restarts at position 0 in the second segment (one call mixes
 * a continued and a fresh state); outputs and the final states (S and conv windows) against the
 * CPU's. */
static void test_device_continue(void) {
    const hyb_backend *be = NULL;
    const char *need = getenv("HYB_TEST_REQUIRE_DEVICE");
    if (hyb_backend_open("cuda", &be) != HYB_OK || !be) {
        CHECK_MSG(!need || strcmp(need, "cuda") != 0, "HYB_TEST_REQUIRE_DEVICE=cuda: %s",
                  hyb_error());
        printf("   skip: %s\n", hyb_error());
        return;
    }
    enum { B = 2, M = 24, NSEG = 4, TMAX = 7 };
    static const int SEG[NSEG] = {5, 2, 7, 1};
    const mh_tol tol = {.rel1 = 1e-5};
    for (int gated = 0; gated < 2; gated++) {
        mh_inst I;
        if (inst_new(&I, TYPES[gated], DD, DEC_TOML[0], 41, 0.3f) != 0) {
            mh_inst_free(&I);
            continue;
        }
        const hyb_mixer_kernels *k = &I.m->desc->kernels[be->device];
        const int np = I.m->n_params;
        const size_t sb = hyb_mixer_state_bytes(I.m, M), nx = (size_t)B * TMAX * DD;
        int ok = k->forward != NULL;
        float *dp[16] = {0}, *xd = be->alloc(be, nx * 4), *yd = be->alloc(be, nx * 4);
        void *hs[B], *ds[B];
        for (int i = 0; i < np; i++) {
            dp[i] = be->alloc(be, (size_t)mh_pnumel(&I, i) * 4);
            ok &= dp[i] && be->upload(be, dp[i], I.pp[i], (size_t)mh_pnumel(&I, i) * 4) == HYB_OK;
        }
        for (int b = 0; b < B; b++) {
            hs[b] = calloc(1, sb);
            ds[b] = be->alloc(be, sb);
            ok &= ds[b] && be->memset0(be, ds[b], sb) == HYB_OK;
        }
        ok &= xd && yd;
        CHECK_MSG(ok, "%s: device buffers: %s", TYPES[gated], hyb_error());
        hyb_rng r;
        hyb_rng_seed(&r, 9);
        int32_t pos[B] = {0, 0};
        float *y0 = malloc(nx * 4), *y1 = malloc(nx * 4);
        for (int s = 0; ok && s < NSEG; s++) {
            const int T = SEG[s];
            if (s == 1) pos[1] = 0; /* sequence 1 starts afresh */
            float *x = mh_randn(&r, (size_t)B * T * DD, 1.0f);
            const float *const *cdp = (const float *const *)dp;
            int rc0, rc1;
            ok &= be->upload(be, xd, x, (size_t)B * T * DD * 4) == HYB_OK;
            if (T > 1) {
                rc0 = mh_fwd(&I, B, T, x, y0, NULL, hs, pos, M);
                hyb_mixer_fwd a = {.B = B, .T = T, .be = be, .x = xd, .y = yd, .params = cdp,
                                   .states = ds, .pos = pos, .max_ctx = M};
                rc1 = k->forward(I.m->self, &a);
            } else {
                rc0 = mh_dec(&I, B, x, y0, hs, pos, M);
                hyb_mixer_dec a = {.n = B, .be = be, .x = xd, .y = yd, .params = cdp,
                                   .states = ds, .pos = pos, .max_ctx = M};
                rc1 = k->decode(I.m->self, &a);
            }
            CHECK_MSG(rc0 == HYB_OK && rc1 == HYB_OK, "%s segment %d: %s", TYPES[gated], s,
                      hyb_error());
            ok &= rc0 == HYB_OK && rc1 == HYB_OK &&
                  be->download(be, y1, yd, (size_t)B * T * DD * 4) == HYB_OK;
            char what[96];
            snprintf(what, sizeof what, "%s %d tokens at %d, %d", T > 1 ? "prefill" : "decode", T,
                     pos[0], pos[1]);
            if (ok) mh_compare(what, y1, y0, (long)B * T * DD, tol);
            for (int b = 0; b < B; b++)
                pos[b] += T;
            free(x);
        }
        float *st = malloc(sb);
        for (int b = 0; ok && b < B; b++) {
            ok &= be->download(be, st, ds[b], sb) == HYB_OK;
            char what[64];
            snprintf(what, sizeof what, "state %d (S, windows)", b);
            mh_compare(what, st, hs[b], (long)(sb / 4), tol);
        }
        CHECK_MSG(ok, "%s: %s", TYPES[gated], hyb_error());
        free(st), free(y0), free(y1);
        for (int b = 0; b < B; b++) {
            free(hs[b]);
            be->free(be, ds[b]);
        }
        for (int i = 0; i < np; i++)
            be->free(be, dp[i]);
        be->free(be, xd);
        be->free(be, yd);
        mh_inst_free(&I);
    }
}

/* ---- a shape the device kernels cannot take -----------------------------------------------------
 * B * T rows beyond a grid's 2^31 - 1: HYB_ERR_UNSUPPORTED naming the mixer, the op and the shape,
 * before any memory is touched (x and y are never read: NULL here), not a CPU fallback. */
static void test_device_unsupported(void) {
    const hyb_backend *be = NULL;
    const char *need = getenv("HYB_TEST_REQUIRE_DEVICE");
    if (hyb_backend_open("cuda", &be) != HYB_OK || !be) {
        CHECK_MSG(!need || strcmp(need, "cuda") != 0, "HYB_TEST_REQUIRE_DEVICE=cuda: %s",
                  hyb_error());
        printf("   skip: %s\n", hyb_error());
        return;
    }
    for (int gated = 0; gated < 2; gated++) {
        mh_inst I;
        if (inst_new(&I, TYPES[gated], DD, DEC_TOML[0], 41, 0.3f) == 0) {
            const hyb_mixer_kernels *k = &I.m->desc->kernels[be->device];
            hyb_mixer_fwd a = {.B = 65536, .T = 65536, .be = be, .params = I.pp};
            const int rc = k->forward(I.m->self, &a);
            const char *e = hyb_error();
            printf("   %s\n", e);
            CHECK_MSG(rc == HYB_ERR_UNSUPPORTED && strstr(e, TYPES[gated]) &&
                          strstr(e, "cuda forward") && strstr(e, "B = 65536, T = 65536"),
                      "rc %d: %s", rc, e);
        }
        mh_inst_free(&I);
    }
    /* the fla options without CUDA kernels: every entry refuses, naming the option (never a
     * silently wrong result); allow_neg_eigval, use_gate = false and use_short_conv = false run
     * (tests/test_mixers compares them with the CPU) */
    static const struct {
        const char *toml, *name;
    } opts[] = {
        {"n_heads = 2\nhead_dim = 8\nnum_v_heads = 4\n", "num_v_heads"},
        {"n_heads = 2\nhead_dim = 8\nexpand_v = 2.0\n", "expand_v"},
    };
    for (int gated = 0; gated < 2; gated++)
        for (size_t o = 0; o < sizeof opts / sizeof opts[0]; o++) {
            mh_inst I;
            if (inst_new(&I, TYPES[gated], 16, opts[o].toml, 41, 0.3f) != 0) continue;
            const hyb_mixer_kernels *k = &I.m->desc->kernels[be->device];
            int32_t pos[1] = {0};
            hyb_mixer_fwd fa = {.B = 1, .T = 3, .be = be, .params = I.pp};
            hyb_mixer_bwd ba = {.B = 1, .T = 3, .be = be, .params = I.pp};
            hyb_mixer_dec da = {.n = 1, .be = be, .params = I.pp, .pos = pos, .max_ctx = 8};
            const char *ops[3] = {"cuda forward", "cuda backward", "cuda decode"};
            for (int op = 0; op < 3; op++) {
                const int rc = op == 0   ? k->forward(I.m->self, &fa)
                               : op == 1 ? k->backward(I.m->self, &ba)
                                         : k->decode(I.m->self, &da);
                const char *e = hyb_error();
                if (gated == 0 && op == 0) printf("   %s\n", e);
                CHECK_MSG(rc == HYB_ERR_UNSUPPORTED && strstr(e, ops[op]) &&
                              strstr(e, opts[o].name),
                          "%s %s: rc %d: %s", TYPES[gated], opts[o].name, rc, e);
            }
            mh_inst_free(&I);
        }
}

/* ---- a decode step as a CUDA graph ------------------------------------------------------------
 * The device decode uploads nothing and never waits (states go to the kernels by value), so it
 * can be captured (be->graph_begin / graph_end) and replayed: after a prefill of 6 tokens, one
 * captured decode step replayed 4 times with new inputs in the same device buffer equals 4 CPU
 * decode steps. */
static void test_device_graph(void) {
    const hyb_backend *be = NULL;
    if (hyb_backend_open("cuda", &be) != HYB_OK || !be || !be->graph_begin) {
        printf("   skip: %s\n", hyb_error());
        return;
    }
    enum { B = 2, M = 24, T0 = 6, STEPS = 4 };
    const mh_tol tol = {.rel1 = 1e-5};
    for (int gated = 0; gated < 2; gated++) {
        mh_inst I;
        if (inst_new(&I, TYPES[gated], DD, DEC_TOML[0], 41, 0.3f) != 0) {
            mh_inst_free(&I);
            continue;
        }
        const hyb_mixer_kernels *k = &I.m->desc->kernels[be->device];
        const int np = I.m->n_params;
        const size_t sb = hyb_mixer_state_bytes(I.m, M), nx = (size_t)B * T0 * DD;
        float *dp[16] = {0}, *xd = be->alloc(be, nx * 4), *yd = be->alloc(be, nx * 4);
        void *hs[B], *ds[B];
        for (int i = 0; i < np; i++) {
            dp[i] = be->alloc(be, (size_t)mh_pnumel(&I, i) * 4);
            be->upload(be, dp[i], I.pp[i], (size_t)mh_pnumel(&I, i) * 4);
        }
        for (int b = 0; b < B; b++) {
            hs[b] = calloc(1, sb);
            ds[b] = be->alloc(be, sb);
            be->memset0(be, ds[b], sb);
        }
        hyb_rng r;
        hyb_rng_seed(&r, 9);
        float *x = mh_randn(&r, nx, 1.0f), *y0 = malloc(nx * 4), *y1 = malloc(nx * 4);
        const float *const *cdp = (const float *const *)dp;
        int32_t pos[B] = {0, 0};
        CHECK(mh_fwd(&I, B, T0, x, y0, NULL, hs, pos, M) == HYB_OK);
        be->upload(be, xd, x, nx * 4);
        hyb_mixer_fwd a = {.B = B, .T = T0, .be = be, .x = xd, .y = yd, .params = cdp,
                           .states = ds, .pos = pos, .max_ctx = M};
        CHECK(k->forward(I.m->self, &a) == HYB_OK);
        pos[0] = pos[1] = T0;
        hyb_mixer_dec da = {.n = B, .be = be, .x = xd, .y = yd, .params = cdp, .states = ds,
                            .pos = pos, .max_ctx = M};
        void *g = NULL;
        CHECK_MSG(be->graph_begin(be) == HYB_OK, "%s", hyb_error());
        int rc = k->decode(I.m->self, &da);
        CHECK_MSG(be->graph_end(be, &g) == HYB_OK && rc == HYB_OK && g, "%s", hyb_error());
        for (int s = 0; g && s < STEPS; s++) {
            float *xs = mh_randn(&r, (size_t)B * DD, 1.0f);
            CHECK(mh_dec(&I, B, xs, y0, hs, pos, M) == HYB_OK);
            be->upload(be, xd, xs, (size_t)B * DD * 4);
            CHECK_MSG(be->graph_launch(be, g) == HYB_OK, "%s", hyb_error());
            be->download(be, y1, yd, (size_t)B * DD * 4);
            char what[64];
            snprintf(what, sizeof what, "graph decode step %d", s);
            mh_compare(what, y1, y0, (long)B * DD, tol);
            pos[0]++, pos[1]++;
            free(xs);
        }
        if (g) be->graph_free(be, g);
        for (int b = 0; b < B; b++) {
            free(hs[b]);
            be->free(be, ds[b]);
        }
        for (int i = 0; i < np; i++)
            be->free(be, dp[i]);
        be->free(be, xd);
        be->free(be, yd);
        free(x), free(y0), free(y1);
        mh_inst_free(&I);
    }
}

int main(void) {
    if (mh_require("deltanet", "gated_deltanet", "mha", NULL)) return 1;
    RUN(test_device_shapes);
    RUN(test_device_continue);
    RUN(test_device_unsupported);
    RUN(test_device_graph);
    RUN(test_chunk_sizes);
    RUN(test_long_sequence);
    RUN(test_init_from_mha);
    RUN(test_config_errors);
    RUN(test_hybrid_model);
    return harness_done();
}
