"""tests/serve/serve_openai.py HYB: `hyb serve` driven by the official `openai` Python client
(run by serve_openai.sh with the venv's python): completions and chat, streaming and not, usage,
logprobs, n, stop, a wrong model (NotFoundError), a bad parameter (BadRequestError), a wrong API
key (AuthenticationError), models.list()."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_lib import Server, model_path, skip  # noqa: E402

try:
    import openai
except ImportError:
    skip("the openai package is not installed in this python (%s)" % sys.executable)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def main():
    t0 = time.time()
    srv = Server(sys.argv[1], model_path(), "--slots", "4", "--max-ctx", "512",
                 "--api-key", "test-key", "--name", "smol")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="test-key", max_retries=0)
        ids = [m.id for m in client.models.list()]
        check(ids == ["smol"], ids)

        r = client.completions.create(model="smol", prompt="The sky is", max_tokens=8,
                                      temperature=0, logprobs=2)
        text = r.choices[0].text
        check(text and r.choices[0].finish_reason == "length", r)
        check(r.usage.completion_tokens == 8 and
              r.usage.total_tokens == r.usage.prompt_tokens + 8, r.usage)
        check(len(r.choices[0].logprobs.tokens) == 8, r.choices[0].logprobs)
        parts = [c.choices[0].text for c in client.completions.create(
            model="smol", prompt="The sky is", max_tokens=8, temperature=0, stream=True)]
        check("".join(parts) == text, (parts, text))

        msgs = [{"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "What color is grass?"}]
        r = client.chat.completions.create(model="smol", messages=msgs, max_tokens=20,
                                           temperature=0, logprobs=True, top_logprobs=2)
        answer = r.choices[0].message.content
        check(r.choices[0].message.role == "assistant" and answer, r)
        check(len(r.choices[0].logprobs.content) >= 1, r.choices[0].logprobs)
        check(r.usage.prompt_tokens > 0, r.usage)
        stream = client.chat.completions.create(model="smol", messages=msgs, max_tokens=20,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True})
        parts, usage, finish = [], None, None
        for c in stream:
            if c.usage:
                usage = c.usage
            for ch in c.choices:
                parts.append(ch.delta.content or "")
                finish = ch.finish_reason or finish
        check("".join(parts) == answer, (parts, answer))
        check(usage and usage.completion_tokens == r.usage.completion_tokens, usage)
        check(finish == r.choices[0].finish_reason, finish)

        r = client.chat.completions.create(model="smol", messages=msgs, max_tokens=6, n=2,
                                           temperature=1.0, seed=3)
        check(len(r.choices) == 2, r)
        r = client.completions.create(model="smol", prompt="1, 2, 3,", max_tokens=30,
                                      temperature=0, stop=[" 6"])
        check(r.choices[0].finish_reason == "stop" and " 6" not in r.choices[0].text, r)

        try:
            client.completions.create(model="nope", prompt="x", max_tokens=2)
            raise AssertionError("unknown model accepted")
        except openai.NotFoundError as e:
            check(e.status_code == 404 and e.body["param"] == "model", e.body)
        try:
            client.chat.completions.create(model="smol", messages=[], max_tokens=2)
            raise AssertionError("empty messages accepted")
        except openai.BadRequestError as e:
            check(e.body["param"] == "messages", e.body)
        try:
            client.completions.create(model="smol", prompt="x", max_tokens=100000)
            raise AssertionError("max_tokens past the context accepted")
        except openai.BadRequestError as e:
            check(e.body["param"] == "max_tokens" and e.body["code"] ==
                  "context_length_exceeded", e.body)
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        try:
            bad.models.list()
            raise AssertionError("wrong key accepted")
        except openai.AuthenticationError as e:
            check(e.status_code == 401, e)
    finally:
        rc = srv.stop()
    check(rc == 0, "exit status %d" % rc)
    print("OK serve_openai with openai %s (%.1fs)" % (openai.__version__, time.time() - t0))


if __name__ == "__main__":
    main()
