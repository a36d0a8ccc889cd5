/* Building a hyb_model from pretrained checkpoints (hyb/hf.h): GGUF files and HF directories.
 *
 * The steps: read the hyper-parameters, write the layer map as TOML text and parse it (so the
 * map is the same object a file would give), build the model, then fill every parameter by name.
 * The layer map's mixer tables come from the mixer plugins' hf_import hooks (docs/HF_CONFIG.md):
 * this file knows the config formats and identity layers, never a mixer. For GGUF, parameters
 * are the model's (HF names); each is mapped to its GGUF name, its shape checked and its data
 * dequantised to f32 in place.
 */
#include "hyb/hf.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "hyb/gguf.h"
#include "backend/cpu/cpu_quant.h"
#include "io/quant_load.h"
#include "hyb/safetensors.h"
#include "../strbuf.h"
#include "hf_config.h"

/* ---- layer map text ---------------------------------------------------------------------------*/

static void sanitize_name(const char *in, char *out, size_t n) {
    size_t j = 0;
    for (size_t i = 0; in && in[i] && j + 1 < n; i++) {
        unsigned char c = (unsigned char)in[i];
        out[j++] = (isalnum(c) || c == '-' || c == '_' || c == '.') ? (char)c : '-';
    }
    out[j] = 0;
    if (j == 0) snprintf(out, n, "llama");
}

/* ---- the layer map of an HF config, through the mixers' hf_import hooks ----------------------
 * A config names its layers' mixers in one of three formats (hyb/plugin.h, docs/HF_CONFIG.md):
 * llama (every layer the mixer of HF block type "t"), apriel_h (hybrid_block_layout of block
 * types, "i" = identity) and hyb_hybrid (hybrid_block_layout of mixer types). Each mixer type
 * reads its own keys and writes its TOML table (hf_import); the core writes [model] and the
 * layout, and knows only identity layers. */

typedef struct hf_plan {
    const char *format;          /* HYB_HF_* */
    int n;                       /* layers */
    const hyb_mixer_desc **desc; /* [n]; NULL = identity layer (the whole block skipped) */
    char *pattern;               /* [n + 1] the layout's symbols */
    char *toml;                  /* the generated layer map */
} hf_plan;

static void plan_free(hf_plan *p) {
    free(p->desc);
    free(p->pattern);
    free(p->toml);
    memset(p, 0, sizeof *p);
}

/* The plugin whose hf_layer_type is `tag` (every plugin on the search path is loaded once, so that
 * two claiming the same type are caught). NULL without an error when none does. */
static void scan_plugins(void) {
    hyb_plugin_scan();
}

static int find_by_layer_type(const char *path, const char *tag, const hyb_mixer_desc **out) {
    static pthread_once_t scanned = PTHREAD_ONCE_INIT;
    pthread_once(&scanned, scan_plugins);
    *out = NULL;
    const char *where = NULL, *w2 = NULL;
    for (int i = 0, n = hyb_plugin_count(); i < n; i++) {
        const hyb_mixer_desc *d = hyb_plugin_get(i, &w2);
        if (!d || !d->hf_layer_type || strcmp(d->hf_layer_type, tag) != 0) continue;
        if (*out)
            return hyb_error_set(HYB_ERR_FORMAT,
                                 "%s: HF block type \"%s\" is claimed by two mixers: '%s' (%s) and "
                                 "'%s' (%s)",
                                 path, tag, (*out)->name, where, d->name, w2);
        *out = d;
        where = w2;
    }
    return HYB_OK;
}

/* The block types of the loaded plugins ("\"t\" (<mixer>), ...") for messages */
static void known_layer_types(char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "\"i\" (identity)");
    for (int i = 0, c = hyb_plugin_count(); i < c && k < n; i++) {
        const hyb_mixer_desc *d = hyb_plugin_get(i, NULL);
        if (d && d->hf_layer_type)
            k += (size_t)snprintf(buf + k, n - k, ", \"%s\" (%s)", d->hf_layer_type, d->name);
    }
}

static int plan_alloc(hf_plan *p, const char *format, int n, const char *path) {
    memset(p, 0, sizeof *p);
    p->format = format;
    p->n = n;
    p->desc = calloc((size_t)(n > 0 ? n : 1), sizeof *p->desc);
    p->pattern = calloc((size_t)n + 1, 1);
    if (!p->desc || !p->pattern) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    return HYB_OK;
}

/* Which mixer each layer runs, from hybrid_block_layout (apriel_h: block types; hyb_hybrid:
 * mixer types). */
static int plan_layout(const cJSON *root, const char *path, const char *format, int n_layers,
                       hf_plan *p) {
    const int apriel = !strcmp(format, HYB_HF_APRIEL_H);
    const cJSON *lay = cJSON_GetObjectItemCaseSensitive(root, "hybrid_block_layout");
    if (!cJSON_IsArray(lay))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: \"hybrid_block_layout\" must be a list of %s",
                             path,
                             apriel ? "block types (\"t\", \"m2\", \"i\", ...)"
                                    : "mixer types (plugin names, \"identity\")");
    int n = cJSON_GetArraySize(lay);
    if (n != n_layers)
        return hyb_error_set(
            HYB_ERR_FORMAT, "%s: \"hybrid_block_layout\" has %d entries but num_hidden_layers = %d",
            path, n, n_layers);
    HYB_TRY(plan_alloc(p, format, n, path));
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(lay, i);
        const char *v = cJSON_IsString(e) ? e->valuestring : NULL;
        const hyb_mixer_desc *d = NULL;
        if (v && !strcmp(v, apriel ? "i" : HYB_MIXER_IDENTITY)) continue; /* identity: NULL */
        if (v && apriel) {
            HYB_TRY(find_by_layer_type(path, v, &d));
        } else if (v) {
            if (hyb_plugin_find(v, &d) != HYB_OK)
                return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "%s: hybrid_block_layout[%d] = \"%s\"",
                                      path, i, v);
        }
        if (!d) {
            char known[512];
            known_layer_types(known, sizeof known);
            return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                 "%s: hybrid_block_layout[%d] = %s%s%s is not a block type hyb "
                                 "supports (known: %s)",
                                 path, i, v ? "\"" : "", v ? v : "(not a string)", v ? "\"" : "",
                                 known);
        }
        if (!d->hf_import)
            return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                 "%s: hybrid_block_layout[%d]: mixer '%s' has no HF config hooks",
                                 path, i, d->name);
        p->desc[i] = d;
    }
    return HYB_OK;
}

