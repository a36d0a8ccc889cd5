/* hyb/config.h: TOML documents (toml++ behind a small C API) and layer maps.
 *
 *   hyb_layermap *map;
 *   if (hyb_layermap_load("graphs/smollm2-135m.toml", &map) != HYB_OK) {
 *       fprintf(stderr, "%s\n", hyb_error());     // "graphs/x.toml:12:9: layout has 29 ..."
 *       return 1;
 *   }
 *   printf("%s", hyb_layermap_describe(map, buf, sizeof buf));
 *   hyb_layermap_free(map);
 *
 * A layer map file:
 *
 *   [model]                       # dimensions of the residual stream and the MLP
 *   name = "smollm2-135m"
 *   d_model = 576
 *   n_layers = 30
 *   vocab_size = 49152
 *   d_ff = 1536
 *   norm_eps = 1e-5
 *   tie_embeddings = true
 *   max_seq = 2048
 *
 *   [mixers.attn]                 # a named mixer config; `type` picks the plugin
 *   type = "mha"
 *   symbol = "t"                  # one character used by layout.pattern
 *   n_heads = 9                   # every other key belongs to the plugin, which validates it
 *   ...
 *
 *   [layout]
 *   pattern = "tttttmtttt..."     # one symbol per layer (spaces ignored), or
 *   # layers = ["attn", "attn", "mamba", ...]   (exactly one of the two)
 *
 * Every error names file:line:col of the offending key or value.
 */
#ifndef HYB_CONFIG_H
#define HYB_CONFIG_H

#include <stdarg.h>

#include "hyb/common.h"
#include "hyb/plugin.h" /* hyb_cfg_table */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- TOML documents ---------------------------------------------------------------------------*/

typedef struct hyb_toml hyb_toml;

/* Parse a file / a string (`source_name` is used in messages). NULL + hyb_error() on failure:
 * "path:line:col: <toml++ message>". */
hyb_toml *hyb_toml_parse_file(const char *path);
hyb_toml *hyb_toml_parse_string(const char *text, const char *source_name);
void hyb_toml_free(hyb_toml *doc);
const hyb_cfg_table *hyb_toml_root(const hyb_toml *doc);

/* Table navigation. NULL when absent (no error set). */
const hyb_cfg_table *hyb_cfg_subtable(const hyb_cfg_table *t, const char *key);
int hyb_cfg_has(const hyb_cfg_table *t, const char *key);
/* Keys of a table in file order: returns count, *keys[i] valid while the doc lives. */
int hyb_cfg_keys(const hyb_cfg_table *t, const char ***keys);
/* "file:line:col" of a key (or of the table itself when key == NULL). */
const char *hyb_cfg_where(const hyb_cfg_table *t, const char *key, char *buf, size_t n);

/* Typed getters: missing key -> *out = def, return HYB_OK. Wrong type -> HYB_ERR_FORMAT with
 * "file:line:col: key 'x' must be an integer, got string". Same contracts as hyb_host's. */
int hyb_cfg_int(const hyb_cfg_table *t, const char *key, int64_t def, int64_t *out);
int hyb_cfg_float(const hyb_cfg_table *t, const char *key, double def, double *out);
int hyb_cfg_bool(const hyb_cfg_table *t, const char *key, int def, int *out);
int hyb_cfg_string(const hyb_cfg_table *t, const char *key, const char *def, const char **out);
/* Arrays: count (0 when `key` is missing, -1 + error if it is not an array); element getters. */
int hyb_cfg_array_len(const hyb_cfg_table *t, const char *key);
int hyb_cfg_array_string(const hyb_cfg_table *t, const char *key, int i, const char **out);
int hyb_cfg_array_int(const hyb_cfg_table *t, const char *key, int i, int64_t *out);
/* Unknown keys: error at the first key of t that is not in the NULL-terminated list. */
int hyb_cfg_check_keys(const hyb_cfg_table *t, const char *const *allowed);
/* Set an error prefixed with the location of key (or the table). Returns HYB_ERR_FORMAT. */
int hyb_cfg_error(const hyb_cfg_table *t, const char *key, const char *fmt, ...);
int hyb_cfg_verror(const hyb_cfg_table *t, const char *key, const char *fmt, va_list ap);

/* ---- layer maps -------------------------------------------------------------------------------*/

#define HYB_MAX_MIXERS 32

/* The stated range of every model hyper-parameter, whichever file it comes from (a layer map's
 * [model], a config.json, GGUF metadata); anything outside is refused with the file and key.
 * Integers are inclusive [1, max]; norm_eps in [HYB_NORM_EPS_MIN, HYB_NORM_EPS_MAX]; rope_theta
 * in (1, HYB_ROPE_THETA_MAX] (checked by the mha plugin for layer maps). */
#define HYB_MAX_D_MODEL 65536
#define HYB_MAX_LAYERS 1024
#define HYB_MAX_VOCAB (1 << 24)
#define HYB_MAX_D_FF (1 << 20)
#define HYB_MAX_SEQ (1 << 24)
#define HYB_MAX_HEADS 1024
#define HYB_MAX_HEAD_DIM 1024
#define HYB_NORM_EPS_MIN 1e-12
#define HYB_NORM_EPS_MAX 0.1
#define HYB_ROPE_THETA_MAX 1e12

typedef struct hyb_mixer_spec {
    char name[64];              /* key under [mixers], e.g. "attn" */
    char type[64];              /* plugin name, e.g. "mha" */
    char symbol;                /* layout.pattern character, 0 when none */
    const hyb_cfg_table *table; /* the whole [mixers.<name>] table, passed to the plugin */
    char where[160];            /* "file:line:col" of its `type` value, for error messages */
} hyb_mixer_spec;

typedef struct hyb_layermap {
    char path[512]; /* file it came from, or the source name */
    char name[64];
    int d_model, n_layers, vocab_size, d_ff, max_seq;
    int tie_embeddings;
    double norm_eps;
    int n_mixers;
    hyb_mixer_spec mixers[HYB_MAX_MIXERS];
    int *layer_mixer; /* [n_layers]: index into mixers[] */
    hyb_toml *doc;    /* owned */
} hyb_layermap;

/* Load and validate: required keys present and typed, positive dims, every layout entry names a
 * known mixer (by name or symbol), the layout has exactly n_layers entries, no unknown keys in
 * [model] / [layout] / the mixers' `type`/`symbol`. Whether a mixer *type* exists as a plugin
 * is checked when a model is built (hyb_model_build), with the `where` location. */
int hyb_layermap_load(const char *path, hyb_layermap **out);
int hyb_layermap_parse(const char *text, const char *source_name, hyb_layermap **out);
void hyb_layermap_free(hyb_layermap *m);
/* In place: layer `layer` now runs mixers[mixer_index] (used by model:swap). HYB_ERR_ARG when
 * either index is out of range. */
int hyb_layermap_set_layer(hyb_layermap *m, int layer, int mixer_index);
/* Add a mixer spec (e.g. for swap to a type not in the file): returns its index (the existing one
 * when a spec with this name, type and table is already there), or a negative status. `table` is
 * not copied: it must outlive the map (NULL: the plugin's defaults). */
int hyb_layermap_add_mixer(hyb_layermap *m, const char *name, const char *type,
                           const hyb_cfg_table *table);
/* Human-readable resolved layout: a header line with dims, one line per run of equal layers,
 * and the pattern string. Returns buf. */
const char *hyb_layermap_describe(const hyb_layermap *m, char *buf, size_t n);
/* The pattern string, one symbol per layer (mixer name's first char when it has no symbol). */
const char *hyb_layermap_pattern(const hyb_layermap *m, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
