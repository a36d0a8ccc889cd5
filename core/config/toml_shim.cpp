/* core/config/toml_shim.cpp: toml++ behind the C API of hyb/config.h.
 *
 * This is the project's only C++ file. Nothing C++ crosses the boundary: every exported function
 * is extern "C", catches every exception (parse errors, bad_alloc, anything else) and turns it
 * into a hyb_status with a message "source:line:col: ...".
 *
 * Ownership: a hyb_toml owns the source text, the toml++ tree and one hyb_cfg_table wrapper per
 * table of the tree (created once at parse time, so the `const hyb_cfg_table *` handed out stay
 * valid and stable until hyb_toml_free). Key lists and string values point into the tree.
 *
 * Positions are toml++'s source_region: 1-based lines, columns counted in code points.
 */
#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "hyb/config.h"
#include "toml_internal.h"

#if !TOML_EXCEPTIONS
#error "toml_shim.cpp expects toml++ built with exceptions (TOML_EXCEPTIONS=1)"
#endif

struct hyb_cfg_table {
    const toml::table *tbl = nullptr;
    hyb_toml *doc = nullptr;
    std::string path;                   /* "" for the root, "mixers.attn" */
    std::vector<std::string> keys;      /* file order */
    std::vector<const char *> key_ptrs; /* keys[i].c_str(), NULL-terminated */
};

struct hyb_toml {
    std::string source;              /* file path or source name */
    std::string text;                /* the source text */
    std::vector<size_t> line_starts; /* byte offset of each line's first byte */
    toml::table root;
    std::deque<hyb_cfg_table> tables; /* deque: stable addresses */
    std::unordered_map<const toml::table *, const hyb_cfg_table *> index;
};

