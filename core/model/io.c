/* core/model/io.c: a model's descriptions and files (see hyb/model.h): the layer map as TOML,
 * clone, checkpoints (model.safetensors + layermap.toml, load and load_params) and the glue that
 * writes an HF config.json through the mixers' hf_export hooks. */
#include "hyb/model.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hyb/atomic.h"
#include "hyb/safetensors.h"
#include "../strbuf.h"
#include "../io/hf_config.h"

// ---- layer map as TOML
// ---------------------------------------------------------------------------

/* The text is built in a hyb_strbuf (core/strbuf.h). */

/* TOML basic string. */
static void sb_tstr(hyb_strbuf *b, const char *s) {
    hyb_strbuf_putn(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"')
            hyb_strbuf_puts(b, "\\\"");
        else if (*p == '\\')
            hyb_strbuf_puts(b, "\\\\");
        else if (*p == '\n')
            hyb_strbuf_puts(b, "\\n");
        else if (*p == '\t')
            hyb_strbuf_puts(b, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            hyb_strbuf_printf(b, "\\u%04x", *p);
        else
            hyb_strbuf_putn(b, (const char *)p, 1);
    }
    hyb_strbuf_putn(b, "\"", 1);
}

/* A key: bare when it can be, else quoted. */
static void sb_tkey(hyb_strbuf *b, const char *k) {
    int bare = *k != 0;
    for (const char *p = k; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            bare = 0;
    if (bare)
        hyb_strbuf_puts(b, k);
    else
        sb_tstr(b, k);
}

static void sb_tfloat(hyb_strbuf *b, double v) {
    if (isnan(v)) {
        hyb_strbuf_puts(b, "nan");
        return;
    }
    if (isinf(v)) {
        hyb_strbuf_puts(b, v > 0 ? "inf" : "-inf");
        return;
    }
    char tmp[64];
    if (v == floor(v) && fabs(v) < 1e15) { /* 10000.0, not 1e+04 */
        snprintf(tmp, sizeof tmp, "%.1f", v);
        hyb_strbuf_puts(b, tmp);
        return;
    }
    snprintf(tmp, sizeof tmp, "%.17g", v);
    /* shortest form that reads back to the same double */
    for (int prec = 1; prec <= 17; prec++) {
        char t2[64];
        snprintf(t2, sizeof t2, "%.*g", prec, v);
        if (strtod(t2, NULL) == v) {
            memcpy(tmp, t2, sizeof t2);
            break;
        }
    }
    hyb_strbuf_puts(b, tmp);
    if (!strpbrk(tmp, ".eE")) hyb_strbuf_puts(b, ".0"); /* keep it a float in TOML */
}

/* Emit `prefix.key = value` lines for every key of t except `skip` (NULL-terminated). */
static int emit_table(hyb_strbuf *b, const hyb_cfg_table *t, const char *prefix,
                      const char *const *skip) {
    const char **keys = NULL;
    int nk = hyb_cfg_keys(t, &keys);
    for (int i = 0; i < nk; i++) {
        const char *k = keys[i];
        int skipped = 0;
        for (const char *const *s = skip; s && *s; s++)
            skipped |= strcmp(*s, k) == 0;
        if (skipped) continue;
        const hyb_cfg_table *sub = hyb_cfg_subtable(t, k);
        if (sub) {
            hyb_strbuf pre = {0};
            if (prefix) {
                hyb_strbuf_puts(&pre, prefix);
                hyb_strbuf_puts(&pre, ".");
            }
            sb_tkey(&pre, k);
            if (pre.oom) return hyb_error_set(HYB_ERR_NOMEM, "layer map TOML: out of memory");
            int rc = emit_table(b, sub, pre.p, NULL);
            free(pre.p);
            HYB_TRY(rc);
            continue;
        }
        if (prefix) {
            hyb_strbuf_puts(b, prefix);
            hyb_strbuf_puts(b, ".");
        }
        sb_tkey(b, k);
        hyb_strbuf_puts(b, " = ");
        int64_t iv;
        int bv;
        double fv;
        const char *sv;
        char where[200];
        if (hyb_cfg_int(t, k, 0, &iv) == HYB_OK)
            hyb_strbuf_printf(b, "%" PRId64, iv);
        else if (hyb_cfg_bool(t, k, 0, &bv) == HYB_OK)
            hyb_strbuf_puts(b, bv ? "true" : "false");
        else if (hyb_cfg_float(t, k, 0, &fv) == HYB_OK)
            sb_tfloat(b, fv);
        else if (hyb_cfg_string(t, k, NULL, &sv) == HYB_OK && sv)
            sb_tstr(b, sv);
        else {
            hyb_error_clear();
            int n = hyb_cfg_array_len(t, k);
            if (n < 0)
                return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                     "%s: key '%s': value type cannot be written back to TOML",
                                     hyb_cfg_where(t, k, where, sizeof where), k);
            hyb_strbuf_puts(b, "[");
            for (int j = 0; j < n; j++) {
                if (j) hyb_strbuf_puts(b, ", ");
                if (hyb_cfg_array_int(t, k, j, &iv) == HYB_OK)
                    hyb_strbuf_printf(b, "%" PRId64, iv);
                else if (hyb_cfg_array_string(t, k, j, &sv) == HYB_OK)
                    sb_tstr(b, sv);
                else
                    return hyb_error_set(
                        HYB_ERR_UNSUPPORTED,
                        "%s: key '%s': array element %d cannot be written back to TOML",
                        hyb_cfg_where(t, k, where, sizeof where), k, j);
            }
            hyb_strbuf_puts(b, "]");
        }
        hyb_error_clear();
        hyb_strbuf_puts(b, "\n");
    }
    return HYB_OK;
}

char *hyb_model_layermap_toml(const hyb_model *m) {
    const hyb_layermap *map = m->map;
    hyb_strbuf b = {0};
    hyb_strbuf_puts(&b, "# layer map written by hyb_model_save\n\n[model]\n");
    hyb_strbuf_puts(&b, "name = ");
    sb_tstr(&b, map->name);
    hyb_strbuf_printf(&b, "\nd_model = %d\nn_layers = %d\nvocab_size = %d\nd_ff = %d\nnorm_eps = ",
                      map->d_model, map->n_layers, map->vocab_size, map->d_ff);
    sb_tfloat(&b, map->norm_eps);
    hyb_strbuf_printf(&b, "\ntie_embeddings = %s\nmax_seq = %d\n",
                      map->tie_embeddings ? "true" : "false", map->max_seq);
    /* other root tables of the source document, verbatim (none today; future-proof) */
    if (map->doc) {
        const hyb_cfg_table *root = hyb_toml_root(map->doc);
        const char **keys = NULL;
        int nk = root ? hyb_cfg_keys(root, &keys) : 0;
        for (int i = 0; i < nk; i++) {
            if (!strcmp(keys[i], "model") || !strcmp(keys[i], "mixers") ||
                !strcmp(keys[i], "layout"))
                continue;
            const hyb_cfg_table *sub = hyb_cfg_subtable(root, keys[i]);
            if (!sub) continue;
            hyb_strbuf_puts(&b, "\n[");
            sb_tkey(&b, keys[i]);
            hyb_strbuf_puts(&b, "]\n");
            if (emit_table(&b, sub, NULL, NULL) != HYB_OK) goto fail;
        }
    }
    static const char *const skip[] = {"type", "symbol", NULL};
    for (int s = 0; s < map->n_mixers; s++) {
        const hyb_mixer_spec *sp = &map->mixers[s];
        hyb_strbuf_puts(&b, "\n[mixers.");
        sb_tkey(&b, sp->name);
        hyb_strbuf_puts(&b, "]\ntype = ");
        sb_tstr(&b, sp->type);
        hyb_strbuf_puts(&b, "\n");
        if (sp->symbol) {
            char sym[2] = {sp->symbol, 0};
            hyb_strbuf_puts(&b, "symbol = ");
            sb_tstr(&b, sym);
            hyb_strbuf_puts(&b, "\n");
        }
        if (sp->table && emit_table(&b, sp->table, NULL, skip) != HYB_OK) goto fail;
    }
    hyb_strbuf_puts(&b, "\n[layout]\nlayers = [");
    for (int l = 0; l < map->n_layers; l++) {
        hyb_strbuf_puts(&b, l ? (l % 8 ? ", " : ",\n  ") : "\n  ");
        sb_tstr(&b, map->mixers[map->layer_mixer[l]].name);
    }
    hyb_strbuf_puts(&b, ",\n]\n");
    if (b.oom) {
        hyb_error_set(HYB_ERR_NOMEM, "layer map TOML: out of memory");
        goto fail;
    }
    return b.p;
fail:
    free(b.p);
    return NULL;
}

int hyb_model_clone(const hyb_model *src, hyb_model **out) {
    *out = NULL;
    char *toml = hyb_model_layermap_toml(src);
    if (!toml) return hyb_error_wrap(HYB_ERR, "hyb_model_clone");
    hyb_layermap *map = NULL;
    int rc = hyb_layermap_parse(toml, src->map->path, &map);
    free(toml);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "hyb_model_clone: re-reading the layer map");
    hyb_model *m = NULL;
    if ((rc = hyb_model_build_ex(map, 0, HYB_BUILD_NO_INIT, &m)) != HYB_OK)
        return hyb_error_wrap(rc, "hyb_model_clone");
    if (m->n_params != src->n_params) {
        hyb_model_free(m);
        return hyb_error_set(HYB_ERR,
                             "hyb_model_clone: %d parameters in the copy, %d in the source",
                             m->n_params, src->n_params);
    }
    int src_quant = 0; /* an inference load (quantized weights, all frozen): the copy trains */
    for (int i = 0; i < src->n_params; i++)
        src_quant |= src->params[i]->dtype != HYB_F32;
    for (int i = 0; i < m->n_params; i++) {
        const hyb_tensor *a = src->params[i];
        hyb_tensor *b = m->params[i];
        if (strcmp(a->name, b->name) != 0 || hyb_tensor_numel(a) != hyb_tensor_numel(b)) {
            hyb_model_free(m);
            return hyb_error_set(
                HYB_ERR, "hyb_model_clone: parameter %d is '%s' in the source, '%s' in the copy", i,
                a->name, b->name);
        }
        if (a->dtype != HYB_F32) { /* quantized (frozen): the copy is f32, trainable */
            if ((rc = hyb_dequantize(a->dtype, a->data, hyb_tensor_f32(b),
                                     hyb_tensor_numel(a))) != HYB_OK) {
                hyb_model_free(m);
                return hyb_error_wrap(rc, "hyb_model_clone: '%s'", a->name);
            }
            b->requires_grad = 1;
            m->no_decay[i] = src->no_decay[i];
            continue;
        } else if (a->device == HYB_DEV_CPU)
            memcpy(b->data, a->data, hyb_tensor_nbytes(a));
        else if ((rc = hyb_tensor_download(a, b->data)) != HYB_OK) { /* the copy is on the CPU */
            hyb_model_free(m);
            return hyb_error_wrap(rc, "hyb_model_clone");
        }
        b->requires_grad = a->requires_grad || src_quant;
        m->no_decay[i] = src->no_decay[i];
    }
    /* the copy lives where the source does */
    if (src->be && (rc = hyb_model_to_device(m, src->be)) != HYB_OK) {
        hyb_model_free(m);
        return hyb_error_wrap(rc, "hyb_model_clone");
    }
    *out = m;
    return HYB_OK;
}

