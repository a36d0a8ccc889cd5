/* tests/test_hf_hooks.c: HF config.json export/import through the mixers' hooks (hf_layer_type,
 * hf_export, hf_import in hyb/plugin.h; docs/HF_CONFIG.md).
 *
 *  - the apriel_h export of the hybrid in tests/data/apriel/model (written by the code before the
 *    hooks) has the same keys and values as that committed config.json, plus ssm_cfg.n_qk_heads
 *    (issue 16: the HF hybrid cache reads it; d_inner / d_state);
 *  - ssm_cfg.d_inner: null is read as expand * hidden_size, as the HF code does (issue 16);
 *  - identity layers written as "i" / "identity" have no tensors in model.safetensors (the HF
 *    side has none; issue 16), and hyb_model_load still gives the same model and logits;
 *  - DeltaNet / Gated DeltaNet hybrids (with mha, mamba1 and identity layers) are written in the
 *    hyb_hybrid format: hybrid_block_layout names each layer's mixer, mixer_cfg.<type> its
 *    options; loading the directory gives the same layer map and bit-identical logits;
 *  - an mha with q/k/v biases next to mamba1 (not apriel_h) goes to hyb_hybrid and round-trips;
 *  - mha / mamba1 / identity without an SSM layer ("ttit") is apriel_h and round-trips;
 *  - two deltanet layers with different options: no config.json (one mixer_cfg per type);
 *  - import errors name the file, the object and the key (unknown mixer type, missing option);
 *  - the example plugin of PLUGINS.md (`gain`, built from the document into
 *    <build>/example-plugins) is exported and imported like the shipped mixers.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "harness.h"
#include "hyb/atomic.h"
#include "hyb/hf.h"
#include "hyb/model.h"
#include "hyb/plugin.h"
#include "hyb/safetensors.h"

static char g_dir[512];

static const char *sub(const char *name) { return harness_sub(g_dir, name); }

/* symbols: t mha, b mha with biases, m mamba1, n mamba1 with double_dt_bias = false, d deltanet,
 * e a second deltanet config, g gated_deltanet, i identity; o deltanet and h gated_deltanet with
 * flash-linear-attention's options set away from their defaults; s mamba2 (2 groups of 2 heads) */
#define MAP                                                                                        \
    "[model]\nname = \"hooks-test\"\nd_model = 32\nn_layers = %d\nvocab_size = 48\nd_ff = 40\n"    \
    "norm_eps = 1e-5\ntie_embeddings = %s\nmax_seq = 64\n\n"                                       \
    "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n"   \
    "rope_theta = 50000.0\n\n"                                                                     \
    "[mixers.battn]\ntype = \"mha\"\nsymbol = \"b\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n"  \
    "rope_theta = 50000.0\nbias = true\n\n"                                                        \
    "[mixers.m2]\ntype = \"mamba1\"\nsymbol = \"m\"\nd_inner = 32\nd_xb = 16\nd_state = 4\n"       \
    "dt_rank = 3\nd_conv = 3\n\n"                                                                  \
    "[mixers.m1]\ntype = \"mamba1\"\nsymbol = \"n\"\nd_inner = 32\nd_xb = 16\nd_state = 4\n"       \
    "dt_rank = 3\nd_conv = 3\ndouble_dt_bias = false\n\n"                                          \
    "[mixers.dn]\ntype = \"deltanet\"\nsymbol = \"d\"\nn_heads = 2\nhead_dim = 8\nchunk = 4\n"     \
    "norm_eps = 1e-4\n\n"                                                                          \
    "[mixers.dn2]\ntype = \"deltanet\"\nsymbol = \"e\"\nn_heads = 4\nhead_dim = 8\n\n"             \
    "[mixers.gdn]\ntype = \"gated_deltanet\"\nsymbol = \"g\"\nn_heads = 4\nhead_dim = 8\n"         \
    "conv_size = 3\nchunk = 8\n\n"                                                                 \
    "[mixers.dnopt]\ntype = \"deltanet\"\nsymbol = \"o\"\nn_heads = 2\nhead_dim = 8\n"              \
    "num_v_heads = 4\nexpand_v = 0.5\nuse_gate = false\nallow_neg_eigval = true\n\n"             \
    "[mixers.gdnopt]\ntype = \"gated_deltanet\"\nsymbol = \"h\"\nn_heads = 2\nhead_dim = 8\n"      \
    "expand_v = 2.0\nuse_short_conv = false\n\n"                                                   \
    "[mixers.ssd]\ntype = \"mamba2\"\nsymbol = \"s\"\nd_inner = 48\nheaddim = 12\nngroups = 2\n"    \
    "d_state = 8\nd_conv = 3\nchunk_size = 5\nnorm_eps = 1e-4\n\n"                                 \
    "[mixers.skip]\ntype = \"identity\"\nsymbol = \"i\"\n\n"                                       \
    "[layout]\npattern = \"%s\"\n"