/* A symbol for mixer d: its block type's first letter, else its name's, else any free one. */
static char pick_symbol(const hyb_mixer_desc *d, const char *used) {
    const char *cand[2] = {d->hf_layer_type, d->name};
    for (int k = 0; k < 2; k++)
        if (cand[k] && isalnum((unsigned char)cand[k][0]) && cand[k][0] != 'i' &&
            !strchr(used, cand[k][0]))
            return cand[k][0];
    for (const char *c = "abcdefghjklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"; *c; c++)
        if (!strchr(used, *c)) return *c;
    return 0;
}

/* The layer map text of p: [model] from c, one [mixers.<type>] per mixer type (its table from
 * hf_import over root), [mixers.skip] for identity layers, the pattern. */
static int plan_layermap(const cJSON *root, const char *path, const hyb_llama_config *c,
                         hf_plan *p) {
    char name[64];
    sanitize_name(c->name, name, sizeof name);
    hyb_strbuf b = {0};
    hyb_strbuf_printf(&b,
                      "# generated from an HF %s config.json\n[model]\n"
                      "name = \"%s\"\nd_model = %d\nn_layers = %d\nvocab_size = %d\nd_ff = %d\n"
                      "norm_eps = %.17g\ntie_embeddings = %s\nmax_seq = %d\n",
                      p->format, name, c->d_model, c->n_layers, c->vocab_size, c->d_ff, c->norm_eps,
                      c->tie_embeddings ? "true" : "false", c->max_seq);
    char used[128] = "";
    int rc = HYB_OK, any_identity = 0;
    const char *old_src = hyb_hfj_source(path);
    for (int l = 0; l < p->n && rc == HYB_OK; l++) {
        const hyb_mixer_desc *d = p->desc[l];
        if (!d) {
            any_identity = 1;
            p->pattern[l] = 'i';
            continue;
        }
        int first = l;
        for (int k = 0; k < l; k++)
            if (p->desc[k] == d) {
                first = k;
                break;
            }
        if (first < l) {
            p->pattern[l] = p->pattern[first];
            continue;
        }
        char sym = pick_symbol(d, used);
        if (!sym) {
            rc = hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: too many mixer types", path);
            break;
        }
        size_t u = strlen(used);
        used[u] = sym;
        used[u + 1] = 0;
        p->pattern[l] = sym;
        hyb_model_dims dims = {.d_model = c->d_model,
                               .n_layers = c->n_layers,
                               .layer = l,
                               .max_seq = c->max_seq,
                               .norm_eps = (float)c->norm_eps};
        hyb_toml t = {{0}};
        rc = d->hf_import(&dims, p->format, (const hyb_json *)root, &t);
        if (rc == HYB_OK && t.b.oom) rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
        if (rc == HYB_OK)
            hyb_strbuf_printf(&b, "\n[mixers.%s]\ntype = \"%s\"\nsymbol = \"%c\"\n%s", d->name,
                              d->name, sym, t.b.p ? t.b.p : "");
        else
            rc = hyb_error_wrap(rc, "layer %d (%s)", l, d->name);
        hyb_strbuf_free(&t.b);
    }
    hyb_hfj_source(old_src);
    if (rc != HYB_OK) {
        hyb_strbuf_free(&b);
        return rc;
    }
    if (any_identity)
        hyb_strbuf_printf(&b, "\n[mixers.skip]\ntype = \"%s\"\nsymbol = \"i\"\n",
                          HYB_MIXER_IDENTITY);
    hyb_strbuf_printf(&b, "\n[layout]\npattern = \"%s\"\n", p->pattern);
    if (b.oom) {
        hyb_strbuf_free(&b);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    }
    p->toml = b.p;
    return HYB_OK;
}

/* A plain llama (GGUF metadata or a llama/mistral config): every layer the mixer of block type
 * "t", configured from the attention keys of c. */
static int llama_plan(const hyb_llama_config *c, const char *path, hf_plan *p) {
    const hyb_mixer_desc *d = NULL;
    HYB_TRY(plan_alloc(p, HYB_HF_LLAMA, c->n_layers, path));
    HYB_TRY(find_by_layer_type(path, "t", &d));
    if (!d)
        return hyb_error_set(HYB_ERR_NOTFOUND,
                             "%s: no mixer plugin has HF block type \"t\" (the attention of a "
                             "llama): is the plugin search path right?",
                             path);
    for (int l = 0; l < p->n; l++)
        p->desc[l] = d;
    cJSON *root = cJSON_CreateObject();
    if (!root || !cJSON_AddNumberToObject(root, "num_attention_heads", c->n_heads) ||
        !cJSON_AddNumberToObject(root, "num_key_value_heads", c->n_kv_heads) ||
        !cJSON_AddNumberToObject(root, "head_dim", c->head_dim) ||
        !cJSON_AddNumberToObject(root, "rope_theta", c->rope_theta) ||
        !cJSON_AddBoolToObject(root, "attention_bias", c->attention_bias)) {
        cJSON_Delete(root);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    }
    int rc = plan_layermap(root, path, c, p);
    cJSON_Delete(root);
    return rc;
}