// ---- checkpoints
// ---------------------------------------------------------------------------------

static char *join_path(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, file);
    else
        hyb_error_set(HYB_ERR_NOMEM, "out of memory");
    return p;
}

/* ---- HF config.json, written through the mixers' hf_export hooks -------------------------------
 * The formats (hyb/plugin.h, docs/HF_CONFIG.md), tried in this order; the first that can express
 * the model is written:
 *   llama       every layer a mixer of HF block type "t" (the attention), one set of keys;
 *   apriel_h    the Apriel-H1 hybrid: a MistralConfig with hybrid_block_layout of the mixers'
 *               block types and "i" for identity layers. Facts confirmed from the public Fast-LLM
 *               HF code (fast_llm_external_models/apriel_hybrid_ssm), read, not copied: the config
 *               is a MistralConfig subclass with `hybrid_block_layout` and one `ssm_cfg` dict;
 *               Fast-LLM's export writes model_type "apriel_hybrid_ssm", architectures
 *               AprielHybridSSMForCausalLM and an auto_map into configuration_/modeling_
 *               apriel_hybrid_ssm.py, as the released checkpoints do: hyb writes the same (SPEC.md
 *               section 1 calls the format "apriel_h"; both are read); "i" (AprielHybridIdentity) returns the hidden
 *               states unchanged: the WHOLE block, MLP included, is skipped, so a hyb identity
 *               layer (which keeps its MLP) is written as "i" only when its MLP is exactly zero;
 *               hyb_model_load_hf_dir builds "i" layers that way;
 *   hyb_hybrid  hyb's own: the same, with the layout naming each layer's mixer type.
 * The core writes the model-level keys (sizes, norms, embeddings, the layout); each mixer writes
 * its own keys (attention keys, ssm_cfg, mixer_cfg.<type>) and the host's json_set_* checks that
 * the layers of one type agree. */

