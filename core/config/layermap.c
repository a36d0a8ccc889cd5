/* core/config/layermap.c: layer maps (hyb/config.h): load, validate, resolve, describe.
 *
 * A layer map names the model's dimensions ([model]), the mixer configurations it uses
 * ([mixers.<name>], each with a plugin `type` and an optional one-character `symbol`) and which
 * mixer every layer runs ([layout], either a `pattern` string of symbols or a `layers` list of
 * mixer names). Everything a user can get wrong is reported as HYB_ERR_FORMAT with the
 * file:line:col of the offending key, value, or pattern character.
 */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/config.h"
#include "toml_internal.h"

static const char *const TOP_KEYS[] = {"model", "mixers", "layout", NULL};
static const char *const MODEL_KEYS[] = {"name",           "d_model", "n_layers",
                                         "vocab_size",     "d_ff",    "norm_eps",
                                         "tie_embeddings", "max_seq", NULL};
static const char *const LAYOUT_KEYS[] = {"pattern", "layers", NULL};

/* ---- small helpers ----------------------------------------------------------------------------*/

/* A bounded string builder: appends never overflow, the buffer stays NUL-terminated. */
typedef struct sbuf {
    char *buf;
    size_t n, len;
} sbuf;

static void sb_printf(sbuf *s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void sb_printf(sbuf *s, const char *fmt, ...) {
    if (!s->buf || s->n == 0 || s->len + 1 >= s->n) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(s->buf + s->len, s->n - s->len, fmt, ap);
    va_end(ap);
    if (w < 0) return;
    s->len += (size_t)w;
    if (s->len >= s->n) s->len = s->n - 1;
}

/* Require t[key] to be a table; *out = NULL when absent and not required. */
static int get_table(const hyb_cfg_table *t, const char *key, int required,
                     const hyb_cfg_table **out) {
    *out = hyb_cfg_subtable(t, key);
    if (*out) return HYB_OK;
    const char *ty = hyb_cfg_type(t, key);
    if (ty) {
        int line, col;
        hyb_cfg_pos(t, key, 1, &line, &col);
        return hyb_cfg_error_at(t, line, col, "'%s' must be a table, got %s", key, ty);
    }
    if (required)
        return hyb_cfg_error(t, NULL,
                             "missing [%s] table (a layer map needs [model], [mixers.<name>] "
                             "and [layout])",
                             key);
    return HYB_OK;
}

/* A positive int dimension of [model]. Missing: error when required, else def. */
static int get_dim(const hyb_cfg_table *model, const char *key, int required, int def, int max,
                   int *out) {
    if (!hyb_cfg_has(model, key)) {
        if (required)
            return hyb_cfg_error(model, NULL,
                                 "[model] is missing required key '%s' (a positive integer)", key);
        *out = def;
        return HYB_OK;
    }
    int64_t v;
    HYB_TRY(hyb_cfg_int(model, key, def, &v));
    int line, col;
    hyb_cfg_pos(model, key, 1, &line, &col);
    if (v <= 0)
        return hyb_cfg_error_at(model, line, col, "model.%s must be positive (range [1, %d]), got %lld",
                                key, max, (long long)v);
    if (v > max)
        return hyb_cfg_error_at(model, line, col, "model.%s = %lld is too large (range [1, %d])",
                                key, (long long)v, max);
    *out = (int)v;
    return HYB_OK;
}

static int copy_name(char *dst, size_t n, const char *src, const hyb_cfg_table *t, const char *key,
                     const char *what) {
    size_t len = strlen(src);
    if (len == 0) return hyb_cfg_error(t, key, "%s must not be empty", what);
    if (len >= n)
        return hyb_cfg_error(t, key, "%s '%s' is too long (at most %zu bytes)", what, src, n - 1);
    memcpy(dst, src, len + 1);
    return HYB_OK;
}

static int find_by_name(const hyb_layermap *m, const char *name) {
    for (int i = 0; i < m->n_mixers; i++)
        if (strcmp(m->mixers[i].name, name) == 0) return i;
    return -1;
}

static int find_by_symbol(const hyb_layermap *m, char c) {
    if (c == 0) return -1;
    for (int i = 0; i < m->n_mixers; i++)
        if (m->mixers[i].symbol == c) return i;
    return -1;
}

/* "'t' (attn), 'm' (mamba)" or "attn ('t'), mamba" */
static const char *known_mixers(const hyb_layermap *m, int by_symbol, char *buf, size_t n) {
    sbuf s = {buf, n, 0};
    buf[0] = 0;
    int any = 0;
    for (int i = 0; i < m->n_mixers; i++) {
        const hyb_mixer_spec *x = &m->mixers[i];
        if (by_symbol && !x->symbol) continue;
        if (any) sb_printf(&s, ", ");
        if (by_symbol)
            sb_printf(&s, "'%c' (%s)", x->symbol, x->name);
        else if (x->symbol)
            sb_printf(&s, "%s ('%c')", x->name, x->symbol);
        else
            sb_printf(&s, "%s", x->name);
        any = 1;
    }
    if (!any) sb_printf(&s, "none");
    return buf;
}

/* ---- sections ---------------------------------------------------------------------------------*/

static int parse_model(hyb_layermap *m, const hyb_cfg_table *root) {
    const hyb_cfg_table *model;
    HYB_TRY(get_table(root, "model", 1, &model));
    HYB_TRY(hyb_cfg_check_keys(model, MODEL_KEYS));

    const char *name = NULL;
    HYB_TRY(hyb_cfg_string(model, "name", NULL, &name));
    if (name) {
        HYB_TRY(copy_name(m->name, sizeof m->name, name, model, "name", "model.name"));
    } else { /* default: the file's stem */
        const char *base = strrchr(m->path, '/');
        base = base ? base + 1 : m->path;
        size_t len = strcspn(base, ".");
        if (len >= sizeof m->name) len = sizeof m->name - 1;
        memcpy(m->name, base, len);
        m->name[len] = 0;
    }
    HYB_TRY(get_dim(model, "d_model", 1, 0, HYB_MAX_D_MODEL, &m->d_model));
    HYB_TRY(get_dim(model, "n_layers", 1, 0, HYB_MAX_LAYERS, &m->n_layers));
    HYB_TRY(get_dim(model, "vocab_size", 1, 0, HYB_MAX_VOCAB, &m->vocab_size));
    HYB_TRY(get_dim(model, "d_ff", 1, 0, HYB_MAX_D_FF, &m->d_ff));
    HYB_TRY(get_dim(model, "max_seq", 1, 0, HYB_MAX_SEQ, &m->max_seq));

    HYB_TRY(hyb_cfg_float(model, "norm_eps", 1e-5, &m->norm_eps));
    if (!(m->norm_eps >= HYB_NORM_EPS_MIN && m->norm_eps <= HYB_NORM_EPS_MAX)) {
        int line, col;
        hyb_cfg_pos(model, "norm_eps", 1, &line, &col);
        return hyb_cfg_error_at(model, line, col,
                                "model.norm_eps must be a positive finite number in [%g, %g], "
                                "got %g",
                                HYB_NORM_EPS_MIN, HYB_NORM_EPS_MAX, m->norm_eps);
    }
    HYB_TRY(hyb_cfg_bool(model, "tie_embeddings", 0, &m->tie_embeddings));
    return HYB_OK;
}

static int parse_mixers(hyb_layermap *m, const hyb_cfg_table *root) {
    const hyb_cfg_table *mixers;
    HYB_TRY(get_table(root, "mixers", 1, &mixers));
    const char **keys;
    int n = hyb_cfg_keys(mixers, &keys);
    if (n == 0)
        return hyb_cfg_error(mixers, NULL,
                             "[mixers] is empty: define at least one [mixers.<name>] "
                             "with a `type`");
    if (n > HYB_MAX_MIXERS)
        return hyb_cfg_error(mixers, keys[HYB_MAX_MIXERS], "too many mixers: %d (at most %d)", n,
                             HYB_MAX_MIXERS);
    for (int i = 0; i < n; i++) {
        const char *key = keys[i];
        const hyb_cfg_table *mt;
        HYB_TRY(get_table(mixers, key, 1, &mt));
        hyb_mixer_spec *x = &m->mixers[m->n_mixers];
        memset(x, 0, sizeof *x);
        HYB_TRY(copy_name(x->name, sizeof x->name, key, mixers, key, "mixer name"));
        x->table = mt;

        const char *type = NULL;
        HYB_TRY(hyb_cfg_string(mt, "type", NULL, &type));
        if (!type)
            return hyb_cfg_error(mt, NULL,
                                 "mixer '%s' has no `type` (the plugin to use, e.g. "
                                 "type = \"mha\")",
                                 key);
        HYB_TRY(copy_name(x->type, sizeof x->type, type, mt, "type", "mixer type"));
        hyb_cfg_where(mt, "type", x->where, sizeof x->where);

        const char *sym = NULL;
        HYB_TRY(hyb_cfg_string(mt, "symbol", NULL, &sym));
        if (sym) {
            int line, col;
            hyb_cfg_pos(mt, "symbol", 1, &line, &col);
            if (strlen(sym) != 1 || !isgraph((unsigned char)sym[0]))
                return hyb_cfg_error_at(mt, line, col,
                                        "mixers.%s.symbol must be one printable ASCII character "
                                        "(not a space), got \"%s\"",
                                        key, sym);
            int other = find_by_symbol(m, sym[0]);
            if (other >= 0) {
                char where[200];
                hyb_cfg_where(m->mixers[other].table, "symbol", where, sizeof where);
                return hyb_cfg_error_at(mt, line, col,
                                        "duplicate symbol '%c': mixer '%s' and mixer '%s' (%s) "
                                        "both use it",
                                        sym[0], key, m->mixers[other].name, where);
            }
            x->symbol = sym[0];
        }
        m->n_mixers++;
    }
    return HYB_OK;
}

/* layout.<key> gave n layers (counted as `what`): it must be model.n_layers; m->layer_mixer is
 * allocated for them. */
static int alloc_layers(hyb_layermap *m, const hyb_cfg_table *layout, const char *key, int n,
                        const char *what) {
    if (n != m->n_layers) {
        int line, col;
        hyb_cfg_pos(layout, key, 1, &line, &col);
        return hyb_cfg_error_at(layout, line, col, "layout.%s has %d %s but model.n_layers = %d",
                                key, n, what, m->n_layers);
    }
    m->layer_mixer = calloc((size_t)n, sizeof *m->layer_mixer);
    if (!m->layer_mixer) return hyb_error_set(HYB_ERR_NOMEM, "out of memory (%d layers)", n);
    return HYB_OK;
}

static int parse_pattern(hyb_layermap *m, const hyb_cfg_table *layout) {
    const char *pat;
    HYB_TRY(hyb_cfg_string(layout, "pattern", NULL, &pat));
    char known[512];
    int count = 0;
    for (size_t i = 0; pat[i]; i++) {
        unsigned char c = (unsigned char)pat[i];
        if (isspace(c)) continue;
        if (find_by_symbol(m, (char)c) < 0) {
            int line, col;
            hyb_cfg_string_pos(layout, "pattern", i, &line, &col);
            known_mixers(m, 1, known, sizeof known);
            if (c >= 0x80)
                return hyb_cfg_error_at(layout, line, col,
                                        "layout.pattern: non-ASCII character at layer %d names no "
                                        "mixer; known symbols: %s",
                                        count, known);
            return hyb_cfg_error_at(layout, line, col,
                                    "layout.pattern: symbol '%c' (layer %d) names no mixer; known "
                                    "symbols: %s",
                                    c, count, known);
        }
        count++;
    }
    HYB_TRY(alloc_layers(m, layout, "pattern", count, "layers"));
    int l = 0;
    for (size_t i = 0; pat[i]; i++)
        if (!isspace((unsigned char)pat[i])) m->layer_mixer[l++] = find_by_symbol(m, pat[i]);
    return HYB_OK;
}

static int parse_layers(hyb_layermap *m, const hyb_cfg_table *layout) {
    int n = hyb_cfg_array_len(layout, "layers");
    if (n < 0) return HYB_ERR_FORMAT;
    char known[512];
    for (int i = 0; i < n; i++) {
        const char *s;
        HYB_TRY(hyb_cfg_array_string(layout, "layers", i, &s));
        int k = find_by_name(m, s);
        if (k < 0 && s[0] && !s[1]) k = find_by_symbol(m, s[0]);
        if (k < 0) {
            int line, col;
            hyb_cfg_array_pos(layout, "layers", i, &line, &col);
            return hyb_cfg_error_at(layout, line, col,
                                    "layout.layers[%d] = \"%s\" names no mixer; known: %s", i, s,
                                    known_mixers(m, 0, known, sizeof known));
        }
    }
    HYB_TRY(alloc_layers(m, layout, "layers", n, "entries"));
    for (int i = 0; i < n; i++) {
        const char *s;
        HYB_TRY(hyb_cfg_array_string(layout, "layers", i, &s));
        int k = find_by_name(m, s);
        if (k < 0) k = find_by_symbol(m, s[0]);
        m->layer_mixer[i] = k;
    }
    return HYB_OK;
}

static int parse_layout(hyb_layermap *m, const hyb_cfg_table *root) {
    const hyb_cfg_table *layout;
    HYB_TRY(get_table(root, "layout", 1, &layout));
    HYB_TRY(hyb_cfg_check_keys(layout, LAYOUT_KEYS));
    int has_p = hyb_cfg_has(layout, "pattern"), has_l = hyb_cfg_has(layout, "layers");
    if (has_p && has_l) {
        int lp, cp, ll, cl;
        hyb_cfg_pos(layout, "pattern", 0, &lp, &cp);
        hyb_cfg_pos(layout, "layers", 0, &ll, &cl);
        int later_is_layers = ll > lp || (ll == lp && cl > cp);
        return hyb_cfg_error(layout, later_is_layers ? "layers" : "pattern",
                             "[layout] has both `pattern` and `layers`; give exactly one");
    }
    if (!has_p && !has_l)
        return hyb_cfg_error(layout, NULL,
                             "[layout] needs `pattern` (one mixer symbol per layer) "
                             "or `layers` (a list of mixer names)");
    return has_p ? parse_pattern(m, layout) : parse_layers(m, layout);
}

/* Takes ownership of doc. */
static int from_doc(hyb_toml *doc, const char *path, hyb_layermap **out) {
    hyb_layermap *m = calloc(1, sizeof *m);
    if (!m) {
        hyb_toml_free(doc);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    }
    m->doc = doc;
    snprintf(m->path, sizeof m->path, "%s", path);
    const hyb_cfg_table *root = hyb_toml_root(doc);
    int rc = hyb_cfg_check_keys(root, TOP_KEYS);
    if (rc == HYB_OK) rc = parse_model(m, root);
    if (rc == HYB_OK) rc = parse_mixers(m, root);
    if (rc == HYB_OK) rc = parse_layout(m, root);
    if (rc != HYB_OK) {
        hyb_layermap_free(m);
        return rc;
    }
    *out = m;
    return HYB_OK;
}

/* ---- public API -------------------------------------------------------------------------------*/

int hyb_layermap_load(const char *path, hyb_layermap **out) {
    if (!out) return hyb_error_set(HYB_ERR_ARG, "hyb_layermap_load: out is NULL");
    *out = NULL;
    if (!path) return hyb_error_set(HYB_ERR_ARG, "hyb_layermap_load: path is NULL");
    hyb_toml *doc;
    HYB_TRY(hyb_toml_open(path, &doc));
    return from_doc(doc, path, out);
}

int hyb_layermap_parse(const char *text, const char *source_name, hyb_layermap **out) {
    if (!out) return hyb_error_set(HYB_ERR_ARG, "hyb_layermap_parse: out is NULL");
    *out = NULL;
    if (!source_name) source_name = "<string>";
    hyb_toml *doc;
    HYB_TRY(hyb_toml_open_string(text, source_name, &doc));
    return from_doc(doc, source_name, out);
}

void hyb_layermap_free(hyb_layermap *m) {
    if (!m) return;
    free(m->layer_mixer);
    hyb_toml_free(m->doc);
    free(m);
}

/* In place: layer `layer` now runs mixers[mixer_index]. */
int hyb_layermap_set_layer(hyb_layermap *m, int layer, int mixer_index) {
    if (!m) return hyb_error_set(HYB_ERR_ARG, "hyb_layermap_set_layer: map is NULL");
    if (layer < 0 || layer >= m->n_layers)
        return hyb_error_set(HYB_ERR_ARG, "%s: layer %d out of range (the model has %d layers)",
                             m->path, layer, m->n_layers);
    if (mixer_index < 0 || mixer_index >= m->n_mixers)
        return hyb_error_set(HYB_ERR_ARG, "%s: mixer index %d out of range (%d mixers)", m->path,
                             mixer_index, m->n_mixers);
    m->layer_mixer[layer] = mixer_index;
    return HYB_OK;
}

/* Returns the new index (>= 0), or the existing one when a mixer of that name, type and table is
 * already there; a negative status on error. The table must outlive the map (it is not copied).
 * Its `symbol` is used when valid and free, otherwise the mixer gets none. */
int hyb_layermap_add_mixer(hyb_layermap *m, const char *name, const char *type,
                           const hyb_cfg_table *table) {
    if (!m || !name || !type)
        return hyb_error_set(HYB_ERR_ARG, "hyb_layermap_add_mixer: NULL argument");
    int k = find_by_name(m, name);
    if (k >= 0) {
        if (strcmp(m->mixers[k].type, type) == 0 && m->mixers[k].table == table) return k;
        return hyb_error_set(HYB_ERR_ARG, "%s: a mixer named '%s' already exists (type '%s')",
                             m->path, name, m->mixers[k].type);
    }
    if (m->n_mixers >= HYB_MAX_MIXERS)
        return hyb_error_set(HYB_ERR_ARG, "%s: too many mixers (at most %d)", m->path,
                             HYB_MAX_MIXERS);
    size_t ln = strlen(name), lt = strlen(type);
    if (ln == 0 || ln >= sizeof m->mixers[0].name || lt == 0 || lt >= sizeof m->mixers[0].type)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_layermap_add_mixer: name '%s' / type '%s' must be 1..63 bytes",
                             name, type);
    hyb_mixer_spec *x = &m->mixers[m->n_mixers];
    memset(x, 0, sizeof *x);
    memcpy(x->name, name, ln + 1);
    memcpy(x->type, type, lt + 1);
    x->table = table;
    const char *sym = NULL;
    if (table && hyb_cfg_string(table, "symbol", NULL, &sym) == HYB_OK && sym && strlen(sym) == 1 &&
        isgraph((unsigned char)sym[0]) && find_by_symbol(m, sym[0]) < 0)
        x->symbol = sym[0];
    hyb_error_clear(); /* a bad optional symbol is ignored, not an error */
    if (table)
        hyb_cfg_where(table, hyb_cfg_has(table, "type") ? "type" : NULL, x->where, sizeof x->where);
    else
        snprintf(x->where, sizeof x->where, "(mixer '%s' added at run time)", name);
    return m->n_mixers++;
}

