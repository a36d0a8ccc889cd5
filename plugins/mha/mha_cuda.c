/* plugins/mha/mha_cuda.c: forward, backward and decode of the `mha` mixer on CUDA (f32; the KV
 * cache f32 or f16: the cache kernels of mha_attn.cu's -DMHA_KV_F16=1 variant; a prefill
 * continuing from an f16 cache widens the rows its sequence attends to into f32 scratch first, a
 * decode reads the f16 cache in the flash-decoding kernel itself; q8_0 is HYB_ERR_UNSUPPORTED
 * on CUDA).
 *
 * The same math, saved block and KV-cache layout as the CPU kernels (mha_attn.c, mha.h); the
 * projections are be->sgemm (cuBLAS) and RoPE be->rope as on the CPU (except the decode's, fused
 * into a kernel with the backend's formula); everything the CPU does with loops over buffers is
 * a kernel of mha_attn.cu (its top comment has the kernel
 * design: tiles, threads, what is saved, the decode split):
 *   forward   Q, K, V projections (+ bias kernel), RoPE, cache_put (prefill), the fused
 *             flash-attention kernel (O and LSE into the saved block), o_proj.
 *   backward  dO = dy Wo, dWo; Dr = rowsum(dO O); the dQ pass and the dK/dV pass (recomputing P
 *             from LSE; two passes, no atomics: deterministic); inverse RoPE; bias gradients
 *             (column sums kernel); the projection gradients through sgemm.
 *   decode    projections, then per launch of up to 64 sequences (their caches and positions
 *             passed by value: a step uploads nothing and does not wait for the device) RoPE +
 *             cache rows, flash-decoding (at most DEC_MAX_SPLITS splits of whole 64-key chunks
 *             per sequence), the combine kernel; o_proj.
 * Every pointer handed in is device memory and is only passed to be-> entries and kernels: the
 * saved header is written with be->upload and read back with be->download; positions for RoPE
 * are host arrays (backend.h); the states' device pointers and positions the kernels index are
 * uploaded into device scratch (prefill: once per call) or passed by value (decode).
 *
 * Kernels are compiled per head_dim (-DHEAD_DIM=hd, the hyb-variant lines of mha_attn.cu): a
 * head_dim without a variant is HYB_ERR_UNSUPPORTED naming the mixer, the op and the shape,
 * before anything runs (no CPU fallback). */
#include <math.h>
#include <string.h>

#include "../common/be_call.h"
#include "hyb_plugin_cu.h"
#include "mha.h"

#define H_ mha_host

/* these must match mha_attn.cu */
#define CU_NT 128
#define CU_TQ(hd) ((hd) > 64 ? 16 : 32)
#define CU_BQ16 64 /* mha_fwd_bf16 */
#define CU_TB(hd) ((hd) > 64 ? 16 : 32)
#define CU_DCH 64
#define CU_GB 8
/* decode: blocks a launch aims at (splits x KV heads x head groups x sequences), so that a single
 * long sequence still fills an H100's 132 SMs, and the most splits of one sequence */
#define DEC_TARGET_BLOCKS 512
#define DEC_MAX_SPLITS 64
/* struct mha_seqs of mha_attn.cu, a decode launch's sequences by value (the same layout) */
#define DEC_SEQS 64
typedef struct mha_seqs {
    void *st[DEC_SEQS]; /* float * or (f16 cache) unsigned short *: pointers either way */
    int32_t pos[DEC_SEQS];
} mha_seqs;
_Static_assert(sizeof(mha_seqs) == DEC_SEQS * (sizeof(float *) + sizeof(int32_t)),
               "mha_seqs: no padding, as the kernels' struct");

enum {
    K_FWD,
    K_DR,
    K_DQ,
    K_DKV,
    K_PUT,
    K_DSPLIT,
    K_DCOMB,
    K_BIAS,
    K_BGRAD,
    K_DROPE,
    K_FWD16, /* the -DMHA_BF16=1 module: only with attn_precision = "bf16" */
    K_GET,
    K_COUNT
};
static const char *const KNAMES[K_COUNT] = {"mha_fwd",          "mha_bwd_dr",    "mha_bwd_dq",
                                            "mha_bwd_dkv",      "mha_cache_put", "mha_dec_split",
                                            "mha_dec_combine",  "mha_add_bias",  "mha_bias_grad",
                                            "mha_dec_rope_put", "mha_fwd_bf16",
                                            "mha_cache_get"};
