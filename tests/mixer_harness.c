/* tests/mixer_harness.c: the shared mixer checks (mixer_harness.h). */
#include "mixer_harness.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- instances --------------------------------------------------------------------------------
 */

/* free a[0..n-1], then a */
static void free_arrays(void *a, int n) {
    void **p = a;
    for (int i = 0; p && i < n; i++)
        free(p[i]);
    free(p);
}

int mh_require(const char *type, ...) {
    va_list ap;
    int rc = 0;
    va_start(ap, type);
    for (const char *t = type; t && !rc; t = va_arg(ap, const char *)) {
        const hyb_mixer_desc *d;
        if (hyb_plugin_find(t, &d) != HYB_OK) {
            fprintf(stderr, "%s\n", hyb_error());
            rc = -1;
        }
    }
    va_end(ap);
    return rc;
}

int mh_inst_new_ex(mh_inst *I, const char *type, int D, const char *toml, uint64_t seed,
                   int layer, int n_layers) {
    memset(I, 0, sizeof *I);
    I->D = D;
    if (toml) {
        I->doc = hyb_toml_parse_string(toml, "test.toml");
        CHECK_MSG(I->doc != NULL, "toml: %s", hyb_error());
        if (!I->doc) return -1;
    }
    hyb_model_dims dims = {
        .d_model = D, .n_layers = n_layers, .layer = layer, .max_seq = 64, .norm_eps = 1e-5f};
    int rc = hyb_mixer_new(type, &dims, I->doc ? hyb_toml_root(I->doc) : NULL, seed, &I->m);
    CHECK_MSG(rc == HYB_OK, "hyb_mixer_new(%s): %s", type, hyb_error());
    if (rc != HYB_OK) return -1;
    const int np = I->m->n_params;
    I->pp = calloc((size_t)(np ? np : 1), sizeof *I->pp);
    I->gp = calloc((size_t)(np ? np : 1), sizeof *I->gp);
    for (int i = 0; i < np; i++) {
        I->pp[i] = hyb_tensor_f32(I->m->params[i]);
        I->gp[i] = hyb_tensor_f32(I->m->params[i]->grad);
    }
    return 0;
}

int mh_inst_new(mh_inst *I, const char *type, int D, const char *toml, uint64_t seed) {
    return mh_inst_new_ex(I, type, D, toml, seed, 0, 1);
}

void mh_inst_free(mh_inst *I) {
    hyb_mixer_free(I->m);
    hyb_toml_free(I->doc);
    free(I->pp);
    free(I->gp);
    memset(I, 0, sizeof *I);
}

long mh_pnumel(const mh_inst *I, int i) {
    return (long)hyb_tensor_numel(I->m->params[i]);
}

void mh_zero_grads(mh_inst *I) {
    for (int i = 0; i < I->m->n_params; i++)
        memset(I->gp[i], 0, (size_t)mh_pnumel(I, i) * sizeof(float));
}

void *mh_saved_new(mh_inst *I, int B, int T) {
    size_t n = I->m->desc->saved_bytes(I->m->self, B, T);
    return malloc(n ? n : 1);
}

int mh_fwd_on(const hyb_mixer *m, const hyb_backend *be, const float *const *params, int B, int T,
              const float *x, float *y, void *saved, void *const *states, const int32_t *pos,
              int max_ctx) {
    hyb_mixer_fwd a = {.B = B,
                       .T = T,
                       .be = be,
                       .x = x,
                       .y = y,
                       .params = params,
                       .saved = saved,
                       .states = states,
                       .pos = pos,
                       .max_ctx = max_ctx,
                       .kv = mh_kv};
    return m->desc->kernels[HYB_DEV_CPU].forward(m->self, &a);
}

int mh_bwd_on(const hyb_mixer *m, const hyb_backend *be, const float *const *params,
              float *const *grads, int B, int T, const float *x, const float *dy, float *dx,
              const void *saved) {
    hyb_mixer_bwd a = {.B = B,
                       .T = T,
                       .be = be,
                       .x = x,
                       .dy = dy,
                       .dx = dx,
                       .params = params,
                       .grads = grads,
                       .saved = saved};
    const hyb_mixer_kernels *k = &m->desc->kernels[HYB_DEV_CPU];
    if (!k->backward) return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: no CPU backward", m->type);
    return k->backward(m->self, &a);
}

int mh_dec_on(const hyb_mixer *m, const hyb_backend *be, const float *const *params, int n,
              const float *x, float *y, void *const *states, const int32_t *pos, int max_ctx) {
    hyb_mixer_dec a = {.n = n,
                       .be = be,
                       .x = x,
                       .y = y,
                       .params = params,
                       .states = states,
                       .pos = pos,
                       .max_ctx = max_ctx,
                       .kv = mh_kv};
    return m->desc->kernels[HYB_DEV_CPU].decode(m->self, &a);
}

int mh_fwd(mh_inst *I, int B, int T, const float *x, float *y, void *saved, void *const *states,
           const int32_t *pos, int max_ctx) {
    return mh_fwd_on(I->m, hyb_backend_cpu(), I->pp, B, T, x, y, saved, states, pos, max_ctx);
}

int mh_bwd(mh_inst *I, int B, int T, const float *x, const float *dy, float *dx,
           const void *saved) {
    return mh_bwd_on(I->m, hyb_backend_cpu(), I->pp, I->gp, B, T, x, dy, dx, saved);
}

int mh_dec(mh_inst *I, int n, const float *x, float *y, void *const *states, const int32_t *pos,
           int max_ctx) {
    return hyb_mixer_decode_kv(I->m, x, y, n, states, pos, max_ctx, mh_kv);
}

int mh_kv = HYB_KV_F32;

/* ---- parameter initialisers -------------------------------------------------------------------
 */

void mh_init_normal(mh_inst *I, uint64_t seed, float scale) {
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    for (int i = 0; i < I->m->n_params; i++)
        hyb_rng_fill_normal(&r, (float *)I->pp[i], mh_pnumel(I, i), 0.0f, scale);
}

void mh_init_deltanet(mh_inst *I, uint64_t seed, float scale) {
    mh_init_normal(I, seed, scale);
    for (int i = 0; i < I->m->n_params; i++) {
        const char *nm = I->m->decls[i].name;
        float *p = (float *)I->pp[i], add = !strcmp(nm, "o_norm.weight") ? 1.0f
                                            : !strcmp(nm, "dt_bias")     ? -1.0f
                                                                         : 0.0f;
        for (long j = 0; add != 0 && j < mh_pnumel(I, i); j++)
            p[j] += add;
    }
}

/* A_log around log(n+1), D around 1, dt bias giving dt in ~[0.05, 1], conv bias non-zero. */
void mh_init_mamba1(mh_inst *I, uint64_t seed, float scale) {
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    const hyb_param_decl *d = I->m->decls;
    for (int i = 0; i < I->m->n_params; i++) {
        float *p = (float *)I->pp[i];
        long n = mh_pnumel(I, i);
        if (!strcmp(d[i].name, "A_log")) {
            int N = (int)d[i].shape[1];
            hyb_rng_fill_normal(&r, p, n, 0.0f, 0.3f);
            for (long k = 0; k < n; k++)
                p[k] += logf((float)(k % N) + 1.0f);
        } else if (!strcmp(d[i].name, "D")) {
            hyb_rng_fill_normal(&r, p, n, 1.0f, 0.5f);
        } else if (!strcmp(d[i].name, "dt_proj.bias")) {
            hyb_rng_fill_uniform(&r, p, n, -2.5f, 0.0f);
        } else if (!strcmp(d[i].name, "conv1d.bias")) {
            hyb_rng_fill_normal(&r, p, n, 0.0f, 0.3f);
        } else {
            hyb_rng_fill_normal(&r, p, n, 0.0f, scale / sqrtf((float)d[i].shape[d[i].ndim - 1]));
        }
    }
}

void mh_init_perturb(mh_inst *I, uint64_t seed, float scale) {
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    for (int i = 0; i < I->m->n_params; i++) {
        long n = mh_pnumel(I, i);
        float *p = (float *)I->pp[i], *e = mh_randn(&r, (size_t)n, scale);
        for (long j = 0; j < n; j++)
            p[j] += e[j];
        free(e);
    }
}

mh_init_fn mh_init_for(const char *type) {
    if (!strcmp(type, "mha")) return mh_init_normal;
    if (!strcmp(type, "mamba1")) return mh_init_mamba1;
    if (!strcmp(type, "deltanet") || !strcmp(type, "gated_deltanet")) return mh_init_deltanet;
    return mh_init_perturb;
}

/* ---- numbers ----------------------------------------------------------------------------------
 */

float *mh_randn(hyb_rng *r, size_t n, float s) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    hyb_rng_fill_normal(r, p, (int64_t)n, 0.0f, s);
    return p;
}

void mh_free(int n, ...) {
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        free(va_arg(ap, void *));
    va_end(ap);
}

double mh_max_abs(const float *a, long n) {
    double m = 0;
    for (long i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

double mh_max_diff(const float *a, const float *b, long n) {
    double m = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d != d) return INFINITY;
        m = d > m ? d : m;
    }
    return m;
}

double mh_allclose_ratio(const float *a, const float *b, long n, double rtol, double atol) {
    double w = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / (atol + rtol * fabs((double)b[i]));
        if (d != d) return INFINITY;
        w = d > w ? d : w;
    }
    return w;
}

