/* plugins/mha/mha.c: the `mha` mixer plugin: descriptor, TOML config, parameters, decode state.
 * The math (forward, backward, decode) is in mha_attn.c. See mha.h for shapes and layouts.
 *
 * TOML keys of [mixers.<name>] (type = "mha"):
 *   n_heads     query heads H (default d_model / 64)
 *   n_kv_heads  key/value heads KV, H % KV == 0 (default n_heads: plain multi-head attention)
 *   head_dim    hd, even (default d_model / n_heads, which must then divide evenly)
 *   rope_theta  RoPE base (default 10000)
 *   bias        q/k/v projection biases (default false; o_proj never has one)
 *   attn_precision  "f32" (default) or "bf16": the CUDA forward's attention on tensor cores, Q/K/V
 *               tiles rounded to bf16, f32 accumulation and softmax (head_dim 16, 32, 64 or 128;
 *               ~1e-2 relative to f32). The CPU, the CUDA backward (f32 recomputation from the
 *               saved f32 Q/K/V and the forward's LSE) and the decode ignore it; tensors in
 *               memory, saved blocks and states stay f32 either way.
 *   type, symbol  read by the layer map, accepted here
 *
 * HF config.json (hf_layer_type "t"): the MistralConfig / LlamaConfig attention keys at the top
 * level, num_attention_heads, num_key_value_heads (default num_attention_heads), head_dim
 * (default hidden_size / num_attention_heads), rope_theta (default 10000) and, in the llama and
 * hyb_hybrid formats, attention_bias (apriel_h attention has no biases: such an mha is refused
 * there). Every mha layer of a model must agree on them (one set of keys).
 *
 * Devices: the CPU (mha_attn.c) and CUDA (mha_cuda.c, kernels in mha_attn.cu), with the same
 * saved block and decode state (byte for byte the same layout, mha.h). On CUDA the projections
 * are cuBLAS sgemm and RoPE the backend's; the attention is mha_attn.cu, compiled per head_dim
 * (4, 8, 16, 32, 64, 128; another head_dim is HYB_ERR_UNSUPPORTED on CUDA, naming the op and
 * shape): forward = one fused flash-attention kernel (blocks of 32 queries of one head, 16 for
 * head_dim > 64, key tiles of 32 in shared memory, online softmax with warp shuffles, 128
 * threads), saving the row log-sum-exp; backward = flash-attention-2 recomputation from it in
 * two deterministic passes (dQ per query tile; dK/dV per key tile over the query heads of its KV
 * head, no atomics); decode = flash-decoding (splits of 64 keys of the head-major cache, all
 * query heads of a KV head per block, then a combine kernel).
 *
 * Initialisation: every weight N(0, 0.02), as HF LlamaPreTrainedModel._init_weights with
 * initializer_range = 0.02; biases zero. Applied by the host from the declarations (no
 * init_params).
 */
#include "mha.h"
#include "mha_kv.h"

#include <stdio.h>
#include <string.h>

const hyb_host *mha_host;
#define H_ mha_host

static const char *const MHA_KEYS[] = {"type",       "symbol",         "n_heads",
                                       "n_kv_heads", "head_dim",       "rope_theta",
                                       "bias",       "attn_precision", NULL};

