/* tests/test_plugin.c: the plugin loader (core/mixer.c): search path, ABI and vtable checks,
 * duplicate names, the host service table, hyb_mixer_new's parameter allocation and init, and
 * config errors of the mha plugin carrying file:line:col.
 *
 * The broken plugins come from tests/plugins/ and live in <build>/test-plugins, next to
 * <build>/plugins (= $HYB_PLUGIN_PATH under ctest). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "hyb/config.h"
#include "hyb/mixer.h"

static char g_test_dir[4096];

static const char *test_plugin(const char *name) {
    static char buf[4200];
    snprintf(buf, sizeof buf, "%s/libhyb-%s.so", g_test_dir, name);
    return buf;
}

static int contains(const char *hay, const char *needle) {
    return strstr(hay, needle) != NULL;
}

static void test_find_mha(void) {
    const hyb_mixer_desc *d = NULL;
    CHECK_MSG(hyb_plugin_find("mha", &d) == HYB_OK, "find mha: %s", hyb_error());
    if (!d) return;
    CHECK(strcmp(d->name, "mha") == 0);
    CHECK(strcmp(d->hf_prefix, "self_attn") == 0);
    CHECK(d->abi_version == HYB_PLUGIN_ABI_VERSION);
    CHECK(d->kernels[HYB_DEV_CPU].forward && d->kernels[HYB_DEV_CPU].backward &&
          d->kernels[HYB_DEV_CPU].decode);
    const hyb_mixer_desc *d2 = NULL;
    CHECK(hyb_plugin_find("mha", &d2) == HYB_OK && d2 == d); /* registered once */
    int found = 0;
    for (int i = 0; i < hyb_plugin_count(); i++) {
        const char *path = NULL;
        if (hyb_plugin_get(i, &path) == d) {
            found = 1;
            /* came through $HYB_PLUGIN_PATH (the first directory searched) */
            const char *env = getenv("HYB_PLUGIN_PATH");
            if (env) CHECK_MSG(contains(path, "libhyb-mha.so"), "path %s", path);
        }
    }
    CHECK(found);
    /* loading the same file again returns the same descriptor, no duplicate error */
    const char *path = NULL;
    for (int i = 0; i < hyb_plugin_count(); i++)
        if (hyb_plugin_get(i, &path) == d) break;
    const hyb_mixer_desc *d3 = NULL;
    CHECK_MSG(hyb_plugin_load_file(path, &d3) == HYB_OK && d3 == d, "%s", hyb_error());
}

/* The first directory of $HYB_PLUGIN_PATH without trailing slashes into out; 0 when unset. */
static int first_plugin_dir(char *out, size_t cap) {
    const char *env = getenv("HYB_PLUGIN_PATH");
    if (!env || !env[0]) return 0;
    snprintf(out, cap, "%s", env);
    char *c = strchr(out, ':');
    if (c) *c = 0;
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        out[--n] = 0;
    return 1;
}

static void test_search_path_order(void) {
    char buf[8192];
    hyb_plugin_search_path(buf, sizeof buf);
    char first[4096];
    if (first_plugin_dir(first, sizeof first)) {
        CHECK_MSG(strncmp(buf, first, strlen(first)) == 0, "search path %s should start with %s",
                  buf, first);
    }
#ifdef HYB_BUILD_PLUGIN_DIR
    CHECK_MSG(contains(buf, HYB_BUILD_PLUGIN_DIR), "search path %s lacks the build tree", buf);
#endif
    /* the executable's directory is on the path */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        *strrchr(exe, '/') = 0;
        CHECK_MSG(contains(buf, exe), "search path %s lacks %s", buf, exe);
    }
}

static void test_bad_abi(void) {
    const hyb_mixer_desc *d = (const hyb_mixer_desc *)1;
    int rc = hyb_plugin_load_file(test_plugin("badabi"), &d);
    CHECK(rc == HYB_ERR_FORMAT);
    CHECK(d == NULL);
    const char *e = hyb_error();
    char want[64];
    snprintf(want, sizeof want, "built for plugin ABI %u", HYB_PLUGIN_ABI_VERSION + 1);
    CHECK_MSG(contains(e, want), "message: %s", e);
    snprintf(want, sizeof want, "this hyb has ABI %u", HYB_PLUGIN_ABI_VERSION);
    CHECK_MSG(contains(e, want), "message: %s", e);
    CHECK_MSG(contains(e, "libhyb-badabi.so"), "message: %s", e);
    /* not registered */
    for (int i = 0; i < hyb_plugin_count(); i++)
        CHECK(strcmp(hyb_plugin_get(i, NULL)->name, "badabi") != 0);
}

