/* tests/test_model.c: models built from layer maps (needs the `mha` plugin from the build tree).
 *
 *  - build: parameter store (names, tied lm_head counted once, no_decay flags, init), unknown
 *    mixer types named with the layer map's file:line:col
 *  - save -> load gives bitwise identical logits (tied, untied, with identity / swapped layers)
 *  - load errors: wrong shape (names the tensor and both shapes), missing, extra, truncated file;
 *    a failed load leaves the model untouched
 *  - prefill-then-decode equals the full forward (B > 1 sequences of different lengths, batched
 *    decode in shuffled slot order, chunked prefill, an identity layer)
 *  - swap / identity: layer map updated, failures leave the model unchanged, stale kvstates refused
 *  - gradients of the whole model against central finite differences (wiring, tied embedding)
 *  - logits of a HF LlamaForCausalLM (weights saved by HF, float64 reference) reproduced
 *  - a 50-step training loop whose cross-entropy falls clearly
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "mixer_harness.h"
#include "hyb/hf.h"
#include "hyb/model.h"
#include "hyb/safetensors.h"

static const char *MAP_TEXT = HARNESS_MAP_MODEL("tiny-test", 3, 61) HARNESS_MAP_ATTN
                              "rope_theta = 10000.0\n"
                              "\n"
                              "[mixers.attnb]\n"
                              "type = \"mha\"\n"
                              "symbol = \"b\"\n"
                              "n_heads = 2\n"
                              "head_dim = 16\n"
                              "bias = true\n"
                              "\n"
                              "[layout]\n"
                              "pattern = \"tbt\"\n";

static char g_dir[256];

/* MAP_TEXT with `from` replaced by `to` (first occurrence). Caller frees. */
static char *map_variant(const char *from, const char *to) {
    const char *at = strstr(MAP_TEXT, from);
    HYB_ASSERT(at);
    size_t n = strlen(MAP_TEXT) + strlen(to) + 1;
    char *s = malloc(n);
    snprintf(s, n, "%.*s%s%s", (int)(at - MAP_TEXT), MAP_TEXT, to, at + strlen(from));
    return s;
}


static void random_ids(int32_t *ids, int n, int V, uint64_t seed) {
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)(hyb_rng_next(&r) % (uint64_t)V);
}


static const char *sub(const char *name) { return harness_sub(g_dir, name); }

// ---- build -------------------------------------------------------------------------------------