static int mha_create(const hyb_model_dims *dims, const hyb_cfg_table *cfg, void **self) {
    *self = NULL;
    int D = dims->d_model;
    if (D <= 0)
        return H_->error(HYB_ERR_ARG, "mha (layer %d): d_model must be > 0, got %d", dims->layer,
                         D);
    int64_t nh = 0, nkv = 0, hd = 0, bias = 0;
    double theta = 10000.0;
    int64_t def_h = D % 64 == 0 ? D / 64 : 0;
    int bias_i = 0, bf16 = 0;
#define CFG_ERR(key, fmt, ...)                                                                     \
    H_->cfg_error(cfg, key, "mha (layer %d): " fmt, dims->layer, __VA_ARGS__)
    if (cfg) {
        HYB_TRY(H_->cfg_check_keys(cfg, MHA_KEYS));
        HYB_TRY(H_->cfg_int(cfg, "n_heads", def_h, &nh));
        if (nh <= 0)
            return CFG_ERR("n_heads",
                           "n_heads must be >= 1, got %lld (the default d_model / 64 "
                           "needs d_model %% 64 == 0; d_model = %d)",
                           (long long)nh, D);
        HYB_TRY(H_->cfg_int(cfg, "n_kv_heads", nh, &nkv));
        if (nkv <= 0 || nkv > nh || nh % nkv != 0)
            return CFG_ERR("n_kv_heads", "n_kv_heads must divide n_heads = %lld, got %lld",
                           (long long)nh, (long long)nkv);
        HYB_TRY(H_->cfg_int(cfg, "head_dim", -1, &hd));
        if (hd == -1) { /* missing: d_model / n_heads */
            if (D % nh != 0)
                return CFG_ERR("n_heads",
                               "d_model = %d is not a multiple of n_heads = %lld; set head_dim", D,
                               (long long)nh);
            hd = D / nh;
        }
        if (hd <= 0 || hd % 2 != 0 || hd > 1024)
            return CFG_ERR("head_dim",
                           "head_dim must be even and in [2, 1024] (RoPE rotates pairs), got %lld",
                           (long long)hd);
        HYB_TRY(H_->cfg_float(cfg, "rope_theta", 10000.0, &theta));
        if (!(theta > 1.0) || theta > 1e12)
            return CFG_ERR("rope_theta", "rope_theta must be in (1, 1e12], got %g", theta);
        HYB_TRY(H_->cfg_bool(cfg, "bias", 0, &bias_i));
        bias = bias_i;
        const char *prec = NULL;
        HYB_TRY(H_->cfg_string(cfg, "attn_precision", "f32", &prec));
        if (strcmp(prec, "f32") != 0 && strcmp(prec, "bf16") != 0)
            return CFG_ERR("attn_precision",
                           "attn_precision must be \"f32\" or \"bf16\", got \"%s\"", prec);
        bf16 = !strcmp(prec, "bf16");
#undef CFG_ERR
    } else {
        if (def_h == 0)
            return H_->error(
                HYB_ERR_ARG,
                "mha (layer %d): no config table and d_model = %d is not a multiple of 64; "
                "give n_heads",
                dims->layer, D);
        nh = nkv = def_h;
        hd = 64;
    }
    if (nh * hd > (1 << 20) || nh > 4096)
        return H_->error(HYB_ERR_ARG, "mha (layer %d): n_heads * head_dim = %lld is too large",
                         dims->layer, (long long)(nh * hd));
    mha *m = H_->alloc(sizeof *m);
    if (!m) return HYB_ERR_NOMEM;
    memset(m, 0, sizeof *m);
    m->D = D;
    m->H = (int)nh;
    m->KV = (int)nkv;
    m->hd = (int)hd;
    m->layer = dims->layer;
    m->bias = (int)bias;
    m->bf16 = bf16;
    m->theta = (float)theta;
    m->theta_cfg = theta;
    *self = m;
    return HYB_OK;
}

static void mha_destroy(void *self) {
    mha *m = self;
    if (m && m->dec_buf) m->dec_be->free(m->dec_be, m->dec_buf);
    if (m) H_->free(m->cu_host);
    H_->free(self);
}

static int mha_describe(void *self, char *buf, size_t n) {
    mha *m = self;
    snprintf(buf, n, "mha H=%d KV=%d hd=%d theta=%g%s%s", m->H, m->KV, m->hd, (double)m->theta,
             m->bias ? " bias" : "", m->bf16 ? " attn=bf16" : "");
    return HYB_OK;
}

static int mha_n_params(void *self) {
    return ((mha *)self)->bias ? 7 : 4;
}

static void decl2(hyb_param_decl *d, const char *name, int64_t out, int64_t in, int init, float a,
                  int no_decay) {
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->ndim = in > 0 ? 2 : 1;
    d->shape[0] = out;
    if (in > 0) d->shape[1] = in;
    d->init = init;
    d->init_a = a;
    d->no_decay = no_decay;
}