/* the kernels that touch the KV cache: from the -DMHA_KV_F16=1 module for an f16 cache */
static const int KV_KERNELS[] = {K_PUT, K_DROPE, K_DSPLIT, K_GET};

/* the head dims mha_attn.cu is compiled for (its `// hyb-variant:` lines) */
static const int HEAD_DIMS[] = {4, 8, 16, 32, 64, 128};

/* The kernels for this instance's head_dim on be (compiled once, kept). `op` and the sizes name
 * the call in the error when there is no variant for head_dim. */
static int cu_load(mha *m, const hyb_backend *be, const char *op, const char *shape) {
    if (m->cu_be == be) return HYB_OK;
    int have = 0;
    for (size_t i = 0; i < sizeof HEAD_DIMS / sizeof HEAD_DIMS[0]; i++)
        have |= HEAD_DIMS[i] == m->hd;
    if (!have)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mha (layer %d): no CUDA %s kernel for head_dim = %d (H = %d, KV = %d, "
                         "%s) on %s; mha_attn.cu is compiled for head_dim 4, 8, 16, 32, 64, 128",
                         m->layer, op, m->hd, m->H, m->KV, shape, be->name);
    if (!be->kernel || !be->launch)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mha (layer %d): %s %s: the backend runs no device kernels", m->layer,
                         be->name, op);
    if (m->bf16 && m->hd % 16 != 0)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mha (layer %d): no CUDA %s kernel for attn_precision = \"bf16\" at "
                         "head_dim = %d (%s) on %s; the bf16 forward needs head_dim 16, 32, 64 or "
                         "128",
                         m->layer, op, m->hd, shape, be->name);
    char opt[32];
    snprintf(opt, sizeof opt, "-DHEAD_DIM=%d", m->hd);
    const char *opts[2] = {opt, "-DMHA_BF16=1"};
    for (int k = 0; k < K_COUNT; k++) {
        m->cu_fn[k] = NULL;
        if (k == K_FWD16 && !m->bf16) continue;
        HYB_BE_TRY(be->kernel(be, "mha_attn.cu", hyb_cu_mha_attn_cu, KNAMES[k], opts,
                              k == K_FWD16 ? 2 : 1, &m->cu_fn[k]));
    }
    m->cu_be = be;
    return HYB_OK;
}

/* cu_load, and for an f16 KV cache (kv = HYB_KV_F16) the cache kernels of the -DMHA_KV_F16=1
 * module into m->cu_fn16 (compiled once, kept). fn: the table of the cache kernels to use. */
static int cu_load_kv(mha *m, const hyb_backend *be, int kv, const char *op, const char *shape,
                      void ***fn) {
    HYB_TRY(cu_load(m, be, op, shape));
    *fn = m->cu_fn;
    if (kv != HYB_KV_F16) return HYB_OK;
    if (m->cu_be16 != be) {
        char opt[32];
        snprintf(opt, sizeof opt, "-DHEAD_DIM=%d", m->hd);
        const char *opts[2] = {opt, "-DMHA_KV_F16=1"};
        for (size_t i = 0; i < sizeof KV_KERNELS / sizeof KV_KERNELS[0]; i++) {
            const int k = KV_KERNELS[i];
            HYB_BE_TRY(be->kernel(be, "mha_attn.cu", hyb_cu_mha_attn_cu, KNAMES[k], opts, 2,
                                  &m->cu_fn16[k]));
        }
        m->cu_be16 = be;
    }
    *fn = m->cu_fn16;
    return HYB_OK;
}

static int cu_launch_fn(const hyb_backend *be, void *const *fn, int k, unsigned gx, unsigned gy,
                        unsigned gz, void **args) {
    if (!gx || !gy || !gz) return HYB_OK;
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {CU_NT, 1, 1};
    return be->launch(be, fn[k], KNAMES[k], grid, block, 0, args);
}

