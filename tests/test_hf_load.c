/* GGUF -> hyb_model loader on a tiny llama written by this test: every parameter lands under its
 * HF name with the HF layout (q/k rows are permuted here the way llama.cpp's converter does, and
 * must come back un-permuted), tied and untied heads, and the user errors (wrong architecture,
 * missing tensor, wrong shape naming both shapes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include <sys/stat.h>

#include "hyb/hf.h"
#include "hyb/safetensors.h"

enum { L = 2, D = 16, H = 4, KV = 2, HD = 4, F = 24, V = 32 };

/* ---- a minimal GGUF v3 writer
 * ------------------------------------------------------------------*/
typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf_t;
static void put(buf_t *b, const void *x, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 1024;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, x, n);
    b->n += n;
}
static void put_u32(buf_t *b, uint32_t v) {
    put(b, &v, 4);
}
static void put_u64(buf_t *b, uint64_t v) {
    put(b, &v, 8);
}
static void put_str(buf_t *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void kv_u32(buf_t *b, const char *k, uint32_t v) {
    put_str(b, k);
    put_u32(b, 4);
    put_u32(b, v);
}
static void kv_f32(buf_t *b, const char *k, float v) {
    put_str(b, k);
    put_u32(b, 6);
    put(b, &v, 4);
}
static void kv_str(buf_t *b, const char *k, const char *v) {
    put_str(b, k);
    put_u32(b, 8);
    put_str(b, v);
}

typedef struct {
    char name[64];
    int rows, cols;
    float *data;
} wt_t; /* [rows, cols] */

static int n_w;
static wt_t W[64];
static float *hf_tensor(const char *name, int rows, int cols, uint64_t seed) {
    wt_t *w = &W[n_w++];
    snprintf(w->name, sizeof w->name, "%s", name);
    w->rows = rows;
    w->cols = cols;
    w->data = malloc(sizeof(float) * rows * cols);
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    hyb_rng_fill_normal(&r, w->data, (int64_t)rows * cols, cols == 1 ? 1.0f : 0.0f, 0.5f);
    return w->data;
}

/* llama.cpp convert: reshape(n_head, 2, hd/2, cols).swapaxes(1, 2): GGUF row h*hd + 2i + j is
 * HF row h*hd + j*hd/2 + i. */
static float *permute_like_converter(const float *hf, int nh, int cols) {
    float *g = malloc(sizeof(float) * nh * HD * cols);
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < HD / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(g + ((size_t)h * HD + 2 * i + j) * cols,
                       hf + ((size_t)h * HD + j * HD / 2 + i) * cols, sizeof(float) * cols);
    return g;
}

typedef struct {
    const char *arch;
    int tied;
    const char *drop;      /* GGUF tensor to leave out */
    const char *bad_shape; /* GGUF tensor written with one extra row */
    float eps, theta;      /* 0: 1e-5 and 10000 */
} variant;

static void write_gguf(const char *path, const variant *v) {
    buf_t hdr = {0}, data = {0};
    int n_t = 0;
    buf_t infos = {0};
    for (int i = 0; i < n_w; i++) {
        const wt_t *w = &W[i];
        if (v->drop && !strcmp(w->name, v->drop)) continue;
        if (v->tied && !strcmp(w->name, "output.weight")) continue;
        int rows = w->rows + (v->bad_shape && !strcmp(w->name, v->bad_shape) ? 1 : 0);
        const float *src = w->data;
        float *perm = NULL;
        if (strstr(w->name, "attn_q.weight"))
            src = perm = permute_like_converter(w->data, H, w->cols);
        if (strstr(w->name, "attn_k.weight"))
            src = perm = permute_like_converter(w->data, KV, w->cols);
        put_str(&infos, w->name);
        int is_vec = w->cols == 1;
        put_u32(&infos, is_vec ? 1 : 2);
        if (is_vec)
            put_u64(&infos, (uint64_t)rows);
        else {
            put_u64(&infos, (uint64_t)w->cols);
            put_u64(&infos, (uint64_t)rows);
        }
        put_u32(&infos, 0); /* F32 */
        put_u64(&infos, data.n);
        put(&data, src, sizeof(float) * w->rows * w->cols);
        for (int e = w->rows * w->cols; e < rows * w->cols; e++) {
            float z = 0;
            put(&data, &z, 4);
        }
        while (data.n % 32) {
            unsigned char z = 0;
            put(&data, &z, 1);
        }
        free(perm);
        n_t++;
    }
    buf_t kvs = {0};
    int n_kv = 0;
    char k[96];
    kv_str(&kvs, "general.architecture", v->arch);
    n_kv++;
    kv_str(&kvs, "general.name", "tiny llama");
    n_kv++;
#define KU(key, val)                                                                               \
    do {                                                                                           \
        snprintf(k, sizeof k, "%s.%s", v->arch, key);                                              \
        kv_u32(&kvs, k, val);                                                                      \
        n_kv++;                                                                                    \
    } while (0)
    KU("block_count", L);
    KU("embedding_length", D);
    KU("feed_forward_length", F);
    KU("attention.head_count", H);
    KU("attention.head_count_kv", KV);
    KU("context_length", 64);
    KU("vocab_size", V);
    snprintf(k, sizeof k, "%s.rope.freq_base", v->arch);
    kv_f32(&kvs, k, v->theta != 0 ? v->theta : 10000.0f);
    n_kv++;
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", v->arch);
    kv_f32(&kvs, k, v->eps != 0 ? v->eps : 1e-5f);
    n_kv++;
    put(&hdr, "GGUF", 4);
    put_u32(&hdr, 3);
    put_u64(&hdr, (uint64_t)n_t);
    put_u64(&hdr, (uint64_t)n_kv);
    put(&hdr, kvs.p, kvs.n);
    put(&hdr, infos.p, infos.n);
    while (hdr.n % 32) {
        unsigned char z = 0;
        put(&hdr, &z, 1);
    }
    FILE *f = fopen(path, "wb");
    fwrite(hdr.p, 1, hdr.n, f);
    fwrite(data.p, 1, data.n, f);
    fclose(f);
    free(hdr.p);
    free(data.p);
    free(infos.p);
    free(kvs.p);
}

static void make_weights(void) {
    uint64_t s = 1;
    char n[64];
    hf_tensor("token_embd.weight", V, D, s++);
    hf_tensor("output_norm.weight", D, 1, s++);
    hf_tensor("output.weight", V, D, s++);
    for (int l = 0; l < L; l++) {
#define T(name, r, c)                                                                              \
    do {                                                                                           \
        snprintf(n, sizeof n, "blk.%d." name, l);                                                  \
        hf_tensor(n, r, c, s++);                                                                   \
    } while (0)
        T("attn_norm.weight", D, 1);
        T("attn_q.weight", H * HD, D);
        T("attn_k.weight", KV * HD, D);
        T("attn_v.weight", KV * HD, D);
        T("attn_output.weight", D, H * HD);
        T("ffn_norm.weight", D, 1);
        T("ffn_gate.weight", F, D);
        T("ffn_up.weight", F, D);
        T("ffn_down.weight", D, F);
    }
}

static const wt_t *find_w(const char *name) {
    for (int i = 0; i < n_w; i++)
        if (!strcmp(W[i].name, name)) return &W[i];
    return NULL;
}

static char g_path[256];

static const char *pairs[][2] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};
#define N_PAIRS ((int)(sizeof pairs / sizeof pairs[0]))

