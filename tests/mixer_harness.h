/* tests/mixer_harness.h: the one mixer test harness (in the spirit of ggml's test-backend-ops).
 *
 * Every mixer plugin is driven through the same checks, each a function of a table row
 * (mh_case) and an instance (mh_inst):
 *   mh_check_ref       forward, final states and all gradients against an independent reference
 *                      (a golden file read by the mixer's own loader into an mh_ref)
 *   mh_check_fd        finite-difference gradients of x and every parameter
 *   mh_check_decode    prefill + batched decode (n sequences at different positions) == forward
 *   mh_check_chunked   chunked prefill continuing from states == one prefill (outputs, states)
 *   mh_check_snapshot  snapshot -> diverge -> restore -> decode == the uninterrupted run
 *   mh_check_graph     the graph op hyb_mixer_apply (tape backward, T == 1 decode step) == kernels
 *   mh_check_backends  every backend that opens vs the CPU: forward, backward, decode
 *   mh_check_bad_input missing kernels, shapes, pos beyond max_ctx, backward without forward
 * tests/test_mixers.c holds the table (every shipped mixer and any plugin found on the search
 * path); tests/test_<mixer>.c keep what only fits one mixer (init_from, layer maps, models) and
 * use the same instance helpers. A third-party plugin runs through test_mixers (PLUGINS.md).
 */
#ifndef HYB_TEST_MIXER_HARNESS_H
#define HYB_TEST_MIXER_HARNESS_H
#include <stdint.h>
#include <stdio.h>

#include "harness.h"
#include "hyb/config.h"
#include "hyb/graph.h"
#include "hyb/mixer.h"
#include "hyb/model.h"

/* A mixer built from a TOML snippet, with host pointers to its parameters and gradients. */
typedef struct mh_inst {
    hyb_mixer *m;
    hyb_toml *doc;
    int D;
    const float **pp; /* [n_params] */
    float **gp;       /* [n_params] */
} mh_inst;

/* Parameter initialisation of a test instance (away from the plugin's init so every path
 * matters): seed and scale are the row's. */
typedef void (*mh_init_fn)(mh_inst *I, uint64_t seed, float scale);

/* Loads the plugins of the NULL-terminated mixer types; prints the loader's error and returns -1
 * when one is missing (a test's main then exits 1 rather than failing every case). */
int mh_require(const char *type, ...);

/* toml NULL: no table (the plugin's defaults). layer/n_layers as in hyb_model_dims. */
int mh_inst_new_ex(mh_inst *I, const char *type, int D, const char *toml, uint64_t seed,
                   int layer, int n_layers);
int mh_inst_new(mh_inst *I, const char *type, int D, const char *toml, uint64_t seed);
void mh_inst_free(mh_inst *I);
long mh_pnumel(const mh_inst *I, int i);
void mh_zero_grads(mh_inst *I);
void *mh_saved_new(mh_inst *I, int B, int T);
/* The CPU kernels, host memory. */
int mh_fwd(mh_inst *I, int B, int T, const float *x, float *y, void *saved, void *const *states,
           const int32_t *pos, int max_ctx);
int mh_bwd(mh_inst *I, int B, int T, const float *x, const float *dy, float *dx,
           const void *saved);
int mh_dec(mh_inst *I, int n, const float *x, float *y, void *const *states, const int32_t *pos,
           int max_ctx);
/* The CPU kernels of mixer m called directly, through backend be, on the given parameter (and
 * gradient) buffers: for buffers the mixer does not own (a wrapped backend's, a test's copies). */
int mh_fwd_on(const hyb_mixer *m, const hyb_backend *be, const float *const *params, int B, int T,
              const float *x, float *y, void *saved, void *const *states, const int32_t *pos,
              int max_ctx);
int mh_bwd_on(const hyb_mixer *m, const hyb_backend *be, const float *const *params,
              float *const *grads, int B, int T, const float *x, const float *dy, float *dx,
              const void *saved);
int mh_dec_on(const hyb_mixer *m, const hyb_backend *be, const float *const *params, int n,
              const float *x, float *y, void *const *states, const int32_t *pos, int max_ctx);

/* Initialisers: N(0, scale) for every parameter (mha); the same with o_norm.weight + 1 and
 * dt_bias - 1 (deltanet, gated_deltanet); mamba1's (A_log ~ log(n+1), D ~ 1, dt bias giving dt in
 * ~[0.05, 1], weights N(0, scale / sqrt(fan_in))); the plugin's own init plus N(0, scale) (any
 * other plugin). mh_init_for(type) picks one by mixer type. */