static void test_build_store(void) {
    hyb_model *m = harness_build_model(MAP_TEXT, "inline", 1);
    if (!m) return;
    const int D = 32, F = 48, V = 61, L = 3;
    CHECK(m->D == D && m->F == F && m->V == V && m->L == L);
    CHECK(m->lm_head == m->embed);
    int mixer_params = 0;
    int64_t mixer_elems = 0;
    for (int l = 0; l < L; l++) {
        CHECK(m->layers[l].mixer != NULL);
        mixer_params += m->layers[l].mixer->n_params;
        for (int i = 0; i < m->layers[l].mixer->n_params; i++)
            mixer_elems += hyb_tensor_numel(m->layers[l].mixer->params[i]);
    }
    CHECK(m->n_params == 1 + 5 * L + mixer_params + 1);
    CHECK(hyb_model_n_elements(m) ==
          (int64_t)V * D + L * (2 * D + 3 * (int64_t)D * F) + D + mixer_elems);
    CHECK(hyb_model_param(m, "lm_head.weight") == m->embed);
    CHECK(hyb_model_param(m, "model.embed_tokens.weight") == m->embed);
    CHECK(hyb_model_param(m, "model.layers.2.mlp.down_proj.weight") == m->layers[2].w_down);
    CHECK(hyb_model_param(m, "model.layers.0.input_layernorm.weight") == m->layers[0].norm_in);
    CHECK(hyb_model_param(m, "model.layers.1.post_attention_layernorm.weight") ==
          m->layers[1].norm_post);
    CHECK(hyb_model_param(m, "model.norm.weight") == m->norm_f);
    hyb_tensor *qb = hyb_model_param(m, "model.layers.1.self_attn.q_proj.bias");
    hyb_tensor *qw = hyb_model_param(m, "model.layers.0.self_attn.q_proj.weight");
    CHECK(qb != NULL && qw != NULL);
    CHECK(hyb_model_param(m, "model.layers.0.self_attn.q_proj.bias") ==
          NULL); /* attn has no bias */
    CHECK(hyb_model_param(m, "nope") == NULL);
    /* names unique, no_decay flags, every param trainable, its grad not allocated yet (lazy:
     * inference holds no gradients) */
    for (int i = 0; i < m->n_params; i++) {
        hyb_tensor *p = m->params[i];
        CHECK(p->requires_grad && p->owner == HYB_OWN_PARAM && p->grad == NULL);
        for (int j = 0; j < i; j++)
            CHECK_MSG(strcmp(p->name, m->params[j]->name) != 0, "dup %s", p->name);
        int want_nd = strstr(p->name, "norm") != NULL || strstr(p->name, "bias") != NULL;
        CHECK_MSG(m->no_decay[i] == want_nd, "%s: no_decay %d", p->name, m->no_decay[i]);
    }
    /* init: norms ones, embedding and MLP N(0, 0.02) */
    for (int d = 0; d < D; d++)
        CHECK(hyb_tensor_f32(m->layers[1].norm_in)[d] == 1.0f &&
              hyb_tensor_f32(m->norm_f)[d] == 1.0f);
    double s = 0, ss = 0;
    int64_t n = hyb_tensor_numel(m->embed);
    for (int64_t i = 0; i < n; i++) {
        double v = hyb_tensor_f32(m->embed)[i];
        s += v;
        ss += v * v;
    }
    double sd = sqrt(ss / n - (s / n) * (s / n));
    CHECK_NEAR(sd, 0.02, 0.0015);
    CHECK_NEAR(s / n, 0.0, 0.002);
    /* the AdamW built from the model follows its no_decay flags */
    hyb_adamw *o;
    CHECK(hyb_adamw_new_model(m, 1e-3f, 0.1f, &o) == HYB_OK);
    for (int i = 0; i < m->n_params; i++)
        CHECK(o->decay[i] == !m->no_decay[i]);
    hyb_adamw_free(o);
    /* deterministic init */
    hyb_model *m2 = harness_build_model(MAP_TEXT, "inline", 1);
    hyb_model *m3 = harness_build_model(MAP_TEXT, "inline", 2);
    CHECK(m2 && m3);
    if (m2 && m3) {
        int same = 1, diff = 0;
        for (int i = 0; i < m->n_params; i++) {
            same &= memcmp(m->params[i]->data, m2->params[i]->data,
                           hyb_tensor_nbytes(m->params[i])) == 0;
            diff |= memcmp(m->params[i]->data, m3->params[i]->data,
                           hyb_tensor_nbytes(m->params[i])) != 0;
        }
        CHECK(same && diff);
    }
    hyb_model_free(m2);
    hyb_model_free(m3);
    /* HYB_BUILD_NO_INIT: embedding, MLP and mixer parameters left zero (no plugin init: the
     * values all come from a file next), norms one */
    hyb_layermap *nmap;
    hyb_model *z = NULL;
    CHECK(hyb_layermap_parse(MAP_TEXT, "inline", &nmap) == HYB_OK);
    CHECK(hyb_model_build_ex(nmap, 1, HYB_BUILD_NO_INIT, &z) == HYB_OK);
    if (z) {
        int zero = 1;
        for (int64_t i = 0; i < hyb_tensor_numel(z->embed); i++)
            zero &= hyb_tensor_f32(z->embed)[i] == 0.0f;
        for (int64_t i = 0; i < hyb_tensor_numel(z->layers[0].w_up); i++)
            zero &= hyb_tensor_f32(z->layers[0].w_up)[i] == 0.0f;
        CHECK(zero && hyb_tensor_f32(z->norm_f)[0] == 1.0f);
        for (int l = 0; l < z->L; l++)
            for (int i = 0; z->layers[l].mixer && i < z->layers[l].mixer->n_params; i++) {
                const hyb_tensor *t = z->layers[l].mixer->params[i];
                for (int64_t k = 0; k < hyb_tensor_numel(t); k++)
                    zero &= hyb_tensor_f32((hyb_tensor *)t)[k] == 0.0f;
            }
        CHECK_MSG(zero, "a mixer parameter was initialised under HYB_BUILD_NO_INIT");
        hyb_model_free(z);
    }
    /* untied: lm_head is its own parameter, last in the store */
    char *ut = map_variant("tie_embeddings = true", "tie_embeddings = false");
    hyb_model *u = harness_build_model(ut, "inline-untied", 1);
    free(ut);
    CHECK(u && u->lm_head != u->embed && u->n_params == m->n_params + 1);
    if (u) {
        CHECK(u->params[u->n_params - 1] == u->lm_head &&
              strcmp(u->lm_head->name, "lm_head.weight") == 0);
        CHECK(hyb_model_n_elements(u) == hyb_model_n_elements(m) + (int64_t)V * D);
    }
    hyb_model_free(u);
    hyb_model_free(m);
}

static void test_unknown_type(void) {
    char *bad =
        map_variant("type = \"mha\"\nsymbol = \"b\"", "type = \"nosuchmixer\"\nsymbol = \"b\"");
    /* the line of the bad `type` */
    int line = 1;
    for (const char *p = bad; p < strstr(bad, "nosuchmixer"); p++)
        line += *p == '\n';
    hyb_layermap *map;
    CHECK(hyb_layermap_parse(bad, "inline-bad.toml", &map) == HYB_OK);
    hyb_model *m = (hyb_model *)0x1;
    int rc = hyb_model_build(map, 1, &m); /* takes ownership of map, also on failure */
    CHECK(rc != HYB_OK && m == NULL);
    char want[64];
    snprintf(want, sizeof want, "inline-bad.toml:%d:", line);
    CHECK_MSG(strstr(hyb_error(), want) != NULL, "no '%s' in: %s", want, hyb_error());
    CHECK_MSG(strstr(hyb_error(), "nosuchmixer") != NULL, "%s", hyb_error());
    CHECK_MSG(strstr(hyb_error(), "layer 1") != NULL, "%s", hyb_error());
    free(bad);
}