/* 1 when every element of t is 0 (t on any device; 0 when it cannot be read). */
static int all_zero(const hyb_tensor *t) {
    const int64_t n = hyb_tensor_numel(t);
    float *tmp = NULL;
    const float *x = t->device == HYB_DEV_CPU ? hyb_tensor_f32((hyb_tensor *)t) : NULL;
    if (!x) {
        tmp = malloc((size_t)(n > 0 ? n : 1) * sizeof *tmp);
        if (!tmp || hyb_tensor_download(t, tmp) != HYB_OK) {
            hyb_error_clear();
            free(tmp);
            return 0;
        }
        x = tmp;
    }
    int zero = 1;
    for (int64_t i = 0; i < n && zero; i++)
        zero = x[i] == 0.0f;
    free(tmp);
    return zero;
}

/* The config.json text of m in `fmt`, or NULL with the reason in why (no error set). */
static char *hf_config_for(const hyb_model *m, const char *fmt, const char *torch_dtype, char *why,
                           size_t nwhy) {
    const int llama = !strcmp(fmt, HYB_HF_LLAMA), apriel = !strcmp(fmt, HYB_HF_APRIEL_H);
    char *text = NULL;
    cJSON *root = cJSON_CreateObject(), *arch = cJSON_CreateArray(), *lay = cJSON_CreateArray();
    hyb_json *j = (hyb_json *)root;
    snprintf(why, nwhy, "out of memory");
    if (!root || !arch || !lay) goto done;
    cJSON_AddItemToArray(arch, cJSON_CreateString(llama    ? "LlamaForCausalLM"
                                                  : apriel ? "AprielHybridSSMForCausalLM"
                                                           : "HybHybridForCausalLM"));
    cJSON_AddItemToObject(root, "architectures", arch);
    arch = NULL;
    /* apriel_h is written under the names of the released checkpoints and of Fast-LLM's export
     * (model_type apriel_hybrid_ssm, auto_map into the modeling files put beside the config), so
     * AutoModelForCausalLM with trust_remote_code loads it; both names are read back. */
    int rc = hyb_hfj_set_string(j, "model_type", apriel ? "apriel_hybrid_ssm" : fmt);
    if (!rc && apriel) {
        cJSON *am = cJSON_AddObjectToObject(root, "auto_map");
        if (!am ||
            !cJSON_AddStringToObject(am, "AutoConfig",
                                     "configuration_apriel_hybrid_ssm.AprielHybridSSMConfig") ||
            !cJSON_AddStringToObject(am, "AutoModel",
                                     "modeling_apriel_hybrid_ssm.AprielHybridSSMModel") ||
            !cJSON_AddStringToObject(am, "AutoModelForCausalLM",
                                     "modeling_apriel_hybrid_ssm.AprielHybridSSMForCausalLM"))
            goto done;
    }
    if (!rc) rc = hyb_hfj_set_int(j, "hidden_size", m->D);
    if (!rc) rc = hyb_hfj_set_int(j, "intermediate_size", m->F);
    if (!rc) rc = hyb_hfj_set_int(j, "num_hidden_layers", m->L);
    if (rc) goto done;
    for (int l = 0; l < m->L; l++) {
        const hyb_layer *ly = &m->layers[l];
        const hyb_mixer *mx = ly->mixer;
        if (!mx) {
            if (llama) {
                snprintf(why, nwhy, "layer %d is an identity layer", l);
                goto done;
            }
            if (!all_zero(ly->w_gate) || !all_zero(ly->w_up) || !all_zero(ly->w_down)) {
                snprintf(why, nwhy,
                         "identity layer %d keeps a non-zero MLP, but \"i\" skips the whole block",
                         l);
                goto done;
            }
            cJSON_AddItemToArray(lay, cJSON_CreateString(apriel ? "i" : HYB_MIXER_IDENTITY));
            continue;
        }
        const hyb_mixer_desc *d = mx->desc;
        const char *tag = d->hf_layer_type;
        if (!d->hf_export) {
            snprintf(why, nwhy, "layer %d: mixer '%s' has no HF config hooks", l, mx->type);
            goto done;
        }
        if ((apriel && !tag) || (llama && (!tag || strcmp(tag, "t") != 0))) {
            snprintf(why, nwhy, "layer %d: mixer '%s' has no %s block type", l, mx->type,
                     llama ? "llama (\"t\")" : "apriel_h");
            goto done;
        }
        if ((rc = d->hf_export(mx->self, fmt, j)) != HYB_OK) {
            snprintf(why, nwhy, "layer %d (%s): %s", l, mx->type, hyb_error());
            hyb_error_clear();
            goto done;
        }
        cJSON_AddItemToArray(lay, cJSON_CreateString(apriel ? tag : mx->type));
    }
    rc = hyb_hfj_set_int(j, "vocab_size", m->V);
    if (!rc) rc = hyb_hfj_set_int(j, "max_position_embeddings", m->map->max_seq);
    if (!rc) rc = hyb_hfj_set_float(j, "rms_norm_eps", m->map->norm_eps);
    if (!rc && !llama && !cJSON_GetObjectItemCaseSensitive(root, "num_attention_heads")) {
        /* no attention layer: MistralConfig still needs its keys (unused); placeholders */
        int nh = m->D % 64 == 0 ? m->D / 64 : 1;
        rc = hyb_hfj_set_int(j, "num_attention_heads", nh);
        if (!rc) rc = hyb_hfj_set_int(j, "num_key_value_heads", nh);
        if (!rc) rc = hyb_hfj_set_int(j, "head_dim", m->D / nh);
        if (!rc) rc = hyb_hfj_set_float(j, "rope_theta", 10000.0);
    }
    if (!rc) rc = hyb_hfj_set_bool(j, "tie_word_embeddings", m->lm_head == m->embed);
    if (!rc && llama) rc = hyb_hfj_set_bool(j, "mlp_bias", 0);
    if (!rc && !llama) rc = hyb_hfj_set_null(j, "sliding_window");
    if (!rc) rc = hyb_hfj_set_string(j, "hidden_act", "silu");
    if (!rc) rc = hyb_hfj_set_float(j, "initializer_range", 0.02);
    if (!rc && llama) rc = hyb_hfj_set_string(j, "dtype", torch_dtype);
    if (!rc) rc = hyb_hfj_set_string(j, "torch_dtype", torch_dtype);
    if (rc) {
        snprintf(why, nwhy, "%s", hyb_error());
        hyb_error_clear();
        goto done;
    }
    if (!llama) {
        cJSON_AddItemToObject(root, "hybrid_block_layout", lay);
        lay = NULL;
    }
    text = hyb_hfj_print(root);
done:
    cJSON_Delete(root);
    cJSON_Delete(arch);
    cJSON_Delete(lay);
    return text;
}