void mh_init_normal(mh_inst *I, uint64_t seed, float scale);
void mh_init_deltanet(mh_inst *I, uint64_t seed, float scale);
void mh_init_mamba1(mh_inst *I, uint64_t seed, float scale);
void mh_init_perturb(mh_inst *I, uint64_t seed, float scale);
mh_init_fn mh_init_for(const char *type);

float *mh_randn(hyb_rng *r, size_t n, float s);
/* free() each of the n pointers */
void mh_free(int n, ...);
double mh_max_abs(const float *a, long n);
double mh_max_diff(const float *a, const float *b, long n);
/* worst |a - b| / (atol + rtol |b|): <= 1 means every element passes numpy's allclose */
double mh_allclose_ratio(const float *a, const float *b, long n, double rtol, double atol);

/* (logits of a model forward without a tape: harness_logits in harness.h) */

/* Prefill + batched decode of a model (an f32 KV cache) against its forward logits: sequence s
 * (ids + s * stride) has len[s] tokens, prompt[s] prefilled (in two calls of split[s] and the rest when split is
 * non-NULL and split[s] > 0), then decoded in batches of every unfinished sequence. Returns the
 * worst max rel error (floor 1) of the logits. */
double mh_model_decode_vs_forward(hyb_model *m, int ns, const int32_t *ids, int stride,
                                  const int *len, const int *prompt, const int *split, int max_ctx);
/* Next-token training on seq [B, T + 1] (inputs seq[:, :T], targets seq[:, 1:]): `steps` AdamW
 * steps (lr, weight decay 0.01, gradients clipped to norm 1). First and last loss; 1 when every
 * step ran. */
int mh_model_train(hyb_model *m, const int32_t *seq, int B, int T, int steps, float lr,
                   double *first, double *last);

/* Tolerances of one comparison of a against the reference b; 0 = not checked. */
typedef struct mh_tol {
    double rel1;       /* max_i |a-b| / max(|b_i|, 1) < rel1 */
    double relmax;     /* max |a-b| / max |b| < relmax (sums that cancel: gradients) */
    double relrms;     /* rms(a-b) / rms(b) < relrms (flash-linear-attention's metric) */
    double rtol, atol; /* allclose(rtol, atol) */
    double abs;        /* max |a-b| < abs */
    double abs1;       /* max |a-b| / (1 + max |b|) < abs1 */
} mh_tol;
/* Prints one line with the measured errors and CHECKs every bound set; returns 1 when all pass. */
int mh_compare(const char *what, const float *a, const float *b, long n, mh_tol tol);

/* ---- the reference (golden) check ---------------------------------------------------------- */

/* A reference case read from a golden file by the mixer's loader: the loader reads the header,
 * writes the mixer's TOML table, the shape, the tolerances and the layout of the rest of the file
 * as space-separated tokens: x, P (every parameter, declaration order, sizes from the instance),
 * y, dy, dx, G (every parameter gradient), S (the next state part, mh_ref.parts in order, B
 * blocks of its n floats each). mh_check_ref reads the rest, requires the file to end there, and
 * compares: y, dx (tol_y, tol_dx), the gradients (tol_grad), a second backward accumulating
 * (g - ref against ref: tol_acc), then a prefill into garbage-filled states: y again and each state
 * part against its reference. */
#define MH_MAX_PARTS 4
typedef struct mh_ref {
    char toml[512];
    int B, T, D;
    const char *layout;
    mh_tol tol_y, tol_dx, tol_grad, tol_acc;
    int n_parts;
    struct {
        const char *name;
        long off, n; /* floats: offset into one sequence's state, count */
        mh_tol tol;
    } parts[MH_MAX_PARTS];
    long state_floats; /* state_bytes(T) / 4 must be this (0: not checked) */
} mh_ref;
/* Reads the header from f; returns 0 or fails a CHECK. `arg` is the table row's (a chunk size). */
typedef int (*mh_ref_loader)(FILE *f, int arg, mh_ref *r);
/* path under $HYB_TEST_DATA. */
void mh_check_ref(const char *type, const char *file, mh_ref_loader load, int arg);

/* ---- the table row ------------------------------------------------------------------------- */

enum {
    MH_FD = 1u << 0,
    MH_DECODE = 1u << 1,
    MH_CHUNKED = 1u << 2,
    MH_SNAPSHOT = 1u << 3,
    MH_GRAPH = 1u << 4,
    MH_BACKENDS = 1u << 5,
    MH_BAD_INPUT = 1u << 6,
    MH_ALL = 0x7f,
};