static int cu_launch(const hyb_backend *be, mha *m, int k, unsigned gx, unsigned gy, unsigned gz,
                     void **args) {
    return cu_launch_fn(be, m->cu_fn, k, gx, gy, gz, args);
}

static unsigned cdiv(long long a, long long b) {
    return (unsigned)((a + b - 1) / b);
}

/* host staging of at least `bytes` (grown, kept) */
static void *host_buf(mha *m, size_t bytes) {
    if (bytes > m->cu_host_cap) {
        void *p = H_->alloc(bytes);
        if (!p) return NULL;
        H_->free(m->cu_host);
        m->cu_host = p;
        m->cu_host_cap = bytes;
    }
    return m->cu_host;
}

/* Y[rows, out] = X[rows, in] W^T (+ b) */
static int linear(mha *m, const hyb_backend *be, const float *X, const float *W, const float *b,
                  float *Y, int rows, int in, int out) {
    HYB_BE_TRY(be->sgemm(be, 0, 1, rows, out, in, 1.0f, X, in, W, in, 0.0f, Y, out));
    if (!b) return HYB_OK;
    long long r = rows;
    int c = out;
    void *args[] = {&Y, (void *)&b, &r, &c};
    long long nb = ((long long)rows * out + CU_NT - 1) / CU_NT;
    return cu_launch(be, m, K_BIAS, (unsigned)(nb < 4096 ? nb : 4096), 1, 1, args);
}

/* device copies of the states' pointers and positions (n of each): ptrs at dev, pos after */
static int put_states(mha *m, const hyb_backend *be, void *dev, void *const *states,
                      const int32_t *pos, int n) {
    const size_t pb = (size_t)n * sizeof(void *), bytes = pb + (size_t)n * sizeof(int32_t);
    char *h = host_buf(m, bytes);
    if (!h) return HYB_ERR_NOMEM;
    memcpy(h, states, pb);
    for (int i = 0; i < n; i++) {
        int32_t p = pos ? pos[i] : 0;
        memcpy(h + pb + (size_t)i * sizeof p, &p, sizeof p);
    }
    return be->upload(be, dev, h, bytes);
}

/* ---- forward / prefill ------------------------------------------------------------------------
 */

/* the KV types the CUDA kernels store: f32 and f16 (mha_attn.cu, -DMHA_KV_F16) */
static int cu_check_kv(const mha *m, int kv, const char *op) {
    if (kv == HYB_KV_F32 || kv == HYB_KV_F16) return HYB_OK;
    return H_->error(HYB_ERR_UNSUPPORTED,
                     "mha (layer %d): CUDA %s: kv_cache = %s is not supported on CUDA (its "
                     "kernels store f16 and f32 KV caches); use kv_cache f16 or f32",
                     m->layer, op, kv == HYB_KV_Q8_0 ? "q8_0" : "(unknown)");
}

