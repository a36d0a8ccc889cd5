/* tests/test_mixers.c: every mixer plugin through the one harness (tests/mixer_harness.h), driven
 * by two tables:
 *
 *  REFS   forward, final states and all gradients against the independent references: golden
 *         files in tests/data written by tests/reference/{mha,mamba1,deltanet}_ref.py (HF
 *         LlamaAttention, PyTorch float64 Mamba, fla's naive recurrent DeltaNet), read by the
 *         loaders below (one per file format), at the tolerances stated with each loader;
 *  CASES  finite-difference gradients, prefill + batched decode vs forward, chunked prefill,
 *         snapshot / restore, the graph op, every backend vs the CPU, bad input.
 *
 * Every plugin on the search path that no row names (a third-party mixer) runs through every
 * check of CASES with its default configuration (mh_default_case). The environment narrows or
 * configures the run (PLUGINS.md, "Tests"):
 *   HYB_TEST_MIXERS=name[=table.toml],...   only these mixers; a TOML file replaces the rows of
 *                                          that mixer by one default row with that table
 *   HYB_TEST_MIXER_D=n                      d_model of the default rows (16)
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mixer_harness.h"

/* ---- reference loaders ------------------------------------------------------------------------
 */

/* HF LlamaAttention, float64 (tests/reference/mha_ref.py): header 8 x int32 (magic, B, T, D, H,
 * KV, hd, 0) and rope theta (double). y and dx: max |ours - ref| / max(|ref|, 1) < 1e-5. Weight
 * gradients are sums over all B*T tokens, so single elements can cancel far below the size of
 * their terms: max |ours - ref| against the largest element (a stricter reading of Fast-LLM's
 * relative RMS 1e-5) and the relative RMS, both < 1e-5. */
static int load_mha(FILE *f, int arg, mh_ref *r) {
    (void)arg;
    int32_t h[8];
    double theta;
    int ok = fread(h, 4, 8, f) == 8 && fread(&theta, 8, 1, f) == 1 && h[0] == 0x4D484131;
    CHECK_MSG(ok, "mha golden: bad header");
    if (!ok) return -1;
    r->B = h[1], r->T = h[2], r->D = h[3];
    snprintf(r->toml, sizeof r->toml,
             "type = \"mha\"\nn_heads = %d\nn_kv_heads = %d\nhead_dim = %d\nrope_theta = %.17g\n",
             h[4], h[5], h[6], theta);
    r->layout = "x P y dy dx G";
    r->tol_y = r->tol_dx = (mh_tol){.rel1 = 1e-5};
    r->tol_grad = (mh_tol){.relmax = 1e-5, .relrms = 1e-5};
    r->tol_acc = (mh_tol){.abs1 = 1e-4};
    return 0;
}

/* PyTorch float64 Mamba ("m2", tests/reference/mamba1_ref.py): header 12 x int32 (magic, B, T, D,
 * d_inner, d_xb, d_state, dt_rank, d_conv, double_dt_bias, ...), then the final states. SPEC.md
 * section 8 (mamba selective scan, fp32): rtol 6e-4, atol 2e-3; we hold a 30x tighter
 * allclose(2e-5, 6e-5) on y, dx and the ssm state; measured ~1e-6 absolute. The conv state holds
 * raw in_proj outputs: sgemm rounding only, 1e-5 absolute. Parameter gradients (sums over all
 * tokens and over heads for the repeated x/B): max err / max|ref| and relative RMS < 2e-5 (fla's
 * bar is 8e-3). `arg` is the scan chunk. */
static int load_mamba1(FILE *f, int chunk, mh_ref *r) {
    int32_t h[12];
    int ok = fread(h, 4, 12, f) == 12 && h[0] == 0x3141424D;
    CHECK_MSG(ok, "mamba1 golden: bad header");
    if (!ok) return -1;
    const int Di = h[4], Dx = h[5], N = h[6], R = h[7], K = h[8], dbl = h[9];
    r->B = h[1], r->T = h[2], r->D = h[3];
    snprintf(r->toml, sizeof r->toml,
             "type = \"mamba1\"\nd_inner = %d\nd_xb = %d\nd_state = %d\ndt_rank = %d\n"
             "d_conv = %d\ndouble_dt_bias = %s\nchunk = %d\n",
             Di, Dx, N, R, K, dbl ? "true" : "false", chunk);
    r->layout = "x P y dy dx G S S";
    r->tol_y = r->tol_dx = (mh_tol){.rtol = 2e-5, .atol = 6e-5};
    r->tol_grad = (mh_tol){.relmax = 2e-5, .relrms = 2e-5};
    r->tol_acc = (mh_tol){.abs1 = 1e-4};
    r->n_parts = 2;
    r->parts[0].name = "ssm_state";
    r->parts[0].off = 0, r->parts[0].n = (long)Di * N;
    r->parts[0].tol = (mh_tol){.rtol = 2e-5, .atol = 6e-5};
    r->parts[1].name = "conv_state";
    r->parts[1].off = (long)Di * N, r->parts[1].n = (long)Di * K;
    r->parts[1].tol = (mh_tol){.abs = 1e-5};
    r->state_floats = (long)Di * (N + K);
    return 0;
}

