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
/* The same with the weights' form chosen (issue 22). quant 0: every parameter f32 (dequantised
 * at load; trainable). quant 1: every frozen linear weight whose GGUF type has a quantized kernel
 * (Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K) stays in its blocks with no f32 copy, pointing into the
 * mapped file (q/k: a row-permuted copy of the blocks): the token embedding (rows dequantised on
 * lookup), lm_head (tied: the embedding's blocks), MLP gate/up/down, and the mixer parameters
 * their plugin declared quant_ok (mha's q/k/v/o); these are inference-only (requires_grad 0; a
 * backward through them is refused) and compute on the CPU in the process-wide mode
 * (hyb_quant_get: precise or fast). Other types are dequantised to f32 with a warning naming the
 * tensor. quant -1: 1 when hyb_quant_get().mode is not off (HYB_QUANT, hyb_quant_set), else 0
 * (= hyb_model_load_gguf). Every block type's f16 scales are checked at load: a NaN/Inf scale is
 * refused naming the tensor and the block. */
int hyb_model_load_gguf_ex(const char *path, int quant, hyb_model **out);

/* The process-wide path quantized weights compute in: "precise" (f32 activations, blocks decoded
 * in registers), "fast" (activations rounded to int8 per 4 values, integer dot products), "off"
 * (a quantized GGUF loads as f32), or "emul" (fast's rounding in f32, for measurements). Read at
 * first use from HYB_QUANT; hyb_quant_mode_set overrides it (HYB_ERR_ARG naming the text when it
 * is none of these). The inference front ends (hyb generate / chat / serve / eval / bench_cpu
 * --quant, hyb.llm{quant=}) load a quantized GGUF in HYB_QUANT_DEFAULT_MODE when neither the flag
 * nor HYB_QUANT chose one (hyb_quant_mode_chosen() == 0); training loads stay f32. */
#define HYB_QUANT_DEFAULT_MODE "precise"
int hyb_quant_mode_set(const char *mode);
const char *hyb_quant_mode_current(void);
int hyb_quant_mode_chosen(void);

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