static int compare(const char *what, const float *a, const float *b, long n, mh_tol t, int print) {
    char line[512];
    int used = snprintf(line, sizeof line, "   %-22s", what), ok = 1;
    const double md = mh_max_diff(a, b, n), mb = mh_max_abs(b, n);
#define MH_ONE(on, val, bound, name)                                                               \
    if (on) {                                                                                      \
        double v_ = (val);                                                                         \
        int ok_ = v_ < (bound);                                                                    \
        ok &= ok_;                                                                                 \
        used += snprintf(line + used, sizeof line - (size_t)used, " %s %.3g%s", name, v_,          \
                         ok_ ? "" : " (TOO LARGE)");                                               \
        if (!ok_)                                                                                  \
            harness_fail(__FILE__, __LINE__, "%s: %s %g, bound %g", what, name, v_,                \
                         (double)(bound));                                                         \
    }
    MH_ONE(t.rel1 > 0, harness_max_rel(a, b, n, 1.0), t.rel1, "max rel");
    MH_ONE(t.relmax > 0, mb > 0 ? md / mb : md, t.relmax, "max err/max|ref|");
    MH_ONE(t.relrms > 0, harness_rel_rms(a, b, n), t.relrms, "rel rms");
    MH_ONE(t.rtol > 0 || t.atol > 0, mh_allclose_ratio(a, b, n, t.rtol, t.atol) / 1.0000001,
           1.0000001, "allclose ratio");
    MH_ONE(t.abs > 0, md, t.abs, "max abs err");
    MH_ONE(t.abs1 > 0, md / (1 + mb), t.abs1, "max err/(1+max|ref|)");
#undef MH_ONE
    if (print || !ok) printf("%s (max|ref| %.3g)\n", line, mb);
    return ok;
}

int mh_compare(const char *what, const float *a, const float *b, long n, mh_tol tol) {
    return compare(what, a, b, n, tol, 1);
}

static const char *data_path(const char *file, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", harness_data_dir(), file);
    return buf;
}


double mh_model_decode_vs_forward(hyb_model *m, int ns, const int32_t *ids, int stride,
                                  const int *len, const int *prompt, const int *split, int max_ctx) {
    const int V = m->V;
    float **full = calloc((size_t)ns, sizeof *full), *lg = malloc((size_t)ns * V * 4);
    int32_t *seqs = calloc((size_t)ns, 4), *tok = calloc((size_t)ns, 4);
    int *at = calloc((size_t)ns, sizeof *at), *who = calloc((size_t)ns, sizeof *who), ok = 1;
    for (int s = 0; s < ns; s++)
        ok &= (full[s] = harness_logits(m, ids + (size_t)s * stride, 1, len[s])) != NULL;
    hyb_kvstate *kv = NULL;
    /* an f32 KV cache: decode == forward to f32 rounding (the compressed types have their own
     * bounds: mh_check_decode, model_kvcache) */
    CHECK_MSG(hyb_kvstate_new_ex(m, ns, max_ctx, HYB_KV_F32, &kv) == HYB_OK, "%s", hyb_error());
    double worst = ok && kv ? 0 : INFINITY;
    for (int s = 0; s < ns && kv && ok; s++) {
        const int32_t *id = ids + (size_t)s * stride;
        int k = split && split[s] > 0 ? split[s] : 0;
        if (k) { /* a chunked prefill: k tokens, then the rest of the prompt */
            CHECK_MSG(hyb_model_prefill(m, kv, s, id, k, lg) == HYB_OK, "%s", hyb_error());
            worst = fmax(worst, harness_max_rel(lg, full[s] + (size_t)(k - 1) * V, V, 1.0));
        }
        CHECK_MSG(hyb_model_prefill(m, kv, s, id + k, prompt[s] - k, lg) == HYB_OK, "%s",
                  hyb_error());
        worst = fmax(worst, harness_max_rel(lg, full[s] + (size_t)(prompt[s] - 1) * V, V, 1.0));
        at[s] = prompt[s];
    }
    for (int n = 1; kv && ok && n;) {
        n = 0;
        for (int s = 0; s < ns; s++)
            if (at[s] < len[s]) {
                who[n] = s;
                seqs[n] = s;
                tok[n++] = ids[(size_t)s * stride + at[s]];
            }
        if (!n) break;
        int rc = hyb_model_decode(m, kv, n, seqs, tok, lg);
        CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
        if (rc != HYB_OK) return INFINITY;
        for (int i = 0; i < n; i++) {
            int s = who[i];
            worst = fmax(worst, harness_max_rel(lg + (size_t)i * V, full[s] + (size_t)at[s] * V,
                                                V, 1.0));
            at[s]++;
        }
    }
    hyb_kvstate_free(kv);
    free_arrays(full, ns);
    free(lg);
    free(seqs);
    free(tok);
    free(at);
    free(who);
    return worst;
}

int mh_model_train(hyb_model *m, const int32_t *seq, int B, int T, int steps, float lr,
                   double *first, double *last) {
    int32_t *in = malloc(sizeof(int32_t) * (size_t)B * T), *tg = malloc(sizeof(int32_t) * (size_t)B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            in[b * T + t] = seq[b * (T + 1) + t];
            tg[b * T + t] = seq[b * (T + 1) + t + 1];
        }
    hyb_adamw *o = NULL;
    CHECK_MSG(hyb_adamw_new_model(m, lr, 0.01f, &o) == HYB_OK, "%s", hyb_error());
    hyb_graph *g = hyb_graph_new();
    int ok = o != NULL;
    for (int step = 0; step < steps && ok; step++) {
        hyb_graph_reset(g);
        hyb_model_zero_grad(m);
        hyb_tensor *lg = hyb_model_forward(m, g, in, B, T);
        hyb_tensor *L = lg ? hyb_cross_entropy(g, lg, tg, NULL) : NULL;
        if (!L) {
            CHECK_MSG(0, "step %d: %s", step, hyb_error());
            ok = 0;
            break;
        }
        double l = hyb_tensor_f32(L)[0];
        if (step == 0) *first = l;
        *last = l;
        ok &= hyb_graph_backward(g, L, 1.0f) == HYB_OK;
        int n;
        hyb_tensor **ps = hyb_model_params(m, &n);
        hyb_grad_clip(ps, n, 1.0f);
        ok &= hyb_adamw_step(o) == HYB_OK;
    }
    hyb_graph_free(g);
    hyb_adamw_free(o);
    free(in);
    free(tg);
    return ok;
}

/* ---- 1. the reference -------------------------------------------------------------------------
 */

void mh_check_ref(const char *type, const char *file, mh_ref_loader load, int arg) {
    char path[4096];
    FILE *f = fopen(data_path(file, path, sizeof path), "rb");
    CHECK_MSG(f != NULL, "cannot open %s (written by tests/reference/%s_ref.py)", path, type);
    if (!f) return;
    mh_ref r;
    memset(&r, 0, sizeof r);
    mh_inst I;
    if (load(f, arg, &r) != 0 || mh_inst_new(&I, type, r.D, r.toml, 1) != 0) {
        fclose(f);
        return;
    }
    const int np = I.m->n_params, B = r.B, T = r.T;
    const long nx = (long)B * T * r.D;
    float *x = NULL, *yr = NULL, *dy = NULL, *dxr = NULL, **gr = calloc((size_t)np + 1, sizeof *gr),
          *sr[MH_MAX_PARTS] = {0};
    int ok = 1, part = 0;
    char lay[128];
    snprintf(lay, sizeof lay, "%s", r.layout);
    for (char *save = NULL, *tok = strtok_r(lay, " ", &save); tok && ok;
         tok = strtok_r(NULL, " ", &save)) {
        float **dst = !strcmp(tok, "x")    ? &x
                      : !strcmp(tok, "y")  ? &yr
                      : !strcmp(tok, "dy") ? &dy
                      : !strcmp(tok, "dx") ? &dxr
                                           : NULL;
        if (dst) {
            *dst = malloc((size_t)nx * 4);
            ok = fread(*dst, 4, (size_t)nx, f) == (size_t)nx;
        } else if (!strcmp(tok, "P") || !strcmp(tok, "G")) {
            for (int i = 0; i < np && ok; i++) {
                size_t k = (size_t)mh_pnumel(&I, i);
                float *p = (float *)I.pp[i];
                if (tok[0] == 'G') p = gr[i] = malloc(k * 4);
                ok = fread(p, 4, k, f) == k;
            }
        } else if (!strcmp(tok, "S") && part < r.n_parts) {
            size_t k = (size_t)B * (size_t)r.parts[part].n;
            sr[part] = malloc(k * 4);
            ok = fread(sr[part++], 4, k, f) == k;
        } else {
            CHECK_MSG(0, "%s: bad layout token '%s'", file, tok);
            ok = 0;
        }
    }
    CHECK_MSG(ok && fgetc(f) == EOF, "%s: the file does not match layout '%s' for %d parameters",
              path, r.layout, np);
    fclose(f);
    char desc[256];
    I.m->desc->describe(I.m->self, desc, sizeof desc);
    printf("   %s%s [B=%d T=%d D=%d] %s\n", file, arg ? "" : "", B, T, r.D, desc);
    if (ok && x && yr) {
        float *y = malloc((size_t)nx * 4), *dx = malloc((size_t)nx * 4);
        void *saved = mh_saved_new(&I, B, T);
        mh_zero_grads(&I);
        CHECK_MSG(mh_fwd(&I, B, T, x, y, saved, NULL, NULL, 0) == HYB_OK, "%s", hyb_error());
        mh_compare("y", y, yr, nx, r.tol_y);
        if (dy && dxr && gr[0 < np ? np - 1 : 0]) {
            CHECK_MSG(mh_bwd(&I, B, T, x, dy, dx, saved) == HYB_OK, "%s", hyb_error());
            mh_compare("dx", dx, dxr, nx, r.tol_dx);
            for (int i = 0; i < np; i++) {
                char nm[96];
                snprintf(nm, sizeof nm, "d%s", I.m->decls[i].name);
                mh_compare(nm, I.gp[i], gr[i], mh_pnumel(&I, i), r.tol_grad);
            }
            /* a second backward accumulates: what it added (g - ref) against ref */
            CHECK(mh_bwd(&I, B, T, x, dy, dx, saved) == HYB_OK);
            int acc_ok = 1;
            for (int i = 0; i < np; i++) {
                long k = mh_pnumel(&I, i);
                float *d = malloc((size_t)k * 4);
                for (long j = 0; j < k; j++)
                    d[j] = I.gp[i][j] - gr[i][j];
                char nm[96];
                snprintf(nm, sizeof nm, "accumulated d%s", I.m->decls[i].name);
                acc_ok &= compare(nm, d, gr[i], k, r.tol_acc, 0);
                free(d);
            }
            printf("   a second backward accumulates into all %d gradients: %s\n", np,
                   acc_ok ? "yes" : "NO");
        }
        if (r.n_parts > 0) { /* prefill into garbage-filled states: final states */
            size_t sb = hyb_mixer_state_bytes(I.m, T);
            CHECK_MSG(!r.state_floats || sb == (size_t)r.state_floats * 4,
                      "state_bytes %zu, want %ld floats", sb, r.state_floats);
            void **st = malloc(sizeof(void *) * (size_t)B);
            for (int b = 0; b < B; b++) {
                st[b] = malloc(sb);
                memset(st[b], 0x7f, sb); /* a prefill at pos 0 must not read it */
            }
            CHECK(mh_fwd(&I, B, T, x, y, NULL, st, NULL, T) == HYB_OK);
            mh_compare("y (prefill)", y, yr, nx, r.tol_y);
            for (int k = 0; k < r.n_parts; k++) {
                long n = r.parts[k].n;
                float *got = malloc((size_t)B * (size_t)n * 4);
                for (int b = 0; b < B; b++)
                    memcpy(got + (size_t)b * n, (const float *)st[b] + r.parts[k].off,
                           (size_t)n * 4);
                mh_compare(r.parts[k].name, got, sr[k], (long)B * n, r.parts[k].tol);
                free(got);
            }
            free_arrays(st, B);
        }
        mh_free(3, y, dx, saved);
    }
    free_arrays(gr, np);
    mh_free(MH_MAX_PARTS + 4, x, yr, dy, dxr, sr[0], sr[1], sr[2], sr[3]);
    mh_inst_free(&I);
}

