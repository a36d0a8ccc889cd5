/* tests/test_mamba2.c: what only fits the `mamba2` mixer (plugins/mamba2, Mamba-2 SSD). The
 * PyTorch float64 references, finite differences, decode, chunked prefill, snapshot / restore,
 * the graph op, backends and bad input run for every mixer in tests/test_mixers.c; here:
 *  - the chunked SSD at several chunk sizes (1 = the pure recurrence, partial last chunks, one
 *    chunk) gives the same outputs and gradients
 *  - the plugin's random init (mamba_ssm's Mamba2) lands in its ranges
 *  - MIL init from a built GQA mha mixer: x <- v, B <- k, C <- mean of each key head's query heads,
 *    out_proj <- the summed o_proj blocks; shape mismatches and unknown sources are clear errors
 *  - TOML errors carry file:line:col and the key (an unknown key names the nearest one)
 *  - a tiny model with a layer swapped to mamba2 (MIL) trains and its prefill + decode equals the
 *    full forward; graphs/smollm2-135m-mamba2-h3.toml loads and its shapes take MIL
 *  - on CUDA (emulated in test_mamba2_emu): the shapes the kernels refuse are refused naming the
 *    op and the shape (the kernels themselves run against the CPU's in test_mixers_emu_*)
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/model.h"
#include "mixer_harness.h"

enum { NP = 8 };

static const char *TOML = "d_inner = 32\nheaddim = 8\nngroups = 2\nd_state = 4\nd_conv = 4\n";

static int inst_new(mh_inst *I, int D, const char *toml, uint64_t seed) {
    if (mh_inst_new(I, "mamba2", D, toml, seed) != 0) return -1;
    CHECK(I->m->n_params == NP);
    return 0;
}

/* ---- chunk sizes -----------------------------------------------------------------------------*/

static void test_chunk_sizes(void) {
    enum { D = 24, B = 2, T = 23 };
    static const int chunks[] = {64, 1, 4, 7, 23, 22};
    hyb_rng r;
    hyb_rng_seed(&r, 5);
    float *x = mh_randn(&r, B * T * D, 1.0f), *dy = mh_randn(&r, B * T * D, 1.0f);
    float *y0 = NULL, *dx0 = NULL, *g0[NP] = {0};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        char toml[256];
        snprintf(toml, sizeof toml, "%schunk_size = %d\n", TOML, chunks[c]);
        mh_inst I;
        if (inst_new(&I, D, toml, 3) != 0) continue;
        mh_init_perturb(&I, 9, 0.2f);
        float *y = malloc(B * T * D * 4), *dx = malloc(B * T * D * 4);
        void *saved = mh_saved_new(&I, B, T);
        mh_zero_grads(&I);
        CHECK(mh_fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
        CHECK(mh_bwd(&I, B, T, x, dy, dx, saved) == HYB_OK);
        if (!y0) {
            y0 = y, dx0 = dx;
            for (int i = 0; i < NP; i++) {
                g0[i] = malloc((size_t)mh_pnumel(&I, i) * 4);
                memcpy(g0[i], I.gp[i], (size_t)mh_pnumel(&I, i) * 4);
            }
        } else {
            double ey = mh_max_diff(y, y0, B * T * D) / mh_max_abs(y0, B * T * D),
                   ed = mh_max_diff(dx, dx0, B * T * D) / mh_max_abs(dx0, B * T * D), eg = 0;
            for (int i = 0; i < NP; i++) {
                long n = mh_pnumel(&I, i);
                double e = mh_max_diff(I.gp[i], g0[i], n) / (1.0 + mh_max_abs(g0[i], n));
                eg = e > eg ? e : eg;
            }
            printf("   chunk %2d vs 64: y %.2g, dx %.2g, grads %.2g\n", chunks[c], ey, ed, eg);
            CHECK(ey < 2e-6 && ed < 2e-6 && eg < 2e-6);
            free(y);
            free(dx);
        }
        free(saved);
        mh_inst_free(&I);
    }
    mh_free(4, x, dy, y0, dx0);
    for (int i = 0; i < NP; i++)
        free(g0[i]);
}

/* ---- random init ------------------------------------------------------------------------------*/

