/* runtime/lua_util.c: argument checking shared by the Lua bindings. Every check raises a Lua error
 * of the form "<function>: <argument> must be <what>, got <value>" (luaL_error adds the caller's
 * script:line in front). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "hyb/common.h"
#include "hyb/backend.h"
#include "hyb/hf.h"
#include "hyb/mixer.h"
#include "lhyb.h"

const char *lhyb_describe(lua_State *L, int idx, char *buf, size_t n) {
    switch (lua_type(L, idx)) {
    case LUA_TNONE:
        snprintf(buf, n, "nil");
        break; /* "no value" confuses more than it helps */
    case LUA_TNIL:
        snprintf(buf, n, "nil");
        break;
    case LUA_TBOOLEAN:
        snprintf(buf, n, "%s", lua_toboolean(L, idx) ? "true" : "false");
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            snprintf(buf, n, "%lld", (long long)lua_tointeger(L, idx));
        else
            snprintf(buf, n, "%.17g", (double)lua_tonumber(L, idx));
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        snprintf(buf, n, "string \"%.*s%s\"", (int)(len > 40 ? 40 : len), s, len > 40 ? "..." : "");
        break;
    }
    case LUA_TUSERDATA: {
        const char *tn = NULL;
        if (lua_getmetatable(L, idx)) {
            lua_getfield(L, -1, "__name");
            tn = lua_tostring(L, -1);
            snprintf(buf, n, "%s", tn ? tn : "userdata");
            lua_pop(L, 2);
        } else {
            snprintf(buf, n, "userdata");
        }
        break;
    }
    default:
        snprintf(buf, n, "%s", luaL_typename(L, idx));
        break;
    }
    return buf;
}

int lhyb_error(lua_State *L, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    luaL_where(L, 1);
    lua_pushstring(L, msg);
    lua_concat(L, 2);
    return lua_error(L);
}

int lhyb_raise_hyb(lua_State *L, const char *fname) {
    const char *msg = hyb_error();
    return lhyb_error(L, "%s: %s", fname, (msg && *msg) ? msg : "failed (no message)");
}

/* Integer value of the number at idx, or 0 with *ok = 0 (not a number, or not integral). */
static lua_Integer to_integer(lua_State *L, int idx, int *ok) {
    int isnum = 0;
    lua_Integer v = 0;
    *ok = 0;
    if (lua_type(L, idx) != LUA_TNUMBER) return 0;
    v = lua_tointegerx(L, idx, &isnum);
    *ok = isnum;
    return v;
}

lua_Integer lhyb_check_int(lua_State *L, int idx, const char *fname, const char *argname,
                           lua_Integer lo, lua_Integer hi) {
    char buf[96];
    int ok;
    lua_Integer v = to_integer(L, idx, &ok);
    if (!ok || v < lo || v > hi) {
        if (hi == LUA_MAXINTEGER)
            lhyb_error(L, "%s: %s must be an integer >= %lld, got %s", fname, argname,
                       (long long)lo, lhyb_describe(L, idx, buf, sizeof buf));
        else
            lhyb_error(L, "%s: %s must be an integer in [%lld, %lld], got %s", fname, argname,
                       (long long)lo, (long long)hi, lhyb_describe(L, idx, buf, sizeof buf));
    }
    return v;
}

lua_Integer lhyb_opt_int(lua_State *L, int idx, const char *fname, const char *argname,
                         lua_Integer lo, lua_Integer hi, lua_Integer def) {
    if (lua_isnoneornil(L, idx)) return def;
    return lhyb_check_int(L, idx, fname, argname, lo, hi);
}

double lhyb_check_number(lua_State *L, int idx, const char *fname, const char *argname) {
    char buf[96];
    if (lua_type(L, idx) != LUA_TNUMBER)
        lhyb_error(L, "%s: %s must be a number, got %s", fname, argname,
                   lhyb_describe(L, idx, buf, sizeof buf));
    double v = lua_tonumber(L, idx);
    if (!isfinite(v))
        lhyb_error(L, "%s: %s must be a finite number, got %s", fname, argname,
                   lhyb_describe(L, idx, buf, sizeof buf));
    return v;
}

