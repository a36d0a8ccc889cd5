/* hyb/plugin.h: the mixer plugin ABI. PLUGINS.md is the step-by-step guide; this is the reference.
 *
 * A mixer plugin is a shared object `libhyb-<name>.so` that exports one C symbol:
 *
 *   const hyb_mixer_desc *hyb_plugin_entry(const hyb_host *host);
 *
 * The host calls it once after dlopen with its service table and gets back a descriptor whose
 * first two fields are the ABI version and the descriptor's size; the loader refuses a plugin
 * whose version differs from HYB_PLUGIN_ABI_VERSION (naming both numbers) or whose struct is
 * smaller than this header's. Plugins never link against libhyb: what they need from the host
 * (allocation, errors, config values, RNG) comes through hyb_host, and ALL compute (GEMM, RoPE,
 * element-wise kernels, transfers) through the backend table `be` of each call (hyb/backend.h):
 * the plugin never names a CPU or CUDA library function itself.
 *
 *   static const hyb_host *H;
 *   static const hyb_mixer_desc DESC = {
 *       .abi_version = HYB_PLUGIN_ABI_VERSION, .struct_size = sizeof(hyb_mixer_desc),
 *       .name = "mymixer", ...,
 *       .kernels[HYB_DEV_CPU] = {my_forward_cpu, my_backward_cpu, my_decode_cpu},
 *       .kernels[HYB_DEV_CUDA] = {my_forward_cuda, my_backward_cuda, my_decode_cuda},  // optional
 *   };
 *   HYB_PLUGIN_EXPORT const hyb_mixer_desc *hyb_plugin_entry(const hyb_host *host) {
 *       H = host; return &DESC;   // no other use of host here: the host checks versions first
 *   }
 *
 * Return the descriptor unconditionally: abi_version and struct_size (the first two fields of
 * both hyb_host and hyb_mixer_desc) keep their place in every ABI version, so the host can read
 * them from any plugin and name both versions in its error. A plugin that returns NULL is
 * reported as "refused this host" (with the message it set through host->error, if any).
 *
 * Conventions:
 *  - Every function returns 0 on success or a negative hyb_status; on failure it first calls
 *    host->error(code, fmt, ...) with a message naming the mixer, the layer and the problem.
 *  - Activations are f32, row-major, outermost first: x: [B, T, D] means x[(b*T + t)*D + d].
 *    Parameters are f32 arrays in the order and shapes of param_decl (weights [out, in] as HF),
 *    except a decl with quant_ok, which forward and decode may receive as GGUF blocks
 *    (param_dtypes[i] says which; be->qmatmul multiplies them).
 *  - Gradients are ACCUMULATED into grads[] (+=); dx is WRITTEN (=).
 *  - The kernels of device d (desc->kernels[d]) get pointers to memory of that device and the
 *    backend `be` of that device (be->device == d); scratch memory comes from be->alloc/free,
 *    GEMMs from be->sgemm, and every be-> call's status must be checked and returned.
 *  - A device whose forward is NULL is not supported: a model asked to run there is refused at
 *    load, naming the mixer, the layer, the op and the device. There is no fallback to the CPU.
 *  - All calls on one instance come from one thread at a time; a CPU kernel may use OpenMP inside.
 */
#ifndef HYB_PLUGIN_H
#define HYB_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include "hyb/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 2: compute through the call's backend (`be` in the fwd/bwd/dec args; hyb_host has no sgemm or
 *    rope any more) and per-device kernels (hyb_mixer_desc.kernels[device]).
 * 3: quantized frozen weights: hyb_param_decl.quant_ok and hyb_mixer_fwd/dec.param_dtypes (a
 *    parameter declared quant_ok may arrive as GGUF blocks; multiply it with be->qmatmul). */
#define HYB_PLUGIN_ABI_VERSION 3u
/* Device slots in hyb_mixer_desc.kernels, indexed by hyb_device (room for device kinds to come). */
#define HYB_PLUGIN_MAX_DEVICES 4
#define HYB_PLUGIN_ENTRY_SYMBOL "hyb_plugin_entry"
#if defined(__GNUC__)
#define HYB_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define HYB_PLUGIN_EXPORT
#endif

/* An opaque TOML table (the mixer's own table in the layer map). Read it with host->cfg_*. */
typedef struct hyb_cfg_table hyb_cfg_table;
/* An opaque JSON value (an object of an HF config.json). Read and write it with host->json_*. */
typedef struct hyb_json hyb_json;
/* An opaque TOML table being written (a mixer's table in a generated layer map): host->toml_*. */
typedef struct hyb_toml hyb_toml;

