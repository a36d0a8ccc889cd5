/* tests/test_apriel.c: hybrids in the HF apriel_h format (hyb_model_save writes config.json with
 * hybrid_block_layout + ssm_cfg; hyb_model_load_hf_dir reads it back).
 *
 *  - a small random hybrid (mha + mamba1 + identity layers) saved: config.json carries the right
 *    keys and values; loading the directory as HF gives bitwise-identical logits;
 *  - an identity layer with a non-zero MLP (not expressible: apriel_h "i" skips the whole block)
 *    and mamba1 layers with different configs: no config.json, the save still succeeds;
 *  - hand-written apriel_h config.json fixtures (tests/data/apriel/): an "m2d" layer, a missing
 *    ssm_cfg key -> clear errors naming the value / key and the file;
 *  - independent check: tests/data/apriel/model/ (a hybrid saved by this test, see
 *    HYB_APRIEL_EXPORT below) loaded by tests/reference/apriel_ref.py (PyTorch, float64, built from
 *    config.json alone) gives golden_logits.bin; hyb's logits must match (rel err < 1e-5).
 *
 * Regenerating the fixture (only when the format changes):
 *   HYB_APRIEL_EXPORT=tests/data/apriel/model build/tests/test_apriel
 *   /work/venv/bin/python3 tests/reference/apriel_ref.py
 */
#include <dirent.h>
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

static char g_dir[512];

static const char *sub(const char *name) { return harness_sub(g_dir, name); }

/* layers: t (mha, GQA 4/2 heads of 8), m (mamba1, repeat 2), i (identity), m */
#define HYBRID_MAP                                                                                 \
    "[model]\nname = \"apriel-test\"\nd_model = 32\nn_layers = 4\nvocab_size = 48\nd_ff = 40\n"    \
    "norm_eps = 1e-5\ntie_embeddings = %s\nmax_seq = 64\n\n"                                       \
    "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n"   \
    "rope_theta = 10000.0\n\n"                                                                     \
    "[mixers.m2]\ntype = \"mamba1\"\nsymbol = \"m\"\nd_inner = 32\nd_xb = 16\nd_state = 4\n"       \
    "dt_rank = 3\nd_conv = 3\n\n"                                                                  \
    "[mixers.skip]\ntype = \"identity\"\nsymbol = \"i\"\n\n"                                       \
    "[layout]\npattern = \"tmim\"\n"

static unsigned long long g_rng;

/* The hybrid, with its norms, conv biases, A_log and D perturbed (init leaves them constant, so a
 * loader mixing them up would go unnoticed) and the identity layer's MLP zero unless keep_mlp. */
static hyb_model *make_hybrid(int tied, int keep_mlp) {
    char text[2048];
    snprintf(text, sizeof text, HYBRID_MAP, tied ? "true" : "false");
    hyb_model *m = harness_build_model(text, "inline-apriel.toml", 4242);
    if (!m) return NULL;
    g_rng = 12345;
    for (int i = 0; i < m->n_params; i++) {
        hyb_tensor *t = m->params[i];
        const char *n = t->name;
        float *x = hyb_tensor_f32(t);
        int64_t k = hyb_tensor_numel(t);
        if (strstr(n, "layernorm") || strstr(n, "model.norm") || strstr(n, "conv1d.bias") ||
            strstr(n, ".D") || strstr(n, "A_log"))
            for (int64_t j = 0; j < k; j++)
                x[j] += 0.3f * harness_frand(&g_rng);
    }
    if (!keep_mlp) {
        hyb_layer *ly = &m->layers[2];
        memset(hyb_tensor_f32(ly->w_gate), 0, hyb_tensor_nbytes(ly->w_gate));
        memset(hyb_tensor_f32(ly->w_up), 0, hyb_tensor_nbytes(ly->w_up));
        memset(hyb_tensor_f32(ly->w_down), 0, hyb_tensor_nbytes(ly->w_down));
    }
    return m;
}

enum { B = 2, T = 9 };
static const int32_t IDS[B * T] = {1, 5, 9, 47, 0, 3, 3, 17, 22, 40, 2, 8, 31, 7, 11, 46, 19, 4};