static unsigned long long g_rng;

/* A model of the pattern, its constant-initialised parameters (norms, biases, A_log, D, ...)
 * perturbed so that a loader mixing them up is caught, identity layers' MLPs zero. */
static hyb_model *make(const char *pattern, int tied) {
    char text[4096];
    snprintf(text, sizeof text, MAP, (int)strlen(pattern), tied ? "true" : "false", pattern);
    hyb_model *m = harness_build_model(text, "inline-hooks.toml", 777);
    if (!m) return NULL;
    g_rng = 4321;
    for (int i = 0; i < m->n_params; i++) {
        hyb_tensor *t = m->params[i];
        float *x = hyb_tensor_f32(t);
        if (t->ndim == 1 || strstr(t->name, "A_log"))
            for (int64_t j = 0, k = hyb_tensor_numel(t); j < k; j++)
                x[j] += 0.3f * harness_frand(&g_rng);
    }
    for (int l = 0; l < m->L; l++) {
        hyb_layer *ly = &m->layers[l];
        if (ly->mixer) continue;
        memset(hyb_tensor_f32(ly->w_gate), 0, hyb_tensor_nbytes(ly->w_gate));
        memset(hyb_tensor_f32(ly->w_up), 0, hyb_tensor_nbytes(ly->w_up));
        memset(hyb_tensor_f32(ly->w_down), 0, hyb_tensor_nbytes(ly->w_down));
    }
    return m;
}

enum { B = 2, T = 11 };
static const int32_t IDS[B * T] = {1,  5, 9, 47, 0,  3, 3,  17, 22, 40, 2,
                                   8, 31, 7, 11, 46, 19, 4, 23, 1,  0,  45};

static float *logits_of(hyb_model *m) { return harness_logits(m, IDS, B, T); }

/* make(pattern, tied) saved into sub(name): the directory's path in *dir, its config.json's in
 * cfg[700]; NULL after a failed check. */
static hyb_model *make_saved(const char *name, const char *pattern, int tied, const char **dir,
                             char *cfg) {
    hyb_model *m = make(pattern, tied);
    if (!m) return NULL;
    *dir = sub(name);
    snprintf(cfg, 700, "%s/config.json", *dir);
    CHECK_MSG(hyb_model_save(m, *dir) == HYB_OK, "save %s: %s", name, hyb_error());
    return m;
}




/* The resolved description of every layer ("mha H=4 ...", "identity"): equal for two models
 * means the same mixers with the same settings in the same places. */
static void describe_layers(const hyb_model *m, char *buf, size_t n) {
    size_t k = 0;
    buf[0] = 0;
    for (int l = 0; l < m->L && k < n; l++) {
        char one[256] = "identity";
        const hyb_mixer *mx = m->layers[l].mixer;
        if (mx) mx->desc->describe(mx->self, one, sizeof one);
        k += (size_t)snprintf(buf + k, n - k, "%d: %s\n", l, one);
    }
}

/* Save m, check config.json's format and layout, load the directory back as HF: same layers,
 * bit-identical logits. */
