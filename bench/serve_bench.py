#!/usr/bin/env python3
"""bench/serve_bench.py: load benchmark of `hyb serve` against llama.cpp's llama-server on the
same GGUF, the same threads and the same number of slots, in the same run, interleaved.

    bench/serve_bench.py [--clients 16,64] [--requests 2] [--max-tokens 64] [--rounds 2]
                         [--threads 2] [--json bench/results/serve.json]

For each client count C, both servers are started with C slots (hyb: --slots C --max-ctx CTX;
llama-server: -np C -c C*CTX, its context is shared by the slots) and stay up; each round runs
hyb then llama-server (the order alternates per round). A run: C client threads, each sending
--requests streaming POST /v1/completions one after another (fixed prompts, temperature 0,
max_tokens), so C requests are in flight until the end. Per run: requests/s and generated
tokens/s (completion tokens over the run's wall time), time to first token p50/p99 (request
sent -> first chunk with text), failed requests (non-200, error, no [DONE]). The table shows the
median of the rounds per server and C, and hyb/llama-server for tokens/s. Tokens are the
usage.completion_tokens each server reports in its last chunk (else one per chunk with text).

llama-server: ~/.cache/hyb/llama-server/llama-server (or --llama-server PATH), built from the
llama.cpp vendored in the llama-cpp-python sdist (docs/SERVE.md has the commands); without it the
benchmark runs hyb alone and says so. Each server runs in its own default configuration: hyb sets
OMP_WAIT_POLICY=passive itself, llama-server keeps libgomp's default (--llama-omp-passive forces
passive on it too, as earlier runs of this script did).
"""
import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step, for a curious child.",
    "List some practical tips for someone learning to cook at home for the first time.",
    "Describe a walk through a busy market in the morning, with the sounds and smells.",
    "What are the main differences between a lake and a sea? Answer in a few sentences.",
    "Write a friendly letter to a neighbour inviting them to a summer garden party.",
    "Give a simple explanation of why the sky looks blue during the day.",
    "Describe the life cycle of a butterfly from egg to adult in plain words.",
    "Write the opening paragraph of a mystery novel set in a snowy mountain village.",
    "Explain what a computer program is to someone who has never used a computer.",
    "Suggest a plan for a relaxing weekend in the countryside with a few activities.",
    "Describe how bread is made, from the flour to the loaf on the table.",
    "Write a short poem about the sound of rain on a tin roof at night.",
    "Explain why regular exercise is good for the body and the mind.",
    "Tell the story of a small robot that wants to learn how to paint.",
    "Describe the view from the top of a tall hill on a clear autumn day.",
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_health(port, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def one_request(port, prompt, max_tokens, model):
    """(ok, ttft seconds or None, tokens)"""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.time()
    ttft, chunks_with_text, usage, done = None, 0, None, False
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            r.read()
            return False, None, 0
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            payload = line[6:]
            if payload == b"[DONE]":
                done = True
                break
            o = json.loads(payload)
            if o.get("usage"):
                usage = o["usage"]
            for ch in o.get("choices") or []:
                if ch.get("text"):
                    chunks_with_text += 1
                    if ttft is None:
                        ttft = time.time() - t0
        c.close()
    except (OSError, ValueError, http.client.HTTPException):
        return False, None, 0
    toks = usage["completion_tokens"] if usage and "completion_tokens" in usage \
        else chunks_with_text
    return done, ttft, toks


def run_load(port, clients, per_client, max_tokens, model):
    results = []
    lock = threading.Lock()

    def client(k):
        for i in range(per_client):
            res = one_request(port, PROMPTS[(k * per_client + i) % len(PROMPTS)], max_tokens,
                              model)
            with lock:
                results.append(res)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    ok = [r for r in results if r[0]]
    ttfts = sorted(r[1] for r in ok if r[1] is not None)

    def pct(p):
        if not ttfts:
            return None
        return ttfts[min(len(ttfts) - 1, int(round(p / 100 * (len(ttfts) - 1))))]

    tokens = sum(r[2] for r in ok)
    return {"wall_s": wall, "requests": len(results), "failed": len(results) - len(ok),
            "requests_per_s": len(ok) / wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "ttft_p50_s": pct(50), "ttft_p99_s": pct(99)}


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.environ.get("HYB_MODEL") or os.path.expanduser(
        "~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--hyb", default=os.path.join(here, "..", "build", "hyb"))
    ap.add_argument("--llama-server", default=os.path.expanduser(
        "~/.cache/hyb/llama-server/llama-server"))
    ap.add_argument("--clients", default="16,64")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per run")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512, help="context per slot")
    ap.add_argument("--hyb-env", default="", help="extra environment for hyb, e.g. HYB_QUANT=fast")
    ap.add_argument("--json", default="")
    ap.add_argument("--llama-omp-passive", action="store_true",
                    help="run llama-server with OMP_WAIT_POLICY=passive too (not its default)")
    a = ap.parse_args()
    have_llama = os.access(a.llama_server, os.X_OK)
    if not have_llama:
        print("llama-server not found at %s: hyb alone" % a.llama_server, flush=True)
    # each server in its own default configuration: hyb sets OMP_WAIT_POLICY=passive itself;
    # llama.cpp's ggml threads run with libgomp's default (spin a while, then sleep), which is
    # how llama-server is normally run (forcing passive on it slowed its batched decode)
    env = dict(os.environ)
    if a.llama_omp_passive:
        env["OMP_WAIT_POLICY"] = "passive"
    hyb_env = dict(os.environ, OMP_WAIT_POLICY="passive")
    for kv in a.hyb_env.split():
        k, v = kv.split("=", 1)
        hyb_env[k] = v
    logs = tempfile.mkdtemp(prefix="serve-bench-")
    runs = []
    for C in [int(x) for x in a.clients.split(",")]:
        servers = {}
        hp = free_port()
        servers["hyb"] = (hp, subprocess.Popen(
            [a.hyb, "serve", a.model, "--port", str(hp), "--slots", str(C), "--max-ctx",
             str(a.ctx), "--threads", str(a.threads), "--max-queue", "1024", "--name", "m"],
            stdout=open(os.path.join(logs, "hyb-%d.log" % C), "w"), stderr=subprocess.STDOUT,
            env=hyb_env))
        if have_llama:
            lp = free_port()
            servers["llama-server"] = (lp, subprocess.Popen(
                [a.llama_server, "-m", a.model, "--host", "127.0.0.1", "--port", str(lp),
                 "-t", str(a.threads), "-tb", str(a.threads), "-np", str(C), "-c",
                 str(C * a.ctx), "-a", "m", "--no-webui"],
                stdout=open(os.path.join(logs, "llama-%d.log" % C), "w"),
                stderr=subprocess.STDOUT, env=env))
        try:
            for name, (port, proc) in servers.items():
                if not wait_health(port, proc):
                    raise SystemExit("%s did not start (log in %s)" % (name, logs))
                one_request(port, PROMPTS[0], 8, "m")  # warm-up
            names = list(servers)
            for rnd in range(a.rounds):
                order = names if rnd % 2 == 0 else names[::-1]
                for name in order:
                    la = loadavg()
                    r = run_load(servers[name][0], C, a.requests, a.max_tokens, "m")
                    r.update(server=name, clients=C, round=rnd + 1, load_before=la)
                    runs.append(r)
                    print("C=%-3d round %d %-12s %6.1f tok/s %5.2f req/s  TTFT p50 %.2fs p99 "
                          "%.2fs  failed %d  (load %.1f)" % (
                              C, rnd + 1, name, r["tokens_per_s"], r["requests_per_s"],
                              r["ttft_p50_s"] or -1, r["ttft_p99_s"] or -1, r["failed"],
                              la or -1), flush=True)
        finally:
            for name, (port, proc) in servers.items():
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print()
    print("| clients | server | tokens/s | requests/s | TTFT p50 (s) | TTFT p99 (s) | failed | "
          "hyb / llama-server tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for C in sorted({r["clients"] for r in runs}):
        med = {}
        for name in ("hyb", "llama-server"):
            rs = [r for r in runs if r["clients"] == C and r["server"] == name]
            if not rs:
                continue
            m = {k: statistics.median(r[k] for r in rs if r[k] is not None)
                 for k in ("tokens_per_s", "requests_per_s", "ttft_p50_s", "ttft_p99_s")}
            m["failed"] = sum(r["failed"] for r in rs)
            m.update(clients=C, server=name, rounds=len(rs))
            med[name] = m
            summary.append(m)
        for name, m in med.items():
            ratio = ""
            if name == "hyb" and "llama-server" in med:
                ratio = "%.2f" % (m["tokens_per_s"] / med["llama-server"]["tokens_per_s"])
                m["ratio_tokens_per_s"] = float(ratio)
            print("| %d | %s | %.1f | %.2f | %.2f | %.2f | %d | %s |" % (
                C, name, m["tokens_per_s"], m["requests_per_s"], m["ttft_p50_s"],
                m["ttft_p99_s"], m["failed"], ratio))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "model": a.model, "threads": a.threads,
                       "max_tokens": a.max_tokens, "requests_per_client": a.requests,
                       "ctx_per_slot": a.ctx, "hyb_env": a.hyb_env, "machine": platform.node(),
                       "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "runs": runs, "summary": summary}, f, indent=1)
        print("\nJSON: %s" % a.json)


if __name__ == "__main__":
    main()
