/* runtime/lua_tensor.c: hyb.tensor userdata and its constructors.
 *
 *   local t = hyb.tensor({2, 3}, {1, 2, 3, 4, 5, 6})      -- f32 [2, 3] (flat or nested values)
 *   local z = hyb.zeros({4}, "i32")
 *   local r = hyb.randn({2, 2}, 42)                       -- N(0, 1), deterministic in the seed
 *   t:get(2, 3) --> 6      (indices are 1-based, like Lua)
 *   t:set(2, 3, 7.5); t:shape() --> {2, 3}; t:numel() --> 6; t:totable() --> {{1,2,3},{4,5,7.5}}
 *   print(t)              --> hyb.tensor([2, 3] f32)
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "hyb/common.h"
#include "lhyb.h"

/* ---- boxes ----------------------------------------------------------------------------------- */

static int tensor_gc(lua_State *L);

static lhyb_tensor *new_box(lua_State *L) {
    return (lhyb_tensor *)lhyb_new_object(L, sizeof(lhyb_tensor), 3, LHYB_TENSOR_MT);
}

/* Bytes of tensor data owned by live Lua boxes (hyb.live_tensor_bytes: tests of memory use). */
static int64_t g_live_bytes;

static int64_t owned_data_bytes(const hyb_tensor *t) {
    return t->owner == HYB_OWN_HEAP || t->owner == HYB_OWN_PARAM ? (int64_t)hyb_tensor_nbytes(t)
                                                                 : 0;
}

lhyb_tensor *lhyb_push_owned(lua_State *L, hyb_tensor *t, const char *fname) {
    if (!t) lhyb_raise_hyb(L, fname);
    lhyb_tensor *b = new_box(L);
    b->t = t;
    b->owned = 1;
    g_live_bytes += owned_data_bytes(t);
    return b;
}

static int l_live_tensor_bytes(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)g_live_bytes);
    return 1;
}

lhyb_tensor *lhyb_push_borrowed(lua_State *L, hyb_tensor *t, int owner_idx, const uint64_t *genp,
                                const char *what) {
    owner_idx = lua_absindex(L, owner_idx);
    lhyb_tensor *b = new_box(L);
    b->t = t;
    b->owned = 0;
    b->genp = genp;
    b->gen = genp ? *genp : 0;
    b->what = what;
    lua_pushvalue(L, owner_idx);
    lua_setiuservalue(L, -2, 1); /* keep the owner alive */
    return b;
}

lhyb_tensor *lhyb_test_tensor(lua_State *L, int idx) {
    return (lhyb_tensor *)luaL_testudata(L, idx, LHYB_TENSOR_MT);
}

lhyb_tensor *lhyb_check_tensor(lua_State *L, int idx, const char *fname, const char *argname) {
    char buf[96];
    lhyb_tensor *b = lhyb_test_tensor(L, idx);
    if (!b)
        lhyb_error(L, "%s: %s must be a hyb.tensor, got %s", fname, argname,
                   lhyb_describe(L, idx, buf, sizeof buf));
    if (!b->t) lhyb_error(L, "%s: %s is a closed hyb.tensor", fname, argname);
    if (b->genp && *b->genp != b->gen) {
        if (b->what && strcmp(b->what, "graph") == 0)
            lhyb_error(L,
                       "%s: %s is stale: it belonged to a model graph that was reset by a later "
                       "forward (use t:clone() to keep a tensor across forwards)",
                       fname, argname);
        lhyb_error(L,
                   "%s: %s is stale: its model's parameters were replaced or the model was closed",
                   fname, argname);
    }
    return b;
}

/* ---- shapes and values ----------------------------------------------------------------------- */

