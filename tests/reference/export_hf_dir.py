#!/usr/bin/env python3
"""Write the default teacher as an HF checkpoint directory (f32, two safetensors shards + index,
config.json as transformers writes it, tokenizer.json), from transformers' own GGUF reading.

    /work/venv/bin/python tests/reference/export_hf_dir.py [model.gguf] [out_dir=/tmp/smol_hf]
    HYB_HF_DIR=/tmp/smol_hf ctest -L model -R model_teacher

tests/model_teacher.c then checks that hyb_model_load_hf_dir(out_dir) and
hyb_model_load_gguf(model.gguf) give bit-identical parameters (transformers un-permutes q/k
itself, so this also checks hyb's un-permutation against an independent implementation).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "HYB_MODEL", os.path.expanduser("~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    out = sys.argv[2] if len(sys.argv) > 2 else "/tmp/smol_hf"
    d, name = os.path.split(os.path.abspath(path))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    os.makedirs(out, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()
          if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    keys = sorted(sd)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate([keys[:half], keys[half:]]):
        fn = "model-%05d-of-00002.safetensors" % (i + 1)
        save_file({k: sd[k] for k in part}, os.path.join(out, fn), metadata={"format": "pt"})
        weight_map.update({k: fn for k in part})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    model.config.to_json_file(os.path.join(out, "config.json"))
    tok.save_pretrained(out)
    print("wrote", out)


if __name__ == "__main__":
    main()
