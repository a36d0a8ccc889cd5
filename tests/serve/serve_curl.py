"""tests/serve/serve_curl.py HYB: `hyb serve` on a free port, driven by curl.

 1. non-streaming and streaming, both endpoints: the streamed text equals the non-streamed one
    (greedy), usage counts, finish reasons, stop strings, n, logprobs;
 2. 16 concurrent greedy streams: each text equals the same request run alone;
 3. a client killed mid-stream (and one killed while waiting for a non-streamed answer): its slot
    is free at once (/metrics);
 4. every malformed request gets its 4xx and an OpenAI-style error naming the field, and the
    server still answers afterwards;
 5. a second server (1 slot, queue of 1, API key): 401s, 429 on a full queue;
 6. SIGTERM while a stream runs: the stream ends with [DONE], new connections are refused, exit 0.
"""
import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_lib import Server, model_path, skip, stream_text  # noqa: E402

T0 = time.time()


def step(msg):
    print("[%5.1fs] %s" % (time.time() - T0, msg), flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def err_of(status, body, want_status, want_param):
    check(status == want_status, "want %d, got %d: %r" % (want_status, status, body))
    check(isinstance(body, dict) and "error" in body, "not an error object: %r" % (body,))
    e = body["error"]
    for k in ("message", "type", "param", "code"):
        check(k in e, "error lacks %s: %r" % (k, e))
    check(e["param"] == want_param, "param %r, want %r (%s)" % (e["param"], want_param, e))
    check(isinstance(e["message"], str) and e["message"], "empty message")


def main():
    if len(sys.argv) < 2:
        raise SystemExit("usage: serve_curl.py HYB")
    hyb = sys.argv[1]
    model = model_path()
    try:
        subprocess.run(["curl", "--version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        skip("curl is not installed")

    srv = Server(hyb, model, "--slots", "16", "--max-ctx", "512", "--max-queue", "64")
    # the second server (section 5) loads meanwhile
    srv2 = Server(hyb, model, "--slots", "1", "--max-queue", "1", "--max-ctx", "512",
                  "--api-key", "sekret", "--threads", "1", wait=False)
    step("server up on port %d" % srv.port)
    status, models = srv.curl("/v1/models")
    models = json.loads(models)
    check(status == 200 and models["object"] == "list", models)
    model_id = models["data"][0]["id"]
    status, h = srv.curl("/health")
    check(status == 200 and json.loads(h)["status"] == "ok", h)

    # a server that cannot start says why in one line, exit status 1
    for args, want in ((["/no/such/model.gguf", "--port", "0"], "no/such/model.gguf"),
                       ([model, "--port", str(srv.port)], "cannot listen on 127.0.0.1:%d" %
                        srv.port)):
        r = subprocess.run([hyb, "serve", *args], capture_output=True, text=True, timeout=60)
        check(r.returncode == 1 and want in r.stderr and "traceback" not in r.stderr,
              "hyb serve %s: %d %r" % (args, r.returncode, r.stderr))
    step("bad model / port in use: one line, exit 1")

    # ---- 1. both endpoints, streaming and not ----------------------------------------------------
    cpl = {"model": model_id, "prompt": "The three primary colors are", "max_tokens": 20,
           "temperature": 0}
    status, r = srv.post("/v1/completions", cpl)
    check(status == 200, (status, r))
    check(r["object"] == "text_completion" and r["model"] == model_id, r)
    c0 = r["choices"][0]
    check(c0["finish_reason"] == "length" and c0["text"], r)
    u = r["usage"]
    check(u["completion_tokens"] == 20 and u["prompt_tokens"] > 0 and
          u["total_tokens"] == u["prompt_tokens"] + 20, u)
    status, chunks, done = srv.stream("/v1/completions",
                                      dict(cpl, stream_options={"include_usage": True}))
    texts, fin = stream_text(chunks, chat=False)
    check(status == 200 and done, "stream not ended by [DONE]")
    check(texts[0] == c0["text"], "streamed %r != %r" % (texts[0], c0["text"]))
    check(fin[0] == "length", fin)
    check(chunks[-1]["usage"] == u, (chunks[-1], u))
    step("completions: %r" % c0["text"])

    chat = {"model": model_id, "max_tokens": 40, "temperature": 0,
            "messages": [{"role": "user", "content": "Name a fruit."}]}
    status, r = srv.post("/v1/chat/completions", chat)
    check(status == 200 and r["object"] == "chat.completion", (status, r))
    m = r["choices"][0]["message"]
    check(m["role"] == "assistant" and m["content"], r)
    check("<|im_end|>" not in m["content"], m)
    check(r["choices"][0]["finish_reason"] in ("stop", "length"), r)
    status, chunks, done = srv.stream("/v1/chat/completions", chat)
    texts, fin = stream_text(chunks, chat=True)
    check(status == 200 and done, "chat stream not ended by [DONE]")
    check(chunks[0]["object"] == "chat.completion.chunk", chunks[0])
    check(chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[0])
    check(texts[0] == m["content"], "streamed %r != %r" % (texts[0], m["content"]))
    check(fin[0] == r["choices"][0]["finish_reason"], (fin, r))
    step("chat: %r (%s)" % (m["content"], fin[0]))

    # stop string, n, seed, logprobs
    word = c0["text"].split()[1] if len(c0["text"].split()) > 1 else c0["text"].strip()
    status, r = srv.post("/v1/completions", dict(cpl, stop=[word]))
    check(status == 200 and r["choices"][0]["finish_reason"] == "stop", r)
    check(word not in r["choices"][0]["text"] and c0["text"].startswith(r["choices"][0]["text"]),
          (word, r))
    status, r = srv.post("/v1/completions", dict(cpl, n=3, temperature=0.9, seed=7, max_tokens=8))
    check(status == 200 and [c["index"] for c in r["choices"]] == [0, 1, 2], r)
    check(r["usage"]["completion_tokens"] == 24, r["usage"])
    status, r2 = srv.post("/v1/completions", dict(cpl, n=3, temperature=0.9, seed=7, max_tokens=8))
    check([c["text"] for c in r["choices"]] == [c["text"] for c in r2["choices"]],
          "same seed, different texts")
    status, r = srv.post("/v1/completions", dict(cpl, logprobs=3, max_tokens=4))
    lp = r["choices"][0]["logprobs"]
    check(len(lp["tokens"]) == 4 and len(lp["top_logprobs"][0]) == 3, lp)
    check(abs(max(lp["top_logprobs"][0].values()) - lp["token_logprobs"][0]) < 1e-4,
          "greedy token is not the most probable: %r" % lp)
    status, r = srv.post("/v1/chat/completions", dict(chat, logprobs=True, top_logprobs=2,
                                                      max_tokens=3))
    content = r["choices"][0]["logprobs"]["content"]
    check(len(content) == 3 and len(content[0]["top_logprobs"]) == 2 and
          content[0]["logprob"] <= 0, content)
    step("stop, n, seed, logprobs")

    # ---- 2. 16 concurrent greedy streams == each alone ----------------------------------------------
    prompts = ["A story about %s:" % t for t in (
        "the sea", "a cat", "rain", "mountains", "bread", "a robot", "winter", "music",
        "a river", "the moon", "coffee", "a library", "trains", "gardens", "the wind", "fire")]
    reqs = [{"model": model_id, "max_tokens": 16, "temperature": 0, "prompt": p}
            for p in prompts]
    alone = []
    for q in reqs:
        status, r = srv.post("/v1/completions", q)
        check(status == 200, r)
        alone.append(r["choices"][0]["text"])
    step("16 requests one at a time")
    t = time.time()
    with cf.ThreadPoolExecutor(16) as ex:
        res = list(ex.map(lambda q: srv.stream("/v1/completions", q), reqs))
    wall = time.time() - t
    for i, (status, chunks, done) in enumerate(res):
        texts, _ = stream_text(chunks, chat=False)
        check(status == 200 and done, "stream %d failed" % i)
        check(texts[0] == alone[i], "stream %d: %r != alone %r" % (i, texts[0], alone[i]))
    step("16 concurrent streams equal their texts alone (%.1fs)" % wall)

    # ---- 3. clients that go away ---------------------------------------------------------------
    before = srv.metrics()["hyb_requests_cancelled_total"]
    long_req = {"model": model_id, "prompt": "Once upon a time", "max_tokens": 400,
                "temperature": 0, "stream": True}
    p = subprocess.Popen(["curl", "-s", "-N", srv.url + "/v1/completions", "-H",
                          "Content-Type: application/json", "-d", json.dumps(long_req)],
                         stdout=subprocess.PIPE)
    p.stdout.readline()  # the first chunk is there: it runs
    srv.wait_metric("hyb_active_slots", lambda v: v == 1)
    p.kill()
    p.wait()
    t = time.time()
    srv.wait_metric("hyb_active_slots", lambda v: v == 0, timeout=5)
    srv.wait_metric("hyb_requests_cancelled_total", lambda v: v == before + 1, timeout=5)
    step("killed stream: slot free after %.2fs" % (time.time() - t))
    p = subprocess.Popen(["curl", "-s", srv.url + "/v1/completions", "-H",
                          "Content-Type: application/json", "-d",
                          json.dumps(dict(long_req, stream=False))], stdout=subprocess.PIPE)
    srv.wait_metric("hyb_active_slots", lambda v: v == 1)
    p.kill()
    p.wait()
    t = time.time()
    srv.wait_metric("hyb_active_slots", lambda v: v == 0, timeout=5)
    srv.wait_metric("hyb_requests_cancelled_total", lambda v: v == before + 2, timeout=5)
    step("killed non-streaming client: slot free after %.2fs" % (time.time() - t))

    # ---- 4. malformed requests ---------------------------------------------------------------------
    C, CH = "/v1/completions", "/v1/chat/completions"
    bad = [
        (C, "{bad json", 400, None),
        (C, "", 400, None),
        (C, "[1, 2]", 400, None),
        (C, '{"prompt": "x", "max_tokens": 4', 400, None),
        (C, '{"max_tokens": 4}', 400, "prompt"),
        (C, '{"prompt": ""}', 400, "prompt"),
        (C, '{"prompt": []}', 400, "prompt"),
        (C, '{"prompt": 12}', 400, "prompt"),
        (C, '{"prompt": [1, -5]}', 400, "prompt[1]"),
        (C, '{"prompt": "x", "model": "no-such-model"}', 404, "model"),
        (C, '{"prompt": "x", "model": 3}', 400, "model"),
        (C, '{"prompt": "x", "max_tokens": 100000}', 400, "max_tokens"),
        (C, '{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
        (C, '{"prompt": "x", "max_tokens": "ten"}', 400, "max_tokens"),
        (C, '{"prompt": "x", "max_tokens": 2.5}', 400, "max_tokens"),
        (C, '{"prompt": "x", "temperature": "hot"}', 400, "temperature"),
        (C, '{"prompt": "x", "temperature": -1}', 400, "temperature"),
        (C, '{"prompt": "x", "top_p": 0}', 400, "top_p"),
        (C, '{"prompt": "x", "top_k": -1}', 400, "top_k"),
        (C, '{"prompt": "x", "n": 0}', 400, "n"),
        (C, '{"prompt": "x", "n": 99}', 400, "n"),
        (C, '{"prompt": "x", "stop": 5}', 400, "stop"),
        (C, '{"prompt": "x", "stop": ["a", ""]}', 400, "stop[1]"),
        (C, '{"prompt": "x", "stop": ["a","b","c","d","e"]}', 400, "stop"),
        (C, '{"prompt": "x", "stream": "yes"}', 400, "stream"),
        (C, '{"prompt": "x", "logprobs": 50}', 400, "logprobs"),
        (C, '{"prompt": "x", "seed": "s"}', 400, "seed"),
        (C, '{"prompt": "%s"}' % ("word " * 600), 400, "prompt"),
        (CH, '{"messages": []}', 400, "messages"),
        (CH, '{}', 400, "messages"),
        (CH, '{"messages": "hi"}', 400, "messages"),
        (CH, '{"messages": [5]}', 400, "messages[0]"),
        (CH, '{"messages": [{"role": "user"}]}', 400, "messages[0].content"),
        (CH, '{"messages": [{"role": "robot", "content": "x"}]}', 400, "messages[0].role"),
        (CH, '{"messages": [{"content": "x"}]}', 400, "messages[0].role"),
        (CH, '{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}', 400,
         "top_logprobs"),
        (CH, '{"messages": [{"role": "user", "content": "x"}], "logprobs": 1}', 400, "logprobs"),
        (CH, '{"messages": [{"role": "user", "content": "x"}], "max_tokens": 9999}', 400,
         "max_tokens"),
    ]
    for path, raw, want, param in bad:
        status, body = srv.curl(path, raw=raw)
        try:
            body = json.loads(body)
        except ValueError:
            raise AssertionError("%s %r: not JSON: %r" % (path, raw[:60], body[:200]))
        err_of(status, body, want, param)
    big = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'
    status, body = srv.curl(C, raw=big)
    err_of(status, json.loads(body), 413, None)
    status, body = srv.curl(C, raw=big, headers=["Transfer-Encoding: chunked"])
    err_of(status, json.loads(body), 413, None)
    status, body = srv.curl(C)
    err_of(status, json.loads(body), 405, None)
    status, body = srv.curl("/v1/models", method="DELETE")
    err_of(status, json.loads(body), 405, None)
    status, body = srv.curl("/v1/nothing")
    err_of(status, json.loads(body), 404, None)
    status, r = srv.post(C, cpl)  # still serving, same answer
    check(status == 200 and r["choices"][0]["text"] == c0["text"], r)
    step("%d malformed requests answered 4xx with the field named" % (len(bad) + 5))

    # ---- 5. API key and a full queue (a second server) ---------------------------------------
    srv2.wait_ready()
    status, body = srv2.curl(C, raw='{"prompt": "x", "max_tokens": 1}')
    err_of(status, json.loads(body), 401, None)
    status, body = srv2.curl(C, raw='{"prompt": "x", "max_tokens": 1}',
                             headers=["Authorization: Bearer wrong"])
    err_of(status, json.loads(body), 401, None)
    status, body = srv2.curl("/health")
    check(status == 200, "health needs no key")
    auth = ["Authorization: Bearer sekret"]
    status, body = srv2.curl("/metrics", headers=auth)
    check(status == 200, status)
    slow = json.dumps({"prompt": "Once upon a time", "max_tokens": 300, "temperature": 0})
    hogs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              srv2.url + C, "-H", auth[0], "-d", slow], stdout=subprocess.PIPE)]
    t = time.time()
    while time.time() - t < 5:  # first one running
        st, m = srv2.curl("/metrics", headers=auth)
        if b"hyb_active_slots 1" in m:
            break
        time.sleep(0.05)
    hogs.append(subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                  srv2.url + C, "-H", auth[0], "-d", slow],
                                 stdout=subprocess.PIPE))
    t = time.time()
    while time.time() - t < 5:  # second one queued
        st, m = srv2.curl("/metrics", headers=auth)
        if b"hyb_queue_length 1" in m:
            break
        time.sleep(0.05)
    t = time.time()
    status, body = srv2.curl(C, raw=slow, headers=auth)
    err_of(status, json.loads(body), 429, None)
    check(time.time() - t < 2, "429 took %.1fs" % (time.time() - t))
    for h in hogs:
        h.kill()
        h.wait()
    check(srv2.stop(signal.SIGINT) == 0, "server 2: exit status on SIGINT")
    step("401 without/with a wrong key, 429 on a full queue, SIGINT exits 0")

    # ---- 6. SIGTERM finishes the running stream --------------------------------------------------
    p = subprocess.Popen(["curl", "-s", "-N", srv.url + C, "-H",
                          "Content-Type: application/json", "-d",
                          json.dumps(dict(long_req, max_tokens=40))], stdout=subprocess.PIPE)
    p.stdout.readline()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = subprocess.run(["curl", "-s", "-m", "2", srv.url + "/health"],
                             capture_output=True).returncode != 0
    rest = p.stdout.read().decode()
    p.wait()
    rc = srv.proc.wait(60)
    check(rest.rstrip().endswith("data: [DONE]"), "stream cut by SIGTERM: %r" % rest[-200:])
    check('"finish_reason":"length"' in rest, "the stream did not run to max_tokens")
    check(refused, "new connections still accepted after SIGTERM")
    check(rc == 0, "exit status %d after SIGTERM" % rc)
    step("SIGTERM: running stream finished, new connections refused, exit 0")
    print("OK serve_curl (%.1fs)" % (time.time() - T0))


if __name__ == "__main__":
    main()
