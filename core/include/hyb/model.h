/* hyb/model.h: a language model built from a layer map.
 *
 *   hyb_layermap *map;  hyb_layermap_load("graphs/tiny.toml", &map);
 *   hyb_model *m;       hyb_model_build(map, 1234, &m);   // takes ownership of map
 *   hyb_adamw *opt;     hyb_adamw_new_model(m, 3e-4f, 0.1f, &opt);
 *   hyb_graph *g = hyb_graph_new();
 *   for (each step) {
 *       hyb_graph_reset(g);
 *       hyb_model_zero_grad(m);
 *       hyb_tensor *logits = hyb_model_forward(m, g, ids, B, T);       // [B, T, V]
 *       hyb_tensor *loss = hyb_cross_entropy(g, logits, targets, NULL);
 *       hyb_graph_backward(g, loss, 1.0f);
 *       int n; hyb_tensor **p = hyb_model_params(m, &n);
 *       hyb_grad_clip(p, n, 1.0f);
 *       hyb_adamw_step(opt);
 *   }
 *   hyb_model_save(m, "out/ckpt");  // model.safetensors + layermap.toml (+ config.json: llama or apriel_h)
 *
 *   hyb_kvstate *kv;  hyb_kvstate_new(m, 8, 2048, &kv);     // 8 slots of 2048 tokens
 *   hyb_model_prefill(m, kv, 0, prompt, n_prompt, logits);  // logits of the last token [V]
 *   hyb_model_decode(m, kv, 1, (int32_t[]){0}, &next, logits);
 *
 * A model is used by one thread at a time (prefill/decode share a scratch graph); its ops may
 * use OpenMP inside.
 *
 * Block (SPEC.md section 2), every layer:
 *   u = RMSNorm_in(h); h' = h + Mixer(u); out = h' + W_down(silu(W_gate v) * (W_up v)), v = RMSNorm_post(h')
 * then the final RMSNorm and lm_head (tied to the embedding when tie_embeddings).
 *
 * Parameter names follow HF llama / apriel_h checkpoints:
 *   model.embed_tokens.weight, model.layers.{i}.input_layernorm.weight,
 *   model.layers.{i}.<mixer hf_prefix>.<decl name>, model.layers.{i}.post_attention_layernorm.weight,
 *   model.layers.{i}.mlp.{gate,up,down}_proj.weight, model.norm.weight, lm_head.weight (untied).
 */
#ifndef HYB_MODEL_H
#define HYB_MODEL_H

#include "hyb/config.h"
#include "hyb/graph.h"
#include "hyb/mixer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hyb_layer {
    hyb_tensor *norm_in;   /* [D] */
    hyb_mixer *mixer;      /* NULL = identity layer (leave-one-out): h' = h */
    hyb_tensor *norm_post; /* [D] */
    hyb_tensor *w_gate, *w_up; /* [F, D] */
    hyb_tensor *w_down;        /* [D, F] */
} hyb_layer;

typedef struct hyb_capture hyb_capture; /* hyb_model_capture (below) */

typedef struct hyb_model {
    hyb_layermap *map; /* owned */
    int D, V, F, L;
    hyb_tensor *embed;   /* [V, D] */
    hyb_layer *layers;   /* [L] */
    hyb_tensor *norm_f;  /* [D] */
    hyb_tensor *lm_head; /* [V, D], == embed when tied */
    /* parameter store: every trainable tensor, in a stable order, named (HF names); a tied
     * lm_head is the embedding and appears once */
    int n_params;
    hyb_tensor **params;
    int *no_decay;       /* [n_params] 1: excluded from weight decay (norms, biases, decl no_decay) */
    uint64_t generation; /* bumped whenever the layer structure changes (swap, identity) or the
                            model moves to another device */
    const struct hyb_backend *be; /* the device everything lives on; NULL = the CPU */
    hyb_graph *scratch;  /* internal: no-grad graph reused by prefill/decode */
    hyb_capture *capture; /* hyb_model_capture; NULL = none (the forward pays nothing) */
    /* internal: what quantized parameters point into (a mapped GGUF file, hyb_model_load_gguf
     * with quantized weights), released by source_free(source) after the parameters */
    void *source;
    void (*source_free)(void *source);
} hyb_model;

