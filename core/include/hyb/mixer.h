/* hyb/mixer.h: the plugin loader and runtime mixer instances (the host side of plugin.h).
 *
 *   const hyb_mixer_desc *d;
 *   if (hyb_plugin_find("mha", &d) != HYB_OK) { puts(hyb_error()); ... }
 *   hyb_mixer *m;
 *   hyb_mixer_new("mha", &dims, table, 42, &m);     // validated config, initialised params
 *   hyb_tensor *y = hyb_mixer_apply(g, m, x, NULL, NULL, 0);
 *   hyb_mixer_free(m);
 *
 * Search order for libhyb-<name>.so (DESIGN.md): an explicit path given to
 * hyb_plugin_load_file, each directory of $HYB_PLUGIN_PATH (':'-separated), the directory of the
 * running executable and its ../lib/hyb, the build tree's plugins/ directory.
 */
#ifndef HYB_MIXER_H
#define HYB_MIXER_H

#include "hyb/plugin.h"
#include "hyb/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The host service table handed to plugins. */
const hyb_host *hyb_host_services(void);

/* Load one plugin file. Checks the entry symbol, ABI version ("built for plugin ABI 2, this hyb
 * has ABI 1") and struct size, that required vtable entries are non-NULL and that no other file
 * registered the same mixer name. Registers it. Loading an already loaded file (same real path)
 * returns its descriptor again. Plugins stay loaded until the process exits. */
int hyb_plugin_load_file(const char *path, const hyb_mixer_desc **out);
/* Find a plugin by mixer type name, loading libhyb-<name>.so from the search path on first use.
 * Not found: HYB_ERR_NOTFOUND, message lists the directories searched and the known mixers. */
/* A resolver for mixer types that are not plugin files: types starting with `prefix` ("lua:")
 * are handed to fn, which returns a descriptor that stays valid for the process (the hyb
 * executable registers runtime/lua_mixer.c's for "lua:<path>"). One resolver; NULL removes it. */
typedef int (*hyb_plugin_resolver)(const char *name, const struct hyb_mixer_desc **out);
void hyb_plugin_set_resolver(const char *prefix, hyb_plugin_resolver fn);
int hyb_plugin_find(const char *name, const hyb_mixer_desc **out);
/* Load every libhyb-*.so on the search path; returns the count. Errors of single files are
 * logged as warnings. */
int hyb_plugin_scan(void);
/* Registered plugins (after find/scan). */
int hyb_plugin_count(void);
const hyb_mixer_desc *hyb_plugin_get(int i, const char **path);
/* The search path as a ':'-joined string (for messages and `hyb plugins`). */
const char *hyb_plugin_search_path(char *buf, size_t n);

/* A mixer instance: a plugin's object plus its parameters. */
typedef struct hyb_mixer {
    const hyb_mixer_desc *desc;
    void *self;
    char type[64];
    hyb_model_dims dims;
    int n_params;
    hyb_param_decl *decls;  /* [n_params] */
    hyb_tensor **params;    /* [n_params] f32, requires_grad, owner HYB_OWN_PARAM; ->grad
                               allocated (NULL until first needed with HYB_MIXER_LAZY_GRAD) */
} hyb_mixer;

/* Create a mixer of `type` from its TOML table (NULL = defaults) and initialise its parameters
 * with `seed` (host init per decl, then the plugin's init_params). */
int hyb_mixer_new(const char *type, const hyb_model_dims *dims, const hyb_cfg_table *cfg,
                  uint64_t seed, hyb_mixer **out);
/* flags: HYB_MIXER_LAZY_GRAD leaves the parameters' ->grad NULL until the graph's backward or an
 * optimiser needs it (hyb_tensor_grad_ensure); models build their mixers this way. */
#define HYB_MIXER_LAZY_GRAD 1u
/* HYB_MIXER_NO_INIT leaves the parameters zero (no host init, no init_params): for a mixer whose
 * every parameter is about to be read from a file (a load never keeps an init value). */
