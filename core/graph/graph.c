/* core/graph/graph.c: the tape (nodes, arena, grad mode) and the reverse pass. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph/graph_internal.h"

#define GRAPH_BLOCK_BYTES ((size_t)32 << 20)

static const char *dev_name(hyb_device d) {
    return d == HYB_DEV_CPU ? "cpu" : d == HYB_DEV_CUDA ? "cuda" : "?";
}

// ---- graph lifetime -------------------------------------------------------------------------

hyb_graph *hyb_graph_new(void) {
    hyb_graph *g = hyb_malloc(sizeof *g);
    if (!g) return NULL;
    g->host = hyb_arena_new(GRAPH_BLOCK_BYTES, NULL);
    if (!g->host) {
        hyb_free(g);
        return NULL;
    }
    g->dev[HYB_DEV_CPU] = g->host;
    g->grad_enabled = 1;
    return g;
}

static void taps_drop(hyb_graph *g) {
    for (int i = 0; i < g->n_taps; i++)
        if (g->taps[i].link && *g->taps[i].link == g) *g->taps[i].link = NULL;
    g->n_taps = 0;
}

void hyb_graph_free(hyb_graph *g) {
    if (!g) return;
    taps_drop(g);
    if (g->dev[HYB_DEV_CUDA]) hyb_arena_free(g->dev[HYB_DEV_CUDA]);
    hyb_arena_free(g->host);
    free(g->nodes);
    free(g->taps);
    hyb_free(g);
}

void hyb_graph_reset(hyb_graph *g) {
    if (!g) return;
    g->n_nodes = 0;
    taps_drop(g);
    hyb_arena_reset(g->host);
    if (g->dev[HYB_DEV_CUDA]) hyb_arena_reset(g->dev[HYB_DEV_CUDA]);
}

void hyb_graph_set_grad(hyb_graph *g, int enabled) {
    g->grad_enabled = enabled ? 1 : 0;
}
int hyb_graph_grad_enabled(const hyb_graph *g) {
    return g->grad_enabled;
}
int hyb_graph_n_nodes(const hyb_graph *g) {
    return g->n_nodes;
}

size_t hyb_graph_bytes(const hyb_graph *g) {
    size_t n = hyb_arena_used(g->host);
    if (g->dev[HYB_DEV_CUDA]) n += hyb_arena_used(g->dev[HYB_DEV_CUDA]);
    return n;
}

size_t hyb_graph_peak_bytes(const hyb_graph *g) {
    size_t n = hyb_arena_peak(g->host);
    if (g->dev[HYB_DEV_CUDA]) n += hyb_arena_peak(g->dev[HYB_DEV_CUDA]);
    return n;
}

// ---- allocation helpers ---------------------------------------------------------------------

void *graph_host_alloc(hyb_graph *g, size_t nbytes) {
    return hyb_arena_alloc(g->host, nbytes);
}

void *graph_dev_alloc(hyb_graph *g, hyb_device dev, size_t nbytes) {
    if (dev == HYB_DEV_CPU) return hyb_arena_alloc(g->host, nbytes);
    if (dev != HYB_DEV_CUDA) {
        hyb_error_set(HYB_ERR_ARG, "graph: no such device %d", (int)dev);
        return NULL;
    }
    if (!g->dev[dev]) {
        const hyb_backend *be = hyb_backend_get(dev);
        if (!be) return NULL;
        g->dev[dev] = hyb_arena_new(GRAPH_BLOCK_BYTES, be);
        if (!g->dev[dev]) return NULL;
    }
    return hyb_arena_alloc(g->dev[dev], nbytes);
}

static hyb_tensor *graph_tensor_raw(hyb_graph *g, const char *op, hyb_dtype dtype, hyb_device dev,
                                    int ndim, const int64_t *shape) {
    /* validate through a stack tensor, then move it into the arena */
    if ((int)dtype < 0 || dtype >= HYB_DTYPE_COUNT) {
        hyb_error_set(HYB_ERR_ARG, "%s: invalid dtype %d", op, (int)dtype);
        return NULL;
    }
    if (ndim < 0 || ndim > HYB_MAX_DIMS || (ndim > 0 && !shape)) {
        hyb_error_set(HYB_ERR_ARG, "%s: invalid ndim %d", op, ndim);
        return NULL;
    }
    hyb_tensor *t = graph_host_alloc(g, sizeof *t);
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->device = dev;
    t->owner = HYB_OWN_ARENA;
    t->ndim = ndim;
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        if (shape[i] < 0) {
            hyb_error_set(HYB_ERR_ARG, "%s: negative dimension %lld", op, (long long)shape[i]);
            return NULL;
        }
        t->shape[i] = shape[i];
        t->stride[i] = st;
        st *= shape[i];
    }
    for (int i = ndim; i < HYB_MAX_DIMS; i++)
        t->shape[i] = t->stride[i] = 1;
    int64_t be = hyb_dtype_block_elems(dtype);
    if (be > 1 && ndim > 0 && shape[ndim - 1] % be) {
        hyb_error_set(HYB_ERR_ARG,
                      "%s: innermost dimension %lld is not a multiple of %s's block of %lld", op,
                      (long long)shape[ndim - 1], hyb_dtype_name(dtype), (long long)be);
        return NULL;
    }
    t->data = graph_dev_alloc(g, dev, hyb_tensor_nbytes(t));
    if (!t->data) {
        char s[128];
        hyb_error_wrap(HYB_ERR_NOMEM, "%s: output %s", op, hyb_tensor_shape_str(t, s, sizeof s));
        return NULL;
    }
    return t;
}

