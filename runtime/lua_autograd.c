/* runtime/lua_autograd.c: tensor ops on hyb.tensor with reverse-mode autodiff (a tape).
 *
 *   local x = hyb.randn({4, 8}, 1):requires_grad()
 *   local W = hyb.randn({8, 3}, 2):requires_grad()
 *   local loss = (x:matmul(W):silu() * 2 + 1):sum_all()
 *   loss:backward()                 -- x.grad, W.grad: [4, 8], [8, 3]
 *   local df = hyb.grad(function(w) return (x:matmul(w)):pow(2):mean_all() end)
 *   local dW, value = df(W)
 *
 * Design: every op is ONE call of a backend entry (hyb/backend.h: ewise, ewise_bwd, axis, tri,
 * conv1d_causal, gather, sgemm/sgemm_batched, rmsnorm) on whole tensors; Lua never loops over
 * elements. When grad mode is on and an input requires grad, the op records a node: a userdata
 * holding the op's backward function, its parameters and (as user values) its input tensors and
 * the tensors it saved; the output tensor keeps its node as its second user value. The tape is
 * this graph of nodes, built by the ops and freed by Lua's garbage collector with the tensors.
 * t:backward() sorts the nodes reachable from t, then runs each backward in reverse order,
 * accumulating into per-node gradient tensors and into the leaves' .grad.
 *
 * Why not core/graph's tape (hyb_graph, used by the model): its activations live in an arena
 * until hyb_graph_reset, its ops take contiguous f32 tensors only, and its nodes hold raw
 * pointers. Lua tensors are garbage-collected values that outlive any step, and the ops here take
 * strided views and broadcast; tying them to an arena would make every tensor go stale at the
 * next reset. Both tapes call the same backend entries; a Lua-defined computation that must run
 * inside a model graph joins it as one coarse node (as a plugin mixer does).
 *
 * Tensor boxes (lhyb_tensor, lua_tensor.c) have three user values: 1 = the owner (a borrowed
 * tensor's model, a view's base), 2 = the node that made it (nil for a leaf), 3 = the .grad of a
 * leaf. Views (reshape of a contiguous tensor, transpose, permute, narrow, expand, unsqueeze,
 * squeeze, detach) share the base's data; their header is a HYB_OWN_VIEW tensor. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/backend.h"
#include "hyb/common.h"
#include "lhyb.h"

#define UV_BASE 1
#define UV_NODE 2
#define UV_GRAD 3

static int g_grad_on = 1;   /* hyb.no_grad turns it off */
static int g_check_nan = 0; /* hyb.check_nan(true): every op's output is checked */

typedef struct lnode lnode;
/* in[i]: the inputs; gy: d out (contiguous, the output's shape); gin[i]: accumulators (contiguous,
 * in[i]'s shape) or NULL where no gradient is wanted. saved[j]: the saved tensors. */
typedef int (*lbwd_fn)(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                       hyb_tensor **gin);

struct lnode {
    const char *op;
    lbwd_fn bwd;
    const hyb_backend *be;
    int n_in, n_saved;
    int ndim;
    int64_t shape[HYB_MAX_DIMS]; /* the output's shape */
    int64_t iv[8];
    float fv[4];
    int64_t st[HYB_MAX_DIMS]; /* views: the output's strides over the input's contiguous layout */
};

#define MAXIN 64 /* inputs of one node (cat) */

/* ---- small helpers --------------------------------------------------------------------------- */

static int64_t numel_of(int nd, const int64_t *s) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= s[i];
    return n;
}

static void contig_strides(int nd, const int64_t *shape, int64_t *st) {
    int64_t s = 1;
    for (int i = nd - 1; i >= 0; i--) {
        st[i] = s;
        s *= shape[i];
    }
}

static int is_contig(const hyb_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s) return 0;
        s *= t->shape[i];
    }
    return 1;
}

/* shape/strides of (nd, shape, stride) right-aligned into `to` dims then left-padded to 4; size-1
 * dims get stride 0 (broadcast). */
static void pad4(int nd, const int64_t *shape, const int64_t *stride, int to, int64_t *sh,
                 int64_t *st) {
    for (int k = 0; k < 4; k++)
        sh[k] = 1, st[k] = 0;
    for (int i = 0; i < nd; i++) {
        int k = 4 - nd + i;
        sh[k] = shape[i];
        st[k] = shape[i] == 1 ? 0 : (stride ? stride[i] : 0);
    }
    (void)to;
}

static void pad4c(int nd, const int64_t *shape, int64_t *sh, int64_t *st) {
    int64_t cs[HYB_MAX_DIMS] = {0};
    contig_strides(nd, shape, cs);
    pad4(nd, shape, cs, 4, sh, st);
}

static const char *shp(const hyb_tensor *t, char *buf, size_t n) {
    return hyb_shape_str(t->ndim, t->shape, buf, n);
}

/* The tensor box at idx (raises naming the argument position). */
static lhyb_tensor *argbox(lua_State *L, int idx, const char *op, int pos) {
    char buf[96];
    lhyb_tensor *b = lhyb_test_tensor(L, idx);
    if (!b)
        lhyb_error(L, "%s: argument %d must be a hyb.tensor, got %s", op, pos,
                   lhyb_describe(L, idx, buf, sizeof buf));
    char what[32];
    snprintf(what, sizeof what, "argument %d", pos);
    return lhyb_check_tensor(L, idx, op, what);
}

static hyb_tensor *argt(lua_State *L, int idx, const char *op, int pos) {
    hyb_tensor *t = argbox(L, idx, op, pos)->t;
    if (t->dtype != HYB_F32)
        lhyb_error(L, "%s: argument %d must be an f32 tensor, it is %s", op, pos,
                   hyb_dtype_name(t->dtype));
    return t;
}

/* The backend of t's device with the entry `entry` present, else "no <dev> kernel for op". */
static const hyb_backend *op_be(lua_State *L, const char *op, const hyb_tensor *t, size_t entry_off,
                                const char *entry) {
    const hyb_backend *be = hyb_backend_get(t->device);
    if (!be) lhyb_raise_hyb(L, op);
    void *fn;
    memcpy(&fn, (const char *)be + entry_off, sizeof fn);
    if (!fn)
        lhyb_error(L,
                   "%s: no %s kernel for op %s (backend entry %s; the tensor ops have CPU "
                   "kernels only so far)",
                   op, hyb_device_name(t->device), op, entry);
    return be;
}
#define BE(L, op, t, entry) op_be(L, op, t, offsetof(hyb_backend, entry), #entry)

static void same_device(lua_State *L, const char *op, const hyb_tensor *a, const hyb_tensor *b) {
    if (a->device != b->device)
        lhyb_error(L, "%s: tensors on different devices (%s and %s)", op,
                   hyb_device_name(a->device), hyb_device_name(b->device));
}

/* Raise "<op>: <hyb_error()>" when rc is an error. */
static void check_rc(lua_State *L, int rc, const char *op) {
    if (rc != HYB_OK) lhyb_raise_hyb(L, op);
}

/* Push a new zeroed f32 tensor on be's device. */
static lhyb_tensor *new_out(lua_State *L, const char *op, const hyb_backend *be, int nd,
                            const int64_t *shape) {
    lhyb_tensor *b = lhyb_push_owned(L, hyb_tensor_new_on(be, HYB_F32, nd, shape), op);
    /* Lua's collector sees only the small box, not the tensor's data: tell it about the data
     * (an incremental step as if that many KB were allocated), so that a loop of ops frees its
     * dead tensors at the pace it makes them instead of growing until the Lua heap doubles. */
    size_t kb = hyb_tensor_nbytes(b->t) >> 10;
    if (kb) lua_gc(L, LUA_GCSTEP, kb > (size_t)INT32_MAX ? INT32_MAX : (int)kb);
    return b;
}

static int check_dim(lua_State *L, int idx, const char *op, int nd, const char *what) {
    char buf[96];
    int isnum = 0;
    lua_Integer d = lua_tointegerx(L, idx, &isnum);
    if (!isnum || lua_type(L, idx) != LUA_TNUMBER)
        lhyb_error(L, "%s: %s must be a dimension (1..%d, or -1 for the last), got %s", op, what,
                   nd, lhyb_describe(L, idx, buf, sizeof buf));
    if (d < 0) d += nd + 1;
    if (d < 1 || d > nd)
        lhyb_error(L, "%s: %s %lld is outside the tensor's %d dims", op, what,
                   (long long)lua_tointeger(L, idx), nd);
    return (int)d - 1;
}

/* hyb.check_nan: every op's output scanned for NaN/Inf. */
static void nan_check(lua_State *L, const char *op, hyb_tensor *t) {
    if (!g_check_nan) return;
    int64_t n = hyb_tensor_numel(t);
    float *h = t->data;
    float *tmp = NULL;
    if (t->device != HYB_DEV_CPU) {
        tmp = malloc((size_t)n * sizeof(float));
        if (!tmp || hyb_tensor_download(t, tmp) != HYB_OK) {
            free(tmp);
            lhyb_error(L, "%s: could not read the output for hyb.check_nan", op);
        }
        h = tmp;
    }
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(h[i])) {
            char buf[64];
            float v = h[i];
            free(tmp);
            lhyb_error(L, "%s: produced %s at element %lld of its %s output (hyb.check_nan is on)",
                       op, isnan(v) ? "NaN" : "Inf", (long long)i + 1, shp(t, buf, sizeof buf));
        }
    free(tmp);
}

/* ---- the tape -------------------------------------------------------------------------------- */

static int requires(lua_State *L, int idx) {
    lhyb_tensor *b = lhyb_test_tensor(L, idx);
    return b && b->t && b->t->requires_grad;
}

/* Record a node for the output box at out_idx with inputs at in_idx[0..n_in) and saved tensors
 * at sv_idx[0..n_sv) (stack indices), when grad mode is on and some input requires grad.
 * Returns the node (fill iv/fv/st) or NULL when nothing was recorded. */
static lnode *record(lua_State *L, const char *op, const hyb_backend *be, int out_idx, lbwd_fn bwd,
                     const int *in_idx, int n_in, const int *sv_idx, int n_sv) {
    if (!g_grad_on) return NULL;
    int any = 0;
    for (int i = 0; i < n_in; i++)
    any |= requires(L, in_idx[i]);
    if (!any) return NULL;
    out_idx = lua_absindex(L, out_idx);
    lnode *n = lua_newuserdatauv(L, sizeof(lnode), n_in + n_sv);
    memset(n, 0, sizeof *n);
    n->op = op;
    n->bwd = bwd;
    n->be = be;
    n->n_in = n_in;
    n->n_saved = n_sv;
    for (int i = 0; i < n_in; i++) {
        lua_pushvalue(L, in_idx[i]);
        lua_setiuservalue(L, -2, i + 1);
    }
    for (int j = 0; j < n_sv; j++) {
        lua_pushvalue(L, sv_idx[j]);
        lua_setiuservalue(L, -2, n_in + j + 1);
    }
    lhyb_tensor *ob = lhyb_test_tensor(L, out_idx);
    n->ndim = ob->t->ndim;
    memcpy(n->shape, ob->t->shape, sizeof n->shape);
    lua_setiuservalue(L, out_idx, UV_NODE);
    ob->t->requires_grad = 1;
    return n;
}

/* The leaf gradient of the box at idx (created zeroed on first use). */
static hyb_tensor *leaf_grad(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lhyb_tensor *b = lhyb_test_tensor(L, idx);
    hyb_tensor *t = b->t;
    if (t->grad) return t->grad;
    if (t->owner == HYB_OWN_PARAM) {
        if (hyb_tensor_grad_ensure(t) != HYB_OK) lhyb_raise_hyb(L, "tensor:backward");
        return t->grad;
    }
    lua_getiuservalue(L, idx, UV_GRAD);
    lhyb_tensor *g = lhyb_test_tensor(L, -1);
    if (g) {
        lua_pop(L, 1);
        return g->t;
    }
    lua_pop(L, 1);
    const hyb_backend *be = hyb_backend_get(t->device);
    if (!be) lhyb_raise_hyb(L, "tensor:backward");
    new_out(L, "tensor:backward", be, t->ndim, t->shape);
    g = lhyb_test_tensor(L, -1);
    lua_setiuservalue(L, idx, UV_GRAD);
    return g->t;
}

