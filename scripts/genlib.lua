-- scripts/genlib.lua: shared pieces of generate.lua and chat.lua (argument parsing, the ChatML
-- template, generation through llm:generate, the statistics line).
local hyb = require("hyb")
local M = {}

-- usage(cmd, text) -> the usage(msg) that parse_args wants for `hyb <cmd>`: with a message,
-- "hyb <cmd>: <msg>" and the usage text on stderr, status 2; without (--help), the usage on
-- stdout, status 0.
function M.usage(cmd, text)
  return function(msg)
    local out = msg and io.stderr or io.stdout
    if msg then io.stderr:write("hyb ", cmd, ": ", msg, "\n") end
    out:write(text)
    os.exit(msg and 2 or 0)
  end
end

-- parse_args(arg, spec, usage): spec maps option names (without "--") to "string", "int",
-- "number", "flag" or "list" (repeatable string), or for a number with a stated range to
-- {"int"|"number", lo, hi[, lo_open]} (lo_open: lo itself is not allowed), or for a string out of
-- a fixed set to {"choice", {values...}}. Positional arguments
-- land in result._. Mistakes call usage(message) (which must exit with status 2); --help / -h
-- calls usage() (which prints the usage on stdout and exits 0).
function M.parse_args(argv, spec, usage)
  local r, i = {_ = {}}, 1
  while argv[i] do
    local a = argv[i]
    local name, inline = a:match("^%-%-([%w%-]+)=(.*)$")
    name = name or a:match("^%-%-([%w%-]+)$")
    if a == "--help" or a == "-h" then usage() end
    if name then
      local kind = spec[name]
      if not kind then usage("unknown option --" .. name .. require("recipelib").option_hint(name, spec)) end
      local lo, hi, lo_open
      if type(kind) == "table" then kind, lo, hi, lo_open = kind[1], kind[2], kind[3], kind[4] end
      local choices = kind == "choice" and lo or nil
      if kind == "flag" then
        r[name] = true
      else
        local v = inline
        if v == nil then
          i = i + 1
          v = argv[i]
          if v == nil then usage("--" .. name .. " needs a value") end
        end
        if kind == "int" or kind == "number" then
          local n = tonumber(v)
          if kind == "int" then n = math.tointeger(n) end
          if not n or n ~= n then
            usage("--" .. name .. " must be " .. (kind == "int" and "an integer" or "a number") ..
                  ", got '" .. v .. "'")
          end
          if lo and (n < lo or (lo_open and n == lo) or n > hi) then
            usage(("--%s must be in %s%s, %s], got %s"):format(name, lo_open and "(" or "[",
                  tostring(lo), tostring(hi), v))
          end
          r[name] = n
        elseif choices then
          local okv = false
          for _, c in ipairs(choices) do okv = okv or c == v end
          if not okv then
            usage(("--%s must be one of %s, got '%s'"):format(name, table.concat(choices, ", "), v))
          end
          r[name] = v
        elseif kind == "list" then
          r[name] = r[name] or {}
          table.insert(r[name], v)
        else
          r[name] = v
        end
      end
    else
      table.insert(r._, a)
    end
    i = i + 1
  end
  return r
end

-- --kv-cache: the attention KV cache's storage type (hyb.llm's kv_cache; f16 by default).
M.KV_CACHE = {"choice", {"f16", "q8_0", "f32"}}

-- The sampling and generation options of generate, chat and teacher_data, with their ranges.
M.sampling_spec = {
  temperature = {"number", 0, 100}, ["top-k"] = {"int", 0, 1 << 24}, ["top-p"] = {"number", 0, 1, true},
  ["repetition-penalty"] = {"number", 0, 100, true}, seed = {"int", 0, 1 << 53},
  ["max-tokens"] = {"int", 1, 1 << 24}, ["max-ctx"] = {"int", 1, 1 << 24},
  threads = {"int", 1, 1024},
  quant = "string",
  ["kv-cache"] = M.KV_CACHE,
}

-- --quant off|precise|fast: how a quantized GGUF's weights compute (docs/DESIGN.md, "Quantized
-- weights"). Returns the value for hyb.llm / hyb.train.load / hyb.serve's `quant` option (nil
-- when not given: then HYB_QUANT, else the default, precise); a bad value is a usage error.
M.quant_usage = "[--quant off|precise|fast]"
function M.quant(opts, usage)
  local q = opts.quant
  if q == nil or q == "off" or q == "precise" or q == "fast" then return q end
  usage("--quant must be off, precise or fast, got '" .. tostring(q) .. "'")
end

-- The usage text of the options generate and chat share.
M.common_usage = "[--model PATH] [--tokenizer PATH] [--temperature T] [--top-k K] [--top-p P]\n" ..
  "         [--repetition-penalty R] [--seed S] [--max-tokens N] [--max-ctx N]\n" ..
  "         [--device cpu|cuda[:N]] [--threads N] [--quant off|precise|fast] [--system TEXT]\n" ..
  "         [--kv-cache f16|q8_0|f32] [--stop STR]... [--verbose]"