namespace {

constexpr size_t kMaxFileBytes = 64u << 20; /* a layer map is a few KiB; refuse absurd files */

struct pos {
    int line = 1, col = 1;
};

pos from_source(const toml::source_position &p) {
    pos r;
    if (p) {
        r.line = (int)p.line;
        r.col = (int)p.column;
    }
    return r;
}

const char *source_of(const hyb_cfg_table *t) {
    return t ? t->doc->source.c_str() : "";
}

const toml::node *lookup(const hyb_cfg_table *t, const char *key) {
    if (!t || !key) return nullptr;
    return t->tbl->get(std::string_view(key));
}

pos table_pos(const hyb_cfg_table *t) {
    return from_source(t->tbl->source().begin);
}

/* Position of a key; falls back to its value, then to the table. */
bool key_pos(const hyb_cfg_table *t, const char *key, pos *out) {
    if (!t) return false;
    *out = table_pos(t);
    if (!key) return true;
    auto it = t->tbl->find(std::string_view(key));
    if (it == t->tbl->end()) return false;
    if (it->first.source().begin)
        *out = from_source(it->first.source().begin);
    else if (it->second.source().begin)
        *out = from_source(it->second.source().begin);
    return true;
}

bool value_pos(const hyb_cfg_table *t, const char *key, pos *out) {
    if (!key_pos(t, key, out)) return false;
    if (!key) return true;
    const toml::node *n = lookup(t, key);
    if (n && n->source().begin) *out = from_source(n->source().begin);
    return true;
}

const char *type_name(const toml::node &n) {
    switch (n.type()) {
    case toml::node_type::string:
        return "string";
    case toml::node_type::integer:
        return "integer";
    case toml::node_type::floating_point:
        return "float";
    case toml::node_type::boolean:
        return "boolean";
    case toml::node_type::array:
        return "array";
    case toml::node_type::table:
        return "table";
    case toml::node_type::date:
        return "date";
    case toml::node_type::time:
        return "time";
    case toml::node_type::date_time:
        return "date-time";
    default:
        return "nothing";
    }
}

/* "string \"abc\"", "float 9.5", "boolean true", "table", ... for messages */
std::string describe_value(const toml::node &n) {
    std::string s = type_name(n);
    char buf[96];
    if (auto v = n.as_string()) {
        const std::string &str = v->get();
        if (str.size() <= 40)
            s += " \"" + str + "\"";
        else
            s += " \"" + str.substr(0, 37) + "...\"";
    } else if (auto f = n.as_floating_point()) {
        std::snprintf(buf, sizeof buf, " %g", f->get());
        s += buf;
    } else if (auto b = n.as_boolean()) {
        s += b->get() ? " true" : " false";
    }
    return s;
}

std::string full_key(const hyb_cfg_table *t, const char *key) {
    if (!t || t->path.empty()) return key ? key : "";
    return key ? t->path + "." + key : t->path;
}

int vset_at(int code, const hyb_cfg_table *t, pos p, const char *fmt, va_list ap) {
    char msg[1024];
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    if (!t) return hyb_error_set(code, "%s", msg);
    return hyb_error_set(code, "%s:%d:%d: %s", source_of(t), p.line, p.col, msg);
}

int set_at(int code, const hyb_cfg_table *t, pos p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
int set_at(int code, const hyb_cfg_table *t, pos p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = vset_at(code, t, p, fmt, ap);
    va_end(ap);
    return rc;
}

int type_error(const hyb_cfg_table *t, const char *key, const toml::node &n, const char *want) {
    pos p = from_source(n.source().begin);
    if (!n.source().begin) key_pos(t, key, &p);
    return set_at(HYB_ERR_FORMAT, t, p, "key '%s' must be %s, got %s", full_key(t, key).c_str(),
                  want, describe_value(n).c_str());
}

/* Byte offset in text of (line, col), col in code points; npos when out of range. */
size_t offset_of(const hyb_toml *doc, int line, int col) {
    if (line < 1 || (size_t)line > doc->line_starts.size() || col < 1) return std::string::npos;
    size_t o = doc->line_starts[(size_t)line - 1];
    for (int c = 1; c < col; c++) {
        if (o >= doc->text.size()) return std::string::npos;
        o++;
        while (o < doc->text.size() && (((unsigned char)doc->text[o]) & 0xC0) == 0x80)
            o++;
    }
    return o;
}

void build_tables(hyb_toml *doc, const toml::table *tbl, const std::string &path) {
    doc->tables.emplace_back();
    hyb_cfg_table &w = doc->tables.back();
    w.tbl = tbl;
    w.doc = doc;
    w.path = path;
    doc->index[tbl] = &w;

    struct ent {
        toml::source_position p;
        std::string key;
        const toml::node *node;
    };
    std::vector<ent> ents;
    for (auto &&kv : *tbl) {
        toml::source_position p = kv.first.source().begin;
        if (!p) p = kv.second.source().begin;
        ents.push_back({p, std::string(kv.first.str()), &kv.second});
    }
    std::stable_sort(ents.begin(), ents.end(),
                     [](const ent &a, const ent &b) { return a.p < b.p; });
    for (auto &e : ents)
        w.keys.push_back(e.key);
    for (auto &k : w.keys)
        w.key_ptrs.push_back(k.c_str());
    w.key_ptrs.push_back(nullptr);
    for (auto &e : ents)
        if (auto sub = e.node->as_table())
            build_tables(doc, sub, path.empty() ? e.key : path + "." + e.key);
}

int parse_into(std::string &&text, const char *source, hyb_toml **out) {
    *out = nullptr;
    try {
        auto doc = std::make_unique<hyb_toml>();
        doc->source = source ? source : "<string>";
        doc->text = std::move(text);
        doc->line_starts.push_back(0);
        for (size_t i = 0; i < doc->text.size(); i++)
            if (doc->text[i] == '\n') doc->line_starts.push_back(i + 1);
        doc->root = toml::parse(std::string_view(doc->text), std::string_view(doc->source));
        build_tables(doc.get(), &doc->root, "");
        *out = doc.release();
        return HYB_OK;
    } catch (const toml::parse_error &e) {
        pos p = from_source(e.source().begin);
        std::string_view d = e.description();
        return hyb_error_set(HYB_ERR_FORMAT, "%s:%d:%d: %.*s", source ? source : "<string>", p.line,
                             p.col, (int)d.size(), d.data());
    } catch (const std::bad_alloc &) {
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory while parsing TOML",
                             source ? source : "<string>");
    } catch (const std::exception &e) {
        return hyb_error_set(HYB_ERR, "%s: TOML: %s", source ? source : "<string>", e.what());
    } catch (...) {
        return hyb_error_set(HYB_ERR, "%s: TOML: unknown error", source ? source : "<string>");
    }
}

size_t edit_distance(const char *a, const char *b) {
    size_t na = std::strlen(a), nb = std::strlen(b);
    std::vector<size_t> prev(nb + 1), cur(nb + 1);
    for (size_t j = 0; j <= nb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
        }
        std::swap(prev, cur);
    }
    return prev[nb];
}

} // namespace