int hyb_llama_layermap_text(const hyb_llama_config *c, char *buf, size_t n) {
    hf_plan p;
    int rc = llama_plan(c, c->name[0] ? c->name : "llama", &p);
    if (rc == HYB_OK && strlen(p.toml) >= n)
        rc = hyb_error_set(HYB_ERR_ARG, "layer map text needs more than %zu bytes", n);
    if (rc == HYB_OK) memcpy(buf, p.toml, strlen(p.toml) + 1);
    plan_free(&p);
    return rc;
}

/* The file's names for the checked fields, in check_config's order (NULL: hyb's own names). */
enum { K_LAYERS, K_DMODEL, K_DFF, K_HEADS, K_KV, K_HEAD_DIM, K_VOCAB, K_SEQ, K_EPS, K_THETA, K_N };
static const char *const JSON_KEYS[K_N] = {
    "num_hidden_layers",   "hidden_size", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "head_dim",    "vocab_size",        "max_position_embeddings",
    "rms_norm_eps",        "rope_theta"};
static const char *const GGUF_KEYS[K_N] = {"llama.block_count",
                                           "llama.embedding_length",
                                           "llama.feed_forward_length",
                                           "llama.attention.head_count",
                                           "llama.attention.head_count_kv",
                                           "llama.attention.key_length",
                                           "vocab_size (tokenizer.ggml.tokens)",
                                           "llama.context_length",
                                           "llama.attention.layer_norm_rms_epsilon",
                                           "llama.rope.freq_base"};
static const char *const OWN_KEYS[K_N] = {"n_layers",   "d_model",   "d_ff",       "n_heads",
                                          "n_kv_heads", "head_dim",  "vocab_size", "max_seq",
                                          "norm_eps",   "rope_theta"};

/* Every hyper-parameter within its stated range (hyb/config.h), named as the file names it. */
static int check_config(const char *src, const hyb_llama_config *c, const char *const *names) {
    if (!names) names = OWN_KEYS;
    const struct {
        int k, v, max;
    } dims[] = {
        {K_LAYERS, c->n_layers, HYB_MAX_LAYERS}, {K_DMODEL, c->d_model, HYB_MAX_D_MODEL},
        {K_DFF, c->d_ff, HYB_MAX_D_FF},          {K_HEADS, c->n_heads, HYB_MAX_HEADS},
        {K_KV, c->n_kv_heads, HYB_MAX_HEADS},    {K_HEAD_DIM, c->head_dim, HYB_MAX_HEAD_DIM},
        {K_VOCAB, c->vocab_size, HYB_MAX_VOCAB}, {K_SEQ, c->max_seq, HYB_MAX_SEQ},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].v <= 0 || dims[i].v > dims[i].max)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: %s = %d is out of range [1, %d]", src,
                                 names[dims[i].k], dims[i].v, dims[i].max);
    if (c->n_heads % c->n_kv_heads != 0)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: %s %d is not a multiple of %s %d", src,
                             names[K_HEADS], c->n_heads, names[K_KV], c->n_kv_heads);
    if (c->head_dim % 2 != 0)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: %s %d must be even (RoPE)", src,
                             names[K_HEAD_DIM], c->head_dim);
    if (!(c->norm_eps >= HYB_NORM_EPS_MIN && c->norm_eps <= HYB_NORM_EPS_MAX))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: %s = %g is out of range [%g, %g]", src,
                             names[K_EPS], c->norm_eps, HYB_NORM_EPS_MIN, HYB_NORM_EPS_MAX);
    if (!(c->rope_theta > 1 && c->rope_theta <= HYB_ROPE_THETA_MAX))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: %s = %g is out of range (1, %g]", src,
                             names[K_THETA], c->rope_theta, HYB_ROPE_THETA_MAX);
    return HYB_OK;
}

static int hf_build(const char *src, const hf_plan *p, unsigned flags, hyb_model **out);

static int build_from_config(const char *src, const hyb_llama_config *c, hyb_model **out) {
    HYB_TRY(check_config(src, c, NULL));
    hf_plan p;
    int rc = llama_plan(c, src, &p);
    if (rc == HYB_OK) rc = hf_build(src, &p, HYB_BUILD_NO_DATA, out); /* gguf_fill gives data */
    plan_free(&p);
    return rc;
}

/* ---- names ------------------------------------------------------------------------------------*/

enum { PERM_NONE = 0, PERM_Q, PERM_K };

/* HF parameter name -> GGUF tensor name (llama.cpp's naming). */
static int gguf_name_for(const char *hf, char *out, size_t n, int *perm) {
    static const struct {
        const char *hf, *gg;
        int perm;
    } layer_map[] = {
        {"input_layernorm.weight", "attn_norm.weight", PERM_NONE},
        {"self_attn.q_proj.weight", "attn_q.weight", PERM_Q},
        {"self_attn.k_proj.weight", "attn_k.weight", PERM_K},
        {"self_attn.v_proj.weight", "attn_v.weight", PERM_NONE},
        {"self_attn.o_proj.weight", "attn_output.weight", PERM_NONE},
        {"self_attn.q_proj.bias", "attn_q.bias", PERM_Q},
        {"self_attn.k_proj.bias", "attn_k.bias", PERM_K},
        {"self_attn.v_proj.bias", "attn_v.bias", PERM_NONE},
        {"post_attention_layernorm.weight", "ffn_norm.weight", PERM_NONE},
        {"mlp.gate_proj.weight", "ffn_gate.weight", PERM_NONE},
        {"mlp.up_proj.weight", "ffn_up.weight", PERM_NONE},
        {"mlp.down_proj.weight", "ffn_down.weight", PERM_NONE},
    };
    *perm = PERM_NONE;
    if (!strcmp(hf, "model.embed_tokens.weight")) return snprintf(out, n, "token_embd.weight"), 1;
    if (!strcmp(hf, "model.norm.weight")) return snprintf(out, n, "output_norm.weight"), 1;
    if (!strcmp(hf, "lm_head.weight")) return snprintf(out, n, "output.weight"), 1;
    int layer, off = 0;
    if (sscanf(hf, "model.layers.%d.%n", &layer, &off) == 1 && off > 0) {
        const char *rest = hf + off;
        for (size_t i = 0; i < sizeof layer_map / sizeof layer_map[0]; i++)
            if (!strcmp(rest, layer_map[i].hf)) {
                *perm = layer_map[i].perm;
                snprintf(out, n, "blk.%d.%s", layer, layer_map[i].gg);
                return 1;
            }
    }
    return 0;
}

