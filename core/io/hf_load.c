/* Building a hyb_model from pretrained llama-style checkpoints: GGUF files (hyb/hf.h).
 *
 * The steps: read the hyper-parameters, write the layer map as TOML text and parse it (so the
 * map is the same object a file would give), build the model, then fill every parameter by name.
 * Parameters are the model's (HF names); each is mapped to its GGUF name, its shape checked and
 * its data dequantised to f32 in place.
 */
#include "hyb/hf.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "hyb/gguf.h"
#include "io/quant_load.h"
#include "hyb/safetensors.h"
#include "../strbuf.h"

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

int hyb_llama_layermap_text(const hyb_llama_config *c, char *buf, size_t n) {
    char name[64];
    sanitize_name(c->name, name, sizeof name);
    size_t len = 0;
    int w = snprintf(buf, n,
                     "# generated from a llama checkpoint's hyper-parameters\n"
                     "[model]\n"
                     "name = \"%s\"\n"
                     "d_model = %d\n"
                     "n_layers = %d\n"
                     "vocab_size = %d\n"
                     "d_ff = %d\n"
                     "norm_eps = %.17g\n"
                     "tie_embeddings = %s\n"
                     "max_seq = %d\n"
                     "\n"
                     "[mixers.attn]\n"
                     "type = \"mha\"\n"
                     "symbol = \"t\"\n"
                     "n_heads = %d\n"
                     "n_kv_heads = %d\n"
                     "head_dim = %d\n"
                     "rope_theta = %.17g\n"
                     "%s"
                     "\n"
                     "[layout]\n"
                     "pattern = \"",
                     name, c->d_model, c->n_layers, c->vocab_size, c->d_ff, c->norm_eps,
                     c->tie_embeddings ? "true" : "false", c->max_seq, c->n_heads, c->n_kv_heads,
                     c->head_dim, c->rope_theta, c->attention_bias ? "bias = true\n" : "");
    if (w < 0 || (size_t)w >= n) goto too_small;
    len = (size_t)w;
    if (len + (size_t)c->n_layers + 3 > n) goto too_small;
    for (int i = 0; i < c->n_layers; i++)
        buf[len++] = 't';
    memcpy(buf + len, "\"\n", 3);
    return HYB_OK;
too_small:
    return hyb_error_set(HYB_ERR_ARG, "layer map text needs more than %zu bytes", n);
}

static int check_config(const char *src, const hyb_llama_config *c) {
    struct {
        const char *what;
        int v;
    } pos[] = {
        {"n_layers", c->n_layers},     {"d_model", c->d_model},       {"d_ff", c->d_ff},
        {"n_heads", c->n_heads},       {"n_kv_heads", c->n_kv_heads}, {"head_dim", c->head_dim},
        {"vocab_size", c->vocab_size}, {"max_seq", c->max_seq},
    };
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v <= 0)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: %s must be > 0, got %d", src, pos[i].what,
                                 pos[i].v);
    if (c->n_heads % c->n_kv_heads != 0)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: n_heads %d is not a multiple of n_kv_heads %d",
                             src, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 != 0)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: head_dim %d must be even (RoPE)", src,
                             c->head_dim);
    if (!(c->norm_eps > 0) || !(c->rope_theta > 1))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: bad norm_eps %g or rope_theta %g", src,
                             c->norm_eps, c->rope_theta);
    return HYB_OK;
}

static int build_from_config(const char *src, const hyb_llama_config *c, hyb_model **out) {
    HYB_TRY(check_config(src, c));
    size_t cap = 2048 + (size_t)c->n_layers;
    char *text = malloc(cap);
    if (!text) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", src);
    int rc = hyb_llama_layermap_text(c, text, cap);
    hyb_layermap *map = NULL;
    if (rc == HYB_OK) {
        char source[600];
        snprintf(source, sizeof source, "%s (generated layer map)", src);
        rc = hyb_layermap_parse(text, source, &map);
    }
    free(text);
    if (rc != HYB_OK) return rc;
    /* every parameter is filled from the file next (a missing one is an error): skip random init */
    rc = hyb_model_build_ex(map, 0, HYB_BUILD_NO_INIT, out); /* takes ownership of map */
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s", src);
    return HYB_OK;
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

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
    size_t len = 0;
    len += (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && len < n; d++)
        len += (size_t)snprintf(buf + len, n - len, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (len < n) snprintf(buf + len, n - len, "]");
    return buf;
}

/* ---- GGUF -------------------------------------------------------------------------------------*/

static int gg_int(hyb_gguf *g, const char *path, const char *arch, const char *key, int required,
                  int64_t def, int64_t *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int rc = hyb_gguf_get_int(g, k, out);
    if (rc == HYB_ERR_NOTFOUND && !required) {
        *out = def;
        return HYB_OK;
    }
    if (rc == HYB_ERR_NOTFOUND)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: metadata key '%s' is missing", path, k);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s", path);
    if (*out < 0 || *out > INT32_MAX)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: metadata '%s' = %lld is out of range", path, k,
                             (long long)*out);
    return HYB_OK;
}