/* ---- 2. finite differences --------------------------------------------------------------------
 */

/* L = sum(y * dy) in double from one f32 forward. */
static double fd_loss(mh_inst *I, int B, int T, const float *x, const float *dy, float *y) {
    CHECK(mh_fwd(I, B, T, x, y, NULL, NULL, NULL, 0) == HYB_OK);
    double L = 0;
    for (long i = 0; i < (long)B * T * I->D; i++)
        L += (double)y[i] * dy[i];
    return L;
}

/* Central differences (2-point, or the 4-point rule) with step h on every element of v (a
 * parameter or x) against the analytic gradient an. The tolerances are the row's; the reasoning
 * for each mixer's choice is in tests/test_mixers.c. A wrong term in the backward (a sign, a
 * missing factor, a head mapped to the wrong group) gives errors of order |an|. */
static void fd_one(mh_inst *I, const mh_fd_spec *s, const char *what, float *v, const float *an,
                   long n, const float *x, const float *dy, float *y) {
    const float h = s->h;
    double num = 0, den = 0, worst = 0, num_wrong = 0;
    long bad = 0;
    for (long i = 0; i < n; i++) {
        const float keep = v[i];
        double fd;
        if (s->points == 4) {
            const float off[4] = {h, -h, 2 * h, -2 * h};
            double L[4];
            for (int k = 0; k < 4; k++) {
                v[i] = keep + off[k];
                L[k] = fd_loss(I, s->B, s->T, x, dy, y);
            }
            fd = (8.0 * (L[0] - L[1]) - (L[2] - L[3])) / (12.0 * h);
        } else {
            v[i] = keep + h;
            double lp = fd_loss(I, s->B, s->T, x, dy, y);
            v[i] = keep - h;
            double lm = fd_loss(I, s->B, s->T, x, dy, y);
            fd = (lp - lm) / ((double)(keep + h) - (double)(keep - h));
        }
        v[i] = keep;
        double d = fabs(fd - an[i]);
        if (!(d <= s->atol + s->rtol * fabs(an[i]))) {
            if (bad < 3)
                harness_fail(__FILE__, __LINE__, "%s[%ld]: fd %.6g vs analytic %.6g", what, i, fd,
                             (double)an[i]);
            bad++;
        }
        num += d * d;
        num_wrong += (fd - 1.01 * an[i]) * (fd - 1.01 * an[i]);
        den += (double)an[i] * an[i];
        worst = d > worst ? d : worst;
    }
    double rel = sqrt(num / (den > 0 ? den : 1)), rel_wrong = sqrt(num_wrong / (den > 0 ? den : 1));
    printf("   %-18s n=%-4ld |grad| %8.3g  normwise rel err %.2g (1%%-wrong %.2g)  max abs err "
           "%.2g\n",
           what, n, sqrt(den), rel, rel_wrong, worst);
    CHECK_MSG(rel < s->normwise, "%s: normwise rel err %g", what, rel);
    CHECK_MSG(den > 0, "%s: gradient is all zero", what);
    /* the check has the power to fail: a gradient off by 1% would not pass */
    CHECK_MSG(rel_wrong >= s->normwise, "%s: a 1%% gradient error (%g) would go unnoticed", what,
              rel_wrong);
}

void mh_check_fd(const mh_case *c, mh_inst *I) {
    const mh_fd_spec *s = &c->fd;
    hyb_rng r;
    hyb_rng_seed(&r, 99);
    const long nx = (long)s->B * s->T * I->D;
    float *x = mh_randn(&r, (size_t)nx, 1.0f), *dy = mh_randn(&r, (size_t)nx, 1.0f),
          *y = malloc((size_t)nx * 4), *dx = malloc((size_t)nx * 4);
    void *saved = mh_saved_new(I, s->B, s->T);
    mh_zero_grads(I);
    printf("   [B=%d T=%d] %d-point rule, h = %g: |fd - an| <= %g + %g |an|, normwise < %g\n",
           s->B, s->T, s->points, (double)s->h, s->atol, s->rtol, s->normwise);
    CHECK(mh_fwd(I, s->B, s->T, x, y, saved, NULL, NULL, 0) == HYB_OK);
    CHECK(mh_bwd(I, s->B, s->T, x, dy, dx, saved) == HYB_OK);
    fd_one(I, s, "x", x, dx, nx, x, dy, y);
    for (int i = 0; i < I->m->n_params; i++)
        fd_one(I, s, I->m->decls[i].name, (float *)I->pp[i], I->gp[i], mh_pnumel(I, i), x, dy, y);
    free(x);
    free(dy);
    free(y);
    free(dx);
    free(saved);
}

/* ---- 3. decode and chunked prefill ------------------------------------------------------------
 */

static void *state_new(size_t sb, int garbage) {
    void *p = malloc(sb ? sb : 1);
    memset(p, garbage < 0 ? 0 : garbage, sb);
    return p;
}

double mh_decode_vs_forward(mh_inst *I, int ns, const int *len, const int *pre, int max_ctx,
                            int garbage, uint64_t xseed, int *max_n_out) {
    return mh_decode_vs_forward_kv(I, ns, len, pre, max_ctx, garbage, xseed, max_n_out, NULL);
}

double mh_decode_vs_forward_kv(mh_inst *I, int ns, const int *len, const int *pre, int max_ctx,
                               int garbage, uint64_t xseed, int *max_n_out, double *bound) {
    const int D = I->D;
    hyb_rng r;
    hyb_rng_seed(&r, xseed);
    size_t sb = hyb_mixer_state_bytes_kv(I->m, max_ctx, mh_kv);
    if (bound) *bound = 0;
    float **x = calloc((size_t)ns, sizeof *x), **yfull = calloc((size_t)ns, sizeof *yfull);
    void **st = calloc((size_t)ns, sizeof *st), **sp = calloc((size_t)ns, sizeof *sp);
    int32_t *pos = calloc((size_t)ns, sizeof *pos), *ps = calloc((size_t)ns, sizeof *ps);
    int *which = calloc((size_t)ns, sizeof *which), maxlen = 1;
    for (int s = 0; s < ns; s++)
        maxlen = len[s] > maxlen ? len[s] : maxlen;
    float *xs = malloc((size_t)ns * D * 4), *ys = malloc((size_t)ns * D * 4),
          *ybuf = malloc((size_t)maxlen * D * 4);
    double worst = 0;
    for (int s = 0; s < ns; s++) {
        x[s] = mh_randn(&r, (size_t)len[s] * D, 1.0f);
        yfull[s] = malloc((size_t)len[s] * D * 4);
        CHECK(mh_fwd(I, 1, len[s], x[s], yfull[s], NULL, NULL, NULL, 0) == HYB_OK);
        st[s] = state_new(sb, garbage);
        if (bound) *bound = fmax(*bound, mh_kv_bound_mha(I, mh_kv, x[s], len[s]));
    }
    for (int s = 0; s < ns; s++) { /* each prefix (different lengths) into its own state */
        if (!pre[s]) continue;
        CHECK_MSG(mh_fwd(I, 1, pre[s], x[s], ybuf, NULL, &st[s], NULL, max_ctx) == HYB_OK, "%s",
                  hyb_error());
        worst = fmax(worst, harness_max_rel(ybuf, yfull[s], (long)pre[s] * D, 1.0));
    }
    for (int s = 0; s < ns; s++)
        pos[s] = pre[s];
    int steps = 0, max_n = 0;
    for (;;) { /* every step takes all sequences that still have tokens, order alternating */
        int n = 0;
        for (int k = 0; k < ns; k++) {
            int s = steps % 2 ? ns - 1 - k : k;
            if (pos[s] < len[s]) {
                memcpy(xs + (size_t)n * D, x[s] + (size_t)pos[s] * D, (size_t)D * 4);
                sp[n] = st[s];
                ps[n] = pos[s];
                which[n++] = s;
            }
        }
        if (!n) break;
        max_n = n > max_n ? n : max_n;
        int rc = mh_dec(I, n, xs, ys, sp, ps, max_ctx);
        CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
        if (rc != HYB_OK) break;
        for (int k = 0; k < n; k++) {
            int s = which[k];
            worst = fmax(worst, harness_max_rel(ys + (size_t)k * D, yfull[s] + (size_t)pos[s] * D,
                                                D, 1.0));
            pos[s]++;
        }
        steps++;
    }
    if (max_n_out) *max_n_out = max_n;
    free_arrays(x, ns);
    free_arrays(yfull, ns);
    free_arrays(st, ns);
    free(sp);
    free(pos);
    free(ps);
    free(which);
    free(xs);
    free(ys);
    free(ybuf);
    return worst;
}