/* Post-order DFS over the nodes reachable from the node at the top of the stack. visited and
 * order are absolute stack indices of tables; *count the nodes so far. */
static void topo(lua_State *L, int visited, int order, int *count) {
    luaL_checkstack(L, 8, "tensor:backward: the tape is too deep");
    int node = lua_gettop(L);
    lua_pushvalue(L, node);
    if (lua_rawget(L, visited) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, node);
    lua_pushboolean(L, 1);
    lua_rawset(L, visited);
    lnode *n = lua_touserdata(L, node);
    for (int i = 0; i < n->n_in; i++) {
        lua_getiuservalue(L, node, i + 1); /* input box */
        if (lua_getiuservalue(L, -1, UV_NODE) == LUA_TUSERDATA) topo(L, visited, order, count);
        lua_pop(L, 2);
    }
    lua_pushvalue(L, node);
    lua_rawseti(L, order, ++*count);
}

/* Accumulate src into dst (same numel, contiguous, same device). */
static int acc_into(const hyb_backend *be, hyb_tensor *dst, const hyb_tensor *src) {
    return be->axpy(be, dst->data, src->data, 1.0f, hyb_tensor_numel(dst));
}

/* t:backward([gradient]): reverse pass from t (a one-element tensor unless a gradient of t's
 * shape is given). Gradients accumulate into the leaves' .grad. */
static int t_backward(lua_State *L) {
    const char *op = "tensor:backward";
    lhyb_tensor *rb = argbox(L, 1, op, 1);
    hyb_tensor *root = rb->t;
    char b1[64], b2[64];
    lua_settop(L, 2);
    if (!root->requires_grad)
        return lhyb_error(L,
                          "%s: the tensor does not require grad (mark a leaf with "
                          "t:requires_grad() before the ops, outside hyb.no_grad)",
                          op);
    const hyb_backend *be = hyb_backend_get(root->device);
    if (!be) return lhyb_raise_hyb(L, op);
    /* the seed */
    if (lua_isnil(L, 2)) {
        if (hyb_tensor_numel(root) != 1)
            return lhyb_error(L,
                              "%s: the tensor is %s, not one element: pass the gradient of its "
                              "shape (t:backward(g)) or reduce it first (t:sum_all())",
                              op, shp(root, b1, sizeof b1));
        new_out(L, op, be, root->ndim, root->shape);
        float one = 1.0f;
        check_rc(L, hyb_tensor_upload(lhyb_test_tensor(L, -1)->t, &one), op);
    } else {
        hyb_tensor *g = argt(L, 2, op, 1);
        if (g->ndim != root->ndim || memcmp(g->shape, root->shape, sizeof(int64_t) * g->ndim))
            return lhyb_error(L, "%s: the gradient is %s but the tensor is %s", op,
                              shp(g, b1, sizeof b1), shp(root, b2, sizeof b2));
        same_device(L, op, g, root);
        if (!is_contig(g)) {
            lhyb_push_owned(L, hyb_tensor_clone(g), op);
        } else {
            lua_pushvalue(L, 2);
        }
    }
    int seed = lua_gettop(L);
    if (lua_getiuservalue(L, 1, UV_NODE) != LUA_TUSERDATA) { /* a leaf */
        check_rc(L, acc_into(be, leaf_grad(L, 1), lhyb_test_tensor(L, seed)->t), op);
        return 0;
    }
    int rootnode = lua_gettop(L);
    lua_newtable(L);
    int visited = lua_gettop(L);
    lua_newtable(L);
    int order = lua_gettop(L);
    lua_newtable(L);
    int grads = lua_gettop(L);
    int count = 0;
    lua_pushvalue(L, rootnode);
    topo(L, visited, order, &count);
    lua_pop(L, 1);
    lua_pushvalue(L, rootnode);
    lua_pushvalue(L, seed);
    lua_rawset(L, grads);
    for (int k = count; k >= 1; k--) {
        int top = lua_gettop(L);
        lua_rawgeti(L, order, k);
        int node = lua_gettop(L);
        lnode *n = lua_touserdata(L, node);
        lua_pushvalue(L, node);
        if (lua_rawget(L, grads) == LUA_TNIL) {
            lua_settop(L, top);
            continue;
        }
        hyb_tensor *gy = lhyb_test_tensor(L, -1)->t;
        hyb_tensor *in[MAXIN], *gin[MAXIN], *saved[4];
        luaL_checkstack(L, 3 * n->n_in + 8, op);
        for (int i = 0; i < n->n_in; i++) {
            lua_getiuservalue(L, node, i + 1);
            int ib = lua_gettop(L);
            lhyb_tensor *box = lhyb_test_tensor(L, ib);
            in[i] = box->t;
            gin[i] = NULL;
            if (!box->t->requires_grad) continue;
            if (lua_getiuservalue(L, ib, UV_NODE) == LUA_TUSERDATA) {
                int innode = lua_gettop(L);
                lua_pushvalue(L, innode);
                if (lua_rawget(L, grads) == LUA_TNIL) {
                    lua_pop(L, 1);
                    new_out(L, op, n->be, box->t->ndim, box->t->shape);
                    lua_pushvalue(L, innode);
                    lua_pushvalue(L, -2);
                    lua_rawset(L, grads);
                }
                gin[i] = lhyb_test_tensor(L, -1)->t;
            } else {
                gin[i] = leaf_grad(L, ib);
            }
        }
        for (int j = 0; j < n->n_saved && j < 4; j++) {
            lua_getiuservalue(L, node, n->n_in + j + 1);
            saved[j] = lhyb_test_tensor(L, -1)->t;
        }
        if (n->bwd(n, in, saved, gy, gin) != HYB_OK) {
            char msg[64];
            snprintf(msg, sizeof msg, "%s (backward of %s)", op, n->op);
            lhyb_raise_hyb(L, msg);
        }
        if (g_check_nan)
            for (int i = 0; i < n->n_in; i++)
                if (gin[i]) nan_check(L, n->op, gin[i]);
        lua_pushvalue(L, node); /* this node's gradient is no longer needed */
        lua_pushnil(L);
        lua_rawset(L, grads);
        lua_settop(L, top);
    }
    return 0;
}

/* ---- elementwise ----------------------------------------------------------------------------- */

/* Backward of every ewise node: inputs a[, b[, c]] (strided), iv[0] = op, fv = alpha, beta. */
static int bwd_ewise(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                     hyb_tensor **gin) {
    (void)saved;
    int64_t sh[4], st[3][4], dsh[4], dst_[4];
    const float *p[3] = {NULL, NULL, NULL};
    pad4c(n->ndim, n->shape, sh, dst_);
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 4; k++)
            st[i][k] = 0;
        if (i < n->n_in) {
            int64_t s4[4];
            pad4(in[i]->ndim, in[i]->shape, in[i]->stride, 4, s4, st[i]);
            p[i] = in[i]->data;
        }
    }
    for (int i = 0; i < n->n_in; i++) {
        if (!gin[i]) continue;
        pad4c(in[i]->ndim, in[i]->shape, dsh, dst_);
        HYB_TRY(n->be->ewise_bwd(n->be, (int)n->iv[0], i, p[0], st[0], p[1], st[1], p[2], st[2],
                                 gy->data, gin[i]->data, sh, dsh, n->fv[0], n->fv[1]));
    }
    return HYB_OK;
}

/* Broadcast the tensors at idx[0..k) into out shape (raises naming the op and the shapes). */
static int bcast_shape(lua_State *L, const char *op, hyb_tensor **t, int k, int64_t *out) {
    int nd = 0;
    for (int i = 0; i < k; i++)
        if (t[i]->ndim > nd) nd = t[i]->ndim;
    for (int d = 0; d < nd; d++) {
        int64_t s = 1;
        for (int i = 0; i < k; i++) {
            int di = d - (nd - t[i]->ndim);
            int64_t v = di >= 0 ? t[i]->shape[di] : 1;
            if (v == 1) continue;
            if (s != 1 && s != v) {
                char b1[64], b2[64];
                int j = 0;
                while (j < i &&
                       !(d - (nd - t[j]->ndim) >= 0 && t[j]->shape[d - (nd - t[j]->ndim)] == s))
                    j++;
                lhyb_error(L,
                           "%s: shapes %s and %s do not broadcast (dim %d of the result: %lld "
                           "vs %lld)",
                           op, shp(t[j], b1, sizeof b1), shp(t[i], b2, sizeof b2), d + 1,
                           (long long)s, (long long)v);
            }
            s = v;
        }
        out[d] = s;
    }
    return nd;
}

/* Apply ewise op to the tensors at stack idx[0..k) (broadcast); pushes the result. */
static void ewise_apply(lua_State *L, const char *op, int ewop, const int *idx, int k, float alpha,
                        float beta) {
    hyb_tensor *t[3];
    for (int i = 0; i < k; i++) {
        t[i] = lhyb_test_tensor(L, idx[i])->t;
        if (i) same_device(L, op, t[0], t[i]);
    }
    const hyb_backend *be = BE(L, op, t[0], ewise);
    int64_t shape[HYB_MAX_DIMS];
    int nd = bcast_shape(L, op, t, k, shape);
    lhyb_tensor *ob = new_out(L, op, be, nd, shape);
    int64_t sh[4], sy[4], st[3][4] = {{0}};
    const float *p[3] = {NULL, NULL, NULL};
    pad4c(nd, shape, sh, sy);
    for (int i = 0; i < k; i++) {
        int64_t s4[4];
        pad4(t[i]->ndim, t[i]->shape, t[i]->stride, 4, s4, st[i]);
        p[i] = t[i]->data;
    }
    check_rc(L,
             be->ewise(be, ewop, ob->t->data, sy, p[0], st[0], p[1], st[1], p[2], st[2], sh, alpha,
                       beta),
             op);
    nan_check(L, op, ob->t);
    if (ewop >= HYB_EW_GT && ewop <= HYB_EW_EQ) return; /* comparisons: no gradient */
    lnode *n = record(L, op, be, -1, bwd_ewise, idx, k, NULL, 0);
    if (n) {
        n->iv[0] = ewop;
        n->fv[0] = alpha;
        n->fv[1] = beta;
    }
}

static void unary(lua_State *L, const char *op, int ewop, float alpha, float beta) {
    argt(L, 1, op, 1);
    int idx[1] = {1};
    ewise_apply(L, op, ewop, idx, 1, alpha, beta);
}

#define UNARY(fname, name, ewop)                                                                   \
    static int fname(lua_State *L) {                                                               \
        unary(L, name, ewop, 0.0f, 0.0f);                                                          \
        return 1;                                                                                  \
    }
UNARY(l_exp, "hyb.exp", HYB_EW_EXP)
UNARY(l_log, "hyb.log", HYB_EW_LOG)
UNARY(l_sigmoid, "hyb.sigmoid", HYB_EW_SIGMOID)
UNARY(l_silu, "hyb.silu", HYB_EW_SILU)
UNARY(l_softplus, "hyb.softplus", HYB_EW_SOFTPLUS)
UNARY(l_tanh, "hyb.tanh", HYB_EW_TANH)
UNARY(l_sqrt, "hyb.sqrt", HYB_EW_SQRT)
UNARY(l_rsqrt, "hyb.rsqrt", HYB_EW_RSQRT)
UNARY(l_abs, "hyb.abs", HYB_EW_ABS)