hyb_tensor *graph_output(hyb_graph *g, const char *op, hyb_device dev, int ndim,
                         const int64_t *shape) {
    return graph_tensor_raw(g, op, HYB_F32, dev, ndim, shape);
}

hyb_tensor *op_output_like(hyb_graph *g, const char *op, const hyb_tensor *x,
                           const hyb_backend **be) {
    *be = op_backend(op, x->device);
    if (!*be) return NULL;
    return graph_output(g, op, x->device, x->ndim, x->shape);
}

hyb_tensor *hyb_graph_tensor(hyb_graph *g, hyb_dtype dtype, int ndim, const int64_t *shape) {
    if (!g) {
        hyb_error_set(HYB_ERR_ARG, "hyb_graph_tensor: graph is NULL");
        return NULL;
    }
    hyb_tensor *t = graph_tensor_raw(g, "hyb_graph_tensor", dtype, HYB_DEV_CPU, ndim, shape);
    if (t) memset(t->data, 0, hyb_tensor_nbytes(t));
    return t;
}

// ---- recording ------------------------------------------------------------------------------

int graph_recording(const hyb_graph *g, hyb_tensor *const *ins, int n) {
    if (!g->grad_enabled) return 0;
    for (int i = 0; i < n; i++)
        if (ins[i] && ins[i]->requires_grad) return 1;
    return 0;
}

hyb_node *graph_record(hyb_graph *g, const char *op, hyb_tensor *out, hyb_tensor *const *ins,
                       int n_in, hyb_backward_fn backward) {
    HYB_ASSERT(n_in <= HYB_NODE_MAX_IN);
    if (g->n_nodes == g->cap_nodes) {
        int cap = g->cap_nodes ? 2 * g->cap_nodes : 256;
        hyb_node *nn = realloc(g->nodes, sizeof *nn * (size_t)cap);
        if (!nn) {
            hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory growing the tape to %d nodes", op, cap);
            return NULL;
        }
        g->nodes = nn;
        g->cap_nodes = cap;
    }
    hyb_node *n = &g->nodes[g->n_nodes++];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->out = out;
    n->n_in = n_in;
    for (int i = 0; i < n_in; i++)
        n->in[i] = ins[i];
    n->be = hyb_backend_get(out->device);
    n->backward = backward;
    out->requires_grad = 1;
    return n;
}

int op_record(hyb_graph *g, const char *op, hyb_tensor *out, hyb_tensor *const *ins, int n_in,
              hyb_backward_fn backward, hyb_node **nd) {
    hyb_node *n = NULL;
    if (graph_recording(g, ins, n_in)) {
        n = graph_record(g, op, out, ins, n_in, backward);
        if (!n) return HYB_ERR_NOMEM;
    }
    if (nd) *nd = n;
    return HYB_OK;
}

