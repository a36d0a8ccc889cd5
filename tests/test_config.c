/* tests/test_config.c: the TOML shim (hyb_toml / hyb_cfg_*) and layer maps (hyb_layermap_*).
 *
 * Every user error must come back as a status with "source:line:col: ..." naming the offending
 * key or value; positions below are counted by hand from the inline documents.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/config.h"

/* ---- helpers ----------------------------------------------------------------------------------*/

/* Parse `text` as a layer map named "t.toml"; expect status `code` and every non-NULL needle in
 * the message. */
static void expect_map_error(int line, const char *text, int code, const char *n1, const char *n2,
                             const char *n3) {
    hyb_layermap *m = (hyb_layermap *)0x1;
    int rc = hyb_layermap_parse(text, "t.toml", &m);
    const char *msg = hyb_error();
    if (getenv("HYB_TEST_VERBOSE")) printf("  line %d: %s\n", line, msg);
    if (rc != code) harness_fail(__FILE__, line, "rc %d, want %d (message: %s)", rc, code, msg);
    if (m != NULL) harness_fail(__FILE__, line, "out not NULL on failure");
    const char *needles[3] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i] && !strstr(msg, needles[i]))
            harness_fail(__FILE__, line, "message lacks \"%s\": %s", needles[i], msg);
    if (rc == HYB_OK) hyb_layermap_free(m);
}
#define EXPECT_MAP_ERROR(text, code, n1, n2, n3) expect_map_error(__LINE__, text, code, n1, n2, n3)

static int contains(const char *hay, const char *needle) {
    return strstr(hay, needle) != NULL;
}

/* A valid two-mixer map; the error tests below are small edits of it. */
#define MODEL_OK                                                                                   \
    "[model]\n"                                                                                    \
    "d_model = 64\n"                                                                               \
    "n_layers = 4\n"                                                                               \
    "vocab_size = 256\n"                                                                           \
    "d_ff = 128\n"                                                                                 \
    "max_seq = 32\n"
#define MIXERS_OK                                                                                  \
    "[mixers.attn]\n"                                                                              \
    "type = \"mha\"\n"                                                                             \
    "symbol = \"t\"\n"                                                                             \
    "n_heads = 4\n"                                                                                \
    "[mixers.mamba]\n"                                                                             \
    "type = \"m2\"\n"                                                                              \
    "symbol = \"m\"\n"
/* MODEL_OK is lines 1-6, MIXERS_OK lines 7-13, so [layout] starts on line 14. */

/* ---- valid maps -------------------------------------------------------------------------------*/

static void test_smollm2_map(void) {
    hyb_layermap *m = NULL;
    int rc = hyb_layermap_load("graphs/smollm2-135m.toml", &m);
    CHECK_MSG(rc == HYB_OK, "load: %s", hyb_error());
    if (rc != HYB_OK) return;
    CHECK(strcmp(m->name, "smollm2-135m") == 0);
    CHECK(strcmp(m->path, "graphs/smollm2-135m.toml") == 0);
    CHECK(m->d_model == 576 && m->n_layers == 30 && m->vocab_size == 49152);
    CHECK(m->d_ff == 1536 && m->max_seq == 8192 && m->tie_embeddings == 1);
    CHECK_NEAR(m->norm_eps, 1e-5, 1e-12);
    CHECK(m->n_mixers == 1);
    CHECK(strcmp(m->mixers[0].name, "attn") == 0 && strcmp(m->mixers[0].type, "mha") == 0);
    CHECK(m->mixers[0].symbol == 't');
    CHECK_MSG(contains(m->mixers[0].where, "graphs/smollm2-135m.toml:"), "where = %s",
              m->mixers[0].where);
    for (int l = 0; l < 30; l++)
        CHECK(m->layer_mixer[l] == 0);
    int64_t v;
    double f;
    CHECK(hyb_cfg_int(m->mixers[0].table, "n_heads", 0, &v) == HYB_OK && v == 9);
    CHECK(hyb_cfg_int(m->mixers[0].table, "n_kv_heads", 0, &v) == HYB_OK && v == 3);
    CHECK(hyb_cfg_int(m->mixers[0].table, "head_dim", 0, &v) == HYB_OK && v == 64);
    CHECK(hyb_cfg_float(m->mixers[0].table, "rope_theta", 0, &f) == HYB_OK && f == 100000.0);
    char buf[4096];
    hyb_layermap_pattern(m, buf, sizeof buf);
    CHECK(strcmp(buf, "tttttttttttttttttttttttttttttt") == 0);
    hyb_layermap_describe(m, buf, sizeof buf);
    CHECK_MSG(contains(buf, "tttttttttttttttttttttttttttttt"), "describe: %s", buf);
    CHECK_MSG(contains(buf, "layers 0-29") && contains(buf, "attn (mha) x30"), "describe: %s", buf);
    CHECK_MSG(contains(buf, "d_model 576") && contains(buf, "30 layers"), "describe: %s", buf);
    CHECK_MSG(!contains(buf, "mixers:"), "single-mixer maps need no summary: %s", buf);
    hyb_layermap_free(m);
}

