/* tests/test_graph.c: the arena, the tape (reset, grad mode, accumulation, repeated backward) and a
 * small two-layer model checked end to end against finite differences. */
#include <stdlib.h>
#include <string.h>

#include "graph/arena.h"
#include "gradcheck.h"
#include "harness.h"
#include "hyb/graph.h"

// ---- arena ----------------------------------------------------------------------------------

static void test_arena(void) {
    hyb_arena *a = hyb_arena_new(1024, NULL);
    CHECK(a && hyb_arena_used(a) == 0 && hyb_arena_n_blocks(a) == 0);
    unsigned char *p1 = hyb_arena_alloc(a, 100);  /* 128 after alignment */
    unsigned char *p2 = hyb_arena_alloc(a, 1);    /* 64 */
    unsigned char *p3 = hyb_arena_alloc(a, 5000); /* larger than a block: a block of its own */
    unsigned char *p4 = hyb_arena_alloc(a, 900);  /* does not fit the first block's rest */
    CHECK(p1 && p2 && p3 && p4);
    CHECK(((uintptr_t)p1 & 63) == 0 && ((uintptr_t)p2 & 63) == 0 && ((uintptr_t)p3 & 63) == 0 &&
          ((uintptr_t)p4 & 63) == 0);
    CHECK(p2 == p1 + 128);
    CHECK(hyb_arena_used(a) == 128 + 64 + 5056 + 960);
    CHECK(hyb_arena_n_blocks(a) == 3);
    CHECK(hyb_arena_capacity(a) == 1024 + 5056 + 1024);
    /* the regions do not overlap */
    memset(p1, 1, 100);
    memset(p2, 2, 1);
    memset(p3, 3, 5000);
    memset(p4, 4, 900);
    CHECK(p1[99] == 1 && p2[0] == 2 && p3[0] == 3 && p3[4999] == 3 && p4[899] == 4);
    size_t peak = hyb_arena_peak(a);
    CHECK(peak == hyb_arena_used(a));
    /* reset keeps the blocks; the same sequence reuses them without allocating */
    hyb_arena_reset(a);
    CHECK(hyb_arena_used(a) == 0 && hyb_arena_peak(a) == peak && hyb_arena_n_blocks(a) == 3);
    unsigned char *q1 = hyb_arena_alloc(a, 100);
    unsigned char *q2 = hyb_arena_alloc(a, 1);
    CHECK(q1 == p1 && q2 == p2);
    CHECK(hyb_arena_alloc(a, 5000) == p3);
    CHECK(hyb_arena_n_blocks(a) == 3);
    hyb_arena_reset(a);
    CHECK(hyb_arena_alloc(a, 10) == p1);
    CHECK(hyb_arena_peak(a) == peak);
    hyb_arena_free(a);
}

static void test_graph_memory(void) {
    hyb_graph *g = hyb_graph_new();
    CHECK(hyb_graph_bytes(g) == 0);
    int64_t s[2] = {100, 100};
    hyb_tensor *t = hyb_graph_tensor(g, HYB_F32, 2, s);
    CHECK(t && t->owner == HYB_OWN_ARENA && hyb_tensor_numel(t) == 10000);
    CHECK(hyb_graph_bytes(g) >= 40000);
    memset(t->data, 0xff, 40000);
    size_t peak = hyb_graph_peak_bytes(g);
    hyb_graph_reset(g);
    CHECK(hyb_graph_bytes(g) == 0 && hyb_graph_peak_bytes(g) == peak);
    hyb_tensor *u = hyb_graph_tensor(g, HYB_F32, 2, s); /* reuses the dirty memory, zeroed */
    int zero = 1;
    for (int i = 0; i < 10000; i++)
        zero &= hyb_tensor_f32(u)[i] == 0.0f;
    CHECK(zero);
    hyb_tensor_free(u); /* a no-op for arena tensors */
    int64_t q[1] = {64};
    hyb_tensor *qt = hyb_graph_tensor(g, HYB_Q8_0, 1, q);
    CHECK(qt && hyb_tensor_nbytes(qt) == 68);
    int64_t bad[1] = {33};
    CHECK(hyb_graph_tensor(g, HYB_Q8_0, 1, bad) == NULL);
    hyb_graph_free(g);
}

