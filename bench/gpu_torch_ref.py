#!/usr/bin/env python3
"""bench/gpu_torch_ref.py: the PyTorch reference numbers for bench/gpu_bench.c (scripts/gpu_test.sh).

    python3 bench/gpu_torch_ref.py --out bench/gpu-results/torch.json [--smoke]

Only what the GPU machine already has (torch, transformers; nothing is installed or fetched). When
they cannot be imported or no CUDA device is visible, the JSON says {"pytorch": "not available",
"reason": ...} and the exit status is 0.

 - decode: transformers LlamaForCausalLM with SmolLM2-135M-Instruct's configuration (random
   weights: the same shapes as hyb's decode benchmark), attn_implementation="eager", batch 1,
   greedy, KV cache, one forward per token (the HF eager loop), in bf16 and in f32; tokens/s of G
   tokens after a P-token prompt, median of reps after a warm-up.
 - distill: one step as hyb_trainer_step does it with a student that is a copy of the teacher
   (all attention; PyTorch here has no Mamba kernel): teacher forward under no_grad, student
   forward + backward, clip_grad_norm_(1.0), AdamW(lr 3e-4, betas (0.9, 0.95), wd 0.1), loss =
   reverse KL at T = 1. "bf16": weights and activations bf16 (torch.autocast over f32 master
   weights), and "f32". B x T as hyb's (4 x 512).
Timings with torch.cuda.synchronize() around each measured region.
"""
import argparse
import json
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to test this script")
    a = ap.parse_args()
    res = {"bench": "torch"}

    def write():
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"gpu_torch_ref: {a.out} written")

    try:
        import torch
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as e:  # noqa: BLE001
        res.update(pytorch="not available", reason=f"import torch, transformers: {e}")
        write()
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        res.update(pytorch="not available", reason="torch sees no CUDA device")
        write()
        return 0
    dev = torch.device(a.device)
    res.update(torch=torch.__version__, transformers=transformers.__version__,
               gpu=torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    if a.smoke:
        cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=256)
        P, G, B, T = 4, 6, 1, 8
    else:  # SmolLM2-135M-Instruct
        cfg = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152)
        P, G, B, T = 32, 256, 4, 512
    conf = LlamaConfig(**cfg, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                       tie_word_embeddings=True)
    conf._attn_implementation = "eager"  # HF's plain PyTorch attention (the "eager" baseline)
    res["config"] = cfg

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def empty_cache():
        if a.device == "cuda":
            torch.cuda.empty_cache()

    # ---- decode ----
    res["decode"] = {}
    try:
        decode(a, res, cfg, conf, dev, P, G, sync, empty_cache)
    except Exception as e:  # noqa: BLE001  (one failed section must not lose the others)
        res["decode"]["error"] = repr(e)
        print(f"gpu_torch_ref: decode failed: {e!r}")
    res["distill"] = {}
    try:
        distill(a, res, cfg, conf, dev, B, T, sync, empty_cache)
    except Exception as e:  # noqa: BLE001
        res["distill"]["error"] = repr(e)
        print(f"gpu_torch_ref: distill failed: {e!r}")
    write()
    return 0


def decode(a, res, cfg, conf, dev, P, G, sync, empty_cache):
    import torch
    from transformers import LlamaForCausalLM
    for name, dt in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        torch.manual_seed(0)
        m = LlamaForCausalLM(conf).to(dev, dt).eval()
        ids = torch.randint(0, cfg["vocab_size"], (1, P), device=dev)
        speeds = []
        with torch.inference_mode():
            for rep in range(-1, a.reps):
                out = m(ids, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                sync()
                t0 = time.perf_counter()
                for _ in range(G):
                    out = m(tok, past_key_values=past, use_cache=True)
                    past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                    tok.item()  # greedy on the host side each step, as hyb's loop does
                sync()
                if rep >= 0:
                    speeds.append(G / (time.perf_counter() - t0))
        res["decode"][name] = dict(tokens_per_s=statistics.median(speeds), all=speeds, prompt=P,
                                   generated=G, attn="eager")
        print(f"RESULT|torch|HF eager decode {name}|{statistics.median(speeds):.4g}|tok/s|batch 1")
        del m
        empty_cache()



def distill(a, res, cfg, conf, dev, B, T, sync, empty_cache):
    import torch
    from transformers import LlamaForCausalLM
    for name in ("bf16", "f32"):
        torch.manual_seed(0)
        teacher = LlamaForCausalLM(conf).to(dev).eval()
        student = LlamaForCausalLM(conf).to(dev).train()
        student.load_state_dict(teacher.state_dict())
        decay = [p for n, p in student.named_parameters() if p.dim() >= 2]
        nodecay = [p for n, p in student.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": nodecay, "weight_decay": 0.0}],
                                lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
        ids = torch.randint(0, cfg["vocab_size"], (B, T), device=dev)
        ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=(name == "bf16"))
        times = []
        for rep in range(-1, a.reps):
            sync()
            t0 = time.perf_counter()
            with ac:
                with torch.no_grad():
                    tl = teacher(ids).logits.float().clamp(-100, 100)
                sl = student(ids).logits.float().clamp(-100, 100)
                lq = torch.log_softmax(sl, -1)
                lp = torch.log_softmax(tl, -1)
                loss = (lq.exp() * (lq - lp)).sum(-1).mean()  # KL(student || teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sync()
            if rep >= 0:
                times.append(time.perf_counter() - t0)
        res["distill"][name] = dict(step_s=statistics.median(times), all=times, B=B, T=T,
                                    student="copy of the teacher (all attention)")
        print(f"RESULT|torch|distill step {name}|{statistics.median(times) * 1e3:.4g}|ms|B={B} T={T}")
        del teacher, student, opt
        empty_cache()


if __name__ == "__main__":
    sys.exit(main())