static void test_no_entry(void) {
    int rc = hyb_plugin_load_file(test_plugin("noentry"), NULL);
    CHECK(rc == HYB_ERR_FORMAT);
    const char *e = hyb_error();
    CHECK_MSG(contains(e, "no entry symbol 'hyb_plugin_entry'"), "message: %s", e);
    CHECK_MSG(contains(e, "libhyb-noentry.so"), "message: %s", e);
}

static void test_missing_vtable_entry(void) {
    int rc = hyb_plugin_load_file(test_plugin("nodecode"), NULL);
    CHECK(rc == HYB_ERR_FORMAT);
    CHECK_MSG(contains(hyb_error(), "required vtable entry 'decode' is NULL"), "message: %s",
              hyb_error());
}

static void test_missing_file(void) {
    int rc = hyb_plugin_load_file("/nonexistent/libhyb-x.so", NULL);
    CHECK(rc == HYB_ERR_IO);
    CHECK_MSG(contains(hyb_error(), "/nonexistent/libhyb-x.so"), "message: %s", hyb_error());
    /* a file that is not a shared object */
    char p[4200];
    snprintf(p, sizeof p, "%s/CMakeLists.txt", HYB_SOURCE_DIR);
    rc = hyb_plugin_load_file(p, NULL);
    CHECK(rc == HYB_ERR_IO);
    CHECK_MSG(contains(hyb_error(), "cannot load"), "message: %s", hyb_error());
}

static void test_duplicate_name(void) {
    const hyb_mixer_desc *d;
    CHECK(hyb_plugin_find("mha", &d) == HYB_OK);
    int rc = hyb_plugin_load_file(test_plugin("dupmha"), NULL);
    CHECK(rc == HYB_ERR_FORMAT);
    CHECK_MSG(contains(hyb_error(), "mixer 'mha' is already registered from") &&
                  contains(hyb_error(), "libhyb-mha.so"),
              "message: %s", hyb_error());
    const hyb_mixer_desc *d2;
    CHECK(hyb_plugin_find("mha", &d2) == HYB_OK && d2 == d); /* the first one stays */
}

static void test_unknown_mixer(void) {
    const hyb_mixer_desc *d = (const hyb_mixer_desc *)1;
    int rc = hyb_plugin_find("nosuchmixer", &d);
    CHECK(rc == HYB_ERR_NOTFOUND);
    CHECK(d == NULL);
    const char *e = hyb_error();
    CHECK_MSG(contains(e, "unknown mixer type 'nosuchmixer'"), "message: %s", e);
    CHECK_MSG(contains(e, "libhyb-nosuchmixer.so"), "message: %s", e);
    const char *env = getenv("HYB_PLUGIN_PATH");
    if (env) CHECK_MSG(contains(e, env), "message lacks the search path %s: %s", env, e);
    CHECK_MSG(contains(e, "known mixers: ") && contains(e, "mha"), "message: %s", e);
    /* unknown mixer through hyb_mixer_new too */
    hyb_model_dims dims = {.d_model = 64, .n_layers = 1, .layer = 0, .max_seq = 16};
    hyb_mixer *m = (hyb_mixer *)1;
    CHECK(hyb_mixer_new("nosuchmixer", &dims, NULL, 1, &m) == HYB_ERR_NOTFOUND && m == NULL);
}

static void test_bad_names(void) {
    const hyb_mixer_desc *d;
    CHECK(hyb_plugin_find("../plugins/mha", &d) == HYB_ERR_ARG);
    CHECK_MSG(contains(hyb_error(), "[a-z0-9_-]"), "%s", hyb_error());
    CHECK(hyb_plugin_find("MHA", &d) == HYB_ERR_ARG);
    CHECK(hyb_plugin_find("", &d) == HYB_ERR_ARG);
}