/* llama.cpp's converter stores q/k rows per head interleaved for its RoPE: GGUF row
 * h*hd + 2i + j holds HF row h*hd + j*hd/2 + i (i < hd/2, j in {0, 1}). Put them back.
 * w: [n_heads * hd, cols], tmp: [hd * cols]. */
static void unpermute_heads(float *w, int n_heads, int hd, int64_t cols, float *tmp) {
    const int half = hd / 2;
    for (int h = 0; h < n_heads; h++) {
        float *blk = w + (int64_t)h * hd * cols;
        memcpy(tmp, blk, (size_t)hd * (size_t)cols * sizeof *tmp);
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++)
                memcpy(blk + (int64_t)(j * half + i) * cols, tmp + (int64_t)(2 * i + j) * cols,
                       (size_t)cols * sizeof *tmp);
    }
}

/* ---- GGUF -------------------------------------------------------------------------------------*/

/* rc of looking up metadata key k: HYB_OK when found, or missing and not required (*missing: the
 * caller takes its default); else the error. */
static int gg_found(int rc, const char *path, const char *k, int required, int *missing) {
    *missing = rc == HYB_ERR_NOTFOUND && !required;
    if (*missing) return HYB_OK;
    if (rc == HYB_ERR_NOTFOUND)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: metadata key '%s' is missing", path, k);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s", path);
    return HYB_OK;
}

static int gg_int(hyb_gguf *g, const char *path, const char *arch, const char *key, int required,
                  int64_t def, int64_t *out) {
    char k[128];
    int missing;
    snprintf(k, sizeof k, "%s.%s", arch, key);
    HYB_TRY(gg_found(hyb_gguf_get_int(g, k, out), path, k, required, &missing));
    if (missing) {
        *out = def;
        return HYB_OK;
    }
    if (*out < 0 || *out > INT32_MAX)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: metadata '%s' = %lld is out of range", path, k,
                             (long long)*out);
    return HYB_OK;
}

static int gg_float(hyb_gguf *g, const char *path, const char *arch, const char *key, int required,
                    double def, double *out) {
    char k[128];
    int missing;
    snprintf(k, sizeof k, "%s.%s", arch, key);
    HYB_TRY(gg_found(hyb_gguf_get_float(g, k, out), path, k, required, &missing));
    if (missing) *out = def;
    return HYB_OK;
}

static int gguf_read_config(hyb_gguf *g, const char *path, hyb_llama_config *c) {
    memset(c, 0, sizeof *c);
    const char *arch = NULL;
    int rc = hyb_gguf_get_str(g, "general.architecture", &arch, NULL);
    if (rc == HYB_ERR_NOTFOUND)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: no general.architecture key (not a model file?)",
                             path);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s", path);
    if (strcmp(arch, "llama") != 0)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "%s: general.architecture is '%s'; hyb loads 'llama' GGUF files "
                             "(llama, mistral, SmolLM)",
                             path, arch);
    const char *name = NULL;
    if (hyb_gguf_get_str(g, "general.name", &name, NULL) != HYB_OK) name = "llama";
    snprintf(c->name, sizeof c->name, "%s", name);
    hyb_error_clear();

    int64_t v;
    HYB_TRY(gg_int(g, path, arch, "block_count", 1, 0, &v));
    c->n_layers = (int)v;
    HYB_TRY(gg_int(g, path, arch, "embedding_length", 1, 0, &v));
    c->d_model = (int)v;
    HYB_TRY(gg_int(g, path, arch, "feed_forward_length", 1, 0, &v));
    c->d_ff = (int)v;
    HYB_TRY(gg_int(g, path, arch, "attention.head_count", 1, 0, &v));
    c->n_heads = (int)v;
    HYB_TRY(gg_int(g, path, arch, "attention.head_count_kv", 0, c->n_heads, &v));
    c->n_kv_heads = (int)v;
    HYB_TRY(gg_int(g, path, arch, "context_length", 0, 2048, &v));
    c->max_seq = (int)v;
    if (c->n_heads <= 0)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: %s.attention.head_count must be > 0", path, arch);
    HYB_TRY(gg_int(g, path, arch, "attention.key_length", 0, c->d_model / c->n_heads, &v));
    c->head_dim = (int)v;
    int64_t vlen;
    HYB_TRY(gg_int(g, path, arch, "attention.value_length", 0, c->head_dim, &vlen));
    if (vlen != c->head_dim)
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: key_length %d != value_length %lld", path,
                             c->head_dim, (long long)vlen);
    HYB_TRY(gg_int(g, path, arch, "rope.dimension_count", 0, c->head_dim, &v));
    if (v != c->head_dim)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "%s: partial RoPE (rope.dimension_count %lld, head_dim %d) is not "
                             "supported",
                             path, (long long)v, c->head_dim);
    const char *scaling = NULL;
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    if (hyb_gguf_get_str(g, k, &scaling, NULL) == HYB_OK && strcmp(scaling, "none") != 0)
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: RoPE scaling '%s' is not supported", path,
                             scaling);
    hyb_error_clear();
    HYB_TRY(gg_float(g, path, arch, "rope.freq_base", 0, 10000.0, &c->rope_theta));
    HYB_TRY(gg_float(g, path, arch, "attention.layer_norm_rms_epsilon", 1, 0, &c->norm_eps));

    /* vocabulary: the tokenizer's token list, else <arch>.vocab_size, else the embedding rows */
    uint64_t ntok = 0;
    hyb_gguf_vtype et;
    if (hyb_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &ntok) == HYB_OK && ntok > 0) {
        if (ntok > HYB_MAX_VOCAB)
            return hyb_error_set(HYB_ERR_FORMAT,
                                 "%s: tokenizer.ggml.tokens has %llu entries (range [1, %d])", path,
                                 (unsigned long long)ntok, HYB_MAX_VOCAB);
        c->vocab_size = (int)ntok;
    } else {
        hyb_error_clear();
        HYB_TRY(gg_int(g, path, arch, "vocab_size", 0, 0, &v));
        c->vocab_size = (int)v;
        if (v == 0) {
            int64_t t = hyb_gguf_find_tensor(g, "token_embd.weight");
            const hyb_gguf_tensor *ti = t >= 0 ? hyb_gguf_tensor_at(g, t) : NULL;
            if (!ti)
                return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor 'token_embd.weight' is missing",
                                     path);
            if (ti->shape[0] < 1 || ti->shape[0] > HYB_MAX_VOCAB)
                return hyb_error_set(HYB_ERR_FORMAT,
                                     "%s: token_embd.weight has %lld rows (range [1, %d])", path,
                                     (long long)ti->shape[0], HYB_MAX_VOCAB);
            c->vocab_size = (int)ti->shape[0];
        }
    }
    c->tie_embeddings = hyb_gguf_find_tensor(g, "output.weight") < 0;
    c->attention_bias = hyb_gguf_find_tensor(g, "blk.0.attn_q.bias") >= 0;
    return check_config(path, c, GGUF_KEYS);
}