// ---- checkpoints -------------------------------------------------------------------------------

static void check_save_load_bitwise(hyb_model *m, const char *dirname) {
    int32_t ids[2 * 11];
    random_ids(ids, 22, m->V, 5);
    float *a = harness_logits(m, ids, 2, 11);
    const char *dir = sub(dirname);
    CHECK_MSG(hyb_model_save(m, dir) == HYB_OK, "%s", hyb_error());
    hyb_model *b = NULL;
    CHECK_MSG(hyb_model_load(dir, &b) == HYB_OK, "%s", hyb_error());
    if (!b) {
        free(a);
        return;
    }
    CHECK(b->n_params == m->n_params && (b->lm_head == b->embed) == (m->lm_head == m->embed));
    for (int l = 0; l < m->L; l++) {
        CHECK((b->layers[l].mixer == NULL) == (m->layers[l].mixer == NULL));
        if (m->layers[l].mixer && b->layers[l].mixer) {
            char da[256], db[256];
            m->layers[l].mixer->desc->describe(m->layers[l].mixer->self, da, sizeof da);
            b->layers[l].mixer->desc->describe(b->layers[l].mixer->self, db, sizeof db);
            CHECK_MSG(strcmp(da, db) == 0, "layer %d: '%s' vs '%s'", l, da, db);
        }
    }
    char pa[64], pb[64];
    CHECK(strcmp(hyb_layermap_pattern(m->map, pa, sizeof pa),
                 hyb_layermap_pattern(b->map, pb, sizeof pb)) == 0);
    for (int i = 0; i < m->n_params; i++) {
        CHECK(strcmp(m->params[i]->name, b->params[i]->name) == 0);
        CHECK(memcmp(m->params[i]->data, b->params[i]->data, hyb_tensor_nbytes(m->params[i])) == 0);
    }
    float *c = harness_logits(b, ids, 2, 11);
    CHECK(a && c && memcmp(a, c, (size_t)2 * 11 * m->V * sizeof(float)) == 0);
    /* the file: HF names, f32, tied lm_head not duplicated, format metadata */
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    hyb_safetensors *st;
    CHECK(hyb_safetensors_open(path, &st) == HYB_OK);
    if (st) {
        CHECK(hyb_safetensors_count(st) == m->n_params);
        CHECK((hyb_safetensors_find(st, "lm_head.weight") != NULL) == (m->lm_head != m->embed));
        const hyb_st_tensor *t = hyb_safetensors_find(st, "model.embed_tokens.weight");
        CHECK(t && t->dtype == HYB_ST_F32 && t->shape[0] == m->V && t->shape[1] == m->D);
        CHECK(hyb_safetensors_meta(st, "format") &&
              strcmp(hyb_safetensors_meta(st, "format"), "pt") == 0);
        hyb_safetensors_close(st);
    }
    free(a);
    free(c);
    hyb_model_free(b);
}

static void test_save_load(void) {
    hyb_model *m = harness_build_model(MAP_TEXT, "inline", 3);
    if (!m) return;
    /* make the norms non-trivial so a dropped norm would show */
    for (int i = 0; i < m->n_params; i++)
        if (m->no_decay[i]) {
            hyb_rng r;
            hyb_rng_seed(&r, (uint64_t)i);
            hyb_rng_fill_uniform(&r, hyb_tensor_f32(m->params[i]), hyb_tensor_numel(m->params[i]),
                                 0.5f, 1.5f);
        }
    check_save_load_bitwise(m, "tied");
    /* saving again over the same directory replaces the files atomically */
    check_save_load_bitwise(m, "tied");
    hyb_model_free(m);

    char *ut = map_variant("tie_embeddings = true", "tie_embeddings = false");
    m = harness_build_model(ut, "inline-untied", 4);
    free(ut);
    CHECK(m != NULL);
    if (!m) return;
    CHECK(hyb_model_set_identity(m, 1) == HYB_OK);
    check_save_load_bitwise(m, "untied-identity");
    /* a swapped layer with a mixer table taken from another spec */
    CHECK(hyb_model_swap(m, 1, "mha", m->map->mixers[0].table, 0, 9) == HYB_OK);
    CHECK(hyb_model_swap(m, 2, "mha", m->map->mixers[1].table, 0, 10) == HYB_OK);
    check_save_load_bitwise(m, "untied-swapped");
    /* the written layer map is readable TOML with the resolved layout */
    char path[600];
    snprintf(path, sizeof path, "%s/layermap.toml", sub("untied-swapped"));
    hyb_layermap *map;
    CHECK_MSG(hyb_layermap_load(path, &map) == HYB_OK, "%s", hyb_error());
    if (map) {
        char pat[64];
        CHECK(strcmp(hyb_layermap_pattern(map, pat, sizeof pat), "ttb") == 0);
        CHECK(map->tie_embeddings == 0 && map->d_ff == 48 && map->norm_eps == 1e-5);
        hyb_layermap_free(map);
    }
    hyb_model_free(m);
}