static void roundtrip(const char *name, const char *pattern, int tied, const char *want_type,
                      const char *const *want_layout) {
    const char *dir;
    char p[700];
    hyb_model *m = make_saved(name, pattern, tied, &dir, p);
    if (!m) return;
    cJSON *js = harness_read_json(p);
    CHECK_MSG(js != NULL, "%s: %s missing or not JSON", name, p);
    if (js) {
        CHECK_MSG(!strcmp(harness_jstr(js, "model_type"), want_type), "%s: model_type %s", name,
                  harness_jstr(js, "model_type"));
        const cJSON *lay = cJSON_GetObjectItemCaseSensitive(js, "hybrid_block_layout");
        int n = (int)strlen(pattern);
        CHECK_MSG(cJSON_IsArray(lay) && cJSON_GetArraySize(lay) == n, "%s: layout", name);
        for (int i = 0; i < n && cJSON_IsArray(lay); i++) {
            const cJSON *e = cJSON_GetArrayItem(lay, i);
            CHECK_MSG(cJSON_IsString(e) && !strcmp(e->valuestring, want_layout[i]),
                      "%s: layer %d is %s, want %s", name, i,
                      cJSON_IsString(e) ? e->valuestring : "?", want_layout[i]);
        }
        cJSON_Delete(js);
    }
    hyb_model *h = NULL;
    int rc = hyb_model_load_hf_dir(dir, &h);
    CHECK_MSG(rc == HYB_OK, "%s: load_hf_dir: %s", name, hyb_error());
    if (h) {
        char a[4096], b[4096];
        describe_layers(m, a, sizeof a);
        describe_layers(h, b, sizeof b);
        CHECK_MSG(!strcmp(a, b), "%s: layers differ:\n%s---\n%s", name, a, b);
        CHECK((h->lm_head == h->embed) == tied);
        float *x = logits_of(m), *y = logits_of(h);
        CHECK_MSG(x && y && memcmp(x, y, sizeof(float) * B * T * 48) == 0,
                  "%s: logits differ after the round trip", name);
        free(x);
        free(y);
        hyb_model_free(h);
    }
    hyb_model_free(m);
}

static void test_deltanet_hybrid(void) {
    static const char *const want[] = {"mha", "deltanet", "identity", "gated_deltanet", "mamba1",
                                       "deltanet"};
    roundtrip("dn", "tdigmd", 0, "hyb_hybrid", want);
    static const char *const want2[] = {"gated_deltanet", "deltanet", "gated_deltanet"};
    roundtrip("dn_tied", "gdg", 1, "hyb_hybrid", want2);
    /* the fla options survive the round trip (describe names them; the logits are bit-equal) */
    static const char *const want3[] = {"mha", "deltanet", "gated_deltanet", "deltanet"};
    roundtrip("dn_opts", "toho", 0, "hyb_hybrid", want3);
}

/* the options are written only when set: a default deltanet has none of them */
static void test_deltanet_option_keys(void) {
    const char *dir;
    char p[700];
    hyb_model *m = make_saved("dnoptkeys", "toh", 0, &dir, p);
    if (!m) return;
    cJSON *js = harness_read_json(p);
    const cJSON *mc = js ? cJSON_GetObjectItemCaseSensitive(js, "mixer_cfg") : NULL;
    const cJSON *dn = mc ? cJSON_GetObjectItemCaseSensitive(mc, "deltanet") : NULL;
    const cJSON *gd = mc ? cJSON_GetObjectItemCaseSensitive(mc, "gated_deltanet") : NULL;
    CHECK_MSG(cJSON_IsObject(dn) && cJSON_IsObject(gd), "mixer_cfg.deltanet / gated_deltanet");
    CHECK(harness_jnum(dn, "num_v_heads") == 4 && harness_jnum(dn, "expand_v") == 0.5);
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(dn, "use_gate")));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(dn, "allow_neg_eigval")));
    CHECK(!cJSON_GetObjectItemCaseSensitive(dn, "use_short_conv"));
    CHECK(harness_jnum(gd, "expand_v") == 2.0);
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(gd, "use_short_conv")));
    CHECK(!cJSON_GetObjectItemCaseSensitive(gd, "num_v_heads") &&
          !cJSON_GetObjectItemCaseSensitive(gd, "use_gate") &&
          !cJSON_GetObjectItemCaseSensitive(gd, "allow_neg_eigval"));
    cJSON_Delete(js);
    hyb_model_free(m);
    m = make_saved("dnoptkeys0", "dgt", 0, &dir, p); /* defaults: no option keys */
    if (!m) return;
    js = harness_read_json(p);
    mc = js ? cJSON_GetObjectItemCaseSensitive(js, "mixer_cfg") : NULL;
    dn = mc ? cJSON_GetObjectItemCaseSensitive(mc, "deltanet") : NULL;
    static const char *const keys[] = {"num_v_heads", "expand_v", "use_gate", "use_short_conv",
                                       "allow_neg_eigval"};
    for (int i = 0; i < 5; i++)
        CHECK_MSG(dn && !cJSON_GetObjectItemCaseSensitive(dn, keys[i]), "default config has %s",
                  keys[i]);
    cJSON_Delete(js);
    hyb_model_free(m);
}