static void test_shipped_maps(void) {
    hyb_layermap *m = NULL;
    int rc = hyb_layermap_load("graphs/tiny.toml", &m);
    CHECK_MSG(rc == HYB_OK, "tiny: %s", hyb_error());
    if (rc == HYB_OK) {
        CHECK(m->n_layers == 4 && m->vocab_size == 256 && m->d_model == 128 && m->d_ff == 384);
        CHECK(m->max_seq == 256);
        int64_t h, kv, hd;
        hyb_cfg_int(m->mixers[0].table, "n_heads", 0, &h);
        hyb_cfg_int(m->mixers[0].table, "n_kv_heads", 0, &kv);
        hyb_cfg_int(m->mixers[0].table, "head_dim", 0, &hd);
        CHECK(h == 4 && kv == 2 && h * hd == m->d_model);
        hyb_layermap_free(m);
    }
    rc = hyb_layermap_load("graphs/apriel-nemotron-15b.toml", &m);
    CHECK_MSG(rc == HYB_OK, "apriel: %s", hyb_error());
    if (rc == HYB_OK) {
        CHECK(m->n_layers == 50 && m->d_model == 5120 && m->tie_embeddings == 0);
        int64_t h, kv, hd;
        hyb_cfg_int(m->mixers[0].table, "n_heads", 0, &h);
        hyb_cfg_int(m->mixers[0].table, "n_kv_heads", 0, &kv);
        hyb_cfg_int(m->mixers[0].table, "head_dim", 0, &hd);
        CHECK(h == 32 && kv == 8 && hd == 128);
        for (int l = 0; l < 50; l++)
            CHECK(m->layer_mixer[l] == 0);
        hyb_layermap_free(m);
    }
}

static void test_hybrid_pattern(void) {
    const char *text = MODEL_OK MIXERS_OK "[layout]\npattern = \"t m\\tmt\"\n";
    /* the \t escape is whitespace after decoding: ignored like spaces */
    hyb_layermap *m = NULL;
    int rc = hyb_layermap_parse(text, "hybrid.toml", &m);
    CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
    if (rc != HYB_OK) return;
    CHECK(strcmp(m->name, "hybrid") == 0); /* default name: the source's stem */
    CHECK(m->norm_eps == 1e-5 && m->tie_embeddings == 0);
    CHECK(m->n_mixers == 2);
    CHECK(m->layer_mixer[0] == 0 && m->layer_mixer[1] == 1 && m->layer_mixer[2] == 1 &&
          m->layer_mixer[3] == 0);
    char buf[1024];
    CHECK(strcmp(hyb_layermap_pattern(m, buf, sizeof buf), "tmmt") == 0);
    hyb_layermap_describe(m, buf, sizeof buf);
    CHECK_MSG(contains(buf, "layer 0 ") && contains(buf, "layers 1-2") &&
                  contains(buf, "mamba (m2) x2") && contains(buf, "layer 3 ") &&
                  contains(buf, "tmmt") && contains(buf, "mixers: attn (mha) x2, mamba (m2) x2"),
              "describe: %s", buf);
    /* a tiny buffer truncates and stays terminated */
    char small[8];
    hyb_layermap_describe(m, small, sizeof small);
    CHECK(strlen(small) == 7);
    CHECK(strcmp(hyb_layermap_pattern(m, small, 3), "tm") == 0);

    /* set_layer in place, with range checks */
    CHECK(hyb_layermap_set_layer(m, 3, 1) == HYB_OK && m->layer_mixer[3] == 1);
    CHECK(hyb_layermap_set_layer(m, 4, 0) == HYB_ERR_ARG && contains(hyb_error(), "layer 4"));
    CHECK(hyb_layermap_set_layer(m, 0, 2) == HYB_ERR_ARG && contains(hyb_error(), "index 2"));
    CHECK(strcmp(hyb_layermap_pattern(m, buf, sizeof buf), "tmmm") == 0);

    /* add_mixer: with a table carrying a symbol, without a table, duplicates */
    hyb_toml *doc = hyb_toml_parse_string("type = \"gdn\"\nsymbol = \"g\"\n", "extra.toml");
    CHECK(doc != NULL);
    int k = hyb_layermap_add_mixer(m, "gdn", "gdn", hyb_toml_root(doc));
    CHECK(k == 2 && m->n_mixers == 3 && m->mixers[2].symbol == 'g');
    CHECK_MSG(contains(m->mixers[2].where, "extra.toml:1:1"), "where %s", m->mixers[2].where);
    CHECK(hyb_layermap_add_mixer(m, "gdn", "gdn", hyb_toml_root(doc)) == 2); /* same: reused */
    CHECK(hyb_layermap_add_mixer(m, "gdn", "mamba1", NULL) == HYB_ERR_ARG);
    k = hyb_layermap_add_mixer(m, "ident", "identity", NULL);
    CHECK(k == 3 && m->mixers[3].symbol == 0);
    CHECK(hyb_layermap_set_layer(m, 0, 2) == HYB_OK && hyb_layermap_set_layer(m, 1, 3) == HYB_OK);
    CHECK(strcmp(hyb_layermap_pattern(m, buf, sizeof buf), "gimm") == 0);
    hyb_layermap_free(m);
    hyb_toml_free(doc);
}

