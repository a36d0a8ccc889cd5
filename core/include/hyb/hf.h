/* hyb/hf.h: building a hyb_model from pretrained checkpoints (the teacher).
 *
 *   hyb_model *m;
 *   if (hyb_model_load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", &m) != HYB_OK)
 *       fprintf(stderr, "hyb: %s\n", hyb_error());   // "x.gguf: tensor 'blk.3.attn_q.weight' ..."
 *   ... hyb_model_forward / prefill / decode ...
 *   hyb_model_free(m);
 *
 * Both loaders read a plain llama-style decoder (llama, mistral), build its layer map in memory
 * (every layer the mixer plugin of HF block type "t", the attention: `mha`; its table written by
 * the plugin's hf_import hook; the map is what hyb_layermap_describe prints and hyb_model_save
 * writes), build the model and fill every parameter, dequantised to f32. Errors name the file and
 * the tensor: wrong architecture, a missing tensor, or a tensor whose shape differs from the
 * model's (both shapes in the message).
 */
#ifndef HYB_HF_H
#define HYB_HF_H

#include "hyb/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hyper-parameters of a llama-style decoder, as read from GGUF metadata or config.json. */
typedef struct hyb_llama_config {
    char name[64];
    int n_layers, d_model, d_ff, n_heads, n_kv_heads, head_dim, vocab_size, max_seq;
    double rope_theta, norm_eps;
    int tie_embeddings;
    int attention_bias; /* q/k/v projections have biases (mha `bias = true`) */
} hyb_llama_config;

/* The layer map (TOML text) for cfg: [model], one [mixers.<type>] of the plugin of HF block type
 * "t" (mha) configured by its hf_import from cfg's attention keys, an all-"t" layout. Writes at
 * most n bytes to buf; HYB_ERR_ARG when it does not fit. */
int hyb_llama_layermap_text(const hyb_llama_config *cfg, char *buf, size_t n);

/* A GGUF file of general.architecture "llama" (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K
 * tensors). The q/k projections are stored by llama.cpp with their rows interleaved per head
 * for its RoPE; they are put back into the HF half-split layout the `mha` mixer uses. */
int hyb_model_load_gguf(const char *path, hyb_model **out);

/* An HF checkpoint directory: config.json (model_type llama, mistral, apriel_h /
 * apriel_hybrid_ssm or hyb_hybrid, docs/HF_CONFIG.md: the layer map comes from
 * hybrid_block_layout, apriel_h block types matched with the plugins' hf_layer_type ("t" mha,
 * "m2" mamba1), hyb_hybrid mixer types, "i" / "identity" -> identity with a zero MLP; each
 * mixer's table from its plugin's hf_import; unknown block types and missing keys are errors
 * naming the value or key and the file) and model.safetensors or
 * model.safetensors.index.json with its shards (f32, bf16 or f16 tensors). RoPE scaling is
 * refused; a Mistral sliding window shorter than the context limits max_seq to the window (where
 * sliding-window and full attention agree), with a warning. */
int hyb_model_load_hf_dir(const char *dir, hyb_model **out);

/* The hyper-parameters in the text of an HF config.json (NUL-terminated; path names it in
 * messages): what hyb_model_load_hf_dir reads, with the same checks and errors. */
int hyb_llama_config_from_json(const char *text, const char *path, hyb_llama_config *out);

#ifdef __cplusplus
}
#endif
#endif