static void test_deltanet_keys(void) {
    const char *dir;
    char p[700];
    hyb_model *m = make_saved("dnkeys", "dgt", 0, &dir, p);
    if (!m) return;
    cJSON *js = harness_read_json(p);
    const cJSON *mc = js ? cJSON_GetObjectItemCaseSensitive(js, "mixer_cfg") : NULL;
    const cJSON *dn = mc ? cJSON_GetObjectItemCaseSensitive(mc, "deltanet") : NULL;
    const cJSON *gd = mc ? cJSON_GetObjectItemCaseSensitive(mc, "gated_deltanet") : NULL;
    CHECK_MSG(cJSON_IsObject(dn) && cJSON_IsObject(gd), "mixer_cfg.deltanet / gated_deltanet");
    CHECK(harness_jnum(dn, "n_heads") == 2 && harness_jnum(dn, "head_dim") == 8 &&
          harness_jnum(dn, "conv_size") == 4);
    CHECK(harness_jnum(dn, "chunk") == 4 && harness_jnum(dn, "norm_eps") == 1e-4);
    CHECK(harness_jnum(gd, "n_heads") == 4 && harness_jnum(gd, "conv_size") == 3 &&
          harness_jnum(gd, "chunk") == 8);
    CHECK(harness_jnum(js, "num_attention_heads") == 4 &&
          harness_jnum(js, "rope_theta") == 50000.0);
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(js, "attention_bias")));
    cJSON_Delete(js);
    hyb_model_free(m);
}

static void test_bias_and_identity(void) {
    static const char *const want[] = {"mha", "mamba1", "mamba1", "mha"};
    roundtrip("bias", "bmmb", 0, "hyb_hybrid", want);
    static const char *const want2[] = {"mamba1", "mha", "identity"};
    roundtrip("nodbl", "nti", 0, "hyb_hybrid", want2); /* double_dt_bias = false */
    static const char *const want3[] = {"t", "t", "i", "t"};
    roundtrip("tti", "ttit", 1, "apriel_hybrid_ssm", want3);
    static const char *const want4[] = {"m2", "t", "i", "m2"};
    roundtrip("apriel", "mtim", 0, "apriel_hybrid_ssm", want4);
}

static void expect_import_error(const char *name, const char *pattern, const char *from,
                                const char *to, const char *n1, const char *n2);

/* mamba2 (hyb_hybrid only): mixer_cfg.mamba2 carries every shape key; the hybrid round-trips with
 * bit-identical logits; a missing key is an error naming it */
static void test_mamba2_hybrid(void) {
    static const char *const want[] = {"mha", "mamba2", "identity", "mamba2", "deltanet"};
    roundtrip("mamba2", "tsisd", 0, "hyb_hybrid", want);
    const char *dir;
    char p[700];
    hyb_model *m = make_saved("mamba2keys", "st", 1, &dir, p);
    if (!m) return;
    cJSON *js = harness_read_json(p);
    const cJSON *mc = js ? cJSON_GetObjectItemCaseSensitive(js, "mixer_cfg") : NULL;
    const cJSON *o = mc ? cJSON_GetObjectItemCaseSensitive(mc, "mamba2") : NULL;
    CHECK_MSG(cJSON_IsObject(o), "mixer_cfg.mamba2");
    CHECK(harness_jnum(o, "d_inner") == 48 && harness_jnum(o, "headdim") == 12 &&
          harness_jnum(o, "ngroups") == 2 && harness_jnum(o, "d_state") == 8 &&
          harness_jnum(o, "d_conv") == 3 && harness_jnum(o, "chunk_size") == 5 &&
          harness_jnum(o, "norm_eps") == 1e-4);
    cJSON_Delete(js);
    hyb_model_free(m);
    expect_import_error("mamba2nokey", "ts", "\"headdim\": 12", "\"head_dim\": 12", "mamba2",
                        "\"headdim\" is missing");
}