/* fla's naive recurrent DeltaNet / Gated DeltaNet in float64 (tests/reference/deltanet_ref.py,
 * cross-checked there against the naive chunked form): header 8 x int32 (magic, B, T, D, H, hd,
 * conv size, gated) and norm_eps (double); run with chunk 16 so the last of the 3 chunks is
 * partial. SPEC.md section 8's flash-linear-attention bars are relative RMS 0.006 (DeltaNet) and
 * 0.002 (Gated), 0.008 for gradients; we hold 1e-5 on y, dx and the state S, 1e-6 on the conv
 * windows (inputs only), 1e-4 on the parameter gradients (and on a second, accumulating
 * backward: 2e-4 for what it added, i.e. 1e-4 of the doubled gradient). `arg`: gated. */
static int load_deltanet(FILE *f, int gated, mh_ref *r) {
    int32_t h[8];
    double eps;
    int ok = fread(h, 4, 8, f) == 8 && fread(&eps, 8, 1, f) == 1 && h[0] == 0x31544e44 &&
             h[7] == gated;
    CHECK_MSG(ok, "deltanet golden: bad header");
    if (!ok) return -1;
    const int H = h[4], n = h[5], K = h[6];
    const long C = (long)H * n;
    r->B = h[1], r->T = h[2], r->D = h[3];
    snprintf(r->toml, sizeof r->toml,
             "type = \"%s\"\nn_heads = %d\nhead_dim = %d\nconv_size = %d\nchunk = 16\n"
             "norm_eps = %.17g\n",
             gated ? "gated_deltanet" : "deltanet", H, n, K, eps);
    r->layout = "x P y S S dy dx G";
    r->tol_y = r->tol_dx = (mh_tol){.relrms = 1e-5};
    r->tol_grad = (mh_tol){.relrms = 1e-4};
    r->tol_acc = (mh_tol){.relrms = 2e-4};
    r->n_parts = 2;
    r->parts[0].name = "S";
    r->parts[0].off = 0, r->parts[0].n = (long)H * n * n;
    r->parts[0].tol = (mh_tol){.relrms = 1e-5};
    r->parts[1].name = "conv windows";
    r->parts[1].off = (long)H * n * n, r->parts[1].n = 3 * C * (K - 1);
    r->parts[1].tol = (mh_tol){.relrms = 1e-6};
    r->state_floats = (long)H * n * n + 3 * C * (K - 1);
    return 0;
}

/* The same reference with flash-linear-attention's options ("DNT2"): header 12 x int32 (magic,
 * B, T, D, H, hd, conv size, gated, num_v_heads, value head size, flags: 1 use_gate, 2
 * use_short_conv, 4 allow_neg_eigval, 0) and norm_eps; the parameters the options drop are absent,
 * S is [num_v_heads, hd, dv], the windows (with convs) q, k [C, K-1] then v [Cv, K-1]. Tolerances
 * as load_deltanet. */
static int load_deltanet2(FILE *f, int gated, mh_ref *r) {
    int32_t h[12];
    double eps;
    int ok = fread(h, 4, 12, f) == 12 && fread(&eps, 8, 1, f) == 1 && h[0] == 0x32544e44 &&
             h[7] == gated;
    CHECK_MSG(ok, "deltanet (options) golden: bad header");
    if (!ok) return -1;
    const int H = h[4], n = h[5], K = h[6], Hv = h[8], nv = h[9], gate = h[10] & 1,
              conv = (h[10] >> 1) & 1, neg = (h[10] >> 2) & 1;
    const long C = (long)H * n, Cv = (long)Hv * nv;
    r->B = h[1], r->T = h[2], r->D = h[3];
    snprintf(r->toml, sizeof r->toml,
             "type = \"%s\"\nn_heads = %d\nhead_dim = %d\nconv_size = %d\nchunk = 16\n"
             "norm_eps = %.17g\nnum_v_heads = %d\nexpand_v = %.17g\nuse_gate = %s\n"
             "use_short_conv = %s\nallow_neg_eigval = %s\n",
             gated ? "gated_deltanet" : "deltanet", H, n, K, eps, Hv, (double)nv / n,
             gate ? "true" : "false", conv ? "true" : "false", neg ? "true" : "false");
    r->layout = conv ? "x P y S S dy dx G" : "x P y S dy dx G";
    r->tol_y = r->tol_dx = (mh_tol){.relrms = 1e-5};
    r->tol_grad = (mh_tol){.relrms = 1e-4};
    r->tol_acc = (mh_tol){.relrms = 2e-4};
    r->n_parts = conv ? 2 : 1;
    r->parts[0].name = "S";
    r->parts[0].off = 0, r->parts[0].n = (long)Hv * n * nv;
    r->parts[0].tol = (mh_tol){.relrms = 1e-5};
    r->parts[1].name = "conv windows";
    r->parts[1].off = (long)Hv * n * nv, r->parts[1].n = (2 * C + Cv) * (K - 1);
    r->parts[1].tol = (mh_tol){.relrms = 1e-6};
    r->state_floats = (long)Hv * n * nv + (conv ? (2 * C + Cv) * (K - 1) : 0);
    return 0;
}