// ---- a small model --------------------------------------------------------------------------

enum { V = 11, D = 8, F = 12, B = 2, T = 3, NL = 2 };
static const int32_t IDS[B * T] = {1, 4, 4, 10, 0, 7};
static const int32_t TGT[B * T] = {4, 4, -1, 0, 7, 3};

/* params: [0] embed (tied lm_head), per layer l: [1+5l] norm, [2+5l] gate, [3+5l] up,
 * [4+5l] down, [5+5l] second norm (unused by layer 0's mlp but applied as post-norm) ... kept
 * simple: per layer norm, gate, up, down; then the final norm. */
#define NP (1 + 4 * NL + 1)

static hyb_tensor *model_loss(hyb_graph *g, hyb_tensor **p, void *ctx) {
    (void)ctx;
    hyb_tensor *h = hyb_embedding(g, p[0], IDS, B, T);
    for (int l = 0; l < NL; l++) {
        hyb_tensor **w = p + 1 + 4 * l;
        hyb_tensor *u = hyb_rmsnorm(g, h, w[0], 1e-5f);
        hyb_tensor *gt = hyb_matmul(g, u, w[1]);
        hyb_tensor *up = hyb_matmul(g, u, w[2]);
        hyb_tensor *s = hyb_swiglu(g, gt, up);
        hyb_tensor *d = hyb_matmul(g, s, w[3]);
        h = hyb_add(g, h, d);
        if (!h) return NULL;
    }
    hyb_tensor *hf = hyb_rmsnorm(g, h, p[NP - 1], 1e-5f);
    hyb_tensor *logits = hyb_matmul(g, hf, p[0]); /* tied: the embedding is also the lm_head */
    return hyb_cross_entropy(g, logits, TGT, NULL);
}

static void make_model(hyb_tensor **p) {
    int64_t es[2] = {V, D}, ns[1] = {D}, gs[2] = {F, D}, ds[2] = {D, F};
    p[0] = gc_param(2, es, 100, 0, 1);
    snprintf(p[0]->name, sizeof p[0]->name, "model.embed_tokens.weight");
    for (int l = 0; l < NL; l++) {
        hyb_tensor **w = p + 1 + 4 * l;
        w[0] = gc_param(1, ns, 101 + 10 * l, 1, 0.2f);
        w[1] = gc_param(2, gs, 102 + 10 * l, 0, 0.5f);
        w[2] = gc_param(2, gs, 103 + 10 * l, 0, 0.5f);
        w[3] = gc_param(2, ds, 104 + 10 * l, 0, 0.5f);
    }
    p[NP - 1] = gc_param(1, ns, 199, 1, 0.2f);
}

static void test_model_gradcheck(void) {
    hyb_tensor *p[NP];
    make_model(p);
    double err = gc_check("2-layer model", model_loss, p, NP, NULL, 200);
    CHECK(err <= GC_TOL);
    for (int i = 0; i < NP; i++)
        gc_free(p[i]);
}