static void roundtrip(int tied) {
    hyb_model *m = make_hybrid(tied, 0);
    if (!m) return;
    const char *dir = sub(tied ? "tied" : "untied");
    CHECK(hyb_model_save(m, dir) == HYB_OK);
    char p[700];
    snprintf(p, sizeof p, "%s/config.json", dir);
    cJSON *js = harness_read_json(p);
    CHECK_MSG(js != NULL, "%s missing or not JSON", p);
    if (js) {
        /* the names of the released checkpoints and Fast-LLM's export (issue 16) */
        CHECK(!strcmp(harness_jstr(js, "model_type"), "apriel_hybrid_ssm"));
        const cJSON *arch = cJSON_GetObjectItemCaseSensitive(js, "architectures");
        CHECK(cJSON_IsArray(arch) && cJSON_GetArraySize(arch) == 1 &&
              !strcmp(cJSON_GetArrayItem(arch, 0)->valuestring, "AprielHybridSSMForCausalLM"));
        const cJSON *am = cJSON_GetObjectItemCaseSensitive(js, "auto_map");
        CHECK(am && !strcmp(harness_jstr(am, "AutoModelForCausalLM"),
                            "modeling_apriel_hybrid_ssm.AprielHybridSSMForCausalLM") &&
              !strcmp(harness_jstr(am, "AutoConfig"),
                      "configuration_apriel_hybrid_ssm.AprielHybridSSMConfig"));
        CHECK(harness_jnum(js, "hidden_size") == 32 && harness_jnum(js, "intermediate_size") == 40);
        CHECK(harness_jnum(js, "num_hidden_layers") == 4 && harness_jnum(js, "vocab_size") == 48);
        CHECK(harness_jnum(js, "num_attention_heads") == 4 &&
              harness_jnum(js, "num_key_value_heads") == 2);
        CHECK(harness_jnum(js, "head_dim") == 8 && harness_jnum(js, "rope_theta") == 10000.0);
        CHECK(harness_jnum(js, "rms_norm_eps") == (double)1e-5f ||
              harness_jnum(js, "rms_norm_eps") == 1e-5);
        CHECK(harness_jnum(js, "max_position_embeddings") == 64);
        CHECK(!strcmp(harness_jstr(js, "hidden_act"), "silu"));
        CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(js, "tie_word_embeddings")) == tied);
        const cJSON *lay = cJSON_GetObjectItemCaseSensitive(js, "hybrid_block_layout");
        static const char *const want[] = {"t", "m2", "i", "m2"};
        CHECK(cJSON_IsArray(lay) && cJSON_GetArraySize(lay) == 4);
        for (int i = 0; i < 4 && cJSON_IsArray(lay); i++) {
            const cJSON *e = cJSON_GetArrayItem(lay, i);
            CHECK_MSG(cJSON_IsString(e) && !strcmp(e->valuestring, want[i]), "layer %d", i);
        }
        const cJSON *ssm = cJSON_GetObjectItemCaseSensitive(js, "ssm_cfg");
        CHECK(cJSON_IsObject(ssm));
        CHECK(harness_jnum(ssm, "d_state") == 4 && harness_jnum(ssm, "d_xb") == 16 &&
              harness_jnum(ssm, "d_inner") == 32);
        CHECK(harness_jnum(ssm, "dt_rank") == 3 && harness_jnum(ssm, "d_conv") == 3);
        CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ssm, "conv_bias")));
        CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(ssm, "bias")));
        CHECK(!strcmp(harness_jstr(ssm, "activation"), "silu"));
        CHECK(harness_jnum(ssm, "dt_min") == 0.001 && harness_jnum(ssm, "dt_max") == 0.1 &&
              harness_jnum(ssm, "dt_init_floor") == 1e-4);
        cJSON_Delete(js);
    }
    hyb_model *h = NULL;
    int rc = hyb_model_load_hf_dir(dir, &h);
    CHECK_MSG(rc == HYB_OK, "load_hf_dir: %s", hyb_error());
    if (h) {
        CHECK(h->L == 4 && h->layers[2].mixer == NULL);
        CHECK(h->layers[0].mixer && !strcmp(h->layers[0].mixer->type, "mha"));
        CHECK(h->layers[1].mixer && !strcmp(h->layers[1].mixer->type, "mamba1"));
        CHECK(h->layers[3].mixer && !strcmp(h->layers[3].mixer->type, "mamba1"));
        CHECK((h->lm_head == h->embed) == tied);
        float *a = harness_logits(m, IDS, B, T), *b = harness_logits(h, IDS, B, T);
        CHECK(a && b && memcmp(a, b, sizeof(float) * B * T * 48) == 0);
        free(a);
        free(b);
        hyb_model_free(h);
    }
    hyb_model_free(m);
}

static void test_roundtrip_untied(void) {
    roundtrip(0);
}
static void test_roundtrip_tied(void) {
    roundtrip(1);
}

/* Not expressible as apriel_h: the save succeeds (safetensors + layermap.toml), no config.json,
 * and a stale one from an earlier save is removed. */