int graph_grad(hyb_graph *g, hyb_tensor *t, float **out) {
    *out = NULL;
    if (!t || !t->requires_grad) return HYB_OK;
    char a[128], b[128];
    if (!t->grad && t->owner == HYB_OWN_PARAM) HYB_TRY(hyb_tensor_grad_ensure(t));
    if (!t->grad) {
        if (t->owner != HYB_OWN_ARENA)
            return hyb_error_set(HYB_ERR_ARG,
                                 "tensor '%s' %s requires grad but has no ->grad (a parameter's "
                                 "owner allocates it; views are not tracked by the tape)",
                                 t->name, hyb_tensor_shape_str(t, a, sizeof a));
        hyb_tensor *gt = graph_tensor_raw(g, "grad", HYB_F32, t->device, t->ndim, t->shape);
        if (!gt) return HYB_ERR_NOMEM;
        const hyb_backend *be = hyb_backend_get(t->device);
        if (!be) return HYB_ERR_UNSUPPORTED;
        HYB_TRY(be->memset0(be, gt->data, hyb_tensor_nbytes(gt)));
        t->grad = gt;
    }
    hyb_tensor *gt = t->grad;
    if (gt->dtype != HYB_F32 || hyb_tensor_numel(gt) != hyb_tensor_numel(t) ||
        gt->device != t->device || !hyb_tensor_is_contiguous(gt))
        return hyb_error_set(HYB_ERR_ARG,
                             "tensor '%s' %s on %s has a grad %s on %s (want f32, same "
                             "shape and device, contiguous)",
                             t->name, hyb_tensor_shape_str(t, a, sizeof a), dev_name(t->device),
                             hyb_tensor_shape_str(gt, b, sizeof b), dev_name(gt->device));
    *out = (float *)gt->data;
    return HYB_OK;
}

// ---- gradient taps --------------------------------------------------------------------------

int hyb_graph_tap_grad(hyb_graph *g, hyb_tensor *t, hyb_tensor *dst, int *done, hyb_graph **link) {
    char a[128], b[128];
    if (!g || !t || !dst)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_graph_tap_grad: graph, tensor or destination is NULL");
    if (!g->grad_enabled)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_graph_tap_grad: grad mode is off (nothing is taped)");
    if (t->owner != HYB_OWN_ARENA || t->dtype != HYB_F32 || dst->dtype != HYB_F32 ||
        hyb_tensor_numel(t) != hyb_tensor_numel(dst) || t->device != dst->device ||
        !hyb_tensor_is_contiguous(dst))
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_graph_tap_grad: activation %s (an f32 graph tensor) and "
                             "destination %s must match (numel, device, contiguous)",
                             hyb_tensor_shape_str(t, a, sizeof a),
                             hyb_tensor_shape_str(dst, b, sizeof b));
    if (g->n_taps == g->cap_taps) {
        int cap = g->cap_taps ? 2 * g->cap_taps : 16;
        hyb_grad_tap *nt = realloc(g->taps, sizeof *nt * (size_t)cap);
        if (!nt) return hyb_error_set(HYB_ERR_NOMEM, "hyb_graph_tap_grad: out of memory");
        g->taps = nt;
        g->cap_taps = cap;
    }
    g->taps[g->n_taps++] = (hyb_grad_tap){t, dst, done, link};
    if (link) *link = g;
    t->requires_grad = 1;
    return HYB_OK;
}

void hyb_graph_untap(hyb_graph *g, const int *done) {
    if (!g) return;
    int k = 0;
    for (int i = 0; i < g->n_taps; i++)
        if (g->taps[i].done != done) g->taps[k++] = g->taps[i];
    g->n_taps = k;
}

/* after the pass: each tap's gradient (or zeros) into its destination */
static int taps_collect(hyb_graph *g) {
    for (int i = 0; i < g->n_taps; i++) {
        hyb_grad_tap *tp = &g->taps[i];
        const hyb_backend *be = hyb_backend_get(tp->dst->device);
        if (!be) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "hyb_graph_backward: gradient tap");
        size_t nb = hyb_tensor_nbytes(tp->dst);
        HYB_TRY(tp->t->grad ? be->copy(be, tp->dst->data, tp->t->grad->data, nb)
                            : be->memset0(be, tp->dst->data, nb));
        if (tp->done) *tp->done = 1;
    }
    return HYB_OK;
}

// ---- the gradient-ready hook ----------------------------------------------------------------

void hyb_graph_on_grad_ready(hyb_graph *g, hyb_grad_ready_fn fn, void *ctx) {
    if (!g) return;
    g->ready_fn = fn;
    g->ready_ctx = ctx;
}

