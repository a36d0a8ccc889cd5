/* core/graph/graph_internal.h: the tape and the helpers every op uses (internal to libhyb).
 *
 * An op: check its inputs (op_check_*), make its output (graph_output, or op_output_like for one
 * shaped like an input), run the backend kernel, then, when graph_recording() says so, record a
 * node (op_record does both) whose backward reads node->out->grad and accumulates into each
 * input's gradient obtained with graph_grad(). */
#ifndef HYB_GRAPH_INTERNAL_H
#define HYB_GRAPH_INTERNAL_H

#include "graph/arena.h"
#include "hyb/backend.h"
#include "hyb/graph.h"

#define HYB_NODE_MAX_IN 3

/* Set an argument error and return NULL from an op. */
#define OP_ERR(...)                                                                                \
    do {                                                                                           \
        hyb_error_set(HYB_ERR_ARG, __VA_ARGS__);                                                   \
        return NULL;                                                                               \
    } while (0)

/* A backend call in an op's forward: on failure prefix the backend's message (which names the
 * kernel and its sizes) with the op and return NULL. Backward functions use HYB_TRY. */
#define OP_CALL(op, call)                                                                          \
    do {                                                                                           \
        int op_call_rc_ = (call);                                                                  \
        if (op_call_rc_ != HYB_OK) {                                                               \
            hyb_error_wrap(op_call_rc_, "%s", op);                                                 \
            return NULL;                                                                           \
        }                                                                                          \
    } while (0)

typedef struct hyb_node hyb_node;
typedef int (*hyb_backward_fn)(hyb_graph *g, hyb_node *n);

struct hyb_node {
    const char *op;
    hyb_tensor *in[HYB_NODE_MAX_IN];
    int n_in;
    hyb_tensor *out;
    const hyb_backend *be;
    hyb_backward_fn backward;
    void *saved[3]; /* arena buffers the backward needs (device or host as the op documents) */
    int64_t iv[4];  /* small integer parameters */
    float fv[4];    /* small float parameters */
    void *ptr;      /* op-specific object (the mixer for hyb_mixer_apply) */
    hyb_tensor **xin; /* tensors besides in[] whose gradients the backward accumulates (a */
    int n_xin;        /* mixer's parameters); the gradient-ready hook counts them as inputs */
};

typedef struct hyb_grad_tap {
    hyb_tensor *t;    /* the activation whose gradient is wanted (arena tensor) */
    hyb_tensor *dst;  /* where the gradient is copied after each reverse pass */
    int *done;        /* set to 1 then (may be NULL) */
    hyb_graph **link; /* the owner's pointer to this graph: NULLed when the taps are dropped */
} hyb_grad_tap;

struct hyb_graph {
    hyb_arena *host;               /* tensor structs, host-side saved data, CPU activations */
    hyb_arena *dev[HYB_DEV_COUNT]; /* per device data arena; dev[HYB_DEV_CPU] == host */
    hyb_node *nodes;
    int n_nodes, cap_nodes;
    int grad_enabled;
    hyb_grad_tap *taps; /* hyb_graph_tap_grad; dropped by hyb_graph_reset */
    int n_taps, cap_taps;
    hyb_grad_ready_fn ready_fn; /* hyb_graph_on_grad_ready (kept across resets) */
    void *ready_ctx;
};

/* Host memory from the graph's arena (not zeroed). */
void *graph_host_alloc(hyb_graph *g, size_t nbytes);
/* Device memory of `dev` from the graph's arena (not zeroed). */
void *graph_dev_alloc(hyb_graph *g, hyb_device dev, size_t nbytes);
/* An f32 arena tensor for an op's result (data not zeroed). NULL + error (prefixed by op). */
hyb_tensor *graph_output(hyb_graph *g, const char *op, hyb_device dev, int ndim,
                         const int64_t *shape);
/* The prologue of an op whose output has x's shape: *be = the backend of x's device and a new
 * output like x on it. NULL + error (prefixed by op). */
hyb_tensor *op_output_like(hyb_graph *g, const char *op, const hyb_tensor *x,
                           const hyb_backend **be);
/* Grad mode on and some input requires grad? (NULL entries are skipped.) */
int graph_recording(const hyb_graph *g, hyb_tensor *const *ins, int n);
/* Append a node; marks out->requires_grad. NULL + error on OOM. */
hyb_node *graph_record(hyb_graph *g, const char *op, hyb_tensor *out, hyb_tensor *const *ins,
                       int n_in, hyb_backward_fn backward);
/* The epilogue of an op: when graph_recording(g, ins, n_in), append a node (graph_record) and
 * hand it back in *nd (when nd is not NULL) for the op's saved data; *nd = NULL otherwise.
 * Returns HYB_OK, or an error (set) when the node could not be appended. */
int op_record(hyb_graph *g, const char *op, hyb_tensor *out, hyb_tensor *const *ins, int n_in,
              hyb_backward_fn backward, hyb_node **nd);
/* The gradient buffer of t for accumulation: *out = NULL when t does not require grad; an arena
 * tensor's grad is allocated (zeroed) on first use; a non-arena tensor must bring its own ->grad of
 * t's shape, f32, same device (error otherwise). */
int graph_grad(hyb_graph *g, hyb_tensor *t, float **out);

/* The backward of hyb_add (dy into both addends), shared with the fused hyb_add_rmsnorm. */
int op_add_bwd(hyb_graph *g, hyb_node *n);

/* Reverse pass from a non-scalar output with upstream gradient seed[numel(out)] (host memory);
 * hyb_graph_backward is the scalar case. Used by the gradient checks. */
int graph_backward_seed(hyb_graph *g, hyb_tensor *out, const float *seed);

/* Backend of a device, error prefixed with the op. */
const hyb_backend *op_backend(const char *op, hyb_device dev);
/* t non-NULL, f32, contiguous, on a device; `what` names it in messages ("x", "W"). */
int op_check_f32(const char *op, const char *what, const hyb_tensor *t);
/* Same device for a and b. */
int op_check_same_device(const char *op, const char *an, const hyb_tensor *a, const char *bn,
                         const hyb_tensor *b);
/* "[2, 3, 4]" (shape only) into buf. */
const char *op_shape(const hyb_tensor *t, char *buf, size_t n);
/* Rows of a [..., D] tensor as int for BLAS, error when too large. */
int op_rows_int(const char *op, const char *what, const hyb_tensor *t, int64_t inner, int *rows);
#endif