static int l_neg(lua_State *L) {
    unary(L, "hyb.neg", HYB_EW_AFFINE, -1.0f, 0.0f);
    return 1;
}

/* A one-element constant tensor on t's device, pushed. */
static void push_const(lua_State *L, const char *op, const hyb_tensor *t, float v) {
    const hyb_backend *be = hyb_backend_get(t->device);
    if (!be) lhyb_raise_hyb(L, op);
    int64_t one = 1;
    lhyb_tensor *c = new_out(L, op, be, 1, &one);
    check_rc(L, hyb_tensor_upload(c->t, &v), op);
}

static float check_scalar(lua_State *L, int idx, const char *op, int pos) {
    char buf[96];
    if (lua_type(L, idx) != LUA_TNUMBER)
        lhyb_error(L, "%s: argument %d must be a hyb.tensor or a number, got %s", op, pos,
                   lhyb_describe(L, idx, buf, sizeof buf));
    return (float)lua_tonumber(L, idx);
}

/* a (op) b with tensors or numbers on either side. */
static int binop(lua_State *L, const char *op, int ewop) {
    lua_settop(L, 2);
    int ta = lhyb_test_tensor(L, 1) != NULL, tb = lhyb_test_tensor(L, 2) != NULL;
    if (ta) argt(L, 1, op, 1);
    if (tb) argt(L, 2, op, 2);
    if (!ta && !tb) {
        check_scalar(L, 1, op, 1);
        return lhyb_error(L, "%s: argument 1 or 2 must be a hyb.tensor", op);
    }
    if (ta && tb) {
        int idx[2] = {1, 2};
        ewise_apply(L, op, ewop, idx, 2, 0, 0);
        return 1;
    }
    int ti = ta ? 1 : 2;
    float s = check_scalar(L, ta ? 2 : 1, op, ta ? 2 : 1);
    int idx[1] = {ti};
    switch (ewop) {
    case HYB_EW_ADD:
        ewise_apply(L, op, HYB_EW_AFFINE, idx, 1, 1.0f, s);
        return 1;
    case HYB_EW_SUB:
        ewise_apply(L, op, HYB_EW_AFFINE, idx, 1, ta ? 1.0f : -1.0f, ta ? -s : s);
        return 1;
    case HYB_EW_MUL:
        ewise_apply(L, op, HYB_EW_AFFINE, idx, 1, s, 0.0f);
        return 1;
    case HYB_EW_DIV:
        if (ta)
            ewise_apply(L, op, HYB_EW_AFFINE, idx, 1, 1.0f / s, 0.0f);
        else
            ewise_apply(L, op, HYB_EW_RDIV, idx, 1, s, 0.0f);
        return 1;
    default: { /* comparisons, maximum, minimum: a constant tensor */
        push_const(L, op, lhyb_test_tensor(L, ti)->t, s);
        int c = lua_gettop(L);
        int i2[2] = {ta ? 1 : c, ta ? c : 2};
        ewise_apply(L, op, ewop, i2, 2, 0, 0);
        return 1;
    }
    }
}

#define BINOP(fname, name, ewop)                                                                   \
    static int fname(lua_State *L) {                                                               \
        return binop(L, name, ewop);                                                               \
    }
BINOP(l_add, "hyb.add", HYB_EW_ADD)
BINOP(l_sub, "hyb.sub", HYB_EW_SUB)
BINOP(l_mul, "hyb.mul", HYB_EW_MUL)
BINOP(l_div, "hyb.div", HYB_EW_DIV)
BINOP(l_gt, "hyb.gt", HYB_EW_GT)
BINOP(l_lt, "hyb.lt", HYB_EW_LT)
BINOP(l_ge, "hyb.ge", HYB_EW_GE)
BINOP(l_le, "hyb.le", HYB_EW_LE)
BINOP(l_eq, "hyb.eq", HYB_EW_EQ)
BINOP(l_maximum, "hyb.maximum", HYB_EW_MAXIMUM)
BINOP(l_minimum, "hyb.minimum", HYB_EW_MINIMUM)

static int l_unm(lua_State *L) {
    lua_settop(L, 1); /* __unm gets the operand twice */
    return l_neg(L);
}

/* t ^ p / hyb.pow(t, p): p a number */
static int l_pow(lua_State *L) {
    const char *op = "hyb.pow";
    if (!lhyb_test_tensor(L, 1))
        return lhyb_error(L, "%s: argument 1 (the base) must be a hyb.tensor, got %s", op,
                          lua_typename(L, lua_type(L, 1)));
    argt(L, 1, op, 1);
    if (lua_type(L, 2) != LUA_TNUMBER) {
        char buf[96];
        return lhyb_error(L, "%s: argument 2 (the exponent) must be a number, got %s", op,
                          lhyb_describe(L, 2, buf, sizeof buf));
    }
    float p = (float)lua_tonumber(L, 2);
    int idx[1] = {1};
    ewise_apply(L, op, HYB_EW_POW, idx, 1, p, 0.0f);
    return 1;
}

/* hyb.where(cond, a, b): cond != 0 ? a : b (a, b tensors or numbers; broadcast) */
static int l_where(lua_State *L) {
    const char *op = "hyb.where";
    lua_settop(L, 3);
    hyb_tensor *c = argt(L, 1, op, 1);
    int idx[3] = {1, 2, 3};
    for (int i = 2; i <= 3; i++) {
        if (lhyb_test_tensor(L, i)) {
            argt(L, i, op, i);
        } else {
            float v = check_scalar(L, i, op, i);
            push_const(L, op, c, v);
            idx[i - 1] = lua_gettop(L);
        }
    }
    ewise_apply(L, op, HYB_EW_WHERE, idx, 3, 0, 0);
    return 1;
}

/* ---- views ----------------------------------------------------------------------------------- */

enum { VIEW_STRIDED = 0, VIEW_FLAT, VIEW_EXPAND };

static int bwd_view(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                    hyb_tensor **gin) {
    (void)saved;
    if (!gin[0]) return HYB_OK;
    const hyb_backend *be = n->be;
    int64_t sh[4], sy[4], sg[4], dsh[4], dst_[4];
    switch (n->iv[0]) {
    case VIEW_FLAT:
        return acc_into(be, gin[0], gy);
    case VIEW_EXPAND:
        pad4c(n->ndim, n->shape, sh, sg);
        pad4c(in[0]->ndim, in[0]->shape, dsh, dst_);
        return be->ewise_bwd(be, HYB_EW_COPY, 0, NULL, NULL, NULL, NULL, NULL, NULL, gy->data,
                             gin[0]->data, sh, dsh, 1.0f, 0.0f);
    default: {
        pad4c(n->ndim, n->shape, sh, sg);
        int64_t s4[4];
        pad4(n->ndim, n->shape, n->st, 4, s4, sy);
        float *base = (float *)gin[0]->data + n->iv[1];
        return be->ewise(be, HYB_EW_ADD, base, sy, base, sy, gy->data, sg, NULL, NULL, sh, 0, 0);
    }
    }
}

/* Push a view of the box at base_idx: shape/stride (elements) at element offset off into the
 * base's data. lst/loff: the same view over the base's contiguous layout (for the backward).
 * kind: VIEW_*. */
static void push_view(lua_State *L, const char *op, int base_idx, int nd, const int64_t *shape,
                      const int64_t *stride, int64_t off, const int64_t *lst, int64_t loff,
                      int kind) {
    base_idx = lua_absindex(L, base_idx);
    lhyb_tensor *bb = lhyb_test_tensor(L, base_idx);
    hyb_tensor *b = bb->t;
    hyb_tensor *v = hyb_malloc(sizeof *v);
    if (!v) lhyb_error(L, "%s: out of memory", op);
    memset(v, 0, sizeof *v);
    v->dtype = b->dtype;
    v->device = b->device;
    v->owner = HYB_OWN_VIEW;
    v->ndim = nd;
    for (int i = 0; i < nd; i++)
        v->shape[i] = shape[i], v->stride[i] = stride[i];
    v->data = (char *)b->data + off * (int64_t)sizeof(float);
    snprintf(v->name, sizeof v->name, "%s", b->name);
    lhyb_tensor *vb = lhyb_push_owned(L, v, op);
    vb->genp = bb->genp;
    vb->gen = bb->gen;
    vb->what = bb->what;
    lua_pushvalue(L, base_idx);
    lua_setiuservalue(L, -2, UV_BASE);
    const hyb_backend *be = hyb_backend_get(b->device);
    int in[1] = {base_idx};
    lnode *n = kind < 0 ? NULL : record(L, op, be, -1, bwd_view, in, 1, NULL, 0);
    if (n) {
        if (kind != VIEW_FLAT && !be->ewise)
            lhyb_error(L, "%s: no %s kernel for op %s (backend entry ewise)", op,
                       hyb_device_name(b->device), op);
        n->iv[0] = kind;
        n->iv[1] = loff;
        for (int i = 0; i < nd; i++)
            n->st[i] = lst ? lst[i] : 0;
    }
}

/* Replace the tensor at idx by a contiguous copy when it is not contiguous (recorded). */
static hyb_tensor *make_contig(lua_State *L, int idx, const char *op) {
    idx = lua_absindex(L, idx);
    hyb_tensor *t = lhyb_test_tensor(L, idx)->t;
    if (is_contig(t)) return t;
    int i[1] = {idx};
    ewise_apply(L, op, HYB_EW_COPY, i, 1, 0, 0);
    lua_replace(L, idx);
    return lhyb_test_tensor(L, idx)->t;
}

static int l_contiguous(lua_State *L) {
    argt(L, 1, "tensor:contiguous", 1);
    lua_settop(L, 1);
    make_contig(L, 1, "tensor:contiguous");
    return 1;
}

/* Read a shape table (entries may include one -1) into out. */
static int read_shape(lua_State *L, int idx, const char *op, int64_t total, int64_t *out) {
    char buf[96];
    if (!lua_istable(L, idx))
        lhyb_error(L, "%s: shape must be a table of integers, got %s", op,
                   lhyb_describe(L, idx, buf, sizeof buf));
    int nd = (int)lua_rawlen(L, idx), infer = -1;
    if (nd < 1 || nd > HYB_MAX_DIMS)
        lhyb_error(L, "%s: shape must have 1 to %d entries, got %d", op, HYB_MAX_DIMS, nd);
    int64_t known = 1;
    for (int i = 0; i < nd; i++) {
        lua_rawgeti(L, idx, i + 1);
        int isnum = 0;
        lua_Integer v = lua_tointegerx(L, -1, &isnum);
        if (!isnum || (v < 1 && v != -1) || (v == -1 && infer >= 0))
            lhyb_error(L, "%s: shape entry %d must be a positive integer (or one -1), got %s", op,
                       i + 1, lhyb_describe(L, -1, buf, sizeof buf));
        lua_pop(L, 1);
        if (v == -1)
            infer = i;
        else
            known *= v, out[i] = v;
    }
    if (infer >= 0) {
        if (known == 0 || total % known)
            lhyb_error(L, "%s: cannot infer the -1 entry: %lld elements over %lld", op,
                       (long long)total, (long long)known);
        out[infer] = total / known;
    }
    return nd;
}

static int l_reshape(lua_State *L) {
    const char *op = "tensor:reshape";
    lua_settop(L, 2);
    hyb_tensor *t = argt(L, 1, op, 1);
    int64_t shape[HYB_MAX_DIMS], st[HYB_MAX_DIMS];
    int64_t total = hyb_tensor_numel(t);
    int nd = read_shape(L, 2, op, total, shape);
    if (numel_of(nd, shape) != total) {
        char b1[64], b2[64];
        return lhyb_error(L, "%s: cannot reshape %s (%lld elements) to %s (%lld)", op,
                          shp(t, b1, sizeof b1), (long long)total,
                          hyb_shape_str(nd, shape, b2, sizeof b2), (long long)numel_of(nd, shape));
    }
    t = make_contig(L, 1, op);
    contig_strides(nd, shape, st);
    push_view(L, op, 1, nd, shape, st, 0, NULL, 0, VIEW_FLAT);
    return 1;
}

