#!/usr/bin/env python3
"""bench/train_step_torch.py: the PyTorch (CPU) side of bench/train_step.sh.

Times the same training step as bench/train_step.lua: a llama-style stack (RMSNorm, GQA attention
with RoPE via F.scaled_dot_product_attention, SwiGLU MLP, tied lm_head) whose mamba1 layers run
the Apriel-H1 "m2" mixer of tests/reference/mamba1_ref.py (plain PyTorch, autograd through a
Python loop over time for the scan), float32, torch.set_num_threads(threads).
Step = teacher forward under no_grad + student forward + backward + clip_grad_norm_(1.0) +
AdamW(lr 3e-4, betas (0.9, 0.95), wd 0.1 on matrices), loss = reverse KL at T = 1 (as
hyb_kl_reverse: both logits clamped to [-100, 100], mean over tokens), then the same with CE.

    /work/venv/bin/python3 bench/train_step_torch.py --weights DIR --map graphs/smollm2-135m-h3.toml \
        [--K 3] [--warmup 1] [--threads 2] [--out FILE.json]

DIR is what `bench/train_step.lua --save DIR` wrote: DIR/teacher, DIR/student (model:save, HF
names, safetensors) and DIR/batch.txt (B T, the ids, the targets), so both sides start from the
same weights and the first-step losses can be compared.
"""
import argparse
import glob
import json
import math
import os
import statistics
import sys
import time
import tomllib

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from mamba1_ref import m2_mixer  # noqa: E402  (the independent "m2" reference, SPEC.md section 3)


def load_dir(d):
    params = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        params.update(load_file(f))
    if not params:
        sys.exit(f"{d}: no .safetensors files")
    return {k: v.float().contiguous() for k, v in params.items()}


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    # x: [B, H, T, hd], HF half-split layout
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Model(torch.nn.Module):
    def __init__(self, params, cfg):
        super().__init__()
        m = cfg["model"]
        self.D, self.L, self.eps = m["d_model"], m["n_layers"], m["norm_eps"]
        mix = cfg["mixers"]
        self.attn = next(v for v in mix.values() if v["type"] == "mha")
        ssm = [v for v in mix.values() if v["type"] == "mamba1"]
        self.ssm = ssm[0] if ssm else None
        self.names = list(params.keys())
        self.p = torch.nn.ParameterList([torch.nn.Parameter(params[k]) for k in self.names])
        self.idx = {k: i for i, k in enumerate(self.names)}
        hd = self.attn["head_dim"]
        inv = 1.0 / (self.attn["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        self.inv_freq = inv

    def w(self, name):
        return self.p[self.idx[name]]

    def forward(self, ids):
        B, T = ids.shape
        x = F.embedding(ids, self.w("model.embed_tokens.weight"))
        H, KV, hd = self.attn["n_heads"], self.attn["n_kv_heads"], self.attn["head_dim"]
        ang = torch.arange(T, dtype=torch.float64)[:, None] * self.inv_freq[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        cos, sin = ang.cos().float(), ang.sin().float()
        for i in range(self.L):
            pre = f"model.layers.{i}."
            u = rms_norm(x, self.w(pre + "input_layernorm.weight"), self.eps)
            if pre + "mixer.in_proj.weight" in self.idx:
                s = self.ssm
                mp = {k[len(pre + "mixer."):]: self.w(k) for k in self.names if k.startswith(pre + "mixer.")}
                y, _, _ = m2_mixer(u, mp, s["d_inner"], s["d_xb"], s["d_state"], s["d_conv"],
                                   s.get("double_dt_bias", True))
            else:
                a = pre + "self_attn."
                q = (u @ self.w(a + "q_proj.weight").T).view(B, T, H, hd).transpose(1, 2)
                k = (u @ self.w(a + "k_proj.weight").T).view(B, T, KV, hd).transpose(1, 2)
                v = (u @ self.w(a + "v_proj.weight").T).view(B, T, KV, hd).transpose(1, 2)
                q, k = rope(q, cos, sin), rope(k, cos, sin)
                k = k.repeat_interleave(H // KV, dim=1)
                v = v.repeat_interleave(H // KV, dim=1)
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                y = o.transpose(1, 2).reshape(B, T, H * hd) @ self.w(a + "o_proj.weight").T
            x = x + y
            v_ = rms_norm(x, self.w(pre + "post_attention_layernorm.weight"), self.eps)
            g = v_ @ self.w(pre + "mlp.gate_proj.weight").T
            up = v_ @ self.w(pre + "mlp.up_proj.weight").T
            x = x + (F.silu(g) * up) @ self.w(pre + "mlp.down_proj.weight").T
        x = rms_norm(x, self.w("model.norm.weight"), self.eps)
        head = self.w("lm_head.weight") if "lm_head.weight" in self.idx else self.w("model.embed_tokens.weight")
        return x @ head.T


def kl_reverse(student, teacher):
    q = F.log_softmax(student.clamp(-100, 100), dim=-1)
    p = F.log_softmax(teacher.clamp(-100, 100), dim=-1)
    return (q.exp() * (q - p)).sum(-1).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--map", default="graphs/smollm2-135m-h3.toml")
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.map, "rb") as f:
        cfg = tomllib.load(f)
    with open(os.path.join(a.weights, "batch.txt")) as f:
        B, T = map(int, f.readline().split())
        ids = torch.tensor([int(t) for t in f.readline().split()]).view(B, T)
        targets = torch.tensor([int(t) for t in f.readline().split()]).view(B, T)
    teacher = Model(load_dir(os.path.join(a.weights, "teacher")), cfg)
    teacher.requires_grad_(False)
    student_params = load_dir(os.path.join(a.weights, "student"))

    def bench(loss):
        st = Model({k: v.clone() for k, v in student_params.items()}, cfg)
        decay = [p for n, p in zip(st.names, st.p) if p.ndim >= 2 and not n.endswith("A_log")]
        other = [p for n, p in zip(st.names, st.p) if not (p.ndim >= 2 and not n.endswith("A_log"))]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
        times, first = [], None
        for step in range(a.warmup + a.K):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            logits = st(ids)
            if loss == "ce":
                l = F.cross_entropy(logits.view(B * T, -1), targets.view(-1))
            else:
                with torch.no_grad():
                    tl = teacher(ids)
                l = kl_reverse(logits, tl)
            l.backward()
            torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)
            opt.step()
            dt = time.perf_counter() - t0
            if step == 0:
                first = float(l.detach())
            if step >= a.warmup:
                times.append(dt)
        m = statistics.median(times)
        return {"loss": loss, "first_loss": first, "median_s": m, "tok_s": B * T / m, "times": times}

    res = {"rkl": bench("reverse_kl"), "ce": bench("ce")}
    for r in res.values():
        print(f"torch {r['loss']:<10} B={B} T={T}: first loss {r['first_loss']:.6f}  median {r['median_s']:.3f} s/step"
              f"  {r['tok_s']:.1f} tok/s")
    rec = {"impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(), "map": a.map,
           "B": B, "T": T, "K": a.K, "warmup": a.warmup, **res}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rec, f)


if __name__ == "__main__":
    main()
