-- scripts/chat.lua: chat with a model in the terminal, in the model's own chat template (the Jinja
-- template that came with it, rendered as HF's apply_chat_template does; ChatML when it has none).
--
--   hyb chat [--model PATH] [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R]
--            [--seed S] [--max-tokens N] [--system TEXT] [--stop STR]... [--max-ctx N] [--verbose]
--
-- Each line you type is one user turn; the reply streams as it is generated. The KV cache keeps
-- the whole conversation: each turn renders the whole conversation with the template and
-- prefills only the text after what the context already holds (the whole of it again, after a
-- reset, when the template rewrites earlier turns). Commands: /reset (forget the
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
                                 quant = gen.quant(opts, usage), kv_cache = opts["kv-cache"]})
local max_tokens = opts["max-tokens"] or 512
gen.check_request(llm, nil, max_tokens, usage)
local stops = {}
if llm:chat_template():find("<|im_end|>", 1, true) then stops[1] = "<|im_end|>" end
for _, s in ipairs(opts.stop or {}) do stops[#stops + 1] = s end
local total = {prefill_tokens = 0, prefill_s = 0, decode_tokens = 0, decode_s = 0, ids = {}}
local messages = {} -- the conversation so far
local held = ""     -- the text the context holds: the rendered prompt and the reply so far

local tty = io.stderr
tty:write(string.format("%s\n/reset forgets the conversation, /quit ends.\n", tostring(llm)))
while true do
  tty:write("\n> ")
  local line = io.read("l")
  if line == nil or line == "/quit" then break end
  if line == "/reset" then
    llm:reset()
    messages, held = {}, ""
    tty:write("(conversation forgotten)\n")
  elseif line:match("%S") then
    messages[#messages + 1] = {role = "user", content = line}
    local text = gen.chat_prompt(llm, messages, opts.system)
    -- only what follows the context's text is new; a template that rewrote earlier turns (or
    -- a reply that ended mid-token) starts the context again
    local ids
    if held ~= "" and text:sub(1, #held) == held then
      ids = llm:encode(text:sub(#held + 1))
    else
      llm:reset()
      ids = llm:encode(text)
    end
    if llm:pos() + #ids + 8 > llm:max_ctx() then
      tty:write("(context full: conversation reset)\n")
      llm:reset()
      messages = {{role = "user", content = line}}
      text = gen.chat_prompt(llm, messages, opts.system)
      ids = llm:encode(text)
    end
    local r = gen.generate(llm, ids, {
      sampler = sampler, max_tokens = max_tokens, stop = stops,
      on_text = function(s) io.write(s); io.flush() end,
    })
    messages[#messages + 1] = {role = "assistant", content = r.text}
    held = text .. r.text
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
