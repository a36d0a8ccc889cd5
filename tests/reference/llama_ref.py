#!/usr/bin/env python3
"""Golden data for tests/test_model.c: a whole HF LlamaForCausalLM (the reference for SPEC.md
section 2: RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU MLP -> residual, final norm,
tied lm_head) with random weights, run in float64.

Run once, under the venv that has torch + transformers (not needed by the build or by ctest):
    /work/venv/bin/python3 tests/reference/llama_ref.py

Writes tests/data/llama_ref/:
    model.safetensors   the weights, HF names, float32 (written by HF save_pretrained, so the C
                        loader reads a file made by the reference implementation)
    logits.bin          int32[4] magic 0x4C4C4D31, B, T, V; int32 ids [B*T]; float32 logits [B,T,V]
The dims below must match the inline layer map in test_model.c (test_hf_llama_logits).
"""
import os
import struct

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

B, T = 2, 9
CFG = dict(vocab_size=73, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
           rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=128,
           attention_bias=False, mlp_bias=False)


def main():
    torch.manual_seed(4321)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "llama_ref")
    os.makedirs(out, exist_ok=True)
    cfg = LlamaConfig(**CFG)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))   # non-trivial norms
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("config.json", "generation_config.json"):
        p = os.path.join(out, extra)
        if os.path.exists(p):
            os.remove(p)
    ids = torch.randint(0, CFG["vocab_size"], (B, T), generator=torch.Generator().manual_seed(7))
    model64 = model.double()
    with torch.no_grad():
        logits = model64(input_ids=ids).logits.float().numpy()
    with open(os.path.join(out, "logits.bin"), "wb") as f:
        f.write(struct.pack("<4i", 0x4C4C4D31, B, T, CFG["vocab_size"]))
        f.write(ids.numpy().astype("<i4").tobytes())
        f.write(logits.astype("<f4").tobytes())
    print("wrote", out, logits.shape, float(np.abs(logits).max()))


if __name__ == "__main__":
    main()