/* 1 when parameter t may stay in GGUF blocks: a frozen linear weight that the graph's matmul /
 * embedding ops consume (token embedding, lm_head, MLP gate/up/down), or a mixer parameter whose
 * plugin declared it quant_ok (hyb/plugin.h, ABI 3: e.g. mha's q/k/v/o projections) */
static int may_stay_quantized(const hyb_model *m, const hyb_tensor *t) {
    if (t == m->embed || t == m->lm_head) return 1;
    for (int l = 0; l < m->L; l++) {
        const hyb_layer *ly = &m->layers[l];
        if (t == ly->w_gate || t == ly->w_up || t == ly->w_down) return 1;
        if (ly->mixer)
            for (int i = 0; i < ly->mixer->n_params; i++)
                if (ly->mixer->params[i] == t) return ly->mixer->decls[i].quant_ok;
    }
    return 0;
}

/* Fill every parameter of m (built with HYB_BUILD_NO_DATA: no memory yet) from the file. With
 * keep_quant, a parameter that may stay quantized takes the file's blocks (pointing into the
 * mapping, or a row-permuted copy for q/k); *mapped tells whether any points into the mapping. */
static int gguf_fill(hyb_model *m, hyb_gguf *g, const char *path, const hyb_llama_config *c,
                     int keep_quant, int *mapped) {
    int64_t nt = hyb_gguf_tensor_count(g);
    uint8_t *used = calloc((size_t)(nt > 0 ? nt : 1), 1);
    float *tmp = NULL;
    int rc = HYB_OK;
    *mapped = 0;
    if (!used) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    for (int p = 0; p < m->n_params && rc == HYB_OK; p++) {
        hyb_tensor *t = m->params[p];
        char gname[128], a[96], b[96];
        int perm;
        if (!gguf_name_for(t->name, gname, sizeof gname, &perm)) {
            rc = hyb_error_set(HYB_ERR_UNSUPPORTED,
                               "%s: model parameter '%s' has no GGUF counterpart", path, t->name);
            break;
        }
        int64_t ti_idx = hyb_gguf_find_tensor(g, gname);
        if (ti_idx < 0) {
            rc = hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s' (for %s %s) is missing", path,
                               gname, t->name, hyb_shape_str(t->ndim, t->shape, a, sizeof a));
            break;
        }
        const hyb_gguf_tensor *ti = hyb_gguf_tensor_at(g, ti_idx);
        int same = ti->ndim == t->ndim && t->dtype == HYB_F32 && hyb_tensor_is_contiguous(t);
        for (int d = 0; same && d < t->ndim; d++)
            same = ti->shape[d] == t->shape[d];
        if (!same) {
            rc = hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s' has shape %s, but %s needs %s",
                               path, gname, hyb_shape_str(ti->ndim, ti->shape, a, sizeof a),
                               t->name, hyb_shape_str(t->ndim, t->shape, b, sizeof b));
            break;
        }
        used[ti_idx] = 1;
        /* a NaN/Inf block scale is refused whatever the weights become (f32 or blocks) */
        if ((rc = hyb_quant_check_scales(gname, ti->type, ti->data, ti->nbytes)) != HYB_OK) {
            rc = hyb_error_wrap(rc, "%s", path);
            break;
        }
        const int nh = perm == PERM_Q ? c->n_heads : perm == PERM_K ? c->n_kv_heads : 0;
        if (keep_quant && may_stay_quantized(m, t)) { /* blocks, no f32 copy (quant_load.c) */
            int kept = hyb_quant_keep_gguf(t, gname, ti->type, ti->data, ti->nbytes, nh,
                                           c->head_dim);
            if (kept < 0) {
                rc = hyb_error_wrap(kept, "%s", path);
                break;
            }
            if (kept) {
                *mapped |= nh == 0;
                continue;
            }
        }
        if (!t->data && !(t->data = hyb_malloc(hyb_tensor_nbytes(t)))) { /* HYB_BUILD_NO_DATA */
            rc = hyb_error_wrap(HYB_ERR_NOMEM, "%s: tensor '%s'", path, gname);
            break;
        }
        rc = hyb_gguf_tensor_to_f32(g, ti_idx, hyb_tensor_f32(t));
        if (rc != HYB_OK) {
            const char *tn = hyb_ggml_type_name(ti->type);
            rc = hyb_error_wrap(rc, "%s: tensor '%s' (%s; hyb reads F32 F16 BF16 %s and the other "
                                "K-quants)",
                                path, gname, tn ? tn : "?", hyb_quant_supported_list());
            break;
        }
        if (perm != PERM_NONE) {
            int64_t cols = t->ndim == 2 ? t->shape[1] : 1;
            if (t->shape[0] != (int64_t)nh * c->head_dim) {
                rc = hyb_error_set(HYB_ERR_FORMAT,
                                   "%s: tensor '%s' has %lld rows, expected %d heads x %d", path,
                                   gname, (long long)t->shape[0], nh, c->head_dim);
                break;
            }
            if (!tmp) tmp = malloc((size_t)c->head_dim * (size_t)c->d_model * sizeof *tmp);
            if (!tmp || cols > c->d_model) {
                rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            unpermute_heads(hyb_tensor_f32(t), nh, c->head_dim, cols, tmp);
        }
    }
    if (rc == HYB_OK)
        for (int64_t i = 0; i < nt; i++)
            if (!used[i])
                hyb_log(HYB_LOG_WARN, "%s: tensor '%s' is not used by the model", path,
                        hyb_gguf_tensor_at(g, i)->name);
    free(tmp);
    free(used);
    return rc;
}