static void test_load_errors(void) {
    hyb_model *m = harness_build_model(MAP_TEXT, "inline", 3);
    if (!m) return;
    const char *dir = sub("errs");
    CHECK(hyb_model_save(m, dir) == HYB_OK);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);

    /* wrong shape: d_ff 40 instead of 48 */
    char *t40 = map_variant("d_ff = 48", "d_ff = 40");
    hyb_model *w = harness_build_model(t40, "inline-dff40", 3);
    free(t40);
    CHECK(w != NULL);
    if (w) {
        hyb_tensor *e = hyb_tensor_clone(w->embed);
        hyb_error_clear();
        CHECK(hyb_model_load_params(w, path) == HYB_ERR_FORMAT);
        const char *err = hyb_error();
        CHECK_MSG(strstr(err, "model.layers.0.mlp.gate_proj.weight") && strstr(err, "[48, 32]") &&
                      strstr(err, "[40, 32]") && strstr(err, path),
                  "%s", err);
        /* nothing was loaded: the embedding (which matched) is unchanged */
        CHECK(memcmp(e->data, w->embed->data, hyb_tensor_nbytes(e)) == 0);
        hyb_tensor_free(e);
        hyb_model_free(w);
    }
    /* missing: an untied model needs lm_head.weight */
    char *ut = map_variant("tie_embeddings = true", "tie_embeddings = false");
    w = harness_build_model(ut, "inline-untied", 3);
    free(ut);
    if (w) {
        CHECK(hyb_model_load_params(w, path) == HYB_ERR_NOTFOUND);
        CHECK_MSG(strstr(hyb_error(), "lm_head.weight") && strstr(hyb_error(), "missing"), "%s",
                  hyb_error());
        hyb_model_free(w);
    }
    /* extra: a 2-layer model and the 3-layer file */
    char *t2 = map_variant("n_layers = 3", "n_layers = 2");
    char *t2b = NULL;
    {
        const char *at = strstr(t2, "pattern = \"tbt\"");
        size_t n = strlen(t2) + 1;
        t2b = malloc(n);
        snprintf(t2b, n, "%.*spattern = \"tb\"\n", (int)(at - t2), t2);
    }
    w = harness_build_model(t2b, "inline-2layers", 3);
    free(t2);
    free(t2b);
    CHECK(w != NULL);
    if (w) {
        CHECK(hyb_model_load_params(w, path) == HYB_ERR_FORMAT);
        CHECK_MSG(strstr(hyb_error(), "model.layers.2.") && strstr(hyb_error(), "not a parameter"),
                  "%s", hyb_error());
        CHECK_MSG(hyb_model_load_params_ex(w, path, HYB_LOAD_ALLOW_EXTRA) == HYB_OK, "%s",
                  hyb_error());
        CHECK(memcmp(w->layers[1].w_up->data, m->layers[1].w_up->data,
                     hyb_tensor_nbytes(w->layers[1].w_up)) == 0);
        hyb_model_free(w);
    }
    /* a truncated checkpoint: error names the file, model untouched */
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fclose(f);
    CHECK(truncate(path, sz - 100) == 0);
    hyb_error_clear();
    CHECK(hyb_model_load_params(m, path) == HYB_ERR_FORMAT);
    CHECK_MSG(strstr(hyb_error(), path) && strstr(hyb_error(), "truncated"), "%s", hyb_error());
    hyb_model *x = (hyb_model *)0x1;
    CHECK(hyb_model_load(dir, &x) != HYB_OK && x == NULL);
    CHECK(hyb_model_load(sub("no-such-dir"), &x) != HYB_OK && x == NULL);
    hyb_model_free(m);
}

// ---- inference ---------------------------------------------------------------------------------

static double row_rel_err(const float *a, const float *ref, int n) {
    double md = 0, mr = 0;
    for (int i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - ref[i]));
        mr = fmax(mr, fabs((double)ref[i]));
    }
    return md / fmax(mr, 1e-20);
}