/* ---- documents ------------------------------------------------------------------------------*/

extern "C" int hyb_toml_open(const char *path, hyb_toml **out) {
    if (!out) return hyb_error_set(HYB_ERR_ARG, "hyb_toml_open: out is NULL");
    *out = nullptr;
    if (!path) return hyb_error_set(HYB_ERR_ARG, "hyb_toml_open: path is NULL");
    FILE *f = std::fopen(path, "rb");
    if (!f) return hyb_error_set(HYB_ERR_IO, "%s: cannot open: %s", path, std::strerror(errno));
    int rc = HYB_OK;
    try {
        std::string text;
        char buf[65536];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
            text.append(buf, n);
            if (text.size() > kMaxFileBytes) {
                rc = hyb_error_set(HYB_ERR_FORMAT, "%s: larger than %zu MiB, not a layer map", path,
                                   kMaxFileBytes >> 20);
                break;
            }
        }
        if (rc == HYB_OK && std::ferror(f))
            rc = hyb_error_set(HYB_ERR_IO, "%s: read error: %s", path, std::strerror(errno));
        std::fclose(f);
        f = nullptr;
        if (rc == HYB_OK) rc = parse_into(std::move(text), path, out);
    } catch (const std::bad_alloc &) {
        if (f) std::fclose(f);
        rc = hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory reading the file", path);
    } catch (...) {
        if (f) std::fclose(f);
        rc = hyb_error_set(HYB_ERR, "%s: unexpected error reading the file", path);
    }
    return rc;
}

extern "C" int hyb_toml_open_string(const char *text, const char *source_name, hyb_toml **out) {
    if (!out) return hyb_error_set(HYB_ERR_ARG, "hyb_toml_open_string: out is NULL");
    *out = nullptr;
    if (!text) return hyb_error_set(HYB_ERR_ARG, "hyb_toml_open_string: text is NULL");
    try {
        return parse_into(std::string(text), source_name, out);
    } catch (...) {
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory",
                             source_name ? source_name : "<string>");
    }
}

extern "C" hyb_toml *hyb_toml_parse_file(const char *path) {
    hyb_toml *doc = nullptr;
    hyb_toml_open(path, &doc);
    return doc;
}

extern "C" hyb_toml *hyb_toml_parse_string(const char *text, const char *source_name) {
    hyb_toml *doc = nullptr;
    hyb_toml_open_string(text, source_name, &doc);
    return doc;
}

extern "C" void hyb_toml_free(hyb_toml *doc) {
    delete doc;
}

extern "C" const hyb_cfg_table *hyb_toml_root(const hyb_toml *doc) {
    return doc && !doc->tables.empty() ? &doc->tables.front() : nullptr;
}

/* ---- navigation -----------------------------------------------------------------------------*/