static void gguf_source_free(void *g) {
    hyb_gguf_close((hyb_gguf *)g);
}

int hyb_model_load_gguf_ex(const char *path, int quant, hyb_model **out) {
    *out = NULL;
    if (quant < 0) quant = hyb_quant_get().mode != HYB_QUANT_OFF;
    hyb_gguf *g = NULL;
    HYB_TRY(hyb_gguf_open(path, &g));
    hyb_llama_config c;
    hyb_model *m = NULL;
    int mapped = 0;
    int rc = gguf_read_config(g, path, &c);
    if (rc == HYB_OK) rc = build_from_config(path, &c, &m);
    if (rc == HYB_OK) rc = gguf_fill(m, g, path, &c, quant, &mapped);
    int64_t nq = 0;
    for (int i = 0; m && rc == HYB_OK && i < m->n_params; i++)
        nq += m->params[i]->dtype != HYB_F32;
    /* an inference load: frozen as a whole (the f32 norms too), so that a forward on a graph
     * with gradients on records nothing through the quantized weights; hyb_model_clone gives a
     * trainable f32 copy */
    for (int i = 0; nq && i < m->n_params; i++)
        m->params[i]->requires_grad = 0;
    if (rc == HYB_OK && mapped) { /* parameters point into the mapping: the model keeps it */
        m->source = g;
        m->source_free = gguf_source_free;
        g = NULL;
    }
    hyb_gguf_close(g);
    if (rc != HYB_OK) {
        hyb_model_free(m);
        return rc;
    }
    hyb_log(HYB_LOG_INFO,
            "%s: %s, %d layers, d_model %d, %d/%d heads of %d, vocab %d%s; %lld of %d weights "
            "quantized (%s)",
            path, c.name, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim,
            c.vocab_size, c.tie_embeddings ? ", tied embeddings" : "", (long long)nq, m->n_params,
            nq ? hyb_quant_mode_name(hyb_quant_get().mode) : "f32 compute");
    *out = m;
    return HYB_OK;
}

int hyb_model_load_gguf(const char *path, hyb_model **out) {
    return hyb_model_load_gguf_ex(path, -1, out);
}

/* ---- HF checkpoint directories ----------------------------------------------------------------*/

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *p = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && n < (1L << 30) && fseek(f, 0, SEEK_SET) == 0 && (p = malloc((size_t)n + 1))) {
            if (fread(p, 1, (size_t)n, f) != (size_t)n) {
                free(p);
                p = NULL;
            } else {
                p[n] = 0;
            }
        }
    }
    fclose(f);
    return p;
}

/* Integer / number / bool fields of config.json. Absent (or null) -> def when !required. */
static int js_int(const cJSON *root, const char *path, const char *key, int required, int def,
                  int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return hyb_error_set(HYB_ERR_FORMAT, "%s: key \"%s\" is missing", path, key);
        *out = def;
        return HYB_OK;
    }
    /* range first: converting an out-of-range double (1e300, inf) to an integer is UB */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= INT32_MAX) ||
        v->valuedouble != (double)(int32_t)v->valuedouble)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: \"%s\" must be a non-negative integer", path,
                             key);
    *out = (int)v->valuedouble;
    return HYB_OK;
}

static int js_num(const cJSON *root, const char *path, const char *key, double def, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return HYB_OK;
    }
    if (!cJSON_IsNumber(v))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: \"%s\" must be a number", path, key);
    *out = v->valuedouble;
    return HYB_OK;
}

static int js_bool(const cJSON *root, const char *path, const char *key, int def, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return HYB_OK;
    }
    if (!cJSON_IsBool(v))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: \"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(v);
    return HYB_OK;
}

/* Parse a config.json text into c and plan its layers (which mixer each runs and the generated
 * layer map, through the mixers' hf_import; p is allocated: the caller frees it with plan_free,
 * also on error). */