/* (parameter, earliest node that accumulates into its gradient) */
typedef struct ready_ev {
    hyb_tensor *t;
    int node;
} ready_ev;

static int ev_by_tensor(const void *a, const void *b) {
    const ready_ev *x = a, *y = b;
    if (x->t != y->t) return (uintptr_t)x->t < (uintptr_t)y->t ? -1 : 1;
    return (x->node > y->node) - (x->node < y->node);
}

static int ev_by_node_desc(const void *a, const void *b) {
    const ready_ev *x = a, *y = b;
    if (x->node != y->node) return x->node > y->node ? -1 : 1;
    return (uintptr_t)x->t < (uintptr_t)y->t ? -1 : (x->t != y->t);
}

/* The events of a pass, in the order the reverse loop meets them: every non-activation tensor
 * that requires grad and is an input (in[] or xin[]) of a node, with the lowest such node. */
static int ready_plan(hyb_graph *g, ready_ev **out, int *nout) {
    size_t n = 0, cap = 0;
    ready_ev *ev = NULL;
    for (int i = 0; i < g->n_nodes; i++) {
        hyb_node *nd = &g->nodes[i];
        for (int j = 0; j < nd->n_in + nd->n_xin; j++) {
            hyb_tensor *t = j < nd->n_in ? nd->in[j] : nd->xin[j - nd->n_in];
            if (!t || !t->requires_grad || t->owner == HYB_OWN_ARENA) continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 256;
                ready_ev *e2 = realloc(ev, sizeof *ev * cap);
                if (!e2) {
                    free(ev);
                    return hyb_error_set(HYB_ERR_NOMEM, "hyb_graph_backward: gradient-ready "
                                                        "hook: out of memory");
                }
                ev = e2;
            }
            ev[n++] = (ready_ev){t, i};
        }
    }
    if (n) qsort(ev, n, sizeof *ev, ev_by_tensor);
    size_t k = 0; /* keep each tensor's first (lowest node) entry */
    for (size_t i = 0; i < n; i++)
        if (i == 0 || ev[i].t != ev[i - 1].t) ev[k++] = ev[i];
    if (k) qsort(ev, k, sizeof *ev, ev_by_node_desc);
    *out = ev;
    *nout = (int)k;
    return HYB_OK;
}

// ---- the reverse pass -----------------------------------------------------------------------

/* zero the intermediate grads of a previous pass, seed out's grad, run the nodes in reverse */
static int run_backward(hyb_graph *g, hyb_tensor *out, const float *seed) {
    const hyb_backend *be = hyb_backend_get(out->device);
    if (!be) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "hyb_graph_backward");
    for (int i = 0; i < g->n_nodes; i++) {
        hyb_tensor *o = g->nodes[i].out;
        if (o->grad && o->owner == HYB_OWN_ARENA && o->grad->owner == HYB_OWN_ARENA) {
            const hyb_backend *ob = hyb_backend_get(o->device);
            if (!ob) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "hyb_graph_backward");
            HYB_TRY(ob->memset0(ob, o->grad->data, hyb_tensor_nbytes(o->grad)));
        }
    }
    for (int i = 0; i < g->n_taps; i++) { /* a tapped tensor may have no producer node */
        hyb_tensor *o = g->taps[i].t;
        if (o->grad && o->grad->owner == HYB_OWN_ARENA) {
            const hyb_backend *ob = hyb_backend_get(o->device);
            if (!ob) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "hyb_graph_backward");
            HYB_TRY(ob->memset0(ob, o->grad->data, hyb_tensor_nbytes(o->grad)));
        }
    }
    float *d;
    HYB_TRY(graph_grad(g, out, &d));
    HYB_TRY(be->upload(be, d, seed, sizeof(float) * (size_t)hyb_tensor_numel(out)));
    ready_ev *ev = NULL;
    int nev = 0, next = 0;
    if (g->ready_fn) HYB_TRY(ready_plan(g, &ev, &nev));
    int rc = HYB_OK;
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        hyb_node *n = &g->nodes[i];
        if (n->out->grad) { /* else no gradient reached this node */
            rc = n->backward(g, n);
            if (rc != HYB_OK) {
                rc = hyb_error_wrap(rc, "hyb_graph_backward: node %d (%s)", i, n->op);
                break;
            }
        }
        /* the parameters whose last (earliest) consumer was node i are final */
        for (; next < nev && ev[next].node == i && rc == HYB_OK; next++)
            rc = g->ready_fn(g->ready_ctx, ev[next].t);
        if (rc != HYB_OK) break;
    }
    free(ev);
    HYB_TRY(rc);
    return g->n_taps ? taps_collect(g) : HYB_OK;
}