/* The released Apriel-H1-30 layout (SPEC.md section 2), written as a spaced pattern, resolves to
 * exactly the published Mamba layers. */
static void test_h1_30_layout(void) {
    const char *text = "[model]\nd_model = 5120\nn_layers = 50\nvocab_size = 131072\n"
                       "d_ff = 14336\nmax_seq = 4096\n"
                       "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\n"
                       "[mixers.m2]\ntype = \"m2\"\nsymbol = \"m\"\n"
                       "[layout]\npattern = \"\"\"\n"
                       "tttmt mmmmt ttttt ttttt mmmmm mtmtt mmmmt mmmmm mmmmm mmmtm\n\"\"\"\n";
    hyb_layermap *m = NULL;
    int rc = hyb_layermap_parse(text, "h1-30.toml", &m);
    CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
    if (rc != HYB_OK) return;
    /* SPEC.md: Mamba: 3, 5, 6, 7, 8, 20-25, 27, 30-33, 35-47, 49 */
    int is_m[50] = {0};
    const int ranges[][2] = {{3, 3}, {5, 8}, {20, 25}, {27, 27}, {30, 33}, {35, 47}, {49, 49}};
    for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++)
        for (int l = ranges[r][0]; l <= ranges[r][1]; l++)
            is_m[l] = 1;
    int n_m = 0;
    for (int l = 0; l < 50; l++) {
        CHECK_MSG(m->layer_mixer[l] == (is_m[l] ? 1 : 0), "layer %d", l);
        n_m += m->layer_mixer[l] == 1;
    }
    CHECK(n_m == 30);
    hyb_layermap_free(m);
}

static void test_layers_list(void) {
    const char *text =
        MODEL_OK MIXERS_OK "[layout]\nlayers = [\"attn\", \"m\", \"mamba\", \"t\"]\n";
    hyb_layermap *m = NULL;
    int rc = hyb_layermap_parse(text, "list.toml", &m);
    CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
    if (rc != HYB_OK) return;
    CHECK(m->layer_mixer[0] == 0 && m->layer_mixer[1] == 1 && m->layer_mixer[2] == 1 &&
          m->layer_mixer[3] == 0);
    hyb_layermap_free(m);

    /* mixers without symbols work with a list; the pattern falls back to the name's first char */
    const char *nosym = MODEL_OK "[mixers.attn]\ntype = \"mha\"\n[mixers.gdn]\ntype = \"gdn\"\n"
                                 "[layout]\nlayers = [\"gdn\", \"attn\", \"attn\", \"gdn\"]\n";
    rc = hyb_layermap_parse(nosym, "nosym.toml", &m);
    CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
    if (rc != HYB_OK) return;
    char buf[64];
    CHECK(strcmp(hyb_layermap_pattern(m, buf, sizeof buf), "gaag") == 0);
    hyb_layermap_free(m);
}

/* ---- layer map errors -------------------------------------------------------------------------*/