typedef struct mh_fd_spec {
    int B, T;
    int points;         /* 2: central difference O(h^2); 4: 4-point rule O(h^4) */
    float h;            /* step */
    double atol, rtol;  /* per element |fd - an| <= atol + rtol |an| */
    double normwise;    /* ||fd - an|| / ||an|| < normwise */
} mh_fd_spec;

#define MH_MAX_SEQ 17
typedef struct mh_case {
    const char *label;
    const char *type;
    int D;
    const char *toml; /* NULL: the plugin's defaults */
    uint64_t seed;    /* hyb_mixer_new */
    mh_init_fn init;  /* NULL: mh_init_for(type) */
    uint64_t init_seed;
    float init_scale;
    unsigned checks; /* MH_* */
    mh_fd_spec fd;
    struct { /* decode: sequences of len[s] tokens, pre[s] prefilled (0: none), then batched */
        int ns, len[MH_MAX_SEQ], pre[MH_MAX_SEQ], max_ctx;
        int garbage;      /* byte the states are filled with first (-1: zeros) */
        long state_bytes; /* state_bytes(max_ctx) must be this (0: not checked) */
        int fixed_state;  /* 1: state_bytes does not depend on max_ctx */
    } dec;
    struct { /* chunked prefill: first[s] tokens, then `second` more of all sequences at once */
        int ns, first[MH_MAX_SEQ], second, max_ctx;
        double state_tol; /* max rel (floor 1) of the snapshots of the two states */
    } chunk;
    struct {
        int P, N, max_ctx;
        long snap_bytes; /* snapshot of P tokens must be this (0: not checked) */
    } snap;
    int saved_with_pos; /* a continued prefill with saved: 1 = refused (HYB_ERR_UNSUPPORTED),
                           0 = either */
} mh_case;

/* The building blocks of the checks, for the per-mixer tests too. Inputs ~ N(0, 1) from xseed.
 * Prefill + batched decode (the batch order alternates every step) against a forward of each
 * whole sequence: the worst max rel error (floor 1); *max_n gets the largest batch. */
double mh_decode_vs_forward(mh_inst *I, int ns, const int *len, const int *pre, int max_ctx,
                            int garbage, uint64_t xseed, int *max_n);
/* The same with the states' KV cache stored as mh_kv; *bound (may be NULL) gets the largest
 * mh_kv_bound_mha of the sequences. */
double mh_decode_vs_forward_kv(mh_inst *I, int ns, const int *len, const int *pre, int max_ctx,
                               int garbage, uint64_t xseed, int *max_n, double *bound);
/* The KV-cache type (hyb_kv_dtype) of the states the harness's kernels calls use (mh_fwd, mh_dec,
 * mh_fwd_on, mh_dec_on: the .kv of their arguments); HYB_KV_F32 except inside a check that sets
 * it. */
extern int mh_kv;
/* The first-order bound on |decode - forward| per output element that an mha KV cache stored as
 * kv implies for the sequence x [T, D] (0 for f32 and other mixers): see mixer_harness.c. */
double mh_kv_bound_mha(mh_inst *I, int kv, const float *x, int T);
/* first[s] tokens into each state, then `second` more of all ns sequences in one batched call
 * continuing at first[s], then one more token (continued prefill vs decode on the whole state):
 * worst rel error of the outputs and of the states' snapshots against one prefill of it all. */
void mh_chunked_vs_whole(mh_inst *I, int ns, const int *first, int second, int max_ctx,
                         int garbage, uint64_t xseed, double *err_y, double *err_state);

void mh_check_fd(const mh_case *c, mh_inst *I);
void mh_check_decode(const mh_case *c, mh_inst *I);
void mh_check_chunked(const mh_case *c, mh_inst *I);
void mh_check_snapshot(const mh_case *c, mh_inst *I);
void mh_check_graph(const mh_case *c, mh_inst *I);
void mh_check_backends(const mh_case *c, mh_inst *I);
/* The comparison of one backend against the CPU (used by mh_check_backends for every backend
 * that opens, and once with the CPU backend itself as a loopback of the device path). */
void mh_check_backend(const mh_case *c, mh_inst *I, const hyb_backend *be);
void mh_check_bad_input(const mh_case *c, mh_inst *I);
/* The checks HYB_TEST_CHECKS names (comma-separated: fd, decode, chunked, snapshot, graph,
 * backends, bad_input); MH_ALL when it is unset. */
unsigned mh_checks_selected(void);
/* Builds the row's instance and runs every check in c->checks that is also selected. */
void mh_run_case(const mh_case *c);
/* A row for a mixer the table does not know (a third-party plugin): every check at D with the
 * given TOML (NULL: defaults) and generic sizes. */
mh_case mh_default_case(const char *type, int D, const char *toml);
#endif