/* Build with random init (seeded). Takes ownership of map (also on failure). Unknown mixer types
 * are errors naming the layer map's file:line:col. Prints (hyb_log INFO) the resolved layout.
 * Init: norms 1; embedding, MLP weights and an untied lm_head N(0, 0.02) (the HF llama
 * initializer_range); mixers by their plugin (decl init, then init_params) with a seed derived
 * from `seed` and the layer index. A mixer spec whose type is "identity" (HYB_MIXER_IDENTITY)
 * gives an identity layer: no mixer, h' = h (the MLP stays). Parameter gradients are not
 * allocated here (owner HYB_OWN_PARAM): the first backward reaching a parameter, or an
 * optimiser over it, allocates its ->grad zeroed; an inference-only model holds none. */
int hyb_model_build(hyb_layermap *map, uint64_t seed, hyb_model **out);
/* flags: HYB_BUILD_NO_INIT leaves the embedding, MLP, lm_head and every mixer parameter zero
 * (HYB_MIXER_NO_INIT) for a model whose weights are all loaded next (every loader requires each
 * tensor, or fills omitted identity layers itself): no random numbers drawn, no plugin init; norms
 * are still 1. */
#define HYB_BUILD_NO_INIT 1u
/* HYB_BUILD_NO_DATA (a loader's): as NO_INIT, and the embedding, MLP, lm_head and mixer
 * parameters get no memory at all (data NULL, HYB_MIXER_NO_DATA) until the loader gives each
 * one: f32 it allocates, or quantized blocks (no f32 copy is ever made of those). Norms are
 * allocated (ones). */
#define HYB_BUILD_NO_DATA 2u
int hyb_model_build_ex(hyb_layermap *map, uint64_t seed, unsigned flags, hyb_model **out);
void hyb_model_free(hyb_model *m);

/* All trainable parameters (pointer to the model's array). */
#define HYB_MIXER_IDENTITY "identity"

hyb_tensor **hyb_model_params(hyb_model *m, int *n);
hyb_tensor *hyb_model_param(hyb_model *m, const char *name); /* NULL if absent */
int64_t hyb_model_n_elements(const hyb_model *m);
void hyb_model_zero_grad(hyb_model *m);

/* Replace layer `layer`'s mixer by identity (leave-one-out): same as swap to "identity". */
int hyb_model_set_identity(hyb_model *m, int layer);
/* Placement. A model is built (and initialised, loaded, swapped) on the CPU; to_device checks
 * that every layer's mixer has forward and decode kernels for be's device (the error names the
 * mixer, the layer, the op and the device; nothing moves then) and moves every parameter there.
 * Afterwards the forward, the losses, the optimiser, states and swapped-in mixers all live and
 * run on that device. */
int hyb_model_to_device(hyb_model *m, const struct hyb_backend *be);
/* HYB_OK when every mixer has the kernels a run on `dev` needs (backward too when training). */
int hyb_model_check_device(const hyb_model *m, hyb_device dev, int training);
/* The model's backend (the CPU's unless moved). */
const struct hyb_backend *hyb_model_backend(const hyb_model *m);
/* Replace layer `layer`'s mixer by a new mixer of `type` configured by `cfg` (NULL = defaults;
 * the table must outlive the model: the layer map refers to it), seeded with `seed`. With
 * init_from_old, the new mixer is initialised from the old one (hyb_mixer_init_from, e.g. MIL
 * from "mha"); an identity layer has nothing to initialise from (HYB_ERR_ARG). Updates the layer
 * map (reuses a spec with the same type and table, else adds one) and rebuilds the parameter
 * store: parameter pointers, optimisers and kvstates made before the swap are stale (kvstates
 * are refused with an error; make a new optimiser). On failure the model is unchanged. */
int hyb_model_swap(hyb_model *m, int layer, const char *type, const hyb_cfg_table *cfg,
                   int init_from_old, uint64_t seed);

/* Deep copy: same layout (the layer map is re-read from its TOML serialisation, so the copy owns
 * everything), same parameter values and requires_grad flags, grads zero. E.g. a student made
 * from the teacher before swapping its layers. A model with quantized weights (an inference load
 * of a quantized GGUF) gives an f32 copy (the weights dequantised) whose parameters all train. */