int mha_forward_cuda(void *self, const hyb_mixer_fwd *a) {
    mha *m = self;
    const hyb_backend *be = a->be;
    const int B = a->B, T = a->T, D = m->D, H = m->H, KV = m->KV, hd = m->hd;
    int p_max;
    HYB_TRY(mha_check_fwd(m, a, &p_max));
    const int kv = a->states ? a->kv : HYB_KV_F32;
    HYB_TRY(cu_check_kv(m, kv, "forward"));
    char shape[64];
    snprintf(shape, sizeof shape, "B = %d, T = %d", B, T);
    void **kfn;
    HYB_TRY(cu_load_kv(m, be, kv, "forward", shape, &kfn));
    if (B > 65535) /* gridDim.z */
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mha (layer %d): CUDA forward of B = %d > 65535 "
                         "sequences in one call",
                         m->layer, B);
    const size_t BT = (size_t)B * T, qd = (size_t)H * hd, kd = (size_t)KV * hd;
    const float *const *P = a->params;
    const int bias = m->bias;

    /* Q, K, V, O, LSE after the 64-byte header: in `saved` when training (the header uploaded),
     * else in a temporary block */
    const size_t sbytes = mha_saved_bytes(m, B, T);
    void *tmp = NULL, *blk = a->saved;
    if (!blk) {
        blk = tmp = be->alloc(be, sbytes);
        if (!tmp) return HYB_ERR_NOMEM;
    }
    float *Q = (float *)((char *)blk + sizeof(hyb_pl_saved_hdr));
    float *K = Q + BT * qd, *V = K + BT * kd, *O = V + BT * kd, *LSE = O + BT * qd;
    /* device scratch: the states' pointers and positions (prefill); with an f16 cache, the keys
     * and values 0 .. pos + T - 1 of one sequence widened to f32 ([KV, n, hd] each) for mha_fwd */
    void *dst = NULL;
    float *wide = NULL;
    int32_t *posbuf = H_->alloc(BT * sizeof(int32_t));
    int rc = posbuf ? HYB_OK : HYB_ERR_NOMEM;
    if (rc == HYB_OK && a->saved) {
        hyb_pl_saved_hdr hdr;
        memset(&hdr, 0, sizeof hdr);
        hdr.magic = MHA_SAVED_MAGIC;
        hdr.B = B;
        hdr.T = T;
        rc = be->upload(be, a->saved, &hdr, sizeof hdr);
    }
    if (rc == HYB_OK && a->states) {
        dst = be->alloc(be, (size_t)B * (sizeof(void *) + sizeof(int32_t)));
        rc = dst ? put_states(m, be, dst, a->states, a->pos, B) : HYB_ERR_NOMEM;
    }
    if (rc == HYB_OK && kv != HYB_KV_F32) {
        wide = be->alloc(be, 2 * sizeof(float) * (size_t)KV * ((size_t)p_max + T) * hd);
        if (!wide) rc = HYB_ERR_NOMEM;
    }
    if (rc != HYB_OK) goto done;
    for (int b = 0; b < B; b++) {
        int p0 = a->pos ? a->pos[b] : 0;
        for (int t = 0; t < T; t++)
            posbuf[(size_t)b * T + t] = p0 + t;
    }
    rc = linear(m, be, a->x, P[MHA_WQ], bias ? P[MHA_BQ] : NULL, Q, (int)BT, D, (int)qd);
    if (rc == HYB_OK)
        rc = linear(m, be, a->x, P[MHA_WK], bias ? P[MHA_BK] : NULL, K, (int)BT, D, (int)kd);
    if (rc == HYB_OK)
        rc = linear(m, be, a->x, P[MHA_WV], bias ? P[MHA_BV] : NULL, V, (int)BT, D, (int)kd);
    if (rc == HYB_OK) rc = be->rope(be, Q, 1, (int)BT, H, hd, posbuf, m->theta, 0);
    if (rc == HYB_OK) rc = be->rope(be, K, 1, (int)BT, KV, hd, posbuf, m->theta, 0);
    if (rc != HYB_OK) goto done;

    const float scale = 1.0f / sqrtf((float)hd);
    int ldq = (int)qd, group = H / KV, Ti = T, Hi = H;
    if (a->states) {
        float **sp = (float **)dst;
        int32_t *pp = (int32_t *)((char *)dst + (size_t)B * sizeof(void *));
        int kvi = KV, mc = a->max_ctx;
        void *args[] = {&sp, &pp, &K, &V, &Ti, &kvi, &mc};
        rc = cu_launch_fn(be, kfn, K_PUT, (unsigned)T, (unsigned)B, 1, args);
        /* attention of each sequence against its cache (keys 0 .. pos + T - 1) */
        for (int b = 0; rc == HYB_OK && b < B; b++) {
            const float *qb = Q + (size_t)b * T * qd, *kb = (const float *)a->states[b],
                        *vb = kb + (size_t)KV * a->max_ctx * hd;
            float *ob = O + (size_t)b * T * qd, *lb = LSE + (size_t)b * H * T;
            long long k_bs = 0, k_hs = (long long)a->max_ctx * hd;
            int ldk = hd, p0 = a->pos ? a->pos[b] : 0;
            if (kv != HYB_KV_F32) { /* the rows this sequence attends to, widened */
                int nk = p0 + T;
                const void *st = a->states[b];
                float *kf = wide, *vf = wide + (size_t)KV * nk * hd;
                void *gargs[] = {(void *)&st, &kf, &vf, &nk, &kvi, &mc};
                rc = cu_launch_fn(be, kfn, K_GET, (unsigned)nk, (unsigned)KV, 1, gargs);
                kb = kf;
                vb = vf;
                k_hs = (long long)nk * hd;
            }
            void *fargs[] = {&qb, &ldq, &kb, &vb, &k_bs,  &k_hs, &ldk,
                             &ob, &lb,  &Ti, &Hi, &group, &p0,   (void *)&scale};
            rc = m->bf16 ? cu_launch(be, m, K_FWD16, cdiv(T, CU_BQ16), (unsigned)H, 1, fargs)
                         : cu_launch(be, m, K_FWD, cdiv(T, CU_TQ(hd)), (unsigned)H, 1, fargs);
        }
    } else {
        long long k_bs = (long long)T * kd, k_hs = hd;
        int ldk = (int)kd, p0 = 0;
        void *fargs[] = {&Q, &ldq, &K,  &V,  &k_bs,  &k_hs, &ldk,
                         &O, &LSE, &Ti, &Hi, &group, &p0,   (void *)&scale};
        rc = m->bf16 ? cu_launch(be, m, K_FWD16, cdiv(T, CU_BQ16), (unsigned)H, (unsigned)B, fargs)
                     : cu_launch(be, m, K_FWD, cdiv(T, CU_TQ(hd)), (unsigned)H, (unsigned)B, fargs);
    }
    if (rc == HYB_OK) rc = linear(m, be, O, P[MHA_WO], NULL, a->y, (int)BT, (int)qd, D);