static char layer_char(const hyb_layermap *m, int l) {
    int k = m->layer_mixer[l];
    if (k < 0 || k >= m->n_mixers) return '?';
    return m->mixers[k].symbol ? m->mixers[k].symbol : m->mixers[k].name[0];
}

const char *hyb_layermap_pattern(const hyb_layermap *m, char *buf, size_t n) {
    if (!buf || n == 0) return buf;
    size_t len = 0;
    for (int l = 0; m && l < m->n_layers && len + 1 < n; l++)
        buf[len++] = layer_char(m, l);
    buf[len] = 0;
    return buf;
}

const char *hyb_layermap_describe(const hyb_layermap *m, char *buf, size_t n) {
    if (!buf || n == 0) return buf;
    buf[0] = 0;
    if (!m) return buf;
    sbuf s = {buf, n, 0};
    sb_printf(&s,
              "%s: %d layers, d_model %d, d_ff %d, vocab %d, max_seq %d, norm_eps %g, %s "
              "embeddings (%s)\n",
              m->name, m->n_layers, m->d_model, m->d_ff, m->vocab_size, m->max_seq, m->norm_eps,
              m->tie_embeddings ? "tied" : "untied", m->path);
    /* hybrids: how many layers each mixer runs, e.g. "mixers: attn (mha) x20, m2 (m2) x30" */
    int used = 0, counts[HYB_MAX_MIXERS] = {0};
    for (int l = 0; l < m->n_layers; l++) {
        int k = m->layer_mixer[l];
        if (k >= 0 && k < m->n_mixers && counts[k]++ == 0) used++;
    }
    if (used > 1) {
        sb_printf(&s, "  mixers:");
        for (int k = 0, first = 1; k < m->n_mixers; k++) {
            if (!counts[k]) continue;
            sb_printf(&s, "%s %s (%s) x%d", first ? "" : ",", m->mixers[k].name, m->mixers[k].type,
                      counts[k]);
            first = 0;
        }
        sb_printf(&s, "\n");
    }
    for (int a = 0; a < m->n_layers;) {
        int b = a;
        while (b + 1 < m->n_layers && m->layer_mixer[b + 1] == m->layer_mixer[a])
            b++;
        int k = m->layer_mixer[a];
        const char *name = k >= 0 && k < m->n_mixers ? m->mixers[k].name : "?";
        const char *type = k >= 0 && k < m->n_mixers ? m->mixers[k].type : "?";
        char range[32];
        if (a == b)
            snprintf(range, sizeof range, "layer %d", a);
        else
            snprintf(range, sizeof range, "layers %d-%d", a, b);
        sb_printf(&s, "  %-15s %s (%s)", range, name, type);
        if (b > a) sb_printf(&s, " x%d", b - a + 1);
        sb_printf(&s, "\n");
        a = b + 1;
    }
    sb_printf(&s, "  pattern ");
    for (int l = 0; l < m->n_layers; l++)
        sb_printf(&s, "%c", layer_char(m, l));
    sb_printf(&s, "\n");
    return buf;
}