/* Mamba-2 (tests/reference/mamba2_ref.py: PyTorch float64, the paper's chunked SSD, checked there
 * against the naive recurrence to 1e-12): header 12 x int32 (magic, B, T, D, d_inner, headdim,
 * ngroups, d_state, d_conv, chunk_size, 0, 0) and norm_eps (double). `arg`: the chunk size to run
 * with (0: the file's), so one file checks several chunkings. y, dx, the ssm state: max |ours - ref|
 * / max(|ref|, 1) < 1e-5 (the brief's 1e-5 relative; measured ~1e-7); the conv state holds raw
 * in_proj outputs (sgemm rounding only): 1e-5 absolute; parameter gradients (sums over every token,
 * over the heads of a group for B and C): max err / (1 + max |ref|) < 1e-5, i.e. 1e-5 relative for
 * every gradient larger than 1 (measured <= 1e-6) and 1e-5 absolute below: groups4.bin's dA_log is
 * a sum of O(1) terms that cancel to 0.05, where f32 inputs alone leave ~3e-6 (5e-5 of it). */
static int load_mamba2(FILE *f, int chunk, mh_ref *r) {
    int32_t h[12];
    double eps;
    int ok = fread(h, 4, 12, f) == 12 && fread(&eps, 8, 1, f) == 1 && h[0] == 0x3241424D;
    CHECK_MSG(ok, "mamba2 golden: bad header");
    if (!ok) return -1;
    const int Di = h[4], Pd = h[5], G = h[6], N = h[7], K = h[8];
    r->B = h[1], r->T = h[2], r->D = h[3];
    snprintf(r->toml, sizeof r->toml,
             "type = \"mamba2\"\nd_inner = %d\nheaddim = %d\nngroups = %d\nd_state = %d\n"
             "d_conv = %d\nchunk_size = %d\nnorm_eps = %.17g\n",
             Di, Pd, G, N, K, chunk > 0 ? chunk : h[9], eps);
    r->layout = "x P y dy dx G S S";
    r->tol_y = r->tol_dx = (mh_tol){.rel1 = 1e-5};
    r->tol_grad = (mh_tol){.abs1 = 1e-5};
    r->tol_acc = (mh_tol){.abs1 = 1e-4};
    const long Cd = Di + 2L * G * N;
    r->n_parts = 2;
    r->parts[0].name = "ssm_state";
    r->parts[0].off = 0, r->parts[0].n = (long)Di * N;
    r->parts[0].tol = (mh_tol){.rel1 = 1e-5};
    r->parts[1].name = "conv_state";
    r->parts[1].off = (long)Di * N, r->parts[1].n = Cd * K;
    r->parts[1].tol = (mh_tol){.abs = 1e-5};
    r->state_floats = (long)Di * N + Cd * K;
    return 0;
}