static void test_err_malformed_toml(void) {
    EXPECT_MAP_ERROR("[model]\nd_model = 64\nn_layers = \n", HYB_ERR_FORMAT, "t.toml:3:", NULL,
                     NULL);
    EXPECT_MAP_ERROR("[model\n", HYB_ERR_FORMAT, "t.toml:1:", NULL, NULL);
    EXPECT_MAP_ERROR("[model]\nd_model = 1\nd_model = 2\n", HYB_ERR_FORMAT, "t.toml:3:", "d_model",
                     NULL);
    /* through a file: the path is the prefix */
    hyb_layermap *m = NULL;
    int rc = hyb_layermap_load("tests/data/config/malformed.toml", &m);
    CHECK(rc == HYB_ERR_FORMAT && m == NULL);
    CHECK_MSG(contains(hyb_error(), "tests/data/config/malformed.toml:5:"), "%s", hyb_error());
    rc = hyb_layermap_load("tests/data/config/no-such-file.toml", &m);
    CHECK(rc == HYB_ERR_IO && m == NULL);
    CHECK_MSG(contains(hyb_error(), "no-such-file.toml") && contains(hyb_error(), "cannot open"),
              "%s", hyb_error());
}

static void test_err_model_keys(void) {
    /* missing required keys: reported at the [model] header */
    EXPECT_MAP_ERROR("[model]\nn_layers = 4\nvocab_size = 256\nd_ff = 128\nmax_seq = 32\n" MIXERS_OK
                     "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:1:1:", "'d_model'", "missing");
    EXPECT_MAP_ERROR("[model]\nd_model = 64\nn_layers = 4\nvocab_size = 256\nd_ff = 128\n" MIXERS_OK
                     "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:1:1:", "'max_seq'", NULL);
    /* no [model] at all */
    EXPECT_MAP_ERROR(MIXERS_OK "[layout]\npattern = \"tttt\"\n", HYB_ERR_FORMAT,
                     "t.toml:1:1:", "[model]", NULL);
    /* [model] is not a table */
    EXPECT_MAP_ERROR("model = 3\n", HYB_ERR_FORMAT, "t.toml:1:9:", "'model' must be a table", NULL);
    /* wrong types: reported at the value */
    EXPECT_MAP_ERROR("[model]\nd_model = \"576\"\nn_layers = 4\nvocab_size = 256\nd_ff = 128\n"
                     "max_seq = 32\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:2:11:", "'model.d_model' must be an integer",
                     "got string \"576\"");
    EXPECT_MAP_ERROR("[model]\nd_model = 64.0\nn_layers = 4\nvocab_size = 256\nd_ff = 128\n"
                     "max_seq = 32\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:2:11:", "d_model", "got float 64");
    EXPECT_MAP_ERROR(MODEL_OK "norm_eps = \"tiny\"\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:7:12:", "'model.norm_eps' must be a number", NULL);
    EXPECT_MAP_ERROR(MODEL_OK "tie_embeddings = 1\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:7:18:", "'model.tie_embeddings' must be a boolean",
                     NULL);
    EXPECT_MAP_ERROR(MODEL_OK "name = 5\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:7:8:", "'model.name' must be a string", NULL);
}

static void test_err_nonpositive(void) {
    EXPECT_MAP_ERROR("[model]\nd_model = 0\nn_layers = 4\nvocab_size = 256\nd_ff = 128\n"
                     "max_seq = 32\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:2:11:", "model.d_model must be positive (range [1, ", "got 0");
    EXPECT_MAP_ERROR("[model]\nd_model = 64\nn_layers = -4\nvocab_size = 256\nd_ff = 128\n"
                     "max_seq = 32\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:3:12:", "model.n_layers must be positive", "-4");
    EXPECT_MAP_ERROR("[model]\nd_model = 64\nn_layers = 4\nvocab_size = 256\nd_ff = 128\n"
                     "max_seq = 0\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:6:11:", "model.max_seq", NULL);
    EXPECT_MAP_ERROR("[model]\nd_model = 5000000000\nn_layers = 4\nvocab_size = 256\nd_ff = 128\n"
                     "max_seq = 32\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:2:11:", "model.d_model", "too large");
    EXPECT_MAP_ERROR(MODEL_OK "norm_eps = -1e-5\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:7:12:", "norm_eps must be a positive", NULL);
    EXPECT_MAP_ERROR(MODEL_OK "norm_eps = nan\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:7:12:", "norm_eps", NULL);
    /* stated ranges (hyb/config.h): 1e300 used to be accepted and give all-zero logits */
    EXPECT_MAP_ERROR(MODEL_OK "norm_eps = 1e300\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:7:12:", "norm_eps", "in [1e-12, 0.1], got 1e+300");
    EXPECT_MAP_ERROR(MODEL_OK "norm_eps = 1e-30\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:7:12:", "norm_eps", "got 1e-30");
    EXPECT_MAP_ERROR("[model]\nd_model = 100000\nn_layers = 4\nvocab_size = 256\nd_ff = 128\n"
                     "max_seq = 32\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:2:11:", "model.d_model = 100000",
                     "range [1, 65536]");
    EXPECT_MAP_ERROR("[model]\nd_model = 64\nn_layers = 4\nvocab_size = 256\nd_ff = 128\n"
                     "max_seq = 2000000000\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:6:11:", "model.max_seq", "range [1, 16777216]");
}