int hyb_model_clone(const hyb_model *m, hyb_model **out);

/* Full-sequence forward (training / evaluation): ids [B*T] -> logits [B, T, V] (graph-owned).
 * NULL + error on failure. */
hyb_tensor *hyb_model_forward(hyb_model *m, hyb_graph *g, const int32_t *ids, int B, int T);

/* ---- capture: activations and their gradients, for analysis ----------------------------------
 *
 *   int layers[] = {0, 3};
 *   unsigned pts = HYB_CAP_BIT(HYB_CAP_MIXER_IN) | HYB_CAP_BIT(HYB_CAP_MIXER_OUT);
 *   hyb_model_capture(m, layers, 2, pts, 1);                  // 1: with gradients
 *   logits = hyb_model_forward(m, g, ids, B, T);  loss = ...;  hyb_graph_backward(g, loss, 1);
 *   const hyb_tensor *y  = hyb_model_captured(m, 3, HYB_CAP_MIXER_OUT, 0);   // [B, T, D]
 *   const hyb_tensor *dy = hyb_model_captured(m, 3, HYB_CAP_MIXER_OUT, 1);   // dloss/dy
 *   hyb_model_capture_clear(m);
 *
 * The points of block l (see the block above):
 *   block_in  h        the residual stream entering the block (block_out of l-1; the embedding)
 *   mixer_in  u        RMSNorm_in(h), what the mixer reads
 *   mixer_out Mixer(u) what the mixer returns (before the residual add)
 *   mlp_in    v        RMSNorm_post(h + Mixer(u))
 *   mlp_out            W_down(...), the MLP's output (before the residual add)
 *   block_out          h' + mlp_out, the residual stream leaving the block
 * An identity layer has no mixer_in/mixer_out (hyb_model_captured gives NULL for them). Every
 * forward through the trunk (hyb_model_forward, prefill, decode) copies each requested value out
 * of the graph into a tensor of the capture on the model's device ([B, T, D]; the latest forward
 * wins). With grads, a forward whose graph records (grad mode on) also taps each point
 * (hyb_graph_tap_grad): after a backward the gradient of the loss w.r.t. the activation is
 * there, even when every parameter upstream is frozen. Mixers are opaque: points are around them.
 * The capture belongs to the model (freed with it, and by clear or a new capture); the tensors
 * stay valid until the next forward or capture change. Its taps leave the graph when the capture
 * goes, and a graph reset or freed first lets the capture know, so either may go first. */
typedef enum hyb_capture_point {
    HYB_CAP_BLOCK_IN = 0,
    HYB_CAP_MIXER_IN,
    HYB_CAP_MIXER_OUT,
    HYB_CAP_MLP_IN,
    HYB_CAP_MLP_OUT,
    HYB_CAP_BLOCK_OUT,
    HYB_CAP_COUNT
} hyb_capture_point;
#define HYB_CAP_BIT(p) (1u << (p))
/* "block_in", ... ; NULL for a bad value. */
const char *hyb_capture_point_name(int p);
/* The point named `name`, or -1. */
int hyb_capture_point_from_name(const char *name);
/* Request a capture of `points` (HYB_CAP_BIT mask, not 0) at each of layers[n] (0-based, in
 * [0, L), n >= 1), with their gradients when grads. Replaces any previous capture. */
int hyb_model_capture(hyb_model *m, const int *layers, int n, unsigned points, int grads);
void hyb_model_capture_clear(hyb_model *m);
/* The captured value (grad 0) or gradient (grad 1) of a point of a layer; NULL when not requested,
 * not recorded by a forward yet, or (a gradient) no backward ran since the last forward. */
const hyb_tensor *hyb_model_captured(const hyb_model *m, int layer, hyb_capture_point p, int grad);
/* Facts about the capture (any pointer may be NULL): forwards recorded since the request, whether
 * gradients were requested, whether the last forward taped the points (grads requested and grad
 * mode on), and whether a backward filled the gradients since. Returns 0 when no capture is set. */
int hyb_model_capture_info(const hyb_model *m, uint64_t *forwards, int *grads, int *taped,
                           int *grads_ready);