static int mha_param_decl(void *self, int i, hyb_param_decl *d) {
    mha *m = self;
    int64_t qd = (int64_t)m->H * m->hd, kd = (int64_t)m->KV * m->hd;
    switch (i) {
    case MHA_WQ:
        decl2(d, "q_proj.weight", qd, m->D, HYB_INIT_NORMAL, 0.02f, 0);
        break;
    case MHA_WK:
        decl2(d, "k_proj.weight", kd, m->D, HYB_INIT_NORMAL, 0.02f, 0);
        break;
    case MHA_WV:
        decl2(d, "v_proj.weight", kd, m->D, HYB_INIT_NORMAL, 0.02f, 0);
        break;
    case MHA_WO:
        decl2(d, "o_proj.weight", m->D, qd, HYB_INIT_NORMAL, 0.02f, 0);
        break;
    case MHA_BQ:
        decl2(d, "q_proj.bias", qd, 0, HYB_INIT_ZEROS, 0, 1);
        break;
    case MHA_BK:
        decl2(d, "k_proj.bias", kd, 0, HYB_INIT_ZEROS, 0, 1);
        break;
    case MHA_BV:
        decl2(d, "v_proj.bias", kd, 0, HYB_INIT_ZEROS, 0, 1);
        break;
    default:
        return H_->error(HYB_ERR_ARG, "mha: param_decl index %d out of range", i);
    }
    if (i >= MHA_BQ && !m->bias)
        return H_->error(HYB_ERR_ARG, "mha: param_decl index %d out of range", i);
    /* the projections are only ever used as x W^T in forward and decode: a frozen one may come as
     * GGUF blocks (linear() in mha_attn.c multiplies it with be->qmatmul) */
    d->quant_ok = i <= MHA_WO;
    return HYB_OK;
}

static size_t mha_state_bytes_kv(void *self, int max_ctx, int kv) {
    mha *m = self;
    return max_ctx <= 0 ? 0 : 2 * (size_t)m->KV * mha_kv_row_bytes(m->hd, kv) * (size_t)max_ctx;
}

static size_t mha_state_bytes(void *self, int max_ctx) {
    return mha_state_bytes_kv(self, max_ctx, HYB_KV_F32);
}

static int64_t mha_state_snapshot_kv(void *self, const hyb_backend *be, const void *state, int pos,
                                     int max_ctx, int kv, void *dst) {
    mha *m = self;
    if (pos < 0 || pos > max_ctx)
        return H_->error(HYB_ERR_ARG, "mha (layer %d): snapshot of %d tokens from a state of %d",
                         m->layer, pos, max_ctx);
    /* the first pos rows of each of the 2*KV head blocks (K heads, then V heads), as stored */
    const size_t rowb = mha_kv_row_bytes(m->hd, kv), blk = rowb * (size_t)pos,
                 hs = rowb * (size_t)max_ctx;
    if (dst)
        for (int b = 0; b < 2 * m->KV; b++) {
            int rc = be->copy(be, (char *)dst + (size_t)b * blk,
                              (const char *)state + (size_t)b * hs, blk);
            if (rc != HYB_OK) return rc;
        }
    return (int64_t)(2 * (size_t)m->KV * blk);
}

static int64_t mha_state_snapshot(void *self, const hyb_backend *be, const void *state, int pos,
                                  int max_ctx, void *dst) {
    return mha_state_snapshot_kv(self, be, state, pos, max_ctx, HYB_KV_F32, dst);
}

static int mha_state_restore_kv(void *self, const hyb_backend *be, void *state, const void *src,
                                int pos, int max_ctx, int kv) {
    mha *m = self;
    if (pos < 0 || pos > max_ctx)
        return H_->error(HYB_ERR_ARG, "mha (layer %d): restore of %d tokens into a state of %d",
                         m->layer, pos, max_ctx);
    const size_t rowb = mha_kv_row_bytes(m->hd, kv), blk = rowb * (size_t)pos,
                 hs = rowb * (size_t)max_ctx;
    for (int b = 0; b < 2 * m->KV; b++) {
        int rc =
            be->copy(be, (char *)state + (size_t)b * hs, (const char *)src + (size_t)b * blk, blk);
        if (rc != HYB_OK) return rc;
    }
    return HYB_OK;
}