/* Layers of one mixer type must agree: two deltanet configs have no HF form. */
static void test_disagreeing_layers(void) {
    const char *dir;
    char p[700];
    hyb_model *m = make_saved("disagree", "tde", 0, &dir, p);
    if (!m) return;
    CHECK_MSG(access(p, F_OK) != 0, "config.json written for two deltanet configs");
    snprintf(p, sizeof p, "%s/layermap.toml", dir);
    CHECK(access(p, F_OK) == 0);
    hyb_model_free(m);
}

/* The export of the hybrid of tests/data/apriel/model (test_apriel.c's make_hybrid, written as
 * that fixture before the hooks existed) has the same keys and values. */
static void test_apriel_export_unchanged(void) {
    char ref[700];
    snprintf(ref, sizeof ref, "%s/apriel/model", harness_data_dir());
    hyb_model *m = NULL;
    int rc = hyb_model_load(ref, &m);
    CHECK_MSG(rc == HYB_OK, "load %s: %s", ref, hyb_error());
    if (!m) return;
    const char *dir = sub("apriel_again");
    CHECK(hyb_model_save(m, dir) == HYB_OK);
    char p[700], q[800];
    snprintf(p, sizeof p, "%s/config.json", dir);
    snprintf(q, sizeof q, "%s/config.json", ref);
    cJSON *a = harness_read_json(p), *b = a ? cJSON_Duplicate(a, 1) : NULL;
    cJSON_Delete(a);
    a = harness_read_json(q);
    /* the key added since: n_qk_heads = d_inner / d_state = 32 / 4 */
    cJSON *ssm = b ? cJSON_GetObjectItemCaseSensitive(b, "ssm_cfg") : NULL;
    CHECK_MSG(harness_jnum(ssm, "n_qk_heads") == 8, "ssm_cfg.n_qk_heads %g",
              harness_jnum(ssm, "n_qk_heads"));
    if (ssm) cJSON_DeleteItemFromObjectCaseSensitive(ssm, "n_qk_heads");
    /* and the names of the released checkpoints (issue 16): the fixture has the older ones */
    CHECK(!strcmp(harness_jstr(b, "model_type"), "apriel_hybrid_ssm"));
    CHECK(cJSON_GetObjectItemCaseSensitive(b, "auto_map") != NULL);
    if (b) {
        cJSON_DeleteItemFromObjectCaseSensitive(b, "auto_map");
        cJSON_ReplaceItemInObjectCaseSensitive(b, "model_type", cJSON_CreateString("apriel_h"));
        cJSON *arch = cJSON_CreateArray();
        cJSON_AddItemToArray(arch, cJSON_CreateString("AprielHForCausalLM"));
        cJSON_ReplaceItemInObjectCaseSensitive(b, "architectures", arch);
    }
    CHECK_MSG(a && b && cJSON_Compare(a, b, 1), "exported config.json differs from %s", q);
    cJSON_Delete(a);
    cJSON_Delete(b);
    hyb_model_free(m);
}

/* A config.json written by hand (with the weights of a saved model). */
static void expect_import_error(const char *name, const char *pattern, const char *from,
                                const char *to, const char *n1, const char *n2) {
    const char *dir;
    char p[700];
    hyb_model *m = make_saved(name, pattern, 0, &dir, p);
    if (!m) return;
    hyb_model_free(m);
    char *buf = harness_read_file(p, NULL);
    char *at = buf ? strstr(buf, from) : NULL;
    CHECK_MSG(at != NULL, "%s: '%s' not in config.json", name, from);
    if (!at) {
        free(buf);
        return;
    }
    static char out[1 << 16];
    snprintf(out, sizeof out, "%.*s%s%s", (int)(at - buf), buf, to, at + strlen(from));
    free(buf);
    CHECK(hyb_atomic_write_buf(p, out, strlen(out)) == HYB_OK);
    hyb_model *h = NULL;
    int rc = hyb_model_load_hf_dir(dir, &h);
    CHECK_MSG(rc < 0 && !h, "%s: loaded", name);
    const char *e = hyb_error();
    CHECK_MSG(strstr(e, n1) && strstr(e, n2) && strstr(e, "config.json"), "%s: error: %s", name,
              e);
    hyb_model_free(h);
}