static void test_random_init(void) {
    enum { D = 24 };
    mh_inst I;
    if (inst_new(&I, D, TOML, 7) != 0) return;
    /* nh = 4: dt_bias = softplus^-1(dt), dt in [1e-3, 0.1]; A_log = log U(1, 16); D = 1;
     * norm.weight = 1; in_proj U(+-1/sqrt(24)), conv U(+-1/2), out_proj U(+-1/sqrt(32)) */
    for (int h = 0; h < 4; h++) {
        const float dt = log1pf(expf(I.pp[3][h]));
        CHECK_MSG(dt >= 0.999e-3f && dt <= 0.1001f, "dt %g", dt);
        CHECK(I.pp[4][h] >= 0.0f && I.pp[4][h] <= logf(16.0f) + 1e-6f);
        CHECK(I.pp[5][h] == 1.0f);
    }
    for (int c = 0; c < 32; c++)
        CHECK(I.pp[6][c] == 1.0f);
    CHECK(mh_max_abs(I.pp[0], mh_pnumel(&I, 0)) <= 1.0f / sqrtf(24.0f));
    CHECK(mh_max_abs(I.pp[0], mh_pnumel(&I, 0)) > 0.5f / sqrtf(24.0f));
    CHECK(mh_max_abs(I.pp[1], mh_pnumel(&I, 1)) <= 0.5f);
    CHECK(mh_max_abs(I.pp[7], mh_pnumel(&I, 7)) <= 1.0f / sqrtf(32.0f));
    for (int i = 0; i < NP; i++)
        CHECK_MSG(I.m->decls[i].no_decay == (i >= 2 && i <= 6), "no_decay of %s",
                  I.m->decls[i].name);
    mh_inst_free(&I);
}

/* ---- MIL -------------------------------------------------------------------------------------*/