done:
    if (dst) be->free(be, dst);
    if (wide) be->free(be, wide);
    if (tmp) be->free(be, tmp);
    H_->free(posbuf);
    return rc;
}

/* ---- backward ---------------------------------------------------------------------------------
 */

int mha_backward_cuda(void *self, const hyb_mixer_bwd *a) {
    mha *m = self;
    const hyb_backend *be = a->be;
    const int B = a->B, T = a->T, D = m->D, H = m->H, KV = m->KV, hd = m->hd;
    if (B <= 0 || T <= 0)
        return H_->error(HYB_ERR_ARG, "mha (layer %d): backward with B = %d, T = %d", m->layer, B,
                         T);
    char shape[64];
    snprintf(shape, sizeof shape, "B = %d, T = %d", B, T);
    HYB_TRY(cu_load(m, be, "backward", shape));
    if (B > 65535) /* gridDim.z */
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mha (layer %d): CUDA backward of B = %d > 65535 "
                         "sequences in one call",
                         m->layer, B);
    hyb_pl_saved_hdr hdr;
    memset(&hdr, 0, sizeof hdr);
    if (a->saved) HYB_BE_TRY(be->download(be, &hdr, a->saved, sizeof hdr));
    if (!a->saved || hdr.magic != MHA_SAVED_MAGIC || hdr.B != B || hdr.T != T)
        return H_->error(HYB_ERR_ARG,
                         "mha (layer %d): backward [B=%d, T=%d] without a matching "
                         "saved forward",
                         m->layer, B, T);
    const size_t BT = (size_t)B * T, qd = (size_t)H * hd, kd = (size_t)KV * hd;
    const float *Q = (const float *)((const char *)a->saved + sizeof(hyb_pl_saved_hdr));
    const float *K = Q + BT * qd, *V = K + BT * kd, *O = V + BT * kd, *LSE = O + BT * qd;
    const float *const *P = a->params;
    float *const *G = a->grads;

    /* dO [BT, qd], Dr [B, H, T], dQ [BT, qd], dK, dV [BT, kd]: all written before read */
    size_t nfl = BT * qd * 2 + (size_t)B * H * T + BT * kd * 2;
    float *buf = be->alloc(be, nfl * sizeof(float));
    int32_t *posbuf = H_->alloc(BT * sizeof(int32_t));
    int rc = buf && posbuf ? HYB_OK : HYB_ERR_NOMEM;
    if (rc != HYB_OK) goto done;
    float *dO = buf, *Dr = dO + BT * qd, *dQ = Dr + (size_t)B * H * T, *dK = dQ + BT * qd,
          *dV = dK + BT * kd;

    /* y = O Wo^T: dO = dy Wo, dWo += dy^T O */
    rc = be->sgemm(be, 0, 0, (int)BT, (int)qd, D, 1.0f, a->dy, D, P[MHA_WO], (int)qd, 0.0f, dO,
                   (int)qd);
    if (rc == HYB_OK)
        rc = be->sgemm(be, 1, 0, D, (int)qd, (int)BT, 1.0f, a->dy, D, O, (int)qd, 1.0f, G[MHA_WO],
                       (int)qd);
    int Bi = B, Ti = T, Hi = H, KVi = KV;
    const float scale = 1.0f / sqrtf((float)hd);
    if (rc == HYB_OK) {
        void *args[] = {&dO, (void *)&O, &Dr, &Bi, &Ti, &Hi};
        rc = cu_launch(be, m, K_DR, cdiv((long long)BT * H, CU_NT), 1, 1, args);
    }
    if (rc == HYB_OK) {
        void *args[] = {(void *)&Q, (void *)&K, (void *)&V, &dO,  (void *)&LSE,  &Dr,
                        &dQ,        &Ti,        &Hi,        &KVi, (void *)&scale};
        rc = cu_launch(be, m, K_DQ, cdiv(T, CU_TB(hd)), (unsigned)H, (unsigned)B, args);
    }
    if (rc == HYB_OK) {
        void *args[] = {(void *)&Q, (void *)&K, (void *)&V, &dO, (void *)&LSE, &Dr,
                        &dK,        &dV,        &Ti,        &Hi, &KVi,         (void *)&scale};
        rc = cu_launch(be, m, K_DKV, cdiv(T, CU_TB(hd)), (unsigned)KV, (unsigned)B, args);
    }

    /* RoPE is a rotation: its backward is the inverse rotation. */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            posbuf[(size_t)b * T + t] = t;
    if (rc == HYB_OK) rc = be->rope(be, dQ, 1, (int)BT, H, hd, posbuf, m->theta, 1);
    if (rc == HYB_OK) rc = be->rope(be, dK, 1, (int)BT, KV, hd, posbuf, m->theta, 1);

    if (m->bias && rc == HYB_OK) {
        long long rows = (long long)BT;
        const float *src[3] = {dQ, dK, dV};
        float *dst[3] = {G[MHA_BQ], G[MHA_BK], G[MHA_BV]};
        int cols[3] = {(int)qd, (int)kd, (int)kd};
        for (int i = 0; rc == HYB_OK && i < 3; i++) {
            void *args[] = {(void *)&src[i], &dst[i], &rows, &cols[i]};
            rc = cu_launch(be, m, K_BGRAD, cdiv(cols[i], CU_NT), 1, 1, args);
        }
    }
    /* projections: dW += d^T x, dx = sum d W */
    if (rc == HYB_OK) rc = mha_proj_bwd(m, a, dQ, dK, dV);