static void test_import_errors(void) {
    expect_import_error("unknown", "td", "\"deltanet\"]", "\"deltanot\"]", "\"deltanot\"",
                        "hybrid_block_layout[1]");
    expect_import_error("nokey", "td", "\"n_heads\": 2", "\"n_hedas\": 2", "deltanet",
                        "\"n_heads\" is missing");
    expect_import_error("badtype", "td", "\"head_dim\": 8,\n      \"conv_size\"",
                        "\"head_dim\": \"8\",\n      \"conv_size\"", "deltanet", "head_dim");
    expect_import_error("badtag", "mt", "\"m2\"", "\"m9\"", "\"m9\"", "hybrid_block_layout[0]");
}

/* Replace `from` by `to` in dir/config.json. */
static int edit_config(const char *dir, const char *from, const char *to) {
    char p[700];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "rb");
    static char buf[1 << 16], out[1 << 16];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    char *at = strstr(buf, from);
    if (!at) return 0;
    snprintf(out, sizeof out, "%.*s%s%s", (int)(at - buf), buf, to, at + strlen(from));
    return hyb_atomic_write_buf(p, out, strlen(out)) == HYB_OK;
}

/* issue 16: "d_inner": null means expand * hidden_size (the HF Mamba2 module and hybrid cache);
 * it used to fail with "key d_inner is missing". */
static void test_d_inner_null(void) {
    hyb_model *m = make("mtim", 0); /* d_inner 32 = 1 * d_model */
    if (!m) return;
    const char *dir = sub("dinner");
    CHECK(hyb_model_save(m, dir) == HYB_OK);
    CHECK(edit_config(dir, "\"d_inner\": 32", "\"d_inner\": null"));
    hyb_model *h = NULL;
    int rc = hyb_model_load_hf_dir(dir, &h);
    CHECK_MSG(rc == HYB_OK, "d_inner null, expand 1: %s", hyb_error());
    if (h) {
        float *x = logits_of(m), *y = logits_of(h);
        CHECK(x && y && memcmp(x, y, sizeof(float) * B * T * 48) == 0);
        free(x);
        free(y);
        hyb_model_free(h);
    }
    /* expand 2: d_inner 64, which the weights do not have: the error names the tensor */
    CHECK(edit_config(dir, "\"expand\": 1", "\"expand\": 2"));
    h = NULL;
    rc = hyb_model_load_hf_dir(dir, &h);
    CHECK_MSG(rc < 0 && !h && strstr(hyb_error(), "in_proj.weight") &&
                  strstr(hyb_error(), "[160, 32]"),
              "d_inner null, expand 2: %s", rc < 0 ? hyb_error() : "loaded");
    hyb_model_free(h);
    /* absent is still an error, naming the key */
    CHECK(edit_config(dir, "\"d_inner\": null", "\"d_innr\": null"));
    rc = hyb_model_load_hf_dir(dir, &h);
    CHECK_MSG(rc < 0 && strstr(hyb_error(), "ssm_cfg") &&
                  strstr(hyb_error(), "\"d_inner\" is missing"),
              "%s", hyb_error());
    hyb_model_free(m);
}