static void test_mil_init(void) {
    /* teacher: 4 query heads, 2 KV heads, head_dim 8, D = 32 -> d_inner = 16 (v), ngroups 2 x
     * d_state 8 (k), C = mean of query heads {0, 1} and {2, 3}, out_proj = o's blocks summed */
    enum { D = 32, Di = 16, N = 8, GN = 16 };
    hyb_toml *tdoc = hyb_toml_parse_string(
        "type = \"mha\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\nrope_theta = 10000.0\n",
        "mha.toml");
    hyb_model_dims dims = {.d_model = D, .n_layers = 4, .layer = 2, .max_seq = 32};
    hyb_mixer *att = NULL;
    CHECK_MSG(hyb_mixer_new("mha", &dims, hyb_toml_root(tdoc), 41, &att) == HYB_OK, "%s",
              hyb_error());
    mh_inst I;
    const char *mt = "d_inner = 16\nheaddim = 4\nngroups = 2\nd_state = 8\n";
    if (!att || inst_new(&I, D, mt, 9) != 0) {
        hyb_mixer_free(att);
        hyb_toml_free(tdoc);
        return;
    }
    const float *q = hyb_tensor_f32(att->params[0]), *k = hyb_tensor_f32(att->params[1]),
                *v = hyb_tensor_f32(att->params[2]), *o = hyb_tensor_f32(att->params[3]);
    mh_init_perturb(&I, 1, 1.0f); /* MIL must overwrite everything */
    CHECK_MSG(hyb_mixer_init_from(I.m, att, hyb_toml_root(tdoc), 123) == HYB_OK, "%s", hyb_error());
    const float *win = I.pp[0];
    const size_t row = D * sizeof(float);
    CHECK_MSG(memcmp(win + (size_t)Di * D, v, Di * row) == 0, "in_proj x rows != v_proj");
    CHECK_MSG(memcmp(win + (size_t)2 * Di * D, k, GN * row) == 0, "in_proj B rows != k_proj");
    double ec = 0, eo = 0;
    for (int g = 0; g < 2; g++) /* C: group g = (q head 2g + q head 2g+1) / 2 */
        for (int n = 0; n < N; n++)
            for (int c = 0; c < D; c++) {
                const double want = 0.5 * ((double)q[((2 * g) * N + n) * D + c] +
                                           q[((2 * g + 1) * N + n) * D + c]);
                ec = fmax(ec, fabs(win[(size_t)(2 * Di + GN + g * N + n) * D + c] - want));
            }
    for (int r = 0; r < D; r++) /* out_proj column (g, e) = o[:, (2g) 8 + e] + o[:, (2g+1) 8 + e] */
        for (int col = 0; col < Di; col++) {
            const int g = col / 8, e = col % 8;
            const double want = (double)o[r * 32 + (2 * g) * 8 + e] + o[r * 32 + (2 * g + 1) * 8 + e];
            eo = fmax(eo, fabs(I.pp[7][r * Di + col] - want));
        }
    printf("   MIL: C vs query-head means max err %.2g, out_proj vs summed o_proj blocks %.2g\n", ec,
           eo);
    CHECK(ec < 1e-7 && eo < 1e-6);
    CHECK(I.pp[5][0] == 1.0f && I.pp[6][3] == 1.0f); /* the rest drawn again: D, norm = 1 */
    {   /* the MIL mixer runs */
        hyb_rng r;
        hyb_rng_seed(&r, 4);
        float *x = mh_randn(&r, 5 * D, 1.0f), y[5 * D];
        CHECK(mh_fwd(&I, 1, 5, x, y, NULL, NULL, NULL, 0) == HYB_OK);
        double s = 0;
        for (int i = 0; i < 5 * D; i++)
            s += fabs(y[i]);
        CHECK(s > 0 && s == s);
        free(x);
    }
    mh_inst_free(&I);
    /* shapes that do not line up */
    static const struct {
        const char *toml, *msg;
    } bad[] = {
        {"d_inner = 32\nheaddim = 4\nngroups = 2\nd_state = 8\n", "v_proj's rows"},
        {"d_inner = 16\nheaddim = 4\nngroups = 1\nd_state = 8\n", "k_proj's rows"},
        {"d_inner = 16\nheaddim = 4\nngroups = 4\nd_state = 4\n", "head_dim must equal d_state"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (inst_new(&I, D, bad[i].toml, 9) != 0) continue;
        CHECK(hyb_mixer_init_from(I.m, att, hyb_toml_root(tdoc), 1) == HYB_ERR_ARG);
        CHECK_MSG(strstr(hyb_error(), bad[i].msg) && strstr(hyb_error(), "ngroups = n_kv_heads"),
                  "%s", hyb_error());
        if (i == 0) printf("   e.g. %s\n", hyb_error());
        mh_inst_free(&I);
    }
    /* a source type MIL does not know */
    mh_inst J;
    if (inst_new(&I, D, mt, 9) == 0 && inst_new(&J, D, mt, 2) == 0) {
        CHECK(hyb_mixer_init_from(I.m, J.m, NULL, 1) == HYB_ERR_UNSUPPORTED);
        CHECK_MSG(strstr(hyb_error(), "cannot initialise from a 'mamba2' mixer"), "%s",
                  hyb_error());
        mh_inst_free(&J);
    }
    mh_inst_free(&I);
    hyb_mixer_free(att);
    hyb_toml_free(tdoc);
}

/* ---- configuration errors --------------------------------------------------------------------*/

static void config_error(const char *body, const char *where, const char *what) {
    char text[512];
    snprintf(text, sizeof text, "type = \"mamba2\"\nsymbol = \"s\"\n%s", body);
    hyb_toml *doc = hyb_toml_parse_string(text, "bad.toml");
    CHECK(doc != NULL);
    if (!doc) return;
    hyb_model_dims dims = {.d_model = 64, .n_layers = 1, .layer = 0, .max_seq = 8};
    hyb_mixer *m = NULL;
    int rc = hyb_mixer_new("mamba2", &dims, hyb_toml_root(doc), 1, &m);
    CHECK_MSG(rc < 0 && m == NULL, "accepted: %s", body);
    const char *e = hyb_error();
    CHECK_MSG(strncmp(e, where, strlen(where)) == 0 && strstr(e, what) != NULL,
              "error for '%s' is '%s' (want %s... %s)", body, e, where, what);
    hyb_mixer_free(m);
    hyb_toml_free(doc);
}

static void test_config_errors(void) {
    config_error("headdim = 48\n", "bad.toml:3:", "d_inner = 128 must be a multiple of headdim = 48");
    config_error("headdim = 32\nngroups = 3\n", "bad.toml:4:",
                 "the 4 heads (d_inner / headdim = 128 / 32) must be a multiple of ngroups = 3");
    config_error("d_state = 0\n", "bad.toml:3:", "d_state must be in [1,");
    config_error("d_state = 300\n", "bad.toml:3:", "d_state must be in [1, 256]");
    config_error("d_conv = 65\n", "bad.toml:3:", "d_conv must be in [1, 64]");
    config_error("chunk_size = 2048\n", "bad.toml:3:", "chunk_size must be in [1, 1024]");
    config_error("expand = 0\n", "bad.toml:3:", "expand must be in [1,");
    config_error("norm_eps = 0.0\n", "bad.toml:3:", "norm_eps must be in (0, 1)");
    config_error("dt_min = 0.5\ndt_max = 0.1\n", "bad.toml:4:", "need 0 < dt_min <= dt_max");
    config_error("A_init_min = -1.0\n", "bad.toml:3:", "need 0 < A_init_min <= A_init_max");
    config_error("headdim = \"big\"\n", "bad.toml:3:", "'headdim' must be an integer");
    config_error("head_dim = 16\n", "bad.toml:3:", "unknown key 'head_dim'");
    printf("   e.g. %s\n", hyb_error());
    config_error("chunk = 16\n", "bad.toml:3:", "chunk_size");
    printf("   e.g. %s\n", hyb_error());
}

/* ---- in a model: MIL swap, training, prefill + decode ----------------------------------------*/

static const char *MODEL_TOML =
    "[model]\nname = \"tiny-hybrid\"\nd_model = 32\nn_layers = 3\nvocab_size = 29\nd_ff = 48\n"
    "norm_eps = 1e-5\ntie_embeddings = true\nmax_seq = 64\n"
    "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n"
    "[layout]\npattern = \"ttt\"\n";

static void test_model_hybrid(void) {
    hyb_model *m = harness_build_model(MODEL_TOML, "tiny-hybrid.toml", 17);
    if (!m) return;
    hyb_toml *mdoc = hyb_toml_parse_string("type = \"mamba2\"\nsymbol = \"s\"\nd_inner = 16\n"
                                           "headdim = 4\nngroups = 2\nd_state = 8\n"
                                           "chunk_size = 5\n",
                                           "mamba2.toml");
    const float *vp = hyb_tensor_f32(m->layers[1].mixer->params[2]); /* v_proj of layer 1 */
    float *v_keep = malloc(16 * 32 * 4);
    memcpy(v_keep, vp, 16 * 32 * 4);
    CHECK_MSG(hyb_model_swap(m, 1, "mamba2", hyb_toml_root(mdoc), 1, 5) == HYB_OK, "%s",
              hyb_error());
    CHECK(strcmp(m->layers[1].mixer->type, "mamba2") == 0);
    hyb_tensor *win = hyb_model_param(m, "model.layers.1.mixer.in_proj.weight");
    CHECK(win != NULL);
    if (win) CHECK(memcmp(hyb_tensor_f32(win) + 16 * 32, v_keep, 16 * 32 * 4) == 0);
    free(v_keep);

    enum { NS = 3, MAXC = 32 };
    const int len[NS] = {13, 9, 16}, prompt[NS] = {5, 2, 8};
    const int V = m->V;
    int32_t ids[NS][16];
    hyb_rng r;
    hyb_rng_seed(&r, 71);
    for (int s = 0; s < NS; s++)
        for (int t = 0; t < len[s]; t++)
            ids[s][t] = (int32_t)(hyb_rng_next(&r) % (uint64_t)V);
    const int split[NS] = {0, 0, 3};
    double worst = mh_model_decode_vs_forward(m, NS, &ids[0][0], 16, len, prompt, split, MAXC);
    printf("   hybrid t-s-t: prefill + decode vs forward: max rel err %.3g\n", worst);
    CHECK_MSG(worst < 1e-5, "prefill/decode vs forward: %g", worst);

    enum { B = 2, T = 20 };
    int32_t seq[B * (T + 1)];
    for (int i = 0; i < B * (T + 1); i++)
        seq[i] = (int32_t)(hyb_rng_next(&r) % (uint64_t)V);
    double first = 0, last = 0;
    hyb_tensor *alog = hyb_model_param(m, "model.layers.1.mixer.A_log");
    float alog0 = alog ? hyb_tensor_f32(alog)[1] : 0;
    int ok = mh_model_train(m, seq, B, T, 40, 1e-2f, &first, &last);
    CHECK(ok);
    printf("   hybrid training: loss %.4f -> %.4f after 40 steps\n", first, last);
    CHECK_MSG(last < 0.5 * first, "loss %.4f -> %.4f did not fall clearly", first, last);
    CHECK_MSG(alog && hyb_tensor_f32(alog)[1] != alog0, "the mamba2 layer's A_log did not move");
    hyb_model_free(m);
    hyb_toml_free(mdoc);
}

/* ---- the shipped layer map -------------------------------------------------------------------*/

/* graphs/smollm2-135m-mamba2-h3.toml: loads, has mamba2 at layers 5, 15, 25, and MIL from the
 * file's attention mixer works with its shapes (both mixers built at SmolLM2's size) */
static void test_graph_file(void) {
    char path[4096];
    const char *dd = getenv("HYB_TEST_DATA");
    snprintf(path, sizeof path, "%s/../../graphs/smollm2-135m-mamba2-h3.toml",
             dd ? dd : "tests/data");
    hyb_layermap *map = NULL;
    if (hyb_layermap_load(path, &map) != HYB_OK) {
        CHECK_MSG(0, "%s", hyb_error());
        return;
    }
    int is_ = -1, ia = -1, n_s = 0;
    for (int i = 0; i < map->n_mixers; i++) {
        if (!strcmp(map->mixers[i].type, "mamba2")) is_ = i;
        if (!strcmp(map->mixers[i].type, "mha")) ia = i;
    }
    CHECK(is_ >= 0 && ia >= 0);
    for (int l = 0; l < map->n_layers && is_ >= 0; l++) {
        const int want = l == 5 || l == 15 || l == 25;
        CHECK_MSG((map->layer_mixer[l] == is_) == want, "layer %d", l);
        n_s += map->layer_mixer[l] == is_;
    }
    CHECK(n_s == 3);
    if (is_ >= 0 && ia >= 0) {
        hyb_model_dims dims = {.d_model = map->d_model, .n_layers = map->n_layers, .layer = 5,
                               .max_seq = map->max_seq, .norm_eps = (float)map->norm_eps};
        hyb_mixer *att = NULL, *ssd = NULL;
        CHECK_MSG(hyb_mixer_new("mha", &dims, map->mixers[ia].table, 3, &att) == HYB_OK, "%s",
                  hyb_error());
        CHECK_MSG(hyb_mixer_new("mamba2", &dims, map->mixers[is_].table, 4, &ssd) == HYB_OK, "%s",
                  hyb_error());
        if (att && ssd) {
            CHECK_MSG(hyb_mixer_init_from(ssd, att, map->mixers[ia].table, 5) == HYB_OK, "%s",
                      hyb_error());
            char buf[256];
            ssd->desc->describe(ssd->self, buf, sizeof buf);
            const size_t sb = hyb_mixer_state_bytes(ssd, map->max_seq);
            printf("   smollm2-135m-mamba2-h3.toml: %s, state %zu floats per layer\n", buf, sb / 4);
            CHECK(sb == (192 * 64 + (192 + 2 * 3 * 64) * 4) * 4);
        }
        hyb_mixer_free(att);
        hyb_mixer_free(ssd);
    }
    hyb_layermap_free(map);
}

/* ---- CUDA: shapes the kernels refuse ---------------------------------------------------------*/

static void test_cuda_refused(void) {
    const hyb_backend *be = NULL;
    if (hyb_backend_open("cuda", &be) != HYB_OK || !be) {
        printf("   skip: no cuda backend (%s)\n", hyb_error());
        if (getenv("HYB_TEST_REQUIRE_DEVICE")) CHECK_MSG(0, "HYB_TEST_REQUIRE_DEVICE: no cuda");
        return;
    }
    /* backward: headdim 128 x d_state 64 needs 2 * 64 * 129 * 4 + 1 KiB > 48 KiB shared memory;
     * forward runs (one thread per state row) */
    enum { D = 16, B = 1, T = 3 };
    mh_inst I;
    if (inst_new(&I, D, "d_inner = 128\nheaddim = 128\nd_state = 64\n", 3) != 0) return;
    const hyb_mixer_kernels *k = &I.m->desc->kernels[HYB_DEV_CUDA];
    hyb_rng r;
    hyb_rng_seed(&r, 2);
    float *x = mh_randn(&r, B * T * D, 1.0f);
    const size_t sb = I.m->desc->saved_bytes(I.m->self, B, T);
    void *dx = be->alloc(be, B * T * D * 4), *dy = be->alloc(be, B * T * D * 4),
         *saved = be->alloc(be, sb), *dxx = be->alloc(be, B * T * D * 4);
    const int np = I.m->n_params;
    float **dp = calloc((size_t)np, sizeof *dp), **dg = calloc((size_t)np, sizeof *dg);
    for (int i = 0; i < np; i++) {
        size_t n = (size_t)mh_pnumel(&I, i) * 4;
        dp[i] = be->alloc(be, n);
        dg[i] = be->alloc(be, n);
        be->upload(be, dp[i], I.pp[i], n);
        be->memset0(be, dg[i], n);
    }
    be->upload(be, dx, x, B * T * D * 4);
    be->upload(be, dy, x, B * T * D * 4);
    hyb_mixer_fwd fa = {.B = B, .T = T, .be = be, .x = dx, .y = dxx, .params = (const float *const *)dp,
                        .saved = saved};
    CHECK_MSG(k->forward(I.m->self, &fa) == HYB_OK, "%s", hyb_error());
    hyb_mixer_bwd ba = {.B = B, .T = T, .be = be, .x = dx, .dy = dy, .dx = dxx,
                        .params = (const float *const *)dp, .grads = dg, .saved = saved};
    CHECK(k->backward(I.m->self, &ba) == HYB_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(hyb_error(), "cuda backward") && strstr(hyb_error(), "headdim = 128") &&
                  strstr(hyb_error(), "shared memory"),
              "%s", hyb_error());
    printf("   %s\n", hyb_error());
    for (int i = 0; i < np; i++) {
        be->free(be, dp[i]);
        be->free(be, dg[i]);
    }
    free(dp);
    free(dg);
    be->free(be, dx);
    be->free(be, dy);
    be->free(be, dxx);
    be->free(be, saved);
    free(x);
    mh_inst_free(&I);
    /* d_state 200: no kernel keeps that many registers */
    if (inst_new(&I, D, "d_inner = 16\nheaddim = 8\nd_state = 200\n", 3) == 0) {
        float *x2 = mh_randn(&r, D, 1.0f);
        void *d2 = be->alloc(be, D * 4), *y2 = be->alloc(be, D * 4);
        be->upload(be, d2, x2, D * 4);
        float **p2 = calloc((size_t)np, sizeof *p2);
        for (int i = 0; i < np; i++) {
            size_t n = (size_t)mh_pnumel(&I, i) * 4;
            p2[i] = be->alloc(be, n);
            be->upload(be, p2[i], I.pp[i], n);
        }
        hyb_mixer_fwd f2 = {.B = 1, .T = 1, .be = be, .x = d2, .y = y2,
                            .params = (const float *const *)p2};
        CHECK(I.m->desc->kernels[HYB_DEV_CUDA].forward(I.m->self, &f2) == HYB_ERR_UNSUPPORTED);
        CHECK_MSG(strstr(hyb_error(), "cuda forward") && strstr(hyb_error(), "d_state = 200"), "%s",
                  hyb_error());
        for (int i = 0; i < np; i++)
            be->free(be, p2[i]);
        free(p2);
        be->free(be, d2);
        be->free(be, y2);
        free(x2);
        mh_inst_free(&I);
    }
}

int main(void) {
    if (mh_require("mamba2", "mha", NULL) != 0) return 1;
    RUN(test_chunk_sizes);
    RUN(test_random_init);
    RUN(test_mil_init);
    RUN(test_config_errors);
    RUN(test_model_hybrid);
    RUN(test_graph_file);
    RUN(test_cuda_refused);
    return harness_done();
}
