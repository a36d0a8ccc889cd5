#!/usr/bin/env python3
"""bench/mamba2_bench_torch.py: the PyTorch side of bench/mamba2_bench.sh: one mamba2 mixer layer,
eager float32 on the CPU, on the weights and inputs bench/mamba2_bench.c dumped. The forward is
tests/reference/mamba2_ref.py's (the Mamba-2 paper's chunked SSD, the reference the C plugin is
tested against); the decode step is the recurrence written here in the same style. Timed: the
training step (forward + autograd backward of sum(y * dy)) and a decode step at batch 1 and batch B
after a prefill of T tokens; checked: y and dx against hyb's (printed as max rel differences).

    python3 bench/mamba2_bench_torch.py dump.bin reps decode_steps threads
prints one JSON line.
"""
import json
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import mamba2_ref as ref  # noqa: E402


def load(path):
    with open(path, "rb") as f:
        h = struct.unpack("<12i", f.read(48))
        (eps,) = struct.unpack("<d", f.read(8))
        _, B, T, D, Di, Pd, G, N, K, Q = h[:10]
        nh, Cd = Di // Pd, Di + 2 * G * N
        Pin = 2 * Di + 2 * G * N + nh
        rd = lambda *s: torch.from_numpy(np.frombuffer(f.read(4 * int(np.prod(s))), dtype="<f4").reshape(s).copy())
        x = rd(B, T, D)
        P = [rd(Pin, D), rd(Cd, 1, K), rd(Cd), rd(nh), rd(nh), rd(nh), rd(Di), rd(D, Di)]
        dy, y, dx = rd(B, T, D), rd(B, T, D), rd(B, T, D)
    cfg = dict(Di=Di, Pd=Pd, G=G, N=N, K=K, Q=Q)
    return B, T, D, cfg, x, P, dy, y, dx


def step(u, P, cfg, S, conv):
    """one token for n sequences: u [n, D]; S [n, nh, Pd, N], conv [n, Cd, K] updated in place"""
    Di, Pd, G, N, K = cfg["Di"], cfg["Pd"], cfg["G"], cfg["N"], cfg["K"]
    nh, Cd = Di // Pd, Di + 2 * G * N
    Win, cw, cb, dtb, alog, Dk, nw, Wout = P
    zx = u @ Win.T
    z, raw, dtr = torch.split(zx, [Di, Cd, nh], dim=-1)
    conv.copy_(torch.cat([conv[:, :, 1:], raw[:, :, None]], dim=2))
    xbc = F.silu((conv * cw[:, 0, :]).sum(-1) + cb)
    x, Bm, Cm = torch.split(xbc, [Di, G * N, G * N], dim=-1)
    dt = F.softplus(dtr + dtb)  # [n, nh]
    e = torch.exp(dt * -torch.exp(alog))
    x = x.reshape(-1, nh, Pd)
    Bh = Bm.reshape(-1, G, N).repeat_interleave(nh // G, dim=1)
    Ch = Cm.reshape(-1, G, N).repeat_interleave(nh // G, dim=1)
    S.mul_(e[:, :, None, None]).add_((dt[:, :, None] * x)[..., None] * Bh[:, :, None, :])
    y = (torch.einsum("nhpk,nhk->nhp", S, Ch) + Dk[:, None] * x).reshape(-1, Di)
    g = (y * F.silu(z)).reshape(-1, G, Di // G)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + ref.EPS)
    return (g.reshape(-1, Di) * nw) @ Wout.T


def time_decode(n, T, steps, x, P, cfg):
    with torch.no_grad():
        _, S, conv = ref.mixer(x[:1].expand(n, -1, -1).contiguous(), P, cfg, True)
        S, conv = S.contiguous(), conv.contiguous()
        ts = []
        for s in range(steps):
            u = x[0, s % T][None].expand(n, -1).contiguous()
            t0 = time.perf_counter()
            step(u, P, cfg, S, conv)
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main():
    path, reps, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    B, T, D, cfg, x, P0, dy, y_h, dx_h = load(path)
    ts, tc, y, dx = [], [], None, None
    for k in range(reps + 1):  # the first is a warm-up
        xx = x.clone().requires_grad_(True)
        P = [p.clone().requires_grad_(True) for p in P0]
        t0, c0 = time.perf_counter(), time.process_time()
        y, _, _ = ref.mixer(xx, P, cfg, True)
        (y * dy).sum().backward()
        if k:
            ts.append((time.perf_counter() - t0) * 1e3)
            tc.append((time.process_time() - c0) * 1e3)
        dx = xx.grad
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp(min=1.0))
    out = {
        "impl": "torch", "B": B, "T": T, "train_ms": statistics.median(ts), "train_cpu_ms": statistics.median(tc),
        "decode1_ms": time_decode(1, T, steps, x, P0, cfg), "decodeB_ms": time_decode(B, T, steps, x, P0, cfg),
        "y_vs_hyb": rel(y.detach(), y_h), "dx_vs_hyb": rel(dx, dx_h), "threads": threads,
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