/* The HF config.json formats of the hf_export / hf_import hooks (the `format` argument).
 *  "llama"      model_type llama (or mistral on import): every layer the same attention mixer,
 *               the one whose hf_layer_type is "t"; its keys at the top level.
 *  "apriel_h"   the Apriel-H1 hybrid (model_type apriel_h / apriel_hybrid_ssm): a MistralConfig
 *               with hybrid_block_layout, one entry per layer: a mixer's hf_layer_type, or "i"
 *               (an identity layer, the whole block skipped).
 *  "hyb_hybrid" hyb's own hybrid (docs/HF_CONFIG.md): a MistralConfig with hybrid_block_layout
 *               naming each layer's mixer type ("identity" for identity layers) and, by
 *               convention, a mixer's options in mixer_cfg.<type> (attention keeps the top-level
 *               keys, mamba1 ssm_cfg). Any mixer with the hooks can be written in it. */
#define HYB_HF_LLAMA "llama"
#define HYB_HF_APRIEL_H "apriel_h"
#define HYB_HF_HYB_HYBRID "hyb_hybrid"

/* Kinds of a JSON value (host->json_type). */
typedef enum hyb_json_type {
    HYB_JSON_ABSENT = 0,
    HYB_JSON_NULL,
    HYB_JSON_BOOL,
    HYB_JSON_NUMBER,
    HYB_JSON_STRING,
    HYB_JSON_ARRAY,
    HYB_JSON_OBJECT,
} hyb_json_type;

/* Storage type of a decode state's attention KV cache (a kvstate's kv_cache; the kernels get it
 * as hyb_mixer_fwd.kv / hyb_mixer_dec.kv). Only mixers with the *_kv hooks (below) store it
 * compressed; recurrent states (Mamba, DeltaNet) stay f32 whatever it says. 0 is f32, so that a
 * zeroed argument block means f32.
 *   HYB_KV_F16   IEEE half, rounded to nearest even on store
 *   HYB_KV_Q8_0  per row of head_dim values: ceil(head_dim / 32) f16 scales (absmax / 127 of
 *                each run of 32 values), then head_dim int8 (round to nearest) */
typedef enum hyb_kv_dtype { HYB_KV_F32 = 0, HYB_KV_F16 = 1, HYB_KV_Q8_0 = 2 } hyb_kv_dtype;
#define HYB_KV_COUNT 3
#define HYB_KV_DEFAULT HYB_KV_F16

/* Facts about the model the mixer lives in. */
typedef struct hyb_model_dims {
    int d_model;    /* D: width of the residual stream */
    int n_layers;   /* layers in the model */
    int layer;      /* this layer's index (0-based) */
    int max_seq;    /* longest sequence (context) the model is built for */
    float norm_eps; /* the model's RMSNorm epsilon */
} hyb_model_dims;

/* How the host should initialise a parameter before init_params runs (init_params may then
 * overwrite any of them). */
typedef enum hyb_init_kind {
    HYB_INIT_ZEROS = 0,
    HYB_INIT_ONES,
    HYB_INIT_NORMAL,  /* N(0, a) */
    HYB_INIT_UNIFORM, /* U(-a, a) */
    HYB_INIT_CUSTOM,  /* left to init_params */
} hyb_init_kind;

typedef struct hyb_param_decl {
    char name[64]; /* HF name below the mixer's prefix, e.g. "q_proj.weight", "A_log" */
    int ndim;
    int64_t shape[4];
    int init; /* hyb_init_kind */
    float init_a;
    int no_decay; /* 1: exclude from weight decay (norms, biases, A_log, D) */
    /* 1: a linear weight [out, in] that the kernels only ever use as y = x W^T (forward and
     * decode), so the host may hand it over in a GGUF block dtype (Q8_0, Q4_K, ...: see
     * param_dtypes) when it is frozen and the model was loaded from a quantized GGUF for
     * inference: the kernels then multiply it with be->qmatmul instead of be->sgemm. Such a
     * parameter never reaches backward, init_params or init_from quantized (the host refuses
     * a tape through it and gives init_from f32 copies). 0: always f32. (ABI 3) */
    int quant_ok;
} hyb_param_decl;

/* ---- host services ------------------------------------------------------------------------- */

