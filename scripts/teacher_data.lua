-- scripts/teacher_data.lua: the teacher writes its own training text (the method's data are the
-- teacher's own traces). See scripts/teacherlib.lua for the prompts, the file format and resuming.
--
--   hyb teacher_data --out run/teacher.txt --prompts prompts.txt
--   hyb teacher_data --out run/teacher.txt --n 200 --corpus /usr/share/doc/python3.11/html/_sources \
--       --include '*.rst.txt' --max-tokens 256 --temperature 0.8 --top-p 0.95 --slots 8
--
-- The output is one text file of ChatML transcripts (system, user prompt, the teacher's reply)
-- separated by blank lines, for hyb.data.dataset (with special = true, so the chat markers are
-- the teacher's special tokens) or the [data] files of a distill recipe. Running the same command
-- again resumes: prompts already written are skipped. Prints generated tokens/s at the end.
local hyb = require("hyb")
local genlib = require("genlib")
local T = require("teacherlib")

local function usage(msg)
  local text = [[
usage: hyb teacher_data --out FILE [--prompts FILE] [--corpus PATH ...] [options]
  --out FILE            transcripts (appended; FILE.idx records progress and settings)
  --teacher PATH        .gguf, HF directory or model:save directory / checkpoint (a layer map
                        .toml: random weights, for tests)
                        (default: $HYB_MODEL, else the default teacher in ~/.cache/hyb/models)
  --quant MODE          a quantized .gguf teacher computes from its blocks: precise (default),
                        fast, or off (f32), as hyb generate --quant
  --tokenizer PATH      "bytes", a .gguf / tokenizer.json / directory (default: the teacher's
                        when it is a .gguf or has a tokenizer.json, else bytes)
  --prompts FILE        one prompt a line, or JSONL with a "prompt" (or "instruction", "text") field
  --corpus PATH         file or directory for prompts made from snippets (repeatable)
  --include GLOB        corpus files to take (repeatable; e.g. '*.rst.txt'); --exclude GLOB
  --snippet-chars N     characters of a paragraph in a made prompt (200)
  --n N                 number of prompts (default: all lines of --prompts; required with --corpus)
  --max-tokens N        reply length at most (256)
  --temperature X (0.8) --top-p X (0.95) --top-k N (0) --seed N (1)
  --slots N             requests decoding together in the engine (8)
  --system TEXT         the system turn (default: SmolLM2's)
  --device D            where the teacher runs: cpu (default), cuda, cuda:N]]
  if msg then
    io.stderr:write("hyb teacher_data: ", msg, "\n", text, "\n")
    os.exit(2)
  end
  print(text)
  os.exit(0)
end

local o = genlib.parse_args(arg, genlib.with_sampling{out = "string", teacher = "string",
  tokenizer = "string", prompts = "string", corpus = "list", include = "list", exclude = "list",
  ["snippet-chars"] = {"int", 1, 1 << 24}, n = {"int", 1, 1 << 31}, slots = {"int", 1, 65536},
  system = "string", device = "string"}, usage)
if #o._ > 0 then usage("unexpected argument '" .. o._[1] .. "'") end
if not o.out then usage("--out is required") end
local quant_opt = genlib.quant(o, usage) -- a bad --quant fails before any other check
if not o.prompts and not o.corpus then usage("give --prompts FILE and/or --corpus PATH") end
if o.corpus and not o.n then usage("--n is required with --corpus") end
if o.n and o.n < 1 then usage("--n must be at least 1") end
local function expand(p) return p and (p:gsub("^~", os.getenv("HOME") or "~")) end

local teacher = expand(o.teacher or os.getenv("HYB_MODEL") or
  ((os.getenv("HYB_CACHE") or (os.getenv("HOME") .. "/.cache/hyb")) .. "/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
local f = io.open(teacher, "rb")
if not f then
  io.stderr:write(("hyb teacher_data: teacher %s not found (give --teacher, or run scripts/fetch_model.sh)\n"):format(teacher))
  os.exit(2)
end
f:close()
local temperature, top_p = o.temperature or 0.8, o["top-p"] or 0.95
if temperature < 0 then usage("--temperature must be >= 0") end
if not (top_p > 0 and top_p <= 1) then usage("--top-p must be in (0, 1]") end
local max_tokens = o["max-tokens"] or 256
if max_tokens < 1 then usage("--max-tokens must be at least 1") end
if (o.slots or 8) < 1 then usage("--slots must be at least 1") end

local src = {prompts = expand(o.prompts), corpus = o.corpus, include = o.include, exclude = o.exclude,
  snippet_chars = o["snippet-chars"], n = o.n, seed = o.seed or 1}
if src.corpus then for i, p in ipairs(src.corpus) do src.corpus[i] = expand(p) end end
local settings = {out = expand(o.out), max_tokens = max_tokens, temperature = temperature, top_p = top_p,
  top_k = o["top-k"] or 0, seed = o.seed or 1, slots = o.slots or 8, system = o.system,
  kv_cache = o["kv-cache"],
  teacher = T.teacher_id(teacher), source = T.source(src)}

local prompts = T.prompts(src)
local done = T.status(settings, #prompts)
if done == #prompts then
  print(("teacher data: %s: all %d prompts done"):format(settings.out, #prompts))
  os.exit(0)
end

local tokspec = o.tokenizer
if not tokspec then
  local tj = io.open(teacher .. "/tokenizer.json", "r")
  if tj then tj:close() end
  tokspec = (teacher:match("%.gguf$") or tj) and teacher or "bytes"
end
local tok = tokspec ~= "bytes" and hyb.data.tokenizer(expand(tokspec)) or nil
-- a layer map (.toml) gives a randomly initialised model: for tests and dry runs only
local device = genlib.open_device(o.device, "teacher_data")
-- the teacher only generates: a quantized .gguf computes from its blocks on the CPU (--quant,
-- default $HYB_QUANT, else precise); moved to another device it loads f32
local quant = quant_opt or (device and device ~= "cpu" and "off" or "auto")
local model = teacher:match("%.toml$") and hyb.model(teacher, {seed = 1}) or
  hyb.train.load(teacher, {quant = quant})
if device then model:to(device) end
if tok and tok:vocab_size() > model:config().vocab_size then
  error(("the tokenizer has %d tokens but the teacher's vocabulary is %d"):format(tok:vocab_size(),
    model:config().vocab_size), 0)
end
T.generate(model, tok, prompts, settings)