-- spec plus M.sampling_spec (a new table)
function M.with_sampling(spec)
  local r = {}
  for k, v in pairs(M.sampling_spec) do r[k] = v end
  for k, v in pairs(spec) do r[k] = v end
  return r
end

-- open_device(name, prog): nil/"cpu" is the CPU; any other device ("cuda", "cuda:1") is opened
-- now, before a model loads, and a device that cannot be used ends the program with one line
-- naming it and the reason (exit status 1), no traceback.
function M.open_device(name, prog)
  if name == nil then return nil end
  local ok, err = pcall(hyb.device, name)
  if not ok then
    io.stderr:write(prog, ": ", tostring(err):gsub("^hyb%.device: ", ""), "\n")
    os.exit(1)
  end
  return name
end

-- The sampler for the command-line options; with usage, a bad value is a usage error naming
-- the option (--top-k ...), without a traceback.
function M.sampler(opts, usage)
  -- --threads N: the CPU compute threads (hyb.threads), set before the model loads
  if opts.threads then hyb.threads(opts.threads) end
  local ok, s = pcall(hyb.sampler, {
    temperature = opts.temperature or 0, top_k = opts["top-k"] or 0, top_p = opts["top-p"] or 1,
    repetition_penalty = opts["repetition-penalty"] or 1, seed = opts.seed or 0,
  })
  if ok then return s end
  if not usage then error(s, 2) end
  local msg = tostring(s):gsub("^.-hyb%.sampler: ", ""):gsub("^sampler: ", "")
  for _, o in ipairs({"temperature", "top_k", "top_p", "repetition_penalty", "seed"}) do
    msg = msg:gsub("'?" .. o .. "'?", "--" .. o:gsub("_", "-"))
  end
  usage(msg)
end

-- Usage errors for what the model decides: --max-tokens against the context (--max-ctx) and,
-- unless ids is nil, the prompt's tokens against the room left in it.
function M.check_request(llm, ids, max_tokens, usage)
  if max_tokens < 1 or max_tokens >= llm:max_ctx() then
    usage(("--max-tokens must be in [1, %d] for a context of %d (--max-ctx), got %d"):format(
      llm:max_ctx() - 1, llm:max_ctx(), max_tokens))
  end
  if ids == nil then return end
  if #ids == 0 then usage("the prompt is empty") end
  if llm:max_ctx() - llm:pos() - #ids < 1 then
    usage(("the prompt has %d tokens: no room left in the context of %d (--max-ctx)"):format(
      #ids, llm:max_ctx()))
  end
end

-- A conversation as the model reads it: its own chat template (llm:apply_chat_template, the Jinja
-- template that came with the model, rendered as HF does; hyb's ChatML when it has none), with
-- a system turn first when `system` is given. Ends with the generation prompt.
function M.chat_prompt(llm, messages, system)
  local msgs = {}
  if system then msgs[1] = {role = "system", content = system} end
  for _, m in ipairs(messages) do msgs[#msgs + 1] = m end
  return llm:apply_chat_template(msgs, {add_generation_prompt = true})
end

-- SmolLM2's chat template (ChatML): a default system turn when the first message is not one.
-- For the data scripts that write the default teacher's prompts (teacher_data, samples).
M.default_system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

function M.chatml_turn(role, content)
  return "<|im_start|>" .. role .. "\n" .. content .. "<|im_end|>\n"
end

-- messages: {{role=, content=}, ...}; ends with the assistant header (generation prompt).
function M.chatml(messages, system)
  local parts = {}
  if messages[1] == nil or messages[1].role ~= "system" then
    parts[1] = M.chatml_turn("system", system or M.default_system)
  end
  for _, m in ipairs(messages) do parts[#parts + 1] = M.chatml_turn(m.role, m.content) end
  parts[#parts + 1] = "<|im_start|>assistant\n"
  return table.concat(parts)
end

-- generate(llm, ids, {sampler, max_tokens, stop = {...}, on_text = fn}): llm:generate, the
-- generation API in C (core/engine.c through runtime/lua_generate.c): continue the context with
-- ids, then sample until EOS, a stop string, max_tokens or a full context. The last sampled token
-- (EOS, or the one completing a stop string) is not in the context afterwards. Text is streamed
-- through on_text as it becomes final (never a piece of a stop string). Returns {text, ids,
-- reason, prefill_tokens, prefill_s, decode_tokens, decode_s} for this call.
function M.generate(llm, ids, o)
  return llm:generate(ids, {sampler = o.sampler, max_tokens = o.max_tokens or 128, stop = o.stop,
                            on_text = o.on_text})
end

function M.report(llm, r)
  local function rate(n, s) return s > 0 and n / s or 0 end
  io.stderr:write(string.format(
    "[%d prompt tokens, prefill %.1f tok/s | %d generated (%s), decode %.1f tok/s]\n",
    r.prefill_tokens, rate(r.prefill_tokens, r.prefill_s), #r.ids, r.reason,
    rate(r.decode_tokens, r.decode_s)))
end

return M