typedef struct hyb_host {
    uint32_t abi_version; /* HYB_PLUGIN_ABI_VERSION of the host */
    uint32_t struct_size; /* sizeof(hyb_host) of the host */

    /* logging and errors */
    void (*log)(int level, const char *fmt, ...);      /* hyb_log_level */
    int (*error)(int code, const char *fmt, ...);      /* set message, return code */

    /* memory: 64-byte aligned, zeroed; NULL (error set) when out of memory */
    void *(*alloc)(size_t nbytes);
    void (*free)(void *p);

    /* config: read a key of the mixer's TOML table. Missing key -> *out = def, return 0.
     * Wrong type or out of range -> error naming file:line:col, return < 0. */
    int (*cfg_int)(const hyb_cfg_table *t, const char *key, int64_t def, int64_t *out);
    int (*cfg_float)(const hyb_cfg_table *t, const char *key, double def, double *out);
    int (*cfg_bool)(const hyb_cfg_table *t, const char *key, int def, int *out);
    /* string value or def; the pointer lives as long as the table */
    int (*cfg_string)(const hyb_cfg_table *t, const char *key, const char *def, const char **out);
    /* error (file:line:col of the key) for any key of t not in the NULL-terminated list */
    int (*cfg_check_keys)(const hyb_cfg_table *t, const char *const *allowed);
    /* error message prefixed with the table's file:line:col */
    int (*cfg_error)(const hyb_cfg_table *t, const char *key, const char *fmt, ...);

    /* deterministic RNG streams: *state is advanced */
    void (*rng_normal)(uint64_t *state, float *out, size_t n, float mean, float std);
    void (*rng_uniform)(uint64_t *state, float *out, size_t n, float lo, float hi);

    /* ---- HF config.json, for the hf_export / hf_import hooks (added at the end in ABI 2) ----
     * Reading (hf_import). A missing or null key gives def when !required, else an error naming
     * the file, the object and the key ("x/config.json: ssm_cfg: key \"d_state\" is missing");
     * a value of the wrong type is an error naming them too. */
    int (*json_type)(const hyb_json *obj, const char *key); /* hyb_json_type of obj[key] */
    /* The object obj[key]; *out = NULL when it is missing or null and !required. */
    int (*json_object)(const hyb_json *obj, const char *key, int required, const hyb_json **out);
    int (*json_int)(const hyb_json *obj, const char *key, int required, int64_t def, int64_t *out);
    int (*json_float)(const hyb_json *obj, const char *key, int required, double def, double *out);
    int (*json_bool)(const hyb_json *obj, const char *key, int required, int def, int *out);
    /* the pointer lives as long as the config */
    int (*json_string)(const hyb_json *obj, const char *key, int required, const char *def,
                       const char **out);
    /* error message prefixed with "<file>: <object>.<key>: " */
    int (*json_error)(const hyb_json *obj, const char *key, const char *fmt, ...);
    /* Writing (hf_export). A key that is absent is added; present with the same value it is left
     * alone (another layer of the same mixer wrote it); a different value is HYB_ERR_UNSUPPORTED
     * naming the key and both values: the layers cannot share one config. Floats are written in
     * the shortest form that reads back as the same double. */
    int (*json_set_int)(hyb_json *obj, const char *key, int64_t v);
    int (*json_set_float)(hyb_json *obj, const char *key, double v);
    int (*json_set_bool)(hyb_json *obj, const char *key, int v);
    int (*json_set_string)(hyb_json *obj, const char *key, const char *v);
    int (*json_set_null)(hyb_json *obj, const char *key);
    /* obj[key] as an object, created empty when absent (error when it holds something else) */
    int (*json_set_object)(hyb_json *obj, const char *key, hyb_json **out);
    /* Writing a TOML table (hf_import): one `key = value` line each. */
    int (*toml_int)(hyb_toml *t, const char *key, int64_t v);
    int (*toml_float)(hyb_toml *t, const char *key, double v);
    int (*toml_bool)(hyb_toml *t, const char *key, int v);
    int (*toml_string)(hyb_toml *t, const char *key, const char *v);

    /* ---- CPU threads (added at the end in ABI 2: a plugin built against an older host sees a
     * smaller struct_size and runs serially; plugins/common/plugin_util.h's hyb_pl_parallel_for
     * checks). parallel_for runs fn over [0, n) on hyb's persistent thread pool, in chunks of a
     * multiple of grain items, the caller taking part; fn returns HYB_OK or an error (set with
     * host->error), and the first error is returned with its message. tid is in [0, threads())
     * and unique among the threads of one call: index per-thread scratch with it. A call from
     * inside a chunk (or an OpenMP parallel region) runs serially on the calling thread with
     * tid 0. Results must not depend on the chunking (the thread count decides it). */
    int (*parallel_for)(int64_t n, int64_t grain,
                        int (*fn)(void *ctx, int64_t lo, int64_t hi, int tid), void *ctx);
    int (*threads)(void); /* the pool's thread count, the caller included (--threads) */
} hyb_host;