static void check_prefill_decode(hyb_model *m) {
    enum { NS = 3 };
    const int len[NS] = {12, 9, 14}, prompt[NS] = {5, 3, 7};
    int32_t ids[NS][14];
    float *full[NS];
    const int V = m->V;
    for (int s = 0; s < NS; s++) {
        random_ids(ids[s], len[s], V, 100 + (uint64_t)s);
        full[s] = harness_logits(m, ids[s], 1, len[s]);
        if (!full[s]) return;
    }
    /* the batched full forward agrees with the B=1 ones (same length sequences) */
    hyb_kvstate *kv; /* an f32 KV cache: the same numbers as the forward (to 1e-5) */
    CHECK(hyb_kvstate_new_ex(m, 4, 32, HYB_KV_F32, &kv) == HYB_OK);
    if (!kv) return;
    CHECK(kv->bytes > 0);
    const int slot[NS] = {2, 0, 3}; /* sequence s lives in slot[s] */
    float *lg = malloc((size_t)NS * V * sizeof(float));
    double worst = 0;
    for (int s = 0; s < NS; s++) {
        if (s == 2) { /* chunked prefill: 4 then 3 tokens */
            CHECK(hyb_model_prefill(m, kv, slot[s], ids[s], 4, lg) == HYB_OK);
            worst = fmax(worst, row_rel_err(lg, full[s] + (size_t)3 * V, V));
            CHECK(hyb_model_prefill(m, kv, slot[s], ids[s] + 4, prompt[s] - 4, lg) == HYB_OK);
        } else {
            CHECK_MSG(hyb_model_prefill(m, kv, slot[s], ids[s], prompt[s], lg) == HYB_OK, "%s",
                      hyb_error());
        }
        CHECK(kv->pos[slot[s]] == prompt[s]);
        worst = fmax(worst, row_rel_err(lg, full[s] + (size_t)(prompt[s] - 1) * V, V));
    }
    /* decode the rest, batched: sequences drop out as they finish; order reversed every step */
    int at[NS];
    for (int s = 0; s < NS; s++)
        at[s] = prompt[s];
    for (int step = 0;; step++) {
        int32_t seqs[NS], tok[NS], who[NS];
        int n = 0;
        for (int k = 0; k < NS; k++) {
            int s = step % 2 ? NS - 1 - k : k;
            if (at[s] < len[s]) {
                who[n] = s;
                seqs[n] = slot[s];
                tok[n] = ids[s][at[s]];
                n++;
            }
        }
        if (!n) break;
        CHECK_MSG(hyb_model_decode(m, kv, n, seqs, tok, lg) == HYB_OK, "%s", hyb_error());
        for (int i = 0; i < n; i++) {
            int s = who[i];
            worst = fmax(worst, row_rel_err(lg + (size_t)i * V, full[s] + (size_t)at[s] * V, V));
            at[s]++;
        }
    }
    for (int s = 0; s < NS; s++)
        CHECK(kv->pos[slot[s]] == len[s]);
    CHECK_MSG(worst < 1e-5, "prefill/decode vs forward: max rel err %g", worst);
    printf("  prefill+decode vs forward: max rel err %.3g\n", worst);
    /* argument errors */
    int32_t one = 1, bad = 99, dup[2] = {0, 0}, t2[2] = {1, 2};
    CHECK(hyb_model_decode(m, kv, 1, &bad, &one, lg) == HYB_ERR_ARG);
    CHECK(hyb_model_decode(m, kv, 2, dup, t2, lg) == HYB_ERR_ARG);
    int32_t badtok = V + 5, s1 = 1;
    int32_t pos_before = kv->pos[1];
    CHECK(hyb_model_decode(m, kv, 1, &s1, &badtok, lg) != HYB_OK);
    CHECK(kv->pos[1] == pos_before);
    int32_t many[40] = {0};
    CHECK(hyb_model_prefill(m, kv, 1, many, 40, NULL) == HYB_ERR_ARG); /* exceeds max_ctx */
    CHECK(strstr(hyb_error(), "max_ctx") != NULL);
    /* reset: the slot starts over and reproduces the first logits */
    hyb_kvstate_reset_seq(kv, slot[0]);
    CHECK(kv->pos[slot[0]] == 0);
    CHECK(hyb_model_prefill(m, kv, slot[0], ids[0], 1, lg) == HYB_OK);
    CHECK(row_rel_err(lg, full[0], V) < 1e-5);
    free(lg);
    for (int s = 0; s < NS; s++)
        free(full[s]);
    hyb_kvstate_free(kv);
}

static void test_prefill_decode(void) {
    hyb_model *m = harness_build_model(MAP_TEXT, "inline", 7);
    if (!m) return;
    check_prefill_decode(m);
    CHECK(hyb_model_set_identity(m, 1) == HYB_OK);
    check_prefill_decode(m);
    hyb_model_free(m);
}

// ---- swap / identity ---------------------------------------------------------------------------