/* The first-order bound on |decode - forward| (each output element) that storing an mha KV cache
 * as kv implies, for one sequence x [T, D] (0 for f32 and for other mixers). A stored value is
 * off by |dk| <= u |k| (f16: u = 2^-11, round to nearest) or, for q8_0, by at most
 * amax (1/254 + 2^-11) with amax the absmax of its 32-value block (half a step of d = amax/127,
 * plus d's own f16 rounding times |q| <= 127). Then per query head, with k rotated by RoPE (a
 * rotation: the 2-norms below do not see it):
 *   |ds_j| = |q . dk_j| / sqrt(hd) <= e_s = u ||q||_2 ||k_j||_2 / sqrt(hd)            (f16)
 *                                    or eq sqrt(2) ||q||_1 max_pair|k_j| / sqrt(hd)   (q8_0)
 *   softmax: sum_j |dp_j| <= 2 max_j |ds_j|, so |do| <= (2 max e_s + e_v) max|v|, e_v = u or eq
 *   y = o Wo^T: |dy_i| <= sum_c |Wo[i, c]| |do_c| <= ||Wo||_inf max |do|.
 * The maxima are taken over every head and position of the sequence (an upper bound). */
double mh_kv_bound_mha(mh_inst *I, int kv, const float *x, int T) {
    if (kv == HYB_KV_F32 || strcmp(I->m->type, "mha") != 0) return 0;
    char desc[256];
    int H = 0, KV = 0, hd = 0;
    I->m->desc->describe(I->m->self, desc, sizeof desc);
    if (sscanf(desc, "mha H=%d KV=%d hd=%d", &H, &KV, &hd) != 3) return INFINITY;
    const int D = I->D, qd = H * hd, kd = KV * hd, bias = I->m->n_params > 4;
    const float *Wq = I->pp[0], *Wk = I->pp[1], *Wv = I->pp[2], *Wo = I->pp[3];
    double qmax = 0, kmax = 0, vmax = 0, wo = 0, q1max = 0, kpmax = 0;
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * D;
        for (int h = 0; h < H + 2 * KV; h++) { /* q heads, k heads, v heads */
            const int which = h < H ? 0 : h < H + KV ? 1 : 2, hh = which == 0 ? h : which == 1 ? h - H : h - H - KV;
            const float *W = which == 0 ? Wq : which == 1 ? Wk : Wv;
            const float *b = bias ? I->pp[4 + which] : NULL;
            double n2 = 0, n1 = 0, row_v[1024];
            for (int d = 0; d < hd; d++) {
                const int row = hh * hd + d;
                double a = b ? b[row] : 0;
                for (int i = 0; i < D; i++)
                    a += (double)W[(size_t)row * D + i] * xt[i];
                n2 += a * a;
                n1 += fabs(a);
                row_v[d] = a;
                if (which == 2) vmax = fmax(vmax, fabs(a));
            }
            if (which == 0) qmax = fmax(qmax, sqrt(n2));
            if (which == 0) q1max = fmax(q1max, n1);
            if (which == 1) {
                kmax = fmax(kmax, sqrt(n2));
                for (int d = 0; d < hd / 2; d++) /* RoPE rotates the pairs (d, d + hd/2) */
                    kpmax = fmax(kpmax, hypot(row_v[d], row_v[d + hd / 2]));
            }
        }
    }
    (void)kd;
    for (int i = 0; i < D; i++) {
        double rs = 0;
        for (int c = 0; c < qd; c++)
            rs += fabs(Wo[(size_t)i * qd + c]);
        wo = fmax(wo, rs);
    }
    const double u = 1.0 / 2048.0, eq = 1.0 / 254.0 + u;
    /* q8_0: |q . dk| <= eq ||q||_1 ||k||_inf after RoPE, and a rotation of the pairs keeps
     * ||k||_inf <= max pair norm and grows ||q||_1 by at most sqrt(2) */
    const double es = kv == HYB_KV_F16 ? u * qmax * kmax / sqrt((double)hd)
                                       : eq * sqrt(2.0) * q1max * kpmax / sqrt((double)hd);
    const double ev = kv == HYB_KV_F16 ? u : eq;
    return wo * (2 * es + ev) * vmax;
}

void mh_check_decode(const mh_case *c, mh_inst *I) {
    size_t sb = hyb_mixer_state_bytes(I->m, c->dec.max_ctx);
    CHECK_MSG(!c->dec.state_bytes || sb == (size_t)c->dec.state_bytes,
              "state_bytes(%d) = %zu, want %ld", c->dec.max_ctx, sb, c->dec.state_bytes);
    if (c->dec.fixed_state) CHECK(hyb_mixer_state_bytes(I->m, 1) == sb);
    /* every KV-cache type: f32 to the f32 tolerance; f16 and q8_0 (a mixer with the *_kv hooks,
     * mha) within the bound its rounding implies (mh_kv_bound_mha) and visibly rounded; a mixer
     * without the hooks (recurrent state) keeps an f32 state whatever the type asks */
    const int has_kv = I->m->desc->state_bytes_kv != NULL;
    for (int kv = HYB_KV_F32; kv < HYB_KV_COUNT; kv++) {
        mh_kv = kv;
        if (!has_kv) CHECK(hyb_mixer_state_bytes_kv(I->m, c->dec.max_ctx, kv) == sb);
        int max_n = 0;
        double bound = 0;
        double worst = mh_decode_vs_forward_kv(I, c->dec.ns, c->dec.len, c->dec.pre,
                                               c->dec.max_ctx, c->dec.garbage, 5, &max_n, &bound);
        printf("   kv %s: %d sequences of", hyb_kv_dtype_name(kv), c->dec.ns);
        for (int s = 0; s < c->dec.ns; s++)
            if (s < 4 || s == c->dec.ns - 1)
                printf("%s %d (%d prefilled)", s == 4 ? " ..." : "", c->dec.len[s], c->dec.pre[s]);
        printf(", batches up to %d: max rel err vs full forward %.3g", max_n, worst);
        CHECK(max_n == c->dec.ns);
        if (kv == HYB_KV_F32 || !has_kv) {
            printf("\n");
            CHECK_MSG(worst < 1e-5, "kv %s: decode vs forward: %g", hyb_kv_dtype_name(kv), worst);
        } else if (!strcmp(I->m->type, "mha")) {
            printf(" (bound %.3g)\n", bound + 1e-5);
            CHECK_MSG(worst < bound + 1e-5, "kv %s: decode vs forward: %g > bound %g",
                      hyb_kv_dtype_name(kv), worst, bound + 1e-5);
            CHECK_MSG(worst > 1e-6, "kv %s: decode vs forward %g: the cache was not rounded",
                      hyb_kv_dtype_name(kv), worst);
        } else
            printf(" (no bound known for '%s': not checked)\n", I->m->type);
    }
    mh_kv = HYB_KV_F32;
}

static int64_t snapshot_new(mh_inst *I, const void *st, int pos, int max_ctx, void **out) {
    int64_t nb = hyb_mixer_state_snapshot(I->m, st, pos, max_ctx, NULL);
    *out = NULL;
    if (nb < 0) return nb;
    *out = malloc(nb ? (size_t)nb : 1);
    return hyb_mixer_state_snapshot(I->m, st, pos, max_ctx, *out);
}

/* max rel (floor 1) between the snapshots of two states holding pos tokens */
static double state_diff(mh_inst *I, const void *a, const void *b, int pos, int max_ctx) {
    void *sa, *sb;
    int64_t na = snapshot_new(I, a, pos, max_ctx, &sa), nb = snapshot_new(I, b, pos, max_ctx, &sb);
    double e = INFINITY;
    CHECK_MSG(na >= 0 && na == nb, "snapshots: %lld vs %lld bytes", (long long)na, (long long)nb);
    if (na >= 0 && na == nb) e = harness_max_rel(sa, sb, (long)(na / 4), 1.0);
    free(sa);
    free(sb);
    return e;
}

void mh_chunked_vs_whole(mh_inst *I, int ns, const int *first, int second, int max_ctx,
                         int garbage, uint64_t xseed, double *err_y, double *err_state) {
    const int D = I->D;
    hyb_rng r;
    hyb_rng_seed(&r, xseed);
    size_t sb = hyb_mixer_state_bytes(I->m, max_ctx);
    double worst = 0, wst = 0;
    float **x = calloc((size_t)ns, sizeof *x), **yone = calloc((size_t)ns, sizeof *yone);
    void **st_one = calloc((size_t)ns, sizeof *st_one), **st_chunk = calloc((size_t)ns, sizeof *st_chunk);
    for (int s = 0; s < ns; s++) {
        int n = first[s] + second;
        x[s] = mh_randn(&r, (size_t)(n + 1) * D, 1.0f);
        yone[s] = malloc((size_t)n * D * 4);
        st_one[s] = state_new(sb, garbage);
        st_chunk[s] = state_new(sb, garbage);
        CHECK_MSG(mh_fwd(I, 1, n, x[s], yone[s], NULL, &st_one[s], NULL, max_ctx) == HYB_OK, "%s",
                  hyb_error());
        float *y1 = malloc((size_t)first[s] * D * 4);
        CHECK(mh_fwd(I, 1, first[s], x[s], y1, NULL, &st_chunk[s], NULL, max_ctx) == HYB_OK);
        worst = fmax(worst, harness_max_rel(y1, yone[s], (long)first[s] * D, 1.0));
        free(y1);
    }
    /* the second chunk of all sequences in one batch, each continuing at its own position */
    float *x2 = malloc((size_t)ns * second * D * 4), *y2 = malloc((size_t)ns * second * D * 4);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)ns);
    for (int s = 0; s < ns; s++) {
        memcpy(x2 + (size_t)s * second * D, x[s] + (size_t)first[s] * D, (size_t)second * D * 4);
        pos[s] = first[s];
    }
    CHECK_MSG(mh_fwd(I, ns, second, x2, y2, NULL, st_chunk, pos, max_ctx) == HYB_OK, "%s",
              hyb_error());
    for (int s = 0; s < ns; s++) {
        worst = fmax(worst, harness_max_rel(y2 + (size_t)s * second * D,
                                            yone[s] + (size_t)first[s] * D, (long)second * D, 1.0));
        wst = fmax(wst, state_diff(I, st_chunk[s], st_one[s], first[s] + second, max_ctx));
    }
    /* one more token: a continued prefill of T = 1 against a decode step on the whole state */
    {
        float *y3 = malloc((size_t)D * 4), *yref = malloc((size_t)D * 4);
        const float *xn = x[0] + (size_t)(first[0] + second) * D;
        int32_t p = first[0] + second;
        CHECK_MSG(mh_fwd(I, 1, 1, xn, y3, NULL, &st_chunk[0], &p, max_ctx) == HYB_OK, "%s",
                  hyb_error());
        CHECK_MSG(mh_dec(I, 1, xn, yref, &st_one[0], &p, max_ctx) == HYB_OK, "%s", hyb_error());
        worst = fmax(worst, harness_max_rel(y3, yref, D, 1.0));
        wst = fmax(wst, state_diff(I, st_chunk[0], st_one[0], p + 1, max_ctx));
        free(y3);
        free(yref);
    }
    free_arrays(x, ns);
    free_arrays(yone, ns);
    free_arrays(st_one, ns);
    free_arrays(st_chunk, ns);
    free(x2);
    free(y2);
    free(pos);
    *err_y = worst;
    *err_state = wst;
}