/* ---- the mixer vtable --------------------------------------------------------------------- */

typedef struct hyb_mixer_fwd {
    int B, T;                    /* batch, time */
    const hyb_backend *be;       /* the device's backend: all compute goes through it */
    const float *x;              /* [B, T, D] input (already normed) */
    float *y;                    /* [B, T, D] output, written */
    const float *const *params;  /* declaration order */
    void *saved;                 /* saved_bytes(B, T) bytes to fill for backward, or NULL */
    void *const *states;         /* [B] per-sequence decode states to fill, or NULL */
    const int32_t *pos;          /* [B] tokens already in states[b] (continue), or NULL = 0 */
    int max_ctx;                 /* capacity of the states in tokens */
    /* [n_params] hyb_dtype of each params[i] (ABI 3): HYB_F32, or a GGUF block type (then
     * params[i] points at its blocks, rows of K/block_elems blocks) for a decl with quant_ok.
     * Multiply such a weight with be->qmatmul(be, dtype, W, x, y, M, N, K). */
    const int *param_dtypes;
    int kv;                      /* hyb_kv_dtype of the states' KV cache (mixers with *_kv hooks) */
} hyb_mixer_fwd;

typedef struct hyb_mixer_bwd {
    int B, T;
    const hyb_backend *be;
    const float *x;             /* [B, T, D] the forward's input */
    const float *dy;            /* [B, T, D] */
    float *dx;                  /* [B, T, D] written */
    const float *const *params; /* declaration order */
    float *const *grads;        /* declaration order, accumulated (+=) */
    const void *saved;          /* what forward saved */
} hyb_mixer_bwd;

typedef struct hyb_mixer_dec {
    int n; /* sequences in this step, each gets one new token */
    const hyb_backend *be;
    const float *x;             /* [n, D] */
    float *y;                   /* [n, D] written */
    const float *const *params;
    void *const *states;        /* [n] */
    const int32_t *pos;         /* [n] position of the new token = tokens already in state */
    int max_ctx;
    const int *param_dtypes;    /* [n_params], as in hyb_mixer_fwd (ABI 3) */
    int kv;                     /* hyb_kv_dtype of the states' KV cache (mixers with *_kv hooks) */
} hyb_mixer_dec;

/* Source of an init_from call: another mixer's parameters in the same layer. */
typedef struct hyb_mixer_src {
    const char *type;                   /* source mixer type, e.g. "mha" */
    int n_params;
    const hyb_param_decl *decls;        /* [n_params] */
    const float *const *params;         /* [n_params] */
    const hyb_cfg_table *cfg;           /* the source mixer's TOML table (may be NULL) */
} hyb_mixer_src;

/* The kernels of one device. forward and decode are required for a supported device; backward
 * may be NULL for an inference-only device (training there is then refused with a message). */
typedef struct hyb_mixer_kernels {
    /* Training and prefill: y = mixer(x) over [B, T]; fills saved (backward) and/or states. */
    int (*forward)(void *self, const hyb_mixer_fwd *a);
    /* dx written, grads accumulated, from what forward saved. */
    int (*backward)(void *self, const hyb_mixer_bwd *a);
    /* One new token for each of n sequences, reading and advancing their states. */
    int (*decode)(void *self, const hyb_mixer_dec *a);
} hyb_mixer_kernels;