static void test_scan(void) {
    int n = hyb_plugin_scan();
    CHECK_MSG(n >= 1, "scan found %d", n);
    /* scanning a directory of broken plugins loads none of them and does not fail */
    const char *env = getenv("HYB_PLUGIN_PATH");
    char *old = env ? strdup(env) : NULL;
    setenv("HYB_PLUGIN_PATH", g_test_dir, 1);
    int before = hyb_plugin_count();
    int n2 = hyb_plugin_scan();
    CHECK_MSG(n2 >= 1, "scan found %d", n2); /* mha, from the build tree */
    CHECK(hyb_plugin_count() == before);
    for (int i = 0; i < hyb_plugin_count(); i++) {
        const char *nm = hyb_plugin_get(i, NULL)->name;
        CHECK(strcmp(nm, "badabi") && strcmp(nm, "noentry") && strcmp(nm, "nodecode"));
    }
    if (old) {
        setenv("HYB_PLUGIN_PATH", old, 1);
        free(old);
    } else {
        unsetenv("HYB_PLUGIN_PATH");
    }
    const hyb_mixer_desc *d;
    CHECK(hyb_plugin_find("mha", &d) == HYB_OK);
}

static void test_host_services(void) {
    const hyb_host *h = hyb_host_services();
    CHECK(h->abi_version == HYB_PLUGIN_ABI_VERSION);
    CHECK(h->struct_size == sizeof(hyb_host));
    CHECK(h->log && h->error && h->alloc && h->free && h->cfg_int && h->cfg_float && h->cfg_bool &&
          h->cfg_string && h->cfg_check_keys && h->cfg_error && h->rng_normal && h->rng_uniform);
    CHECK(h->error(HYB_ERR_ARG, "mixer %s: %d", "x", 42) == HYB_ERR_ARG);
    CHECK(strcmp(hyb_error(), "mixer x: 42") == 0);
    float *p = h->alloc(100);
    CHECK(p && ((uintptr_t)p % 64) == 0);
    h->free(p);
    /* rng: deterministic per state, the state advances, streams differ */
    float a[256], b[256], c[256];
    uint64_t s1 = 7, s2 = 7;
    h->rng_normal(&s1, a, 256, 0.0f, 1.0f);
    h->rng_normal(&s2, b, 256, 0.0f, 1.0f);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(s1 == s2 && s1 != 7);
    h->rng_normal(&s1, c, 256, 0.0f, 1.0f);
    CHECK(memcmp(a, c, sizeof a) != 0);
    h->rng_uniform(&s1, c, 256, -2.0f, 3.0f);
    int in = 1;
    for (int i = 0; i < 256; i++)
        in &= c[i] >= -2.0f && c[i] < 3.0f;
    CHECK(in);
    /* compute is the backend's (the plugins get it in their call's args): C = A B^T */
    const hyb_backend *be = hyb_backend_cpu();
    float A[6] = {1, 2, 3, 4, 5, 6}, Bm[6] = {1, 0, 1, 0, 1, 0}, C[4] = {0};
    CHECK(be->sgemm(be, 0, 1, 2, 2, 3, 1.0f, A, 3, Bm, 3, 0.0f, C, 2) == HYB_OK);
    CHECK_NEAR(C[0], 4, 1e-6);
    CHECK_NEAR(C[1], 2, 1e-6);
    CHECK_NEAR(C[2], 10, 1e-6);
    CHECK_NEAR(C[3], 5, 1e-6);
}

static hyb_toml *parse(const char *text) {
    hyb_toml *doc = hyb_toml_parse_string(text, "mixer.toml");
    CHECK_MSG(doc != NULL, "toml: %s", hyb_error());
    return doc;
}