/* ---- inference state: per-sequence decode state for every layer ------------------------------*/
typedef struct hyb_kvstate {
    int n_seq, max_ctx;
    int32_t *pos;    /* [n_seq] tokens held per sequence */
    void ***state;   /* [L][n_seq] per-layer per-sequence state (NULL for identity layers) */
    size_t bytes;    /* total */
    int L;
    void **layer_mem;          /* [L] owned blocks the states point into (device memory) */
    const struct hyb_backend *be; /* the model's backend when it was made */
    const hyb_model *model;    /* the model it was made for ... */
    uint64_t generation;       /* ... and its generation (stale after a swap) */
    int kv;                    /* hyb_kv_dtype of the attention KV caches (recurrent states: f32) */
} hyb_kvstate;

/* n_seq sequences of max_ctx tokens, the KV cache in HYB_KV_DEFAULT (f16). */
int hyb_kvstate_new(hyb_model *m, int n_seq, int max_ctx, hyb_kvstate **out);
/* The same with the attention KV caches stored as kv (HYB_KV_F16, HYB_KV_Q8_0, HYB_KV_F32:
 * plugin.h); the recurrent states of Mamba/DeltaNet mixers stay f32. A bad kv: HYB_ERR_ARG. */
int hyb_kvstate_new_ex(hyb_model *m, int n_seq, int max_ctx, int kv, hyb_kvstate **out);
void hyb_kvstate_free(hyb_kvstate *s);
void hyb_kvstate_reset_seq(hyb_kvstate *s, int seq);

/* Prefill T tokens for sequence `seq` (continuing after s->pos[seq]); logits of the last token
 * into out_logits [V] (may be NULL). Runs the full-sequence forward in no-grad mode with the
 * sequence's states; pos[seq] + T must fit in max_ctx. */
int hyb_model_prefill(hyb_model *m, hyb_kvstate *s, int seq, const int32_t *ids, int T,
                      float *out_logits);
/* One decode step for n sequences: ids[n] tokens, seqs[n] distinct slot indices; logits [n, V]
 * (may be NULL). Row-wise graph ops in no-grad mode plus each mixer's batched decode.
 * Argument errors (bad slot, full sequence, duplicate slot) are caught before anything runs; if a
 * step fails later, pos is not advanced and the states of the sequences involved are undefined
 * (reset them). Same for prefill. */
int hyb_model_decode(hyb_model *m, hyb_kvstate *s, int n, const int32_t *seqs, const int32_t *ids,
                     float *logits);
/* hyb_model_decode with the logits left on the model's device: dev_logits [n, V] is memory of
 * the model's backend (be->alloc), filled by a device-to-device copy; for be->sample, so only
 * token ids cross the bus (core/engine.c). */
int hyb_model_decode_dev(hyb_model *m, hyb_kvstate *s, int n, const int32_t *seqs,
                         const int32_t *ids, float *dev_logits);

/* ---- checkpoints -------------------------------------------------------------------------------*/
/* Write dir/model.safetensors (HF names, f32) and dir/layermap.toml atomically (tmp + fsync +
 * rename), and an HF config.json in the first format that expresses the model (docs/HF_CONFIG.md;
 * each mixer writes its keys through its plugin's hf_export hook): "llama" when every layer is
 * the attention mixer of HF block type "t" with one shape (transformers and
 * hyb_model_load_hf_dir load the directory too); else "apriel_h" (hybrid_block_layout of the
 * mixers' block types, "i" for identity layers) when every mixer has a block type and the layers
 * of one type agree; else hyb's "hyb_hybrid" (the layout names each layer's mixer type; DeltaNet
 * hybrids). Identity layers need a zero MLP ("i" skips the whole block); with a config.json their
 * norm and MLP tensors are left out of model.safetensors (the HF side has none; the metadata key
 * hyb_identity_layers_omitted lists them and hyb_model_load_params restores norms 1, MLP zero).
 * Otherwise no config.json, with a log line giving each format's reason. */
int hyb_model_save(hyb_model *m, const char *dir);
/* The same with the weights stored as `dtype`: HYB_F32, or HYB_BF16 (rounded to nearest even;
 * config.json's torch_dtype says "bfloat16"). A load widens them back to f32. */