static int mha_state_restore(void *self, const hyb_backend *be, void *state, const void *src,
                             int pos, int max_ctx) {
    return mha_state_restore_kv(self, be, state, src, pos, max_ctx, HYB_KV_F32);
}

/* ---- HF config.json ---------------------------------------------------------------------------*/

static int mha_hf_export(void *self, const char *format, hyb_json *c) {
    mha *m = self;
    const int apriel = !strcmp(format, HYB_HF_APRIEL_H);
    if (!apriel && strcmp(format, HYB_HF_LLAMA) != 0 && strcmp(format, HYB_HF_HYB_HYBRID) != 0)
        return H_->error(HYB_ERR_UNSUPPORTED, "mha (layer %d): no HF format '%s'", m->layer,
                         format);
    if (apriel && m->bias)
        return H_->error(HYB_ERR_UNSUPPORTED,
                         "mha (layer %d): q/k/v biases (apriel_h attention has none)", m->layer);
    HYB_TRY(H_->json_set_int(c, "num_attention_heads", m->H));
    HYB_TRY(H_->json_set_int(c, "num_key_value_heads", m->KV));
    HYB_TRY(H_->json_set_int(c, "head_dim", m->hd));
    HYB_TRY(H_->json_set_float(c, "rope_theta", m->theta_cfg));
    if (!apriel) HYB_TRY(H_->json_set_bool(c, "attention_bias", m->bias));
    return HYB_OK;
}

static int mha_hf_import(const hyb_model_dims *dims, const char *format, const hyb_json *c,
                         hyb_toml *t) {
    int64_t nh, nkv, hd;
    double theta;
    int bias = 0;
    HYB_TRY(H_->json_int(c, "num_attention_heads", 1, 0, &nh));
    if (nh <= 0 || nh > 4096)
        return H_->json_error(c, "num_attention_heads", "must be in [1, 4096], got %lld",
                              (long long)nh);
    HYB_TRY(H_->json_int(c, "num_key_value_heads", 0, nh, &nkv));
    HYB_TRY(H_->json_int(c, "head_dim", 0, dims->d_model / nh, &hd));
    HYB_TRY(H_->json_float(c, "rope_theta", 0, 10000.0, &theta));
    if (strcmp(format, HYB_HF_APRIEL_H) != 0) /* MistralDecoderLayer: no q/k/v bias */
        HYB_TRY(H_->json_bool(c, "attention_bias", 0, 0, &bias));
    HYB_TRY(H_->toml_int(t, "n_heads", nh));
    HYB_TRY(H_->toml_int(t, "n_kv_heads", nkv));
    HYB_TRY(H_->toml_int(t, "head_dim", hd));
    HYB_TRY(H_->toml_float(t, "rope_theta", theta));
    if (bias) HYB_TRY(H_->toml_bool(t, "bias", 1));
    return HYB_OK;
}

static const hyb_mixer_desc MHA_DESC = {
    HYB_PL_DESC_REQUIRED(mha),
    .kernels[HYB_DEV_CUDA] = {mha_forward_cuda, mha_backward_cuda, mha_decode_cuda},
    .name = "mha",
    .version = "1.0.0",
    .description =
        "causal multi-head / grouped-query attention with RoPE and a KV cache (HF llama)",
    .hf_prefix = "self_attn",
    .init_params = NULL,
    .state_snapshot = mha_state_snapshot,
    .state_restore = mha_state_restore,
    .init_from = NULL,
    .hf_layer_type = "t",
    .hf_export = mha_hf_export,
    .hf_import = mha_hf_import,
    .state_bytes_kv = mha_state_bytes_kv,
    .state_snapshot_kv = mha_state_snapshot_kv,
    .state_restore_kv = mha_state_restore_kv,
};

HYB_PL_ENTRY(mha_host, MHA_DESC)