#define HYB_MIXER_NO_INIT 2u
/* HYB_MIXER_NO_DATA (with NO_INIT): the parameters get no memory (data NULL) until a loader
 * gives each one (hyb_model_build_ex's HYB_BUILD_NO_DATA). */
#define HYB_MIXER_NO_DATA 4u
int hyb_mixer_new_ex(const char *type, const hyb_model_dims *dims, const hyb_cfg_table *cfg,
                     uint64_t seed, unsigned flags, hyb_mixer **out);
void hyb_mixer_free(hyb_mixer *m);
/* Per-sequence decode state size for a context of max_ctx tokens (f32 KV cache). */
size_t hyb_mixer_state_bytes(const hyb_mixer *m, int max_ctx);
/* The same with the KV cache stored as kv (hyb_kv_dtype, plugin.h); a mixer without the plugin's
 * state_bytes_kv hook (recurrent state) keeps its f32 size. The other *_kv functions below are
 * their namesakes for a state of that type (the plain ones: HYB_KV_F32). */
size_t hyb_mixer_state_bytes_kv(const hyb_mixer *m, int max_ctx, int kv);
/* "f32", "f16", "q8_0"; NULL for a bad value. */
const char *hyb_kv_dtype_name(int kv);
/* The hyb_kv_dtype named s into *out; else HYB_ERR_ARG "<what>: unknown KV cache type 'x'
 * (allowed: f16, q8_0, f32)" (what: the flag or option, e.g. "--kv-cache"). */
int hyb_kv_dtype_parse(const char *s, const char *what, int *out);
/* The kernels a model run asks of a mixer. */
typedef enum hyb_mixer_op { HYB_MIXER_FORWARD = 0, HYB_MIXER_BACKWARD, HYB_MIXER_DECODE } hyb_mixer_op;
/* HYB_OK when m's plugin has the kernel `op` for device `dev`; else HYB_ERR_UNSUPPORTED and
 * "mixer 'mha' (layer 3) has no forward kernel for device cuda (its plugin has kernels for: cpu)".
 * Models check every layer at build/placement time, so a run never starts without its kernels. */
int hyb_mixer_kernel_check(const hyb_mixer *m, hyb_device dev, hyb_mixer_op op);
/* Decode one token for n sequences: x [n, D] -> y [n, D], on the device of m's parameters
 * (through that device's backend). */
int hyb_mixer_decode(hyb_mixer *m, const float *x, float *y, int n, void *const *states,
                     const int32_t *pos, int max_ctx);
int hyb_mixer_decode_kv(hyb_mixer *m, const float *x, float *y, int n, void *const *states,
                        const int32_t *pos, int max_ctx, int kv);
/* Move m's parameters to be's device, after checking it has forward and decode kernels there. */
int hyb_mixer_move(hyb_mixer *m, const hyb_backend *be);
/* The backend of the device m's parameters live on (NULL + error when none is open). */
const hyb_backend *hyb_mixer_backend(const hyb_mixer *m);
/* Snapshot of a decode state holding `pos` tokens into dst (device memory of the same backend);
 * dst NULL: the bytes needed. The plugin's state_snapshot, or a copy of state_bytes(max_ctx). */
int64_t hyb_mixer_state_snapshot(const hyb_mixer *m, const void *state, int pos, int max_ctx,
                                 void *dst);
/* Restore a snapshot made by hyb_mixer_state_snapshot. */
int hyb_mixer_state_restore(const hyb_mixer *m, void *state, const void *src, int pos,
                            int max_ctx);
int64_t hyb_mixer_state_snapshot_kv(const hyb_mixer *m, const void *state, int pos, int max_ctx,
                                    int kv, void *dst);
int hyb_mixer_state_restore_kv(const hyb_mixer *m, void *state, const void *src, int pos,
                               int max_ctx, int kv);
/* Initialise dst's params from src (same layer); HYB_ERR_UNSUPPORTED when dst has no init_from. */
int hyb_mixer_init_from(hyb_mixer *dst, const hyb_mixer *src, const hyb_cfg_table *src_cfg,
                        uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
