/* hyb/memplan.h: up-front memory planning. Before a model's parameters or a decode state are
 * allocated, their bytes are summed and compared with the memory available; a model that cannot
 * fit is refused at once with what, how much and how much is available, instead of failing (or
 * being killed) when an allocation fails midway.
 *
 *   uint64_t w;
 *   hyb_mem_plan_weights(map, &w);             // f32 parameters from the map and mixer plugins
 *   hyb_mem_check("model graphs/x.toml", w, "weights");
 *   // -> "model graphs/x.toml needs 2.1 GiB (weights), but only 1.5 GiB of memory is
 *   //     available (MemAvailable in /proc/meminfo)"
 *
 * hyb_model_build (so every loader: layer maps, GGUF, HF directories, checkpoints) checks the
 * weights; hyb_kvstate_new (hyb.llm, hyb.engine, benchmarks) checks the decode state for its
 * sequences and context. Activations of a forward pass are not planned (they scale with the
 * batch the caller picks, and the graph allocates them as it goes).
 */
#ifndef HYB_MEMPLAN_H
#define HYB_MEMPLAN_H

#include "hyb/common.h"
#include "hyb/config.h"

#ifdef __cplusplus
extern "C" {
#endif

struct hyb_model;

/* Bytes of the f32 parameters a model built from map has: embeddings, norms, MLPs, lm_head
 * (unless tied) and each layer's mixer parameters from its plugin's param_decl (the plugin object
 * is created and destroyed; nothing large is allocated). Plugin errors are returned as is. */
int hyb_mem_plan_weights(const hyb_layermap *map, uint64_t *bytes);
/* Bytes of the decode state of n_seq sequences of max_ctx tokens for m's mixers (64-byte aligned
 * per sequence, as hyb_kvstate_new lays it out: an f16 KV cache). HYB_ERR_ARG on overflow. */
int hyb_mem_plan_state(const struct hyb_model *m, int n_seq, int max_ctx, uint64_t *bytes);
/* The same for a KV cache stored as kv (hyb_kv_dtype; the plain one is for HYB_KV_DEFAULT, as
 * hyb_kvstate_new). */
int hyb_mem_plan_state_kv(const struct hyb_model *m, int n_seq, int max_ctx, int kv,
                          uint64_t *bytes);
/* Memory available now, in bytes: $HYB_MEM_LIMIT when set (bytes; for tests, or to keep
 * headroom), else MemAvailable from /proc/meminfo, lowered to what the cgroup allows
 * (memory.max - memory.current) when that is less. 0 when unknown (no check is made). *source
 * (may be NULL) names where the number came from. */
uint64_t hyb_mem_available(const char **source);
/* HYB_ERR_NOMEM when need > hyb_mem_available() (known): "<what> needs X (<detail>), but only
 * Y of memory is available (<source>)". HYB_OK otherwise. */
int hyb_mem_check(const char *what, uint64_t need, const char *detail);

#ifdef __cplusplus
}
#endif
#endif
