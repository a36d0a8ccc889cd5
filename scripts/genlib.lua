-- scripts/genlib.lua: shared pieces of generate.lua and chat.lua (argument parsing, the ChatML
-- template, the streaming generation loop with stop strings, the statistics line).
local hyb = require("hyb")
local M = {}

-- parse_args(arg, spec, usage): spec maps option names (without "--") to "string", "int",
-- "number", "flag" or "list" (repeatable string), or for a number with a stated range to
-- {"int"|"number", lo, hi[, lo_open]} (lo_open: lo itself is not allowed). Positional arguments
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
      if not kind then usage("unknown option --" .. name) end
      local lo, hi, lo_open
      if type(kind) == "table" then kind, lo, hi, lo_open = kind[1], kind[2], kind[3], kind[4] end
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

-- The sampling and generation options of generate, chat and teacher_data, with their ranges.
M.sampling_spec = {
  temperature = {"number", 0, 100}, ["top-k"] = {"int", 0, 1 << 24}, ["top-p"] = {"number", 0, 1, true},
  ["repetition-penalty"] = {"number", 0, 100, true}, seed = {"int", 0, 1 << 53},
  ["max-tokens"] = {"int", 1, 1 << 24}, ["max-ctx"] = {"int", 1, 1 << 24},
}

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

function M.sampler(opts)
  return hyb.sampler{
    temperature = opts.temperature or 0, top_k = opts["top-k"] or 0, top_p = opts["top-p"] or 1,
    repetition_penalty = opts["repetition-penalty"] or 1, seed = opts.seed or 0,
  }
end

-- SmolLM2's chat template (ChatML): a default system turn when the first message is not one.
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

-- Longest suffix of s that is a proper prefix of some stop string: text that must be held back
-- because a stop string may be starting.
local function held_back(s, stops)
  local keep = 0
  for _, st in ipairs(stops) do
    for k = math.min(#st - 1, #s), 1, -1 do
      if k > keep and s:sub(-k) == st:sub(1, k) then keep = k; break end
    end
  end
  return keep
end

-- generate(llm, ids, {sampler, max_tokens, stop = {...}, on_text = fn}):
-- prefill ids (after whatever the context holds), then sample/feed until EOS, a stop string,
-- max_tokens or a full context. The last sampled token (EOS, or the one completing a stop
-- string) is not fed: the context ends just before it. Text is streamed through on_text as it becomes final (never a
-- piece of a stop string). Returns {text, ids, reason, prefill_tokens, prefill_s, decode_tokens,
-- decode_s} for this call.
function M.generate(llm, ids, o)
  local stops, emit = o.stop or {}, o.on_text or function() end
  local eos = llm:eos()
  local before = llm:stats()
  if #ids > 0 then llm:prefill(ids) end
  local gen_ids, text, shown, reason = {}, "", 0, "max_tokens"
  for _ = 1, o.max_tokens or 128 do
    local tok = llm:sample(o.sampler)
    if tok == eos then reason = "eos"; break end
    gen_ids[#gen_ids + 1] = tok
    text = text .. llm:piece(tok)
    local hit
    for _, st in ipairs(stops) do
      local at = text:find(st, shown + 1 - #st > 0 and shown + 1 - #st or 1, true)
      if at and (not hit or at < hit) then hit = at end
    end
    if hit then
      text = text:sub(1, hit - 1)
      if #text > shown then emit(text:sub(shown + 1)) end
      shown = #text
      reason = "stop"
      break
    end
    local final = #text - held_back(text, stops)
    if final > shown then emit(text:sub(shown + 1, final)); shown = final end
    if llm:pos() >= llm:max_ctx() then reason = "context"; break end
    llm:feed(tok)
  end
  if reason ~= "stop" and #text > shown then emit(text:sub(shown + 1)) end
  local after = llm:stats()
  return {
    text = text, ids = gen_ids, reason = reason,
    prefill_tokens = after.prefill_tokens - before.prefill_tokens,
    prefill_s = after.prefill_s - before.prefill_s,
    decode_tokens = after.decode_tokens - before.decode_tokens,
    decode_s = after.decode_s - before.decode_s,
  }
end

function M.report(llm, r)
  local function rate(n, s) return s > 0 and n / s or 0 end
  io.stderr:write(string.format(
    "[%d prompt tokens, prefill %.1f tok/s | %d generated (%s), decode %.1f tok/s]\n",
    r.prefill_tokens, rate(r.prefill_tokens, r.prefill_s), #r.ids, r.reason,
    rate(r.decode_tokens, r.decode_s)))
end

return M