extern "C" const hyb_cfg_table *hyb_cfg_subtable(const hyb_cfg_table *t, const char *key) {
    const toml::node *n = lookup(t, key);
    if (!n || !n->is_table()) return nullptr;
    auto it = t->doc->index.find(n->as_table());
    return it == t->doc->index.end() ? nullptr : it->second;
}

extern "C" int hyb_cfg_has(const hyb_cfg_table *t, const char *key) {
    return lookup(t, key) != nullptr;
}

extern "C" int hyb_cfg_keys(const hyb_cfg_table *t, const char ***keys) {
    if (!t) {
        if (keys) *keys = nullptr;
        return 0;
    }
    /* the C API's `const char ***` cannot carry the inner const; the strings must not be written */
    if (keys) *keys = const_cast<const char **>(t->key_ptrs.data());
    return (int)t->keys.size();
}

extern "C" const char *hyb_cfg_where(const hyb_cfg_table *t, const char *key, char *buf, size_t n) {
    if (!buf || n == 0) return buf;
    if (!t) {
        std::snprintf(buf, n, "(defaults)");
        return buf;
    }
    pos p;
    key_pos(t, key, &p);
    std::snprintf(buf, n, "%s:%d:%d", source_of(t), p.line, p.col);
    return buf;
}

/* ---- typed getters --------------------------------------------------------------------------*/

/* The conversions of the typed getters (scalar and array element): true after writing *o when
 * the node has the wanted type. */
static bool conv_int(const toml::node &n, int64_t *o) {
    auto v = n.as_integer();
    if (v) *o = v->get();
    return v != nullptr;
}
static bool conv_float(const toml::node &n, double *o) {
    if (auto v = n.as_floating_point()) {
        *o = v->get();
        return true;
    }
    if (auto v = n.as_integer()) { /* `norm_eps = 1` is a fine float */
        *o = (double)v->get();
        return true;
    }
    return false;
}
static bool conv_bool(const toml::node &n, int *o) {
    auto v = n.as_boolean();
    if (v) *o = v->get() ? 1 : 0;
    return v != nullptr;
}
static bool conv_string(const toml::node &n, const char **o) {
    auto v = n.as_string();
    if (v) *o = v->get().c_str();
    return v != nullptr;
}

/* The body every typed getter shares: a missing key gives def; a node that `conv` takes gives its
 * value; any other node gives def and a type error naming what was wanted. */
template <typename T>
static int get_typed(const hyb_cfg_table *t, const char *key, T def, T *out, const char *want,
                     bool (*conv)(const toml::node &, T *)) {
    *out = def;
    const toml::node *n = lookup(t, key);
    if (!n || conv(*n, out)) return HYB_OK;
    return type_error(t, key, *n, want);
}

extern "C" int hyb_cfg_int(const hyb_cfg_table *t, const char *key, int64_t def, int64_t *out) {
    return get_typed(t, key, def, out, "an integer", conv_int);
}

extern "C" int hyb_cfg_float(const hyb_cfg_table *t, const char *key, double def, double *out) {
    return get_typed(t, key, def, out, "a number", conv_float);
}

extern "C" int hyb_cfg_bool(const hyb_cfg_table *t, const char *key, int def, int *out) {
    return get_typed(t, key, def, out, "a boolean (true or false)", conv_bool);
}

extern "C" int hyb_cfg_string(const hyb_cfg_table *t, const char *key, const char *def,
                              const char **out) {
    return get_typed(t, key, def, out, "a string", conv_string);
}

/* ---- arrays ---------------------------------------------------------------------------------*/

/* A missing key is an empty array (count 0), like the scalar getters' defaults. */
extern "C" int hyb_cfg_array_len(const hyb_cfg_table *t, const char *key) {
    const toml::node *n = lookup(t, key);
    if (!n) return 0;
    if (auto a = n->as_array()) return (int)std::min<size_t>(a->size(), (size_t)INT32_MAX);
    type_error(t, key, *n, "an array");
    return -1;
}