static void test_swap(void) {
    hyb_model *m = harness_build_model(MAP_TEXT, "inline", 8);
    if (!m) return;
    int32_t ids[10];
    random_ids(ids, 10, m->V, 1);
    float *before = harness_logits(m, ids, 1, 10);
    hyb_kvstate *kv;
    CHECK(hyb_kvstate_new(m, 1, 16, &kv) == HYB_OK);
    int n0 = m->n_params;
    uint64_t gen0 = m->generation;
    hyb_mixer *old0 = m->layers[0].mixer;
    /* failures leave everything as it was */
    CHECK(hyb_model_swap(m, 0, "nosuchmixer", NULL, 0, 1) != HYB_OK);
    CHECK(strstr(hyb_error(), "nosuchmixer") && strstr(hyb_error(), "layer 0"));
    CHECK(hyb_model_swap(m, 0, "mha", m->map->mixers[1].table, 1, 1) ==
          HYB_ERR_UNSUPPORTED); /* mha: no init_from */
    CHECK(hyb_model_swap(m, 5, "mha", NULL, 0, 1) == HYB_ERR_ARG);
    CHECK(hyb_model_set_identity(m, -1) == HYB_ERR_ARG);
    CHECK(m->n_params == n0 && m->generation == gen0 && m->layers[0].mixer == old0);
    float *same = harness_logits(m, ids, 1, 10);
    CHECK(before && same && memcmp(before, same, 10 * (size_t)m->V * sizeof(float)) == 0);
    /* identity: fewer params, layer map updated, different output, stale kvstate refused */
    int np0 = m->layers[0].mixer->n_params;
    CHECK(hyb_model_set_identity(m, 0) == HYB_OK);
    CHECK(m->layers[0].mixer == NULL && m->n_params == n0 - np0 && m->generation == gen0 + 1);
    char pat[16];
    hyb_layermap_pattern(m->map, pat, sizeof pat);
    CHECK_MSG(strcmp(pat, "ibt") == 0, "pattern %s", pat);
    CHECK(strcmp(m->map->mixers[m->map->layer_mixer[0]].type, HYB_MIXER_IDENTITY) == 0);
    CHECK(hyb_model_param(m, "model.layers.0.self_attn.q_proj.weight") == NULL);
    float *ident = harness_logits(m, ids, 1, 10);
    CHECK(ident && memcmp(before, ident, 10 * (size_t)m->V * sizeof(float)) != 0);
    CHECK(hyb_model_prefill(m, kv, 0, ids, 3, NULL) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "swap") != NULL);
    hyb_kvstate_free(kv);
    /* nothing to initialise from on an identity layer */
    CHECK(hyb_model_swap(m, 0, "mha", NULL, 1, 1) == HYB_ERR_ARG);
    /* back to attention with the `attnb` table: the spec is reused, names are right */
    CHECK(hyb_model_swap(m, 0, "mha", m->map->mixers[1].table, 0, 3) == HYB_OK);
    hyb_layermap_pattern(m->map, pat, sizeof pat);
    CHECK_MSG(strcmp(pat, "bbt") == 0, "pattern %s", pat);
    CHECK(hyb_model_param(m, "model.layers.0.self_attn.q_proj.bias") != NULL);
    CHECK(m->n_params == n0 - np0 + m->layers[1].mixer->n_params);
    /* the store is complete: every mixer param is in it exactly once */
    for (int l = 0; l < m->L; l++)
        if (m->layers[l].mixer)
            for (int i = 0; i < m->layers[l].mixer->n_params; i++) {
                int c = 0;
                for (int k = 0; k < m->n_params; k++)
                    c += m->params[k] == m->layers[l].mixer->params[i];
                CHECK(c == 1);
            }
    free(before);
    free(same);
    free(ident);
    hyb_model_free(m);
}

static void test_clone(void) {
    hyb_model *m = harness_build_model(MAP_TEXT, "inline", 12);
    if (!m) return;
    CHECK(hyb_model_set_identity(m, 2) == HYB_OK);
    m->layers[0].w_up->requires_grad = 0; /* frozen */
    hyb_model *c = NULL;
    CHECK_MSG(hyb_model_clone(m, &c) == HYB_OK, "%s", hyb_error());
    if (!c) {
        hyb_model_free(m);
        return;
    }
    CHECK(c->n_params == m->n_params && c->layers[2].mixer == NULL &&
          c->layers[0].w_up->requires_grad == 0);
    int32_t ids[12];
    random_ids(ids, 12, m->V, 9);
    float *a = harness_logits(m, ids, 1, 12), *b = harness_logits(c, ids, 1, 12);
    CHECK(a && b && memcmp(a, b, 12 * (size_t)m->V * sizeof(float)) == 0);
    /* independent: changing the copy leaves the source alone */
    hyb_tensor_f32(c->embed)[0] += 1.0f;
    CHECK(hyb_tensor_f32(c->embed)[0] != hyb_tensor_f32(m->embed)[0]);
    CHECK(hyb_model_swap(c, 2, "mha", c->map->mixers[0].table, 0, 1) == HYB_OK);
    CHECK(m->layers[2].mixer == NULL);
    free(a);
    free(b);
    hyb_model_free(m); /* the copy outlives its source */
    float *d = harness_logits(c, ids, 1, 12);
    CHECK(d != NULL);
    free(d);
    hyb_model_free(c);
}