static const struct ref_row {
    const char *type, *file;
    mh_ref_loader load;
    int arg;
} REFS[] = {
    {"mha", "mha_golden.bin", load_mha, 0},
    {"mha", "mha_golden_long.bin", load_mha, 0}, /* T = 150: 64-query blocks, the last partial */
    {"mamba1", "mamba1/golden_small.bin", load_mamba1, 64}, /* T = 11: one chunk */
    {"mamba1", "mamba1/golden_small.bin", load_mamba1, 4},  /* chunks of 4, 4, 3 */
    {"mamba1", "mamba1/golden_nodbl.bin", load_mamba1, 64},
    {"mamba1", "mamba1/golden_nodbl.bin", load_mamba1, 7}, /* T = 40: 6 chunks, the last partial */
    {"deltanet", "deltanet/deltanet.bin", load_deltanet, 0},
    {"gated_deltanet", "deltanet/gated_deltanet.bin", load_deltanet, 1},
    /* fla's options: GVA 2:4, expand_v 0.5, beta in (0, 2); no gate, no short convs */
    {"deltanet", "deltanet/deltanet_gva.bin", load_deltanet2, 0},
    {"gated_deltanet", "deltanet/gated_deltanet_gva.bin", load_deltanet2, 1},
    {"deltanet", "deltanet/deltanet_nogate_noconv.bin", load_deltanet2, 0},
    {"gated_deltanet", "deltanet/gated_deltanet_nogate_noconv.bin", load_deltanet2, 1},
    /* Mamba-2: 2 groups, T = 13 in chunks of 4 (4, 4, 4, 1); the same in one chunk and in chunks
     * of 1 (the pure recurrence); 1 group, chunks 8, 8, 4; 4 groups, one chunk longer than T */
    {"mamba2", "mamba2/groups2.bin", load_mamba2, 0},
    {"mamba2", "mamba2/groups2.bin", load_mamba2, 64},
    {"mamba2", "mamba2/groups2.bin", load_mamba2, 1},
    {"mamba2", "mamba2/group1.bin", load_mamba2, 0},
    {"mamba2", "mamba2/group1.bin", load_mamba2, 3},
    {"mamba2", "mamba2/groups4.bin", load_mamba2, 0},
};

/* ---- the cases --------------------------------------------------------------------------------
 *
 * Finite differences, per mixer (L = sum(y * dy) from an f32 forward, summed in double):
 *  - mha: central differences, h = 1e-2. L carries rounding noise ~1e-7 sum|y dy| (~1e-6 here),
 *    ~1e-4 in the quotient, and the O(h^2) truncation is ~1e-5: per element 2e-3 + 2e-3 |an|,
 *    normwise 1e-3.
 *  - mamba1: central differences, h = 1e-2: noise ~1e-5 in L, ~5e-4 in the quotient, truncation
 *    ~1e-4 |L'''|: per element 3e-3 + 3e-3 |an|, normwise 2e-3.
 *  - mamba2: the 4-point rule; the gated RMSNorm over groups of 2-4 channels is strongly curved
 *    (h = 5e-3 where it is), while the single-group row's small dt_bias / A_log gradients (~0.04)
 *    need a larger step against the f32 noise of L (h = 2e-2): per element 3e-3 + 3e-3 |an|,
 *    normwise 2e-3.
 *  - deltanet, gated_deltanet: the 4-point rule (O(h^4)), h = 5e-3: L ~ 10 carries noise ~1e-6,
 *    amplified by 18 / (12 h) = 300 to ~3e-4; the q/k L2 normalisation of short (hd = 5) vectors
 *    makes the curvature large, which is why the 2-point rule is not enough: per element
 *    3e-3 + 3e-3 |an|, normwise 2e-3.
 */

#define FD_ONLY MH_FD
#define NO_STATE {0}, {0}, {0}, 0 /* no decode, chunked, snapshot rows */
#define NO_FD (MH_ALL & ~MH_FD)
/* finite-difference rows (see above for the tolerances) */
#define FD_MHA {2, 5, 2, 1e-2f, 2e-3, 2e-3, 1e-3}
#define FD_MAMBA(B, T) {B, T, 2, 1e-2f, 3e-3, 3e-3, 2e-3}
#define FD_DN {2, 7, 4, 5e-3f, 3e-3, 3e-3, 2e-3}
#define FD_MAMBA2(B, T, h) {B, T, 4, h, 3e-3, 3e-3, 2e-3}
/* H = 2, hd = 5 (odd, != D / H), K = 3, chunk 3 over T = 7: two full chunks and a partial */
#define DN_FD_ROW(type)                                                                            \
    {type " H 2 hd 5", type, 8, "n_heads = 2\nhead_dim = 5\nconv_size = 3\nchunk = 3\n", 5, NULL,  \
     36, 0.5f, FD_ONLY, FD_DN, NO_STATE}
/* state: S [H, hd, hd] and 3 conv windows [C, K - 1]; first chunks shorter and longer than the
 * conv window (K - 1 = 3); the snapshot is the whole state */
#define DN_STATE_BYTES ((2 * 8 * 8 + 3 * 16 * 3) * 4)
#define DN_ROW(type)                                                                               \
    {type, type, 16, "n_heads = 2\nhead_dim = 8\nchunk = 4\n", 11, NULL, 78, 0.3f, NO_FD, {0},     \
     {3, {9, 6, 11}, {4, 1, 7}, 16, 0x7f, DN_STATE_BYTES, 1}, {2, {2, 5}, 6, 20, 1e-5},             \
     {6, 5, 24, DN_STATE_BYTES}, 1}

/* the fla options:
 *  A: grouped values 2:4 (GVA), expand_v 1.5 (dv = 6 != dk = 4), allow_neg_eigval (CPU only:
 *     the CUDA kernels refuse GVA and expand_v, so no backends check);
 *  B: no output gate, no short convs (q, k, v = silu(projection)), hd 5 (CPU and CUDA) */