static void test_backward_accumulates(void) {
    hyb_tensor *p[NP];
    make_model(p);
    hyb_graph *g = hyb_graph_new();
    hyb_tensor *L = model_loss(g, p, NULL);
    CHECK(L && L->requires_grad);
    size_t fwd_bytes = hyb_graph_bytes(g);
    int n_nodes = hyb_graph_n_nodes(g);
    CHECK(n_nodes == 1 + NL * 6 + 3);
    CHECK(hyb_graph_backward(g, L, 1.0f) == HYB_OK);
    float *g1[NP];
    for (int i = 0; i < NP; i++) {
        int64_t n = hyb_tensor_numel(p[i]);
        g1[i] = malloc(sizeof(float) * (size_t)n);
        memcpy(g1[i], p[i]->grad->data, sizeof(float) * (size_t)n);
    }
    /* a second backward over the same tape adds the same amount again (intermediate grads are
     * cleared between passes: leftovers would make it 3x), scale multiplies */
    CHECK(hyb_graph_backward(g, L, 2.0f) == HYB_OK);
    double maxerr = 0, maxg = 0;
    for (int i = 0; i < NP; i++)
        for (int64_t j = 0; j < hyb_tensor_numel(p[i]); j++) {
            maxerr = fmax(maxerr, fabs(hyb_tensor_f32(p[i]->grad)[j] - 3.0 * g1[i][j]));
            maxg = fmax(maxg, fabs(g1[i][j]));
        }
    CHECK(maxg > 0);
    CHECK_MSG(maxerr <= 1e-5 * maxg, "grad after 1x + 2x backward off by %.3g (max grad %.3g)",
              maxerr, maxg);
    /* reset drops the tape: the graph is reusable and gives the same loss */
    float l0 = hyb_tensor_f32(L)[0];
    CHECK(hyb_graph_bytes(g) > fwd_bytes); /* backward added the intermediate grads */
    hyb_graph_reset(g);
    CHECK(hyb_graph_n_nodes(g) == 0 && hyb_graph_bytes(g) == 0);
    L = model_loss(g, p, NULL);
    CHECK(L && hyb_tensor_f32(L)[0] == l0 && hyb_graph_bytes(g) == fwd_bytes);
    /* eval mode: same loss, no nodes, no more memory than training's forward */
    hyb_graph_reset(g);
    hyb_graph_set_grad(g, 0);
    L = model_loss(g, p, NULL);
    CHECK(L && hyb_tensor_f32(L)[0] == l0 && hyb_graph_n_nodes(g) == 0);
    CHECK(hyb_graph_bytes(g) <= fwd_bytes);
    hyb_graph_set_grad(g, 1);
    /* frozen embedding: the rest still trains, the embedding's grad is untouched */
    hyb_graph_reset(g);
    for (int i = 0; i < NP; i++)
        gc_zero_grad(p[i]);
    p[0]->requires_grad = 0;
    L = model_loss(g, p, NULL);
    CHECK(hyb_graph_backward(g, L, 1.0f) == HYB_OK);
    double e0 = 0, e1 = 0;
    for (int64_t j = 0; j < V * D; j++)
        e0 = fmax(e0, fabs(hyb_tensor_f32(p[0]->grad)[j]));
    for (int64_t j = 0; j < F * D; j++)
        e1 = fmax(e1, fabs(hyb_tensor_f32(p[2]->grad)[j] - g1[2][j]));
    CHECK(e0 == 0.0);
    CHECK(e1 <= 1e-6);
    for (int i = 0; i < NP; i++) {
        free(g1[i]);
        gc_free(p[i]);
    }
    hyb_graph_free(g);
}

/* The gradient-ready hook: each trainable parameter reported once, and its gradient at that
 * moment is already its final gradient of the pass (bitwise); the tied embedding (read by the
 * first node and the lm_head) comes last; a frozen one is not reported; an error from the hook
 * stops the pass with it. */
typedef struct ready_log {
    hyb_tensor **p;
    int seen[NP], order[NP], n;
    float *snap[NP];
    int fail_at; /* return an error at this report (-1: never) */
} ready_log;

static int ready_cb(void *ctx, hyb_tensor *t) {
    ready_log *r = ctx;
    int i = 0;
    while (i < NP && r->p[i] != t)
        i++;
    CHECK(i < NP);
    if (i == NP) return HYB_ERR;
    r->seen[i]++;
    if (r->n == r->fail_at) return hyb_error_set(HYB_ERR_ARG, "ready_cb: stop at %d", r->n);
    r->order[r->n++] = i;
    int64_t n = hyb_tensor_numel(t);
    free(r->snap[i]);
    r->snap[i] = malloc(sizeof(float) * (size_t)n);
    memcpy(r->snap[i], t->grad->data, sizeof(float) * (size_t)n);
    return HYB_OK;
}