/* Read a shape table at idx: 1..HYB_MAX_DIMS positive integers. Returns ndim. */
static int check_shape(lua_State *L, int idx, const char *fname, int64_t *shape) {
    char buf[96];
    if (!lua_istable(L, idx))
        lhyb_error(L, "%s: shape must be a table of positive integers, got %s", fname,
                   lhyb_describe(L, idx, buf, sizeof buf));
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    if (n < 1 || n > HYB_MAX_DIMS)
        lhyb_error(L, "%s: shape must have 1 to %d entries, got %d", fname, HYB_MAX_DIMS, (int)n);
    int64_t numel = 1;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        int isnum = 0;
        lua_Integer v = lua_type(L, -1) == LUA_TNUMBER ? lua_tointegerx(L, -1, &isnum) : 0;
        if (!isnum || v < 1)
            lhyb_error(L, "%s: shape entry %d must be a positive integer, got %s", fname, (int)i,
                       lhyb_describe(L, -1, buf, sizeof buf));
        if (v > ((int64_t)1 << 40) || numel > ((int64_t)1 << 40) / v)
            lhyb_error(L, "%s: shape is too large (entry %d = %lld)", fname, (int)i, (long long)v);
        numel *= v;
        shape[i - 1] = v;
        lua_pop(L, 1);
    }
    return (int)n;
}

static hyb_dtype check_dtype(lua_State *L, int idx, const char *fname) {
    char buf[96];
    if (lua_isnoneornil(L, idx)) return HYB_F32;
    if (lua_type(L, idx) != LUA_TSTRING)
        lhyb_error(L, "%s: dtype must be a string (\"f32\", \"i32\", \"f16\", \"bf16\"), got %s",
                   fname, lhyb_describe(L, idx, buf, sizeof buf));
    const char *s = lua_tostring(L, idx);
    hyb_dtype d;
    if (hyb_dtype_from_name(s, &d) != HYB_OK ||
        (d != HYB_F32 && d != HYB_I32 && d != HYB_F16 && d != HYB_BF16))
        lhyb_error(L, "%s: dtype must be one of \"f32\", \"i32\", \"f16\", \"bf16\", got \"%s\"",
                   fname, s);
    return d;
}

static int elem_readable(hyb_dtype d) {
    return d == HYB_F32 || d == HYB_I32 || d == HYB_F16 || d == HYB_BF16;
}

/* Element at linear (element) offset off. */
static void push_elem(lua_State *L, const hyb_tensor *t, int64_t off) {
    switch (t->dtype) {
    case HYB_F32:
        lua_pushnumber(L, ((const float *)t->data)[off]);
        break;
    case HYB_I32:
        lua_pushinteger(L, ((const int32_t *)t->data)[off]);
        break;
    case HYB_F16:
        lua_pushnumber(L, hyb_f16_to_f32(((const uint16_t *)t->data)[off]));
        break;
    case HYB_BF16:
        lua_pushnumber(L, hyb_bf16_to_f32(((const uint16_t *)t->data)[off]));
        break;
    default:
        lua_pushnil(L);
        break;
    }
}

/* Store the number at idx into t at offset off; errors name fname and `what`. */
static void store_elem(lua_State *L, hyb_tensor *t, int64_t off, int idx, const char *fname,
                       const char *what) {
    char buf[96];
    if (lua_type(L, idx) != LUA_TNUMBER)
        lhyb_error(L, "%s: %s must be a number, got %s", fname, what,
                   lhyb_describe(L, idx, buf, sizeof buf));
    switch (t->dtype) {
    case HYB_F32:
        ((float *)t->data)[off] = (float)lua_tonumber(L, idx);
        break;
    case HYB_F16:
        ((uint16_t *)t->data)[off] = hyb_f32_to_f16((float)lua_tonumber(L, idx));
        break;
    case HYB_BF16:
        ((uint16_t *)t->data)[off] = hyb_f32_to_bf16((float)lua_tonumber(L, idx));
        break;
    case HYB_I32: {
        int isnum = 0;
        lua_Integer v = lua_tointegerx(L, idx, &isnum);
        if (!isnum || v < INT32_MIN || v > INT32_MAX)
            lhyb_error(L, "%s: %s must be a 32-bit integer for an i32 tensor, got %s", fname, what,
                       lhyb_describe(L, idx, buf, sizeof buf));
        ((int32_t *)t->data)[off] = (int32_t)v;
        break;
    }
    default:
        lhyb_error(L, "%s: cannot write elements of a %s tensor", fname, hyb_dtype_name(t->dtype));
    }
}