#define DN_OPT_A "n_heads = 2\nnum_v_heads = 4\nhead_dim = 4\nexpand_v = 1.5\nallow_neg_eigval = true\n"
#define DN_OPT_B "n_heads = 2\nhead_dim = 5\nuse_gate = false\nuse_short_conv = false\n"
#define DN_FD_OPT_ROW(type, label, opts)                                                           \
    {type " " label, type, 8, opts "conv_size = 3\nchunk = 3\n", 5, NULL, 36, 0.5f, FD_ONLY,      \
     FD_DN, NO_STATE}
/* state rows, D = 16: A' = 2:4 heads of dk 8, dv 4 (expand_v 0.5), beta in (0, 2): S [4, 8, 4]
 * and windows (2 C + Cv) (K - 1) = (32 + 16) 3; B' = no gate, no convs: S [2, 8, 8] only */
#define DN_OPT_STATE_A ((4 * 8 * 4 + 48 * 3) * 4)
#define DN_OPT_STATE_B (2 * 8 * 8 * 4)
#define DN_OPT_ROW(type, label, opts, bytes, checks)                                               \
    {type " " label, type, 16, opts "chunk = 4\n", 11, NULL, 78, 0.3f,                             \
     checks, {0}, {3, {9, 6, 11}, {4, 1, 7}, 16, 0x7f, bytes, 1},                    \
     {2, {2, 5}, 6, 20, 1e-5}, {6, 5, 24, bytes}, 1}
#define DN_OPT_A2                                                                                  \
    "n_heads = 2\nnum_v_heads = 4\nhead_dim = 8\nexpand_v = 0.5\nallow_neg_eigval = true\n"
#define DN_OPT_B2 "n_heads = 2\nhead_dim = 8\nuse_gate = false\nuse_short_conv = false\n"


/* Mamba-2 test parameters (away from the plugin's init, so every path matters): dt_bias in
 * U(-2, 0.5) (dt ~ 0.13..0.97: strong decays within a chunk), A_log = log U(1, 4), D ~ N(1, 0.5),
 * norm.weight ~ N(1, 0.2), conv1d.bias ~ N(0, 0.3), weights N(0, scale / sqrt(fan_in)). */
static void init_mamba2(mh_inst *I, uint64_t seed, float scale) {
    hyb_rng r;
    hyb_rng_seed(&r, seed);
    const hyb_param_decl *d = I->m->decls;
    for (int i = 0; i < I->m->n_params; i++) {
        float *p = (float *)I->pp[i];
        const long n = mh_pnumel(I, i);
        if (!strcmp(d[i].name, "dt_bias")) {
            hyb_rng_fill_uniform(&r, p, n, -2.0f, 0.5f);
        } else if (!strcmp(d[i].name, "A_log")) {
            hyb_rng_fill_uniform(&r, p, n, 1.0f, 4.0f);
            for (long k = 0; k < n; k++)
                p[k] = logf(p[k]);
        } else if (!strcmp(d[i].name, "D")) {
            hyb_rng_fill_normal(&r, p, n, 1.0f, 0.5f);
        } else if (!strcmp(d[i].name, "norm.weight")) {
            hyb_rng_fill_normal(&r, p, n, 1.0f, 0.2f);
        } else if (!strcmp(d[i].name, "conv1d.bias")) {
            hyb_rng_fill_normal(&r, p, n, 0.0f, 0.3f);
        } else {
            hyb_rng_fill_normal(&r, p, n, 0.0f, scale / sqrtf((float)d[i].shape[d[i].ndim - 1]));
        }
    }
}
/* state: ssm [d_inner, d_state] + conv window [d_inner + 2 ngroups d_state, d_conv] */
#define M2_STATE(Di, G, N, K) (((Di) * (N) + ((Di) + 2 * (G) * (N)) * (K)) * 4)

/* Rows: label, type, D, TOML, seed, init (NULL: by type), init seed, init scale, checks, fd,
 * decode {ns, len, pre, max_ctx, garbage, state bytes, fixed}, chunked {ns, first, second,
 * max_ctx, state tol}, snapshot {P, N, max_ctx, bytes}, refuses saved with pos > 0. */