int hyb_model_save_as(hyb_model *m, const char *dir, hyb_dtype dtype);
/* Load parameters from a safetensors file into an already built model: every model parameter
 * must be present with the same shape (error names the tensor and both shapes); F32/F16/BF16
 * (and integer) tensors are converted to f32. Tensors in the file that are not parameters are an
 * error unless HYB_LOAD_ALLOW_EXTRA; "lm_head.weight" is ignored when the model is tied; the
 * tensors of identity layers a save left out (hyb_model_save) get norms 1 and a zero MLP. Nothing
 * is written into the model unless every check passes. */
int hyb_model_load_params(hyb_model *m, const char *safetensors_path);
#define HYB_LOAD_ALLOW_EXTRA 1u
int hyb_model_load_params_ex(hyb_model *m, const char *safetensors_path, unsigned flags);
/* The layer map as TOML text (what hyb_model_save writes to layermap.toml). Caller frees. */
char *hyb_model_layermap_toml(const hyb_model *m);
/* Build from a directory written by hyb_model_save. */
int hyb_model_load(const char *dir, hyb_model **out);

/* ---- optimiser -------------------------------------------------------------------------------*/
typedef struct hyb_adamw {
    float lr, beta1, beta2, eps, weight_decay;
    int64_t step;
    int n;
    hyb_tensor **params; /* not owned; all on one device */
    float **m, **v;      /* owned moments, on the parameters' device */
    const struct hyb_backend *be; /* the parameters' device: the step runs there */
    int *decay;          /* per param: apply weight decay? */
    float *lr_scale;     /* per param: lr multiplier (1 by default) */
} hyb_adamw;

/* Defaults beta1 0.9, beta2 0.999, eps 1e-8 (set the fields to change them). Weight decay is
 * decoupled (p *= 1 - lr * wd) and applied to params with decay[i]: by default those with
 * ndim >= 2; hyb_adamw_new_model uses the model's no_decay flags instead. Params without a grad
 * (requires_grad == 0: frozen) are skipped. A parameter whose grad is allocated lazily (owner
 * HYB_OWN_PARAM) gets it here, zeroed, so every trainable parameter is stepped as before. */
int hyb_adamw_new(hyb_tensor **params, int n, float lr, float wd, hyb_adamw **out);
int hyb_adamw_new_model(hyb_model *m, float lr, float wd, hyb_adamw **out);
void hyb_adamw_set_decay(hyb_adamw *o, int i, int decay);
/* Parameter groups with their own learning rate: param i is updated (and decayed) with
 * lr * scale instead of lr; scale >= 0 and finite (0 leaves the values alone while its moments
 * still advance). Not saved with hyb_adamw_save: the caller sets the scales again on resume. */
int hyb_adamw_set_lr_scale(hyb_adamw *o, int i, float scale);
void hyb_adamw_free(hyb_adamw *o);
/* Moment `second` (0: exp_avg, 1: exp_avg_sq) of parameter i as a non-owning tensor on the
 * parameters' device, shaped like the parameter (for checkpoints). */
hyb_tensor hyb_adamw_moment(const hyb_adamw *o, int i, int second);
/* Global-norm gradient clip (max_norm <= 0: none); returns the pre-clip norm. Scales every grad
 * by max_norm / (norm + 1e-6) when norm > max_norm (as torch); a non-finite norm is returned
 * without touching the grads (skip the step). */
float hyb_grad_clip(hyb_tensor **params, int n, float max_norm);
int hyb_adamw_step(hyb_adamw *o);
/* Optimiser state for resuming: a safetensors file (atomic) with "<param name>.exp_avg" and
 * "<param name>.exp_avg_sq" (f32; "param.<i>" for unnamed params) and the step and
 * hyper-parameters in its metadata. */
int hyb_adamw_save(const hyb_adamw *o, const char *path);
/* Restore the step and the moments into an optimiser over the same parameters (names and shapes
 * must match; errors name the tensor and both shapes). Hyper-parameters stay the caller's. */
int hyb_adamw_load(hyb_adamw *o, const char *path);

#ifdef __cplusplus
}
#endif
#endif