static const toml::node *array_elem(const hyb_cfg_table *t, const char *key, int i, int *rc) {
    const toml::node *n = lookup(t, key);
    if (!n) {
        pos p;
        if (t) p = table_pos(t);
        *rc = set_at(HYB_ERR_FORMAT, t, p, "key '%s' is missing (an array is required)",
                     full_key(t, key).c_str());
        return nullptr;
    }
    const toml::array *a = n->as_array();
    if (!a) {
        *rc = type_error(t, key, *n, "an array");
        return nullptr;
    }
    if (i < 0 || (size_t)i >= a->size()) {
        pos p;
        value_pos(t, key, &p);
        *rc = set_at(HYB_ERR_ARG, t, p, "key '%s': index %d out of range (%zu elements)",
                     full_key(t, key).c_str(), i, a->size());
        return nullptr;
    }
    return a->get((size_t)i);
}

static int elem_type_error(const hyb_cfg_table *t, const char *key, int i, const toml::node &e,
                           const char *want) {
    pos p = from_source(e.source().begin);
    if (!e.source().begin) value_pos(t, key, &p);
    return set_at(HYB_ERR_FORMAT, t, p, "key '%s[%d]' must be %s, got %s", full_key(t, key).c_str(),
                  i, want, describe_value(e).c_str());
}

/* The body of the array element getters: *out = zero unless element i converts. */
template <typename T>
static int get_elem(const hyb_cfg_table *t, const char *key, int i, T zero, T *out,
                    const char *want, bool (*conv)(const toml::node &, T *)) {
    int rc = HYB_OK;
    *out = zero;
    const toml::node *e = array_elem(t, key, i, &rc);
    if (!e) return rc;
    if (conv(*e, out)) return HYB_OK;
    return elem_type_error(t, key, i, *e, want);
}

extern "C" int hyb_cfg_array_string(const hyb_cfg_table *t, const char *key, int i,
                                    const char **out) {
    return get_elem<const char *>(t, key, i, nullptr, out, "a string", conv_string);
}

extern "C" int hyb_cfg_array_int(const hyb_cfg_table *t, const char *key, int i, int64_t *out) {
    return get_elem<int64_t>(t, key, i, 0, out, "an integer", conv_int);
}

/* ---- validation and errors ------------------------------------------------------------------*/

extern "C" int hyb_cfg_check_keys(const hyb_cfg_table *t, const char *const *allowed) {
    if (!t) return HYB_OK;
    for (const std::string &k : t->keys) {
        bool ok = false;
        for (const char *const *a = allowed; a && *a; a++)
            if (k == *a) {
                ok = true;
                break;
            }
        if (ok) continue;
        std::string list, hint;
        size_t best = (size_t)-1;
        for (const char *const *a = allowed; a && *a; a++) {
            if (!list.empty()) list += ", ";
            list += *a;
            size_t d = edit_distance(k.c_str(), *a);
            if (d < best) {
                best = d;
                hint = *a;
            }
        }
        /* suggest only near misses: at most 2 edits, and fewer than half the key's length */
        std::string suggestion;
        if (!hint.empty() && best <= 2 && best * 2 < std::max<size_t>(k.size(), 2))
            suggestion = " (did you mean '" + hint + "'?)";
        std::string where =
            t->path.empty() ? std::string("at the top level") : "in [" + t->path + "]";
        pos p;
        key_pos(t, k.c_str(), &p);
        return set_at(HYB_ERR_FORMAT, t, p, "unknown key '%s' %s%s; allowed: %s", k.c_str(),
                      where.c_str(), suggestion.c_str(), list.empty() ? "(none)" : list.c_str());
    }
    return HYB_OK;
}

extern "C" int hyb_cfg_verror(const hyb_cfg_table *t, const char *key, const char *fmt,
                              va_list ap) {
    pos p;
    if (t) key_pos(t, key, &p);
    return vset_at(HYB_ERR_FORMAT, t, p, fmt, ap);
}