/* Fill t (contiguous) from a flat or nested table at idx. */
static void fill_nested(lua_State *L, hyb_tensor *t, int idx, int dim, int64_t *off,
                        const char *fname) {
    char what[64];
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    if (n != t->shape[dim])
        lhyb_error(L, "%s: values at depth %d must have %lld entries (shape[%d]), got %lld", fname,
                   dim + 1, (long long)t->shape[dim], dim + 1, (long long)n);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        if (dim + 1 < t->ndim) {
            if (!lua_istable(L, -1))
                lhyb_error(L, "%s: values at depth %d entry %d must be a table (shape has %d dims)",
                           fname, dim + 1, (int)i, t->ndim);
            fill_nested(L, t, lua_gettop(L), dim + 1, off, fname);
        } else {
            snprintf(what, sizeof what, "value %lld", (long long)(*off + 1));
            store_elem(L, t, *off, -1, fname, what);
            (*off)++;
        }
        lua_pop(L, 1);
    }
}

static void fill_values(lua_State *L, hyb_tensor *t, int idx, const char *fname) {
    char buf[96], what[64];
    if (!lua_istable(L, idx))
        lhyb_error(L, "%s: values must be a table of numbers, got %s", fname,
                   lhyb_describe(L, idx, buf, sizeof buf));
    int64_t numel = hyb_tensor_numel(t);
    lua_rawgeti(L, idx, 1);
    int nested = lua_istable(L, -1) && t->ndim > 1;
    lua_pop(L, 1);
    if (nested) {
        int64_t off = 0;
        fill_nested(L, t, idx, 0, &off, fname);
        return;
    }
    int64_t n = (int64_t)lua_rawlen(L, idx);
    if (n != numel)
        lhyb_error(L, "%s: values must have %lld entries (the shape's numel), got %lld", fname,
                   (long long)numel, (long long)n);
    for (int64_t i = 0; i < numel; i++) {
        lua_rawgeti(L, idx, (lua_Integer)(i + 1));
        snprintf(what, sizeof what, "value %lld", (long long)(i + 1));
        store_elem(L, t, i, -1, fname, what);
        lua_pop(L, 1);
    }
}

/* ---- constructors ---------------------------------------------------------------------------- */

/* hyb.tensor(shape[, values[, dtype]]) */
static int l_tensor(lua_State *L) {
    int64_t shape[HYB_MAX_DIMS];
    lua_settop(L, 3);
    int nd = check_shape(L, 1, "hyb.tensor", shape);
    hyb_dtype d = check_dtype(L, 3, "hyb.tensor");
    lhyb_tensor *b = lhyb_push_owned(L, hyb_tensor_new(d, nd, shape), "hyb.tensor");
    if (!lua_isnoneornil(L, 2)) fill_values(L, b->t, 2, "hyb.tensor");
    return 1;
}

/* hyb.zeros(shape[, dtype]) */
static int l_zeros(lua_State *L) {
    int64_t shape[HYB_MAX_DIMS];
    lua_settop(L, 2);
    int nd = check_shape(L, 1, "hyb.zeros", shape);
    hyb_dtype d = check_dtype(L, 2, "hyb.zeros");
    lhyb_push_owned(L, hyb_tensor_new(d, nd, shape), "hyb.zeros");
    return 1;
}

/* hyb.randn(shape, seed[, std]) -> f32 N(0, std^2) */
static int l_randn(lua_State *L) {
    int64_t shape[HYB_MAX_DIMS];
    lua_settop(L, 3);
    int nd = check_shape(L, 1, "hyb.randn", shape);
    lua_Integer seed = lhyb_check_int(L, 2, "hyb.randn", "seed", 0, LUA_MAXINTEGER);
    double std = lua_isnoneornil(L, 3) ? 1.0 : lhyb_check_number(L, 3, "hyb.randn", "std");
    if (std < 0) lhyb_error(L, "hyb.randn: std must be >= 0, got %g", std);
    lhyb_tensor *b = lhyb_push_owned(L, hyb_tensor_new(HYB_F32, nd, shape), "hyb.randn");
    hyb_rng r;
    hyb_rng_seed(&r, (uint64_t)seed);
    hyb_rng_fill_normal(&r, hyb_tensor_f32(b->t), hyb_tensor_numel(b->t), 0.0f, (float)std);
    return 1;
}

/* ---- methods --------------------------------------------------------------------------------- */

#define SELF(fname) lhyb_check_tensor(L, 1, fname, "self")