/* issue 16: no tensors the HF side lacks for identity layers; the native load restores them. */
static void test_identity_tensors_omitted(void) {
    static const char *const pats[] = {"mtim", "tdigmd"};
    for (int k = 0; k < 2; k++) {
        const char *dir;
        char p[700];
        hyb_model *m = make_saved(k ? "omit_dn" : "omit_apriel", pats[k], k, &dir, p);
        if (!m) return;
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        hyb_safetensors *st = NULL;
        CHECK_MSG(hyb_safetensors_open(p, &st) == HYB_OK, "%s", hyb_error());
        int n_layer2 = 0, n_all = st ? hyb_safetensors_count(st) : 0;
        for (int i = 0; i < n_all; i++)
            n_layer2 += !strncmp(hyb_safetensors_tensor(st, i)->name, "model.layers.2.", 15);
        CHECK_MSG(n_layer2 == 0, "%s: %d tensors of identity layer 2 saved", pats[k], n_layer2);
        CHECK_MSG(n_all == m->n_params - 5, "%s: %d tensors for %d parameters", pats[k], n_all,
                  m->n_params);
        hyb_safetensors_close(st);
        hyb_model *back = NULL;
        int rc = hyb_model_load(dir, &back);
        CHECK_MSG(rc == HYB_OK, "%s: hyb_model_load: %s", pats[k], hyb_error());
        if (back) {
            CHECK(back->n_params == m->n_params);
            float *x = logits_of(m), *y = logits_of(back);
            CHECK_MSG(x && y && memcmp(x, y, sizeof(float) * B * T * 48) == 0,
                      "%s: logits differ after hyb_model_load", pats[k]);
            free(x);
            free(y);
            hyb_model_free(back);
        }
        hyb_model_free(m);
    }
    /* an identity layer that keeps its MLP has no HF form: its tensors stay (and load back) */
    hyb_model *m = make("mtim", 0);
    if (!m) return;
    hyb_layer *ly = &m->layers[2];
    hyb_tensor_f32(ly->w_down)[0] = 0.5f;
    hyb_tensor_f32(ly->w_up)[0] = 0.5f;
    hyb_tensor_f32(ly->w_gate)[0] = 0.5f;
    const char *dir = sub("keep_identity");
    CHECK(hyb_model_save(m, dir) == HYB_OK);
    hyb_model *back = NULL;
    CHECK_MSG(hyb_model_load(dir, &back) == HYB_OK, "%s", hyb_error());
    if (back) {
        float *x = logits_of(m), *y = logits_of(back);
        CHECK(x && y && memcmp(x, y, sizeof(float) * B * T * 48) == 0);
        free(x);
        free(y);
        hyb_model_free(back);
    }
    hyb_model_free(m);
}

/* PLUGINS.md's example: a third-party mixer with the hooks round-trips in hyb_hybrid. */
static void test_example_plugin(void) {
    const char *pp = getenv("HYB_PLUGIN_PATH");
    char path[1024];
    snprintf(path, sizeof path, "%.*s/../example-plugins/libhyb-gain.so",
             pp ? (int)strcspn(pp, ":") : 5, pp ? pp : "build/plugins");
    const hyb_mixer_desc *d = NULL;
    int rc = hyb_plugin_load_file(path, &d);
    CHECK_MSG(rc == HYB_OK && d && !strcmp(d->name, "gain"), "%s: %s", path, hyb_error());
    if (rc != HYB_OK) return;
    static const char *const map =
        "[model]\nname = \"gain-test\"\nd_model = 32\nn_layers = 3\nvocab_size = 48\n"
        "d_ff = 40\nnorm_eps = 1e-5\ntie_embeddings = true\nmax_seq = 64\n\n"
        "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\nn_heads = 4\n\n"
        "[mixers.g]\ntype = \"gain\"\nsymbol = \"x\"\ninit = 0.75\n\n"
        "[layout]\npattern = \"xtx\"\n";
    hyb_layermap *lm = NULL;
    hyb_model *m = NULL, *h = NULL;
    CHECK_MSG(hyb_layermap_parse(map, "inline-gain.toml", &lm) == HYB_OK, "%s", hyb_error());
    CHECK_MSG(lm && hyb_model_build(lm, 5, &m) == HYB_OK, "%s", hyb_error());
    if (!m) return;
    hyb_tensor *w = hyb_model_param(m, "model.layers.2.mixer.weight");
    CHECK(w != NULL);
    if (w) hyb_tensor_f32(w)[3] = -2.5f; /* a loaded weight, not a re-initialised one */
    const char *dir = sub("gain");
    CHECK(hyb_model_save(m, dir) == HYB_OK);
    char p[700];
    snprintf(p, sizeof p, "%s/config.json", dir);
    cJSON *js = harness_read_json(p);
    const cJSON *mc = js ? cJSON_GetObjectItemCaseSensitive(js, "mixer_cfg") : NULL;
    const cJSON *g = mc ? cJSON_GetObjectItemCaseSensitive(mc, "gain") : NULL;
    CHECK_MSG(!strcmp(harness_jstr(js, "model_type"), "hyb_hybrid") &&
                  harness_jnum(g, "init") == 0.75,
              "config.json of the gain hybrid");
    cJSON_Delete(js);
    rc = hyb_model_load_hf_dir(dir, &h);
    CHECK_MSG(rc == HYB_OK, "load_hf_dir: %s", hyb_error());
    if (h) {
        char a[2048], b[2048];
        describe_layers(m, a, sizeof a);
        describe_layers(h, b, sizeof b);
        CHECK_MSG(!strcmp(a, b), "layers differ:\n%s---\n%s", a, b);
        float *x = logits_of(m), *y = logits_of(h);
        CHECK(x && y && memcmp(x, y, sizeof(float) * B * T * 48) == 0);
        free(x);
        free(y);
        hyb_model_free(h);
    }
    hyb_model_free(m);
}

