"""tests/serve/serve_lib.py: start `hyb serve` on a free port for the serve tests and talk to it
with curl.

    srv = Server(hyb, model, "--slots", "4")   # waits for the "listening on" line
    status, body = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 4})
    srv.stop()                                 # SIGTERM, returns the exit status
"""
import atexit
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77
_servers = []


@atexit.register
def _kill_leftovers():
    """A failed test leaves no server behind (and no log file)."""
    for srv in _servers:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
        try:
            os.unlink(srv.log.name)
        except OSError:
            pass


def _excepthook(kind, value, tb):
    """On a failure, show what each server printed."""
    sys.__excepthook__(kind, value, tb)
    for srv in _servers:
        print("---- server log (port %s) ----\n%s" % (srv.port, srv.output()[-3000:]),
              file=sys.stderr)


sys.excepthook = _excepthook


def skip(msg):
    print("SKIP: " + msg, flush=True)
    sys.exit(SKIP)


def model_path():
    m = os.environ.get("HYB_MODEL") or os.path.expanduser(
        "~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(m):
        skip("no model at %s (set HYB_MODEL or run scripts/fetch_model.sh)" % m)
    return m


class Server:
    def __init__(self, hyb, model, *args, env=None, wait=True):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="hyb-serve-", suffix=".log",
                                               delete=False)
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen([hyb, "serve", model, "--port", "0", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=e)
        _servers.append(self)
        self.port = None
        if wait:
            self.wait_ready()

    def wait_ready(self):
        """Wait for the "listening on" line (the model is loaded)."""
        t0 = time.time()
        while time.time() - t0 < 60:
            with open(self.log.name) as f:
                m = re.search(r"listening on http://[^ ]*:(\d+)/v1", f.read())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if self.port is None:
            self.proc.kill()
            raise SystemExit("server did not start:\n" + self.output())
        self.url = "http://127.0.0.1:%d" % self.port

    def output(self):
        with open(self.log.name) as f:
            return f.read()

    def curl(self, path, data=None, method=None, headers=(), timeout=60, raw=None):
        """(status, body bytes) of one request through curl."""
        cmd = ["curl", "-s", "-S", "-N", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}"]
        if method:
            cmd += ["-X", method]
        for h in headers:
            cmd += ["-H", h]
        if data is not None or raw is not None:
            body = raw if raw is not None else json.dumps(data)
            cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        else:
            body = None
        cmd.append(self.url + path)
        r = subprocess.run(cmd, input=body.encode() if isinstance(body, str) else body,
                           capture_output=True)
        out = r.stdout
        i = out.rfind(b"\n")
        return int(out[i + 1:] or 0), out[:i]

    def post(self, path, data, **kw):
        status, body = self.curl(path, data=data, **kw)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def stream(self, path, data, **kw):
        """(status, [chunk objects], saw [DONE]) of a streaming request."""
        status, body = self.curl(path, data=dict(data, stream=True), **kw)
        chunks, done = [], False
        for block in body.decode().split("\n\n"):
            if not block.strip():
                continue
            assert block.startswith("data: "), block
            payload = block[6:]
            if payload == "[DONE]":
                done = True
            else:
                chunks.append(json.loads(payload))
        return status, chunks, done

    def metrics(self):
        status, body = self.curl("/metrics")
        assert status == 200, status
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def wait_metric(self, key, pred, timeout=5.0):
        t0 = time.time()
        while time.time() - t0 < timeout:
            v = self.metrics().get(key)
            if v is not None and pred(v):
                return v
            time.sleep(0.05)
        raise AssertionError("%s did not reach the expected value (now %s)" %
                             (key, self.metrics().get(key)))

    def stop(self, sig=signal.SIGTERM, timeout=60):
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("server did not exit %ds after the signal" % timeout)


def stream_text(chunks, chat):
    """Per choice index: the concatenated text, the finish reason."""
    texts, finish = {}, {}
    for c in chunks:
        for ch in c.get("choices", []):
            i = ch["index"]
            t = ch["delta"].get("content") if chat else ch.get("text")
            texts[i] = texts.get(i, "") + (t or "")
            if ch.get("finish_reason"):
                finish[i] = ch["finish_reason"]
    return texts, finish