static int gg_float(hyb_gguf *g, const char *path, const char *arch, const char *key, int required,
                    double def, double *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int rc = hyb_gguf_get_float(g, k, out);
    if (rc == HYB_ERR_NOTFOUND && !required) {
        *out = def;
        return HYB_OK;
    }
    if (rc == HYB_ERR_NOTFOUND)
        return hyb_error_set(HYB_ERR_FORMAT, "%s: metadata key '%s' is missing", path, k);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s", path);
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
            c->vocab_size = (int)ti->shape[0];
        }
    }
    c->tie_embeddings = hyb_gguf_find_tensor(g, "output.weight") < 0;
    c->attention_bias = hyb_gguf_find_tensor(g, "blk.0.attn_q.bias") >= 0;
    return HYB_OK;
}

static int gguf_fill(hyb_model *m, hyb_gguf *g, const char *path, const hyb_llama_config *c) {
    int64_t nt = hyb_gguf_tensor_count(g);
    uint8_t *used = calloc((size_t)(nt > 0 ? nt : 1), 1);
    float *tmp = NULL;
    int rc = HYB_OK;
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
                               gname, t->name, shape_str(t->ndim, t->shape, a, sizeof a));
            break;
        }
        const hyb_gguf_tensor *ti = hyb_gguf_tensor_at(g, ti_idx);
        int same = ti->ndim == t->ndim && t->dtype == HYB_F32 && hyb_tensor_is_contiguous(t);
        for (int d = 0; same && d < t->ndim; d++)
            same = ti->shape[d] == t->shape[d];
        if (!same) {
            rc = hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s' has shape %s, but %s needs %s",
                               path, gname, shape_str(ti->ndim, ti->shape, a, sizeof a), t->name,
                               shape_str(t->ndim, t->shape, b, sizeof b));
            break;
        }
        used[ti_idx] = 1;
        if (perm == PERM_NONE) { /* HYB_QUANT: keep linear weights in their blocks (quant_load.c) */
            int kept = hyb_quant_adopt_gguf(t, gname, ti->type, ti->data, ti->nbytes);
            if (kept < 0) rc = hyb_error_wrap(kept, "%s", path);
            if (kept) continue;
        }
        rc = hyb_gguf_tensor_to_f32(g, ti_idx, hyb_tensor_f32(t));
        if (rc != HYB_OK) {
            rc = hyb_error_wrap(rc, "%s: tensor '%s' (%s)", path, gname,
                                hyb_ggml_type_name(ti->type) ? hyb_ggml_type_name(ti->type) : "?");
            break;
        }
        if (perm != PERM_NONE) {
            int nh = perm == PERM_Q ? c->n_heads : c->n_kv_heads;
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
        /* HYB_QUANT: attention projections also keep their blocks, as shadows (quant_load.c) */
        rc = hyb_quant_shadow_gguf(t, gname, ti->type, ti->data, ti->nbytes,
                                   perm == PERM_NONE ? 0
                                   : perm == PERM_Q  ? c->n_heads
                                                     : c->n_kv_heads,
                                   c->head_dim);
        if (rc != HYB_OK) {
            rc = hyb_error_wrap(rc, "%s", path);
            break;
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

int hyb_model_load_gguf(const char *path, hyb_model **out) {
    *out = NULL;
    hyb_gguf *g = NULL;
    HYB_TRY(hyb_gguf_open(path, &g));
    hyb_llama_config c;
    hyb_model *m = NULL;
    int rc = gguf_read_config(g, path, &c);
    if (rc == HYB_OK) rc = build_from_config(path, &c, &m);
    if (rc == HYB_OK) rc = gguf_fill(m, g, path, &c);
    hyb_gguf_close(g);
    if (rc != HYB_OK) {
        hyb_model_free(m);
        return rc;
    }
    hyb_log(HYB_LOG_INFO, "%s: %s, %d layers, d_model %d, %d/%d heads of %d, vocab %d%s", path,
            c.name, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size,
            c.tie_embeddings ? ", tied embeddings" : "");
    *out = m;
    return HYB_OK;
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

/* An apriel_h hybrid (see core/model.c, apriel_config_json, for the format facts and where they
 * were confirmed): the layer kinds and the one ssm_cfg of its "m2" layers. */
typedef struct apriel_cfg {
    int is_apriel;
    char *kinds; /* [n_layers + 1]: 't', 'm' (m2) or 'i'; owned */
    int d_inner, d_xb, d_state, dt_rank, d_conv;
} apriel_cfg;

static int apriel_read(const cJSON *root, const char *path, const hyb_llama_config *c,
                       apriel_cfg *ap) {
    const cJSON *lay = cJSON_GetObjectItemCaseSensitive(root, "hybrid_block_layout");
    if (!cJSON_IsArray(lay))
        return hyb_error_set(HYB_ERR_FORMAT,
                             "%s: \"hybrid_block_layout\" must be a list of block "
                             "types (\"t\", \"m2\", \"i\")",
                             path);
    int n = cJSON_GetArraySize(lay);
    if (n != c->n_layers)
        return hyb_error_set(
            HYB_ERR_FORMAT, "%s: \"hybrid_block_layout\" has %d entries but num_hidden_layers = %d",
            path, n, c->n_layers);
    ap->kinds = calloc((size_t)n + 1, 1);
    if (!ap->kinds) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    int n_ssm = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(lay, i);
        const char *v = cJSON_IsString(e) ? e->valuestring : NULL;
        if (v && !strcmp(v, "t"))
            ap->kinds[i] = 't';
        else if (v && !strcmp(v, "m2"))
            ap->kinds[i] = 'm', n_ssm++;
        else if (v && !strcmp(v, "i"))
            ap->kinds[i] = 'i';
        else
            return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                 "%s: hybrid_block_layout[%d] = %s%s%s is not a block type hyb "
                                 "supports (\"t\" attention, \"m2\" Mamba, \"i\" identity)",
                                 path, i, v ? "\"" : "", v ? v : "(not a string)", v ? "\"" : "");
    }
    const cJSON *ssm = cJSON_GetObjectItemCaseSensitive(root, "ssm_cfg");
    if (!n_ssm) return HYB_OK; /* ssm_cfg unused */
    if (!cJSON_IsObject(ssm))
        return hyb_error_set(HYB_ERR_FORMAT, "%s: \"ssm_cfg\" (an object) is missing", path);
    char where[4200];
    snprintf(where, sizeof where, "%s: ssm_cfg", path);
    HYB_TRY(js_int(ssm, where, "d_inner", 1, 0, &ap->d_inner));
    HYB_TRY(js_int(ssm, where, "d_state", 1, 0, &ap->d_state));
    HYB_TRY(js_int(ssm, where, "d_conv", 1, 0, &ap->d_conv));
    /* d_xb: null means d_model; dt_rank: "auto" means ceil(d_model / 16) (the HF code) */
    const cJSON *xb = cJSON_GetObjectItemCaseSensitive(ssm, "d_xb");
    if (!xb) return hyb_error_set(HYB_ERR_FORMAT, "%s: key \"d_xb\" is missing", where);
    HYB_TRY(js_int(ssm, where, "d_xb", 0, c->d_model, &ap->d_xb));
    const cJSON *dr = cJSON_GetObjectItemCaseSensitive(ssm, "dt_rank");
    if (!dr) return hyb_error_set(HYB_ERR_FORMAT, "%s: key \"dt_rank\" is missing", where);
    if (cJSON_IsString(dr) && !strcmp(dr->valuestring, "auto"))
        ap->dt_rank = (c->d_model + 15) / 16;
    else
        HYB_TRY(js_int(ssm, where, "dt_rank", 1, 0, &ap->dt_rank));
    static const struct {
        const char *key;
        int want;
    } flags[] = {{"conv_bias", 1}, {"bias", 0}, {"dt_proj_bias", 1}, {"repeat_kv_before_conv", 1}};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        int v;
        HYB_TRY(js_bool(ssm, where, flags[i].key, flags[i].want, &v));
        if (v != flags[i].want)
            return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                 "%s: %s = %s is not supported (hyb's "
                                 "mamba1 needs %s)",
                                 where, flags[i].key, v ? "true" : "false",
                                 flags[i].want ? "true" : "false");
    }
    const int dims[] = {ap->d_inner, ap->d_state, ap->d_conv, ap->d_xb, ap->dt_rank};
    static const char *const dn[] = {"d_inner", "d_state", "d_conv", "d_xb", "dt_rank"};
    for (int i = 0; i < 5; i++)
        if (dims[i] <= 0)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: %s must be > 0, got %d", where, dn[i],
                                 dims[i]);
    return HYB_OK;
}