void mh_check_chunked(const mh_case *c, mh_inst *I) {
    double ey, es;
    mh_chunked_vs_whole(I, c->chunk.ns, c->chunk.first, c->chunk.second, c->chunk.max_ctx,
                        c->dec.garbage, 6, &ey, &es);
    printf("   %d sequences, chunks of", c->chunk.ns);
    for (int s = 0; s < c->chunk.ns; s++)
        printf(" %d+%d", c->chunk.first[s], c->chunk.second);
    printf(" (+1) vs one prefill: outputs max rel err %.3g, states %.3g\n", ey, es);
    CHECK_MSG(ey < 1e-5, "chunked prefill outputs: %g", ey);
    CHECK_MSG(es < c->chunk.state_tol, "chunked prefill states: %g (bound %g)", es,
              c->chunk.state_tol);
}

/* ---- 4. snapshot / restore --------------------------------------------------------------------
 */

void mh_check_snapshot(const mh_case *c, mh_inst *I) {
    const int P = c->snap.P, N = c->snap.N, M = c->snap.max_ctx, D = I->D;
    hyb_rng r;
    hyb_rng_seed(&r, 7);
    float *x = mh_randn(&r, (size_t)(P + N) * D, 1.0f), *xalt = mh_randn(&r, (size_t)N * D, 1.0f),
          *y = malloc((size_t)(P + N) * D * 4), *ya = malloc((size_t)N * D * 4),
          *yb = malloc((size_t)N * D * 4);
    size_t sb = hyb_mixer_state_bytes(I->m, M);
    void *st = state_new(sb, -1), *st2 = state_new(sb, -1), *st3 = state_new(sb, 0x7f), *snap;
    CHECK(mh_fwd(I, 1, P, x, y, NULL, &st, NULL, M) == HYB_OK);
    int64_t nb = snapshot_new(I, st, P, M, &snap);
    CHECK_MSG(nb >= 0, "%s", hyb_error());
    CHECK_MSG(!c->snap.snap_bytes || nb == c->snap.snap_bytes, "snapshot of %d tokens: %lld bytes, "
              "want %ld", P, (long long)nb, c->snap.snap_bytes);
    printf("   snapshot of %d tokens: %lld bytes (state %zu bytes, %s)\n", P, (long long)nb, sb,
           I->m->desc->state_snapshot ? "the plugin's" : "the host's copy");
    /* decode N other tokens (diverging), then restore and decode the real ones */
    for (int t = 0; t < N; t++) {
        int32_t p = P + t;
        CHECK(mh_dec(I, 1, xalt + (size_t)t * D, ya + (size_t)t * D, &st, &p, M) == HYB_OK);
    }
    void *div;
    int64_t nd = snapshot_new(I, st, P + N, M, &div);
    CHECK_MSG(nd != nb || memcmp(div, snap, (size_t)nb) != 0, "decoding did not change the state");
    free(div);
    CHECK_MSG(hyb_mixer_state_restore(I->m, st, snap, P, M) == HYB_OK, "%s", hyb_error());
    for (int t = 0; t < N; t++) {
        int32_t p = P + t;
        CHECK(mh_dec(I, 1, x + (size_t)(P + t) * D, ya + (size_t)t * D, &st, &p, M) == HYB_OK);
    }
    /* uninterrupted: a fresh state, the same prefill, the same decode */
    CHECK(mh_fwd(I, 1, P, x, y, NULL, &st2, NULL, M) == HYB_OK);
    for (int t = 0; t < N; t++) {
        int32_t p = P + t;
        CHECK(mh_dec(I, 1, x + (size_t)(P + t) * D, yb + (size_t)t * D, &st2, &p, M) == HYB_OK);
    }
    /* bitwise: the same computation on the same state */
    CHECK_MSG(memcmp(ya, yb, (size_t)N * D * 4) == 0, "restored run differs from uninterrupted");
    CHECK_MSG(state_diff(I, st, st2, P + N, M) == 0, "final states differ");
    /* restore into a garbage-filled state works too (the snapshot is self-contained) */
    CHECK(hyb_mixer_state_restore(I->m, st3, snap, P, M) == HYB_OK);
    for (int t = 0; t < N; t++) {
        int32_t p = P + t;
        CHECK(mh_dec(I, 1, x + (size_t)(P + t) * D, ya + (size_t)t * D, &st3, &p, M) == HYB_OK);
    }
    CHECK_MSG(memcmp(ya, yb, (size_t)N * D * 4) == 0, "restore into a garbage state differs");
    if (I->m->desc->state_snapshot) /* the host's copy has no notion of pos */
        CHECK(hyb_mixer_state_snapshot(I->m, st, M + 1, M, NULL) < 0);
    free(snap);
    free(st);
    free(st2);
    free(st3);
    free(x);
    free(xalt);
    free(y);
    free(ya);
    free(yb);
}

/* ---- the graph op -----------------------------------------------------------------------------
 */

/* y = mixer(x), loss = CE(y Wl^T): the tape's backward must hand the plugin dL/dy and collect
 * exactly what a direct backward with that dy gives (dx into x->grad, parameter grads into
 * ->grad); with states, T > 1 is a prefill and T == 1 a decode step, bitwise the kernels'. */
void mh_check_graph(const mh_case *c, mh_inst *I) {
    (void)c;
    enum { B = 2, T = 5, V = 11, M = 16 };
    const int D = I->D, np = I->m->n_params;
    hyb_rng r;
    hyb_rng_seed(&r, 8);
    int64_t xs[3] = {B, T, D}, ws[2] = {V, D};
    hyb_tensor *x = hyb_tensor_new(HYB_F32, 3, xs), *W = hyb_tensor_new(HYB_F32, 2, ws);
    x->grad = hyb_tensor_new(HYB_F32, 3, xs);
    W->grad = hyb_tensor_new(HYB_F32, 2, ws);
    x->requires_grad = W->requires_grad = 1;
    hyb_rng_fill_normal(&r, hyb_tensor_f32(x), B * T * D, 0, 1);
    hyb_rng_fill_normal(&r, hyb_tensor_f32(W), V * D, 0, 0.5f);
    int32_t tgt[B * T];
    for (int i = 0; i < B * T; i++)
        tgt[i] = (i * 7 + 3) % V;
    mh_zero_grads(I);
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *y = hyb_mixer_apply(g, I->m, x, NULL, NULL, 0);
    CHECK_MSG(y != NULL, "%s", hyb_error());
    hyb_tensor *L = y ? hyb_cross_entropy(g, hyb_matmul(g, y, W), tgt, NULL) : NULL;
    CHECK_MSG(L && hyb_graph_backward(g, L, 1.0f) == HYB_OK, "%s", hyb_error());
    float *yd = malloc((size_t)B * T * D * 4), *dx = malloc((size_t)B * T * D * 4);
    if (L && y->grad) {
        void *saved = mh_saved_new(I, B, T);
        CHECK(mh_fwd(I, B, T, hyb_tensor_f32(x), yd, saved, NULL, NULL, 0) == HYB_OK);
        CHECK(memcmp(hyb_tensor_f32(y), yd, (size_t)B * T * D * 4) == 0);
        float **gd = calloc((size_t)np + 1, sizeof *gd);
        for (int i = 0; i < np; i++)
            gd[i] = calloc((size_t)mh_pnumel(I, i), 4);
        hyb_mixer_bwd a = {.B = B,
                           .T = T,
                           .be = hyb_backend_cpu(),
                           .x = hyb_tensor_f32(x),
                           .dy = hyb_tensor_f32(y->grad),
                           .dx = dx,
                           .params = I->pp,
                           .grads = gd,
                           .saved = saved};
        CHECK(I->m->desc->kernels[HYB_DEV_CPU].backward(I->m->self, &a) == HYB_OK);
        double e = harness_max_rel(hyb_tensor_f32(x->grad), dx, B * T * D, 1e-3), worst = e;
        CHECK_MSG(e < 1e-6, "dx via graph vs direct: %g", e);
        for (int i = 0; i < np; i++) {
            long n = mh_pnumel(I, i);
            e = harness_max_rel(I->gp[i], gd[i], n, 1e-3);
            worst = fmax(worst, e);
            CHECK_MSG(e < 1e-6 && mh_max_abs(gd[i], n) > 0, "%s via graph vs direct: %g",
                      I->m->decls[i].name, e);
            free(gd[i]);
        }
        printf("   training node: y bitwise, dx and %d parameter grads via the tape vs direct: "
               "max rel %.3g\n", np, worst);
        free(gd);
        free(saved);
    }
    /* with states: a prefill of T tokens, then two decode steps of both sequences */
    size_t sb = hyb_mixer_state_bytes(I->m, M);
    void *sg[B], *sk[B];
    for (int b = 0; b < B; b++) {
        sg[b] = state_new(sb, -1);
        sk[b] = state_new(sb, -1);
    }
    hyb_graph_reset(g);
    hyb_graph_set_grad(g, 0);
    int same = 1;
    y = hyb_mixer_apply(g, I->m, x, sg, NULL, M);
    CHECK_MSG(y != NULL, "prefill via the graph: %s", hyb_error());
    CHECK(mh_fwd(I, B, T, hyb_tensor_f32(x), yd, NULL, sk, NULL, M) == HYB_OK);
    same &= y && memcmp(hyb_tensor_f32(y), yd, (size_t)B * T * D * 4) == 0;
    int64_t s1[3] = {B, 1, D};
    hyb_tensor *x1 = hyb_tensor_new(HYB_F32, 3, s1);
    for (int k = 0; k < 2; k++) {
        int32_t pos[B] = {T + k, T + k};
        hyb_rng_fill_normal(&r, hyb_tensor_f32(x1), B * D, 0, 1);
        y = hyb_mixer_apply(g, I->m, x1, sg, pos, M);
        CHECK_MSG(y != NULL, "decode step via the graph: %s", hyb_error());
        CHECK(mh_dec(I, B, hyb_tensor_f32(x1), yd, sk, pos, M) == HYB_OK);
        same &= y && memcmp(hyb_tensor_f32(y), yd, (size_t)B * D * 4) == 0;
    }
    printf("   with states: prefill and 2 decode steps via the graph == kernels bitwise: %s\n",
           same ? "yes" : "NO");
    CHECK_MSG(same, "the graph's prefill/decode differs from the kernels'");
    for (int b = 0; b < B; b++) {
        free(sg[b]);
        free(sk[b]);
    }
    hyb_tensor_free(x1);
    free(yd);
    free(dx);
    hyb_graph_free(g);
    hyb_tensor_free(x->grad);
    x->grad = NULL;
    hyb_tensor_free(W->grad);
    W->grad = NULL;
    hyb_tensor_free(x);
    hyb_tensor_free(W);
}

