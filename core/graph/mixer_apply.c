/* core/graph/mixer_apply.c: a mixer plugin as one coarse node of the tape.
 *
 * The plugin's kernels of the input's device run with that device's backend (hyb/backend.h) in
 * their arguments. With states and T == 1 and no tape (a generation step of B sequences), the
 * plugin's decode kernel runs; otherwise its forward (training, prefill), and its backward from
 * the tape. */
#include <string.h>

#include "graph/graph_internal.h"
#include "hyb/mixer.h"

static int mixer_bwd(hyb_graph *g, hyb_node *n) {
    hyb_mixer *m = (hyb_mixer *)n->ptr;
    hyb_tensor *x = n->in[0];
    const int B = (int)n->iv[0], T = (int)n->iv[1];
    const size_t xbytes = hyb_tensor_nbytes(x);
    float *dx_acc;
    HYB_TRY(graph_grad(g, x, &dx_acc));
    /* the plugin WRITES dx: give it scratch, then accumulate into x's grad */
    float *dx = graph_dev_alloc(g, x->device, xbytes ? xbytes : 1);
    float **grads = graph_host_alloc(g, sizeof(float *) * (size_t)(m->n_params ? m->n_params : 1));
    if (!dx || !grads) return HYB_ERR_NOMEM;
    for (int i = 0; i < m->n_params; i++) {
        hyb_tensor *p = m->params[i];
        float *gp = NULL;
        HYB_TRY(graph_grad(g, p, &gp));
        if (!gp) {
            /* frozen parameter: the plugin still accumulates, into zeroed scratch */
            size_t nb = hyb_tensor_nbytes(p);
            gp = graph_dev_alloc(g, p->device, nb ? nb : 1);
            if (!gp) return HYB_ERR_NOMEM;
            HYB_TRY(n->be->memset0(n->be, gp, nb));
        }
        grads[i] = gp;
    }
    hyb_mixer_bwd a;
    memset(&a, 0, sizeof a);
    a.B = B;
    a.T = T;
    a.be = n->be;
    a.x = (const float *)x->data;
    a.dy = (const float *)n->out->grad->data;
    a.dx = dx;
    a.params = (const float *const *)n->saved[1];
    a.grads = grads;
    a.saved = n->saved[0];
    HYB_TRY(hyb_mixer_kernel_check(m, x->device, HYB_MIXER_BACKWARD));
    int rc = m->desc->kernels[x->device].backward(m->self, &a);
    if (rc != HYB_OK)
        return hyb_error_wrap(rc < 0 ? rc : HYB_ERR, "mixer '%s' (layer %d) backward", m->type,
                              m->dims.layer);
    if (dx_acc) HYB_TRY(n->be->axpy(n->be, dx_acc, dx, 1.0f, hyb_tensor_numel(x)));
    return HYB_OK;
}

hyb_tensor *hyb_mixer_apply(hyb_graph *g, struct hyb_mixer *m, hyb_tensor *x, void *const *states,
                            const int32_t *pos, int max_ctx) {
    return hyb_mixer_apply_kv(g, m, x, states, pos, max_ctx, HYB_KV_F32);
}