static void test_mixer_new_params(void) {
    hyb_toml *doc = parse("type = \"mha\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 16\n");
    if (!doc) return;
    hyb_model_dims dims = {
        .d_model = 48, .n_layers = 2, .layer = 1, .max_seq = 32, .norm_eps = 1e-5f};
    hyb_mixer *m = NULL;
    CHECK_MSG(hyb_mixer_new("mha", &dims, hyb_toml_root(doc), 42, &m) == HYB_OK, "%s", hyb_error());
    if (!m) {
        hyb_toml_free(doc);
        return;
    }
    CHECK(strcmp(m->type, "mha") == 0);
    CHECK(m->n_params == 4);
    const char *names[4] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                            "self_attn.v_proj.weight", "self_attn.o_proj.weight"};
    int64_t shapes[4][2] = {{64, 48}, {32, 48}, {32, 48}, {48, 64}};
    for (int i = 0; i < 4 && i < m->n_params; i++) {
        hyb_tensor *t = m->params[i];
        CHECK_MSG(strcmp(t->name, names[i]) == 0, "param %d named %s", i, t->name);
        CHECK(t->dtype == HYB_F32 && t->ndim == 2 && t->shape[0] == shapes[i][0] &&
              t->shape[1] == shapes[i][1]);
        CHECK(t->requires_grad == 1);
        CHECK(t->grad && hyb_tensor_same_shape(t, t->grad));
        /* N(0, 0.02): sample std within 10% (n >= 1536 -> std error of the std ~2%) */
        int64_t n = hyb_tensor_numel(t);
        double s = 0, s2 = 0, g = 0;
        for (int64_t k = 0; k < n; k++) {
            double v = hyb_tensor_f32(t)[k];
            s += v;
            s2 += v * v;
            g += fabs(hyb_tensor_f32(t->grad)[k]);
        }
        double mean = s / n, sd = sqrt(s2 / n - mean * mean);
        CHECK_MSG(fabs(sd - 0.02) < 0.002 && fabs(mean) < 0.003, "%s: mean %g std %g", t->name,
                  mean, sd);
        CHECK(g == 0);
    }
    /* distinct streams per parameter: q and k rows differ */
    CHECK(memcmp(hyb_tensor_f32(m->params[1]), hyb_tensor_f32(m->params[2]), 32 * 48 * 4) != 0);
    /* same seed -> same values; another seed -> different */
    hyb_mixer *m2 = NULL, *m3 = NULL;
    CHECK(hyb_mixer_new("mha", &dims, hyb_toml_root(doc), 42, &m2) == HYB_OK);
    CHECK(hyb_mixer_new("mha", &dims, hyb_toml_root(doc), 43, &m3) == HYB_OK);
    if (m2 && m3) {
        CHECK(memcmp(hyb_tensor_f32(m->params[0]), hyb_tensor_f32(m2->params[0]), 64 * 48 * 4) ==
              0);
        CHECK(memcmp(hyb_tensor_f32(m->params[0]), hyb_tensor_f32(m3->params[0]), 64 * 48 * 4) !=
              0);
    }
    CHECK(hyb_mixer_state_bytes(m, 100) == (size_t)2 * 2 * 16 * 100 * 4);
    char buf[128];
    CHECK(m->desc->describe(m->self, buf, sizeof buf) == HYB_OK);
    CHECK_MSG(strcmp(buf, "mha H=4 KV=2 hd=16 theta=10000") == 0, "describe: %s", buf);
    /* mha has no init_from: documented HYB_ERR_UNSUPPORTED */
    CHECK(hyb_mixer_init_from(m, m2, NULL, 1) == HYB_ERR_UNSUPPORTED);
    CHECK_MSG(contains(hyb_error(), "no init_from"), "%s", hyb_error());
    hyb_mixer_free(m);
    hyb_mixer_free(m2);
    hyb_mixer_free(m3);
    hyb_toml_free(doc);
}