/* ---- 5. every backend against the CPU ---------------------------------------------------------
 */

/* device buffer with a copy of n floats of host memory (NULL host: zeroed) */
static float *dev_put(const hyb_backend *be, const float *host, size_t n, int *ok) {
    float *d = be->alloc(be, n ? n * 4 : 4);
    if (!d) {
        *ok = 0;
        return NULL;
    }
    int rc = host ? be->upload(be, d, host, n * 4) : be->memset0(be, d, n * 4);
    if (rc != HYB_OK) *ok = 0;
    return d;
}

static void dev_get(const hyb_backend *be, float *host, const float *d, size_t n, int *ok) {
    if (!d || be->download(be, host, d, n * 4) != HYB_OK) *ok = 0;
}

/* Tolerances of a device against the CPU (f32): outputs 1e-5 relative (floor 1), gradients
 * 1e-5 of their largest element (sums over all tokens cancel). */
static const mh_tol DEV_TOL_Y = {.rel1 = 1e-5}, DEV_TOL_G = {.relmax = 1e-5};

/* One shape: B sequences of T tokens (forward, backward, prefill into states of max_ctx M), then
 * STEPS batched decode steps at distinct positions. */
static void check_backend_shape(mh_inst *I, const hyb_backend *be, const int B, const int T,
                                const int M) {
    enum { STEPS = 3 };
    const int D = I->D, np = I->m->n_params;
    if (B > 4) return;
    printf("   %s vs cpu at B = %d, T = %d, max_ctx = %d\n", be->name, B, T, M);
    const long nx = (long)B * T * D;
    const hyb_mixer_kernels *k = &I->m->desc->kernels[be->device];
    hyb_rng r;
    hyb_rng_seed(&r, 41);
    float *x = mh_randn(&r, (size_t)nx, 1.0f), *dy = mh_randn(&r, (size_t)nx, 1.0f),
          *xdec = mh_randn(&r, (size_t)B * STEPS * D, 1.0f);
    /* the CPU reference, host memory, straight through the CPU kernels */
    float *y0 = malloc((size_t)nx * 4), *dx0 = malloc((size_t)nx * 4), **g0 = calloc((size_t)np + 1, sizeof *g0);
    float *yp0 = malloc((size_t)nx * 4), *yd0 = malloc((size_t)B * STEPS * D * 4);
    void *saved = mh_saved_new(I, B, T);
    mh_zero_grads(I);
    CHECK(mh_fwd(I, B, T, x, y0, saved, NULL, NULL, 0) == HYB_OK);
    CHECK(mh_bwd(I, B, T, x, dy, dx0, saved) == HYB_OK);
    for (int i = 0; i < np; i++) {
        g0[i] = malloc((size_t)mh_pnumel(I, i) * 4);
        memcpy(g0[i], I->gp[i], (size_t)mh_pnumel(I, i) * 4);
    }
    const size_t sb = hyb_mixer_state_bytes(I->m, M);
    void *hs[4];
    for (int b = 0; b < B; b++)
        hs[b] = state_new(sb, -1);
    CHECK(mh_fwd(I, B, T, x, yp0, NULL, hs, NULL, M) == HYB_OK);
    for (int s = 0; s < STEPS; s++) {
        int32_t pos[4] = {T + s, T + s, T + s, T + s};
        CHECK(mh_dec(I, B, xdec + (size_t)s * B * D, yd0 + (size_t)s * B * D, hs, pos, M) ==
              HYB_OK);
    }
    /* the same on the device: inputs and parameters uploaded, results downloaded */
    int ok = 1;
    float **dp = calloc((size_t)np + 1, sizeof *dp), **dg = calloc((size_t)np + 1, sizeof *dg);
    for (int i = 0; i < np; i++) {
        dp[i] = dev_put(be, I->pp[i], (size_t)mh_pnumel(I, i), &ok);
        dg[i] = dev_put(be, NULL, (size_t)mh_pnumel(I, i), &ok);
    }
    float *dx_ = dev_put(be, x, (size_t)nx, &ok), *ddy = dev_put(be, dy, (size_t)nx, &ok),
          *dy_ = dev_put(be, NULL, (size_t)nx, &ok), *ddx = dev_put(be, NULL, (size_t)nx, &ok),
          *dxd = dev_put(be, xdec, (size_t)B * STEPS * D, &ok),
          *dyd = dev_put(be, NULL, (size_t)B * STEPS * D, &ok);
    size_t svb = I->m->desc->saved_bytes(I->m->self, B, T);
    void *dsaved = be->alloc(be, svb ? svb : 1), *ds[4];
    for (int b = 0; b < B; b++) {
        ds[b] = be->alloc(be, sb ? sb : 1);
        ok &= ds[b] && be->memset0(be, ds[b], sb) == HYB_OK;
    }
    ok &= dsaved != NULL;
    CHECK_MSG(ok, "%s: device buffers: %s", be->name, hyb_error());
    float *y1 = malloc((size_t)nx * 4), *dx1 = malloc((size_t)nx * 4), *g1 = NULL;
    const float *const *cdp = (const float *const *)dp;
    if (ok) {
        char what[96];
        hyb_mixer_fwd fa = {.B = B, .T = T, .be = be, .x = dx_, .y = dy_, .params = cdp,
                            .saved = dsaved};
        CHECK_MSG(k->forward(I->m->self, &fa) == HYB_OK, "%s forward: %s", be->name, hyb_error());
        dev_get(be, y1, dy_, (size_t)nx, &ok);
        snprintf(what, sizeof what, "forward y on %s", be->name);
        mh_compare(what, y1, y0, nx, DEV_TOL_Y);
        if (k->backward) {
            hyb_mixer_bwd ba = {.B = B, .T = T, .be = be, .x = dx_, .dy = ddy, .dx = ddx,
                                .params = cdp, .grads = dg, .saved = dsaved};
            CHECK_MSG(k->backward(I->m->self, &ba) == HYB_OK, "%s backward: %s", be->name,
                      hyb_error());
            dev_get(be, dx1, ddx, (size_t)nx, &ok);
            snprintf(what, sizeof what, "backward dx on %s", be->name);
            mh_compare(what, dx1, dx0, nx, DEV_TOL_Y);
            int gok = 1;
            for (int i = 0; i < np; i++) {
                long n = mh_pnumel(I, i);
                g1 = realloc(g1, (size_t)n * 4);
                dev_get(be, g1, dg[i], (size_t)n, &ok);
                snprintf(what, sizeof what, "d%s on %s", I->m->decls[i].name, be->name);
                gok &= compare(what, g1, g0[i], n, DEV_TOL_G, 0);
            }
            printf("   %d parameter gradients on %s vs cpu within max err/max|ref| %g: %s\n", np,
                   be->name, DEV_TOL_G.relmax, gok ? "yes" : "NO");
        } else {
            printf("   %s: no backward kernel (inference only)\n", be->name);
        }
        hyb_mixer_fwd pa = {.B = B, .T = T, .be = be, .x = dx_, .y = dy_, .params = cdp,
                            .states = ds, .max_ctx = M};
        CHECK_MSG(k->forward(I->m->self, &pa) == HYB_OK, "%s prefill: %s", be->name, hyb_error());
        dev_get(be, y1, dy_, (size_t)nx, &ok);
        snprintf(what, sizeof what, "prefill y on %s", be->name);
        mh_compare(what, y1, yp0, nx, DEV_TOL_Y);
        for (int s = 0; s < STEPS; s++) {
            int32_t pos[4] = {T + s, T + s, T + s, T + s};
            hyb_mixer_dec da = {.n = B, .be = be, .x = dxd + (size_t)s * B * D,
                                .y = dyd + (size_t)s * B * D, .params = cdp, .states = ds,
                                .pos = pos, .max_ctx = M};
            CHECK_MSG(k->decode(I->m->self, &da) == HYB_OK, "%s decode: %s", be->name,
                      hyb_error());
        }
        float *yd1 = malloc((size_t)B * STEPS * D * 4);
        dev_get(be, yd1, dyd, (size_t)B * STEPS * D, &ok);
        snprintf(what, sizeof what, "%d decode steps on %s", STEPS, be->name);
        mh_compare(what, yd1, yd0, (long)B * STEPS * D, DEV_TOL_Y);
        free(yd1);
        CHECK_MSG(ok, "%s: download: %s", be->name, hyb_error());
    }
    for (int i = 0; i < np; i++) {
        be->free(be, dp[i]);
        be->free(be, dg[i]);
        free(g0[i]);
    }
    float *dbufs[6] = {dx_, ddy, dy_, ddx, dxd, dyd};
    for (int i = 0; i < 6; i++)
        be->free(be, dbufs[i]);
    be->free(be, dsaved);
    for (int b = 0; b < B; b++) {
        be->free(be, ds[b]);
        free(hs[b]);
    }
    free(dp);
    free(dg);
    free(g0);
    free(g1);
    free(x);
    free(dy);
    free(xdec);
    free(y0);
    free(dx0);
    free(yp0);
    free(yd0);
    free(y1);
    free(dx1);
    free(saved);
}