static int check_backward_root(const char *who, hyb_graph *g, hyb_tensor *out) {
    char a[128];
    if (!g) return hyb_error_set(HYB_ERR_ARG, "%s: graph is NULL", who);
    if (!out) return hyb_error_set(HYB_ERR_ARG, "%s: output is NULL", who);
    if (!out->requires_grad || out->owner != HYB_OWN_ARENA)
        return hyb_error_set(HYB_ERR_ARG,
                             "%s: %s does not depend on anything that requires grad (grad mode "
                             "off, or no parameter requires grad)",
                             who, hyb_tensor_shape_str(out, a, sizeof a));
    return HYB_OK;
}

int hyb_graph_backward(hyb_graph *g, hyb_tensor *loss, float scale) {
    char a[128];
    if (loss && (loss->dtype != HYB_F32 || hyb_tensor_numel(loss) != 1))
        return hyb_error_set(HYB_ERR_ARG, "hyb_graph_backward: loss %s is not a scalar f32 tensor",
                             hyb_tensor_shape_str(loss, a, sizeof a));
    HYB_TRY(check_backward_root("hyb_graph_backward", g, loss));
    return run_backward(g, loss, &scale);
}

int graph_backward_seed(hyb_graph *g, hyb_tensor *out, const float *seed) {
    HYB_TRY(check_backward_root("graph_backward_seed", g, out));
    return run_backward(g, out, seed);
}

// ---- checks shared by the ops ---------------------------------------------------------------

const hyb_backend *op_backend(const char *op, hyb_device dev) {
    const hyb_backend *be = hyb_backend_get(dev);
    if (!be) hyb_error_wrap(HYB_ERR_UNSUPPORTED, "%s", op);
    return be;
}

const char *op_shape(const hyb_tensor *t, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

int op_check_f32(const char *op, const char *what, const hyb_tensor *t) {
    char a[128];
    if (!t) return hyb_error_set(HYB_ERR_ARG, "%s: %s is NULL", op, what);
    if (t->dtype != HYB_F32)
        return hyb_error_set(HYB_ERR_ARG, "%s: %s %s has dtype %s; the op computes in f32", op,
                             what, op_shape(t, a, sizeof a), hyb_dtype_name(t->dtype));
    if (t->ndim < 1)
        return hyb_error_set(HYB_ERR_ARG, "%s: %s %s must have at least one dimension", op, what,
                             op_shape(t, a, sizeof a));
    if (!hyb_tensor_is_contiguous(t))
        return hyb_error_set(HYB_ERR_ARG, "%s: %s %s is not contiguous", op, what,
                             op_shape(t, a, sizeof a));
    if (!t->data && hyb_tensor_numel(t) > 0)
        return hyb_error_set(HYB_ERR_ARG, "%s: %s %s has no data", op, what,
                             op_shape(t, a, sizeof a));
    return HYB_OK;
}

int op_check_same_device(const char *op, const char *an, const hyb_tensor *a, const char *bn,
                         const hyb_tensor *b) {
    if (a->device == b->device) return HYB_OK;
    char sa[128], sb[128];
    return hyb_error_set(HYB_ERR_ARG, "%s: %s %s is on %s but %s %s is on %s", op, an,
                         op_shape(a, sa, sizeof sa), dev_name(a->device), bn,
                         op_shape(b, sb, sizeof sb), dev_name(b->device));
}

int op_rows_int(const char *op, const char *what, const hyb_tensor *t, int64_t inner, int *rows) {
    int64_t r = inner ? hyb_tensor_numel(t) / inner : 0;
    if (r > INT_MAX || inner > INT_MAX) {
        char a[128];
        return hyb_error_set(HYB_ERR_ARG, "%s: %s %s is too large for one GEMM", op, what,
                             op_shape(t, a, sizeof a));
    }
    *rows = (int)r;
    return HYB_OK;
}