/* GGUF name of HF name */
static void hf_of(const char *gg, char *hf, size_t n) {
    int l;
    char rest[64];
    if (!strcmp(gg, "token_embd.weight"))
        snprintf(hf, n, "model.embed_tokens.weight");
    else if (!strcmp(gg, "output_norm.weight"))
        snprintf(hf, n, "model.norm.weight");
    else if (!strcmp(gg, "output.weight"))
        snprintf(hf, n, "lm_head.weight");
    else if (sscanf(gg, "blk.%d.%63s", &l, rest) == 2) {
        for (int i = 0; i < N_PAIRS; i++)
            if (!strcmp(rest, pairs[i][1])) snprintf(hf, n, "model.layers.%d.%s", l, pairs[i][0]);
    }
}

static void check_param(hyb_model *m, const char *hf, const char *gg) {
    hyb_tensor *t = hyb_model_param(m, hf);
    const wt_t *w = find_w(gg);
    CHECK_MSG(t != NULL, "model has no parameter %s", hf);
    if (!t || !w) return;
    CHECK_MSG(hyb_tensor_numel(t) == (int64_t)w->rows * w->cols, "%s numel", hf);
    CHECK_MSG(memcmp(t->data, w->data, sizeof(float) * w->rows * w->cols) == 0,
              "%s differs from the HF-layout original of %s", hf, gg);
}