done:
    if (buf) be->free(be, buf);
    H_->free(posbuf);
    return rc;
}

/* ---- decode -----------------------------------------------------------------------------------
 */

int mha_decode_cuda(void *self, const hyb_mixer_dec *a) {
    mha *m = self;
    const hyb_backend *be = a->be;
    const int n = a->n, D = m->D, H = m->H, KV = m->KV, hd = m->hd;
    if (n <= 0) return H_->error(HYB_ERR_ARG, "mha (layer %d): decode with n = %d", m->layer, n);
    HYB_TRY(cu_check_kv(m, a->kv, "decode"));
    int chunks = 1, pmax = 0;
    for (int i = 0; i < n; i++) {
        if (a->pos[i] < 0 || a->pos[i] >= a->max_ctx)
            return H_->error(HYB_ERR_ARG,
                             "mha (layer %d): decode sequence %d at pos %d: the KV cache "
                             "holds max_ctx = %d tokens",
                             m->layer, i, a->pos[i], a->max_ctx);
        const int c = (a->pos[i] + CU_DCH) / CU_DCH; /* 64-key chunks of pos + 1 keys */
        chunks = c > chunks ? c : chunks;
        pmax = a->pos[i] > pmax ? a->pos[i] : pmax;
    }
    /* splits per sequence (mha_attn.cu: mha_split_len): enough blocks to fill the GPU, never
     * more than the chunks or DEC_MAX_SPLITS */
    const int ngb = (H / KV + CU_GB - 1) / CU_GB, nl = n < DEC_SEQS ? n : DEC_SEQS;
    long want = DEC_TARGET_BLOCKS / ((long)nl * KV * ngb);
    int nsplit = want < 1 ? 1 : want > DEC_MAX_SPLITS ? DEC_MAX_SPLITS : (int)want;
    if (nsplit > chunks) nsplit = chunks;
    char shape[64];
    snprintf(shape, sizeof shape, "n = %d, pos <= %d", n, pmax);
    void **kfn;
    HYB_TRY(cu_load_kv(m, be, a->kv, "decode", shape, &kfn));
    const size_t qd = (size_t)H * hd, kd = (size_t)KV * hd;
    /* Q, K, V, O, partials */
    const size_t pw = (size_t)H * nsplit * (hd + 2); /* partial floats of one sequence */
    float *buf = mha_dec_scratch(m, be, sizeof(float) * (size_t)n * (2 * qd + 2 * kd + pw));
    if (!buf) return HYB_ERR_NOMEM;
    float *Q = buf, *K = Q + (size_t)n * qd, *V = K + (size_t)n * kd, *O = V + (size_t)n * kd,
          *part = O + (size_t)n * qd;
    const float *const *P = a->params;
    int rc = linear(m, be, a->x, P[MHA_WQ], m->bias ? P[MHA_BQ] : NULL, Q, n, D, (int)qd);
    if (rc == HYB_OK)
        rc = linear(m, be, a->x, P[MHA_WK], m->bias ? P[MHA_BK] : NULL, K, n, D, (int)kd);
    if (rc == HYB_OK)
        rc = linear(m, be, a->x, P[MHA_WV], m->bias ? P[MHA_BV] : NULL, V, n, D, (int)kd);
    /* per launch, up to DEC_SEQS sequences by value: RoPE + cache rows, splits, combine (no
     * upload: RoPE here rather than be->rope, whose positions are a host array it uploads) */
    int KVi = KV, Hi = H, mc = a->max_ctx, ns = nsplit;
    float theta = m->theta;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int s0 = 0; rc == HYB_OK && s0 < n; s0 += DEC_SEQS) {
        const int cnt = n - s0 < DEC_SEQS ? n - s0 : DEC_SEQS;
        mha_seqs sq;
        memset(&sq, 0, sizeof sq);
        for (int i = 0; i < cnt; i++) {
            sq.st[i] = a->states[s0 + i];
            sq.pos[i] = a->pos[s0 + i];
        }
        float *q = Q + (size_t)s0 * qd, *k = K + (size_t)s0 * kd, *v = V + (size_t)s0 * kd,
              *o = O + (size_t)s0 * qd, *pt = part + (size_t)s0 * pw;
        void *a1[] = {&q, &k, &v, &sq, &Hi, &KVi, &mc, &theta};
        rc = cu_launch_fn(be, kfn, K_DROPE, (unsigned)cnt, 1, 1, a1);
        if (rc == HYB_OK) {
            void *a2[] = {&q, &sq, &pt, &Hi, &KVi, &mc, &ns, (void *)&scale};
            rc = cu_launch_fn(be, kfn, K_DSPLIT, (unsigned)nsplit, (unsigned)(KV * ngb),
                              (unsigned)cnt, a2);
        }
        if (rc == HYB_OK) {
            void *a3[] = {&pt, &sq, &o, &Hi, &ns};
            rc = cu_launch(be, m, K_DCOMB, (unsigned)H, (unsigned)cnt, 1, a3);
        }
    }
    if (rc == HYB_OK) rc = linear(m, be, O, P[MHA_WO], NULL, a->y, n, (int)qd, D);
    return rc;
}
