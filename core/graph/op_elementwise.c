/* core/graph/op_elementwise.c: swiglu, add, softmax. */
#include "graph/graph_internal.h"

static int same_shape_f32(const char *op, const char *an, const hyb_tensor *a, const char *bn,
                          const hyb_tensor *b) {
    if (op_check_f32(op, an, a) || op_check_f32(op, bn, b)) return HYB_ERR_ARG;
    if (!hyb_tensor_same_shape(a, b)) {
        char sa[128], sb[128];
        return hyb_error_set(HYB_ERR_ARG, "%s: %s %s and %s %s: shapes differ", op, an,
                             op_shape(a, sa, sizeof sa), bn, op_shape(b, sb, sizeof sb));
    }
    return op_check_same_device(op, an, a, bn, b);
}

/* swiglu and add: y = f(a, b) element by element over two same-shape inputs; the forward kernel
 * is be->add when is_add, else be->swiglu_fwd (the two have the same signature). */
static hyb_tensor *binary_op(hyb_graph *g, const char *op, const char *an, hyb_tensor *a,
                             const char *bn, hyb_tensor *b, int is_add, hyb_backward_fn backward) {
    if (!g) OP_ERR("%s: graph is NULL", op);
    if (same_shape_f32(op, an, a, bn, b)) return NULL;
    const hyb_backend *be;
    hyb_tensor *y = op_output_like(g, op, a, &be);
    if (!y) return NULL;
    OP_CALL(op,
            (is_add ? be->add : be->swiglu_fwd)(be, (const float *)a->data, (const float *)b->data,
                                                (float *)y->data, hyb_tensor_numel(y)));
    hyb_tensor *ins[2] = {a, b};
    if (op_record(g, op, y, ins, 2, backward, NULL)) return NULL;
    return y;
}

// ---- swiglu ---------------------------------------------------------------------------------

static int swiglu_bwd(hyb_graph *g, hyb_node *n) {
    float *dg, *du;
    HYB_TRY(graph_grad(g, n->in[0], &dg));
    HYB_TRY(graph_grad(g, n->in[1], &du));
    HYB_TRY(n->be->swiglu_bwd(n->be, (const float *)n->in[0]->data, (const float *)n->in[1]->data,
                              (const float *)n->out->grad->data, dg, du, hyb_tensor_numel(n->out)));
    return HYB_OK;
}

hyb_tensor *hyb_swiglu(hyb_graph *g, hyb_tensor *gate, hyb_tensor *up) {
    return binary_op(g, "hyb_swiglu", "gate", gate, "up", up, 0, swiglu_bwd);
}

// ---- add ------------------------------------------------------------------------------------

int op_add_bwd(hyb_graph *g, hyb_node *n) {
    const int64_t N = hyb_tensor_numel(n->out);
    const float *dy = (const float *)n->out->grad->data;
    for (int i = 0; i < 2; i++) {
        float *d;
        HYB_TRY(graph_grad(g, n->in[i], &d));
        if (d) HYB_TRY(n->be->axpy(n->be, d, dy, 1.0f, N));
    }
    return HYB_OK;
}

hyb_tensor *hyb_add(hyb_graph *g, hyb_tensor *a, hyb_tensor *b) {
    return binary_op(g, "hyb_add", "a", a, "b", b, 1, op_add_bwd);
}

// ---- softmax --------------------------------------------------------------------------------

static int softmax_bwd(hyb_graph *g, hyb_node *n) {
    float *dx;
    HYB_TRY(graph_grad(g, n->in[0], &dx));
    if (dx)
        HYB_TRY(n->be->softmax_bwd(n->be, (const float *)n->out->data,
                                   (const float *)n->out->grad->data, dx, n->iv[0], n->iv[1]));
    return HYB_OK;
}

hyb_tensor *hyb_softmax(hyb_graph *g, hyb_tensor *x) {
    static const char OP[] = "hyb_softmax";
    if (!g) OP_ERR("%s: graph is NULL", OP);
    if (op_check_f32(OP, "x", x)) return NULL;
    const hyb_backend *be;
    hyb_tensor *y = op_output_like(g, OP, x, &be);
    if (!y) return NULL;
    const int64_t V = x->shape[x->ndim - 1], rows = V ? hyb_tensor_numel(x) / V : 0;
    OP_CALL(OP, be->softmax_fwd(be, (const float *)x->data, (float *)y->data, rows, V));
    hyb_tensor *ins[1] = {x};
    hyb_node *nd;
    if (op_record(g, OP, y, ins, 1, softmax_bwd, &nd)) return NULL;
    if (nd) {
        nd->iv[0] = rows;
        nd->iv[1] = V;
    }
    return y;
}
