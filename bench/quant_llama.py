"""bench/quant_llama.py: llama.cpp (llama-cpp-python) on the same GGUF, for bench/quant_bench.sh.

    python bench/quant_llama.py MODEL STEPS ROUNDS [REF]

Decode: ROUNDS rounds of STEPS batch-1 decode steps after the same 32-token prompt that
quant_bench uses (ids (i * 7919 + 13) % 20000), on OMP_NUM_THREADS (default 2) threads; prints
tokens/s and CPU ms per token (this process, all threads) per round and the median.
Accuracy (with REF, written by quant_bench under QUANT_DUMP): the same token ids evaluated by
llama.cpp with every position's logits; mean KL(p_hyb_f32 || p_llama.cpp) and top-1 agreement
against hyb's f32 computation over the same dequantised weights.
Run it from the venv bench/quant_bench.sh makes (.venv-bench, never the product's)."""
import os
import resource
import sys
import time

import numpy as np
from llama_cpp import Llama


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    model, steps, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ref = sys.argv[4] if len(sys.argv) > 4 else None
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    t0 = time.perf_counter()
    llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                n_batch=512, logits_all=ref is not None, verbose=False)
    load_s = time.perf_counter() - t0
    prompt = [(i * 7919 + 13) % 20000 for i in range(32)]
    tok_s, cpu_ms = [], []
    for r in range(rounds + 1):  # round 0: warm-up
        llm.reset()
        llm.eval(prompt)
        tid = 42
        t, c = time.perf_counter(), cpu_s()
        for s in range(steps):
            llm.eval([tid])
            tid = (tid * 31 + s) % 20000
        t, c = time.perf_counter() - t, cpu_s() - c
        if r:
            tok_s.append(steps / t)
            cpu_ms.append(1e3 * c / steps)
    if tok_s:
        print(f"llama.cpp load {load_s:.2f} s; decode tok/s per round "
              + " ".join(f"{x:.1f}" for x in tok_s)
              + f"; median {np.median(tok_s):.1f} tok/s, {np.median(cpu_ms):.2f} cpu ms/tok")
    if ref:
        with open(ref, "rb") as f:
            npos, V = np.frombuffer(f.read(8), dtype=np.int32)
            ids = np.frombuffer(f.read(4 * npos), dtype=np.int32)
            lf = np.frombuffer(f.read(), dtype=np.float32).reshape(npos, V)
        llm.reset()
        llm.eval([int(i) for i in ids])
        lq = np.array(llm.scores[:npos], dtype=np.float64)
        a = lf.astype(np.float64)
        a -= a.max(1, keepdims=True)
        a -= np.log(np.exp(a).sum(1, keepdims=True))
        lq -= lq.max(1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(1, keepdims=True))
        kl = (np.exp(a) * (a - lq)).sum(1)
        top1 = (lf.argmax(1) == lq.argmax(1)).mean()
        print(f"llama.cpp vs hyb f32, {npos} positions: mean KL {kl.mean():.3e}, "
              f"top-1 {100 * top1:.2f}%, max KL {kl.max():.3e}")


if __name__ == "__main__":
    main()