/* A permutation view: perm[i] = the source dim of result dim i. */
static void permute_view(lua_State *L, const char *op, const int *perm) {
    hyb_tensor *t = lhyb_test_tensor(L, 1)->t;
    int64_t shape[HYB_MAX_DIMS], st[HYB_MAX_DIMS], cs[HYB_MAX_DIMS], lst[HYB_MAX_DIMS];
    contig_strides(t->ndim, t->shape, cs);
    for (int i = 0; i < t->ndim; i++) {
        shape[i] = t->shape[perm[i]];
        st[i] = t->stride[perm[i]];
        lst[i] = cs[perm[i]];
    }
    push_view(L, op, 1, t->ndim, shape, st, 0, lst, 0, VIEW_STRIDED);
}

static int l_transpose(lua_State *L) {
    const char *op = "tensor:transpose";
    hyb_tensor *t = argt(L, 1, op, 1);
    int d1 = lua_isnoneornil(L, 2) ? t->ndim - 2 : check_dim(L, 2, op, t->ndim, "dim 1");
    int d2 = lua_isnoneornil(L, 3) ? t->ndim - 1 : check_dim(L, 3, op, t->ndim, "dim 2");
    if (d1 < 0) return lhyb_error(L, "%s: a 1-d tensor has no two dims to swap", op);
    int perm[HYB_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++)
        perm[i] = i;
    perm[d1] = d2;
    perm[d2] = d1;
    lua_settop(L, 1);
    permute_view(L, op, perm);
    return 1;
}

static int l_permute(lua_State *L) {
    const char *op = "tensor:permute";
    hyb_tensor *t = argt(L, 1, op, 1);
    char buf[96];
    if (!lua_istable(L, 2) || (int)lua_rawlen(L, 2) != t->ndim)
        return lhyb_error(L,
                          "%s: argument 2 must be a table of the %d dims in their new order, "
                          "got %s",
                          op, t->ndim, lhyb_describe(L, 2, buf, sizeof buf));
    int perm[HYB_MAX_DIMS], seen[HYB_MAX_DIMS] = {0};
    for (int i = 0; i < t->ndim; i++) {
        lua_rawgeti(L, 2, i + 1);
        perm[i] = check_dim(L, -1, op, t->ndim, "permutation entry");
        lua_pop(L, 1);
        if (seen[perm[i]]++) return lhyb_error(L, "%s: dim %d appears twice", op, perm[i] + 1);
    }
    lua_settop(L, 1);
    permute_view(L, op, perm);
    return 1;
}

/* t:narrow(dim, start, length): start is 1-based */
static void narrow_at(lua_State *L, const char *op, int idx, int d, int64_t start, int64_t len) {
    hyb_tensor *t = lhyb_test_tensor(L, idx)->t;
    int64_t shape[HYB_MAX_DIMS], cs[HYB_MAX_DIMS];
    contig_strides(t->ndim, t->shape, cs);
    memcpy(shape, t->shape, sizeof shape);
    shape[d] = len;
    push_view(L, op, idx, t->ndim, shape, t->stride, (start - 1) * t->stride[d], cs,
              (start - 1) * cs[d], VIEW_STRIDED);
}

static int l_narrow(lua_State *L) {
    const char *op = "tensor:narrow";
    hyb_tensor *t = argt(L, 1, op, 1);
    int d = check_dim(L, 2, op, t->ndim, "dim");
    lua_Integer start = lhyb_check_int(L, 3, op, "start", 1, t->shape[d]);
    lua_Integer len = lhyb_check_int(L, 4, op, "length", 1, t->shape[d] - start + 1);
    lua_settop(L, 1);
    narrow_at(L, op, 1, d, start, len);
    return 1;
}

/* t:slice(dim, first, last): inclusive 1-based range (last may be negative: -1 = the end) */
static int l_slice(lua_State *L) {
    const char *op = "tensor:slice";
    hyb_tensor *t = argt(L, 1, op, 1);
    int d = check_dim(L, 2, op, t->ndim, "dim");
    int64_t n = t->shape[d];
    lua_Integer first = lhyb_check_int(L, 3, op, "first", -n, n);
    lua_Integer last = lua_isnoneornil(L, 4) ? n : lhyb_check_int(L, 4, op, "last", -n, n);
    if (first < 0) first += n + 1;
    if (last < 0) last += n + 1;
    if (first < 1 || last < first)
        return lhyb_error(L, "%s: empty range %lld..%lld of dim %d (size %lld)", op,
                          (long long)first, (long long)last, d + 1, (long long)n);
    lua_settop(L, 1);
    narrow_at(L, op, 1, d, first, last - first + 1);
    return 1;
}

/* t:split(size, dim) -> { pieces of `size` along dim (the last may be smaller) } */
static int l_split(lua_State *L) {
    const char *op = "tensor:split";
    hyb_tensor *t = argt(L, 1, op, 1);
    int d = lua_isnoneornil(L, 3) ? t->ndim - 1 : check_dim(L, 3, op, t->ndim, "dim");
    int64_t n = t->shape[d];
    lua_Integer size = lhyb_check_int(L, 2, op, "size", 1, n);
    lua_settop(L, 1);
    lua_newtable(L);
    int k = 0;
    for (int64_t s = 1; s <= n; s += size) {
        narrow_at(L, op, 1, d, s, s + size - 1 <= n ? size : n - s + 1);
        lua_rawseti(L, 2, ++k);
    }
    return 1;
}

/* t:expand(shape): size-1 dims (and new leading dims) repeated without copying; -1 keeps a dim */
static int l_expand(lua_State *L) {
    const char *op = "tensor:expand";
    hyb_tensor *t = argt(L, 1, op, 1);
    char buf[96], b1[64];
    if (!lua_istable(L, 2))
        return lhyb_error(L, "%s: argument 2 must be a shape table, got %s", op,
                          lhyb_describe(L, 2, buf, sizeof buf));
    int nd = (int)lua_rawlen(L, 2);
    if (nd < t->ndim || nd > HYB_MAX_DIMS)
        return lhyb_error(L, "%s: the shape must have %d to %d entries, got %d", op, t->ndim,
                          HYB_MAX_DIMS, nd);
    int64_t shape[HYB_MAX_DIMS], st[HYB_MAX_DIMS], lst[HYB_MAX_DIMS], cs[HYB_MAX_DIMS];
    contig_strides(t->ndim, t->shape, cs);
    for (int i = 0; i < nd; i++) {
        lua_rawgeti(L, 2, i + 1);
        int isnum = 0;
        lua_Integer v = lua_tointegerx(L, -1, &isnum);
        lua_pop(L, 1);
        int si = i - (nd - t->ndim);
        int64_t cur = si >= 0 ? t->shape[si] : 1;
        if (!isnum || (v < 1 && v != -1) || (v == -1 && si < 0))
            return lhyb_error(L, "%s: shape entry %d must be a positive integer (or -1 to keep)",
                              op, i + 1);
        if (v == -1) v = cur;
        if (cur != 1 && v != cur)
            return lhyb_error(L,
                              "%s: cannot expand %s to size %lld at dim %d (only size-1 dims "
                              "expand)",
                              op, shp(t, b1, sizeof b1), (long long)v, i + 1);
        shape[i] = v;
        st[i] = (si < 0 || cur != v) ? 0 : t->stride[si];
        lst[i] = (si < 0 || cur != v) ? 0 : cs[si];
    }
    lua_settop(L, 1);
    push_view(L, op, 1, nd, shape, st, 0, lst, 0, VIEW_EXPAND);
    return 1;
}

static int l_unsqueeze(lua_State *L) {
    const char *op = "tensor:unsqueeze";
    hyb_tensor *t = argt(L, 1, op, 1);
    if (t->ndim >= HYB_MAX_DIMS)
        return lhyb_error(L, "%s: tensors have at most %d dims", op, HYB_MAX_DIMS);
    int d = check_dim(L, 2, op, t->ndim + 1, "dim");
    int64_t shape[HYB_MAX_DIMS], st[HYB_MAX_DIMS], cs[HYB_MAX_DIMS], lst[HYB_MAX_DIMS];
    contig_strides(t->ndim, t->shape, cs);
    for (int i = 0, j = 0; i <= t->ndim; i++) {
        if (i == d) {
            shape[i] = 1, st[i] = 0, lst[i] = 0;
        } else {
            shape[i] = t->shape[j], st[i] = t->stride[j], lst[i] = cs[j];
            j++;
        }
    }
    lua_settop(L, 1);
    push_view(L, op, 1, t->ndim + 1, shape, st, 0, lst, 0, VIEW_STRIDED);
    return 1;
}

static int l_squeeze(lua_State *L) {
    const char *op = "tensor:squeeze";
    hyb_tensor *t = argt(L, 1, op, 1);
    int d = check_dim(L, 2, op, t->ndim, "dim");
    if (t->shape[d] != 1 || t->ndim == 1)
        return lhyb_error(L,
                          "%s: dim %d has size %lld (only a size-1 dim of a 2+-d tensor can "
                          "be removed)",
                          op, d + 1, (long long)t->shape[d]);
    int64_t shape[HYB_MAX_DIMS], st[HYB_MAX_DIMS], cs[HYB_MAX_DIMS], lst[HYB_MAX_DIMS];
    contig_strides(t->ndim, t->shape, cs);
    for (int i = 0, j = 0; i < t->ndim; i++) {
        if (i == d) continue;
        shape[j] = t->shape[i], st[j] = t->stride[i], lst[j] = cs[i];
        j++;
    }
    lua_settop(L, 1);
    push_view(L, op, 1, t->ndim - 1, shape, st, 0, lst, 0, VIEW_STRIDED);
    return 1;
}

/* t:detach(): the same data, off the tape */
static int l_detach(lua_State *L) {
    hyb_tensor *t = argbox(L, 1, "tensor:detach", 1)->t;
    lua_settop(L, 1);
    push_view(L, "tensor:detach", 1, t->ndim, t->shape, t->stride, 0, NULL, 0, -1);
    return 1;
}

/* hyb.cat({a, b, ...}, dim) */
static int bwd_cat(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                   hyb_tensor **gin) {
    (void)saved;
    int d = (int)n->iv[0];
    int64_t cs[HYB_MAX_DIMS], off = 0;
    contig_strides(n->ndim, n->shape, cs);
    for (int i = 0; i < n->n_in; i++) {
        if (gin[i]) {
            int64_t sh[4], sg[4], s4[4], sy[4];
            pad4c(in[i]->ndim, in[i]->shape, sh, sg);
            pad4(n->ndim, in[i]->shape, cs, 4, s4, sy);
            HYB_TRY(n->be->ewise(n->be, HYB_EW_ADD, gin[i]->data, sg, gin[i]->data, sg,
                                 (const float *)gy->data + off * cs[d], sy, NULL, NULL, sh, 0, 0));
        }
        off += in[i]->shape[d];
    }
    return HYB_OK;
}