static void test_err_unknown_keys(void) {
    EXPECT_MAP_ERROR(MODEL_OK "d_modle = 64\n" MIXERS_OK "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:7:1:", "unknown key 'd_modle' in [model]",
                     "did you mean 'd_model'?");
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\npattern = \"tttt\"\n  order = 3\n",
                     HYB_ERR_FORMAT, "t.toml:16:3:", "unknown key 'order' in [layout]",
                     "allowed: pattern, layers");
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\npattern = \"tttt\"\n[train]\nlr = 1\n",
                     HYB_ERR_FORMAT, "t.toml:16:2:", "unknown key 'train' at the top level", NULL);
}

static void test_err_layout_length(void) {
    /* pattern: both numbers, at the value */
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\npattern = \"ttt\"\n", HYB_ERR_FORMAT,
                     "t.toml:15:11:", "layout.pattern has 3 layers", "model.n_layers = 4");
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\npattern = \"tt tt m\"\n", HYB_ERR_FORMAT,
                     "t.toml:15:11:", "has 5 layers", "n_layers = 4");
    /* layers list */
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\nlayers = [\"attn\", \"attn\"]\n", HYB_ERR_FORMAT,
                     "t.toml:15:10:", "layout.layers has 2 entries", "model.n_layers = 4");
}

static void test_err_unknown_symbol(void) {
    /* the column of the offending character itself: '"' at 11, t=12 t=13 ' '=14 x=15 */
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\npattern = \"tt xt\"\n", HYB_ERR_FORMAT,
                     "t.toml:15:15:", "symbol 'x' (layer 2) names no mixer",
                     "'t' (attn), 'm' (mamba)");
    /* literal string, multi-line: line 16 col 3 */
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\npattern = '''\ntm\nmtq'''\n", HYB_ERR_FORMAT,
                     "t.toml:17:3:", "symbol 'q' (layer 4)", NULL);
    /* an escape before the symbol: the column is not exact, the value's start is reported */
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\npattern = \"t\\u0020mmz\"\n", HYB_ERR_FORMAT,
                     "t.toml:15:11:", "symbol 'z'", NULL);
    /* layers list entry: at the element */
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK
                     "[layout]\nlayers = [\"attn\",\n  \"mamab\", \"t\", \"t\"]\n",
                     HYB_ERR_FORMAT, "t.toml:16:3:", "layout.layers[1] = \"mamab\" names no mixer",
                     "known: attn ('t'), mamba ('m')");
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\nlayers = [\"attn\", 3, \"t\", \"t\"]\n",
                     HYB_ERR_FORMAT, "t.toml:15:19:", "'layout.layers[1]' must be a string", NULL);
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\nlayers = \"tttt\"\n", HYB_ERR_FORMAT,
                     "t.toml:15:10:", "'layout.layers' must be an array", NULL);
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\npattern = [\"t\"]\n", HYB_ERR_FORMAT,
                     "t.toml:15:11:", "'layout.pattern' must be a string", NULL);
}

static void test_err_pattern_and_layers(void) {
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\npattern = \"tttt\"\nlayers = [\"t\"]\n",
                     HYB_ERR_FORMAT, "t.toml:16:1:", "both `pattern` and `layers`", NULL);
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK "[layout]\n", HYB_ERR_FORMAT,
                     "t.toml:14:1:", "[layout] needs `pattern`", NULL);
    EXPECT_MAP_ERROR(MODEL_OK MIXERS_OK, HYB_ERR_FORMAT, "t.toml:1:1:", "missing [layout]", NULL);
}