hyb_tensor *hyb_mixer_apply_kv(hyb_graph *g, struct hyb_mixer *m, hyb_tensor *x,
                               void *const *states, const int32_t *pos, int max_ctx, int kv) {
    static const char OP[] = "hyb_mixer_apply";
    char a[128], b[128];
    if (!g) OP_ERR("%s: graph is NULL", OP);
    if (!m || !m->desc) OP_ERR("%s: mixer is NULL", OP);
    if (op_check_f32(OP, "x", x)) return NULL;
    const int64_t D = m->dims.d_model;
    if (x->ndim != 3 || x->shape[2] != D)
        OP_ERR("%s: mixer '%s' (layer %d): x %s must be [B, T, %lld]", OP, m->type, m->dims.layer,
               op_shape(x, a, sizeof a), (long long)D);
    if (x->shape[0] > 0x7fffffff || x->shape[1] > 0x7fffffff)
        OP_ERR("%s: x %s is too large", OP, op_shape(x, a, sizeof a));
    const int B = (int)x->shape[0], T = (int)x->shape[1];
    if (m->n_params < 0 || (m->n_params > 0 && !m->params))
        OP_ERR("%s: mixer '%s' has no parameter array", OP, m->type);
    int wants_grad = x->requires_grad, n_quant = 0;
    for (int i = 0; i < m->n_params; i++) {
        hyb_tensor *p = m->params[i];
        const char *pn = m->decls ? m->decls[i].name : "param";
        if (p->dtype != HYB_F32 && m->decls && m->decls[i].quant_ok &&
            hyb_dtype_block_elems(p->dtype) > 1 && p->device == HYB_DEV_CPU) {
            if (p->requires_grad)
                OP_ERR("%s: mixer '%s' (layer %d) parameter '%s' is quantized (%s) and asks for a "
                       "gradient: quantized weights are for inference (load the model with quant "
                       "= off, --quant off, to train it)",
                       OP, m->type, m->dims.layer, pn, hyb_dtype_name(p->dtype));
            n_quant++; /* a frozen projection in GGUF blocks (ABI 3: param_dtypes) */
        } else if (op_check_f32(OP, pn, p)) {
            return NULL;
        }
        if (op_check_same_device(OP, "x", x, pn, p)) return NULL;
        if (m->decls) {
            int64_t want = 1;
            for (int d = 0; d < m->decls[i].ndim; d++)
                want *= m->decls[i].shape[d];
            if (want != hyb_tensor_numel(p))
                OP_ERR("%s: mixer '%s' parameter '%s' %s does not match its declaration (%lld "
                       "elements)",
                       OP, m->type, pn, op_shape(p, b, sizeof b), (long long)want);
        }
        if (p->requires_grad) wants_grad = 1;
    }
    const hyb_backend *be = op_backend(OP, x->device);
    if (!be) return NULL;
    const int recording = g->grad_enabled && wants_grad;
    if (recording && n_quant)
        OP_ERR("%s: mixer '%s' (layer %d) has quantized weights (a model loaded from a quantized "
               "GGUF for inference), which have no backward; load it with quant = off (--quant "
               "off) to train through it",
               OP, m->type, m->dims.layer);
    const int step = states && T == 1 && !recording; /* one token of B sequences: decode */
    if (step && (!pos || max_ctx <= 0))
        OP_ERR("%s: mixer '%s' (layer %d): a decode step needs pos and max_ctx (got %s, %d)", OP,
               m->type, m->dims.layer, pos ? "pos" : "NULL", max_ctx);
    if (hyb_mixer_kernel_check(m, x->device, step ? HYB_MIXER_DECODE : HYB_MIXER_FORWARD) != HYB_OK)
        return NULL;
    const float **params =
        graph_host_alloc(g, sizeof(float *) * (size_t)(m->n_params ? m->n_params : 1));
    if (!params) return NULL;
    int *dtypes = graph_host_alloc(g, sizeof(int) * (size_t)(m->n_params ? m->n_params : 1));
    if (!dtypes) return NULL;
    for (int i = 0; i < m->n_params; i++) {
        params[i] = (const float *)m->params[i]->data;
        dtypes[i] = (int)m->params[i]->dtype;
    }
    void *saved = NULL;
    if (recording) {
        size_t sb = m->desc->saved_bytes(m->self, B, T);
        saved = graph_dev_alloc(g, x->device, sb ? sb : 1);
        if (!saved) return NULL;
    }
    hyb_tensor *y = graph_output(g, OP, x->device, 3, x->shape);
    if (!y) return NULL;
    if (step) {
        hyb_mixer_dec da;
        memset(&da, 0, sizeof da);
        da.n = B;
        da.be = be;
        da.x = (const float *)x->data;
        da.y = (float *)y->data;
        da.params = params;
        da.states = states;
        da.pos = pos;
        da.max_ctx = max_ctx;
        da.param_dtypes = dtypes;
        da.kv = kv;
        int rc = m->desc->kernels[x->device].decode(m->self, &da);
        if (rc != HYB_OK) {
            hyb_error_wrap(rc < 0 ? rc : HYB_ERR,
                           "%s: mixer '%s' (layer %d) decode of %d sequences", OP, m->type,
                           m->dims.layer, B);
            return NULL;
        }
        return y;
    }
    hyb_mixer_fwd fa;
    memset(&fa, 0, sizeof fa);
    fa.B = B;
    fa.T = T;
    fa.be = be;
    fa.x = (const float *)x->data;
    fa.y = (float *)y->data;
    fa.params = params;
    fa.saved = saved;
    fa.states = states;
    fa.pos = pos;
    fa.max_ctx = max_ctx;
    fa.param_dtypes = dtypes;
    fa.kv = kv;
    int rc = m->desc->kernels[x->device].forward(m->self, &fa);
    if (rc != HYB_OK) {
        hyb_error_wrap(rc < 0 ? rc : HYB_ERR, "%s: mixer '%s' (layer %d) forward on x %s", OP,
                       m->type, m->dims.layer, op_shape(x, a, sizeof a));
        return NULL;
    }
    if (recording) {
        /* x alone decides nothing here: the node must exist when only the params want grads */
        hyb_tensor *ins[1] = {x};
        hyb_node *nd = graph_record(g, OP, y, ins, 1, mixer_bwd);
        if (!nd) return NULL;
        nd->ptr = m;
        nd->xin = m->params; /* accumulated by mixer_bwd: final after this node (grad hook) */
        nd->n_xin = m->n_params;
        nd->saved[0] = saved;
        nd->saved[1] = (void *)params;
        nd->iv[0] = B;
        nd->iv[1] = T;
    }
    return y;
}