static const mh_case CASES[] = {
    /* GQA 4:2, hd = 6 != D / H, q/k/v biases, a small theta so the rotation angles are large */
    {"mha GQA 4:2 hd 6 bias", "mha", 8,
     "n_heads = 4\nn_kv_heads = 2\nhead_dim = 6\nrope_theta = 50.0\nbias = true\n", 5, NULL, 36,
     0.4f, FD_ONLY, FD_MHA, NO_STATE},
    /* plain multi-head (KV = H), no bias; state: K and V caches [KV, max_ctx, hd], a snapshot
     * holds only the first P tokens */
    {"mha H 2 KV 2", "mha", 8, "n_heads = 2\nn_kv_heads = 2\nhead_dim = 4\nrope_theta = 1000.0\n",
     6, NULL, 43, 0.4f, MH_ALL, FD_MHA, {3, {9, 6, 11}, {4, 1, 7}, 16, -1, 2 * 2 * 4 * 16 * 4, 0},
     {2, {3, 5}, 4, 20, 1e-6}, {6, 5, 24, 2 * 6 * 2 * 4 * 4}, 1},
    {"mha GQA 4:2", "mha", 16, "n_heads = 4\nn_kv_heads = 2\nhead_dim = 8\nrope_theta = 10000.0\n",
     11, NULL, 78, 0.3f, NO_FD, {0}, {3, {9, 6, 11}, {4, 1, 7}, 16, -1, 2 * 2 * 8 * 16 * 4, 0},
     {2, {3, 5}, 4, 20, 1e-6}, {6, 5, 24, 2 * 6 * 2 * 8 * 4}, 1},
    /* a decode step big enough for mha to open its OpenMP region (n * H * ctx * hd > 2e5):
     * head size 64, multi-query (KV = 1), 4 sequences at different positions ~200 */
    {"mha MQA hd 64 large decode step", "mha", 64,
     "n_heads = 4\nn_kv_heads = 1\nhead_dim = 64\nrope_theta = 100000.0\n", 16, NULL, 113, 0.15f,
     MH_DECODE, {0}, {4, {230, 201, 256, 215}, {229, 200, 255, 214}, 256, -1, 0, 0}, {0}, {0}, 0},
    /* 4 C heads of 2 channels, 2 x/B groups (repeat 2), R = 3, K = 3; chunks of 3 over T = 7 */
    {"mamba1 repeat 2 double dt bias", "mamba1", 6,
     "d_inner = 8\nd_xb = 4\nd_state = 2\ndt_rank = 3\nd_conv = 3\nchunk = 3\n", 5, NULL, 31,
     1.0f, FD_ONLY, FD_MAMBA(2, 7), NO_STATE},
    /* single bias, repeat 3 (one x/B group), N = 3, K = 4 > T of the first tokens; one chunk */
    {"mamba1 repeat 3 single dt bias", "mamba1", 5,
     "d_inner = 9\nd_xb = 3\nd_state = 3\ndt_rank = 2\nd_conv = 4\ndouble_dt_bias = false\n", 5,
     NULL, 31, 1.0f, FD_ONLY, FD_MAMBA(1, 6), NO_STATE},
    /* fixed-size state (ssm + conv window); prompts of 1 and 2 < d_conv and one of none; chunks
     * of 2 < d_conv (the window spans both chunks) */
    {"mamba1", "mamba1", 24, "d_inner = 32\nd_xb = 16\nd_state = 4\ndt_rank = 4\nd_conv = 4\n", 11,
     NULL, 12, 1.0f, NO_FD, {0}, {4, {19, 9, 23, 6}, {7, 1, 2, 0}, 40, 0x55, 32 * 8 * 4, 1},
     {3, {2, 9, 5}, 6, 40, 1e-5}, {6, 5, 24, 32 * 8 * 4}, 1},
    /* a decode step large enough to open the OpenMP region (n * Di * N > 262144), on a realistic
     * head size (d_state 16) with repeat 4: 17 sequences at positions 13..29 */
    {"mamba1 Di 1024 large decode step", "mamba1", 64,
     "d_inner = 1024\nd_xb = 256\nd_state = 16\ndt_rank = 8\n", 21, NULL, 22, 1.0f, MH_DECODE, {0},
     {17,
      {30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30},
      {29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13},
      64, 0x55, 0, 1}, {0}, {0}, 0},
    /* Mamba-2: 4 heads of 2 in 2 groups, N = 3, K = 3, chunks of 3 over T = 7 (3, 3, 1) */
    {"mamba2 2 groups chunk 3", "mamba2", 6,
     "d_inner = 8\nheaddim = 2\nngroups = 2\nd_state = 3\nd_conv = 3\nchunk_size = 3\n", 5,
     init_mamba2, 31, 1.0f, FD_ONLY, FD_MAMBA2(2, 7, 5e-3f), NO_STATE},
    /* one group of 2 heads of 4, K = 4 > the first tokens, one chunk longer than T */
    {"mamba2 1 group one chunk", "mamba2", 5,
     "d_inner = 8\nheaddim = 4\nd_state = 2\nd_conv = 4\nchunk_size = 16\n", 5, init_mamba2,
     32, 1.0f, FD_ONLY, FD_MAMBA2(1, 6, 2e-2f), NO_STATE},
    /* fixed-size state (ssm + conv window); prompts of 1 and 2 < d_conv and one of none; chunks
     * of 4 (the conv window and the chunks both span the prefill's split) */
    {"mamba2", "mamba2", 24,
     "d_inner = 32\nheaddim = 8\nngroups = 2\nd_state = 4\nd_conv = 4\nchunk_size = 4\n", 11,
     init_mamba2, 12, 1.0f, NO_FD, {0},
     {4, {19, 9, 23, 6}, {7, 1, 2, 0}, 40, 0x55, M2_STATE(32, 2, 4, 4), 1},
     {3, {2, 9, 5}, 6, 40, 1e-5}, {6, 5, 24, M2_STATE(32, 2, 4, 4)}, 1},
    /* a decode step large enough to open the OpenMP region (n * Di * N > 262144): 17 sequences,
     * 16 heads of 64 in 2 groups, d_state 16 */
    {"mamba2 Di 1024 large decode step", "mamba2", 64,
     "d_inner = 1024\nheaddim = 64\nngroups = 2\nd_state = 16\n", 21, init_mamba2, 22, 1.0f,
     MH_DECODE, {0},
     {17,
      {30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30},
      {29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13},
      64, 0x55, 0, 1}, {0}, {0}, 0},
    DN_FD_ROW("deltanet"),
    DN_FD_ROW("gated_deltanet"),
    DN_ROW("deltanet"),
    DN_ROW("gated_deltanet"),
    DN_FD_OPT_ROW("deltanet", "GVA 2:4 expand_v 1.5 neg eigval", DN_OPT_A),
    DN_FD_OPT_ROW("gated_deltanet", "GVA 2:4 expand_v 1.5 neg eigval", DN_OPT_A),
    DN_FD_OPT_ROW("deltanet", "no gate no conv", DN_OPT_B),
    DN_FD_OPT_ROW("gated_deltanet", "no gate no conv", DN_OPT_B),
    DN_OPT_ROW("deltanet", "GVA 2:4 expand_v 0.5 neg eigval", DN_OPT_A2, DN_OPT_STATE_A,
               NO_FD & ~MH_BACKENDS),
    DN_OPT_ROW("gated_deltanet", "GVA 2:4 expand_v 0.5 neg eigval", DN_OPT_A2, DN_OPT_STATE_A,
               NO_FD & ~MH_BACKENDS),
    DN_OPT_ROW("deltanet", "no gate no conv", DN_OPT_B2, DN_OPT_STATE_B, NO_FD),
    DN_OPT_ROW("gated_deltanet", "no gate no conv", DN_OPT_B2, DN_OPT_STATE_B, NO_FD),
    /* no output gate: every check, backends included (CUDA has it) */
    {"deltanet no gate", "deltanet", 16, "n_heads = 2\nhead_dim = 8\nchunk = 4\nuse_gate = false\n",
     11, NULL, 78, 0.3f, NO_FD, {0}, {3, {9, 6, 11}, {4, 1, 7}, 16, 0x7f, DN_STATE_BYTES, 1},
     {2, {2, 5}, 6, 20, 1e-5}, {6, 5, 24, DN_STATE_BYTES}, 1},
    {"gated_deltanet no gate", "gated_deltanet", 16,
     "n_heads = 2\nhead_dim = 8\nchunk = 4\nuse_gate = false\n", 11, NULL, 78, 0.3f, NO_FD, {0},
     {3, {9, 6, 11}, {4, 1, 7}, 16, 0x7f, DN_STATE_BYTES, 1}, {2, {2, 5}, 6, 20, 1e-5},
     {6, 5, 24, DN_STATE_BYTES}, 1},
    /* allow_neg_eigval alone has CUDA kernels: every check, backends included */
    {"deltanet neg eigval", "deltanet", 16, "n_heads = 2\nhead_dim = 8\nchunk = 4\nallow_neg_eigval = true\n",
     11, NULL, 78, 0.3f, NO_FD, {0}, {3, {9, 6, 11}, {4, 1, 7}, 16, 0x7f, DN_STATE_BYTES, 1},
     {2, {2, 5}, 6, 20, 1e-5}, {6, 5, 24, DN_STATE_BYTES}, 1},
    {"gated_deltanet neg eigval", "gated_deltanet", 16,
     "n_heads = 2\nhead_dim = 8\nchunk = 4\nallow_neg_eigval = true\n", 11, NULL, 78, 0.3f, NO_FD,
     {0}, {3, {9, 6, 11}, {4, 1, 7}, 16, 0x7f, DN_STATE_BYTES, 1}, {2, {2, 5}, 6, 20, 1e-5},
     {6, 5, 24, DN_STATE_BYTES}, 1},
};
enum { N_CASES = sizeof CASES / sizeof CASES[0] };