int lhyb_check_opts(lua_State *L, int idx, const char *fname, const char *const *allowed) {
    char buf[96];
    if (lua_isnoneornil(L, idx)) return 0;
    if (!lua_istable(L, idx))
        return lhyb_error(L, "%s: options must be a table, got %s", fname,
                          lhyb_describe(L, idx, buf, sizeof buf));
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1); /* value */
        if (lua_type(L, -1) != LUA_TSTRING)
            return lhyb_error(L, "%s: option keys must be strings, got %s", fname,
                              lhyb_describe(L, -1, buf, sizeof buf));
        const char *k = lua_tostring(L, -1);
        int found = 0;
        for (int i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], k) == 0) found = 1;
        if (!found) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (int i = 0; allowed[i]; i++) {
                if (i) luaL_addstring(&b, ", ");
                luaL_addstring(&b, allowed[i]);
            }
            luaL_pushresult(&b);
            return lhyb_error(L, "%s: unknown option '%s' (known: %s)", fname, k,
                              lua_tostring(L, -1));
        }
    }
    return 1;
}

const char *lhyb_check_string(lua_State *L, int idx, const char *fname, const char *argname) {
    char buf[96];
    if (lua_type(L, idx) != LUA_TSTRING)
        lhyb_error(L, "%s: %s must be a string, got %s", fname, argname,
                   lhyb_describe(L, idx, buf, sizeof buf));
    return lua_tostring(L, idx);
}

void *lhyb_check_udata(lua_State *L, int idx, const char *mt, const char *fname, const char *what) {
    char buf[96];
    void *p = luaL_testudata(L, idx, mt);
    if (!p)
        lhyb_error(L, "%s: expected %s, got %s", fname, what,
                   lhyb_describe(L, idx, buf, sizeof buf));
    return p;
}

/* Push field `key` of the options table at idx and return 1; when there is no table or the field
 * is nil, push nothing and return 0 (the caller returns its default). */
static int push_field(lua_State *L, int idx, const char *key) {
    if (lua_istable(L, idx))
        lua_getfield(L, idx, key);
    else
        lua_pushnil(L);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
    return 0;
}