static int l_cat(lua_State *L) {
    const char *op = "hyb.cat";
    char buf[96], b1[64], b2[64];
    if (!lua_istable(L, 1))
        return lhyb_error(L, "%s: argument 1 must be a table of tensors, got %s", op,
                          lhyb_describe(L, 1, buf, sizeof buf));
    int k = (int)lua_rawlen(L, 1);
    if (k < 1 || k > MAXIN) return lhyb_error(L, "%s: needs 1 to %d tensors, got %d", op, MAXIN, k);
    lua_settop(L, 2);
    luaL_checkstack(L, k + 8, op);
    int base = lua_gettop(L) + 1;
    for (int i = 0; i < k; i++) {
        lua_rawgeti(L, 1, i + 1);
        if (!lhyb_test_tensor(L, -1))
            return lhyb_error(L, "%s: entry %d of argument 1 must be a hyb.tensor, got %s", op,
                              i + 1, lhyb_describe(L, -1, buf, sizeof buf));
        argt(L, -1, op, 1);
    }
    hyb_tensor *t0 = lhyb_test_tensor(L, base)->t;
    int d = lua_isnil(L, 2) ? t0->ndim - 1 : check_dim(L, 2, op, t0->ndim, "dim");
    int64_t shape[HYB_MAX_DIMS];
    memcpy(shape, t0->shape, sizeof shape);
    shape[d] = 0;
    for (int i = 0; i < k; i++) {
        hyb_tensor *t = lhyb_test_tensor(L, base + i)->t;
        same_device(L, op, t0, t);
        int ok = t->ndim == t0->ndim;
        for (int j = 0; ok && j < t->ndim; j++)
            ok = j == d || t->shape[j] == t0->shape[j];
        if (!ok)
            return lhyb_error(L,
                              "%s: tensor %d is %s and tensor 1 is %s: they differ outside dim "
                              "%d",
                              op, i + 1, shp(t, b1, sizeof b1), shp(t0, b2, sizeof b2), d + 1);
        shape[d] += t->shape[d];
    }
    const hyb_backend *be = BE(L, op, t0, ewise);
    lhyb_tensor *ob = new_out(L, op, be, t0->ndim, shape);
    int64_t cs[HYB_MAX_DIMS], off = 0;
    contig_strides(t0->ndim, shape, cs);
    int idx[MAXIN];
    for (int i = 0; i < k; i++) {
        hyb_tensor *t = lhyb_test_tensor(L, base + i)->t;
        int64_t sh[4], sa[4], s4[4], sy[4];
        pad4(t->ndim, t->shape, t->stride, 4, sh, sa);
        pad4(t->ndim, t->shape, cs, 4, s4, sy);
        check_rc(L,
                 be->ewise(be, HYB_EW_COPY, (float *)ob->t->data + off * cs[d], sy, t->data, sa,
                           NULL, NULL, NULL, NULL, sh, 0, 0),
                 op);
        off += t->shape[d];
        idx[i] = base + i;
    }
    lnode *n = record(L, op, be, -1, bwd_cat, idx, k, NULL, 0);
    if (n) n->iv[0] = d;
    return 1;
}

/* ---- along an axis --------------------------------------------------------------------------- */

static int bwd_axis(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                    hyb_tensor **gin) {
    if (!gin[0]) return HYB_OK;
    return n->be->axis_bwd(n->be, (int)n->iv[0], in[0]->data, saved[0]->data, gy->data,
                           gin[0]->data, n->iv[1], n->iv[2], n->iv[3], n->fv[0]);
}

/* op along dim (stack 2; nil = all elements when `all`), keepdim at stack 3 */
static int axis_op(lua_State *L, const char *op, int axop, int mean, int all) {
    lua_settop(L, 3);
    hyb_tensor *t = argt(L, 1, op, 1);
    const hyb_backend *be = BE(L, op, t, axis);
    t = make_contig(L, 1, op);
    int64_t outer = 1, n, inner = 1, shape[HYB_MAX_DIMS];
    int nd;
    if (all) {
        n = hyb_tensor_numel(t);
        nd = 1;
        shape[0] = axop >= HYB_AX_SOFTMAX ? n : 1;
    } else {
        int d = lua_isnil(L, 2) ? t->ndim - 1 : check_dim(L, 2, op, t->ndim, "dim");
        int keep = lua_toboolean(L, 3);
        for (int i = 0; i < d; i++)
            outer *= t->shape[i];
        for (int i = d + 1; i < t->ndim; i++)
            inner *= t->shape[i];
        n = t->shape[d];
        nd = 0;
        for (int i = 0; i < t->ndim; i++) {
            if (i == d && axop < HYB_AX_SOFTMAX) {
                if (keep || t->ndim == 1) shape[nd++] = 1;
            } else {
                shape[nd++] = t->shape[i];
            }
        }
    }
    float alpha = mean ? 1.0f / (float)n : 1.0f;
    lhyb_tensor *ob = new_out(L, op, be, nd, shape);
    int out = lua_gettop(L);
    check_rc(L, be->axis(be, axop, t->data, ob->t->data, outer, n, inner, alpha), op);
    nan_check(L, op, ob->t);
    int in[1] = {1}, sv[1] = {out};
    lnode *nd_ = record(L, op, be, out, bwd_axis, in, 1, sv, 1);
    if (nd_) {
        nd_->iv[0] = axop;
        nd_->iv[1] = outer;
        nd_->iv[2] = n;
        nd_->iv[3] = inner;
        nd_->fv[0] = alpha;
    }
    lua_settop(L, out);
    return 1;
}

static int l_softmax(lua_State *L) {
    return axis_op(L, "hyb.softmax", HYB_AX_SOFTMAX, 0, 0);
}
static int l_log_softmax(lua_State *L) {
    return axis_op(L, "hyb.log_softmax", HYB_AX_LOGSOFTMAX, 0, 0);
}
static int l_logsumexp(lua_State *L) {
    return axis_op(L, "hyb.logsumexp", HYB_AX_LSE, 0, 0);
}
static int l_cumsum(lua_State *L) {
    return axis_op(L, "hyb.cumsum", HYB_AX_CUMSUM, 0, 0);
}
static int l_sum_all(lua_State *L) {
    return axis_op(L, "hyb.sum_all", HYB_AX_SUM, 0, 1);
}
static int l_mean_all(lua_State *L) {
    return axis_op(L, "hyb.mean_all", HYB_AX_SUM, 1, 1);
}

/* t:sum(dim[, keepdim]) / mean / max: a tensor along dim; without dim the old whole-tensor number
 * (upvalue 1: lua_tensor.c's function). */
static int axis_or_number(lua_State *L, const char *op, int axop, int mean) {
    if (lua_isnoneornil(L, 2) && lhyb_test_tensor(L, 1)) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, 1);
        return 1;
    }
    return axis_op(L, op, axop, mean, 0);
}
static int l_sum(lua_State *L) {
    return axis_or_number(L, "hyb.sum", HYB_AX_SUM, 0);
}
static int l_mean(lua_State *L) {
    return axis_or_number(L, "hyb.mean", HYB_AX_SUM, 1);
}
static int l_max(lua_State *L) {
    return axis_or_number(L, "hyb.max", HYB_AX_MAX, 0);
}

/* ---- matmul ---------------------------------------------------------------------------------- */

/* How a [..., R, C] operand is read by a GEMM: trans, ld, one batch stride over all leading dims
 * (0 when there are none). 0 when its strides do not allow it (then it is copied first). */
static int mm_layout(const hyb_tensor *t, int *trans, int *ld, int64_t *bstride, int64_t *batch) {
    int nd = t->ndim;
    int64_t R = t->shape[nd - 2], C = t->shape[nd - 1], sr = t->stride[nd - 2],
            sc = t->stride[nd - 1];
    if (C == 1) sc = 1;
    if (R == 1) sr = C;
    if (sc == 1 && sr >= C && sr < INT32_MAX) {
        *trans = 0, *ld = (int)sr;
    } else if (sr == 1 && sc >= R && sc < INT32_MAX) {
        *trans = 1, *ld = (int)sc;
    } else {
        return 0;
    }
    *batch = 1;
    *bstride = 0;
    int first = 1;
    for (int i = nd - 3; i >= 0; i--) {
        if (t->shape[i] == 1) continue;
        if (first) {
            *bstride = t->stride[i];
            first = 0;
        } else if (t->stride[i] != *bstride * *batch) {
            return 0;
        }
        *batch *= t->shape[i];
    }
    if (*batch > 1 && *bstride == 0) return 0;
    return 1;
}

static int bwd_matmul(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                      hyb_tensor **gin) {
    (void)saved;
    const hyb_backend *be = n->be;
    int M = (int)n->iv[0], N = (int)n->iv[1], K = (int)n->iv[2], batch = (int)n->iv[3];
    int tA, tB, lda, ldb;
    int64_t sA, sB, bA, bB;
    mm_layout(in[0], &tA, &lda, &sA, &bA);
    mm_layout(in[1], &tB, &ldb, &sB, &bB);
    if (bA == 1) sA = 0;
    if (bB == 1) sB = 0;
    const float *A = in[0]->data, *B = in[1]->data, *G = gy->data;
    int64_t sG = (int64_t)M * N;
    if (gin[0]) { /* dA[M,K] += dC op(B)^T */
        if (sA == 0 && batch > 1)
            for (int i = 0; i < batch; i++)
                HYB_TRY(be->sgemm(be, 0, !tB, M, K, N, 1.0f, G + i * sG, N, B + i * sB, ldb, 1.0f,
                                  gin[0]->data, K));
        else
            HYB_TRY(be->sgemm_batched(be, 0, !tB, M, K, N, 1.0f, G, N, sG, B, ldb, sB, 1.0f,
                                      gin[0]->data, K, (int64_t)M * K, batch));
    }
    if (gin[1]) { /* dB[K,N] += op(A)^T dC */
        if (sB == 0 && batch > 1) {
            if (!tA && sA == (int64_t)M * lda && lda == K) /* rows of every batch in one GEMM */
                HYB_TRY(
                    be->sgemm(be, 1, 0, K, N, M * batch, 1.0f, A, K, G, N, 1.0f, gin[1]->data, N));
            else
                for (int i = 0; i < batch; i++)
                    HYB_TRY(be->sgemm(be, !tA, 0, K, N, M, 1.0f, A + i * sA, lda, G + i * sG, N,
                                      1.0f, gin[1]->data, N));
        } else {
            HYB_TRY(be->sgemm_batched(be, !tA, 0, K, N, M, 1.0f, A, lda, sA, G, N, sG, 1.0f,
                                      gin[1]->data, N, (int64_t)K * N, batch));
        }
    }
    return HYB_OK;
}

/* hyb.matmul(a, b): a [..., M, K] @ b [..., K, N] -> [..., M, N]; batch dims equal, or absent /
 * all 1 on one side (that operand is used for every batch entry) */