extern "C" int hyb_cfg_error(const hyb_cfg_table *t, const char *key, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = hyb_cfg_verror(t, key, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- private helpers (toml_internal.h) ------------------------------------------------------*/

extern "C" const char *hyb_cfg_source(const hyb_cfg_table *t) {
    return source_of(t);
}

extern "C" const char *hyb_cfg_path(const hyb_cfg_table *t) {
    return t ? t->path.c_str() : "";
}

extern "C" const char *hyb_cfg_type(const hyb_cfg_table *t, const char *key) {
    const toml::node *n = lookup(t, key);
    return n ? type_name(*n) : nullptr;
}

extern "C" int hyb_cfg_pos(const hyb_cfg_table *t, const char *key, int of_value, int *line,
                           int *col) {
    pos p;
    bool found = of_value ? value_pos(t, key, &p) : key_pos(t, key, &p);
    *line = p.line;
    *col = p.col;
    return found ? 0 : -1;
}

extern "C" int hyb_cfg_array_pos(const hyb_cfg_table *t, const char *key, int i, int *line,
                                 int *col) {
    pos p;
    bool found = key_pos(t, key, &p);
    *line = p.line;
    *col = p.col;
    if (!found) return -1;
    const toml::node *n = lookup(t, key);
    const toml::array *a = n ? n->as_array() : nullptr;
    if (!a || i < 0 || (size_t)i >= a->size()) return -1;
    const toml::node *e = a->get((size_t)i);
    if (e && e->source().begin) {
        p = from_source(e->source().begin);
        *line = p.line;
        *col = p.col;
    }
    return 0;
}

extern "C" int hyb_cfg_string_pos(const hyb_cfg_table *t, const char *key, size_t offset, int *line,
                                  int *col) {
    pos p;
    value_pos(t, key, &p);
    *line = p.line;
    *col = p.col;
    const toml::node *n = lookup(t, key);
    const toml::value<std::string> *v = n ? n->as_string() : nullptr;
    if (!v) return -1;
    const toml::source_region &r = n->source();
    if (!r.begin || !r.end) return 1;
    const hyb_toml *doc = t->doc;
    size_t b = offset_of(doc, (int)r.begin.line, (int)r.begin.column);
    size_t e = offset_of(doc, (int)r.end.line, (int)r.end.column);
    if (b == std::string::npos || e == std::string::npos || e <= b) return 1;
    std::string_view raw(doc->text.data() + b, e - b);
    size_t delim =
        (raw.size() >= 6 && (raw.substr(0, 3) == "\"\"\"" || raw.substr(0, 3) == "'''")) ? 3 : 1;
    if (raw.size() < 2 * delim) return 1;
    pos at{(int)r.begin.line, (int)r.begin.column + (int)delim};
    size_t cb = b + delim, ce = e - delim; /* content bytes [cb, ce) */
    if (delim == 3) {                      /* a newline right after """ is trimmed */
        if (cb < ce && doc->text[cb] == '\n') {
            cb++;
            at = pos{at.line + 1, 1};
        } else if (cb + 1 < ce && doc->text[cb] == '\r' && doc->text[cb + 1] == '\n') {
            cb += 2;
            at = pos{at.line + 1, 1};
        }
    }
    const std::string &val = v->get();
    if (std::string_view(doc->text.data() + cb, ce - cb) != std::string_view(val)) return 1;
    if (offset > val.size()) return 1;
    for (size_t i = cb; i < cb + offset; i++) {
        unsigned char c = (unsigned char)doc->text[i];
        if (c == '\n') {
            at.line++;
            at.col = 1;
        } else if ((c & 0xC0) != 0x80) {
            at.col++;
        }
    }
    *line = at.line;
    *col = at.col;
    return 0;
}

extern "C" int hyb_cfg_error_at(const hyb_cfg_table *t, int line, int col, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = vset_at(HYB_ERR_FORMAT, t, pos{line, col}, fmt, ap);
    va_end(ap);
    return rc;
}