static int config_from_json(const char *text, const char *path, hyb_llama_config *c, hf_plan *p) {
    memset(c, 0, sizeof *c);
    memset(p, 0, sizeof *p);
    cJSON *root = cJSON_Parse(text);
    int rc = HYB_OK;
    if (!root || !cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        rc = hyb_error_set(HYB_ERR_FORMAT, "%s: not a JSON object (near byte %ld)", path,
                           at && at >= text ? (long)(at - text) : 0L);
        goto out;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const char *type = cJSON_IsString(mt) ? mt->valuestring : NULL;
    /* "apriel_hybrid_ssm" is Fast-LLM's name for the apriel_h format */
    const char *format = !type                                                ? NULL
                         : !strcmp(type, "llama") || !strcmp(type, "mistral") ? HYB_HF_LLAMA
                         : !strcmp(type, "apriel_h") || !strcmp(type, "apriel_hybrid_ssm")
                             ? HYB_HF_APRIEL_H
                         : !strcmp(type, HYB_HF_HYB_HYBRID) ? HYB_HF_HYB_HYBRID
                                                            : NULL;
    if (!format) {
        rc = hyb_error_set(HYB_ERR_UNSUPPORTED,
                           "%s: model_type is %s%s%s; hyb loads \"llama\", \"mistral\", "
                           "\"apriel_h\" and \"hyb_hybrid\" checkpoints",
                           path, type ? "\"" : "", type ? type : "missing", type ? "\"" : "");
        goto out;
    }
    snprintf(c->name, sizeof c->name, "%s", type);
    if ((rc = js_int(root, path, "num_hidden_layers", 1, 0, &c->n_layers)) ||
        (rc = js_int(root, path, "hidden_size", 1, 0, &c->d_model)) ||
        (rc = js_int(root, path, "intermediate_size", 1, 0, &c->d_ff)) ||
        (rc = js_int(root, path, "num_attention_heads", 1, 0, &c->n_heads)) ||
        (rc = js_int(root, path, "num_key_value_heads", 0, c->n_heads, &c->n_kv_heads)) ||
        (rc = js_int(root, path, "vocab_size", 1, 0, &c->vocab_size)) ||
        (rc = js_int(root, path, "max_position_embeddings", 0, 2048, &c->max_seq)) ||
        (rc = js_num(root, path, "rope_theta", 10000.0, &c->rope_theta)) ||
        (rc = js_num(root, path, "rms_norm_eps", 1e-6, &c->norm_eps)) ||
        (rc = js_bool(root, path, "tie_word_embeddings", 0, &c->tie_embeddings)) ||
        (rc = js_bool(root, path, "attention_bias", 0, &c->attention_bias)))
        goto out;
    if (c->n_heads <= 0) {
        rc = hyb_error_set(HYB_ERR_FORMAT, "%s: num_attention_heads must be > 0", path);
        goto out;
    }
    if ((rc = js_int(root, path, "head_dim", 0, c->d_model / c->n_heads, &c->head_dim))) goto out;
    /* transformers >= 5 writes "rope_parameters": {"rope_theta": x, "rope_type": "default"};
     * older files "rope_theta" at the top and "rope_scaling" (null when none). */
    static const char *const rope_keys[] = {"rope_scaling", "rope_parameters"};
    for (int k = 0; k < 2; k++) {
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, rope_keys[k]);
        if (!rs || cJSON_IsNull(rs)) continue;
        if (!cJSON_IsObject(rs)) {
            rc = hyb_error_set(HYB_ERR_FORMAT, "%s: \"%s\" must be an object", path, rope_keys[k]);
            goto out;
        }
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!rt) rt = cJSON_GetObjectItemCaseSensitive(rs, "type");
        if ((rt || k == 0) && (!cJSON_IsString(rt) || strcmp(rt->valuestring, "default") != 0)) {
            rc = hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: %s type %s is not supported", path,
                               rope_keys[k], cJSON_IsString(rt) ? rt->valuestring : "(unknown)");
            goto out;
        }
        if (cJSON_GetObjectItemCaseSensitive(rs, "rope_theta") &&
            (rc = js_num(rs, path, "rope_theta", c->rope_theta, &c->rope_theta)))
            goto out;
    }
    int mlp_bias = 0;
    if ((rc = js_bool(root, path, "mlp_bias", 0, &mlp_bias))) goto out;
    if (mlp_bias) {
        rc = hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: mlp_bias = true is not supported", path);
        goto out;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0) {
        rc = hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" (hyb's MLP is SwiGLU/silu)",
                           path, act->valuestring);
        goto out;
    }
    int window = 0;
    if ((rc = js_int(root, path, "sliding_window", 0, 0, &window))) goto out;
    if (window > 0 && window < c->max_seq) {
        hyb_log(HYB_LOG_WARN,
                "%s: sliding_window %d < max_position_embeddings %d: context limited to %d tokens",
                path, window, c->max_seq, window);
        c->max_seq = window;
    }
    if (strcmp(format, HYB_HF_APRIEL_H) == 0) c->attention_bias = 0; /* MistralDecoderLayer */
    if ((rc = check_config(path, c, JSON_KEYS)) != HYB_OK) goto out;
    if (strcmp(format, HYB_HF_LLAMA) == 0) {
        rc = llama_plan(c, path, p);
    } else {
        /* the mixers read rope_theta at the top level: put the one resolved above there */
        cJSON_DeleteItemFromObjectCaseSensitive(root, "rope_theta");
        if (!cJSON_AddNumberToObject(root, "rope_theta", c->rope_theta)) {
            rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
            goto out;
        }
        rc = plan_layout(root, path, format, c->n_layers, p);
        if (rc == HYB_OK) rc = plan_layermap(root, path, c, p);
    }
out:
    cJSON_Delete(root);
    return rc;
}

int hyb_llama_config_from_json(const char *text, const char *path, hyb_llama_config *c) {
    hf_plan p;
    int rc = config_from_json(text, path, c, &p);
    plan_free(&p);
    return rc;
}

static int hf_read_config(const char *path, hyb_llama_config *c, hf_plan *p) {
    memset(p, 0, sizeof *p);
    char *text = read_text(path);
    if (!text) return hyb_error_set(HYB_ERR_IO, "%s: cannot read", path);
    int rc = config_from_json(text, path, c, p);
    free(text);
    return rc;
}