double lhyb_opt_field_number(lua_State *L, int idx, const char *fname, const char *key,
                             double def) {
    char buf[96], name[80];
    idx = lua_absindex(L, idx);
    if (!push_field(L, idx, key)) return def;
    snprintf(name, sizeof name, "option '%s'", key);
    if (lua_type(L, -1) != LUA_TNUMBER || !isfinite(lua_tonumber(L, -1)))
        lhyb_error(L, "%s: %s must be a finite number, got %s", fname, name,
                   lhyb_describe(L, -1, buf, sizeof buf));
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

lua_Integer lhyb_opt_field_int(lua_State *L, int idx, const char *fname, const char *key,
                               lua_Integer lo, lua_Integer hi, lua_Integer def) {
    char name[80];
    idx = lua_absindex(L, idx);
    if (!push_field(L, idx, key)) return def;
    snprintf(name, sizeof name, "option '%s'", key);
    lua_Integer v = lhyb_check_int(L, -1, fname, name, lo, hi);
    lua_pop(L, 1);
    return v;
}

int lhyb_opt_field_bool(lua_State *L, int idx, const char *fname, const char *key, int def) {
    char buf[96];
    idx = lua_absindex(L, idx);
    if (!push_field(L, idx, key)) return def;
    if (!lua_isboolean(L, -1))
        lhyb_error(L, "%s: option '%s' must be a boolean, got %s", fname, key,
                   lhyb_describe(L, -1, buf, sizeof buf));
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

const char *lhyb_opt_field_string(lua_State *L, int idx, const char *fname, const char *key,
                                  const char *def) {
    char name[80];
    idx = lua_absindex(L, idx);
    if (!push_field(L, idx, key)) return def;
    snprintf(name, sizeof name, "option '%s'", key);
    /* The string stays alive: it is referenced by the options table, which is an argument. */
    const char *s = lhyb_check_string(L, -1, fname, name);
    lua_pop(L, 1);
    return s;
}

/* ---- id / float arrays ----------------------------------------------------------------------- */

/* The common part of lhyb_check_ids/lhyb_check_floats: the argument at *idx (made absolute) is a
 * live tensor or a table (`elems` names what the table holds in the message) of exactly n entries;
 * a tensor must be a contiguous CPU one (*t, NULL for a table). Returns a new userdata (pushed) of
 * n (at least 1) elements of `elsize` bytes for the caller to fill. */
static void *check_host_array(lua_State *L, int *idxp, const char *fname, const char *argname,
                              int64_t n, const char *elems, size_t elsize, hyb_tensor **t) {
    char buf[96];
    const int idx = *idxp = lua_absindex(L, *idxp);
    lhyb_tensor *lt = lhyb_test_tensor(L, idx);
    if (lt) lt = lhyb_check_tensor(L, idx, fname, argname); /* live? */
    if (!lt && !lua_istable(L, idx))
        lhyb_error(L, "%s: %s must be a table of %s or a hyb.tensor, got %s", fname, argname, elems,
                   lhyb_describe(L, idx, buf, sizeof buf));
    int64_t have = lt ? hyb_tensor_numel(lt->t) : (int64_t)lua_rawlen(L, idx);
    if (have != n)
        lhyb_error(L, "%s: %s must hold %lld entries (B*T), got %lld", fname, argname, (long long)n,
                   (long long)have);
    void *out = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * elsize, 0);
    *t = lt ? lt->t : NULL;
    if (*t && ((*t)->device != HYB_DEV_CPU || !hyb_tensor_is_contiguous(*t)))
        lhyb_error(L, "%s: %s must be a contiguous CPU tensor", fname, argname);
    return out;
}

int32_t *lhyb_check_ids(lua_State *L, int idx, const char *fname, const char *argname, int64_t n,
                        int64_t lo, int64_t hi) {
    char buf[96];
    hyb_tensor *t;
    int32_t *out = check_host_array(L, &idx, fname, argname, n, "integers", sizeof(int32_t), &t);
    if (t) {
        if (t->dtype == HYB_I32) {
            const int32_t *p = (const int32_t *)t->data;
            for (int64_t i = 0; i < n; i++) {
                if (p[i] < lo || p[i] > hi)
                    lhyb_error(L, "%s: %s entry %lld is %d, outside [%lld, %lld]", fname, argname,
                               (long long)(i + 1), (int)p[i], (long long)lo, (long long)hi);
                out[i] = p[i];
            }
        } else if (t->dtype == HYB_F32) {
            const float *p = (const float *)t->data;
            for (int64_t i = 0; i < n; i++) {
                float v = p[i];
                if (!(v == floorf(v)) || v < (float)lo || v > (float)hi)
                    lhyb_error(L, "%s: %s entry %lld is %g, not an integer in [%lld, %lld]", fname,
                               argname, (long long)(i + 1), (double)v, (long long)lo,
                               (long long)hi);
                out[i] = (int32_t)v;
            }
        } else {
            lhyb_error(L, "%s: %s must be an i32 or f32 tensor, got %s", fname, argname,
                       hyb_dtype_name(t->dtype));
        }
        return out;
    }
    for (int64_t i = 0; i < n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)(i + 1));
        int isnum = 0;
        lua_Integer v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &isnum) : 0;
        if (!isnum || v < lo || v > hi)
            lhyb_error(L, "%s: %s entry %lld must be an integer in [%lld, %lld], got %s", fname,
                       argname, (long long)(i + 1), (long long)lo, (long long)hi,
                       lhyb_describe(L, -1, buf, sizeof buf));
        out[i] = (int32_t)v;
        lua_pop(L, 1);
    }
    return out;
}

