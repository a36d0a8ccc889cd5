/* tests/test_mamba1.c: what only fits the `mamba1` mixer (plugins/mamba1, Apriel-H1 "m2"). The
 * PyTorch float64 references, finite differences, decode, chunked prefill, snapshot / restore,
 * the graph op, backends and bad input run for every mixer in tests/test_mixers.c; here:
 *  - chunked scan (several chunk sizes) equals the unchunked one, forward and backward
 *  - batched (threaded) vs one sequence at a time; a decode step large enough for the threads
 *  - the conv window of a prefill shorter than d_conv is zero-padded
 *  - random init per SPEC.md section 4, MIL init from a built mha mixer copies exactly the rows
 *    SPEC names, shape mismatches and unknown sources are clear errors
 *  - TOML errors carry file:line:col and the key
 *  - a tiny model with a layer swapped to mamba1 (MIL) trains and its prefill + decode equals the
 *    full forward; the shipped layer maps
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/model.h"
#include "mixer_harness.h"

enum { NP = 9 };

static int inst_new(mh_inst *I, int D, const char *toml, uint64_t seed) {
    if (mh_inst_new(I, "mamba1", D, toml, seed) != 0) return -1;
    CHECK(I->m->n_params == NP);
    return 0;
}

/* ---- chunk sizes -----------------------------------------------------------------------------*/

static const char *SMALL_TOML = "d_inner = 32\nd_xb = 16\nd_state = 4\ndt_rank = 4\nd_conv = 4\n";

static void test_chunk_sizes(void) {
    enum { D = 24, B = 2, T = 23 };
    const int chunks[] = {1, 3, 8, 22, 23, 100};
    const long nx = (long)B * T * D;
    hyb_rng r;
    hyb_rng_seed(&r, 3);
    float *x = mh_randn(&r, nx, 1.0f), *dy = mh_randn(&r, nx, 1.0f);
    float *y0 = malloc(nx * 4), *dx0 = malloc(nx * 4), *g0[NP] = {0};
    double ey = 0, eg = 0;
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        char toml[256];
        snprintf(toml, sizeof toml, "%schunk = %d\n", SMALL_TOML, chunks[c]);
        mh_inst I;
        if (inst_new(&I, D, toml, 8) != 0) {
            mh_inst_free(&I);
            break;
        }
        mh_init_mamba1(&I, 44, 1.0f);
        float *y = malloc(nx * 4), *dx = malloc(nx * 4);
        void *saved = mh_saved_new(&I, B, T);
        CHECK(mh_fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
        CHECK(mh_bwd(&I, B, T, x, dy, dx, saved) == HYB_OK);
        if (c == 0) {
            memcpy(y0, y, nx * 4);
            memcpy(dx0, dx, nx * 4);
            for (int i = 0; i < NP; i++) {
                g0[i] = malloc((size_t)mh_pnumel(&I, i) * 4);
                memcpy(g0[i], I.gp[i], (size_t)mh_pnumel(&I, i) * 4);
            }
        } else {
            double e = mh_max_diff(y, y0, nx);
            ey = e > ey ? e : ey;
            e = mh_max_diff(dx, dx0, nx);
            eg = e > eg ? e : eg;
            for (int i = 0; i < NP; i++) {
                e = mh_max_diff(I.gp[i], g0[i], mh_pnumel(&I, i));
                eg = e > eg ? e : eg;
            }
        }
        free(y);
        free(dx);
        free(saved);
        mh_inst_free(&I);
    }
    /* the recomputed states inside a chunk repeat the forward's operations exactly, so every
     * chunk size gives the same numbers */
    printf("   chunk sizes 1, 3, 8, 22, 23, 100 (T = %d): max diff y %.3g, gradients %.3g\n", T, ey,
           eg);
    CHECK_MSG(ey == 0 && eg < 1e-6, "chunked vs unchunked: y %g grads %g", ey, eg);
    for (int i = 0; i < NP; i++)
        free(g0[i]);
    mh_free(4, x, dy, y0, dx0);
}

/* The OpenMP regions (forward scan over (sequence, head), backward over x/B groups, conv) open only
 * above ~262144 inner steps: one call on 4 sequences is above (B*T*Di*N = 327680), each sequence
 * alone is below. The batched call must give the per-sequence outputs and dx, and parameter
 * gradients equal to the sum of the per-sequence ones. */