typedef struct shard_set {
    int n;
    hyb_safetensors **st;
} shard_set;

static void shards_close(shard_set *s) {
    for (int i = 0; i < s->n; i++)
        hyb_safetensors_close(s->st[i]);
    free(s->st);
    s->st = NULL;
    s->n = 0;
}

/* model.safetensors, or every shard the index names (each opened once). */
static int shards_open(const char *dir, shard_set *s) {
    char path[4096];
    s->n = 0;
    s->st = NULL;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        s->st = calloc(1, sizeof *s->st);
        if (!s->st) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", dir);
        HYB_TRY(hyb_safetensors_open(path, &s->st[0]));
        s->n = 1;
        return HYB_OK;
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *text = read_text(path);
    if (!text)
        return hyb_error_set(HYB_ERR_IO,
                             "%s: neither model.safetensors nor model.safetensors.index.json found",
                             dir);
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    int rc = HYB_OK;
    if (!cJSON_IsObject(wm)) {
        rc = hyb_error_set(HYB_ERR_FORMAT, "%s: no \"weight_map\" object", path);
        goto out;
    }
    int cap = cJSON_GetArraySize(wm);
    s->st = calloc((size_t)(cap > 0 ? cap : 1), sizeof *s->st);
    const char **names = calloc((size_t)(cap > 0 ? cap : 1), sizeof *names);
    if (!s->st || !names) {
        free(names);
        rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            rc = hyb_error_set(HYB_ERR_FORMAT, "%s: weight_map[\"%s\"] must be a file name", path,
                               e->string ? e->string : "?");
            break;
        }
        int seen = 0;
        for (int i = 0; i < s->n && !seen; i++)
            seen = !strcmp(names[i], e->valuestring);
        if (seen) continue;
        char sp[4096];
        snprintf(sp, sizeof sp, "%s/%s", dir, e->valuestring);
        if ((rc = hyb_safetensors_open(sp, &s->st[s->n])) != HYB_OK) break;
        names[s->n++] = e->valuestring;
    }
    free(names);
out:
    cJSON_Delete(root);
    if (rc != HYB_OK) shards_close(s);
    return rc;
}

/* Parameter `name` belongs to an identity layer of an apriel_h / hyb_hybrid config (the whole
 * block skipped: its norms and its MLP are not read; the MLP stays zero, so h passes unchanged as
 * in the HF code). */
static int in_skipped_layer(const char *name, const hf_plan *p) {
    int layer, off = 0;
    if (!p || !strcmp(p->format, HYB_HF_LLAMA) ||
        sscanf(name, "model.layers.%d.%n", &layer, &off) != 1 || off <= 0)
        return 0;
    return layer >= 0 && layer < p->n && p->desc[layer] == NULL;
}

static int hf_fill(hyb_model *m, shard_set *s, const char *dir, const hf_plan *p) {
    for (int k0 = 0; k0 < m->n_params; k0++) {
        hyb_tensor *t = m->params[k0];
        if (in_skipped_layer(t->name, p)) continue;
        const hyb_st_tensor *st = NULL;
        int k = 0;
        for (; k < s->n && !st; k++)
            st = hyb_safetensors_find(s->st[k], t->name);
        char a[96], b[96];
        if (!st)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s' %s is missing", dir, t->name,
                                 hyb_shape_str(t->ndim, t->shape, a, sizeof a));
        int same = st->ndim == t->ndim && t->dtype == HYB_F32 && hyb_tensor_is_contiguous(t);
        for (int d = 0; same && d < t->ndim; d++)
            same = st->shape[d] == t->shape[d];
        if (!same)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s' has shape %s, the model needs %s",
                                 hyb_safetensors_path(s->st[k - 1]), t->name,
                                 hyb_shape_str(st->ndim, st->shape, a, sizeof a),
                                 hyb_shape_str(t->ndim, t->shape, b, sizeof b));
        HYB_TRY(hyb_safetensors_read_f32(s->st[k - 1], st, hyb_tensor_f32(t), st->numel));
    }
    return HYB_OK;
}

/* Build the model of a plan (its generated layer map), without random init: every parameter is
 * read next, and the MLP of an identity layer skipped by the format must stay zero. */
static int hf_build(const char *src, const hf_plan *p, unsigned flags, hyb_model **out) {
    char source[600];
    snprintf(source, sizeof source, "%s (generated layer map)", src);
    hyb_layermap *map = NULL;
    int rc = hyb_layermap_parse(p->toml, source, &map);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s", src);
    rc = hyb_model_build_ex(map, 0, HYB_BUILD_NO_INIT | flags, out); /* takes ownership of map */
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s", src);
    return HYB_OK;
}

int hyb_model_load_hf_dir(const char *dir, hyb_model **out) {
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    hyb_llama_config c;
    hf_plan p;
    int rc = hf_read_config(path, &c, &p);
    if (rc != HYB_OK) {
        plan_free(&p);
        return rc;
    }
    shard_set s = {0, NULL};
    if ((rc = shards_open(dir, &s)) != HYB_OK) {
        plan_free(&p);
        return rc;
    }
    hyb_model *m = NULL;
    rc = hf_build(dir, &p, 0, &m);
    if (rc == HYB_OK) rc = hf_fill(m, &s, dir, &p);
    shards_close(&s);
    if (rc == HYB_OK && strcmp(p.format, HYB_HF_LLAMA) != 0)
        hyb_log(HYB_LOG_INFO, "%s: %s hybrid, %d layers \"%s\" (i: identity)", dir, p.format,
                c.n_layers, p.pattern);
    plan_free(&p);
    if (rc != HYB_OK) {
        hyb_model_free(m);
        return rc;
    }
    *out = m;
    return HYB_OK;
}