static void test_err_mixers(void) {
    /* duplicate symbol: at the second one, naming both mixers and the first one's place */
    EXPECT_MAP_ERROR(MODEL_OK "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\n"
                              "[mixers.gdn]\ntype = \"gdn\"\nsymbol = \"t\"\n"
                              "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:12:10:", "duplicate symbol 't'",
                     "'attn' (t.toml:9:1)");
    /* a mixer without type: at its header */
    EXPECT_MAP_ERROR(MODEL_OK "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\n"
                              "[mixers.gdn]\nsymbol = \"g\"\nn_heads = 2\n"
                              "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:10:1:", "mixer 'gdn' has no `type`", NULL);
    EXPECT_MAP_ERROR(MODEL_OK "[mixers.attn]\ntype = 1\n[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:8:8:", "'mixers.attn.type' must be a string", NULL);
    EXPECT_MAP_ERROR(MODEL_OK "[mixers.attn]\ntype = \"mha\"\nsymbol = \"tt\"\n"
                              "[layout]\npattern = \"tttt\"\n",
                     HYB_ERR_FORMAT, "t.toml:9:10:", "symbol must be one printable", NULL);
    EXPECT_MAP_ERROR(MODEL_OK "[mixers]\nattn = 3\n[layout]\npattern = \"tttt\"\n", HYB_ERR_FORMAT,
                     "t.toml:8:8:", "'attn' must be a table", NULL);
    EXPECT_MAP_ERROR(MODEL_OK "[mixers]\n[layout]\npattern = \"tttt\"\n", HYB_ERR_FORMAT,
                     "t.toml:7:1:", "[mixers] is empty", NULL);
    EXPECT_MAP_ERROR(MODEL_OK "[layout]\npattern = \"tttt\"\n", HYB_ERR_FORMAT,
                     "t.toml:1:1:", "missing [mixers]", NULL);
}

/* ---- hyb_cfg_* --------------------------------------------------------------------------------*/

static const char *DOC = "title = \"x\"\n"            /* 1 */
                         "[a]\n"                      /* 2 */
                         "zeta = 3\n"                 /* 3 */
                         "alpha = 2.5\n"              /* 4 */
                         "one = 1\n"                  /* 5 */
                         "flag = true\n"              /* 6 */
                         "name = \"hello\"\n"         /* 7 */
                         "list = [\"p\", \"q\", 7]\n" /* 8 */
                         "nums = [1, -2, 3]\n"        /* 9 */
                         "[a.sub]\n"                  /* 10 */
                         "k = 1\n";                   /* 11 */