/* Parse a config.json text into c, and for apriel_h checkpoints the layer kinds and ssm_cfg into
 * ap (ap->kinds is allocated: the caller frees it, also on error). */
static int config_from_json(const char *text, const char *path, hyb_llama_config *c,
                            apriel_cfg *ap) {
    memset(c, 0, sizeof *c);
    memset(ap, 0, sizeof *ap);
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
    /* "apriel_hybrid_ssm" is Fast-LLM's name for the same format */
    ap->is_apriel = type && (!strcmp(type, "apriel_h") || !strcmp(type, "apriel_hybrid_ssm"));
    if (!type || (strcmp(type, "llama") != 0 && strcmp(type, "mistral") != 0 && !ap->is_apriel)) {
        rc = hyb_error_set(HYB_ERR_UNSUPPORTED,
                           "%s: model_type is %s%s%s; hyb loads \"llama\", \"mistral\" and "
                           "\"apriel_h\" checkpoints",
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
    if (ap->is_apriel) {
        c->attention_bias = 0; /* MistralDecoderLayer: no q/k/v bias */
        rc = apriel_read(root, path, c, ap);
    }
out:
    cJSON_Delete(root);
    return rc;
}

int hyb_llama_config_from_json(const char *text, const char *path, hyb_llama_config *c) {
    apriel_cfg ap;
    int rc = config_from_json(text, path, c, &ap);
    free(ap.kinds);
    return rc;
}

static int hf_read_config(const char *path, hyb_llama_config *c, apriel_cfg *ap) {
    memset(ap, 0, sizeof *ap); /* ap->kinds == NULL when the file cannot be read */
    char *text = read_text(path);
    if (!text) return hyb_error_set(HYB_ERR_IO, "%s: cannot read", path);
    int rc = config_from_json(text, path, c, ap);
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

/* Parameter `name` belongs to an apriel_h "i" layer (the whole block skipped: its norms and its
 * MLP are not read; the MLP stays zero, so h passes unchanged as in the HF code). */
static int in_skipped_layer(const char *name, const apriel_cfg *ap) {
    int layer, off = 0;
    if (!ap || !ap->is_apriel || sscanf(name, "model.layers.%d.%n", &layer, &off) != 1 || off <= 0)
        return 0;
    return layer >= 0 && layer < (int)strlen(ap->kinds) && ap->kinds[layer] == 'i';
}

static int hf_fill(hyb_model *m, shard_set *s, const char *dir, const apriel_cfg *ap) {
    for (int p = 0; p < m->n_params; p++) {
        hyb_tensor *t = m->params[p];
        if (in_skipped_layer(t->name, ap)) continue;
        const hyb_st_tensor *st = NULL;
        int k = 0;
        for (; k < s->n && !st; k++)
            st = hyb_safetensors_find(s->st[k], t->name);
        char a[96], b[96];
        if (!st)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s' %s is missing", dir, t->name,
                                 shape_str(t->ndim, t->shape, a, sizeof a));
        int same = st->ndim == t->ndim && t->dtype == HYB_F32 && hyb_tensor_is_contiguous(t);
        for (int d = 0; same && d < t->ndim; d++)
            same = st->shape[d] == t->shape[d];
        if (!same)
            return hyb_error_set(HYB_ERR_FORMAT, "%s: tensor '%s' has shape %s, the model needs %s",
                                 hyb_safetensors_path(s->st[k - 1]), t->name,
                                 shape_str(st->ndim, st->shape, a, sizeof a),
                                 shape_str(t->ndim, t->shape, b, sizeof b));
        HYB_TRY(hyb_safetensors_read_f32(s->st[k - 1], st, hyb_tensor_f32(t), st->numel));
    }
    return HYB_OK;
}

/* The layer map of an apriel_h hybrid: [mixers.attn] (mha, "t"), [mixers.m2] (mamba1, "m"),
 * [mixers.skip] (identity, "i"), only those used, and a pattern of their symbols. */
static int apriel_build(const char *src, const hyb_llama_config *c, const apriel_cfg *ap,
                        hyb_model **out) {
    HYB_TRY(check_config(src, c));
    char name[64];
    sanitize_name(c->name, name, sizeof name);
    hyb_strbuf b = {0};
    hyb_strbuf_printf(&b,
                      "# generated from an apriel_h checkpoint's config.json\n[model]\n"
                      "name = \"%s\"\nd_model = %d\nn_layers = %d\nvocab_size = %d\nd_ff = %d\n"
                      "norm_eps = %.17g\ntie_embeddings = %s\nmax_seq = %d\n",
                      name, c->d_model, c->n_layers, c->vocab_size, c->d_ff, c->norm_eps,
                      c->tie_embeddings ? "true" : "false", c->max_seq);
    if (strchr(ap->kinds, 't'))
        hyb_strbuf_printf(&b,
                          "\n[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\nn_heads = %d\n"
                          "n_kv_heads = %d\nhead_dim = %d\nrope_theta = %.17g\n",
                          c->n_heads, c->n_kv_heads, c->head_dim, c->rope_theta);
    if (strchr(ap->kinds, 'm'))
        hyb_strbuf_printf(&b,
                          "\n[mixers.m2]\ntype = \"mamba1\"\nsymbol = \"m\"\nd_inner = %d\n"
                          "d_xb = %d\nd_state = %d\ndt_rank = %d\nd_conv = %d\n"
                          "double_dt_bias = true\n",
                          ap->d_inner, ap->d_xb, ap->d_state, ap->dt_rank, ap->d_conv);
    if (strchr(ap->kinds, 'i'))
        hyb_strbuf_printf(&b, "\n[mixers.skip]\ntype = \"%s\"\nsymbol = \"i\"\n",
                          HYB_MIXER_IDENTITY);
    hyb_strbuf_printf(&b, "\n[layout]\npattern = \"%s\"\n", ap->kinds);
    if (b.oom) {
        hyb_strbuf_free(&b);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", src);
    }
    char source[600];
    snprintf(source, sizeof source, "%s (generated layer map)", src);
    hyb_layermap *map = NULL;
    int rc = hyb_layermap_parse(b.p, source, &map);
    hyb_strbuf_free(&b);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s", src);
    /* no init: the weights are read next, and the MLP of an "i" layer must stay zero */
    rc = hyb_model_build_ex(map, 0, HYB_BUILD_NO_INIT, out);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "%s", src);
    return HYB_OK;
}

int hyb_model_load_hf_dir(const char *dir, hyb_model **out) {
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    hyb_llama_config c;
    apriel_cfg ap;
    int rc = hf_read_config(path, &c, &ap);
    if (rc != HYB_OK) {
        free(ap.kinds);
        return rc;
    }
    shard_set s = {0, NULL};
    if ((rc = shards_open(dir, &s)) != HYB_OK) {
        free(ap.kinds);
        return rc;
    }
    hyb_model *m = NULL;
    rc = ap.is_apriel ? apriel_build(dir, &c, &ap, &m) : build_from_config(dir, &c, &m);
    if (rc == HYB_OK) rc = hf_fill(m, &s, dir, &ap);
    shards_close(&s);
    if (rc == HYB_OK && ap.is_apriel)
        hyb_log(HYB_LOG_INFO,
                "%s: apriel_h hybrid, %d layers \"%s\" (t attention, m Mamba m2, "
                "i identity)",
                dir, c.n_layers, ap.kinds);
    free(ap.kinds);
    if (rc != HYB_OK) {
        hyb_model_free(m);
        return rc;
    }
    *out = m;
    return HYB_OK;
}
