-- scripts/serve.lua: an OpenAI-compatible HTTP server on the continuous-batching engine
-- (runtime/serve.c; docs/SERVE.md).
--
--   hyb serve [options] MODEL
--   hyb serve ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8080 --slots 16
--
-- MODEL: a .gguf file or an HF checkpoint directory, as `hyb generate --model` takes it (default
-- $HYB_MODEL or the default teacher). Options:
--   --host ADDR        address to bind (default 127.0.0.1: this machine only)
--   --port N           TCP port (default 8080; 0: any free port, printed on startup)
--   --slots N          requests decoded together (default 16)
--   --max-ctx N        tokens per request, prompt + completion (default: the model's, at most 2048)
--   --max-queue N      requests waiting for a slot before new ones get 429 (default 256)
--   --max-body BYTES   largest request body (default 1048576; larger: 413)
--   --api-key KEY      require 'Authorization: Bearer KEY' (also $HYB_API_KEY); /health is open
--   --threads N        compute threads (default: OMP_NUM_THREADS or all cores)
--   --device DEV       cpu (default) or cuda[:N]
--   --quant MODE       a quantized GGUF's weights: precise (default), fast or off (f32), as
--                      hyb generate --quant; default $HYB_QUANT, else precise
--   --name ID          the model id clients send (default: the file name without .gguf)
--   --tokenizer PATH   a tokenizer.json to use instead of the model's
--   --prefill-chunk N  prompt tokens prefilled per engine step over all requests (default 0: all)
--   --prefix-block N   automatic prefix caching in blocks of N tokens (default 0: off)
--   --kv-cache T       KV cache storage: f16 (default), q8_0 or f32
--   --quiet            no startup and shutdown lines
-- SIGTERM or SIGINT: stop accepting, finish the requests accepted, exit 0 (a second one cancels
-- them).
local hyb = require("hyb")
local gen = require("genlib")

local usage = gen.usage("serve",
  "usage: hyb serve [--host ADDR] [--port N] [--slots N] [--max-ctx N] [--max-queue N]\n" ..
  "         [--max-body BYTES] [--api-key KEY] [--threads N] [--device cpu|cuda[:N]]\n" ..
  "         [--quant off|precise|fast] [--kv-cache f16|q8_0|f32]\n" ..
  "         [--name ID] [--tokenizer PATH] [--prefill-chunk N] [--prefix-block N] [--quiet]\n" ..
  "         MODEL\n" ..
  "Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,\n" ..
  "GET /metrics (docs/SERVE.md).\n")

local opts = gen.parse_args(arg, {
  model = "string", host = "string", port = {"int", 0, 65535}, slots = {"int", 1, 4096},
  ["max-ctx"] = {"int", 2, 1 << 24}, ["max-queue"] = {"int", 0, 1 << 20},
  ["max-body"] = {"int", 1, 1 << 40}, ["api-key"] = "string", threads = {"int", 1, 1024},
  device = "string", name = "string", tokenizer = "string",
  ["prefill-chunk"] = {"int", 0, 1 << 24}, ["prefix-block"] = {"int", 0, 1 << 24},
  quiet = "flag", verbose = "flag", quant = "string", ["kv-cache"] = gen.KV_CACHE,
}, usage)
if #opts._ > 1 then usage("give one MODEL") end
local model = opts._[1] or opts.model or os.getenv("HYB_MODEL")
if not model or model == "" then
  model = (os.getenv("HOME") or ".") .. "/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf"
end
local api_key = opts["api-key"] or os.getenv("HYB_API_KEY")
if api_key == "" then api_key = nil end
if not opts.verbose then hyb.log_level("warn") end
gen.open_device(opts.device, "serve")

local ok, err = pcall(hyb.serve, {
  model = model, host = opts.host, port = opts.port, slots = opts.slots,
  max_ctx = opts["max-ctx"], max_queue = opts["max-queue"], max_body = opts["max-body"],
  api_key = api_key, threads = opts.threads, device = opts.device, name = opts.name,
  tokenizer = opts.tokenizer, prefill_chunk = opts["prefill-chunk"],
  prefix_block = opts["prefix-block"], quiet = opts.quiet, quant = gen.quant(opts, usage),
  kv_cache = opts["kv-cache"],
})
if not ok then
  io.stderr:write("hyb serve: ", (tostring(err):gsub("^hyb%.serve: ", "")), "\n")
  os.exit(1)
end