/* ---- selection --------------------------------------------------------------------------------
 */

typedef struct pick {
    char name[64];
    char *toml; /* from name=file.toml, or NULL */
} pick;
static pick PICKS[32];
static int n_picks = -1; /* -1: no HYB_TEST_MIXERS, everything */

static int parse_picks(void) {
    const char *env = getenv("HYB_TEST_MIXERS");
    if (!env || !env[0]) return 0;
    n_picks = 0;
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", env);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && n_picks < 32;
         tok = strtok_r(NULL, ",", &save)) {
        pick *p = &PICKS[n_picks++];
        char *eq = strchr(tok, '=');
        if (eq) *eq = 0;
        snprintf(p->name, sizeof p->name, "%s", tok);
        p->toml = NULL;
        if (eq) {
            p->toml = harness_read_file(eq + 1, NULL);
            if (!p->toml) {
                fprintf(stderr, "HYB_TEST_MIXERS: cannot read %s\n", eq + 1);
                return -1;
            }
        }
    }
    return 0;
}

/* 1: run `type` from the tables; 0: not selected; -1: selected with a TOML file (default row) */
static int selected(const char *type) {
    if (n_picks < 0) return 1;
    for (int i = 0; i < n_picks; i++)
        if (!strcmp(PICKS[i].name, type)) return PICKS[i].toml ? -1 : 1;
    return 0;
}