/* The config.json of the first format that expresses m, or NULL with the reasons in why. */
static char *hf_config_json(const hyb_model *m, const char *torch_dtype, char *why, size_t nwhy) {
    static const char *const formats[] = {HYB_HF_LLAMA, HYB_HF_APRIEL_H, HYB_HF_HYB_HYBRID};
    size_t k = 0;
    why[0] = 0;
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        char one[1024];
        char *text = hf_config_for(m, formats[i], torch_dtype, one, sizeof one);
        if (text) return text;
        if (k < nwhy)
            k += (size_t)snprintf(why + k, nwhy - k, "%s%s: %s", i ? "; " : "", formats[i], one);
    }
    return NULL;
}

/* The identity layer t belongs to (its norms or MLP), or -1. */
static int identity_layer_of(const hyb_model *m, const hyb_tensor *t) {
    for (int l = 0; l < m->L; l++) {
        const hyb_layer *ly = &m->layers[l];
        if (!ly->mixer && (t == ly->norm_in || t == ly->norm_post || t == ly->w_gate ||
                           t == ly->w_up || t == ly->w_down))
            return l;
    }
    return -1;
}

/* safetensors metadata key listing the identity layers whose tensors a save left out */
#define OMITTED_KEY "hyb_identity_layers_omitted"

