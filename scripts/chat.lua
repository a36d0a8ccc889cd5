-- scripts/chat.lua: chat with a model in the terminal (ChatML, as SmolLM2-Instruct expects).
--
--   hyb chat [--model PATH] [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R]
--            [--seed S] [--max-tokens N] [--system TEXT] [--stop STR]... [--max-ctx N] [--verbose]
--
-- Each line you type is one user turn; the reply streams as it is generated. The KV cache keeps
-- the whole conversation, so only the new turn is prefilled. Commands: /reset (forget the
-- conversation), /quit (or end of input). Prefill and decode tokens/s are printed after each
-- reply (stderr) and for the whole session at the end.
local hyb = require("hyb")
local gen = require("genlib")

local usage = gen.usage("chat", "usage: hyb chat " .. gen.common_usage .. "\n")

local opts = gen.parse_args(arg, gen.with_sampling{
  model = "string", tokenizer = "string", stop = "list", system = "string", device = "string", verbose = "flag",
}, usage)
if #opts._ > 0 then usage("unexpected argument '" .. opts._[1] .. "'") end

local sampler = gen.sampler(opts, usage) -- bad sampling options fail before the model loads
if not opts.verbose then hyb.log_level("warn") end
local device = gen.open_device(opts.device, "chat")
local llm = hyb.llm(opts.model, {max_ctx = opts["max-ctx"], device = device, tokenizer = opts.tokenizer,
                                 kv_cache = opts["kv-cache"]})
local max_tokens = opts["max-tokens"] or 512
gen.check_request(llm, nil, max_tokens, usage)
local stops = {"<|im_end|>"}
for _, s in ipairs(opts.stop or {}) do stops[#stops + 1] = s end
local system = opts.system or gen.default_system
local total = {prefill_tokens = 0, prefill_s = 0, decode_tokens = 0, decode_s = 0, ids = {}}
local started = false -- has the conversation a turn in the context?

local tty = io.stderr
tty:write(string.format("%s\n/reset forgets the conversation, /quit ends.\n", tostring(llm)))
while true do
  tty:write("\n> ")
  local line = io.read("l")
  if line == nil or line == "/quit" then break end
  if line == "/reset" then
    llm:reset()
    started = false
    tty:write("(conversation forgotten)\n")
  elseif line:match("%S") then
    local text
    if not started then
      text = gen.chatml({{role = "user", content = line}}, system)
    else
      -- the previous reply's <|im_end|> was sampled but not fed: close that turn first
      text = "<|im_end|>\n" .. gen.chatml_turn("user", line) .. "<|im_start|>assistant\n"
    end
    local ids = llm:encode(text)
    if llm:pos() + #ids + 8 > llm:max_ctx() then
      tty:write("(context full: conversation reset)\n")
      llm:reset()
      ids = llm:encode(gen.chatml({{role = "user", content = line}}, system))
    end
    local r = gen.generate(llm, ids, {
      sampler = sampler, max_tokens = max_tokens, stop = stops,
      on_text = function(s) io.write(s); io.flush() end,
    })
    started = true
    io.write("\n")
    io.stdout:flush()
    gen.report(llm, r)
    for _, k in ipairs({"prefill_tokens", "prefill_s", "decode_tokens", "decode_s"}) do
      total[k] = total[k] + r[k]
    end
    for _, t in ipairs(r.ids) do total.ids[#total.ids + 1] = t end
  end
end
total.reason = "session"
gen.report(llm, total)