static int l_matmul(lua_State *L) {
    const char *op = "hyb.matmul";
    char b1[64], b2[64];
    lua_settop(L, 2);
    hyb_tensor *a = argt(L, 1, op, 1), *b = argt(L, 2, op, 2);
    same_device(L, op, a, b);
    if (a->ndim < 2 || b->ndim < 2)
        return lhyb_error(L, "%s: both operands need 2+ dims, got %s and %s", op,
                          shp(a, b1, sizeof b1), shp(b, b2, sizeof b2));
    int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], K2 = b->shape[b->ndim - 2],
            N = b->shape[b->ndim - 1];
    if (K != K2)
        return lhyb_error(L, "%s: %s @ %s: inner dims differ (%lld vs %lld)", op,
                          shp(a, b1, sizeof b1), shp(b, b2, sizeof b2), (long long)K,
                          (long long)K2);
    if (M >= INT32_MAX || N >= INT32_MAX || K >= INT32_MAX)
        return lhyb_error(L, "%s: a matrix dim is too large for the GEMM", op);
    const hyb_backend *be = BE(L, op, a, sgemm_batched);
    int64_t ba = numel_of(a->ndim - 2, a->shape), bb = numel_of(b->ndim - 2, b->shape);
    int same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim - 2; i++)
        same = a->shape[i] == b->shape[i];
    if (!same && ba > 1 && bb > 1)
        return lhyb_error(L,
                          "%s: batch dims of %s and %s differ (one side's batch dims must "
                          "equal the other's or be absent; expand first)",
                          op, shp(a, b1, sizeof b1), shp(b, b2, sizeof b2));
    int tA, tB, lda, ldb;
    int64_t sA, sB, nA, nB;
    if (!mm_layout(a, &tA, &lda, &sA, &nA)) a = make_contig(L, 1, op);
    if (!mm_layout(b, &tB, &ldb, &sB, &nB)) b = make_contig(L, 2, op);
    mm_layout(a, &tA, &lda, &sA, &nA);
    mm_layout(b, &tB, &ldb, &sB, &nB);
    if (nA == 1) sA = 0;
    if (nB == 1) sB = 0;
    int64_t shape[HYB_MAX_DIMS];
    const hyb_tensor *bt = ba >= bb ? a : b;
    int nd = bt->ndim;
    if (nd > HYB_MAX_DIMS) nd = HYB_MAX_DIMS;
    for (int i = 0; i < nd - 2; i++)
        shape[i] = bt->shape[i];
    shape[nd - 2] = M;
    shape[nd - 1] = N;
    int64_t batch = ba > bb ? ba : bb;
    if (batch >= INT32_MAX) return lhyb_error(L, "%s: too many batch entries", op);
    lhyb_tensor *ob = new_out(L, op, be, nd, shape);
    if (sB == 0 && batch > 1 && !tA && sA == M * lda && lda == K)
        check_rc(L,
                 be->sgemm(be, 0, tB, (int)(M * batch), (int)N, (int)K, 1.0f, a->data, lda, b->data,
                           ldb, 0.0f, ob->t->data, (int)N),
                 op);
    else
        check_rc(L,
                 be->sgemm_batched(be, tA, tB, (int)M, (int)N, (int)K, 1.0f, a->data, lda, sA,
                                   b->data, ldb, sB, 0.0f, ob->t->data, (int)N, M * N, (int)batch),
                 op);
    nan_check(L, op, ob->t);
    int in[2] = {1, 2};
    lnode *n = record(L, op, be, -1, bwd_matmul, in, 2, NULL, 0);
    if (n) {
        n->iv[0] = M;
        n->iv[1] = N;
        n->iv[2] = K;
        n->iv[3] = batch;
    }
    return 1;
}

/* ---- masks, conv, norm, gather --------------------------------------------------------------- */

static int bwd_tri(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                   hyb_tensor **gin) {
    (void)in, (void)saved;
    if (!gin[0]) return HYB_OK;
    return n->be->tri(n->be, gy->data, gin[0]->data, n->iv[0], n->iv[1], n->iv[2], n->iv[3],
                      (int)n->iv[4], 1);
}

static int tri_op(lua_State *L, const char *op, int upper) {
    lua_settop(L, 2);
    hyb_tensor *t = argt(L, 1, op, 1);
    char b1[64];
    if (t->ndim < 2)
        return lhyb_error(L, "%s: needs a [..., R, C] tensor, got %s", op, shp(t, b1, sizeof b1));
    lua_Integer k =
        lua_isnil(L, 2) ? 0 : lhyb_check_int(L, 2, op, "diagonal", -(1LL << 40), 1LL << 40);
    const hyb_backend *be = BE(L, op, t, tri);
    t = make_contig(L, 1, op);
    int64_t R = t->shape[t->ndim - 2], C = t->shape[t->ndim - 1];
    int64_t batch = hyb_tensor_numel(t) / (R * C);
    lhyb_tensor *ob = new_out(L, op, be, t->ndim, t->shape);
    check_rc(L, be->tri(be, t->data, ob->t->data, batch, R, C, k, upper, 0), op);
    int in[1] = {1};
    lnode *n = record(L, op, be, -1, bwd_tri, in, 1, NULL, 0);
    if (n) {
        n->iv[0] = batch, n->iv[1] = R, n->iv[2] = C, n->iv[3] = k, n->iv[4] = upper;
    }
    return 1;
}
static int l_tril(lua_State *L) {
    return tri_op(L, "hyb.tril", 0);
}
static int l_triu(lua_State *L) {
    return tri_op(L, "hyb.triu", 1);
}

static int bwd_conv(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                    hyb_tensor **gin) {
    (void)saved;
    return n->be->conv1d_causal_bwd(n->be, in[0]->data, in[1]->data, gy->data,
                                    gin[0] ? gin[0]->data : NULL, gin[1] ? gin[1]->data : NULL,
                                    n->iv[0], n->iv[1], n->iv[2], n->iv[3]);
}

/* hyb.conv1d_causal(x [B, T, C] or [T, C], w [C, K]) -> x's shape */
static int l_conv1d(lua_State *L) {
    const char *op = "hyb.conv1d_causal";
    char b1[64], b2[64];
    lua_settop(L, 2);
    hyb_tensor *x = argt(L, 1, op, 1), *w = argt(L, 2, op, 2);
    same_device(L, op, x, w);
    if ((x->ndim != 2 && x->ndim != 3) || w->ndim != 2 || w->shape[0] != x->shape[x->ndim - 1])
        return lhyb_error(L, "%s: x must be [B, T, C] or [T, C] and w [C, K], got %s and %s", op,
                          shp(x, b1, sizeof b1), shp(w, b2, sizeof b2));
    const hyb_backend *be = BE(L, op, x, conv1d_causal);
    x = make_contig(L, 1, op);
    w = make_contig(L, 2, op);
    int64_t B = x->ndim == 3 ? x->shape[0] : 1, T = x->shape[x->ndim - 2],
            C = x->shape[x->ndim - 1], K = w->shape[1];
    lhyb_tensor *ob = new_out(L, op, be, x->ndim, x->shape);
    check_rc(L, be->conv1d_causal(be, x->data, w->data, ob->t->data, B, T, C, K), op);
    nan_check(L, op, ob->t);
    int in[2] = {1, 2};
    lnode *n = record(L, op, be, -1, bwd_conv, in, 2, NULL, 0);
    if (n) n->iv[0] = B, n->iv[1] = T, n->iv[2] = C, n->iv[3] = K;
    return 1;
}

static int bwd_rms(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                   hyb_tensor **gin) {
    return n->be->rmsnorm_bwd(n->be, in[0]->data, in[1]->data, saved[0]->data, gy->data,
                              gin[0] ? gin[0]->data : NULL, gin[1] ? gin[1]->data : NULL, n->iv[0],
                              n->iv[1]);
}

/* hyb.rms_norm(x [..., D], w [D][, eps = 1e-5]) */
static int l_rms_norm(lua_State *L) {
    const char *op = "hyb.rms_norm";
    char b1[64], b2[64];
    lua_settop(L, 3);
    hyb_tensor *x = argt(L, 1, op, 1), *w = argt(L, 2, op, 2);
    same_device(L, op, x, w);
    double eps = lua_isnil(L, 3) ? 1e-5 : lhyb_check_number(L, 3, op, "eps");
    int64_t D = x->shape[x->ndim - 1];
    if (w->ndim != 1 || w->shape[0] != D)
        return lhyb_error(L, "%s: w must be [%lld] (x's last dim), x is %s and w %s", op,
                          (long long)D, shp(x, b1, sizeof b1), shp(w, b2, sizeof b2));
    const hyb_backend *be = hyb_backend_get(x->device);
    if (!be) return lhyb_raise_hyb(L, op);
    x = make_contig(L, 1, op);
    w = make_contig(L, 2, op);
    int64_t rows = hyb_tensor_numel(x) / D;
    lhyb_tensor *ob = new_out(L, op, be, x->ndim, x->shape);
    int out = lua_gettop(L);
    lhyb_tensor *rb = new_out(L, op, be, 1, &rows);
    int rs = lua_gettop(L);
    check_rc(L,
             be->rmsnorm_fwd(be, x->data, w->data, ob->t->data, rb->t->data, rows, D, (float)eps),
             op);
    nan_check(L, op, ob->t);
    int in[2] = {1, 2}, sv[1] = {rs};
    lnode *n = record(L, op, be, out, bwd_rms, in, 2, sv, 1);
    if (n) n->iv[0] = rows, n->iv[1] = D;
    lua_settop(L, out);
    return 1;
}

static int bwd_gather(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy,
                      hyb_tensor **gin) {
    (void)saved;
    if (!gin[0]) return HYB_OK;
    return n->be->gather_bwd(n->be, in[1]->data, gy->data, gin[0]->data, n->iv[0], n->iv[1],
                             n->iv[2], n->iv[3]);
}

/* hyb.gather(x, dim, index): index i32 with x's shape except along dim (values 0-based) */
static int l_gather(lua_State *L) {
    const char *op = "hyb.gather";
    char b1[64], b2[64];
    lua_settop(L, 3);
    hyb_tensor *x = argt(L, 1, op, 1);
    int d = check_dim(L, 2, op, x->ndim, "dim");
    hyb_tensor *ix = argbox(L, 3, op, 3)->t;
    if (ix->dtype != HYB_I32)
        return lhyb_error(L, "%s: argument 3 (index) must be an i32 tensor, it is %s", op,
                          hyb_dtype_name(ix->dtype));
    same_device(L, op, x, ix);
    int ok = ix->ndim == x->ndim;
    for (int i = 0; ok && i < x->ndim; i++)
        ok = i == d || ix->shape[i] == x->shape[i];
    if (!ok)
        return lhyb_error(L, "%s: index %s must have x's shape %s except along dim %d", op,
                          shp(ix, b1, sizeof b1), shp(x, b2, sizeof b2), d + 1);
    if (!is_contig(ix)) return lhyb_error(L, "%s: the index must be contiguous", op);
    const hyb_backend *be = BE(L, op, x, gather);
    lua_pushvalue(L, 3);
    lua_replace(L, 2); /* index at 2 so that the node's inputs are (x, index) */
    x = make_contig(L, 1, op);
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < d; i++)
        outer *= x->shape[i];
    for (int i = d + 1; i < x->ndim; i++)
        inner *= x->shape[i];
    lhyb_tensor *ob = new_out(L, op, be, ix->ndim, ix->shape);
    check_rc(
        L, be->gather(be, x->data, ix->data, ob->t->data, outer, x->shape[d], inner, ix->shape[d]),
        op);
    int in[2] = {1, 2};
    lnode *n = record(L, op, be, -1, bwd_gather, in, 2, NULL, 0);
    if (n) n->iv[0] = outer, n->iv[1] = x->shape[d], n->iv[2] = inner, n->iv[3] = ix->shape[d];
    return 1;
}

/* ---- creation -------------------------------------------------------------------------------- */

/* hyb.full(shape, value) / hyb.ones(shape) */
static int full_impl(lua_State *L, const char *op, float v) {
    int64_t shape[HYB_MAX_DIMS];
    int nd = read_shape(L, 1, op, 1, shape);
    for (int i = 0; i < nd; i++)
        if (shape[i] < 1) return lhyb_error(L, "%s: shape entries must be positive", op);
    lhyb_tensor *b = new_out(L, op, hyb_backend_cpu(), nd, shape);
    float *p = b->t->data;
    int64_t n = hyb_tensor_numel(b->t);
    for (int64_t i = 0; i < n; i++)
        p[i] = v;
    return 1;
}
static int l_ones(lua_State *L) {
    return full_impl(L, "hyb.ones", 1.0f);
}
static int l_full(lua_State *L) {
    return full_impl(L, "hyb.full", (float)lhyb_check_number(L, 2, "hyb.full", "value"));
}