/* Prefill + STEPS decode steps with the KV cache stored as kv (not f32) on the device against the
 * CPU kernels with the same cache: both round the same K/V rows (to nearest even), so they agree
 * to DEV_TOL_KV. A device that refuses the type must say HYB_ERR_UNSUPPORTED naming it. */
static void check_backend_kv(mh_inst *I, const hyb_backend *be, int kv, const int B, const int T,
                             const int M) {
    enum { STEPS = 3 };
    const int D = I->D, np = I->m->n_params;
    /* The CPU and the device compute K and V in f32 with different summation orders (~1e-7
     * apart); a value that falls that close to an f16 rounding midpoint rounds to neighbours
     * 2^-11 apart on the two sides. Measured under the CUDA emulation: at most 6e-7 on these
     * shapes (no such flip); 1e-4 leaves room for a few flips on a GPU and is still 10x below the
     * f16 rounding itself (~1e-3 on these rows, mh_check_decode). */
    static const mh_tol DEV_TOL_KV = {.rel1 = 1e-4};
    const long nx = (long)B * T * D;
    const hyb_mixer_kernels *k = &I->m->desc->kernels[be->device];
    hyb_rng r;
    hyb_rng_seed(&r, 43);
    float *x = mh_randn(&r, (size_t)nx, 1.0f), *xdec = mh_randn(&r, (size_t)B * STEPS * D, 1.0f);
    float *yp0 = malloc((size_t)nx * 4), *yd0 = malloc((size_t)B * STEPS * D * 4),
          *y1 = malloc((size_t)nx * 4), *yd1 = malloc((size_t)B * STEPS * D * 4);
    mh_kv = kv;
    const size_t sb = hyb_mixer_state_bytes_kv(I->m, M, kv);
    void *hs[4], *ds[4] = {0};
    for (int b = 0; b < B; b++)
        hs[b] = state_new(sb, -1);
    CHECK(mh_fwd(I, B, T, x, yp0, NULL, hs, NULL, M) == HYB_OK);
    for (int s = 0; s < STEPS; s++) {
        int32_t pos[4] = {T + s, T + s, T + s, T + s};
        CHECK(mh_dec(I, B, xdec + (size_t)s * B * D, yd0 + (size_t)s * B * D, hs, pos, M) ==
              HYB_OK);
    }
    mh_kv = HYB_KV_F32;
    int ok = 1;
    float **dp = calloc((size_t)np + 1, sizeof *dp);
    for (int i = 0; i < np; i++)
        dp[i] = dev_put(be, I->pp[i], (size_t)mh_pnumel(I, i), &ok);
    float *dx_ = dev_put(be, x, (size_t)nx, &ok), *dy_ = dev_put(be, NULL, (size_t)nx, &ok),
          *dxd = dev_put(be, xdec, (size_t)B * STEPS * D, &ok),
          *dyd = dev_put(be, NULL, (size_t)B * STEPS * D, &ok);
    for (int b = 0; b < B; b++) {
        ds[b] = be->alloc(be, sb ? sb : 1);
        ok &= ds[b] && be->memset0(be, ds[b], sb) == HYB_OK;
    }
    CHECK_MSG(ok, "%s: device buffers: %s", be->name, hyb_error());
    const float *const *cdp = (const float *const *)dp;
    if (ok) {
        char what[96];
        hyb_mixer_fwd pa = {.B = B, .T = T, .be = be, .x = dx_, .y = dy_, .params = cdp,
                            .states = ds, .max_ctx = M, .kv = kv};
        int rc = k->forward(I->m->self, &pa);
        if (rc == HYB_ERR_UNSUPPORTED && be->device != HYB_DEV_CPU) {
            printf("   %s refuses kv_cache %s: %s\n", be->name, hyb_kv_dtype_name(kv), hyb_error());
            CHECK(strstr(hyb_error(), "kv_cache") && strstr(hyb_error(), hyb_kv_dtype_name(kv)));
        } else {
            CHECK_MSG(rc == HYB_OK, "%s prefill (kv %s): %s", be->name, hyb_kv_dtype_name(kv),
                      hyb_error());
            dev_get(be, y1, dy_, (size_t)nx, &ok);
            snprintf(what, sizeof what, "prefill y on %s, kv %s", be->name, hyb_kv_dtype_name(kv));
            mh_compare(what, y1, yp0, nx, DEV_TOL_KV);
            for (int s = 0; s < STEPS; s++) {
                int32_t pos[4] = {T + s, T + s, T + s, T + s};
                hyb_mixer_dec da = {.n = B, .be = be, .x = dxd + (size_t)s * B * D,
                                    .y = dyd + (size_t)s * B * D, .params = cdp, .states = ds,
                                    .pos = pos, .max_ctx = M, .kv = kv};
                CHECK_MSG(k->decode(I->m->self, &da) == HYB_OK, "%s decode (kv %s): %s", be->name,
                          hyb_kv_dtype_name(kv), hyb_error());
            }
            dev_get(be, yd1, dyd, (size_t)B * STEPS * D, &ok);
            snprintf(what, sizeof what, "%d decode steps on %s, kv %s", STEPS, be->name,
                     hyb_kv_dtype_name(kv));
            mh_compare(what, yd1, yd0, (long)B * STEPS * D, DEV_TOL_KV);
            CHECK_MSG(ok, "%s: download: %s", be->name, hyb_error());
        }
    }
    for (int i = 0; i < np; i++)
        be->free(be, dp[i]);
    float *dbufs[4] = {dx_, dy_, dxd, dyd};
    for (int i = 0; i < 4; i++)
        be->free(be, dbufs[i]);
    for (int b = 0; b < B; b++) {
        be->free(be, ds[b]);
        free(hs[b]);
    }
    free(dp);
    free(x);
    free(xdec);
    free(yp0);
    free(yd0);
    free(y1);
    free(yd1);
}

void mh_check_backend(const mh_case *c, mh_inst *I, const hyb_backend *be) {
    (void)c;
    /* a short batch, then lengths that cross the 16/32/64-token tiles and chunks of device
     * kernels (attention tiles, scan and delta-rule chunks) with a ragged last one */
    static const int SHAPES[][3] = {{2, 5, 16}, {2, 37, 48}, {1, 70, 80}};
    for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++) {
        check_backend_shape(I, be, SHAPES[i][0], SHAPES[i][1], SHAPES[i][2]);
        /* a mixer whose state has a KV cache (the *_kv hooks): its compressed types too */
        for (int kv = HYB_KV_F16; I->m->desc->state_bytes_kv && kv < HYB_KV_COUNT; kv++)
            if (SHAPES[i][0] <= 4) check_backend_kv(I, be, kv, SHAPES[i][0], SHAPES[i][1], SHAPES[i][2]);
    }
}

void mh_check_backends(const mh_case *c, mh_inst *I) {
    const hyb_mixer_desc *d = I->m->desc;
    char have[128] = "";
    for (int dev = 0; dev < HYB_DEV_COUNT; dev++)
        if (d->kernels[dev].forward)
            snprintf(have + strlen(have), sizeof have - strlen(have), "%s%s", have[0] ? ", " : "",
                     hyb_device_name((hyb_device)dev));
    printf("   %s has kernels for: %s\n", I->m->type, have);
    /* HYB_TEST_REQUIRE_DEVICE=cuda (the emulated runs): that device must open and the mixer must
     * have kernels for it, so the comparison can never pass by skipping */
    const char *need = getenv("HYB_TEST_REQUIRE_DEVICE");
    if (need && !need[0]) need = NULL;
    /* the device path's plumbing (alloc, upload, download, device states) on the CPU itself */
    mh_check_backend(c, I, hyb_backend_cpu());
    char name[64], status[256];
    for (int i = 1; hyb_backend_describe(i, name, sizeof name, status, sizeof status) == HYB_OK;
         i++) {
        const hyb_backend *be = NULL;
        if (hyb_backend_open(name, &be) != HYB_OK || !be) {
            CHECK_MSG(!need || strncmp(need, name, strlen(need)), "HYB_TEST_REQUIRE_DEVICE=%s: %s", need,
                      hyb_error());
            int has = 0;
            for (int dev = 0; dev < HYB_DEV_COUNT; dev++)
                if (!strcmp(hyb_device_name((hyb_device)dev), name))
                    has = d->kernels[dev].forward != NULL;
            printf("   skip %s on %s: %s (and the plugin has %s kernels for it)\n", I->m->type,
                   name, hyb_error(), has ? "its" : "no");
            continue;
        }
        if (!d->kernels[be->device].forward) {
            CHECK(hyb_mixer_kernel_check(I->m, be->device, HYB_MIXER_FORWARD) ==
                  HYB_ERR_UNSUPPORTED);
            CHECK_MSG(!need || strncmp(need, name, strlen(need)), "HYB_TEST_REQUIRE_DEVICE=%s: %s has no kernels "
                      "for it", need, I->m->type);
            printf("   skip %s on %s: the plugin has no kernels for it (%s)\n", I->m->type, name,
                   hyb_error());
            continue;
        }
        mh_check_backend(c, I, be);
    }
}

/* ---- 6. bad input -----------------------------------------------------------------------------
 */

