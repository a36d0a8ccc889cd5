#!/usr/bin/env python3
"""Golden data for tests/test_mha.c: the HF transformers LlamaAttention layer (the reference the
`mha` plugin must reproduce), run in float64 on a small GQA shape with head_dim != D / n_heads.

Run once, under the venv that has torch + transformers (not needed by the build or by ctest):
    /work/venv/bin/python3 tests/reference/mha_ref.py
writes tests/data/mha_golden.bin (B=2, T=7, D=32, H=4, KV=2, hd=12) and
tests/data/mha_golden_long.bin (B=1, T=150, D=16, H=4, KV=2, hd=8: spans several of the
plugin's 64-query attention blocks, the last one partial).

File layout (little-endian):
    int32[8]  magic 0x4D484131 ("1AHM"), B, T, D, H, KV, hd, 0
    float64   rope_theta
    float32   arrays, in this order, each row-major in the shapes below:
        x [B,T,D]  q_proj.weight [H*hd,D]  k_proj.weight [KV*hd,D]  v_proj.weight [KV*hd,D]
        o_proj.weight [D,H*hd]  y [B,T,D]  dy [B,T,D]  dx [B,T,D]
        dq_proj.weight  dk_proj.weight  dv_proj.weight  do_proj.weight   (grads of sum(y * dy))
Inputs are drawn in float32 (so the C side sees exactly the same numbers); the layer runs in
float64 with the causal mask, eager attention, scale 1/sqrt(hd), positions 0..T-1.
"""
import os
import struct

import numpy as np
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

CASES = [  # file, B, T, D, H, KV, hd, theta, seed
    ("mha_golden.bin", 2, 7, 32, 4, 2, 12, 10000.0, 1234),
    ("mha_golden_long.bin", 1, 150, 16, 4, 2, 8, 500.0, 4321),
]


def write_case(fname, B, T, D, H, KV, HD, THETA, seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = LlamaConfig(hidden_size=D, num_attention_heads=H, num_key_value_heads=KV, head_dim=HD,
                      rope_theta=THETA, attention_bias=False, max_position_embeddings=256,
                      intermediate_size=64, num_hidden_layers=1, vocab_size=16)
    cfg._attn_implementation = "eager"
    attn = LlamaAttention(cfg, layer_idx=0).double()
    rope = LlamaRotaryEmbedding(cfg).double()

    f32 = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
    x = f32(B, T, D)
    ws = {"q": f32(H * HD, D, scale=0.3), "k": f32(KV * HD, D, scale=0.3),
          "v": f32(KV * HD, D, scale=0.3), "o": f32(D, H * HD, scale=0.3)}
    dy = f32(B, T, D)
    with torch.no_grad():
        for n, w in ws.items():
            getattr(attn, n + "_proj").weight.copy_(torch.from_numpy(w).double())

    xt = torch.from_numpy(x).double().requires_grad_(True)
    pos_ids = torch.arange(T).unsqueeze(0).expand(B, T)
    cos, sin = rope(xt, pos_ids)
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    mask = mask.view(1, 1, T, T).expand(B, 1, T, T)
    y, _ = attn(xt, position_embeddings=(cos, sin), attention_mask=mask)
    (y * torch.from_numpy(dy).double()).sum().backward()

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", fname)
    with open(out, "wb") as f:
        f.write(struct.pack("<8i", 0x4D484131, B, T, D, H, KV, HD, 0))
        f.write(struct.pack("<d", THETA))
        arrays = [x, ws["q"], ws["k"], ws["v"], ws["o"], y.detach().numpy(), dy,
                  xt.grad.numpy()] + [getattr(attn, n + "_proj").weight.grad.numpy() for n in "qkvo"]
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    print("wrote", os.path.normpath(out), "max|y| = %.4f" % float(y.detach().abs().max()))


def main():
    for case in CASES:
        write_case(*case)


if __name__ == "__main__":
    main()