/* The llama GGUF (tied embeddings or not) written and loaded; NULL (a failed check) if not. */
static hyb_model *load_llama(int tied) {
    variant v = {"llama", tied, NULL, NULL, 0, 0};
    write_gguf(g_path, &v);
    hyb_model *m = NULL;
    int rc = hyb_model_load_gguf(g_path, &m);
    CHECK_MSG(rc == HYB_OK, "load: %s", hyb_error());
    return m;
}

static void test_load_untied(void) {
    hyb_model *m = load_llama(0);
    if (!m) return;
    CHECK(m->L == L && m->D == D && m->V == V && m->F == F);
    CHECK(!m->map->tie_embeddings && m->lm_head != m->embed);
    CHECK(m->map->n_mixers == 1 && !strcmp(m->map->mixers[0].type, "mha"));
    CHECK(m->map->max_seq == 64);
    check_param(m, "model.embed_tokens.weight", "token_embd.weight");
    check_param(m, "model.norm.weight", "output_norm.weight");
    check_param(m, "lm_head.weight", "output.weight");
    char hf[128], gg[128];
    for (int l = 0; l < L; l++)
        for (int i = 0; i < N_PAIRS; i++) {
            snprintf(hf, sizeof hf, "model.layers.%d.%s", l, pairs[i][0]);
            snprintf(gg, sizeof gg, "blk.%d.%s", l, pairs[i][1]);
            check_param(m, hf, gg);
        }
    hyb_model_free(m);
}

static void test_load_tied(void) {
    hyb_model *m = load_llama(1);
    if (!m) return;
    CHECK(m->map->tie_embeddings);
    CHECK(m->lm_head == m->embed);
    CHECK(hyb_model_param(m, "lm_head.weight") == m->embed); /* the tied alias */
    int np = 0;
    hyb_tensor **ps = hyb_model_params(m, &np);
    for (int i = 0; i < np; i++)
        CHECK(strcmp(ps[i]->name, "lm_head.weight") != 0);
    check_param(m, "model.embed_tokens.weight", "token_embd.weight");
    hyb_model_free(m);
}

static void expect_error(const variant *v, int code, const char *s1, const char *s2) {
    write_gguf(g_path, v);
    hyb_model *m = (hyb_model *)1;
    int rc = hyb_model_load_gguf(g_path, &m);
    CHECK_MSG(rc == code, "rc %d, expected %d (%s)", rc, code, hyb_error());
    CHECK(m == NULL);
    CHECK_MSG(strstr(hyb_error(), s1) != NULL, "'%s' not in: %s", s1, hyb_error());
    if (s2) CHECK_MSG(strstr(hyb_error(), s2) != NULL, "'%s' not in: %s", s2, hyb_error());
}

static void test_errors(void) {
    variant arch = {"gpt2", 0, NULL, NULL, 0, 0};
    expect_error(&arch, HYB_ERR_UNSUPPORTED, "gpt2", "llama");
    variant missing = {"llama", 0, "blk.1.ffn_up.weight", NULL, 0, 0};
    expect_error(&missing, HYB_ERR_FORMAT, "blk.1.ffn_up.weight", "missing");
    variant shape = {"llama", 0, NULL, "blk.0.attn_v.weight", 0, 0};
    expect_error(&shape, HYB_ERR_FORMAT, "[9, 16]", "[8, 16]");
    /* hyper-parameters outside their stated ranges (hyb/config.h), named by their GGUF keys */
    variant eps = {"llama", 0, NULL, NULL, 1e30f, 0};
    expect_error(&eps, HYB_ERR_FORMAT, "llama.attention.layer_norm_rms_epsilon = 1e+30",
                 "out of range [1e-12, 0.1]");
    variant eps0 = {"llama", 0, NULL, NULL, -1.0f, 0};
    expect_error(&eps0, HYB_ERR_FORMAT, "layer_norm_rms_epsilon = -1", "out of range");
    variant theta = {"llama", 0, NULL, NULL, 0, 1e30f};
    expect_error(&theta, HYB_ERR_FORMAT, "llama.rope.freq_base = 1e+30", "out of range (1, 1e+12]");
    hyb_model *m = NULL;
    CHECK(hyb_model_load_gguf("/nonexistent/x.gguf", &m) < 0 && m == NULL);
}