/* --dtype bf16 (issue 16): every tensor stored as BF16, torch_dtype "bfloat16", and the model
 * read back holds each parameter rounded to bf16 (nearest even), bit for bit. */
static void test_bf16_export(void) {
    hyb_model *m = make("tmtm", 0); /* no identity layer: its norms are not stored (1 on load) */
    if (!m) return;
    const char *dir = sub("bf16");
    CHECK_MSG(hyb_model_save_as(m, dir, HYB_BF16) == HYB_OK, "%s", hyb_error());
    CHECK(hyb_model_save_as(m, dir, HYB_Q8_0) == HYB_ERR_ARG);
    char p[700];
    snprintf(p, sizeof p, "%s/config.json", dir);
    cJSON *js = harness_read_json(p);
    CHECK(js && !strcmp(harness_jstr(js, "torch_dtype"), "bfloat16"));
    cJSON_Delete(js);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    hyb_safetensors *st = NULL;
    CHECK_MSG(hyb_safetensors_open(p, &st) == HYB_OK, "%s", hyb_error());
    int n_bf16 = 0, n = st ? hyb_safetensors_count(st) : 0;
    for (int i = 0; i < n; i++) n_bf16 += hyb_safetensors_tensor(st, i)->dtype == HYB_ST_BF16;
    CHECK_MSG(n > 0 && n_bf16 == n, "%d of %d tensors stored as BF16", n_bf16, n);
    hyb_safetensors_close(st);
    hyb_model *h = NULL;
    CHECK_MSG(hyb_model_load_hf_dir(dir, &h) == HYB_OK, "%s", hyb_error());
    if (h) {
        int bad = 0;
        for (int i = 0; i < m->n_params && i < h->n_params; i++) {
            const float *a = hyb_tensor_f32(m->params[i]), *b = hyb_tensor_f32(h->params[i]);
            for (int64_t j = 0, k = hyb_tensor_numel(m->params[i]); j < k; j++)
                bad += hyb_bf16_to_f32(hyb_f32_to_bf16(a[j])) != b[j];
        }
        CHECK_MSG(bad == 0, "%d parameters differ from their bf16 rounding after the reload", bad);
        hyb_model_free(h);
    }
    hyb_model_free(m);
}

int main(void) {
    static const char *const need[] = {"mha", "mamba1", "mamba2", "deltanet", "gated_deltanet"};
    for (int i = 0; i < 5; i++) {
        const hyb_mixer_desc *d;
        if (hyb_plugin_find(need[i], &d) != HYB_OK) {
            fprintf(stderr, "skipping: plugin %s is not available: %s\n", need[i], hyb_error());
            return HARNESS_SKIP;
        }
    }
    hyb_log_set_level(HYB_LOG_WARN);
    if (harness_mkdtemp(g_dir, sizeof g_dir, "hf_hooks")) return 1;
    RUN(test_apriel_export_unchanged);
    RUN(test_deltanet_hybrid);
    RUN(test_deltanet_keys);
    RUN(test_deltanet_option_keys);
    RUN(test_bias_and_identity);
    RUN(test_mamba2_hybrid);
    RUN(test_disagreeing_layers);
    RUN(test_import_errors);
    RUN(test_d_inner_null);
    RUN(test_identity_tensors_omitted);
    RUN(test_example_plugin);
    RUN(test_bf16_export);
    harness_rm_rf(g_dir);
    return harness_done();
}