/* hyb.arange(n) -> 0..n-1; hyb.arange(a, b[, step]) -> a, a+step, ... < b */
static int l_arange(lua_State *L) {
    const char *op = "hyb.arange";
    double a = 0, b, s = 1;
    if (lua_isnoneornil(L, 2)) {
        b = lhyb_check_number(L, 1, op, "n");
    } else {
        a = lhyb_check_number(L, 1, op, "start");
        b = lhyb_check_number(L, 2, op, "stop");
        if (!lua_isnoneornil(L, 3)) s = lhyb_check_number(L, 3, op, "step");
    }
    if (s == 0 || !isfinite(a) || !isfinite(b) || !isfinite(s))
        return lhyb_error(L, "%s: bad range %g, %g, step %g", op, a, b, s);
    double cnt = ceil((b - a) / s);
    if (cnt < 1 || cnt > (double)(1LL << 32))
        return lhyb_error(L, "%s: the range %g to %g by %g is empty or too long", op, a, b, s);
    int64_t n = (int64_t)cnt;
    lhyb_tensor *t = new_out(L, op, hyb_backend_cpu(), 1, &n);
    float *p = t->t->data;
    for (int64_t i = 0; i < n; i++)
        p[i] = (float)(a + s * (double)i);
    return 1;
}

/* hyb.from(nested table of numbers): the shape from the nesting */
static int l_from(lua_State *L) {
    const char *op = "hyb.from";
    char buf[96];
    int64_t shape[HYB_MAX_DIMS];
    int nd = 0;
    lua_settop(L, 1);
    if (!lua_istable(L, 1))
        return lhyb_error(L, "%s: argument 1 must be a (nested) table of numbers, got %s", op,
                          lhyb_describe(L, 1, buf, sizeof buf));
    lua_pushvalue(L, 1);
    while (lua_istable(L, -1)) {
        if (nd == HYB_MAX_DIMS) return lhyb_error(L, "%s: more than %d levels", op, HYB_MAX_DIMS);
        shape[nd++] = (int64_t)lua_rawlen(L, -1);
        if (shape[nd - 1] < 1) return lhyb_error(L, "%s: an empty table at depth %d", op, nd);
        lua_rawgeti(L, -1, 1);
    }
    lua_settop(L, 1);
    /* hyb.tensor(shape, values) checks every entry and the nesting */
    lua_getglobal(L, "hyb");
    lua_getfield(L, -1, "tensor");
    lua_createtable(L, nd, 0);
    for (int i = 0; i < nd; i++) {
        lua_pushinteger(L, shape[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushvalue(L, 1);
    lua_call(L, 2, 1);
    return 1;
}

/* ---- autodiff API ---------------------------------------------------------------------------- */

/* t:requires_grad([flag = true]) -> t */
static int t_requires_grad(lua_State *L) {
    hyb_tensor *t = argbox(L, 1, "tensor:requires_grad", 1)->t;
    int flag = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
    if (lua_getiuservalue(L, 1, UV_NODE) == LUA_TUSERDATA && !flag)
        return lhyb_error(L, "tensor:requires_grad: the tensor is the result of an op on the "
                             "tape; use t:detach() for a copy off the tape");
    lua_pop(L, 1);
    if (flag && t->dtype != HYB_F32)
        return lhyb_error(L,
                          "tensor:requires_grad: only f32 tensors have gradients (this one is "
                          "%s)",
                          hyb_dtype_name(t->dtype));
    t->requires_grad = flag;
    lua_settop(L, 1);
    return 1;
}

static int t_is_leaf(lua_State *L) {
    argbox(L, 1, "tensor:is_leaf", 1);
    lua_pushboolean(L, lua_getiuservalue(L, 1, UV_NODE) != LUA_TUSERDATA);
    return 1;
}

/* t:grad_fn() -> the name of the op that made t ("hyb.matmul") or nil */
static int t_grad_fn(lua_State *L) {
    argbox(L, 1, "tensor:grad_fn", 1);
    if (lua_getiuservalue(L, 1, UV_NODE) != LUA_TUSERDATA) return 0;
    lua_pushstring(L, ((lnode *)lua_touserdata(L, -1))->op);
    return 1;
}

static int t_zero_grad(lua_State *L) {
    hyb_tensor *t = argbox(L, 1, "tensor:zero_grad", 1)->t;
    if (t->grad) {
        const hyb_backend *be = hyb_backend_get(t->grad->device);
        if (be) be->memset0(be, t->grad->data, hyb_tensor_nbytes(t->grad));
    }
    lua_pushnil(L);
    lua_setiuservalue(L, 1, UV_GRAD);
    lua_settop(L, 1);
    return 1;
}

/* t:has_nan() -> true when some element is NaN or +-Inf */
static int t_has_nan(lua_State *L) {
    hyb_tensor *t = argt(L, 1, "tensor:has_nan", 1);
    lua_settop(L, 1);
    t = make_contig(L, 1, "tensor:has_nan");
    int64_t n = hyb_tensor_numel(t);
    float *h = malloc((size_t)n * sizeof(float));
    if (!h || hyb_tensor_download(t, h) != HYB_OK) {
        free(h);
        return lhyb_error(L, "tensor:has_nan: could not read the tensor");
    }
    int bad = 0;
    for (int64_t i = 0; i < n && !bad; i++)
        bad = !isfinite(h[i]);
    free(h);
    lua_pushboolean(L, bad);
    return 1;
}

/* hyb.no_grad(fn, ...) -> fn(...) with no op recorded */
static int l_no_grad(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    int saved = g_grad_on;
    g_grad_on = 0;
    int rc = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    g_grad_on = saved;
    if (rc != LUA_OK) return lua_error(L);
    return lua_gettop(L);
}

int lhyb_set_grad_enabled(int on) {
    int old = g_grad_on;
    g_grad_on = on;
    return old;
}

static int l_grad_enabled(lua_State *L) {
    lua_pushboolean(L, g_grad_on);
    return 1;
}

static int l_check_nan(lua_State *L) {
    int old = g_check_nan;
    if (!lua_isnoneornil(L, 1)) g_check_nan = lua_toboolean(L, 1);
    lua_pushboolean(L, old);
    return 1;
}

/* The function hyb.grad(f) returns: df(arg1, ...) -> d f / d arg1 (a tensor, or a table of
 * tensors with the same keys), f's value (a number). Upvalues: f, argnum. */
static int grad_call(lua_State *L) {
    const char *op = "hyb.grad";
    int nargs = lua_gettop(L);
    int argnum = (int)lua_tointeger(L, lua_upvalueindex(2));
    if (argnum > nargs)
        return lhyb_error(L,
                          "%s: the function is differentiated in argument %d but got %d "
                          "arguments",
                          op, argnum, nargs);
    int saved = g_grad_on;
    g_grad_on = 1;
    /* leaves: detached aliases of the argument's tensors */
    int istab = lua_istable(L, argnum);
    lua_newtable(L);
    int leaves = lua_gettop(L);
    if (istab) {
        lua_newtable(L);
        int copy = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, argnum)) {
            if (lhyb_test_tensor(L, -1)) {
                argt(L, -1, op, argnum);
                lua_pushcfunction(L, l_detach);
                lua_pushvalue(L, -2);
                lua_call(L, 1, 1);
                lhyb_test_tensor(L, -1)->t->requires_grad = 1;
                lua_pushvalue(L, -3);
                lua_pushvalue(L, -2);
                lua_rawset(L, leaves);
                lua_pushvalue(L, -3);
                lua_insert(L, -2);
                lua_rawset(L, copy);
                lua_pop(L, 1);
            } else {
                lua_pushvalue(L, -2);
                lua_insert(L, -2);
                lua_rawset(L, copy);
            }
        }
        lua_replace(L, argnum);
    } else {
        argt(L, argnum, op, argnum);
        lua_pushcfunction(L, l_detach);
        lua_pushvalue(L, argnum);
        lua_call(L, 1, 1);
        lhyb_test_tensor(L, -1)->t->requires_grad = 1;
        lua_pushvalue(L, -1);
        lua_rawseti(L, leaves, 1);
        lua_replace(L, argnum);
    }
    /* call f(args...) */
    lua_pushvalue(L, lua_upvalueindex(1));
    for (int i = 1; i <= nargs; i++)
        lua_pushvalue(L, i);
    int rc = lua_pcall(L, nargs, 1, 0);
    g_grad_on = saved;
    if (rc != LUA_OK) return lua_error(L);
    int val = lua_gettop(L);
    lhyb_tensor *vb = lhyb_test_tensor(L, val);
    if (!vb)
        return lhyb_error(L, "%s: the function must return a one-element hyb.tensor, got %s", op,
                          lua_typename(L, lua_type(L, val)));
    if (hyb_tensor_numel(vb->t) != 1) {
        char b1[64];
        return lhyb_error(L, "%s: the function must return one element, it returned %s", op,
                          shp(vb->t, b1, sizeof b1));
    }
    float v = 0;
    if (vb->t->requires_grad) {
        lua_pushcfunction(L, t_backward);
        lua_pushvalue(L, val);
        lua_call(L, 1, 0);
    }
    check_rc(L, hyb_tensor_download(vb->t, &v), op);
    /* the gradients (zeros where f did not depend on a tensor) */
    lua_newtable(L);
    int out = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, leaves)) {
        int leaf = lua_gettop(L);
        lua_getiuservalue(L, leaf, UV_GRAD);
        if (!lhyb_test_tensor(L, -1)) {
            lua_pop(L, 1);
            leaf_grad(L, leaf);
            lua_getiuservalue(L, leaf, UV_GRAD);
        }
        lua_pushvalue(L, leaf - 1);
        lua_insert(L, -2);
        lua_rawset(L, out);
        lua_pop(L, 1);
    }
    if (!istab) lua_rawgeti(L, out, 1);
    lua_pushnumber(L, v);
    return 2;
}

/* hyb.grad(f[, {argnum = 1}]) */
static int l_grad(lua_State *L) {
    static const char *const allowed[] = {"argnum", NULL};
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_Integer argnum = 1;
    if (lhyb_check_opts(L, 2, "hyb.grad", allowed))
        argnum = lhyb_opt_field_int(L, 2, "hyb.grad", "argnum", 1, 64, 1);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, argnum);
    lua_pushcclosure(L, grad_call, 2);
    return 1;
}

/* ---- printing -------------------------------------------------------------------------------- */

static void fmt_num(char *buf, size_t n, float v, int sci, int ints) {
    if (isnan(v))
        snprintf(buf, n, "nan");
    else if (isinf(v))
        snprintf(buf, n, v > 0 ? "inf" : "-inf");
    else if (ints)
        snprintf(buf, n, "%.0f.", (double)v);
    else if (sci)
        snprintf(buf, n, "%.4e", (double)v);
    else
        snprintf(buf, n, "%.4f", (double)v);
}

typedef struct pctx {
    luaL_Buffer *b;
    const float *h;
    const hyb_tensor *t;
    int sci, ints, width, summarize;
} pctx;

#define EDGE 3

static void print_rec(pctx *c, int d, int64_t off, int indent) {
    const hyb_tensor *t = c->t;
    int64_t n = t->shape[d];
    char num[48];
    luaL_addchar(c->b, '[');
    for (int64_t i = 0; i < n; i++) {
        if (c->summarize && n > 2 * EDGE && i == EDGE) {
            luaL_addstring(c->b, d == t->ndim - 1 ? "..., " : "...,\n");
            if (d != t->ndim - 1)
                for (int k = 0; k < indent + 1; k++)
                    luaL_addchar(c->b, ' ');
            i = n - EDGE;
        }
        int64_t o = off + i * t->stride[d];
        if (d == t->ndim - 1) {
            fmt_num(num, sizeof num, c->h[o], c->sci, c->ints);
            for (int k = (int)strlen(num); k < c->width; k++)
                luaL_addchar(c->b, ' ');
            luaL_addstring(c->b, num);
        } else {
            print_rec(c, d + 1, o, indent + 1);
        }
        if (i + 1 < n) {
            luaL_addchar(c->b, ',');
            if (d == t->ndim - 1) {
                luaL_addchar(c->b, ' ');
            } else {
                for (int k = d; k < t->ndim - 1; k++)
                    luaL_addchar(c->b, '\n');
                for (int k = 0; k < indent + 1; k++)
                    luaL_addchar(c->b, ' ');
            }
        }
    }
    luaL_addchar(c->b, ']');
}

