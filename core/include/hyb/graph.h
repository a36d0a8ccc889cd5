/* hyb/graph.h: the graph (a tape of nodes with forward and backward) and the core ops.
 *
 *   hyb_graph *g = hyb_graph_new();
 *   hyb_tensor *h  = hyb_embedding(g, wte, ids, B, T);        // [B, T, D]
 *   hyb_tensor *u  = hyb_rmsnorm(g, h, norm_w, 1e-5f);        // [B, T, D]
 *   hyb_tensor *lg = hyb_matmul(g, u, lm_head);               // [B, T, V]
 *   hyb_tensor *L  = hyb_cross_entropy(g, lg, targets, NULL); // [1]
 *   hyb_graph_backward(g, L);      // accumulates into every requires_grad tensor's ->grad
 *   hyb_graph_reset(g);            // drop nodes + activations, keep the arena's memory
 *
 * Ops run eagerly on the inputs' device and, when grad mode is on and an input requires grad,
 * record a node (inputs, output, saved values, backward function) on the tape. Activations come
 * from the graph's arena and live until hyb_graph_reset. Parameters are ordinary tensors with
 * requires_grad = 1 and a ->grad tensor of the same shape (the parameter store makes both; for
 * a model's parameters, owner HYB_OWN_PARAM, the grad is allocated zeroed at the first backward
 * that reaches them or when an optimiser is made, so inference holds no gradients).
 *
 * Every op returns NULL on a shape/dtype/device mismatch with hyb_error() naming the op and the
 * shapes, e.g. "hyb_matmul: x [2, 5, 576] and W [1536, 512]: inner dims differ (576 vs 512)".
 * Ops compute in f32 on the CPU (OpenBLAS + OpenMP); each dispatches through the backend vtable
 * (backend.h) of its inputs' device.
 */
#ifndef HYB_GRAPH_H
#define HYB_GRAPH_H

#include "hyb/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hyb_graph hyb_graph;
struct hyb_mixer; /* runtime mixer instance, see mixer.h */

hyb_graph *hyb_graph_new(void);
void hyb_graph_free(hyb_graph *g);
/* Drop all nodes and activations (the arena keeps its blocks for the next step). */
void hyb_graph_reset(hyb_graph *g);
/* Grad mode (default on). Off: no nodes recorded, no activations saved (teacher, eval). */
void hyb_graph_set_grad(hyb_graph *g, int enabled);
int hyb_graph_grad_enabled(const hyb_graph *g);
/* A zeroed f32 (or other dtype) tensor owned by the graph's arena. */
hyb_tensor *hyb_graph_tensor(hyb_graph *g, hyb_dtype dtype, int ndim, const int64_t *shape);
/* Arena bytes in use now / at the peak since creation. */
size_t hyb_graph_bytes(const hyb_graph *g);
size_t hyb_graph_peak_bytes(const hyb_graph *g);
int hyb_graph_n_nodes(const hyb_graph *g);

/* Reverse pass from a scalar loss ([1] or [] numel 1): d loss = 1 (times `scale`, for gradient
 * accumulation), then each node's backward in reverse order. Gradients of parameters are
 * ACCUMULATED into their ->grad; intermediate grads live in the arena. */
int hyb_graph_backward(hyb_graph *g, hyb_tensor *loss, float scale);

/* Gradient tap (analysis, hyb_model_capture): mark t (an activation of g, f32) as requiring grad,
 * so that the ops reading it from now on are recorded, and after every reverse pass on g until
 * hyb_graph_reset copy the complete gradient that reached t into dst (f32, t's numel and device,
 * owned by the caller; zeros when no gradient reached t) and set *done = 1 (done may be NULL).
 * The copy runs after the whole pass, not from a node next to t's producer: a fused op
 * (hyb_add_rmsnorm) records a consumer of its own output, whose share would come after such a
 * node. t's gradient is zeroed before each pass (as intermediate grads are). Taps cost nothing
 * when none is set. Must be called while grad mode is on (HYB_ERR_ARG otherwise).
 * link (may be NULL): the owner's pointer to g; set to g here, and to NULL when g drops its taps
 * (hyb_graph_reset, hyb_graph_free), so an owner that frees dst first calls hyb_graph_untap on a
 * graph that is still alive (*link non-NULL) or on none. */
int hyb_graph_tap_grad(hyb_graph *g, hyb_tensor *t, hyb_tensor *dst, int *done, hyb_graph **link);
/* Remove the taps whose `done` pointer is `done` (before freeing their destinations). */
void hyb_graph_untap(hyb_graph *g, const int *done);

/* Gradient-ready hook (data-parallel overlap, docs/DISTRIBUTED.md): during every reverse pass on
 * g, fn(ctx, p) is called once for each tensor p that is not an activation of g (a parameter)
 * whose gradient the tape accumulates into, right after the backward of the last node that
 * accumulates into p has run (the earliest such node on the tape): p->grad is then final for this
 * pass. Parameters no node reads are not reported. fn returning an error stops the pass with it.
 * fn NULL removes the hook (the default: the pass then does no extra work). Kept across
 * hyb_graph_reset. */