int hyb_model_save(hyb_model *m, const char *dir) {
    return hyb_model_save_as(m, dir, HYB_F32);
}

int hyb_model_save_as(hyb_model *m, const char *dir, hyb_dtype dtype) {
    if (dtype != HYB_F32 && dtype != HYB_BF16)
        return hyb_error_set(HYB_ERR_ARG, "hyb_model_save %s: dtype %s (f32 or bf16)", dir,
                             hyb_dtype_name(dtype));
    HYB_TRY(hyb_mkdir_p(dir));
    int rc = HYB_OK;
    char *toml = hyb_model_layermap_toml(m);
    char *p_map = join_path(dir, "layermap.toml");
    char *p_st = join_path(dir, "model.safetensors");
    hyb_st_writer *w = hyb_st_writer_new();
    if (!toml || !p_map || !p_st || !w) {
        rc = hyb_error_wrap(HYB_ERR_NOMEM, "hyb_model_save %s", dir);
        goto done;
    }
    /* With an HF config.json, identity layers are "i" / "identity" there (their MLP is zero): the
     * HF side has no tensors for them, so neither has the file (issue 16); the metadata lists
     * them, and hyb_model_load_params gives them back (norms 1, MLP zero). */
    char why[4096];
    char *cfg = hf_config_json(m, dtype == HYB_BF16 ? "bfloat16" : "float32", why, sizeof why);
    hyb_strbuf omitted = {0};
    for (int l = 0; l < m->L && cfg; l++)
        if (!m->layers[l].mixer) hyb_strbuf_printf(&omitted, "%s%d", omitted.n ? "," : "", l);
    for (int i = 0; i < m->n_params && rc == HYB_OK; i++)
        if (!(cfg && identity_layer_of(m, m->params[i]) >= 0))
            rc = hyb_st_writer_add_tensor_as(w, m->params[i]->name, m->params[i], dtype);
    if (rc == HYB_OK && omitted.n) rc = hyb_st_writer_meta(w, OMITTED_KEY, omitted.p);
    if (rc == HYB_OK && omitted.oom)
        rc = hyb_error_set(HYB_ERR_NOMEM, "hyb_model_save: out of memory");
    hyb_strbuf_free(&omitted);
    if (rc == HYB_OK) rc = hyb_st_writer_meta(w, "format", "pt");
    if (rc == HYB_OK) rc = hyb_st_writer_meta(w, "hyb_version", HYB_VERSION);
    if (rc == HYB_OK) rc = hyb_st_writer_meta(w, "hyb_layermap", toml);
    /* weights first: a layer map never describes weights that are not on disk yet */
    if (rc == HYB_OK) rc = hyb_st_writer_save(w, p_st);
    if (rc == HYB_OK) rc = hyb_atomic_write_buf(p_map, toml, strlen(toml));
    if (rc == HYB_OK) {
        char *p_cfg = join_path(dir, "config.json");
        if (cfg && p_cfg)
            rc = hyb_atomic_write_buf(p_cfg, cfg, strlen(cfg));
        else if (!cfg && p_cfg) { /* and none left over from an earlier save of another layout */
            hyb_log(HYB_LOG_INFO,
                    "%s: no config.json: no HF format expresses the model (%s); layermap.toml "
                    "describes it",
                    dir, why);
            if (unlink(p_cfg) != 0 && errno != ENOENT)
                rc = hyb_error_set(HYB_ERR_IO, "%s: cannot remove a stale config.json: %s", dir,
                                   strerror(errno));
        }
        free(p_cfg);
    }
    free(cfg);
    cfg = NULL;
    if (rc == HYB_OK)
        hyb_log(HYB_LOG_INFO, "saved %s (%d tensors, %" PRId64 " parameters)", dir, m->n_params,
                hyb_model_n_elements(m));
done:
    free(cfg);
    hyb_st_writer_free(w);
    free(toml);
    free(p_map);
    free(p_st);
    return rc;
}