float *lhyb_check_floats(lua_State *L, int idx, const char *fname, const char *argname, int64_t n) {
    char buf[96];
    hyb_tensor *t;
    float *out = check_host_array(L, &idx, fname, argname, n, "numbers", sizeof(float), &t);
    if (t) {
        if (t->dtype == HYB_F32) {
            memcpy(out, t->data, (size_t)n * sizeof(float));
        } else if (t->dtype == HYB_I32) {
            for (int64_t i = 0; i < n; i++)
                out[i] = (float)((const int32_t *)t->data)[i];
        } else {
            lhyb_error(L, "%s: %s must be an f32 or i32 tensor, got %s", fname, argname,
                       hyb_dtype_name(t->dtype));
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            lua_rawgeti(L, idx, (lua_Integer)(i + 1));
            if (lua_type(L, -1) != LUA_TNUMBER)
                lhyb_error(L, "%s: %s entry %lld must be a number, got %s", fname, argname,
                           (long long)(i + 1), lhyb_describe(L, -1, buf, sizeof buf));
            out[i] = (float)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
    }
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(out[i]) || out[i] < 0)
            lhyb_error(L, "%s: %s entry %lld must be a finite weight >= 0, got %g", fname, argname,
                       (long long)(i + 1), (double)out[i]);
    return out;
}

int lhyb_opt_kv_cache(lua_State *L, int idx, const char *fname) {
    const char *v = lhyb_opt_field_string(L, idx, fname, "kv_cache", NULL);
    if (!v) return HYB_KV_DEFAULT;
    char what[96];
    snprintf(what, sizeof what, "%s: kv_cache", fname);
    int kv;
    if (hyb_kv_dtype_parse(v, what, &kv) != HYB_OK) return lhyb_error(L, "%s", hyb_error());
    return kv;
}

const struct hyb_backend *lhyb_opt_device(lua_State *L, int idx, const char *fname) {
    const char *name = lhyb_opt_field_string(L, idx, fname, "device", NULL);
    if (!name) return NULL;
    const hyb_backend *be = NULL;
    if (hyb_backend_open(name, &be) != HYB_OK) lhyb_raise_hyb(L, fname);
    return be;
}

int lhyb_opt_quant(lua_State *L, int idx, const char *fname, int inference) {
    const char *q = lhyb_opt_field_string(L, idx, fname, "quant", NULL);
    if (q && !strcmp(q, "auto")) q = NULL, inference = 1; /* the inference default */
    if (q) {
        if (strcmp(q, "off") && strcmp(q, "precise") && strcmp(q, "fast") && strcmp(q, "emul"))
            return luaL_error(L,
                              "%s: quant must be \"off\", \"precise\", \"fast\" or \"auto\", "
                              "got \"%s\"",
                              fname, q);
        if (hyb_quant_mode_set(q) != HYB_OK) lhyb_raise_hyb(L, fname);
        return strcmp(q, "off") != 0;
    }
    if (!inference) return 0;
    if (!hyb_quant_mode_chosen() && hyb_quant_mode_set(HYB_QUANT_DEFAULT_MODE) != HYB_OK)
        lhyb_raise_hyb(L, fname);
    return strcmp(hyb_quant_mode_current(), "off") != 0;
}

void lhyb_set_int(lua_State *L, const char *key, lua_Integer v) {
    lua_pushinteger(L, v);
    lua_setfield(L, -2, key);
}

void lhyb_set_str(lua_State *L, const char *key, const char *s) {
    lua_pushstring(L, s);
    lua_setfield(L, -2, key);
}

void *lhyb_new_object(lua_State *L, size_t size, int nuv, const char *mt) {
    void *p = lua_newuserdatauv(L, size, nuv);
    memset(p, 0, size);
    luaL_setmetatable(L, mt);
    return p;
}

void lhyb_register_class(lua_State *L, const char *mt, const luaL_Reg *methods, lua_CFunction gc,
                         lua_CFunction close, lua_CFunction tostring) {
    if (luaL_newmetatable(L, mt)) {
        lua_newtable(L); /* not luaL_newlib: it sizes the table by sizeof, wrong for a pointer */
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        const struct {
            const char *k;
            lua_CFunction f;
        } meta[] = {{"__gc", gc}, {"__close", close}, {"__tostring", tostring}};
        for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++)
            if (meta[i].f) {
                lua_pushcfunction(L, meta[i].f);
                lua_setfield(L, -2, meta[i].k);
            }
    }
    lua_pop(L, 1);
}