static void test_mixer_defaults_and_bias(void) {
    /* no table: d_model / 64 heads of 64 */
    hyb_model_dims dims = {.d_model = 128, .n_layers = 1, .layer = 0, .max_seq = 32};
    hyb_mixer *m = NULL;
    CHECK_MSG(hyb_mixer_new("mha", &dims, NULL, 1, &m) == HYB_OK, "%s", hyb_error());
    if (m) {
        char buf[128];
        m->desc->describe(m->self, buf, sizeof buf);
        CHECK_MSG(strcmp(buf, "mha H=2 KV=2 hd=64 theta=10000") == 0, "describe: %s", buf);
        hyb_mixer_free(m);
    }
    dims.d_model = 100;
    CHECK(hyb_mixer_new("mha", &dims, NULL, 1, &m) == HYB_ERR_ARG);
    CHECK_MSG(contains(hyb_error(), "multiple of 64"), "%s", hyb_error());
    /* bias = true: 7 params, biases zero-initialised and excluded from decay */
    hyb_toml *doc = parse("n_heads = 2\nbias = true\nrope_theta = 1e5\n");
    if (!doc) return;
    dims.d_model = 16;
    CHECK_MSG(hyb_mixer_new("mha", &dims, hyb_toml_root(doc), 3, &m) == HYB_OK, "%s", hyb_error());
    if (m) {
        CHECK(m->n_params == 7);
        CHECK(strcmp(m->params[4]->name, "self_attn.q_proj.bias") == 0);
        CHECK(strcmp(m->params[6]->name, "self_attn.v_proj.bias") == 0);
        CHECK(m->params[5]->ndim == 1 && m->params[5]->shape[0] == 16);
        CHECK(m->decls[4].no_decay == 1 && m->decls[0].no_decay == 0);
        CHECK(hyb_tensor_f32(m->params[4])[3] == 0.0f);
        hyb_mixer_free(m);
    }
    hyb_toml_free(doc);
}

/* Expect hyb_mixer_new to fail on `text` with a message holding `where` ("mixer.toml:L:C") and
 * `what`. */
static void expect_cfg_error(const char *text, const char *where, const char *what) {
    hyb_toml *doc = parse(text);
    if (!doc) return;
    hyb_model_dims dims = {.d_model = 64, .n_layers = 1, .layer = 0, .max_seq = 32};
    hyb_mixer *m = NULL;
    int rc = hyb_mixer_new("mha", &dims, hyb_toml_root(doc), 1, &m);
    CHECK_MSG(rc < 0 && m == NULL, "accepted: %s", text);
    CHECK_MSG(contains(hyb_error(), where) && contains(hyb_error(), what),
              "for %s\n   wanted '%s' and '%s' in: %s", text, where, what, hyb_error());
    hyb_mixer_free(m);
    hyb_toml_free(doc);
}

static void test_mha_config_errors(void) {
    expect_cfg_error("type = \"mha\"\nn_heads = 4\nn_kv_heads = 3\n",
                     "mixer.toml:3:", "n_kv_heads");
    expect_cfg_error("n_heads = 4\nn_kv_heads = 8\n", "mixer.toml:2:", "n_kv_heads");
    expect_cfg_error("n_heads = 0\n", "mixer.toml:1:", "n_heads");
    expect_cfg_error("n_heads = -2\n", "mixer.toml:1:", "n_heads");
    expect_cfg_error("n_heads = 5\n", "mixer.toml:1:", "head_dim");               /* 64 % 5 != 0 */
    expect_cfg_error("n_heads = 4\nhead_dim = 7\n", "mixer.toml:2:", "head_dim"); /* odd */
    expect_cfg_error("n_heads = 4\nrope_theta = -1.0\n", "mixer.toml:2:", "rope_theta");
    expect_cfg_error("n_heads = 4\nn_kv_head = 2\n",
                     "mixer.toml:2:", "n_kv_head");                       /* unknown key */
    expect_cfg_error("n_heads = \"four\"\n", "mixer.toml:1:", "n_heads"); /* wrong type */
    expect_cfg_error("n_heads = 4\nbias = 1\n", "mixer.toml:2:", "bias");
}

int main(void) {
    if (first_plugin_dir(g_test_dir, sizeof g_test_dir)) {
        strncat(g_test_dir, "/../test-plugins", sizeof g_test_dir - strlen(g_test_dir) - 1);
    } else {
#ifdef HYB_BUILD_PLUGIN_DIR
        snprintf(g_test_dir, sizeof g_test_dir, "%s/../test-plugins", HYB_BUILD_PLUGIN_DIR);
#endif
    }
    RUN(test_search_path_order);
    RUN(test_find_mha);
    RUN(test_bad_abi);
    RUN(test_no_entry);
    RUN(test_missing_vtable_entry);
    RUN(test_missing_file);
    RUN(test_duplicate_name);
    RUN(test_unknown_mixer);
    RUN(test_bad_names);
    RUN(test_scan);
    RUN(test_host_services);
    RUN(test_mixer_new_params);
    RUN(test_mixer_defaults_and_bias);
    RUN(test_mha_config_errors);
    return harness_done();
}