static int t_shape(lua_State *L) {
    hyb_tensor *t = SELF("tensor:shape")->t;
    lua_createtable(L, t->ndim, 0);
    for (int i = 0; i < t->ndim; i++) {
        lua_pushinteger(L, t->shape[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int t_numel(lua_State *L) {
    lua_pushinteger(L, hyb_tensor_numel(SELF("tensor:numel")->t));
    return 1;
}

static int t_ndim(lua_State *L) {
    lua_pushinteger(L, SELF("tensor:ndim")->t->ndim);
    return 1;
}

static int t_dtype(lua_State *L) {
    lua_pushstring(L, hyb_dtype_name(SELF("tensor:dtype")->t->dtype));
    return 1;
}

static void check_readable(lua_State *L, const hyb_tensor *t, const char *fname) {
    if (t->device != HYB_DEV_CPU)
        lhyb_error(L, "%s: the tensor is on a GPU; elements can only be read on the CPU", fname);
    if (!elem_readable(t->dtype))
        lhyb_error(L, "%s: elements of a %s tensor cannot be read one by one (storage-only dtype)",
                   fname, hyb_dtype_name(t->dtype));
}

/* Element offset from ndim 1-based indices starting at stack index first. */
static int64_t check_index(lua_State *L, const hyb_tensor *t, int first, const char *fname) {
    char name[32];
    int64_t off = 0;
    for (int k = 0; k < t->ndim; k++) {
        snprintf(name, sizeof name, "index %d", k + 1);
        lua_Integer i = lhyb_check_int(L, first + k, fname, name, 1, t->shape[k]);
        off += (i - 1) * t->stride[k];
    }
    return off;
}

static int t_get(lua_State *L) {
    hyb_tensor *t = SELF("tensor:get")->t;
    check_readable(L, t, "tensor:get");
    int nidx = lua_gettop(L) - 1;
    if (nidx != t->ndim)
        return lhyb_error(L, "tensor:get: a %d-d tensor needs %d indices, got %d", t->ndim, t->ndim,
                          nidx);
    push_elem(L, t, check_index(L, t, 2, "tensor:get"));
    return 1;
}

static int t_set(lua_State *L) {
    hyb_tensor *t = SELF("tensor:set")->t;
    check_readable(L, t, "tensor:set");
    int nargs = lua_gettop(L) - 1;
    if (nargs != t->ndim + 1)
        return lhyb_error(L,
                          "tensor:set: a %d-d tensor needs %d indices and a value, got %d "
                          "arguments",
                          t->ndim, t->ndim, nargs);
    int64_t off = check_index(L, t, 2, "tensor:set");
    store_elem(L, t, off, t->ndim + 2, "tensor:set", "value");
    lua_settop(L, 1);
    return 1;
}

static int t_item(lua_State *L) {
    hyb_tensor *t = SELF("tensor:item")->t;
    check_readable(L, t, "tensor:item");
    if (hyb_tensor_numel(t) != 1) {
        char buf[128];
        return lhyb_error(L, "tensor:item: the tensor must have exactly one element, it is %s",
                          hyb_tensor_shape_str(t, buf, sizeof buf));
    }
    push_elem(L, t, 0);
    return 1;
}

static void push_nested(lua_State *L, const hyb_tensor *t, int dim, int64_t off) {
    luaL_checkstack(L, 4, "tensor:totable");
    lua_createtable(L, (int)t->shape[dim], 0);
    for (int64_t i = 0; i < t->shape[dim]; i++) {
        int64_t o = off + i * t->stride[dim];
        if (dim + 1 < t->ndim)
            push_nested(L, t, dim + 1, o);
        else
            push_elem(L, t, o);
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
}

static int t_totable(lua_State *L) {
    hyb_tensor *t = SELF("tensor:totable")->t;
    check_readable(L, t, "tensor:totable");
    if (hyb_tensor_numel(t) > ((int64_t)1 << 26))
        return lhyb_error(L, "tensor:totable: %lld elements is too many for a Lua table",
                          (long long)hyb_tensor_numel(t));
    push_nested(L, t, 0, 0);
    return 1;
}

static int t_clone(lua_State *L) {
    hyb_tensor *t = SELF("tensor:clone")->t;
    if (t->device != HYB_DEV_CPU) return lhyb_error(L, "tensor:clone: only CPU tensors for now");
    lhyb_push_owned(L, hyb_tensor_clone(t), "tensor:clone");
    return 1;
}

/* Value of element i (contiguous index) as double, for comparisons. */
static double elem_f64(const hyb_tensor *t, int64_t i) {
    switch (t->dtype) {
    case HYB_F32:
        return ((const float *)t->data)[i];
    case HYB_I32:
        return ((const int32_t *)t->data)[i];
    case HYB_F16:
        return hyb_f16_to_f32(((const uint16_t *)t->data)[i]);
    case HYB_BF16:
        return hyb_bf16_to_f32(((const uint16_t *)t->data)[i]);
    default:
        return NAN;
    }
}

/* t:max_abs_diff(other) -> max |t - other| over all elements (same shape required; NaN in
 * either gives NaN). */
static int t_max_abs_diff(lua_State *L) {
    hyb_tensor *a = SELF("tensor:max_abs_diff")->t;
    hyb_tensor *b = lhyb_check_tensor(L, 2, "tensor:max_abs_diff", "other")->t;
    char sa[128], sb[128];
    check_readable(L, a, "tensor:max_abs_diff");
    check_readable(L, b, "tensor:max_abs_diff");
    int same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim; i++)
        same = a->shape[i] == b->shape[i];
    if (!same)
        return lhyb_error(L, "tensor:max_abs_diff: shapes differ: %s vs %s",
                          hyb_tensor_shape_str(a, sa, sizeof sa),
                          hyb_tensor_shape_str(b, sb, sizeof sb));
    if (!hyb_tensor_is_contiguous(a) || !hyb_tensor_is_contiguous(b))
        return lhyb_error(L, "tensor:max_abs_diff: tensors must be contiguous");
    double m = 0;
    int64_t n = hyb_tensor_numel(a);
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(elem_f64(a, i) - elem_f64(b, i));
        if (d != d) {
            m = NAN;
            break;
        }
        if (d > m) m = d;
    }
    lua_pushnumber(L, m);
    return 1;
}

/* t:equal(other) -> true when shapes match and every element is bitwise-equal as a value. */
static int t_equal(lua_State *L) {
    hyb_tensor *a = SELF("tensor:equal")->t;
    hyb_tensor *b = lhyb_check_tensor(L, 2, "tensor:equal", "other")->t;
    check_readable(L, a, "tensor:equal");
    check_readable(L, b, "tensor:equal");
    int same = a->ndim == b->ndim && hyb_tensor_is_contiguous(a) && hyb_tensor_is_contiguous(b);
    for (int i = 0; same && i < a->ndim; i++)
        same = a->shape[i] == b->shape[i];
    int64_t n = same ? hyb_tensor_numel(a) : 0;
    for (int64_t i = 0; same && i < n; i++)
        same = elem_f64(a, i) == elem_f64(b, i);
    lua_pushboolean(L, same);
    return 1;
}

/* t:sum() / t:mean() / t:min() / t:max() / t:argmax() over all elements (C loops). */
static int t_stats_impl(lua_State *L, const char *fname, int which) {
    hyb_tensor *t = lhyb_check_tensor(L, 1, fname, "self")->t;
    check_readable(L, t, fname);
    if (!hyb_tensor_is_contiguous(t)) return lhyb_error(L, "%s: tensor must be contiguous", fname);
    int64_t n = hyb_tensor_numel(t), arg = 0;
    double acc = which == 0 || which == 1 ? 0 : elem_f64(t, 0);
    for (int64_t i = 0; i < n; i++) {
        double v = elem_f64(t, i);
        if (which <= 1)
            acc += v;
        else if (which == 2 && v < acc)
            acc = v;
        else if ((which == 3 || which == 4) && v > acc)
            acc = v, arg = i;
    }
    if (which == 1) acc /= (double)n;
    if (which == 4)
        lua_pushinteger(L, arg + 1);
    else
        lua_pushnumber(L, acc);
    return 1;
}
static int t_sum(lua_State *L) {
    return t_stats_impl(L, "tensor:sum", 0);
}
static int t_mean(lua_State *L) {
    return t_stats_impl(L, "tensor:mean", 1);
}
static int t_min(lua_State *L) {
    return t_stats_impl(L, "tensor:min", 2);
}
static int t_max(lua_State *L) {
    return t_stats_impl(L, "tensor:max", 3);
}
static int t_argmax(lua_State *L) {
    return t_stats_impl(L, "tensor:argmax", 4);
}

/* t:argmax_last() -> a table with, for each row of the last dimension (outer dims flattened), the
 * 0-based position of its largest value: for logits [B, T, V] the greedy token id of each
 * position, in order b*T + t (first maximum wins). */
static int t_argmax_last(lua_State *L) {
    hyb_tensor *t = SELF("tensor:argmax_last")->t;
    check_readable(L, t, "tensor:argmax_last");
    if (!hyb_tensor_is_contiguous(t))
        return lhyb_error(L, "tensor:argmax_last: tensor must be contiguous");
    int64_t V = t->shape[t->ndim - 1], rows = hyb_tensor_numel(t) / V;
    if (rows > ((int64_t)1 << 26))
        return lhyb_error(L, "tensor:argmax_last: too many rows (%lld)", (long long)rows);
    lua_createtable(L, (int)rows, 0);
    for (int64_t r = 0; r < rows; r++) {
        int64_t best = 0;
        double bv = elem_f64(t, r * V);
        for (int64_t v = 1; v < V; v++) {
            double x = elem_f64(t, r * V + v);
            if (x > bv) bv = x, best = v;
        }
        lua_pushinteger(L, best);
        lua_rawseti(L, -2, (lua_Integer)(r + 1));
    }
    return 1;
}

static int t_tostring(lua_State *L) {
    lhyb_tensor *b = (lhyb_tensor *)luaL_checkudata(L, 1, LHYB_TENSOR_MT);
    char buf[160];
    if (!b->t)
        lua_pushstring(L, "hyb.tensor(closed)");
    else if (b->genp && *b->genp != b->gen)
        lua_pushstring(L, "hyb.tensor(stale)");
    else
        lua_pushfstring(L, "hyb.tensor(%s%s%s)", hyb_tensor_shape_str(b->t, buf, sizeof buf),
                        b->t->name[0] ? " " : "", b->t->name);
    return 1;
}

static int t_len(lua_State *L) {
    hyb_tensor *t = SELF("tensor:__len")->t;
    lua_pushinteger(L, t->shape[0]);
    return 1;
}

static int tensor_gc(lua_State *L) {
    lhyb_tensor *b = (lhyb_tensor *)luaL_checkudata(L, 1, LHYB_TENSOR_MT);
    if (b->t && b->owned) {
        g_live_bytes -= owned_data_bytes(b->t);
        hyb_tensor_free(b->t);
    }
    b->t = NULL;
    return 0;
}

static const luaL_Reg tensor_methods[] = {{"shape", t_shape},
                                          {"numel", t_numel},
                                          {"ndim", t_ndim},
                                          {"dtype", t_dtype},
                                          {"get", t_get},
                                          {"set", t_set},
                                          {"item", t_item},
                                          {"totable", t_totable},
                                          {"clone", t_clone},
                                          {"max_abs_diff", t_max_abs_diff},
                                          {"equal", t_equal},
                                          {"sum", t_sum},
                                          {"mean", t_mean},
                                          {"min", t_min},
                                          {"max", t_max},
                                          {"argmax", t_argmax},
                                          {"argmax_last", t_argmax_last},
                                          {NULL, NULL}};

static const luaL_Reg tensor_funcs[] = {
    {"tensor", l_tensor},
    {"zeros", l_zeros},
    {"randn", l_randn},
    {"live_tensor_bytes", l_live_tensor_bytes},
    {NULL, NULL}};

void lhyb_open_tensor(lua_State *L) {
    lhyb_register_class(L, LHYB_TENSOR_MT, tensor_methods, tensor_gc, tensor_gc, t_tostring);
    luaL_getmetatable(L, LHYB_TENSOR_MT);
    lua_pushcfunction(L, t_len);
    lua_setfield(L, -2, "__len");
    lua_pop(L, 1);
    luaL_setfuncs(L, tensor_funcs, 0);
    lhyb_open_autograd(L);   /* ops, autodiff, printing (lua_autograd.c) */
    lhyb_open_lua_mixers(L); /* type = "lua:<path>" in layer maps (lua_mixer.c) */
}