static void test_cfg_getters(void) {
    hyb_toml *doc = hyb_toml_parse_string(DOC, "doc.toml");
    CHECK_MSG(doc != NULL, "%s", hyb_error());
    if (!doc) return;
    const hyb_cfg_table *root = hyb_toml_root(doc);
    const hyb_cfg_table *a = hyb_cfg_subtable(root, "a");
    CHECK(a != NULL);
    CHECK(hyb_cfg_subtable(root, "title") == NULL && hyb_cfg_subtable(root, "nope") == NULL);
    CHECK(hyb_cfg_subtable(root, "a") == a); /* stable */
    CHECK(hyb_cfg_has(a, "zeta") && !hyb_cfg_has(a, "beta"));

    int64_t i;
    double f;
    int b;
    const char *s;
    CHECK(hyb_cfg_int(a, "zeta", 0, &i) == HYB_OK && i == 3);
    CHECK(hyb_cfg_int(a, "missing", -7, &i) == HYB_OK && i == -7);
    CHECK(hyb_cfg_float(a, "alpha", 0, &f) == HYB_OK && f == 2.5);
    CHECK(hyb_cfg_float(a, "one", 0, &f) == HYB_OK && f == 1.0); /* integers are numbers */
    CHECK(hyb_cfg_float(a, "missing", 0.25, &f) == HYB_OK && f == 0.25);
    CHECK(hyb_cfg_bool(a, "flag", 0, &b) == HYB_OK && b == 1);
    CHECK(hyb_cfg_bool(a, "missing", 1, &b) == HYB_OK && b == 1);
    CHECK(hyb_cfg_string(a, "name", NULL, &s) == HYB_OK && strcmp(s, "hello") == 0);
    CHECK(hyb_cfg_string(a, "missing", "dflt", &s) == HYB_OK && strcmp(s, "dflt") == 0);

    /* wrong types: the value's position, the dotted key, both types */
    CHECK(hyb_cfg_int(a, "alpha", 0, &i) == HYB_ERR_FORMAT);
    CHECK_MSG(
        contains(hyb_error(), "doc.toml:4:9: key 'a.alpha' must be an integer, got float 2.5"),
        "%s", hyb_error());
    CHECK(hyb_cfg_bool(a, "name", 0, &b) == HYB_ERR_FORMAT);
    CHECK_MSG(contains(hyb_error(), "doc.toml:7:8:") && contains(hyb_error(), "a.name"), "%s",
              hyb_error());
    CHECK(hyb_cfg_string(a, "zeta", NULL, &s) == HYB_ERR_FORMAT);
    CHECK_MSG(contains(hyb_error(), "doc.toml:3:8:") && contains(hyb_error(), "got integer"), "%s",
              hyb_error());
    CHECK(hyb_cfg_float(a, "flag", 0, &f) == HYB_ERR_FORMAT);
    CHECK_MSG(contains(hyb_error(), "got boolean true"), "%s", hyb_error());
    CHECK(hyb_cfg_int(root, "a", 0, &i) == HYB_ERR_FORMAT && contains(hyb_error(), "got table"));

    /* arrays */
    CHECK(hyb_cfg_array_len(a, "list") == 3 && hyb_cfg_array_len(a, "nums") == 3);
    CHECK(hyb_cfg_array_len(a, "missing") == 0);
    CHECK(hyb_cfg_array_len(a, "name") == -1 && contains(hyb_error(), "doc.toml:7:8:"));
    CHECK(hyb_cfg_array_string(a, "list", 1, &s) == HYB_OK && strcmp(s, "q") == 0);
    CHECK(hyb_cfg_array_string(a, "list", 2, &s) == HYB_ERR_FORMAT);
    CHECK_MSG(contains(hyb_error(), "doc.toml:8:19:") && contains(hyb_error(), "'a.list[2]'"), "%s",
              hyb_error());
    CHECK(hyb_cfg_array_string(a, "list", 3, &s) == HYB_ERR_ARG &&
          contains(hyb_error(), "index 3"));
    CHECK(hyb_cfg_array_int(a, "nums", 1, &i) == HYB_OK && i == -2);
    CHECK(hyb_cfg_array_int(a, "list", 0, &i) == HYB_ERR_FORMAT);
    CHECK(hyb_cfg_array_int(a, "missing", 0, &i) == HYB_ERR_FORMAT &&
          contains(hyb_error(), "'a.missing' is missing"));

    /* keys in file order, not alphabetical */
    const char **keys;
    int n = hyb_cfg_keys(a, &keys);
    CHECK(n == 8);
    const char *want[] = {"zeta", "alpha", "one", "flag", "name", "list", "nums", "sub"};
    for (int k = 0; k < n && k < 8; k++)
        CHECK_MSG(strcmp(keys[k], want[k]) == 0, "key %d = %s", k, keys[k]);
    n = hyb_cfg_keys(root, &keys);
    CHECK(n == 2 && strcmp(keys[0], "title") == 0 && strcmp(keys[1], "a") == 0);

    /* where */
    char buf[128];
    CHECK(strcmp(hyb_cfg_where(a, "alpha", buf, sizeof buf), "doc.toml:4:1") == 0);
    CHECK(strcmp(hyb_cfg_where(a, NULL, buf, sizeof buf), "doc.toml:2:1") == 0);
    CHECK(strcmp(hyb_cfg_where(a, "missing", buf, sizeof buf), "doc.toml:2:1") == 0);
    const hyb_cfg_table *sub = hyb_cfg_subtable(a, "sub");
    CHECK(sub && strcmp(hyb_cfg_where(sub, "k", buf, sizeof buf), "doc.toml:11:1") == 0);

    /* check_keys */
    const char *const ok_keys[] = {"zeta", "alpha", "one", "flag", "name",
                                   "list", "nums",  "sub", NULL};
    CHECK(hyb_cfg_check_keys(a, ok_keys) == HYB_OK);
    const char *const few[] = {"zeta", "alpha", "one", "flag", "name", "list", "nums", NULL};
    CHECK(hyb_cfg_check_keys(a, few) == HYB_ERR_FORMAT);
    CHECK_MSG(contains(hyb_error(), "doc.toml:10:4: unknown key 'sub' in [a]"), "%s", hyb_error());
    const char *const none[] = {NULL};
    CHECK(hyb_cfg_check_keys(sub, none) == HYB_ERR_FORMAT && contains(hyb_error(), "[a.sub]"));

    /* cfg_error at a key / at the table */
    CHECK(hyb_cfg_error(a, "nums", "n_heads %d does not divide %d", 3, 64) == HYB_ERR_FORMAT);
    CHECK_MSG(strcmp(hyb_error(), "doc.toml:9:1: n_heads 3 does not divide 64") == 0, "%s",
              hyb_error());
    CHECK(hyb_cfg_error(sub, NULL, "bad") == HYB_ERR_FORMAT &&
          strcmp(hyb_error(), "doc.toml:10:1: bad") == 0);
    hyb_toml_free(doc);
}