static void test_parallel_vs_serial(void) {
    enum { D = 48, B = 4, T = 160 };
    mh_inst I;
    if (inst_new(&I, D, "d_inner = 64\nd_xb = 32\nd_state = 8\ndt_rank = 6\nchunk = 16\n", 31) !=
        0) {
        mh_inst_free(&I);
        return;
    }
    mh_init_mamba1(&I, 32, 1.0f);
    hyb_rng r;
    hyb_rng_seed(&r, 33);
    const long nx = (long)B * T * D, nr = (long)T * D;
    float *x = mh_randn(&r, nx, 1.0f), *dy = mh_randn(&r, nx, 1.0f), *y = malloc(nx * 4),
          *dx = malloc(nx * 4), *y1 = malloc(nr * 4), *dx1 = malloc(nr * 4), *gb[NP];
    void *saved = mh_saved_new(&I, B, T);
    CHECK(mh_fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
    CHECK(mh_bwd(&I, B, T, x, dy, dx, saved) == HYB_OK);
    for (int i = 0; i < NP; i++) { /* keep the batched gradients, then start from zero */
        gb[i] = malloc((size_t)mh_pnumel(&I, i) * 4);
        memcpy(gb[i], I.gp[i], (size_t)mh_pnumel(&I, i) * 4);
        memset(I.gp[i], 0, (size_t)mh_pnumel(&I, i) * 4);
    }
    double ey = 0, edx = 0, eg = 0;
    for (int b = 0; b < B; b++) {
        CHECK(mh_fwd(&I, 1, T, x + b * nr, y1, saved, NULL, NULL, 0) == HYB_OK);
        CHECK(mh_bwd(&I, 1, T, x + b * nr, dy + b * nr, dx1, saved) == HYB_OK);
        ey = fmax(ey, harness_max_rel(y1, y + b * nr, nr, 1.0));
        edx = fmax(edx, harness_max_rel(dx1, dx + b * nr, nr, 1.0));
    }
    for (int i = 0; i < NP; i++) {
        long n = mh_pnumel(&I, i);
        double mx = mh_max_abs(gb[i], n);
        eg = fmax(eg, mh_max_diff(I.gp[i], gb[i], n) / (mx > 0 ? mx : 1));
        free(gb[i]);
    }
    printf("   B=%d batched (threads) vs one sequence at a time: y %.3g, dx %.3g, grads %.3g\n", B,
           ey, edx, eg);
    CHECK_MSG(ey < 1e-5 && edx < 1e-5 && eg < 1e-5, "batched vs serial: y %g dx %g grads %g", ey,
              edx, eg);
    free(x);
    free(dy);
    free(y);
    free(dx);
    free(y1);
    free(dx1);
    free(saved);
    mh_inst_free(&I);
}

/* ---- decode ----------------------------------------------------------------------------------*/

/* A prefill of fewer tokens than d_conv = 4 leaves the conv window zero-padded on the left, the
 * rest holding x_rep of the tokens (in_proj rows Di + (d / N / rep) * N + d % N: Di 32, N 4,
 * rep 2), whatever the state held before. */
static void test_conv_window(void) {
    enum { D = 24, Di = 32, K = 4, MAXC = 40 };
    mh_inst I;
    if (inst_new(&I, D, SMALL_TOML, 12) == 0) {
        mh_init_mamba1(&I, 13, 1.0f);
        hyb_rng r;
        hyb_rng_seed(&r, 6);
        size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
        for (int first = 1; first < K; first++) {
            float *x = mh_randn(&r, (size_t)first * D, 1.0f), *y = malloc((size_t)first * D * 4);
            void *st = malloc(sb);
            memset(st, 0x33, sb);
            CHECK(mh_fwd(&I, 1, first, x, y, NULL, &st, NULL, MAXC) == HYB_OK);
            const float *cs = (const float *)st + Di * 4, *win = I.pp[0];
            double ez = 0, ex = 0;
            for (int d = 0; d < Di; d++)
                for (int k = 0; k < K; k++) {
                    int j = first - K + k; /* token of column k */
                    if (j < 0) {
                        ez = fmax(ez, fabs(cs[d * K + k]));
                        continue;
                    }
                    const float *w = win + (size_t)(Di + (d / 8) * 4 + d % 4) * D;
                    double xr = 0;
                    for (int i = 0; i < D; i++)
                        xr += (double)w[i] * x[(size_t)j * D + i];
                    ex = fmax(ex, fabs(cs[d * K + k] - xr));
                }
            printf("   after %d token(s): padding max |v| %.3g, x_rep max err %.3g\n", first, ez,
                   ex);
            CHECK_MSG(ez == 0 && ex < 1e-5, "conv_state after %d tokens: pad %g, x_rep err %g",
                      first, ez, ex);
            free(x);
            free(y);
            free(st);
        }
    }
    mh_inst_free(&I);
}

/* ---- initialisation --------------------------------------------------------------------------*/

static int check_bounds(const float *p, long n, float a) {
    float lo = 0, hi = 0;
    for (long i = 0; i < n; i++) {
        if (!(fabsf(p[i]) <= a)) return 0;
        lo = p[i] < lo ? p[i] : lo;
        hi = p[i] > hi ? p[i] : hi;
    }
    return lo < -0.8f * a && hi > 0.8f * a; /* spans the interval (n is large) */
}

/* SPEC.md section 4 for the parameters MIL does not copy; `skip_in_proj`: only rows z checked */
static void check_random_init(mh_inst *I, int Di, int Dx, int N, int R, int K, int D,
                              int z_rows_only) {
    const float bD = 1.0f / sqrtf((float)D);
    long inrows = z_rows_only ? Di : 2L * Di + 2L * Dx;
    CHECK_MSG(check_bounds(I->pp[0], inrows * D, bD), "in_proj not U(+-D^-1/2)");
    CHECK_MSG(check_bounds(I->pp[1], (long)R * D, bD), "dt_in_proj not U(+-D^-1/2)");
    CHECK_MSG(check_bounds(I->pp[2], (long)Di * R, 1.0f / sqrtf((float)R)),
              "dt_proj.weight not U(+-R^-1/2)");
    CHECK_MSG(check_bounds(I->pp[4], (long)Di * K, 1.0f / sqrtf((float)K)),
              "conv1d.weight not U(+-K^-1/2)");
    if (!z_rows_only)
        CHECK_MSG(check_bounds(I->pp[8], (long)D * Di, 1.0f / sqrtf((float)Di)),
                  "out_proj not U(+-Di^-1/2)");
    int ok_b = 1, ok_a = 1, ok_d = 1, ok_cb = 1;
    double dtmin = 1, dtmax = 0;
    for (int d = 0; d < Di; d++) {
        double b = I->pp[3][d], dt = log1p(exp(b));
        dtmin = dt < dtmin ? dt : dtmin;
        dtmax = dt > dtmax ? dt : dtmax;
        ok_b &= dt >= 0.999e-3 && dt <= 1.001e-1;
        ok_d &= I->pp[7][d] == 1.0f;
        ok_cb &= I->pp[5][d] == 0.0f;
        for (int n = 0; n < N; n++)
            ok_a &= fabsf(I->pp[6][d * N + n] - logf((float)n + 1)) < 1e-7f;
    }
    CHECK_MSG(ok_b && dtmin < 2e-3 && dtmax > 5e-2, "dt = softplus(dt_proj.bias) in [%g, %g]",
              dtmin, dtmax);
    CHECK_MSG(ok_a, "A_log != log(n + 1)");
    CHECK(ok_d && ok_cb);
    for (int i = 0; i < NP; i++) /* no weight decay on A_log, D, biases */
        CHECK(I->m->decls[i].no_decay == (i == 3 || i == 5 || i == 6 || i == 7));
}

static void test_random_init(void) {
    mh_inst I;
    if (inst_new(&I, 64, "d_inner = 96\nd_xb = 32\nd_state = 16\ndt_rank = 8\nd_conv = 4\n", 77) ==
        0) {
        static const char *names[NP] = {
            "in_proj.weight", "dt_in_proj.weight", "dt_proj.weight", "dt_proj.bias",
            "conv1d.weight",  "conv1d.bias",       "A_log",          "D",
            "out_proj.weight"};
        for (int i = 0; i < NP; i++) {
            CHECK(strcmp(I.m->decls[i].name, names[i]) == 0);
            char full[80];
            snprintf(full, sizeof full, "mixer.%s", names[i]);
            CHECK(strcmp(I.m->params[i]->name, full) == 0);
        }
        const hyb_param_decl *d = I.m->decls;
        CHECK(d[0].ndim == 2 && d[0].shape[0] == 2 * 96 + 2 * 32 && d[0].shape[1] == 64);
        CHECK(d[1].shape[0] == 8 && d[1].shape[1] == 64 && d[2].shape[0] == 96 &&
              d[2].shape[1] == 8);
        CHECK(d[4].ndim == 3 && d[4].shape[0] == 96 && d[4].shape[1] == 1 && d[4].shape[2] == 4);
        CHECK(d[6].shape[0] == 96 && d[6].shape[1] == 16 && d[8].shape[0] == 64 &&
              d[8].shape[1] == 96);
        check_random_init(&I, 96, 32, 16, 8, 4, 64, 0);
        /* fixed-size state: the host's default snapshot (a copy of state_bytes) is exact */
        CHECK(I.m->desc->state_snapshot == NULL && I.m->desc->state_restore == NULL);
        char buf[160];
        I.m->desc->describe(I.m->self, buf, sizeof buf);
        printf("   %s\n", buf);
        CHECK(strstr(buf, "d_inner=96") && strstr(buf, "repeat=3") && strstr(buf, "double"));
    }
    mh_inst_free(&I);
    /* defaults: no table at all */
    hyb_model_dims dims = {.d_model = 48, .n_layers = 2, .layer = 1, .max_seq = 16};
    hyb_mixer *m;
    CHECK_MSG(hyb_mixer_new("mamba1", &dims, NULL, 3, &m) == HYB_OK, "%s", hyb_error());
    if (m) {
        char buf[160];
        m->desc->describe(m->self, buf, sizeof buf);
        CHECK_MSG(strstr(buf, "d_inner=48 d_xb=48 d_state=16 dt_rank=3 d_conv=4") != NULL, "%s",
                  buf);
        hyb_mixer_free(m);
    }
    dims.d_model = 40; /* 40 % 16 != 0: the defaults cannot apply */
    CHECK(hyb_mixer_new("mamba1", &dims, NULL, 3, &m) == HYB_ERR_FORMAT);
    CHECK_MSG(strstr(hyb_error(), "d_inner = 40 must be a multiple of d_state = 16"), "%s",
              hyb_error());
}

static void test_mil_init(void) {
    /* teacher layer: 4 query heads, 2 KV heads, head_dim 8, D = 32 -> Di = 32, Dx = 16 */
    enum { D = 32, Di = 32, Dx = 16, N = 4, R = 4, K = 4 };
    hyb_toml *tdoc = hyb_toml_parse_string(
        "type = \"mha\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\nrope_theta = 10000.0\n",
        "mha.toml");
    hyb_model_dims dims = {.d_model = D, .n_layers = 4, .layer = 2, .max_seq = 32};
    hyb_mixer *att = NULL;
    CHECK_MSG(hyb_mixer_new("mha", &dims, hyb_toml_root(tdoc), 41, &att) == HYB_OK, "%s",
              hyb_error());
    mh_inst I;
    if (!att || inst_new(&I, D, "d_inner = 32\nd_xb = 16\nd_state = 4\ndt_rank = 4\n", 9) != 0) {
        hyb_mixer_free(att);
        hyb_toml_free(tdoc);
        return;
    }
    const float *q = hyb_tensor_f32(att->params[0]), *k = hyb_tensor_f32(att->params[1]),
                *v = hyb_tensor_f32(att->params[2]), *o = hyb_tensor_f32(att->params[3]);
    mh_init_mamba1(&I, 1, 1.0f); /* MIL must overwrite everything */
    CHECK_MSG(hyb_mixer_init_from(I.m, att, hyb_toml_root(tdoc), 123) == HYB_OK, "%s", hyb_error());
    const float *win = I.pp[0];
    const size_t row = D * sizeof(float);
    CHECK_MSG(memcmp(win + (size_t)Di * D, v, Dx * row) == 0, "in_proj x rows != v_proj");
    CHECK_MSG(memcmp(win + (size_t)(Di + Dx) * D, k, Dx * row) == 0, "in_proj B rows != k_proj");
    CHECK_MSG(memcmp(win + (size_t)(Di + 2 * Dx) * D, q, Di * row) == 0,
              "in_proj C rows != q_proj");
    CHECK_MSG(memcmp(I.pp[8], o, (size_t)D * Di * 4) == 0, "out_proj != o_proj");
    check_random_init(&I, Di, Dx, N, R, K, D, 1);
    /* deterministic in the seed, different for another seed (the z rows) */
    float *keep = malloc((size_t)Di * D * 4);
    memcpy(keep, win, (size_t)Di * D * 4);
    CHECK(hyb_mixer_init_from(I.m, att, NULL, 123) == HYB_OK);
    CHECK(memcmp(keep, win, (size_t)Di * D * 4) == 0);
    CHECK(hyb_mixer_init_from(I.m, att, NULL, 124) == HYB_OK);
    CHECK(memcmp(keep, win, (size_t)Di * D * 4) != 0);
    free(keep);
    /* the MIL mixer runs: x rows are the value projection, so with z, dt, conv, A fixed the
     * output is a function of the teacher's weights (sanity: finite, non-zero) */
    {
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
    /* shapes that do not line up: d_xb != n_kv_heads * head_dim */
    if (inst_new(&I, D, "d_inner = 32\nd_xb = 8\nd_state = 4\n", 9) == 0) {
        CHECK(hyb_mixer_init_from(I.m, att, NULL, 1) == HYB_ERR_ARG);
        CHECK_MSG(strstr(hyb_error(), "k_proj.weight is [16, 32], this mixer needs [8, 32]") &&
                      strstr(hyb_error(), "d_xb = n_kv_heads * head_dim"),
                  "%s", hyb_error());
    }
    mh_inst_free(&I);
    if (inst_new(&I, D, "d_inner = 64\nd_xb = 16\nd_state = 4\n", 9) == 0) {
        CHECK(hyb_mixer_init_from(I.m, att, NULL, 1) == HYB_ERR_ARG);
        CHECK_MSG(strstr(hyb_error(), "q_proj.weight is [32, 32], this mixer needs [64, 32]"), "%s",
                  hyb_error());
    }
    /* a source type MIL does not know */
    if (I.m) {
        mh_inst J;
        if (inst_new(&J, D, "d_inner = 32\nd_xb = 16\nd_state = 4\n", 2) == 0) {
            CHECK(hyb_mixer_init_from(I.m, J.m, NULL, 1) == HYB_ERR_UNSUPPORTED);
            CHECK_MSG(strstr(hyb_error(), "cannot initialise from a 'mamba1' mixer"), "%s",
                      hyb_error());
        }
        mh_inst_free(&J);
    }
    mh_inst_free(&I);
    hyb_mixer_free(att);
    hyb_toml_free(tdoc);
}

/* ---- configuration errors --------------------------------------------------------------------*/

static void config_error(const char *body, const char *where, const char *what) {
    char text[512];
    snprintf(text, sizeof text, "type = \"mamba1\"\nsymbol = \"m\"\n%s", body);
    hyb_toml *doc = hyb_toml_parse_string(text, "bad.toml");
    CHECK(doc != NULL);
    if (!doc) return;
    hyb_model_dims dims = {.d_model = 64, .n_layers = 1, .layer = 0, .max_seq = 8};
    hyb_mixer *m = NULL;
    int rc = hyb_mixer_new("mamba1", &dims, hyb_toml_root(doc), 1, &m);
    CHECK_MSG(rc < 0 && m == NULL, "accepted: %s", body);
    const char *e = hyb_error();
    CHECK_MSG(strncmp(e, where, strlen(where)) == 0 && strstr(e, what) != NULL,
              "error for '%s' is '%s' (want %s... %s)", body, e, where, what);
    hyb_mixer_free(m);
    hyb_toml_free(doc);
}

static void test_config_errors(void) {
    config_error("d_inner = 60\n",
                 "bad.toml:3:", "d_inner = 60 must be a multiple of d_state = 16");
    config_error("d_inner = 64\nd_xb = 20\nd_state = 8\n",
                 "bad.toml:4:", "d_xb = 20 must be a multiple of d_state = 8");
    config_error("d_inner = 96\nd_xb = 64\nd_state = 16\n", "bad.toml:4:",
                 "the 6 C heads (d_inner / d_state) must be a multiple of the 4 x/B heads");
    config_error("d_state = 0\n", "bad.toml:3:", "d_state must be in [1,");
    config_error("dt_rank = -3\n", "bad.toml:3:", "dt_rank must be in [1,");
    config_error("d_conv = 0\n", "bad.toml:3:", "d_conv must be in [1,");
    config_error("d_conv = 65\n", "bad.toml:3:", "d_conv must be in [1, 64]");
    config_error("chunk = 0\n", "bad.toml:3:", "chunk must be in [1,");
    config_error("d_inner = \"big\"\n", "bad.toml:3:", "'d_inner' must be an integer");
    config_error("double_dt_bias = 1\n", "bad.toml:3:", "'double_dt_bias' must be a boolean");
    config_error("d_stat = 16\n", "bad.toml:3:", "unknown key 'd_stat'");
    config_error("d_state = 300\nd_inner = 600\n", "bad.toml:3:", "d_state must be in [1, 256]");
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
    hyb_toml *mdoc = hyb_toml_parse_string("type = \"mamba1\"\nsymbol = \"m\"\nd_inner = 32\n"
                                           "d_xb = 16\nd_state = 8\ndt_rank = 4\nchunk = 5\n",
                                           "mamba.toml");
    const float *qk = hyb_tensor_f32(m->layers[1].mixer->params[2]); /* v_proj of layer 1 */
    float *v_keep = malloc(16 * 32 * 4);
    memcpy(v_keep, qk, 16 * 32 * 4);
    CHECK_MSG(hyb_model_swap(m, 1, "mamba1", hyb_toml_root(mdoc), 1, 5) == HYB_OK, "%s",
              hyb_error());
    CHECK(strcmp(m->layers[1].mixer->type, "mamba1") == 0);
    /* MIL through the model: x rows of in_proj are the old v_proj */
    hyb_tensor *win = hyb_model_param(m, "model.layers.1.mixer.in_proj.weight");
    CHECK(win != NULL);
    if (win) CHECK(memcmp(hyb_tensor_f32(win) + 32 * 32, v_keep, 16 * 32 * 4) == 0);
    CHECK(hyb_model_param(m, "model.layers.1.mixer.A_log") != NULL);
    free(v_keep);

    /* prefill + batched decode equals the full forward */
    enum { NS = 3, MAXC = 32 };
    const int len[NS] = {13, 9, 16}, prompt[NS] = {5, 2, 8};
    const int V = m->V;
    int32_t ids[NS][16];
    hyb_rng r;
    hyb_rng_seed(&r, 71);
    for (int s = 0; s < NS; s++)
        for (int t = 0; t < len[s]; t++)
            ids[s][t] = (int32_t)(hyb_rng_next(&r) % (uint64_t)V);
    const int split[NS] = {0, 0, 3}; /* sequence 2: a chunked prefill, 3 then the rest */
    double worst = mh_model_decode_vs_forward(m, NS, &ids[0][0], 16, len, prompt, split, MAXC);
    printf("   hybrid t-m-t: prefill + decode vs forward: max rel err %.3g\n", worst);
    CHECK_MSG(worst < 1e-5, "prefill/decode vs forward: %g", worst);

    /* training: next-token loss on a fixed batch falls */
    enum { B = 2, T = 20 };
    int32_t seq[B * (T + 1)];
    for (int i = 0; i < B * (T + 1); i++)
        seq[i] = (int32_t)(hyb_rng_next(&r) % (uint64_t)V);
    double first = 0, last = 0;
    hyb_tensor *alog = hyb_model_param(m, "model.layers.1.mixer.A_log");
    float alog0 = alog ? hyb_tensor_f32(alog)[5] : 0;
    int ok = mh_model_train(m, seq, B, T, 40, 1e-2f, &first, &last);
    CHECK(ok);
    printf("   hybrid training: loss %.4f -> %.4f after 40 steps\n", first, last);
    CHECK_MSG(last < 0.5 * first, "loss %.4f -> %.4f did not fall clearly", first, last);
    CHECK_MSG(alog && hyb_tensor_f32(alog)[5] != alog0, "the mamba1 layer's A_log did not move");
    hyb_model_free(m);
    hyb_toml_free(mdoc);
}

/* ---- the shipped layer maps ------------------------------------------------------------------*/

/* graphs/<file> loads, its mamba1 layers are exactly `want` (-1 terminated), the plugin accepts
 * its table (create only: no parameter memory), and the shapes line up for MIL with the same
 * file's attention mixer (q/k/v/o declarations of mha against in_proj/out_proj of mamba1). */
static void check_graph(const char *file, const int *want, size_t want_state_floats) {
    char path[4096];
    const char *dd = getenv("HYB_TEST_DATA");
    snprintf(path, sizeof path, "%s/../../graphs/%s", dd ? dd : "tests/data", file);
    hyb_layermap *map = NULL;
    if (hyb_layermap_load(path, &map) != HYB_OK) {
        CHECK_MSG(0, "%s", hyb_error());
        return;
    }
    int is_m[64] = {0}, n_want = 0;
    for (; want[n_want] >= 0; n_want++)
        is_m[want[n_want]] = 1;
    int im = -1, ia = -1, n_m = 0;
    for (int i = 0; i < map->n_mixers; i++) {
        if (!strcmp(map->mixers[i].type, "mamba1")) im = i;
        if (!strcmp(map->mixers[i].type, "mha")) ia = i;
    }
    CHECK(im >= 0 && ia >= 0 && map->n_layers <= 64);
    for (int l = 0; l < map->n_layers && im >= 0; l++) {
        CHECK_MSG((map->layer_mixer[l] == im) == is_m[l], "%s: layer %d", file, l);
        n_m += map->layer_mixer[l] == im;
    }
    CHECK_MSG(n_m == n_want, "%s: %d mamba1 layers, want %d", file, n_m, n_want);
    const hyb_mixer_desc *dm, *da;
    if (im >= 0 && ia >= 0 && hyb_plugin_find("mamba1", &dm) == HYB_OK &&
        hyb_plugin_find("mha", &da) == HYB_OK) {
        hyb_model_dims dims = {.d_model = map->d_model,
                               .n_layers = map->n_layers,
                               .layer = 3,
                               .max_seq = map->max_seq,
                               .norm_eps = (float)map->norm_eps};
        void *sm = NULL, *sa = NULL;
        CHECK_MSG(dm->create(&dims, map->mixers[im].table, &sm) == HYB_OK, "%s", hyb_error());
        CHECK_MSG(da->create(&dims, map->mixers[ia].table, &sa) == HYB_OK, "%s", hyb_error());
        if (sm && sa) {
            char buf[200];
            dm->describe(sm, buf, sizeof buf);
            printf("   %-24s %2d mamba1 layers: %s, state %zu floats\n", file, n_m, buf,
                   dm->state_bytes(sm, map->max_seq) / 4);
            CHECK(dm->state_bytes(sm, map->max_seq) == want_state_floats * 4);
            hyb_param_decl q, k, v, o, win, wout;
            CHECK(da->param_decl(sa, 0, &q) == HYB_OK && da->param_decl(sa, 1, &k) == HYB_OK &&
                  da->param_decl(sa, 2, &v) == HYB_OK && da->param_decl(sa, 3, &o) == HYB_OK);
            CHECK(dm->param_decl(sm, 0, &win) == HYB_OK && dm->param_decl(sm, 8, &wout) == HYB_OK);
            /* in_proj rows = 2 Di + 2 Dx = 2 q rows + 2 kv rows; out_proj = o_proj */
            CHECK_MSG(win.shape[0] == 2 * q.shape[0] + 2 * k.shape[0] && k.shape[0] == v.shape[0],
                      "%s: in_proj rows %lld vs q %lld, k %lld", file, (long long)win.shape[0],
                      (long long)q.shape[0], (long long)k.shape[0]);
            CHECK(wout.shape[0] == o.shape[0] && wout.shape[1] == o.shape[1]);
        }
        if (sm) dm->destroy(sm);
        if (sa) da->destroy(sa);
    }
    hyb_layermap_free(map);
}

static void test_graph_files(void) {
    static const int h1_30[] = {3,  5,  6,  7,  8,  20, 21, 22, 23, 24, 25, 27, 30, 31, 32, 33,
                                35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 49, -1};
    check_graph("apriel-h1-30.toml", h1_30, 81920); /* SPEC.md section 3: 81,920 values */
    static const int h3[] = {5, 15, 25, -1}, h6[] = {2, 7, 12, 17, 22, 27, -1};
    static const int h15[] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, -1};
    const size_t smol = 576 * (16 + 4);
    check_graph("smollm2-135m-h3.toml", h3, smol);
    check_graph("smollm2-135m-h6.toml", h6, smol);
    check_graph("smollm2-135m-h15.toml", h15, smol);
}

/* ---- CUDA (runs where a cuda device opens: a GPU, or HYB_CUDA_EMULATE=1) ----------------------
 * test_mixers compares forward, backward, prefill from pos 0 and decode with the CPU; here what
 * it does not reach: a prefill continued from states (one sequence at pos 3 < d_conv, so the conv
 * window spans the state and the chunk; one back at pos 0 over a used state, which must be
 * ignored), then decode, outputs and the whole states (same layout: byte copies) against the CPU;
 * and the shapes the kernels refuse, with the mixer, the op and the shape named. */

static const hyb_backend *cuda_be(void) {
    const hyb_backend *be = NULL;
    const char *need = getenv("HYB_TEST_REQUIRE_DEVICE");
    if (hyb_backend_open("cuda", &be) != HYB_OK || !be) {
        CHECK_MSG(!need || strcmp(need, "cuda") != 0, "HYB_TEST_REQUIRE_DEVICE=cuda: %s",
                  hyb_error());
        printf("   skipped: no cuda device: %s\n", hyb_error());
        return NULL;
    }
    return be;
}

static void *dput(const hyb_backend *be, const void *h, size_t bytes) {
    void *d = be->alloc(be, bytes ? bytes : 1);
    CHECK(d != NULL);
    if (d && h) CHECK(be->upload(be, d, h, bytes) == HYB_OK);
    if (d && !h) CHECK(be->memset0(be, d, bytes) == HYB_OK);
    return d;
}

static void test_cuda_continue(void) {
    const hyb_backend *be = cuda_be();
    if (!be) return;
    enum { D = 24, B = 2, T1 = 3, T2 = 9, STEPS = 2, MAXC = 40 };
    const char *toml = "d_inner = 32\nd_xb = 16\nd_state = 4\ndt_rank = 4\nd_conv = 4\nchunk = 4\n";
    mh_inst I;
    if (inst_new(&I, D, toml, 21) == 0) {
        mh_init_mamba1(&I, 22, 1.0f);
        const hyb_mixer_kernels *k = &I.m->desc->kernels[HYB_DEV_CUDA];
        CHECK(k->forward && k->backward && k->decode);
        hyb_rng r;
        hyb_rng_seed(&r, 23);
        const size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
        float *x1 = mh_randn(&r, (size_t)B * T1 * D, 1.0f),
              *x2 = mh_randn(&r, (size_t)B * T2 * D, 1.0f),
              *xd = mh_randn(&r, (size_t)STEPS * B * D, 1.0f);
        float *y1 = malloc((size_t)B * T1 * D * 4), *y2 = malloc((size_t)B * T2 * D * 4),
              *yd = malloc((size_t)STEPS * B * D * 4), *h = malloc((size_t)B * T2 * D * 4);
        void *hs[B], *ds[B];
        const float *dp[NP];
        for (int i = 0; i < NP; i++)
            dp[i] = dput(be, I.pp[i], (size_t)mh_pnumel(&I, i) * 4);
        for (int b = 0; b < B; b++) {
            hs[b] = malloc(sb);
            memset(hs[b], 0x55, sb);
            ds[b] = dput(be, hs[b], sb);
        }
        float *dx1 = dput(be, x1, (size_t)B * T1 * D * 4),
              *dx2 = dput(be, x2, (size_t)B * T2 * D * 4),
              *dxd = dput(be, xd, (size_t)STEPS * B * D * 4),
              *dy = dput(be, NULL, (size_t)B * T2 * D * 4);
        const int32_t pos2[B] = {T1, 0};
        /* the CPU */
        CHECK(mh_fwd(&I, B, T1, x1, y1, NULL, hs, NULL, MAXC) == HYB_OK);
        CHECK(mh_fwd(&I, B, T2, x2, y2, NULL, hs, pos2, MAXC) == HYB_OK);
        for (int s = 0; s < STEPS; s++) {
            const int32_t pd[B] = {T1 + T2 + s, T2 + s};
            CHECK(mh_dec(&I, B, xd + (size_t)s * B * D, yd + (size_t)s * B * D, hs, pd, MAXC) ==
                  HYB_OK);
        }
        /* the device */
        hyb_mixer_fwd f1 = {.B = B,
                            .T = T1,
                            .be = be,
                            .x = dx1,
                            .y = dy,
                            .params = dp,
                            .states = ds,
                            .max_ctx = MAXC};
        CHECK_MSG(k->forward(I.m->self, &f1) == HYB_OK, "%s", hyb_error());
        hyb_mixer_fwd f2 = {.B = B,
                            .T = T2,
                            .be = be,
                            .x = dx2,
                            .y = dy,
                            .params = dp,
                            .states = ds,
                            .pos = pos2,
                            .max_ctx = MAXC};
        CHECK_MSG(k->forward(I.m->self, &f2) == HYB_OK, "%s", hyb_error());
        CHECK(be->download(be, h, dy, (size_t)B * T2 * D * 4) == HYB_OK);
        mh_compare("continued prefill y on cuda", h, y2, (long)B * T2 * D, (mh_tol){.rel1 = 1e-5});
        for (int s = 0; s < STEPS; s++) {
            const int32_t pd[B] = {T1 + T2 + s, T2 + s};
            hyb_mixer_dec da = {.n = B,
                                .be = be,
                                .x = dxd + (size_t)s * B * D,
                                .y = dy,
                                .params = dp,
                                .states = ds,
                                .pos = pd,
                                .max_ctx = MAXC};
            CHECK_MSG(k->decode(I.m->self, &da) == HYB_OK, "%s", hyb_error());
            CHECK(be->download(be, h, dy, (size_t)B * D * 4) == HYB_OK);
            mh_compare("decode y on cuda", h, yd + (size_t)s * B * D, (long)B * D,
                       (mh_tol){.rel1 = 1e-5});
        }
        float *st = malloc(sb);
        for (int b = 0; b < B; b++) {
            CHECK(be->download(be, st, ds[b], sb) == HYB_OK);
            mh_compare("state (ssm, conv window) on cuda", st, hs[b], (long)(sb / 4),
                       (mh_tol){.rel1 = 1e-5});
            free(hs[b]);
            be->free(be, ds[b]);
        }
        for (int i = 0; i < NP; i++)
            be->free(be, (void *)dp[i]);
        be->free(be, dx1), be->free(be, dx2), be->free(be, dxd), be->free(be, dy);
        free(st), free(x1), free(x2), free(xd), free(y1), free(y2), free(yd), free(h);
    }
    mh_inst_free(&I);
}

/* Training forward + backward on cuda against the CPU over many chunks (chunk 3, T = 23: eight
 * chunks, the last partial; test_mixers' lengths cross at most one chunk boundary), repeat 3 and
 * the single dt bias: y, dx and every parameter gradient. */
static void test_cuda_train(void) {
    const hyb_backend *be = cuda_be();
    if (!be) return;
    enum { D = 12, B = 2, T = 23 };
    const char *toml = "d_inner = 18\nd_xb = 6\nd_state = 3\ndt_rank = 3\nd_conv = 3\nchunk = 3\n"
                       "double_dt_bias = false\n";
    mh_inst I;
    if (inst_new(&I, D, toml, 41) == 0) {
        mh_init_mamba1(&I, 42, 1.0f);
        const hyb_mixer_kernels *k = &I.m->desc->kernels[HYB_DEV_CUDA];
        hyb_rng r;
        hyb_rng_seed(&r, 43);
        const size_t nx = (size_t)B * T * D;
        float *x = mh_randn(&r, nx, 1.0f), *dy = mh_randn(&r, nx, 1.0f);
        float *y0 = malloc(nx * 4), *dx0 = malloc(nx * 4), *h = malloc(nx * 4);
        void *saved = mh_saved_new(&I, B, T);
        mh_zero_grads(&I);
        CHECK(mh_fwd(&I, B, T, x, y0, saved, NULL, NULL, 0) == HYB_OK);
        CHECK(mh_bwd(&I, B, T, x, dy, dx0, saved) == HYB_OK);
        const float *dp[NP];
        float *dg[NP];
        for (int i = 0; i < NP; i++) {
            dp[i] = dput(be, I.pp[i], (size_t)mh_pnumel(&I, i) * 4);
            dg[i] = dput(be, NULL, (size_t)mh_pnumel(&I, i) * 4);
        }
        float *dx_ = dput(be, x, nx * 4), *ddy = dput(be, dy, nx * 4),
              *dyo = dput(be, NULL, nx * 4), *ddx = dput(be, NULL, nx * 4);
        void *dsaved = dput(be, NULL, I.m->desc->saved_bytes(I.m->self, B, T));
        hyb_mixer_fwd f = {
            .B = B, .T = T, .be = be, .x = dx_, .y = dyo, .params = dp, .saved = dsaved};
        CHECK_MSG(k->forward(I.m->self, &f) == HYB_OK, "%s", hyb_error());
        CHECK(be->download(be, h, dyo, nx * 4) == HYB_OK);
        mh_compare("8-chunk forward y on cuda", h, y0, (long)nx, (mh_tol){.rel1 = 1e-5});
        hyb_mixer_bwd bw = {.B = B,
                            .T = T,
                            .be = be,
                            .x = dx_,
                            .dy = ddy,
                            .dx = ddx,
                            .params = dp,
                            .grads = dg,
                            .saved = dsaved};
        CHECK_MSG(k->backward(I.m->self, &bw) == HYB_OK, "%s", hyb_error());
        CHECK(be->download(be, h, ddx, nx * 4) == HYB_OK);
        mh_compare("8-chunk backward dx on cuda", h, dx0, (long)nx, (mh_tol){.rel1 = 1e-5});
        for (int i = 0; i < NP; i++) {
            const long n = mh_pnumel(&I, i);
            float *g = malloc((size_t)n * 4);
            CHECK(be->download(be, g, dg[i], (size_t)n * 4) == HYB_OK);
            char what[96];
            snprintf(what, sizeof what, "d%s on cuda", I.m->decls[i].name);
            mh_compare(what, g, I.gp[i], n, (mh_tol){.relmax = 1e-5});
            free(g);
            be->free(be, (void *)dp[i]);
            be->free(be, dg[i]);
        }
        be->free(be, dx_), be->free(be, ddy), be->free(be, dyo), be->free(be, ddx);
        be->free(be, dsaved);
        free(x), free(dy), free(y0), free(dx0), free(h), free(saved);
    }
    mh_inst_free(&I);
}

/* A decode step of more sequences than one launch of the decode kernel takes (64): 67 sequences,
 * every third at pos 0 over a used state, the others continuing, on cuda vs the CPU. */
static void test_cuda_decode_many(void) {
    const hyb_backend *be = cuda_be();
    if (!be) return;
    enum { D = 8, NSEQ = 67, MAXC = 16 };
    mh_inst I;
    if (inst_new(&I, D, "d_inner = 8\nd_xb = 4\nd_state = 2\ndt_rank = 2\nd_conv = 3\n", 51) == 0) {
        mh_init_mamba1(&I, 52, 1.0f);
        const hyb_mixer_kernels *k = &I.m->desc->kernels[HYB_DEV_CUDA];
        hyb_rng r;
        hyb_rng_seed(&r, 53);
        const size_t sb = hyb_mixer_state_bytes(I.m, MAXC);
        float *st0 = mh_randn(&r, sb / 4 * NSEQ, 1.0f), *x = mh_randn(&r, (size_t)NSEQ * D, 1.0f);
        float *y0 = malloc((size_t)NSEQ * D * 4), *y1 = malloc((size_t)NSEQ * D * 4),
              *h = malloc(sb);
        void *hs[NSEQ], *ds[NSEQ];
        int32_t pos[NSEQ];
        const float *dp[NP];
        for (int i = 0; i < NP; i++)
            dp[i] = dput(be, I.pp[i], (size_t)mh_pnumel(&I, i) * 4);
        for (int i = 0; i < NSEQ; i++) {
            hs[i] = malloc(sb);
            memcpy(hs[i], st0 + sb / 4 * i, sb);
            ds[i] = dput(be, hs[i], sb);
            pos[i] = i % 3 == 0 ? 0 : 1 + i % 7;
        }
        float *dx = dput(be, x, (size_t)NSEQ * D * 4), *dy = dput(be, NULL, (size_t)NSEQ * D * 4);
        CHECK(mh_dec(&I, NSEQ, x, y0, hs, pos, MAXC) == HYB_OK);
        hyb_mixer_dec da = {.n = NSEQ,
                            .be = be,
                            .x = dx,
                            .y = dy,
                            .params = dp,
                            .states = ds,
                            .pos = pos,
                            .max_ctx = MAXC};
        CHECK_MSG(k->decode(I.m->self, &da) == HYB_OK, "%s", hyb_error());
        CHECK(be->download(be, y1, dy, (size_t)NSEQ * D * 4) == HYB_OK);
        mh_compare("decode of 67 sequences on cuda", y1, y0, (long)NSEQ * D,
                   (mh_tol){.rel1 = 1e-5});
        double es = 0;
        for (int i = 0; i < NSEQ; i++) {
            CHECK(be->download(be, h, ds[i], sb) == HYB_OK);
            es = fmax(es, harness_max_rel(h, hs[i], (int64_t)(sb / 4), 1.0));
            free(hs[i]);
            be->free(be, ds[i]);
        }
        printf("   their states: max rel err %.3g\n", es);
        CHECK(es < 1e-5);
        for (int i = 0; i < NP; i++)
            be->free(be, (void *)dp[i]);
        be->free(be, dx), be->free(be, dy);
        free(st0), free(x), free(y0), free(y1), free(h);
    }
    mh_inst_free(&I);
}

/* The saved block and the decode state are the same bytes on both devices: a CPU forward's saved
 * block and a CPU prefill's states, uploaded as they are, drive the CUDA backward and decode to the
 * CPU's results (and a CUDA state downloaded drives the CPU decode). */
static void test_cuda_layouts(void) {
    const hyb_backend *be = cuda_be();
    if (!be) return;
    enum { D = 12, B = 2, T = 10, MAXC = 16 };
    const char *toml = "d_inner = 16\nd_xb = 8\nd_state = 4\ndt_rank = 2\nd_conv = 3\nchunk = 4\n";
    mh_inst I;
    if (inst_new(&I, D, toml, 61) == 0) {
        mh_init_mamba1(&I, 62, 1.0f);
        const hyb_mixer_kernels *k = &I.m->desc->kernels[HYB_DEV_CUDA];
        hyb_rng r;
        hyb_rng_seed(&r, 63);
        const size_t nx = (size_t)B * T * D, sb = hyb_mixer_state_bytes(I.m, MAXC),
                     svb = I.m->desc->saved_bytes(I.m->self, B, T);
        float *x = mh_randn(&r, nx, 1.0f), *dy = mh_randn(&r, nx, 1.0f),
              *xd = mh_randn(&r, (size_t)B * D, 1.0f);
        float *y = malloc(nx * 4), *dx0 = malloc(nx * 4), *h = malloc(nx * 4),
              *yd0 = malloc((size_t)B * D * 4);
        void *saved = mh_saved_new(&I, B, T), *hs[B], *ds[B];
        mh_zero_grads(&I);
        CHECK(mh_fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK);
        CHECK(mh_bwd(&I, B, T, x, dy, dx0, saved) == HYB_OK);
        const float *dp[NP];
        float *dg[NP];
        for (int i = 0; i < NP; i++) {
            dp[i] = dput(be, I.pp[i], (size_t)mh_pnumel(&I, i) * 4);
            dg[i] = dput(be, NULL, (size_t)mh_pnumel(&I, i) * 4);
        }
        for (int b = 0; b < B; b++) {
            hs[b] = malloc(sb);
            memset(hs[b], 0, sb);
        }
        CHECK(mh_fwd(&I, B, T, x, y, NULL, hs, NULL, MAXC) == HYB_OK);
        for (int b = 0; b < B; b++)
            ds[b] = dput(be, hs[b], sb); /* the CPU's states, as bytes */
        const int32_t pos[B] = {T, T};
        CHECK(mh_dec(&I, B, xd, yd0, hs, pos, MAXC) == HYB_OK);
        float *dx_ = dput(be, x, nx * 4), *ddy = dput(be, dy, nx * 4),
              *ddx = dput(be, NULL, nx * 4), *dxd = dput(be, xd, (size_t)B * D * 4),
              *dyd = dput(be, NULL, (size_t)B * D * 4);
        void *dsaved = dput(be, saved, svb); /* the CPU's saved block, as bytes */
        hyb_mixer_bwd bw = {.B = B,
                            .T = T,
                            .be = be,
                            .x = dx_,
                            .dy = ddy,
                            .dx = ddx,
                            .params = dp,
                            .grads = dg,
                            .saved = dsaved};
        CHECK_MSG(k->backward(I.m->self, &bw) == HYB_OK, "%s", hyb_error());
        CHECK(be->download(be, h, ddx, nx * 4) == HYB_OK);
        mh_compare("cuda backward from the CPU's saved block: dx", h, dx0, (long)nx,
                   (mh_tol){.rel1 = 1e-5});
        float *g = malloc((size_t)mh_pnumel(&I, 0) * 4);
        CHECK(be->download(be, g, dg[0], (size_t)mh_pnumel(&I, 0) * 4) == HYB_OK);
        mh_compare("  and din_proj.weight", g, I.gp[0], mh_pnumel(&I, 0), (mh_tol){.relmax = 1e-5});
        hyb_mixer_dec da = {.n = B,
                            .be = be,
                            .x = dxd,
                            .y = dyd,
                            .params = dp,
                            .states = ds,
                            .pos = pos,
                            .max_ctx = MAXC};
        CHECK_MSG(k->decode(I.m->self, &da) == HYB_OK, "%s", hyb_error());
        CHECK(be->download(be, h, dyd, (size_t)B * D * 4) == HYB_OK);
        mh_compare("cuda decode from the CPU's states: y", h, yd0, (long)B * D,
                   (mh_tol){.rel1 = 1e-5});
        /* and back: the CUDA states, downloaded, continue on the CPU as the CPU's own */
        float *yc = malloc((size_t)B * D * 4), *yg = malloc((size_t)B * D * 4);
        void *hc[B];
        const int32_t pos2[B] = {T + 1, T + 1};
        for (int b = 0; b < B; b++) {
            hc[b] = malloc(sb);
            CHECK(be->download(be, hc[b], ds[b], sb) == HYB_OK);
        }
        CHECK(mh_dec(&I, B, xd, yc, hc, pos2, MAXC) == HYB_OK);
        CHECK(mh_dec(&I, B, xd, yg, hs, pos2, MAXC) == HYB_OK);
        mh_compare("CPU decode from the cuda states: y", yc, yg, (long)B * D,
                   (mh_tol){.rel1 = 1e-5});
        for (int b = 0; b < B; b++) {
            free(hs[b]);
            free(hc[b]);
            be->free(be, ds[b]);
        }
        for (int i = 0; i < NP; i++) {
            be->free(be, (void *)dp[i]);
            be->free(be, dg[i]);
        }
        be->free(be, dx_), be->free(be, ddy), be->free(be, ddx), be->free(be, dxd);
        be->free(be, dyd), be->free(be, dsaved);
        free(x), free(dy), free(xd), free(y), free(dx0), free(h), free(yd0), free(g), free(yc);
        free(yg), free(saved);
    }
    mh_inst_free(&I);
}

/* d_state past the registers' limit (forward and decode), and a backward whose x/B group does not
 * fit one block's shared memory: HYB_ERR_UNSUPPORTED naming mamba1, the layer, the op, the shape */
static void cuda_refused(const char *toml, int want_fwd_ok, const char *op, const char *shape) {
    const hyb_backend *be = cuda_be();
    if (!be) return;
    enum { D = 8, T = 3, MAXC = 8 };
    mh_inst I;
    if (inst_new(&I, D, toml, 31) != 0) {
        mh_inst_free(&I);
        return;
    }
    const hyb_mixer_kernels *k = &I.m->desc->kernels[HYB_DEV_CUDA];
    const float *dp[NP];
    float *g[NP];
    for (int i = 0; i < NP; i++) {
        dp[i] = dput(be, I.pp[i], (size_t)mh_pnumel(&I, i) * 4);
        g[i] = dput(be, NULL, (size_t)mh_pnumel(&I, i) * 4);
    }
    float *x = dput(be, NULL, (size_t)T * D * 4), *y = dput(be, NULL, (size_t)T * D * 4),
          *dx = dput(be, NULL, (size_t)T * D * 4);
    const size_t svb = I.m->desc->saved_bytes(I.m->self, 1, T),
                 sb = hyb_mixer_state_bytes(I.m, MAXC);
    void *saved = dput(be, NULL, svb), *st = dput(be, NULL, sb);
    hyb_mixer_fwd f = {.B = 1, .T = T, .be = be, .x = x, .y = y, .params = dp, .saved = saved};
    int rc = k->forward(I.m->self, &f);
    char want[3][96];
    snprintf(want[0], sizeof want[0], "mamba1 (layer 0)");
    snprintf(want[1], sizeof want[1], "cuda %s", op);
    snprintf(want[2], sizeof want[2], "%s", shape);
    if (want_fwd_ok) {
        CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
        hyb_mixer_bwd a = {.B = 1,
                           .T = T,
                           .be = be,
                           .x = x,
                           .dy = y,
                           .dx = dx,
                           .params = dp,
                           .grads = g,
                           .saved = saved};
        rc = k->backward(I.m->self, &a);
    } else {
        const char *e = hyb_error();
        printf("   %s\n", e);
        CHECK_MSG(rc == HYB_ERR_UNSUPPORTED && strstr(e, want[0]) && strstr(e, want[1]) &&
                      strstr(e, want[2]),
                  "rc %d, '%s'", rc, e);
        want_fwd_ok = -1; /* checked */
        int32_t pos = 0;
        hyb_mixer_dec da = {.n = 1,
                            .be = be,
                            .x = x,
                            .y = y,
                            .params = dp,
                            .states = &st,
                            .pos = &pos,
                            .max_ctx = MAXC};
        int rd = k->decode(I.m->self, &da);
        CHECK_MSG(rd == HYB_ERR_UNSUPPORTED && strstr(hyb_error(), "cuda decode"), "decode: %d %s",
                  rd, hyb_error());
    }
    if (want_fwd_ok == 1) {
        const char *e = hyb_error();
        printf("   %s\n", e);
        CHECK_MSG(rc == HYB_ERR_UNSUPPORTED && strstr(e, want[0]) && strstr(e, want[1]) &&
                      strstr(e, want[2]),
                  "rc %d, '%s'", rc, e);
    }
    for (int i = 0; i < NP; i++)
        be->free(be, (void *)dp[i]), be->free(be, g[i]);
    be->free(be, x), be->free(be, y), be->free(be, dx), be->free(be, saved), be->free(be, st);
    mh_inst_free(&I);
}

static void test_cuda_refused(void) {
    cuda_refused("d_inner = 100\nd_xb = 100\nd_state = 100\ndt_rank = 2\n", 0, "forward",
                 "d_state = 100");
    cuda_refused("d_inner = 128\nd_xb = 64\nd_state = 64\ndt_rank = 2\n", 1, "backward",
                 "x/B group of 128 channels");
}

int main(void) {
    if (mh_require("mamba1", "mha", NULL)) return 1;
    RUN(test_chunk_sizes);
    RUN(test_parallel_vs_serial);
    RUN(test_conv_window);
    RUN(test_random_init);
    RUN(test_mil_init);
    RUN(test_config_errors);
    RUN(test_model_hybrid);
    RUN(test_graph_files);
    RUN(test_cuda_continue);
    RUN(test_cuda_train);
    RUN(test_cuda_decode_many);
    RUN(test_cuda_layouts);
    RUN(test_cuda_refused);
    return harness_done();
}