static void test_not_expressible(void) {
    hyb_model *m = make_hybrid(0, 1); /* identity layer keeps its random MLP */
    if (!m) return;
    const char *dir = sub("noncfg");
    char p[700];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = (hyb_mkdir_p(dir) == HYB_OK) ? fopen(p, "w") : NULL;
    if (f) fputs("{\"model_type\": \"apriel_h\"}", f), fclose(f);
    CHECK(hyb_model_save(m, dir) == HYB_OK);
    CHECK_MSG(access(p, F_OK) != 0, "config.json written for an identity layer with an MLP");
    snprintf(p, sizeof p, "%s/layermap.toml", dir);
    CHECK(access(p, F_OK) == 0);
    /* the hyb-native description still loads */
    hyb_model *back = NULL;
    CHECK(hyb_model_load(dir, &back) == HYB_OK);
    hyb_model_free(back);
    /* two mamba1 layers with different configs */
    int rc = hyb_model_swap(m, 2, "mamba1", NULL, 0, 7); /* defaults: d_state 16, ... */
    CHECK_MSG(rc == HYB_OK, "swap: %s", hyb_error());
    CHECK(hyb_model_save(m, dir) == HYB_OK);
    snprintf(p, sizeof p, "%s/config.json", dir);
    CHECK(access(p, F_OK) != 0);
    hyb_model_free(m);
}

static void expect_error(const char *fixture, const char *needle1, const char *needle2) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/apriel/%s", harness_data_dir(), fixture);
    hyb_model *m = NULL;
    int rc = hyb_model_load_hf_dir(dir, &m);
    CHECK_MSG(rc < 0 && m == NULL, "%s loaded", fixture);
    const char *e = hyb_error();
    CHECK_MSG(strstr(e, needle1) && strstr(e, needle2) && strstr(e, "config.json"),
              "error for %s: %s", fixture, e);
    hyb_model_free(m);
}

static void test_fixture_errors(void) {
    expect_error("bad_m2d", "\"m2d\"", "hybrid_block_layout[1]");
    expect_error("missing_key", "ssm_cfg", "\"d_state\"");
}

/* PyTorch golden (tests/reference/apriel_ref.py). File: int32 magic "APRL", B, T, V, ids[B*T],
 * then float32 logits [B, T, V]. */
static void test_pytorch_golden(void) {
    char dir[700], path[800];
    snprintf(dir, sizeof dir, "%s/apriel/model", harness_data_dir());
    snprintf(path, sizeof path, "%s/apriel/golden_logits.bin", harness_data_dir());
    harness_golden gold;
    if (harness_read_golden(path, 0x4C525041, &gold)) return; /* (tests/reference/apriel_ref.py) */
    const int b = gold.b, t = gold.t, v = gold.v;
    const int32_t *ids = gold.ids;
    const float *ref = gold.logits;
    CHECK(b <= 8 && t <= 64 && v == 48);
    hyb_model *m = NULL;
    int rc = hyb_model_load_hf_dir(dir, &m);
    CHECK_MSG(rc == HYB_OK, "load %s: %s", dir, hyb_error());
    if (m) {
        float *y = harness_logits(m, ids, b, t);
        double num = 0, den = 0, maxd = 0;
        for (int i = 0; y && i < b * t * v; i++) {
            double d = (double)y[i] - ref[i];
            num += d * d;
            den += (double)ref[i] * ref[i];
            if (fabs(d) > maxd) maxd = fabs(d);
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        printf("  hyb vs PyTorch apriel_h logits: rel err %.3g, max abs diff %.3g\n", rel, maxd);
        CHECK_MSG(y && rel < 1e-5, "rel err %g", rel);
        free(y);
        hyb_model_free(m);
    }
    harness_golden_free(&gold);
}

int main(void) {
    const hyb_mixer_desc *d;
    if (hyb_plugin_find("mha", &d) != HYB_OK || hyb_plugin_find("mamba1", &d) != HYB_OK) {
        fprintf(stderr, "skipping: the mha / mamba1 plugins are not available: %s\n", hyb_error());
        return HARNESS_SKIP;
    }
    hyb_log_set_level(HYB_LOG_WARN);
    const char *exp = getenv("HYB_APRIEL_EXPORT");
    if (exp) { /* write the fixture for tests/reference/apriel_ref.py */
        hyb_model *m = make_hybrid(0, 0);
        int rc = m ? hyb_model_save(m, exp) : HYB_ERR;
        hyb_model_free(m);
        fprintf(stderr, "%s: %s\n", exp, rc == HYB_OK ? "written" : hyb_error());
        return rc == HYB_OK ? 0 : 1;
    }
    if (harness_mkdtemp(g_dir, sizeof g_dir, "apriel")) return 1;
    RUN(test_roundtrip_untied);
    RUN(test_roundtrip_tied);
    RUN(test_not_expressible);
    RUN(test_fixture_errors);
    RUN(test_pytorch_golden);
    harness_rm_rf(g_dir);
    return harness_done();
}