typedef struct hyb_mixer_desc {
    uint32_t abi_version; /* HYB_PLUGIN_ABI_VERSION */
    uint32_t struct_size; /* sizeof(hyb_mixer_desc) */
    const char *name;     /* the `type` used in layer maps, e.g. "mha" */
    const char *version;  /* the plugin's own version, e.g. "1.0.0" */
    const char *description;
    const char *hf_prefix; /* parameter prefix in HF checkpoints: "self_attn", "mixer" */

    /* Parse and validate the mixer's TOML table (cfg may be NULL: all defaults). Required. */
    int (*create)(const hyb_model_dims *dims, const hyb_cfg_table *cfg, void **self);
    void (*destroy)(void *self);
    /* One line describing the resolved mixer, e.g. "mha H=9 KV=3 hd=64 theta=1e5". Required. */
    int (*describe)(void *self, char *buf, size_t n);

    /* Parameters. Required. */
    int (*n_params)(void *self);
    int (*param_decl)(void *self, int i, hyb_param_decl *out);
    /* Called after the host applied each decl's init; may overwrite (HYB_INIT_CUSTOM). Optional:
     * NULL keeps the host's init. Parameters are host memory here (and in init_from): the host
     * initialises on the CPU and moves the model to its device afterwards. */
    int (*init_params)(void *self, float *const *params, uint64_t seed);

    /* Sizes of the buffers the host allocates on the device for the kernels. Required. */
    size_t (*saved_bytes)(void *self, int B, int T);  /* forward -> backward */
    size_t (*state_bytes)(void *self, int max_ctx);   /* decode state, per sequence */

    /* The kernels, per device (indexed by hyb_device). At least one device must have them. */
    hyb_mixer_kernels kernels[HYB_PLUGIN_MAX_DEVICES];

    /* Snapshot of a state holding `pos` tokens into dst (same device; copy with be->copy).
     * dst == NULL: return the bytes needed (>= 0). Optional: NULL means the host copies
     * state_bytes(max_ctx) bytes. */
    int64_t (*state_snapshot)(void *self, const hyb_backend *be, const void *state, int pos,
                              int max_ctx, void *dst);
    /* Restore a snapshot into a state. Optional: NULL means a whole copy. */
    int (*state_restore)(void *self, const hyb_backend *be, void *state, const void *src, int pos,
                         int max_ctx);

    /* Initialise this mixer's params from another mixer of the same layer (MIL from attention).
     * Optional: NULL means "no init from other mixers"; return HYB_ERR_UNSUPPORTED (with a
     * message) for a source type it does not know. */
    int (*init_from)(void *self, float *const *params, const hyb_mixer_src *src, uint64_t seed);

    /* ---- HF config.json import/export (optional; added at the end in ABI 2) ------------------
     * A mixer without these hooks is not written to (or read from) any HF config: the model is
     * still saved, with layermap.toml describing it. Both hooks set or both NULL. */
    /* The mixer's block type in apriel_h hybrid_block_layout ("t", "m2"); "t" is also the
     * attention of a plain llama/mistral config. NULL: the mixer has no apriel_h type. The host
     * refuses two plugins claiming the same type when it needs one. */
    const char *hf_layer_type;
    /* Write this (resolved) mixer's keys into `config` (the root object) for `format`
     * (HYB_HF_*), for every layer that has this mixer: write with host->json_set_*, which also
     * checks that the layers of one type agree. Return HYB_ERR_UNSUPPORTED, with a message
     * saying why (host->error), when the mixer or its settings cannot be expressed in that
     * format; the host then tries the next format (llama, apriel_h, hyb_hybrid, in that order)
     * and logs the reasons when none fits. */
    int (*hf_export)(void *self, const char *format, hyb_json *config);
    /* Read this mixer's keys from `config` (the root object of a config.json in `format`) and
     * write the mixer's TOML table (the keys create reads; not type or symbol) with host->toml_*.
     * dims: the model, with layer = the first layer of this mixer. Errors name the file and key
     * (host->json_* do). Called once per mixer type in the file. */
    int (*hf_import)(const hyb_model_dims *dims, const char *format, const hyb_json *config,
                     hyb_toml *table);

    /* ---- KV-cache storage type (optional; added at the end in ABI 3) -----------------------
     * For a mixer whose decode state is a cache of per-token rows (attention's K and V), stored
     * as the kvstate's hyb_kv_dtype. With state_bytes_kv set the host sizes, snapshots and
     * restores the state with these (the kv argument: the kvstate's type) instead of
     * state_bytes / state_snapshot / state_restore (which then describe the f32 layout), and
     * passes the same type to the kernels (fwd/dec .kv). A type the mixer (or a device's kernels)
     * cannot store: HYB_ERR_UNSUPPORTED naming the option and the type. NULL (recurrent states):
     * the state is f32 whatever the kvstate's type, and the kernels ignore .kv. All three set or
     * none (state_snapshot_kv / state_restore_kv may both be NULL: a whole copy). */
    size_t (*state_bytes_kv)(void *self, int max_ctx, int kv);
    int64_t (*state_snapshot_kv)(void *self, const hyb_backend *be, const void *state, int pos,
                                 int max_ctx, int kv, void *dst);
    int (*state_restore_kv)(void *self, const hyb_backend *be, void *state, const void *src,
                            int pos, int max_ctx, int kv);
} hyb_mixer_desc;

typedef const hyb_mixer_desc *(*hyb_plugin_entry_fn)(const hyb_host *host);

#ifdef __cplusplus
}
#endif
#endif
