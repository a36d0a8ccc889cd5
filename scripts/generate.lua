-- scripts/generate.lua: generate text from a prompt, streaming token by token.
--
--   hyb generate [options] "prompt text"
--   hyb run scripts/generate.lua --temperature 0.7 --top-p 0.9 --seed 1 "Once upon a time"
--
-- Options:
--   --model PATH            .gguf file or HF checkpoint directory (default $HYB_MODEL or the
--                           default teacher in ~/.cache/hyb/models)
--   --max-tokens N          new tokens at most (default 128)
--   --temperature T         0 = greedy (default 0); in [0, 100]
--   --top-k K               0 = off (default 0)
--   --top-p P               1 = off (default 1); in (0, 1]
--   --repetition-penalty R  1 = off (default 1); in (0, 100]
--   --seed S                sampler seed (default 0)
--   --stop STRING           stop when the output contains STRING (repeatable)
--   --chat                  wrap the prompt in the model's chat template (one user turn; the
--                           template that came with the model, else ChatML)
--   --system TEXT           system message for --chat
--   --max-ctx N             context capacity in tokens (default: the model's, at most 4096)
--   --threads N             CPU compute threads, this one included (default: OMP_NUM_THREADS,
--                           else all the cores this process may use)
--   --quant MODE            a quantized GGUF's weights: precise (default: kept in their blocks,
--                           f32 activations), fast (activations rounded to int8 per 4 values),
--                           off (dequantised to f32 at load); default $HYB_QUANT, else precise
--   --kv-cache T            KV cache storage: f16 (default), q8_0 or f32 (docs/BENCHMARKS.md)
--   --quiet                 no statistics line at the end
--   --verbose               log the model layout while loading
-- EOS always stops. Statistics (prefill and decode tokens/s) go to stderr.
local hyb = require("hyb")
local gen = require("genlib")

local usage = gen.usage("generate",
  "usage: hyb generate " .. gen.common_usage .. "\n         [--chat] [--quiet] PROMPT\n")

local opts = gen.parse_args(arg, gen.with_sampling{
  model = "string", tokenizer = "string", stop = "list", chat = "flag", system = "string", device = "string",
  quiet = "flag", verbose = "flag",
}, usage)
if #opts._ ~= 1 then usage(#opts._ == 0 and "no prompt given" or "give the prompt as one argument") end

local sampler = gen.sampler(opts, usage) -- bad sampling options fail before the model loads
if not opts.verbose then hyb.log_level("warn") end
local device = gen.open_device(opts.device, "generate")
local llm = hyb.llm(opts.model, {max_ctx = opts["max-ctx"], device = device, tokenizer = opts.tokenizer,
                                 quant = gen.quant(opts, usage), kv_cache = opts["kv-cache"]})
local prompt = opts._[1]
local stops = opts.stop or {}
if opts.chat then
  prompt = gen.chat_prompt(llm, {{role = "user", content = prompt}}, opts.system)
  if llm:chat_template():find("<|im_end|>", 1, true) then stops[#stops + 1] = "<|im_end|>" end
end

local ids = llm:encode(prompt)
local max_tokens = opts["max-tokens"] or 128
gen.check_request(llm, ids, max_tokens, usage)
local out = gen.generate(llm, ids, {
  sampler = sampler, max_tokens = max_tokens, stop = stops,
  on_text = function(s) io.write(s); io.flush() end,
})
io.write("\n")
io.stdout:flush()
if not opts.quiet then gen.report(llm, out) end
