"""bench/llama_compare.py: hyb against llama.cpp on the same GGUF (issue 22's benchmark).

Run it through bench/llama_compare.sh, which builds bench/membw.c, finds or installs
llama-cpp-python in .venv-bench and says which flags this `hyb` takes. Subcommands:

    run      --hyb HYB --membw MEMBW --models A.gguf[,B.gguf...] [options]   the whole benchmark
    tokenize MODEL TEXT OUT                  token ids of TEXT (llama.cpp's tokenizer) into OUT
    speed    MODEL IDS [--threads T ...]     llama.cpp's side of one speed measurement (JSON line)
    logits   MODEL IDS OUT N [--threads T]   llama.cpp's logits of the first N ids (N x V f32)

Every measurement is its own process (hyb: bench/llama_compare.lua through `hyb run`; llama.cpp:
this file's speed/logits through llama-cpp-python's C API, so that neither side pays for the
other's setup); per repetition the order of the processes rotates. llama.cpp runs in its default
configuration (default context parameters, no OMP_* variables) apart from the thread counts
(n_threads = n_threads_batch = --threads), n_ctx and n_batch = n_ubatch = 512; hyb runs with
OMP_NUM_THREADS = --threads (and --threads, --quant, --kv-cache where this hyb has them).
Accuracy: the first --positions ids fed one decode step at a time through hyb with HYB_QUANT /
--quant off (every weight dequantised to f32: the f32 computation over the file's weights, the
reference), precise and fast, and through llama.cpp (every position's logits); per position
KL(p_ref || p_path) of the next-token distributions (float64 log-softmax), mean and max, and
top-1 agreement.
"""
import argparse
import ctypes
import datetime
import json
import os
import shlex
import statistics
import struct
import subprocess
import sys
import time

# ---------------------------------------------------------------- GGUF: weight bytes per token

# ggml type id: (name, values per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 30: ("BF16", 1, 2),
}