static void test_grad_ready_hook(void) {
    hyb_tensor *p[NP];
    make_model(p);
    hyb_graph *g = hyb_graph_new();
    ready_log r;
    memset(&r, 0, sizeof r);
    r.p = p;
    r.fail_at = -1;
    hyb_graph_on_grad_ready(g, ready_cb, &r);
    hyb_tensor *L = model_loss(g, p, NULL);
    CHECK(L && hyb_graph_backward(g, L, 1.0f) == HYB_OK);
    CHECK(r.n == NP);
    for (int i = 0; i < NP; i++) {
        CHECK_MSG(r.seen[i] == 1, "param %d reported %d times", i, r.seen[i]);
        int64_t n = hyb_tensor_numel(p[i]);
        CHECK_MSG(r.snap[i] && memcmp(r.snap[i], p[i]->grad->data, sizeof(float) * (size_t)n) == 0,
                  "param %d: gradient at the report is not the final one", i);
    }
    CHECK(r.order[0] == NP - 1); /* the final norm first (after the lm_head's matmul) */
    CHECK(r.order[NP - 1] == 0); /* the tied embedding last: its first node is the lookup */
    CHECK(r.order[1] == 1 + 4 * (NL - 1) + 3); /* then the last layer's down projection */
    /* reset keeps the hook; a frozen parameter is not reported */
    hyb_graph_reset(g);
    for (int i = 0; i < NP; i++)
        gc_zero_grad(p[i]);
    memset(r.seen, 0, sizeof r.seen);
    r.n = 0;
    p[2]->requires_grad = 0;
    L = model_loss(g, p, NULL);
    CHECK(L && hyb_graph_backward(g, L, 1.0f) == HYB_OK);
    CHECK(r.n == NP - 1 && r.seen[2] == 0);
    p[2]->requires_grad = 1;
    /* an error from the hook ends the pass with it */
    hyb_graph_reset(g);
    r.n = 0;
    r.fail_at = 3;
    L = model_loss(g, p, NULL);
    CHECK(L && hyb_graph_backward(g, L, 1.0f) != HYB_OK);
    CHECK(strstr(hyb_error(), "ready_cb: stop at 3") != NULL);
    /* removed: nothing reported */
    hyb_graph_on_grad_ready(g, NULL, NULL);
    hyb_graph_reset(g);
    r.n = 0;
    r.fail_at = -1;
    L = model_loss(g, p, NULL);
    CHECK(L && hyb_graph_backward(g, L, 1.0f) == HYB_OK && r.n == 0);
    for (int i = 0; i < NP; i++) {
        free(r.snap[i]);
        gc_free(p[i]);
    }
    hyb_graph_free(g);
}

static void test_backward_errors(void) {
    hyb_graph *g = hyb_graph_new();
    CHECK(hyb_graph_backward(g, NULL, 1.0f) == HYB_ERR_ARG);
    int64_t s[2] = {2, 3};
    hyb_tensor *x = hyb_tensor_new(HYB_F32, 2, s);
    x->requires_grad = 1; /* a leaf that wants a grad but has none */
    int32_t tg[2] = {0, 1};
    hyb_tensor *L = hyb_cross_entropy(g, x, tg, NULL);
    CHECK(L && L->requires_grad);
    CHECK(hyb_graph_backward(g, L, 1.0f) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "[2, 3]") && strstr(hyb_error(), "no ->grad") &&
          strstr(hyb_error(), "hyb_cross_entropy"));
    /* a grad of the wrong shape */
    int64_t s2[1] = {5};
    x->grad = hyb_tensor_new(HYB_F32, 1, s2);
    CHECK(hyb_graph_backward(g, L, 1.0f) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "[2, 3]") && strstr(hyb_error(), "[5]"));
    hyb_tensor_free(x->grad);
    x->grad = hyb_tensor_new(HYB_F32, 2, s);
    CHECK(hyb_graph_backward(g, L, 1.0f) == HYB_OK);
    hyb_tensor_free(x->grad);
    hyb_tensor_free(x);
    /* a heap tensor is not a loss of this graph */
    int64_t one = 1;
    hyb_tensor *h = hyb_tensor_new(HYB_F32, 1, &one);
    h->requires_grad = 1;
    CHECK(hyb_graph_backward(g, h, 1.0f) == HYB_ERR_ARG);
    hyb_tensor_free(h);
    hyb_graph_free(g);
}

int main(void) {
    RUN(test_arena);
    RUN(test_graph_memory);
    RUN(test_model_gradcheck);
    RUN(test_backward_accumulates);
    RUN(test_grad_ready_hook);
    RUN(test_backward_errors);
    return harness_done();
}