// ---- against HF transformers -------------------------------------------------------------------

/* tests/reference/llama_ref.py: a HF LlamaForCausalLM with random weights (saved by HF), logits
 * computed in float64. Our model loads the HF file and must reproduce the logits. */
static void test_hf_llama_logits(void) {
    static const char *text =
        "[model]\nname = \"llama-ref\"\nd_model = 64\nn_layers = 2\nvocab_size = 73\n"
        "d_ff = 96\nnorm_eps = 1e-5\ntie_embeddings = true\nmax_seq = 128\n"
        "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\nn_heads = 4\nn_kv_heads = 2\n"
        "head_dim = 16\nrope_theta = 10000.0\n[layout]\npattern = \"tt\"\n";
    char path[1024], lpath[1024];
    snprintf(path, sizeof path, "%s/llama_ref/model.safetensors", harness_data_dir());
    snprintf(lpath, sizeof lpath, "%s/llama_ref/logits.bin", harness_data_dir());
    harness_golden gold;
    if (harness_read_golden(lpath, 0x4C4C4D31, &gold)) return;
    const int B = gold.b, T = gold.t, V = gold.v;
    const int32_t *ids = gold.ids;
    const float *ref = gold.logits;
    hyb_model *m = harness_build_model(text, "llama-ref", 1);
    CHECK(m != NULL && m->V == V);
    if (m) {
        CHECK_MSG(hyb_model_load_params(m, path) == HYB_OK, "%s", hyb_error());
        float *got = harness_logits(m, ids, B, T);
        if (got) {
            double rel = harness_rel_rms(got, ref, (long)B * T * V);
            double mx = harness_max_rel(got, ref, (long)B * T * V, 1.0);
            printf("  vs HF LlamaForCausalLM (float64): rel rms %.3g, max rel %.3g\n", rel, mx);
            CHECK_MSG(rel < 1e-5 && mx < 1e-5, "rel rms %g max rel %g", rel, mx);
            /* and decoding token by token gives the same logits */
            hyb_kvstate *kv; /* f32 KV cache (f16 rounds K and V: ~1e-3) */
            CHECK(hyb_kvstate_new_ex(m, B, T, HYB_KV_F32, &kv) == HYB_OK);
            float *lg = malloc((size_t)B * V * sizeof *lg);
            double worst = 0;
            for (int t = 0; t < T && kv; t++) {
                int32_t seqs[8], tok[8];
                for (int b = 0; b < B; b++) {
                    seqs[b] = b;
                    tok[b] = ids[b * T + t];
                }
                CHECK(hyb_model_decode(m, kv, B, seqs, tok, lg) == HYB_OK);
                for (int b = 0; b < B; b++)
                    worst = fmax(worst, harness_max_rel(lg + (size_t)b * V,
                                                        ref + ((size_t)b * T + t) * V, V, 1.0));
            }
            CHECK_MSG(worst < 1e-5, "decode vs HF: max rel %g", worst);
            free(lg);
            hyb_kvstate_free(kv);
            /* a plain llama is saved with an HF config.json: the directory loads as HF too */
            const char *dir = sub("llama-hf");
            CHECK(hyb_model_save(m, dir) == HYB_OK);
            hyb_model *h = NULL;
            CHECK_MSG(hyb_model_load_hf_dir(dir, &h) == HYB_OK, "%s", hyb_error());
            if (h) {
                float *again = harness_logits(h, ids, B, T);
                CHECK(again && memcmp(again, got, (size_t)B * T * V * sizeof(float)) == 0);
                free(again);
                hyb_model_free(h);
            }
            /* after a swap to identity the layout is no longer llama: config.json is removed */
            CHECK(hyb_model_set_identity(m, 1) == HYB_OK);
            CHECK(hyb_model_save(m, dir) == HYB_OK);
            char cp[600];
            snprintf(cp, sizeof cp, "%s/config.json", dir);
            CHECK(access(cp, F_OK) != 0);
        }
        free(got);
        hyb_model_free(m);
    }
    harness_golden_free(&gold);
}

// ---- gradients and training --------------------------------------------------------------------

static double loss_of(hyb_model *m, const int32_t *ids, const int32_t *tg, int B, int T) {
    hyb_graph *g = hyb_graph_new();
    hyb_graph_set_grad(g, 0);
    hyb_tensor *lg = hyb_model_forward(m, g, ids, B, T);
    hyb_tensor *L = lg ? hyb_cross_entropy(g, lg, tg, NULL) : NULL;
    double v = L ? hyb_tensor_f32(L)[0] : NAN;
    hyb_graph_free(g);
    return v;
}