typedef int (*hyb_grad_ready_fn)(void *ctx, hyb_tensor *p);
void hyb_graph_on_grad_ready(hyb_graph *g, hyb_grad_ready_fn fn, void *ctx);

/* ---- core ops (x: [..., D] means any number of leading dims) ----------------------------------*/

/* W: [V, D], ids: [B*T] token ids (copied) -> [B, T, D]. An id outside [0, V) is an error. */
hyb_tensor *hyb_embedding(hyb_graph *g, hyb_tensor *W, const int32_t *ids, int B, int T);
/* x: [..., K], W: [N, K] (a Linear weight) -> [..., N] = x W^T */
hyb_tensor *hyb_matmul(hyb_graph *g, hyb_tensor *x, hyb_tensor *W);
/* x: [..., D], w: [D] -> x / sqrt(mean(x^2) + eps) * w (variance in f32) */
hyb_tensor *hyb_rmsnorm(hyb_graph *g, hyb_tensor *x, hyb_tensor *w, float eps);
/* The residual add fused with the next norm: a, b: [..., D] (same shape), w: [D] ->
 * *h = a + b (the new residual stream) and returns rmsnorm(*h, w, eps); the same values as
 * hyb_add then hyb_rmsnorm (bit-identical on the CPU) from one kernel (be->add_rmsnorm_fwd). The
 * tape gets the same two nodes as the separate ops (add, rmsnorm), so gradients are unchanged.
 * NULL (and *h = NULL) on error. */
hyb_tensor *hyb_add_rmsnorm(hyb_graph *g, hyb_tensor *a, hyb_tensor *b, hyb_tensor *w, float eps,
                            hyb_tensor **h);
/* x: [B, T, H, hd]; pos: [T] positions (NULL = 0..T-1) -> rotated copy (HF half-split layout) */
hyb_tensor *hyb_rope(hyb_graph *g, hyb_tensor *x, const int32_t *pos, float theta);
/* gate, up: [..., F] -> silu(gate) * up */
hyb_tensor *hyb_swiglu(hyb_graph *g, hyb_tensor *gate, hyb_tensor *up);
/* a, b: same shape -> a + b */
hyb_tensor *hyb_add(hyb_graph *g, hyb_tensor *a, hyb_tensor *b);
/* x: [..., V] -> softmax over the last dim */
hyb_tensor *hyb_softmax(hyb_graph *g, hyb_tensor *x);

/* Losses: logits [B, T, V] (or [N, V]); mask [B*T] of 0/1 weights or NULL (all tokens).
 * Each returns a [1] tensor: the mean over masked tokens. */
/* targets [B*T], entries < 0 ignored */
hyb_tensor *hyb_cross_entropy(hyb_graph *g, hyb_tensor *logits, const int32_t *targets,
                              const float *mask);
/* KL(teacher || student) at temperature T (teacher is a constant: no grad flows to it), with the
 * same conventions as hyb_kl_reverse: p = log_softmax(clamp(teacher / T, -100, 100)),
 * q = log_softmax(clamp(student, -100, 100)), KL_t = sum_v exp(p_v) (p_v - q_v) (no T^2 factor);
 * dKL_t/dstudent_v = exp(q_v) - exp(p_v), zero where the student logit is outside [-100, 100]. */
hyb_tensor *hyb_kl_forward(hyb_graph *g, hyb_tensor *student, hyb_tensor *teacher,
                           const float *mask, float temperature);
/* KL(student || teacher), SPEC.md section 5: both clamped to [-100, 100], teacher / T */
hyb_tensor *hyb_kl_reverse(hyb_graph *g, hyb_tensor *student, hyb_tensor *teacher,
                           const float *mask, float temperature);

/* sum_i w[i] * ins[i] over n <= 3 one-element losses (on their device): the distillation mix. */
hyb_tensor *hyb_weighted_sum(hyb_graph *g, hyb_tensor *const *ins, const float *w, int n);

/* A mixer (plugin) as one coarse node: x [B, T, D] -> [B, T, D]. Backward calls the plugin's
 * backward and accumulates into the mixer's parameter grads. states/pos as in hyb_mixer_fwd
 * (NULL for training). */
hyb_tensor *hyb_mixer_apply(hyb_graph *g, struct hyb_mixer *m, hyb_tensor *x, void *const *states,
                            const int32_t *pos, int max_ctx);
/* The same with states whose KV cache is stored as kv (hyb_kv_dtype; the plain one: f32). */
hyb_tensor *hyb_mixer_apply_kv(hyb_graph *g, struct hyb_mixer *m, hyb_tensor *x,
                               void *const *states, const int32_t *pos, int max_ctx, int kv);

#ifdef __cplusplus
}
#endif
#endif
