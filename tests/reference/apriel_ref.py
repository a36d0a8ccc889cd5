#!/usr/bin/env python3
"""Golden logits for tests/test_apriel.c: an independent PyTorch (float64, CPU) re-implementation of
the HF apriel_h hybrid, built from a checkpoint directory's config.json alone (no hyb layer map),
run on its model.safetensors.

Run once, under the venv that has torch (not needed by the build or by ctest):
    HYB_APRIEL_EXPORT=tests/data/apriel/model build/tests/test_apriel   # the fixture, written by hyb
    /work/venv/bin/python3 tests/reference/apriel_ref.py [model_dir] [out_file]
defaults: tests/data/apriel/model -> tests/data/apriel/golden_logits.bin.

The model, written from the apriel_h format facts (SPEC.md sections 1-3; the public Fast-LLM HF code
fast_llm_external_models/apriel_hybrid_ssm, read for facts):
    h = embed_tokens[ids]
    per layer, by hybrid_block_layout[i]:
      "t":  Mistral decoder layer: h += o_proj(attn(RoPE(q), RoPE(k), v)) of RMSNorm_in(h)
            (GQA, causal, scale head_dim^-1/2, RoPE half-split, theta = rope_theta, no biases);
            h += down(silu(gate(v)) * up(v)), v = RMSNorm_post(h)
      "m2": same block with the mixer replaced by the Mamba "m2" mixer (tests/reference/mamba1_ref.py,
            dt_proj bias added twice, as the HF Mamba module does), configured by ssm_cfg
      "i":  identity: h unchanged (the whole block, MLP included, is skipped; its tensors, if any,
            are ignored as HF ignores unexpected keys)
    logits = lm_head(RMSNorm_f(h)), lm_head = embed_tokens when tie_word_embeddings
RMSNorm(x) = w * x / sqrt(mean(x^2) + rms_norm_eps).

Output (little-endian): int32[4] magic 0x4C525041 ("APRL"), B, T, V; int32 ids [B*T];
float32 logits [B, T, V].
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mamba1_ref import m2_mixer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
IDS = [[1, 5, 9, 47, 0, 3, 3, 17, 22, 40, 2], [8, 31, 7, 11, 46, 19, 4, 4, 0, 13, 29]]


def rms_norm(x, w, eps):
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def rope(x, theta):
    # x: (b, h, l, hd), HF half-split rotation
    hd = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(x.shape[2], dtype=torch.float64)[:, None] * inv[None, :]  # (l, hd/2)
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def attention(u, p, cfg):
    b, l, _ = u.shape
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    q = (u @ p["q_proj.weight"].T).view(b, l, H, hd).transpose(1, 2)
    k = (u @ p["k_proj.weight"].T).view(b, l, KV, hd).transpose(1, 2)
    v = (u @ p["v_proj.weight"].T).view(b, l, KV, hd).transpose(1, 2)
    theta = cfg.get("rope_theta", 10000.0)
    q, k = rope(q, theta), rope(k, theta)
    k = k.repeat_interleave(H // KV, dim=1)
    v = v.repeat_interleave(H // KV, dim=1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    mask = torch.triu(torch.ones(l, l, dtype=torch.bool), 1)
    s = s.masked_fill(mask, float("-inf"))
    o = torch.softmax(s, -1) @ v  # (b, H, l, hd)
    return o.transpose(1, 2).reshape(b, l, H * hd) @ p["o_proj.weight"].T


def main():
    mdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "data", "apriel", "model")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "data", "apriel",
                                                             "golden_logits.bin")
    with open(os.path.join(mdir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] in ("apriel_h", "apriel_hybrid_ssm"), cfg["model_type"]
    W = {k: torch.from_numpy(v.astype(np.float64)) for k, v in
         load_file(os.path.join(mdir, "model.safetensors")).items()}
    D, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
    ssm = cfg["ssm_cfg"]
    Di, Dx, N, K = ssm["d_inner"], ssm["d_xb"] or D, ssm["d_state"], ssm["d_conv"]
    assert ssm.get("repeat_kv_before_conv", True) and ssm.get("conv_bias", True)
    assert not ssm.get("bias", False) and ssm.get("dt_proj_bias", True)

    ids = torch.tensor(IDS, dtype=torch.long)
    h = W["model.embed_tokens.weight"][ids]
    used = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i, kind in enumerate(cfg["hybrid_block_layout"]):
        pre = "model.layers.%d." % i
        if kind == "i":
            continue
        u = rms_norm(h, W[pre + "input_layernorm.weight"], eps)
        if kind == "t":
            mp = pre + "self_attn."
            y = attention(u, {k[len(mp):]: v for k, v in W.items() if k.startswith(mp)}, cfg)
        elif kind == "m2":
            mp = pre + "mixer."
            y, _, _ = m2_mixer(u, {k[len(mp):]: v for k, v in W.items() if k.startswith(mp)},
                               Di, Dx, N, K, True)
        else:
            raise ValueError("block type %r" % kind)
        h = h + y
        v = rms_norm(h, W[pre + "post_attention_layernorm.weight"], eps)
        h = h + (F.silu(v @ W[pre + "mlp.gate_proj.weight"].T) * (v @ W[pre + "mlp.up_proj.weight"].T)) \
            @ W[pre + "mlp.down_proj.weight"].T
        used |= {k for k in W if k.startswith(pre)}
    h = rms_norm(h, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    logits = h @ head.T
    ignored = sorted(k for k in W if k not in used)
    if ignored:
        print("ignored (as HF would: unexpected keys):", ", ".join(ignored))

    B, T = ids.shape
    V = logits.shape[-1]
    with open(out, "wb") as f:
        f.write(struct.pack("<4i", 0x4C525041, B, T, V))
        f.write(np.asarray(IDS, dtype="<i4").tobytes())
        f.write(logits.numpy().astype("<f4").tobytes())
    print("wrote", os.path.normpath(out), "B=%d T=%d V=%d max|logit| = %.4f"
          % (B, T, V, float(logits.abs().max())))


if __name__ == "__main__":
    main()