static void test_gradients_fd(void) {
    char *t = map_variant("vocab_size = 61", "vocab_size = 23");
    hyb_model *m = harness_build_model(t, "inline-grad", 21);
    free(t);
    CHECK(m != NULL);
    if (!m) return;
    /* larger weights than the 0.02 init so every path carries signal */
    for (int i = 0; i < m->n_params; i++) {
        hyb_rng r;
        hyb_rng_seed(&r, 1000 + (uint64_t)i);
        float *p = hyb_tensor_f32(m->params[i]);
        int64_t n = hyb_tensor_numel(m->params[i]);
        if (m->no_decay[i])
            hyb_rng_fill_uniform(&r, p, n, 0.7f, 1.3f);
        else
            hyb_rng_fill_normal(&r, p, n, 0.0f, 0.3f);
    }
    enum { B = 2, T = 6 };
    int32_t ids[B * T], tg[B * T];
    random_ids(ids, B * T, m->V, 3);
    random_ids(tg, B * T, m->V, 4);
    tg[3] = -1; /* ignored target */
    hyb_graph *g = hyb_graph_new();
    hyb_model_zero_grad(m);
    hyb_tensor *lg = hyb_model_forward(m, g, ids, B, T);
    hyb_tensor *L = lg ? hyb_cross_entropy(g, lg, tg, NULL) : NULL;
    CHECK(L != NULL);
    if (!L) {
        hyb_graph_free(g);
        hyb_model_free(m);
        return;
    }
    CHECK(hyb_graph_backward(g, L, 1.0f) == HYB_OK);
    hyb_graph_free(g);
    const char *names[] = {"model.embed_tokens.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.1.self_attn.v_proj.bias",
                           "model.layers.1.post_attention_layernorm.weight",
                           "model.layers.2.mlp.gate_proj.weight",
                           "model.layers.2.mlp.down_proj.weight",
                           "model.norm.weight"};
    int bad = 0;
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        hyb_tensor *p = hyb_model_param(m, names[k]);
        CHECK_MSG(p != NULL, "%s", names[k]);
        if (!p) continue;
        /* the 3 largest-gradient elements and one random element */
        int64_t n = hyb_tensor_numel(p);
        const float *gr = hyb_tensor_cf32(p->grad);
        int64_t pick[4] = {0, 0, 0, (int64_t)(k * 7919) % n};
        for (int j = 0; j < 3; j++) {
            int64_t best = -1;
            for (int64_t i = 0; i < n; i++) {
                int used = 0;
                for (int q = 0; q < j; q++)
                    used |= pick[q] == i;
                if (!used && (best < 0 || fabsf(gr[i]) > fabsf(gr[best]))) best = i;
            }
            pick[j] = best;
        }
        for (int j = 0; j < 4; j++) {
            float *x = hyb_tensor_f32(p) + pick[j];
            float x0 = *x;
            const float h = 1e-2f;
            *x = x0 + h;
            double lp = loss_of(m, ids, tg, B, T);
            *x = x0 - h;
            double lm = loss_of(m, ids, tg, B, T);
            *x = x0;
            double fd = (lp - lm) / (2.0 * h), an = gr[pick[j]];
            if (!(fabs(fd - an) <= 2e-3 + 3e-2 * fabs(an))) {
                bad++;
                fprintf(stderr, "  %s[%lld]: analytic %.6g, finite difference %.6g\n", names[k],
                        (long long)pick[j], an, fd);
            }
        }
    }
    CHECK_MSG(bad == 0, "%d gradient elements disagree with finite differences", bad);
    hyb_model_free(m);
}

static void test_training_loss_falls(void) {
    hyb_model *m = harness_build_model(MAP_TEXT, "inline-train", 5);
    if (!m) return;
    enum { B = 2, T = 24 };
    int32_t seq[B * (T + 1)];
    random_ids(seq, B * (T + 1), m->V, 77);
    double first = 0, last = 0;
    int ok = mh_model_train(m, seq, B, T, 50, 1e-2f, &first, &last);
    CHECK(ok);
    printf("  training: loss %.4f -> %.4f after 50 steps\n", first, last);
    CHECK_NEAR(first, log((double)m->V), 0.15); /* near-uniform predictions at init */
    CHECK_MSG(last < 0.5 * first, "loss %.4f -> %.4f did not fall clearly", first, last);
    hyb_model_free(m);
}

int main(void) {
    const hyb_mixer_desc *d;
    if (hyb_plugin_find("mha", &d) != HYB_OK) {
        fprintf(stderr, "skipping: the mha plugin is not available: %s\n", hyb_error());
        return HARNESS_SKIP;
    }
    if (harness_mkdtemp(g_dir, sizeof g_dir, "model")) return 1;
    hyb_log_set_level(HYB_LOG_WARN);
    RUN(test_build_store);
    RUN(test_unknown_type);
    RUN(test_save_load);
    RUN(test_load_errors);
    RUN(test_prefill_decode);
    RUN(test_swap);
    RUN(test_clone);
    RUN(test_hf_llama_logits);
    RUN(test_gradients_fd);
    RUN(test_training_loss_falls);
    harness_rm_rf(g_dir);
    return harness_done();
}
