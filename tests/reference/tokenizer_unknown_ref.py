#!/usr/bin/env python3
"""Golden data for tests/model_tokenizer.c test_unknown_bytes: what HF `tokenizers` does with bytes
SmolLM2's byte-level vocabulary lacks (control bytes such as 0x04, lead bytes 0xf1/0xf2, ...).

HF's BPE model for SmolLM2 has no unk_token, so such a byte is dropped; the GGUF's
unknown_token_id (0, <|endoftext|>) must not appear (issue 19).

Needs only `tokenizers` (tests/reference/requirements.txt):
    python3 -m venv .venv-ref && .venv-ref/bin/pip install tokenizers==0.23.3
    .venv-ref/bin/python3 tests/reference/tokenizer_unknown_ref.py
Reads tests/data/tokenizer/smollm2.tokenizer.json (written by tokenizer_ref.py from the GGUF) and
writes tests/data/tokenizer/smollm2_unknown_golden.json:
    {"missing_bytes": [bytes whose ByteLevel character is not in the vocab],
     "samples": [{"text", "ids" (HF encode, no specials added), "decode" (HF decode of ids)}]}
"""
import json
import os

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "tokenizer")

# valid UTF-8 (HF takes str) holding the bytes the vocab lacks: control characters, and code
# points whose UTF-8 lead byte is 0xf1 (U+40000-U+7FFFF) or 0xf2 (U+80000-U+BFFFF)
SAMPLES = [
    "a\x04b",
    "x\x06\x13\x1dy",
    "ok\x04",
    "\x04\x04\x04",
    "end of text\x14\x16 here",
    "hi \U00050000 there",
    "\U00080000z",
    "mixed \x04 caf\u00e9 \U000B0000 2024\x1d!",
    "<|im_start|>user\x06 hi<|im_end|>",
]


def byte_level_map():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def main():
    tok = Tokenizer.from_file(os.path.join(DATA, "smollm2.tokenizer.json"))
    vocab = tok.get_vocab()
    m = byte_level_map()
    missing = [b for b in range(256) if m[b] not in vocab]
    out = {"missing_bytes": missing, "samples": []}
    for s in SAMPLES:
        ids = tok.encode(s, add_special_tokens=False).ids
        out["samples"].append({"text": s, "ids": ids,
                               "decode": tok.decode(ids, skip_special_tokens=False)})
    path = os.path.join(DATA, "smollm2_unknown_golden.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=1)
        f.write("\n")
    print(path, len(SAMPLES), "samples, missing bytes", [hex(b) for b in missing])


if __name__ == "__main__":
    main()