static void test_cfg_null_table(void) {
    /* a plugin may get cfg == NULL: everything is a default, nothing crashes */
    int64_t i;
    double f;
    int b;
    const char *s;
    const char **keys;
    CHECK(hyb_cfg_int(NULL, "x", 5, &i) == HYB_OK && i == 5);
    CHECK(hyb_cfg_float(NULL, "x", 0.5, &f) == HYB_OK && f == 0.5);
    CHECK(hyb_cfg_bool(NULL, "x", 1, &b) == HYB_OK && b == 1);
    CHECK(hyb_cfg_string(NULL, "x", "d", &s) == HYB_OK && strcmp(s, "d") == 0);
    CHECK(hyb_cfg_has(NULL, "x") == 0 && hyb_cfg_keys(NULL, &keys) == 0);
    CHECK(hyb_cfg_array_len(NULL, "x") == 0);
    CHECK(hyb_cfg_subtable(NULL, "x") == NULL);
    const char *const none[] = {NULL};
    CHECK(hyb_cfg_check_keys(NULL, none) == HYB_OK);
    CHECK(hyb_cfg_error(NULL, "x", "plain %d", 1) == HYB_ERR_FORMAT &&
          strcmp(hyb_error(), "plain 1") == 0);
}

static void test_toml_parse_errors(void) {
    hyb_toml *doc = hyb_toml_parse_string("a = 1\nb = [1, 2\n", "p.toml");
    CHECK(doc == NULL);
    CHECK_MSG(contains(hyb_error(), "p.toml:"), "%s", hyb_error());
    doc = hyb_toml_parse_string("a = \"\xff\"\n", "utf.toml"); /* invalid UTF-8 */
    CHECK(doc == NULL && contains(hyb_error(), "utf.toml:1:"));
    doc = hyb_toml_parse_file("tests/data/config/no-such-file.toml");
    CHECK(doc == NULL && contains(hyb_error(), "cannot open"));
    doc = hyb_toml_parse_file("tests/data/config"); /* a directory */
    CHECK(doc == NULL && contains(hyb_error(), "tests/data/config"));
    doc = hyb_toml_parse_string("", "empty.toml");
    CHECK(doc != NULL && hyb_cfg_keys(hyb_toml_root(doc), NULL) == 0);
    hyb_toml_free(doc);
    hyb_layermap *m;
    CHECK(hyb_layermap_parse("", "empty.toml", &m) == HYB_ERR_FORMAT &&
          contains(hyb_error(), "empty.toml:1:1: missing [model]"));
}

/* Random byte edits and truncations of a valid map: each parse either succeeds or fails with a
 * message; never a crash (run under ASan with -DHYB_SANITIZE=ON). */
static void test_mutations(void) {
    FILE *f = fopen("graphs/smollm2-135m.toml", "rb");
    CHECK(f != NULL);
    if (!f) return;
    char base[8192];
    size_t n = fread(base, 1, sizeof base - 1, f);
    fclose(f);
    base[n] = 0;
    char *text = malloc(n + 1);
    uint64_t st = 0x9E3779B97F4A7C15ull;
    const char alphabet[] = "[]=\"'#\n .,0123456789tmx{}-_ab";
    int ok = 0, bad = 0, silent = 0;
    for (int iter = 0; iter < 1500; iter++) {
        memcpy(text, base, n + 1);
        int edits = 1 + iter % 4;
        for (int e = 0; e < edits; e++) {
            st ^= st << 13, st ^= st >> 7, st ^= st << 17;
            size_t at = (size_t)(st % n);
            text[at] = alphabet[(st >> 32) % (sizeof alphabet - 1)];
        }
        if (iter % 5 == 0) text[(st >> 20) % n] = 0; /* truncation */
        hyb_layermap *m = NULL;
        hyb_error_clear();
        int rc = hyb_layermap_parse(text, "fuzz.toml", &m);
        if (rc == HYB_OK) {
            ok++;
            char buf[2048];
            hyb_layermap_describe(m, buf, sizeof buf);
            for (int l = 0; l < m->n_layers; l++)
                if (m->layer_mixer[l] < 0 || m->layer_mixer[l] >= m->n_mixers) silent++;
            hyb_layermap_free(m);
        } else {
            bad++;
            if (m != NULL || !contains(hyb_error(), "fuzz.toml")) silent++;
        }
    }
    free(text);
    CHECK(ok > 0 && bad > 0);
    CHECK_MSG(silent == 0, "%d parses failed without a located message or resolved badly", silent);
}

int main(void) {
    RUN(test_smollm2_map);
    RUN(test_shipped_maps);
    RUN(test_hybrid_pattern);
    RUN(test_h1_30_layout);
    RUN(test_layers_list);
    RUN(test_err_malformed_toml);
    RUN(test_err_model_keys);
    RUN(test_err_nonpositive);
    RUN(test_err_unknown_keys);
    RUN(test_err_layout_length);
    RUN(test_err_unknown_symbol);
    RUN(test_err_pattern_and_layers);
    RUN(test_err_mixers);
    RUN(test_cfg_getters);
    RUN(test_cfg_null_table);
    RUN(test_toml_parse_errors);
    RUN(test_mutations);
    return harness_done();
}