static int in_table(const char *type) {
    for (int i = 0; i < N_CASES; i++)
        if (!strcmp(CASES[i].type, type)) return 1;
    return 0;
}

static const struct ref_row *cur_ref;
static void run_ref(void) {
    mh_check_ref(cur_ref->type, cur_ref->file, cur_ref->load, cur_ref->arg);
}

int main(void) {
    if (parse_picks() != 0) return 1;
    const char *ds = getenv("HYB_TEST_MIXER_D");
    const int D = ds && atoi(ds) > 0 ? atoi(ds) : 16;
    /* every plugin on the search path; the shipped ones must be there */
    int n = hyb_plugin_scan();
    static const char *SHIPPED[] = {"mha", "mamba1", "mamba2", "deltanet", "gated_deltanet"};
    for (size_t i = 0; i < sizeof SHIPPED / sizeof SHIPPED[0]; i++) {
        const hyb_mixer_desc *d;
        if (selected(SHIPPED[i]) && hyb_plugin_find(SHIPPED[i], &d) != HYB_OK) {
            fprintf(stderr, "%s\n", hyb_error());
            return 1;
        }
    }
    for (int i = 0; i < n_picks; i++) { /* a named mixer must load */
        const hyb_mixer_desc *d;
        if (hyb_plugin_find(PICKS[i].name, &d) != HYB_OK) {
            fprintf(stderr, "HYB_TEST_MIXERS: %s\n", hyb_error());
            return 1;
        }
    }
    char sp[4096];
    printf("plugins on %s: %d loaded\n", hyb_plugin_search_path(sp, sizeof sp), n);
    enum { N_REFS = sizeof REFS / sizeof REFS[0] };
    static char names[N_REFS][160]; /* harness_run keeps the name while the check runs */
    const char *only = getenv("HYB_TEST_CHECKS");
    const int refs = !only || !only[0] || strstr(only, "ref") != NULL;
    for (size_t i = 0; i < N_REFS; i++) {
        if (!refs || selected(REFS[i].type) != 1) continue;
        char chunk[32] = "";
        if (REFS[i].load == load_mamba1 || (REFS[i].load == load_mamba2 && REFS[i].arg))
            snprintf(chunk, sizeof chunk, " chunk %d", REFS[i].arg);
        snprintf(names[i], sizeof names[i], "%s: reference %s%s", REFS[i].type, REFS[i].file,
                 chunk);
        cur_ref = &REFS[i];
        harness_run(names[i], run_ref);
    }
    for (int i = 0; i < N_CASES; i++)
        if (selected(CASES[i].type) == 1) mh_run_case(&CASES[i]);
    /* the mixers the table does not know, and those given a TOML table */
    for (int i = 0; i < hyb_plugin_count(); i++) {
        const hyb_mixer_desc *d = hyb_plugin_get(i, NULL);
        int sel = selected(d->name);
        if (!sel || (sel == 1 && in_table(d->name))) continue;
        const char *toml = NULL;
        for (int k = 0; k < n_picks; k++)
            if (!strcmp(PICKS[k].name, d->name)) toml = PICKS[k].toml;
        mh_case c = mh_default_case(d->name, D, toml);
        mh_run_case(&c);
    }
    return harness_done();
}
