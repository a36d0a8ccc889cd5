#!/usr/bin/env python3
"""Golden logits for the default teacher (SmolLM2-135M-Instruct, GGUF Q4_1) from HF transformers.

Run once, under the venv that has torch + transformers + gguf:
    /work/venv/bin/python tests/reference/logits_ref.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
(default path: $HYB_MODEL or ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf)

transformers reads the GGUF itself (gguf-py's numpy dequantisation to float32, its own inverse of
llama.cpp's q/k row permutation, its own tokenizer built from the GGUF metadata), so it is an
implementation independent of hyb's loader. Everything runs in float32 with eager attention.

Writes tests/data/teacher/:
  last_logits.bin   float32 [n_prompts, V]: logits at the last position of each prompt
  full_logits.bin   float32 [n_full, V]: logits at positions 0..n_full-1 of prompt 0
  teacher.json      prompts, their token ids (from the GGUF tokenizer), shapes, the greedy
                    continuation (64 tokens, no EOS stop) of prompt 0 and its top-1/top-2 margins
"""
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "teacher")

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. In 2024, 17 + 25 = 42, and",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]
N_FULL = 4
N_GREEDY = 64


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "HYB_MODEL", os.path.expanduser("~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    d, name = os.path.split(os.path.abspath(path))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    os.makedirs(OUT, exist_ok=True)

    ids_all, last = [], []
    full = None
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            ids = tok(p, add_special_tokens=False)["input_ids"]
            ids_all.append(ids)
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
            last.append(logits[-1])
            if i == 0:
                full = logits[:N_FULL].copy()

        # greedy continuation of prompt 0 with the KV cache, no EOS stop
        ids = list(ids_all[0])
        out = model(torch.tensor([ids]), use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
        greedy, margins = [], []
        for _ in range(N_GREEDY):
            top2 = torch.topk(logits, 2)
            nxt = int(top2.indices[0])
            greedy.append(nxt)
            margins.append(float(top2.values[0] - top2.values[1]))
            out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]

    last = np.stack(last).astype(np.float32)
    full = full.astype(np.float32)
    last.tofile(os.path.join(OUT, "last_logits.bin"))
    full.tofile(os.path.join(OUT, "full_logits.bin"))
    meta = {
        "source": name,
        "generator": "tests/reference/logits_ref.py (transformers %s, torch %s, float32, eager)"
                     % (__import__("transformers").__version__, torch.__version__),
        "vocab_size": int(last.shape[1]),
        "prompts": PROMPTS,
        "ids": ids_all,
        "last_logits": {"file": "last_logits.bin", "shape": list(last.shape)},
        "full_logits": {"file": "full_logits.bin", "shape": list(full.shape), "prompt": 0},
        "greedy": {"prompt": 0, "n": N_GREEDY, "ids": greedy, "text": tok.decode(greedy),
                   "min_margin": min(margins), "margins": margins},
    }
    with open(os.path.join(OUT, "teacher.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", OUT, "ids lens", [len(x) for x in ids_all], "greedy:", repr(tok.decode(greedy)),
          "min margin %.4f" % min(margins))


if __name__ == "__main__":
    main()