int hyb_model_load_params(hyb_model *m, const char *path) {
    return hyb_model_load_params_ex(m, path, 0);
}

int hyb_model_load_params_ex(hyb_model *m, const char *path, unsigned flags) {
    hyb_safetensors *st;
    HYB_TRY(hyb_safetensors_open(path, &st));
    int rc = HYB_OK;
    char a[128], b[128];
    const hyb_st_tensor **src = calloc((size_t)m->n_params + 1, sizeof *src);
    unsigned char *omitted = calloc((size_t)m->L + 1, 1); /* identity layers the save left out */
    const char *om = hyb_safetensors_meta(st, OMITTED_KEY);
    for (const char *c = om; c && omitted && *c;) {
        char *end;
        long l = strtol(c, &end, 10);
        if (end == c) break;
        if (l >= 0 && l < m->L) omitted[l] = 1;
        c = *end == ',' ? end + 1 : end;
    }
    if (!src || !omitted) {
        rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    /* 1. every parameter present, same shape, convertible */
    for (int i = 0; i < m->n_params; i++) {
        const hyb_tensor *p = m->params[i];
        const hyb_st_tensor *t = hyb_safetensors_find(st, p->name);
        if (!t) {
            int l = identity_layer_of(m, p);
            if (l >= 0 && omitted[l]) continue; /* src[i] NULL: norms 1, MLP zero (step 3) */
            rc = hyb_error_set(HYB_ERR_NOTFOUND, "%s: tensor '%s' %s is missing", path, p->name,
                               hyb_shape_str(p->ndim, p->shape, a, sizeof a));
            goto done;
        }
        int same = t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++)
            same = t->shape[d] == p->shape[d];
        if (!same) {
            rc = hyb_error_set(
                HYB_ERR_FORMAT, "%s: tensor '%s': file has %s %s, the model expects %s", path,
                p->name, hyb_shape_str(t->ndim, t->shape, a, sizeof a), hyb_st_dtype_name(t->dtype),
                hyb_shape_str(p->ndim, p->shape, b, sizeof b));
            goto done;
        }
        if (t->dtype == HYB_ST_F8_E4M3 || t->dtype == HYB_ST_F8_E5M2) {
            rc = hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: tensor '%s': dtype %s is not supported",
                               path, p->name, hyb_st_dtype_name(t->dtype));
            goto done;
        }
        src[i] = t;
    }
    /* 2. nothing else in the file (unless allowed) */
    int n_extra = 0;
    for (int j = 0; j < hyb_safetensors_count(st); j++) {
        const hyb_st_tensor *t = hyb_safetensors_tensor(st, j);
        int found = 0;
        for (int i = 0; i < m->n_params && !found; i++)
            found = src[i] == t;
        if (found) continue;
        if (m->lm_head == m->embed && strcmp(t->name, "lm_head.weight") == 0) continue;
        if (!(flags & HYB_LOAD_ALLOW_EXTRA)) {
            rc = hyb_error_set(
                HYB_ERR_FORMAT,
                "%s: tensor '%s' %s is not a parameter of this model (layer map '%s'); pass "
                "HYB_LOAD_ALLOW_EXTRA to ignore extra tensors",
                path, t->name, hyb_shape_str(t->ndim, t->shape, a, sizeof a), m->map->path);
            goto done;
        }
        n_extra++;
    }
    if (n_extra)
        hyb_log(HYB_LOG_WARN, "%s: ignored %d tensors that are not parameters of the model", path,
                n_extra);
    /* 3. copy */
    for (int i = 0; i < m->n_params && rc == HYB_OK; i++) {
        hyb_tensor *p = m->params[i];
        if (src[i]) {
            rc = hyb_safetensors_read_tensor(st, src[i], p);
            continue;
        }
        /* an omitted identity layer: norms 1, MLP zero (h passes unchanged, as "i" in HF) */
        const hyb_layer *ly = &m->layers[identity_layer_of(m, p)];
        const int64_t n = hyb_tensor_numel(p);
        float *v = calloc((size_t)(n > 0 ? n : 1), sizeof *v);
        if (!v) {
            rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        if (p == ly->norm_in || p == ly->norm_post)
            for (int64_t k = 0; k < n; k++)
                v[k] = 1.0f;
        rc = hyb_tensor_upload(p, v);
        free(v);
    }
done:
    free(omitted);
    free(src);
    hyb_safetensors_close(st);
    return rc;
}

int hyb_model_load(const char *dir, hyb_model **out) {
    *out = NULL;
    char *p_map = join_path(dir, "layermap.toml");
    char *p_st = join_path(dir, "model.safetensors");
    int rc = HYB_OK;
    hyb_layermap *map = NULL;
    hyb_model *m = NULL;
    if (!p_map || !p_st) {
        rc = HYB_ERR_NOMEM;
        goto done;
    }
    if ((rc = hyb_layermap_load(p_map, &map)) != HYB_OK) goto done;
    if ((rc = hyb_model_build_ex(map, 0, HYB_BUILD_NO_INIT, &m)) != HYB_OK) goto done;
    if ((rc = hyb_model_load_params(m, p_st)) != HYB_OK) {
        hyb_model_free(m);
        goto done;
    }
    *out = m;
done:
    free(p_map);
    free(p_st);
    return rc;
}