/* tostring(t): values like torch (summarised past 1000 elements), then shape, dtype, device and
 * the autodiff state. Upvalue 1: lua_tensor.c's short form (closed/stale tensors, other dtypes). */
static int t_tostring(lua_State *L) {
    lhyb_tensor *b = lhyb_test_tensor(L, 1);
    if (!b || !b->t || (b->genp && *b->genp != b->gen) || b->t->dtype == HYB_F16 ||
        b->t->dtype == HYB_BF16 || b->t->dtype > HYB_I32) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_pushvalue(L, 1);
        lua_call(L, 1, 1);
        return 1;
    }
    hyb_tensor *t = b->t;
    lua_settop(L, 1);
    int64_t n = hyb_tensor_numel(t);
    /* a contiguous f32 host copy */
    hyb_tensor *c = NULL;
    float *h = malloc((size_t)n * sizeof(float));
    if (!h) return lhyb_error(L, "tostring: out of memory");
    if (t->dtype == HYB_I32) {
        const int32_t *src = t->data;
        if (t->device != HYB_DEV_CPU) {
            free(h);
            lua_pushstring(L, "hyb.tensor(i32 on a device)");
            return 1;
        }
        c = hyb_tensor_clone(t);
        src = c ? c->data : NULL;
        for (int64_t i = 0; src && i < n; i++)
            h[i] = (float)src[i];
    } else {
        if (is_contig(t)) {
            if (hyb_tensor_download(t, h) != HYB_OK) {
                free(h);
                return lhyb_raise_hyb(L, "tostring");
            }
        } else if (t->device == HYB_DEV_CPU) {
            c = hyb_tensor_clone(t);
            if (c) memcpy(h, c->data, (size_t)n * sizeof(float));
        }
    }
    hyb_tensor_free(c);
    hyb_tensor view = *t; /* contiguous strides over h */
    contig_strides(t->ndim, t->shape, view.stride);
    pctx ctx = {NULL, h, &view, 0, 1, 0, n > 1000};
    double mx = 0, mn = INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double a = fabs(h[i]);
        if (!isfinite(h[i])) continue;
        if (h[i] != floorf(h[i])) ctx.ints = 0;
        if (a > mx) mx = a;
        if (a > 0 && a < mn) mn = a;
    }
    if (!ctx.ints && (mx >= 1e5 || (mn < 1e-4 && mn > 0))) ctx.sci = 1;
    if (ctx.ints && mx >= 1e8) ctx.ints = 0, ctx.sci = 1;
    char num[48];
    for (int64_t i = 0; i < n; i++) {
        fmt_num(num, sizeof num, h[i], ctx.sci, ctx.ints);
        if ((int)strlen(num) > ctx.width) ctx.width = (int)strlen(num);
    }
    luaL_Buffer buf;
    luaL_buffinit(L, &buf);
    ctx.b = &buf;
    luaL_addstring(&buf, "tensor(");
    print_rec(&ctx, 0, 0, 7);
    free(h);
    char sb[96];
    snprintf(sb, sizeof sb, ", shape=%s, dtype=%s, device=%s",
             hyb_shape_str(t->ndim, t->shape, num, sizeof num), hyb_dtype_name(t->dtype),
             hyb_device_name(t->device));
    luaL_addstring(&buf, sb);
    if (t->name[0]) {
        luaL_addstring(&buf, ", name=");
        luaL_addstring(&buf, t->name);
    }
    if (lua_getiuservalue(L, 1, UV_NODE) == LUA_TUSERDATA) {
        luaL_addstring(&buf, ", grad_fn=");
        luaL_addstring(&buf, ((lnode *)lua_touserdata(L, -1))->op);
    } else if (t->requires_grad) {
        luaL_addstring(&buf, ", requires_grad=true");
    }
    lua_pop(L, 1);
    luaL_addchar(&buf, ')');
    luaL_pushresult(&buf);
    return 1;
}

/* __index: t.grad, then the methods (upvalue 1) */
static int t_index(lua_State *L) {
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "grad") == 0) {
        lhyb_tensor *b = lhyb_check_tensor(L, 1, "tensor.grad", "self");
        if (b->t->grad) { /* a parameter's gradient, owned by its store */
            lhyb_push_borrowed(L, b->t->grad, 1, b->genp, b->what);
            return 1;
        }
        lua_getiuservalue(L, 1, UV_GRAD);
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

/* ---- devices --------------------------------------------------------------------------------- */

/* d in += gy across devices (through host memory) */
static int bwd_to(lnode *n, hyb_tensor **in, hyb_tensor **saved, hyb_tensor *gy, hyb_tensor **gin) {
    (void)saved;
    if (!gin[0]) return HYB_OK;
    int64_t cnt = hyb_tensor_numel(gy);
    float *h = malloc((size_t)cnt * sizeof(float));
    if (!h) return hyb_error_set(HYB_ERR_NOMEM, "tensor:to backward: out of memory");
    int rc = hyb_tensor_download(gy, h);
    const hyb_backend *be = hyb_backend_get(in[0]->device);
    hyb_tensor *tmp = NULL;
    if (rc == HYB_OK && !be) rc = HYB_ERR;
    if (rc == HYB_OK) {
        tmp = hyb_tensor_new_on(be, HYB_F32, gy->ndim, gy->shape);
        rc = tmp ? hyb_tensor_upload(tmp, h) : HYB_ERR_NOMEM;
    }
    if (rc == HYB_OK) rc = be->axpy(be, gin[0]->data, tmp->data, 1.0f, cnt);
    (void)n;
    hyb_tensor_free(tmp);
    free(h);
    return rc;
}

/* t:to(device) -> a copy on "cpu" / "cuda" / "cuda:N" (on the tape) */
static int l_to(lua_State *L) {
    const char *op = "tensor:to";
    lua_settop(L, 2);
    hyb_tensor *t = argbox(L, 1, op, 1)->t;
    const char *name = lhyb_check_string(L, 2, op, "device");
    const hyb_backend *be = NULL;
    if (hyb_backend_open(name, &be) != HYB_OK) return lhyb_raise_hyb(L, op);
    t = t->dtype == HYB_F32 ? make_contig(L, 1, op) : t;
    if (!is_contig(t)) return lhyb_error(L, "%s: the tensor must be contiguous", op);
    size_t nb = hyb_tensor_nbytes(t);
    void *h = malloc(nb ? nb : 1);
    if (!h) return lhyb_error(L, "%s: out of memory", op);
    lhyb_tensor *ob = lhyb_push_owned(L, hyb_tensor_new_on(be, t->dtype, t->ndim, t->shape), op);
    int rc = hyb_tensor_download(t, h);
    if (rc == HYB_OK) rc = hyb_tensor_upload(ob->t, h);
    free(h);
    check_rc(L, rc, op);
    if (t->dtype == HYB_F32) {
        int in[1] = {1};
        record(L, op, be, -1, bwd_to, in, 1, NULL, 0);
    }
    return 1;
}

/* t:device() -> "cpu" / "cuda" */
static int l_device_of(lua_State *L) {
    lua_pushstring(L, hyb_device_name(argbox(L, 1, "tensor:device", 1)->t->device));
    return 1;
}

/* ---- registration ---------------------------------------------------------------------------- */

static const luaL_Reg ops[] = {{"exp", l_exp},
                               {"log", l_log},
                               {"sigmoid", l_sigmoid},
                               {"silu", l_silu},
                               {"softplus", l_softplus},
                               {"tanh", l_tanh},
                               {"sqrt", l_sqrt},
                               {"rsqrt", l_rsqrt},
                               {"abs", l_abs},
                               {"neg", l_neg},
                               {"add", l_add},
                               {"sub", l_sub},
                               {"mul", l_mul},
                               {"div", l_div},
                               {"pow", l_pow},
                               {"gt", l_gt},
                               {"lt", l_lt},
                               {"ge", l_ge},
                               {"le", l_le},
                               {"eq", l_eq},
                               {"maximum", l_maximum},
                               {"minimum", l_minimum},
                               {"where", l_where},
                               {"reshape", l_reshape},
                               {"view", l_reshape},
                               {"transpose", l_transpose},
                               {"permute", l_permute},
                               {"narrow", l_narrow},
                               {"slice", l_slice},
                               {"split", l_split},
                               {"expand", l_expand},
                               {"unsqueeze", l_unsqueeze},
                               {"squeeze", l_squeeze},
                               {"contiguous", l_contiguous},
                               {"detach", l_detach},
                               {"softmax", l_softmax},
                               {"log_softmax", l_log_softmax},
                               {"logsumexp", l_logsumexp},
                               {"cumsum", l_cumsum},
                               {"sum_all", l_sum_all},
                               {"mean_all", l_mean_all},
                               {"matmul", l_matmul},
                               {"tril", l_tril},
                               {"triu", l_triu},
                               {"conv1d_causal", l_conv1d},
                               {"rms_norm", l_rms_norm},
                               {"gather", l_gather},
                               {"cat", l_cat},
                               {NULL, NULL}};

static const luaL_Reg methods[] = {
    {"backward", t_backward},           {"to", l_to},           {"device", l_device_of},
    {"requires_grad", t_requires_grad}, {"is_leaf", t_is_leaf}, {"grad_fn", t_grad_fn},
    {"zero_grad", t_zero_grad},         {"has_nan", t_has_nan}, {NULL, NULL}};

static const luaL_Reg funcs[] = {
    {"ones", l_ones},           {"full", l_full},       {"arange", l_arange},
    {"from", l_from},           {"no_grad", l_no_grad}, {"grad_enabled", l_grad_enabled},
    {"check_nan", l_check_nan}, {"grad", l_grad},       {NULL, NULL}};

/* Called by lhyb_open_tensor with the hyb table at the top of the stack. */
void lhyb_open_autograd(lua_State *L) {
    luaL_setfuncs(L, ops, 0);
    luaL_setfuncs(L, funcs, 0);
    luaL_getmetatable(L, LHYB_TENSOR_MT);
    int mt = lua_gettop(L);
    lua_getfield(L, mt, "__index"); /* the methods table of lua_tensor.c */
    int m = lua_gettop(L);
    /* sum/mean/max keep their whole-tensor number form without a dim */
    static const struct {
        const char *name;
        lua_CFunction fn;
    } wrap[] = {{"sum", l_sum}, {"mean", l_mean}, {"max", l_max}};
    for (size_t i = 0; i < sizeof wrap / sizeof wrap[0]; i++) {
        lua_getfield(L, m, wrap[i].name);
        lua_pushcclosure(L, wrap[i].fn, 1);
        lua_pushvalue(L, -1);
        lua_setfield(L, m, wrap[i].name);
        lua_setfield(L, mt - 1, wrap[i].name); /* hyb.sum etc. */
    }
    lua_pushvalue(L, m);
    luaL_setfuncs(L, ops, 0);
    luaL_setfuncs(L, methods, 0);
    lua_pop(L, 1);
    lua_pushvalue(L, m);
    lua_pushcclosure(L, t_index, 1);
    lua_setfield(L, mt, "__index");
    static const struct {
        const char *mm;
        lua_CFunction fn;
    } meta[] = {{"__add", l_add}, {"__sub", l_sub}, {"__mul", l_mul},
                {"__div", l_div}, {"__unm", l_unm}, {"__pow", l_pow}};
    for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++) {
        lua_pushcfunction(L, meta[i].fn);
        lua_setfield(L, mt, meta[i].mm);
    }
    lua_getfield(L, mt, "__tostring");
    lua_pushcclosure(L, t_tostring, 1);
    lua_setfield(L, mt, "__tostring");
    lua_settop(L, mt - 1);
}