void mh_check_bad_input(const mh_case *c, mh_inst *I) {
    const char *type = I->m->type;
    const int D = I->D;
    /* a missing kernel: the message names the mixer, the layer, the op and the device */
    mh_inst J;
    if (mh_inst_new_ex(&J, type, D, c->toml, c->seed, 3, 4) == 0) {
        static const char *ops[3] = {"forward", "backward", "decode"};
        int missing = 0;
        for (int dev = 0; dev < HYB_DEV_COUNT; dev++)
            for (int op = 0; op < 3; op++) {
                const hyb_mixer_kernels *k = &J.m->desc->kernels[dev];
                const void *fn = op == 0 ? (const void *)k->forward
                                 : op == 1 ? (const void *)k->backward
                                           : (const void *)k->decode;
                int rc = hyb_mixer_kernel_check(J.m, (hyb_device)dev, (hyb_mixer_op)op);
                if (fn) {
                    CHECK_MSG(rc == HYB_OK, "kernel_check %s on %s: %s", ops[op],
                              hyb_device_name((hyb_device)dev), hyb_error());
                    continue;
                }
                char want[3][96];
                snprintf(want[0], sizeof want[0], "mixer '%s' (layer 3)", type);
                snprintf(want[1], sizeof want[1], "no %s kernel", ops[op]);
                snprintf(want[2], sizeof want[2], "device %s", hyb_device_name((hyb_device)dev));
                const char *e = hyb_error();
                CHECK_MSG(rc == HYB_ERR_UNSUPPORTED && strstr(e, want[0]) && strstr(e, want[1]) &&
                              strstr(e, want[2]),
                          "kernel_check: rc %d, '%s'", rc, e);
                if (!missing++) printf("   %s\n", e);
            }
        printf("   %d missing (device, op) kernels refused with their names\n", missing);
    }
    mh_inst_free(&J);
    /* shapes: the graph op checks x against the mixer's width */
    hyb_graph *g = hyb_graph_new();
    int64_t sbad[3] = {2, 3, D + 1}, s2[2] = {3, D};
    hyb_tensor *xb = hyb_tensor_new(HYB_F32, 3, sbad), *x2 = hyb_tensor_new(HYB_F32, 2, s2);
    char want[64];
    snprintf(want, sizeof want, "must be [B, T, %d]", D);
    CHECK(hyb_mixer_apply(g, I->m, xb, NULL, NULL, 0) == NULL);
    CHECK_MSG(strstr(hyb_error(), want), "x [2, 3, D+1]: '%s'", hyb_error());
    printf("   %s\n", hyb_error());
    CHECK(hyb_mixer_apply(g, I->m, x2, NULL, NULL, 0) == NULL);
    CHECK_MSG(strstr(hyb_error(), want), "x [3, D]: '%s'", hyb_error());
    hyb_tensor_free(xb);
    hyb_tensor_free(x2);
    /* a decode step (T == 1 with states) needs pos and max_ctx */
    enum { M = 20 };
    size_t sb = hyb_mixer_state_bytes(I->m, M);
    void *st[2] = {state_new(sb, -1), state_new(sb, -1)};
    int64_t s1[3] = {2, 1, D};
    hyb_tensor *x1 = hyb_tensor_new(HYB_F32, 3, s1);
    hyb_graph_set_grad(g, 0);
    CHECK(hyb_mixer_apply(g, I->m, x1, st, NULL, 0) == NULL);
    CHECK_MSG(strstr(hyb_error(), "needs pos and max_ctx"), "%s", hyb_error());
    hyb_tensor_free(x1);
    hyb_graph_free(g);
    /* pos beyond max_ctx: a prefill that would overflow, a decode at pos == max_ctx */
    float *xz = calloc((size_t)2 * M * D, 4), *yz = malloc((size_t)2 * M * D * 4);
    char ctx[32];
    snprintf(ctx, sizeof ctx, "max_ctx = %d", M);
    int32_t p2[2] = {10, M - 3};
    CHECK(mh_fwd(I, 2, 4, xz, yz, NULL, st, p2, M) == HYB_ERR_ARG);
    CHECK_MSG(strstr(hyb_error(), ctx) && strstr(hyb_error(), type), "prefill overflow: '%s'",
              hyb_error());
    printf("   %s\n", hyb_error());
    int32_t pd = M;
    CHECK(mh_dec(I, 1, xz, yz, st, &pd, M) == HYB_ERR_ARG);
    CHECK_MSG(strstr(hyb_error(), ctx) && strstr(hyb_error(), type), "decode overflow: '%s'",
              hyb_error());
    printf("   %s\n", hyb_error());
    /* training through a continued prefill; pos without states */
    void *saved = mh_saved_new(I, 2, 3);
    int32_t p3[2] = {1, 0};
    int rc = mh_fwd(I, 2, 2, xz, yz, saved, st, p3, M);
    if (c->saved_with_pos)
        CHECK_MSG(rc == HYB_ERR_UNSUPPORTED, "saved with pos > 0: rc %d", rc);
    else
        CHECK_MSG(rc == HYB_OK || rc == HYB_ERR_UNSUPPORTED, "saved with pos > 0: rc %d", rc);
    CHECK(mh_fwd(I, 2, 2, xz, yz, NULL, NULL, p3, M) == HYB_ERR_ARG);
    /* backward without a saved forward, and with the saved forward of another shape */
    float *dxz = malloc((size_t)2 * M * D * 4);
    if (I->m->desc->kernels[HYB_DEV_CPU].backward) {
        CHECK(mh_bwd(I, 1, 1, xz, xz, dxz, NULL) == HYB_ERR_ARG);
        CHECK(mh_fwd(I, 2, 3, xz, yz, saved, NULL, NULL, 0) == HYB_OK);
        CHECK(mh_bwd(I, 2, 2, xz, xz, dxz, saved) == HYB_ERR_ARG);
        printf("   %s\n", hyb_error());
    }
    free(saved);
    free(dxz);
    free(xz);
    free(yz);
    free(st[0]);
    free(st[1]);
}

/* ---- the row ----------------------------------------------------------------------------------
 */

mh_case mh_default_case(const char *type, int D, const char *toml) {
    mh_case c = {
        .label = type,
        .type = type,
        .D = D,
        .toml = toml,
        .seed = 11,
        .init = NULL,
        .init_seed = 78,
        .init_scale = 0.1f,
        .checks = MH_ALL,
        /* 4-point rule, h = 5e-3: truncation O(h^4) negligible, f32 noise ~3e-4 (see the
         * deltanet rows in test_mixers.c) */
        .fd = {2, 5, 4, 5e-3f, 3e-3, 3e-3, 2e-3},
        .dec = {3, {9, 6, 11}, {4, 1, 7}, 16, 0x7f, 0, 0},
        .chunk = {2, {3, 5}, 4, 20, 1e-5},
        .snap = {6, 5, 24, 0},
        .saved_with_pos = 0,
    };
    return c;
}

static const mh_case *run_case;
static mh_inst *run_inst;
static void (*run_fn)(const mh_case *, mh_inst *);
static int run_created;
static void run_one(void) {
    run_fn(run_case, run_inst);
}
static void run_create(void) {
    const mh_case *c = run_case;
    run_created = mh_inst_new(run_inst, c->type, c->D, c->toml, c->seed) == 0;
    if (!run_created) return;
    const hyb_mixer_kernels *k = &run_inst->m->desc->kernels[HYB_DEV_CPU];
    if (!k->forward || !k->decode) { /* every check compares against the CPU */
        CHECK_MSG(0, "%s: the harness needs CPU forward and decode kernels", c->type);
        run_created = 0;
        return;
    }
    (c->init ? c->init : mh_init_for(c->type))(run_inst, c->init_seed, c->init_scale);
    char desc[256];
    run_inst->m->desc->describe(run_inst->m->self, desc, sizeof desc);
    printf("   %s, D = %d\n", desc, c->D);
}

unsigned mh_checks_selected(void) {
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {{"fd", MH_FD},         {"decode", MH_DECODE},     {"chunked", MH_CHUNKED},
                 {"snapshot", MH_SNAPSHOT}, {"graph", MH_GRAPH},   {"backends", MH_BACKENDS},
                 {"bad_input", MH_BAD_INPUT}, {"ref", 0} /* test_mixers' reference rows */};
    const char *env = getenv("HYB_TEST_CHECKS");
    if (!env || !env[0]) return MH_ALL;
    unsigned bits = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", env);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < sizeof names / sizeof names[0] && strcmp(names[i].name, tok)) i++;
        CHECK_MSG(i < sizeof names / sizeof names[0],
                  "HYB_TEST_CHECKS: unknown check '%s' (fd, decode, chunked, snapshot, graph, "
                  "backends, bad_input, ref)", tok);
        if (i < sizeof names / sizeof names[0]) bits |= names[i].bit;
    }
    return bits;
}

void mh_run_case(const mh_case *c) {
    static const struct {
        unsigned bit;
        const char *name;
        void (*fn)(const mh_case *, mh_inst *);
    } checks[] = {{MH_FD, "finite-difference gradients", mh_check_fd},
                  {MH_DECODE, "prefill + batched decode vs forward", mh_check_decode},
                  {MH_CHUNKED, "chunked prefill vs one", mh_check_chunked},
                  {MH_SNAPSHOT, "snapshot / restore", mh_check_snapshot},
                  {MH_GRAPH, "graph op vs kernels", mh_check_graph},
                  {MH_BACKENDS, "backends vs cpu", mh_check_backends},
                  {MH_BAD_INPUT, "bad input", mh_check_bad_input}};
    static char name[256]; /* harness_run keeps the name while the check runs */
    mh_inst I;
    memset(&I, 0, sizeof I);
    run_case = c;
    run_inst = &I;
    snprintf(name, sizeof name, "%s: create", c->label);
    harness_run(name, run_create);
    const int train = run_created && I.m->desc->kernels[HYB_DEV_CPU].backward;
    if (run_created && !train && (c->checks & (MH_FD | MH_GRAPH | MH_BACKENDS)))
        printf("   skip %s: finite differences, graph op and backends need a CPU backward "
               "(inference-only plugin)\n", c->label);
    const unsigned only = mh_checks_selected();
    for (size_t i = 0; run_created && i < sizeof checks / sizeof checks[0]; i++) {
        if (!(c->checks & checks[i].bit & only)) continue;
        if (!train && (checks[i].bit & (MH_FD | MH_GRAPH | MH_BACKENDS))) continue;
        snprintf(name, sizeof name, "%s: %s", c->label, checks[i].name);
        run_fn = checks[i].fn;
        harness_run(name, run_one);
    }
    mh_inst_free(&I);
}