/* config.json values outside their stated ranges are refused, named by their config.json keys */
static void test_json_ranges(void) {
    static const struct {
        const char *extra, *want;
    } cases[] = {
        {"\"rms_norm_eps\": 1e300", "rms_norm_eps = 1e+300 is out of range [1e-12, 0.1]"},
        {"\"rms_norm_eps\": 0", "rms_norm_eps = 0 is out of range"},
        {"\"rope_theta\": 1e300", "rope_theta = 1e+300 is out of range (1, 1e+12]"},
        {"\"rope_theta\": 0.5", "rope_theta = 0.5 is out of range"},
        {"\"max_position_embeddings\": 2000000000",
         "max_position_embeddings = 2000000000 is out of range [1, 16777216]"},
        {"\"num_key_value_heads\": 3", "not a multiple"},
        {"\"head_dim\": 4096", "head_dim = 4096 is out of range [1, 1024]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512];
        snprintf(text, sizeof text,
                 "{\"model_type\": \"llama\", \"num_hidden_layers\": 2, \"hidden_size\": 16, "
                 "\"intermediate_size\": 24, \"num_attention_heads\": 4, \"vocab_size\": 32, %s}",
                 cases[i].extra);
        hyb_llama_config c;
        int rc = hyb_llama_config_from_json(text, "cfg.json", &c);
        CHECK_MSG(rc == HYB_ERR_FORMAT, "accepted: %s", cases[i].extra);
        CHECK_MSG(strstr(hyb_error(), "cfg.json: ") && strstr(hyb_error(), cases[i].want),
                  "'%s' not in: %s", cases[i].want, hyb_error());
    }
    hyb_llama_config c;
    CHECK_MSG(hyb_llama_config_from_json("{\"model_type\": \"llama\", \"num_hidden_layers\": 2, "
                                         "\"hidden_size\": 16, \"intermediate_size\": 24, "
                                         "\"num_attention_heads\": 4, \"vocab_size\": 32}",
                                         "cfg.json", &c) == HYB_OK,
              "%s", hyb_error());
}

static void test_layermap_text(void) {
    hyb_llama_config c = {"SmolLM2 135M", 30, 576, 1536, 9, 3, 64, 49152, 8192, 1e5, 1e-5, 1, 0};
    char buf[4096];
    CHECK(hyb_llama_layermap_text(&c, buf, sizeof buf) == HYB_OK);
    hyb_layermap *map = NULL;
    int rc = hyb_layermap_parse(buf, "generated", &map);
    CHECK_MSG(rc == HYB_OK, "%s\n%s", hyb_error(), buf);
    if (map) {
        CHECK(map->n_layers == 30 && map->d_model == 576 && map->vocab_size == 49152);
        CHECK(map->d_ff == 1536 && map->tie_embeddings && map->max_seq == 8192);
        CHECK(!strcmp(map->name, "SmolLM2-135M"));
        for (int i = 0; i < 30; i++)
            CHECK(map->layer_mixer[i] == 0);
        hyb_layermap_free(map);
    }
    CHECK(hyb_llama_layermap_text(&c, buf, 64) == HYB_ERR_ARG);
}

/* An HF directory: config.json + model.safetensors (or two shards + index), HF layout. */
static void write_hf_dir(const char *dir, const char *model_type, int tied, int sharded) {
    char p[512];
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fprintf(f,
            "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"%s\",\n"
            " \"num_hidden_layers\": %d, \"hidden_size\": %d, \"intermediate_size\": %d,\n"
            " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"vocab_size\": %d,\n"
            " \"max_position_embeddings\": 64, %s, \"rms_norm_eps\": 1e-05,\n"
            " \"tie_word_embeddings\": %s, \"hidden_act\": \"silu\", \"rope_scaling\": null}\n",
            model_type, L, D, F, H, KV, V,
            sharded ? "\"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"default\"}"
                    : "\"rope_theta\": 20000.0",
            tied ? "true" : "false");
    fclose(f);
    hyb_st_writer *w[2] = {hyb_st_writer_new(), hyb_st_writer_new()};
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    FILE *idx = sharded ? fopen(p, "w") : NULL;
    if (idx) fprintf(idx, "{\"metadata\": {}, \"weight_map\": {");
    int first = 1;
    for (int i = 0; i < n_w; i++) {
        if (tied && !strcmp(W[i].name, "output.weight")) continue;
        char hf[128] = "";
        hf_of(W[i].name, hf, sizeof hf);
        int64_t shape[2] = {W[i].rows, W[i].cols};
        int k = sharded ? i % 2 : 0;
        CHECK(hyb_st_writer_add(w[k], hf, HYB_F32, W[i].cols == 1 ? 1 : 2, shape, W[i].data) ==
              HYB_OK);
        if (idx)
            fprintf(idx, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", first ? "" : ", ", hf,
                    k + 1);
        first = 0;
    }
    if (idx) {
        fprintf(idx, "}}\n");
        fclose(idx);
        for (int k = 0; k < 2; k++) {
            snprintf(p, sizeof p, "%s/model-0000%d-of-00002.safetensors", dir, k + 1);
            CHECK(hyb_st_writer_save(w[k], p) == HYB_OK);
        }
    } else {
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        CHECK(hyb_st_writer_save(w[0], p) == HYB_OK);
    }
    hyb_st_writer_free(w[0]);
    hyb_st_writer_free(w[1]);
}

static void rm_hf_dir(const char *dir) {
    const char *files[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                           "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    char p[512];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void check_all_params(hyb_model *m) {
    for (int i = 0; i < n_w; i++) {
        char hf[128] = "";
        hf_of(W[i].name, hf, sizeof hf);
        if (!strcmp(W[i].name, "output.weight") && m->map->tie_embeddings) continue;
        check_param(m, hf, W[i].name);
    }
}

static void test_hf_dir(void) {
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/hyb_test_hf_dir_%d", (int)getpid());
    for (int variant = 0; variant < 3; variant++) {
        int tied = variant == 1, sharded = variant == 2;
        write_hf_dir(dir, variant == 2 ? "mistral" : "llama", tied, sharded);
        hyb_model *m = NULL;
        int rc = hyb_model_load_hf_dir(dir, &m);
        CHECK_MSG(rc == HYB_OK, "variant %d: %s", variant, hyb_error());
        if (m) {
            CHECK(m->map->tie_embeddings == tied);
            double theta = 0;
            CHECK(hyb_cfg_float(m->map->mixers[0].table, "rope_theta", 0, &theta) == HYB_OK);
            CHECK_MSG(theta == (sharded ? 500000.0 : 20000.0), "rope_theta %g", theta);
            CHECK(tied ? m->lm_head == m->embed : m->lm_head != m->embed);
            check_all_params(m);
            hyb_model_free(m);
        }
        rm_hf_dir(dir);
    }
    /* errors: wrong model_type, missing tensor */
    write_hf_dir(dir, "gpt2", 0, 0);
    hyb_model *m = (hyb_model *)1;
    CHECK(hyb_model_load_hf_dir(dir, &m) == HYB_ERR_UNSUPPORTED && m == NULL);
    CHECK_MSG(strstr(hyb_error(), "gpt2") != NULL, "%s", hyb_error());
    rm_hf_dir(dir);
    write_hf_dir(dir, "llama", 1, 0); /* file has no lm_head, config says untied */
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fprintf(f,
            "{\"model_type\": \"llama\", \"num_hidden_layers\": %d, \"hidden_size\": %d, "
            "\"intermediate_size\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
            "\"vocab_size\": %d, \"tie_word_embeddings\": false}",
            L, D, F, H, KV, V);
    fclose(f);
    CHECK(hyb_model_load_hf_dir(dir, &m) == HYB_ERR_FORMAT && m == NULL);
    CHECK_MSG(strstr(hyb_error(), "lm_head.weight") != NULL, "%s", hyb_error());
    f = fopen(p, "w");
    fprintf(f,
            "{\"model_type\": \"llama\", \"num_hidden_layers\": %d, \"hidden_size\": %d, "
            "\"intermediate_size\": %d, \"num_attention_heads\": %d, \"vocab_size\": %d, "
            "\"tie_word_embeddings\": true, \"rope_parameters\": {\"rope_type\": \"llama3\", "
            "\"rope_theta\": 500000.0, \"factor\": 8.0}}",
            L, D, F, H, V);
    fclose(f);
    CHECK(hyb_model_load_hf_dir(dir, &m) == HYB_ERR_UNSUPPORTED && m == NULL);
    CHECK_MSG(strstr(hyb_error(), "llama3") != NULL, "%s", hyb_error());
    rm_hf_dir(dir);
    CHECK(hyb_model_load_hf_dir("/nonexistent_dir", &m) < 0 && m == NULL);
}

int main(void) {
    snprintf(g_path, sizeof g_path, "/tmp/hyb_test_hf_load_%d.gguf", (int)getpid());
    make_weights();
    RUN(test_layermap_text);
    RUN(test_load_untied);
    RUN(test_load_tied);
    RUN(test_errors);
    RUN(test_json_ranges);
    RUN(test_hf_dir);
    unlink(g_path);
    for (int i = 0; i < n_w; i++)
        free(W[i].data);
    return harness_done();
}