def gguf_info(path):
    """tensors {name: (type name, elements, bytes)} and the scalar metadata of a GGUF file"""
    with open(path, "rb") as f:
        data = f.read(32 << 20)  # header and tensor infos: a few MB at most (the vocabulary)
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
              12: "d"}

    def value(t):
        if t in scalar:
            return take(scalar[t])
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            if et in scalar:
                nonlocal pos
                pos += n * struct.calcsize("<" + scalar[et])
                return None
            for _ in range(n):
                value(et)
            return None
        raise ValueError(f"{path}: GGUF value type {t} unknown at byte {pos}")

    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    pos = 4
    take("I")
    nt, nkv = take("Q"), take("Q")
    meta = {}
    for _ in range(nkv):
        k = string()
        v = value(take("I"))
        if v is not None:
            meta[k] = v
    tensors = {}
    for _ in range(nt):
        name = string()
        nd = take("I")
        ne = 1
        for _ in range(nd):
            ne *= take("Q")
        t = take("I")
        take("Q")
        tname, bs, bb = GGML_TYPES.get(t, (f"type{t}", 0, 0))
        tensors[name] = (tname, ne, ne // bs * bb if bs else 0)
    return tensors, meta


def weight_bytes_per_token(tensors):
    """bytes of weights one decode step reads: every tensor, except that the token embedding
    is only gathered (one row) when the file has a separate output head (else it is the tied
    head and read whole). Returns (as stored, as f32)."""
    q = f = 0
    untied = "output.weight" in tensors
    for name, (_, ne, nb) in tensors.items():
        if name == "token_embd.weight" and untied:
            continue
        q += nb
        f += 4 * ne
    return q, f


def kv_bytes_per_token_f16(meta, ctx):
    """bytes of an f16 K and V cache of ctx positions (what attention reads per step)"""
    arch = meta.get("general.architecture", "llama")
    L = meta.get(f"{arch}.block_count", 0)
    nh = meta.get(f"{arch}.attention.head_count", 1)
    nkv = meta.get(f"{arch}.attention.head_count_kv", nh)
    d = meta.get(f"{arch}.embedding_length", 0)
    return 2 * L * nkv * (d // nh) * 2 * ctx


# ---------------------------------------------------------------- llama.cpp side


class Llama:
    """llama.cpp through llama-cpp-python's C API (no high-level wrapper work in the timings)"""

    def __init__(self, model, n_ctx, threads, vocab_only=False):
        import llama_cpp as L
        self.L = L
        self._log = L.llama_log_callback(lambda level, text, user: None)
        L.llama_log_set(self._log, ctypes.c_void_p(0))
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.vocab_only = vocab_only
        t0 = time.perf_counter()
        self.model = L.llama_model_load_from_file(model.encode(), mp)
        if not self.model:
            raise SystemExit(f"llama.cpp cannot load {model}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.V = L.llama_vocab_n_tokens(self.vocab)
        self.ctx = None
        if not vocab_only:
            cp = L.llama_context_default_params()
            cp.n_ctx = n_ctx
            cp.n_batch = cp.n_ubatch = 512
            cp.n_threads = cp.n_threads_batch = threads
            self.ctx = L.llama_init_from_model(self.model, cp)
            if not self.ctx:
                raise SystemExit(f"llama.cpp cannot make a context of {n_ctx} for {model}")
            self.batch = L.llama_batch_init(512, 0, 1)
        self.load_s = time.perf_counter() - t0
        self.pos = 0

    def tokenize(self, text):
        b = text.encode()
        buf = (self.L.llama_token * (len(b) + 16))()
        n = self.L.llama_tokenize(self.vocab, b, len(b), buf, len(buf), False, False)
        if n < 0:
            raise SystemExit("llama.cpp tokenize failed")
        return list(buf[:n])

    def reset(self):
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        self.pos = 0

    def eval(self, ids, on_logits=None):
        """append ids in batches of 512; logits of the last id (of every id with on_logits)"""
        L, b = self.L, self.batch
        for a in range(0, len(ids), 512):
            chunk = ids[a:a + 512]
            b.n_tokens = len(chunk)
            for j, t in enumerate(chunk):
                b.token[j] = t
                b.pos[j] = self.pos + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = 0
                b.logits[j] = on_logits is not None or a + j == len(ids) - 1
            rc = L.llama_decode(self.ctx, b)
            if rc != 0:
                raise SystemExit(f"llama_decode returned {rc}")
            if on_logits is not None:
                for j in range(len(chunk)):
                    p = L.llama_get_logits_ith(self.ctx, j)
                    on_logits(ctypes.string_at(p, 4 * self.V))
            self.pos += len(chunk)


def cpu_s():
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def read_ids(path):
    with open(path) as f:
        return [int(w) for w in f.read().split()]


def cmd_tokenize(a):
    m = Llama(a.model, 0, 1, vocab_only=True)
    with open(a.text) as f:
        ids = m.tokenize(f.read())
    with open(a.out, "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    print(len(ids))


def cmd_speed(a):
    import llama_cpp  # noqa: F401  (its import, numpy included, is not llama.cpp's memory)
    ids = read_ids(a.ids)
    rss0 = status_kb("VmRSS")
    m = Llama(a.model, max(a.prefill, a.ctx + a.decode) + 8, a.threads)
    m.eval(ids[:16])  # warm-up, as bench/llama_compare.lua
    for t in ids[16:20]:
        m.eval([t])

    def timed(fn):
        c, t = cpu_s(), time.perf_counter()
        fn()
        return time.perf_counter() - t, cpu_s() - c

    def steps(lo, hi):
        for t in ids[lo:hi]:
            m.eval([t])

    m.reset()
    pre_s, pre_cpu = timed(lambda: m.eval(ids[:a.prefill]))
    m.reset()
    d0_s, d0_cpu = timed(lambda: steps(0, a.decode))
    m.reset()
    m.eval(ids[:a.ctx])
    dc_s, dc_cpu = timed(lambda: steps(a.ctx, a.ctx + a.decode))
    print(json.dumps({"load_s": m.load_s, "prefill_tokens": a.prefill, "prefill_s": pre_s,
                      "prefill_cpu_s": pre_cpu, "decode_tokens": a.decode, "decode0_s": d0_s,
                      "decode0_cpu_s": d0_cpu, "ctx": a.ctx, "decodec_s": dc_s,
                      "decodec_cpu_s": dc_cpu, "rss_before_load_kb": rss0,
                      "peak_rss_kb": status_kb("VmHWM")}))


def cmd_logits(a):
    ids = read_ids(a.ids)[:a.n]
    m = Llama(a.model, a.n + 8, a.threads)
    with open(a.out, "wb") as f:
        m.eval(ids, on_logits=f.write)
    print(json.dumps({"positions": len(ids), "vocab": m.V, "load_s": m.load_s}))


# ---------------------------------------------------------------- the benchmark


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def last_line(s):
    lines = [x for x in s.strip().splitlines() if x.strip()]
    return lines[-1] if lines else ""


def run_proc(argv, env, log):
    """run one measurement; (parsed JSON line of stdout, None) or (None, error text)"""
    log.write("$ " + " ".join(shlex.quote(x) for x in argv) + "\n")
    log.flush()
    p = subprocess.run(argv, env=env, capture_output=True, text=True)
    log.write(p.stdout + p.stderr)
    if p.returncode != 0:
        return None, (last_line(p.stderr) or last_line(p.stdout) or f"exit {p.returncode}")
    try:
        return json.loads(last_line(p.stdout)), None
    except ValueError:
        return None, "no JSON result: " + last_line(p.stdout)


def kl_top1(ref_path, q_path, V, n):
    import numpy as np
    r = np.memmap(ref_path, dtype=np.float32, mode="r", shape=(n, V))
    q = np.memmap(q_path, dtype=np.float32, mode="r", shape=(n, V))
    kls, agree = [], 0
    for a in range(0, n, 64):
        x = r[a:a + 64].astype(np.float64)
        y = q[a:a + 64].astype(np.float64)
        agree += int((x.argmax(1) == y.argmax(1)).sum())
        x -= x.max(1, keepdims=True)
        x -= np.log(np.exp(x).sum(1, keepdims=True))
        y -= y.max(1, keepdims=True)
        y -= np.log(np.exp(y).sum(1, keepdims=True))
        kls.extend((np.exp(x) * (x - y)).sum(1).tolist())
    return {"mean_kl": float(np.mean(kls)), "max_kl": float(np.max(kls)), "top1": agree / n,
            "positions": n}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs):
    """medians over repetitions of one configuration's speed runs"""
    ok = [r for r in runs if r.get("result")]
    if not ok:
        return None
    g = [r["result"] for r in ok]
    return {
        "prefill_tok_s": med([x["prefill_tokens"] / x["prefill_s"] for x in g]),
        "decode0_tok_s": med([x["decode_tokens"] / x["decode0_s"] for x in g]),
        "decodec_tok_s": med([x["decode_tokens"] / x["decodec_s"] for x in g]),
        "decode0_ms": med([1e3 * x["decode0_s"] / x["decode_tokens"] for x in g]),
        "decodec_ms": med([1e3 * x["decodec_s"] / x["decode_tokens"] for x in g]),
        "cpu_s_per_token": med([x["decode0_cpu_s"] / x["decode_tokens"] for x in g]),
        "cpu_s_per_token_ctx": med([x["decodec_cpu_s"] / x["decode_tokens"] for x in g]),
        "peak_rss_mb": med([x["peak_rss_kb"] / 1024 for x in g]),
        "peak_rss_above_start_mb": med([(x["peak_rss_kb"] - x["rss_before_load_kb"]) / 1024
                                        for x in g]),
        "load_s": med([x["load_s"] for x in g]),
        "reps": len(g),
    }


# (metric, key, target ratio, higher is better)
TARGETS = [
    ("prefill 512 tok/s", "prefill_tok_s", 2.0, True),
    ("decode ctx 0 tok/s", "decode0_tok_s", None, True),
    ("decode ctx 2000 tok/s", "decodec_tok_s", None, True),
    ("CPU s / decoded token", "cpu_s_per_token", 0.8, False),
    ("peak RSS above start, MB", "peak_rss_above_start_mb", 1.2, False),
    ("load s", "load_s", 1.0, False),
]


def paired_ratio(runs_h, runs_l, key):
    """median over repetitions of hyb / llama.cpp from the same repetition"""
    rs = []
    for h, lr in zip(runs_h, runs_l):
        if not (h.get("result") and lr.get("result")):
            continue
        sh, sl = summarize([h]), summarize([lr])
        if sh[key] and sl[key]:
            rs.append(sh[key] / sl[key])
    return med(rs)


def fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, str):  # an error: its start in the table (whole in the JSON)
        return v if len(v) <= 60 else v[:57] + "..."
    if v == 0:
        return "0"
    if abs(v) < 1e-2 or abs(v) >= 1e5:
        return f"{v:.2e}"
    return f"{v:.{nd}g}" if abs(v) < 10 else f"{v:.1f}"


def report_file(fr, modes):
    """markdown table of one file's results; fills fr["ratios"]"""
    out = []
    cols = [f"hyb {m}" for m in modes] + ["llama.cpp"]
    llama = fr["summary"].get("llama.cpp")
    ratios = {}
    out.append(f"**{os.path.basename(fr['model'])}** ({fr['file_mb']:.1f} MB; weight bytes per "
               f"token {fr['weight_mb_per_token']:.1f} MB as stored, "
               f"{fr['weight_mb_per_token_f32']:.1f} MB as f32; "
               f"read bandwidth {fmt(fr['read_gb_s_median'])} GB/s, median of "
               f"{len(fr['read_gb_s'])}; load average {fr['loadavg_start']} -> "
               f"{fr['loadavg_end']})\n")
    head = "| metric | " + " | ".join(cols) + " | " + " | ".join(
        f"{m} / llama.cpp" for m in modes) + " | target |"
    out.append(head)
    out.append("|" + "---|" * (head.count("|") - 1))

    def row(name, vals, rats, target):
        out.append(f"| {name} | " + " | ".join(vals) + " | " + " | ".join(rats) + f" | {target} |")

    for name, key, tgt, hib in TARGETS:
        vals, rats = [], []
        for m in modes:
            s = fr["summary"].get(m)
            vals.append(fmt(s[key]) if s else fmt(fr["errors"].get(m)))
            r = paired_ratio(fr["runs"][m], fr["runs"]["llama.cpp"], key) if s and llama else None
            ratios.setdefault(m, {})[key] = r
            rats.append(fmt(r))
        vals.append(fmt(llama[key]) if llama else fmt(fr["errors"].get("llama.cpp")))
        if key == "decode0_tok_s" or key == "decodec_tok_s":
            target = "fast >= 1.2, precise >= 1.0"
        else:
            target = ("" if tgt is None else (">= " if hib else "<= ") + str(tgt))
        row(name, vals, rats, target)
    # decode step against the bandwidth floor
    bw = fr["read_gb_s_median"]
    for label, key, extra in (("decode ctx 0: ms / step (floor)", "decode0_ms", 0),
                              ("decode ctx 2000: ms / step (floor)", "decodec_ms",
                               fr["kv_f16_mb_at_ctx"])):
        vals = []
        for c in modes + ["llama.cpp"]:
            s = fr["summary"].get(c)
            wb = fr["weight_mb_per_token_f32"] if c == "off" else fr["weight_mb_per_token"]
            floor = (wb + extra) / 1e3 / bw * 1e3 if bw else None
            fr.setdefault("floor_ms", {}).setdefault(c, {})[key] = floor
            vals.append(f"{fmt(s[key])} ({fmt(floor)})" if s else "-")
        row(label, vals, ["" for _ in modes], "")
    acc = fr.get("accuracy", {})
    for name, key in (("mean KL vs f32", "mean_kl"), ("top-1 vs f32", "top1")):
        vals = []
        for c in modes + ["llama.cpp"]:
            a = acc.get(c)
            if isinstance(a, dict):
                vals.append(fmt(a[key]) if key == "mean_kl" else f"{100 * a[key]:.2f}%")
            else:
                vals.append(fmt(a))
        rats = []
        for m in modes:
            a, lc = acc.get(m), acc.get("llama.cpp")
            r = a[key] / lc[key] if isinstance(a, dict) and isinstance(lc, dict) and lc[key] else None
            ratios.setdefault(m, {})[key] = r
            rats.append(fmt(r))
        row(name, vals, rats, "fast: KL below llama.cpp's" if key == "mean_kl" else "")
    fr["ratios"] = ratios
    # the targets, pass / fail
    checks = []
    for m in modes:
        r = ratios.get(m, {})
        want = {"fast": 1.2, "precise": 1.0}.get(m)
        if want is not None:
            checks.append((f"{m} decode ctx 0 >= {want}x", r.get("decode0_tok_s"), want, True))
        for name, key, tgt, hib in TARGETS:
            if tgt is not None:
                checks.append((f"{m} {name.split(',')[0]} {'>=' if hib else '<='} {tgt}x",
                               r.get(key), tgt, hib))
        if m == "fast":
            checks.append(("fast mean KL < llama.cpp's", r.get("mean_kl"), 1.0, False))
    fr["targets"] = []
    line = []
    for name, v, t, hib in checks:
        ok = None if v is None else (v >= t if hib else (v < t if "KL" in name else v <= t))
        fr["targets"].append({"target": name, "ratio": v, "met": ok})
        line.append(f"{name}: {fmt(v)} {'met' if ok else ('n/a' if ok is None else 'NOT met')}")
    out.append("\nTargets (hyb / llama.cpp, medians of per-repetition ratios): " + "; ".join(line) + ".")
    return "\n".join(out)


def write_json(path, res):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(path + ".tmp", path)


def cmd_run(a):
    here = os.path.dirname(os.path.abspath(__file__))
    lua = os.path.join(here, "llama_compare.lua")
    modes = [m for m in a.modes.split(",") if m]
    models = [m for m in a.models.split(",") if m]
    flags = set(f for f in a.hyb_flags.split(",") if f)
    os.makedirs(a.work, exist_ok=True)
    log = open(os.path.join(a.work, "llama_compare.log"), "w")
    started = datetime.datetime.now(datetime.timezone.utc)
    res = {
        "date_utc": started.strftime("%Y-%m-%d %H:%M"), "commit": a.commit, "label": a.label,
        "threads": a.threads, "reps": a.reps, "prefill": a.prefill, "decode": a.decode,
        "ctx": a.ctx, "positions": a.positions, "text": a.text, "modes": modes,
        "hyb": a.hyb, "hyb_flags": sorted(flags), "kv_cache": a.kv_cache if "kv-cache" in flags
        else "hyb default (no --kv-cache flag)", "llama_cpp": a.llama_desc,
        "cpu": a.cpu, "loadavg_start": loadavg(), "files": [],
    }
    base_env = dict(os.environ)
    llama_env = {k: v for k, v in base_env.items() if not k.startswith("OMP_")}
    py = sys.executable

    def hyb_cmd(sub, model, ids, mode, extra):
        env = dict(base_env, OMP_NUM_THREADS=str(a.threads))
        opts = []
        if "quant" in flags:
            opts += ["--llm", f"quant={mode}"]
            env.pop("HYB_QUANT", None)
        else:
            env["HYB_QUANT"] = mode
        if "kv-cache" in flags:
            opts += ["--llm", f"kv_cache={a.kv_cache}"]
        if "threads" in flags:
            opts += ["--llm", f"threads={a.threads}"]
        return [a.hyb, "run", lua, sub, model, ids] + extra + opts, env

    speed_opts = ["--prefill", str(a.prefill), "--decode", str(a.decode), "--ctx", str(a.ctx)]
    for model in models:
        name = os.path.basename(model)
        print(f"== {name}", flush=True)
        tensors, meta = gguf_info(model)
        wq, wf = weight_bytes_per_token(tensors)
        types = {}
        for t, _, nb in tensors.values():
            types[t] = types.get(t, 0) + 1
        fr = {"model": model, "file_mb": os.path.getsize(model) / 1e6, "tensor_types": types,
              "weight_mb_per_token": wq / 1e6, "weight_mb_per_token_f32": wf / 1e6,
              "kv_f16_mb_at_ctx": kv_bytes_per_token_f16(meta, a.ctx) / 1e6,
              "loadavg_start": loadavg(), "read_gb_s": [], "runs": {}, "errors": {},
              "summary": {}, "accuracy": {}}
        ids = os.path.join(a.work, "ids.txt")
        p = subprocess.run([py, __file__, "tokenize", model, a.text, ids], env=llama_env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"tokenize {model}: {p.stderr}")
        nids = int(last_line(p.stdout))
        need = max(a.prefill, a.ctx + a.decode + 1, a.positions)
        if nids < need:
            raise SystemExit(f"{a.text}: {nids} tokens, {need} needed")
        configs = modes + ["llama.cpp"]
        for c in configs:
            fr["runs"][c] = []
        for rep in range(a.reps):
            bw = subprocess.run([a.membw, str(a.membw_mib)], capture_output=True, text=True,
                                env=dict(base_env, OMP_NUM_THREADS=str(a.threads)))
            if bw.returncode == 0:
                fr["read_gb_s"].append(float(bw.stdout.split()[1]))
            order = configs[rep % len(configs):] + configs[:rep % len(configs)]
            for c in order:
                if c in fr["errors"]:  # unsupported: do not retry every repetition
                    continue
                if c == "llama.cpp":
                    argv = [py, __file__, "speed", model, ids, "--threads", str(a.threads)] + speed_opts
                    env = llama_env
                else:
                    argv, env = hyb_cmd("speed", model, ids, c, speed_opts)
                la = loadavg()
                r, err = run_proc(argv, env, log)
                fr["runs"][c].append({"rep": rep, "loadavg": la, "result": r, "error": err})
                if err:
                    fr["errors"][c] = "unsupported: " + err if c != "llama.cpp" else "error: " + err
                    print(f"  rep {rep + 1} {c}: {err}", flush=True)
                else:
                    print(f"  rep {rep + 1} {c}: prefill {r['prefill_tokens'] / r['prefill_s']:.1f}"
                          f" tok/s, decode {r['decode_tokens'] / r['decode0_s']:.1f} / "
                          f"{r['decode_tokens'] / r['decodec_s']:.1f} tok/s (ctx 0 / {a.ctx}), "
                          f"load {r['load_s']:.2f} s, peak RSS {r['peak_rss_kb'] / 1024:.0f} MB"
                          f"  [load avg {la[0]}]", flush=True)
        for c in configs:
            fr["summary"][c] = summarize(fr["runs"][c])
        fr["read_gb_s_median"] = med(fr["read_gb_s"])
        # accuracy
        if a.positions > 0:
            dumps = {}
            for c in ["off"] + [m for m in modes if m != "off"] + ["llama.cpp"]:
                out = os.path.join(a.work, f"logits-{c}.f32")
                if c == "llama.cpp":
                    argv, env = [py, __file__, "logits", model, ids, out, str(a.positions),
                                 "--threads", str(a.threads)], llama_env
                else:
                    argv, env = hyb_cmd("logits", model, ids, c, [out, str(a.positions)])
                r, err = run_proc(argv, env, log)
                if err:
                    fr["accuracy"][c] = "unsupported: " + err
                    print(f"  logits {c}: {err}", flush=True)
                else:
                    dumps[c] = (out, r["vocab"])
            if "off" in dumps:
                ref, V = dumps["off"]
                for c, (path, v) in dumps.items():
                    if c != "off" and v == V:
                        fr["accuracy"][c] = kl_top1(ref, path, V, a.positions)
                if "off" in modes:
                    fr["accuracy"]["off"] = "reference"
            else:
                for c in dumps:
                    fr["accuracy"][c] = "no f32 reference (hyb off failed)"
            for path, _ in dumps.values():
                os.remove(path)
        fr["loadavg_end"] = loadavg()
        fr["table"] = report_file(fr, modes)
        print(fr["table"] + "\n", flush=True)
        res["files"].append(fr)
        write_json(a.json, res)  # after every file: a partial run leaves its results
    res["loadavg_end"] = loadavg()
    res["minutes"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60
    write_json(a.json, res)
    print(f"wrote {a.json} ({res['minutes']:.1f} min; load average {res['loadavg_start']} -> "
          f"{res['loadavg_end']}; per-process log {log.name})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sp = ap.add_subparsers(dest="cmd", required=True)
    t = sp.add_parser("tokenize")
    t.add_argument("model"), t.add_argument("text"), t.add_argument("out")
    for name in ("speed", "logits"):
        s = sp.add_parser(name)
        s.add_argument("model"), s.add_argument("ids")
        if name == "logits":
            s.add_argument("out"), s.add_argument("n", type=int)
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--prefill", type=int, default=512)
        s.add_argument("--decode", type=int, default=128)
        s.add_argument("--ctx", type=int, default=2000)
    r = sp.add_parser("run")
    r.add_argument("--hyb", required=True)
    r.add_argument("--membw", required=True)
    r.add_argument("--membw-mib", type=int, default=1024)
    r.add_argument("--models", required=True)
    r.add_argument("--text", required=True)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--prefill", type=int, default=512)
    r.add_argument("--decode", type=int, default=128)
    r.add_argument("--ctx", type=int, default=2000)
    r.add_argument("--positions", type=int, default=512)
    r.add_argument("--modes", default="precise,fast")
    r.add_argument("--kv-cache", default="f16")
    r.add_argument("--hyb-flags", default="")
    r.add_argument("--json", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--commit", default="")
    r.add_argument("--label", default="")
    r.add_argument("--cpu", default="")
    r.add_argument("--llama-desc", default="")
    a = ap.parse_args()
    {"tokenize": cmd_tokenize, "speed": cmd_speed, "logits": cmd_logits, "run": cmd_run}[a.cmd](a)


if __name__ == "__main__":
    main()
