-- scripts/teacherlib.lua: the teacher writes its own training text (scripts/teacher_data.lua and
-- the [data] generate table of scripts/distill.lua).
--
--   local T = require("teacherlib")
--   local prompts = T.prompts{prompts = "prompts.txt", corpus = {"/usr/share/doc/python3.11/html/_sources"},
--                             include = {"*.rst.txt"}, n = 200, seed = 1}
--   local r = T.generate(model, tok, prompts, {out = "run/teacher.txt", max_tokens = 256,
--                        temperature = 0.8, top_p = 0.95, seed = 1, slots = 8, teacher = "id"})
--
-- Prompts: the lines of a prompts file (blank lines and lines starting with '#' skipped; a line
-- starting with '{' is a JSON object whose "prompt", "instruction" or "text" string is the
-- prompt), then prompts made from corpus snippets ("Explain the following: <the first ~200
-- characters of a paragraph>"), chosen by a seeded shuffle so that prompt i never depends on n.
-- Each prompt is put in the ChatML template (a system turn, the user turn, the assistant header),
-- sampled by the batched engine (hyb.engine, `slots` requests decode together; request i has
-- seed seed * 1000003 + i), and the whole transcript is appended to `out` followed by a blank
-- line: exactly the text the teacher saw and wrote, <|im_end|> included when it ended its reply.
--
-- Resuming: `out`.idx records the settings (first line) and, per finished prompt, its number and
-- the end offset of its transcript in `out`. A run skips the prompts already recorded, truncates
-- `out` after the last recorded transcript (a kill between the two writes leaves a partial one),
-- and refuses to mix settings. Asking for a larger n later adds prompts n_old+1 .. n.
local hyb = require("hyb")
local genlib = require("genlib")
local T = {}

local function readall(path, what)
  local f, err = io.open(path, "rb")
  if not f then error(("%s: cannot open %s (%s)"):format(what, path, err), 0) end
  local s = f:read("a")
  f:close()
  return s
end

-- ---- JSON string fields -----------------------------------------------------------------------
local function json_string_at(s, i)
  -- s:sub(i, i) == '"'; returns the decoded string and the index after the closing quote
  local out, j = {}, i + 1
  while j <= #s do
    local c = s:sub(j, j)
    if c == '"' then return table.concat(out), j + 1 end
    if c == "\\" then
      local e = s:sub(j + 1, j + 1)
      local simple = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"}
      if simple[e] then
        out[#out + 1] = simple[e]
        j = j + 2
      elseif e == "u" then
        local cp = tonumber(s:sub(j + 2, j + 5), 16)
        if not cp then return nil end
        j = j + 6
        if cp >= 0xD800 and cp <= 0xDBFF and s:sub(j, j + 1) == "\\u" then
          local lo = tonumber(s:sub(j + 2, j + 5), 16)
          if lo and lo >= 0xDC00 and lo <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            j = j + 6
          end
        end
        out[#out + 1] = utf8.char(cp)
      else
        return nil
      end
    else
      out[#out + 1] = c
      j = j + 1
    end
  end
  return nil
end

-- The value of the first of `keys` that is a string field of the JSON object text `line`.
local function json_field(line, keys)
  for _, k in ipairs(keys) do
    local at = line:find('"' .. k .. '"%s*:%s*"')
    if at then
      local q = line:find('"', line:find(":", at + #k + 2, true) + 1, true)
      local v = json_string_at(line, q)
      if v then return v end
    end
  end
  return nil
end

-- ---- prompts ---------------------------------------------------------------------------------
function T.read_prompts(path)
  local list = {}
  local text = readall(path, "prompts file")
  local ln = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    ln = ln + 1
    line = line:gsub("\r$", "")
    if line:match("^%s*{") then
      local p = json_field(line, {"prompt", "instruction", "text"})
      if not p then
        error(("%s:%d: a JSON line needs a string field \"prompt\", \"instruction\" or \"text\""):format(path, ln), 0)
      end
      if p:match("%S") then list[#list + 1] = p end
    elseif line:match("%S") and not line:match("^%s*#") then
      list[#list + 1] = line
    end
  end
  return list
end

T.templates = {
  "Explain the following:\n\n%s",
  "Summarize this text in two or three sentences:\n\n%s",
  "What is this passage about? Answer briefly.\n\n%s",
  "Continue this text:\n\n%s",
  "Write a question a student might ask about this text, then answer it:\n\n%s",
}

-- A paragraph worth asking about: mostly words, not markup.
local function good_paragraph(p)
  if #p < 120 then return false end
  if p:match("^%s*[%.=%-%*#:|+`<]") then return false end
  local letters = select(2, p:gsub("[%a ]", ""))
  return letters / #p >= 0.85
end

local function snippet(p, chars)
  p = p:gsub("%s+", " "):gsub("^ ", "")
  if #p <= chars then return p end
  local cut = p:sub(1, chars)
  local sp = cut:match("^.*() ")
  if sp and sp > chars / 2 then cut = cut:sub(1, sp - 1) end
  return cut .. " ..."
end

-- Up to `want` prompts from corpus snippets; prompt k is the same for any want >= k.
function T.corpus_prompts(o, want)
  local files = hyb.data.files(o.corpus, {include = o.include, exclude = o.exclude})
  local rng_state = o.seed or 1
  math.randomseed(rng_state)
  for i = #files, 2, -1 do
    local j = math.random(i)
    files[i], files[j] = files[j], files[i]
  end
  local out = {}
  local chars = o.snippet_chars or 200
  for _, f in ipairs(files) do
    if #out >= want then break end
    local text = readall(f, "corpus file"):gsub("\r", "")
    local paras = {}
    for p in (text .. "\n\n"):gmatch("(.-)\n\n+") do
      if good_paragraph(p) then paras[#paras + 1] = p end
    end
    for k = 1, math.min(2, #paras) do
      if #out >= want then break end
      local p = paras[math.random(#paras)]
      local tpl = T.templates[math.random(#T.templates)]
      out[#out + 1] = tpl:format(snippet(p, chars))
    end
  end
  return out
end

-- The prompt list: the prompts file, then corpus prompts, n in all (n nil: the whole file).
function T.prompts(o)
  local list = {}
  if o.prompts then list = T.read_prompts(o.prompts) end
  local n = o.n
  if n == nil then
    if not o.prompts then error("teacher data: give n (the number of prompts) with a corpus", 0) end
    n = #list
  end
  if math.type(n) ~= "integer" or n < 1 then error(("teacher data: n must be a positive integer, got %s"):format(tostring(n)), 0) end
  if #list >= n then
    for i = #list, n + 1, -1 do list[i] = nil end
    return list
  end
  if not o.corpus then
    error(("teacher data: %s holds %d prompts but n = %d; give fewer or add a corpus to make more from")
      :format(o.prompts or "(no prompts file)", #list, n), 0)
  end
  local more = T.corpus_prompts(o, n - #list)
  for _, p in ipairs(more) do list[#list + 1] = p end
  if #list < n then
    error(("teacher data: only %d prompts (file + corpus snippets), n = %d"):format(#list, n), 0)
  end
  return list
end

-- ---- tokenizers -------------------------------------------------------------------------------
-- tok: a hyb.data.tokenizer, a hyb.llm, or nil (bytes). Returns {encode, decode, stop = {ids}}.
function T.codec(tok, vocab)
  if tok == nil then
    return {
      encode = function(s) local t = {} for i = 1, #s do t[i] = s:byte(i) end return t end,
      decode = function(ids)
        local b = {}
        for i, v in ipairs(ids) do b[i] = string.char(v % 256) end
        return table.concat(b)
      end,
      stop = {},
    }
  end
  local stop, seen = {}, {}
  local function add(id) if id and id >= 0 and id < vocab and not seen[id] then seen[id] = true; stop[#stop + 1] = id end end
  add(tok:eos())
  for _, s in ipairs({"<|im_end|>", "<|endoftext|>"}) do
    local ids = tok:encode(s)
    if #ids == 1 then add(ids[1]) end
  end
  return {encode = function(s) return tok:encode(s) end, decode = function(ids) return tok:decode(ids) end, stop = stop}
end

-- ---- the index --------------------------------------------------------------------------------
local function settings_line(o)
  return ("# hyb teacher_data 1 teacher=%s max_tokens=%d temperature=%.6g top_p=%.6g top_k=%d seed=%d system=%q source=%s")
    :format(o.teacher or "?", o.max_tokens, o.temperature, o.top_p, o.top_k or 0, o.seed, ((o.system or genlib.default_system):gsub("[%c]", " ")), o.source or "?")
end

-- Reads `out`.idx: {done = {[i] = true}, count, last_end, header} (nil when absent).
function T.read_index(out)
  local f = io.open(out .. ".idx", "r")
  if not f then return nil end
  local r = {done = {}, count = 0, last_end = 0, lines = {}}
  r.header = f:read("l")
  for line in f:lines() do
    local i, e = line:match("^(%d+)\t(%d+)\t")
    if i then
      r.lines[#r.lines + 1] = {i = tonumber(i), e = tonumber(e), line = line}
    end
  end
  f:close()
  return r
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end

-- How many of prompts 1..n are done in `out` with settings o (nil when the settings differ).
function T.status(o, n)
  local idx = T.read_index(o.out)
  if not idx then return 0 end
  if idx.header ~= settings_line(o) then return nil, idx.header end
  local size = file_size(o.out) or 0
  local c = 0
  for _, l in ipairs(idx.lines) do if l.e <= size and l.i <= n then c = c + 1 end end
  return c
end

-- The identity of the prompt sources and of the teacher, for the settings line.
function T.source(o)
  local function list(v)
    if v == nil then return "" end
    if type(v) == "string" then return v end
    return table.concat(v, ",")
  end
  return ("prompts=%s;corpus=%s;include=%s;exclude=%s;snippet=%d"):format(o.prompts or "", list(o.corpus),
    list(o.include), list(o.exclude), o.snippet_chars or 200)
end

function T.teacher_id(path)
  local base = path:gsub("/+$", ""):match("([^/]*)$")
  return ("%s:%d"):format(base, file_size(path) or 0)
end

-- ---- generation -------------------------------------------------------------------------------
-- model: a hyb.model or hyb.llm; tok: see T.codec; prompts: a list of strings; o: out, max_tokens,
-- temperature, top_p, top_k, seed, slots, system, teacher (an identity string), source (the
-- prompt sources, for the settings line), log (a print function), max_ctx.
function T.generate(model, tok, prompts, o)
  local log = o.log or print
  local vocab = model:config().vocab_size
  local codec = T.codec(tok, vocab)
  local header = settings_line(o)
  local dir = o.out:match("^(.*)/[^/]*$")
  if dir then os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'") end
  -- the index: check the settings, keep the records whose transcript is complete in `out`
  local idx = T.read_index(o.out)
  local size = file_size(o.out)
  if idx and idx.header ~= header then
    error(("%s.idx was written with other settings:\n  %s\nnow:\n  %s\nremove %s and %s.idx, or write to another file")
      :format(o.out, idx.header, header, o.out, o.out), 0)
  end
  if not idx and size and size > 0 then
    error(("%s exists but %s.idx does not: not a teacher_data output; remove it or write to another file"):format(o.out, o.out), 0)
  end
  local done, keep, last_end = {}, {}, 0
  if idx then
    for _, l in ipairs(idx.lines) do
      if l.e <= (size or 0) and l.e >= last_end then
        done[l.i] = true
        keep[#keep + 1] = l.line
        last_end = l.e
      end
    end
  end
  -- rewrite the index and cut `out` after the last complete transcript
  if (size or 0) > last_end then
    log(("teacher data: %s: dropping %d bytes of an unfinished transcript"):format(o.out, size - last_end))
    local f = assert(io.open(o.out, "rb"))
    local head = f:read(last_end) or ""
    f:close()
    local w = assert(io.open(o.out .. ".new", "wb"))
    w:write(head)
    w:close()
    assert(os.rename(o.out .. ".new", o.out))
  end
  do
    local w = assert(io.open(o.out .. ".idx.new", "w"))
    w:write(header, "\n")
    for _, l in ipairs(keep) do w:write(l, "\n") end
    w:close()
    assert(os.rename(o.out .. ".idx.new", o.out .. ".idx"))
  end
  local todo = {}
  for i = 1, #prompts do if not done[i] then todo[#todo + 1] = i end end
  local n_done = #prompts - #todo
  if #todo == 0 then
    log(("teacher data: %s: all %d prompts done"):format(o.out, #prompts))
    return {done = #prompts, new = 0, tokens = 0, seconds = 0, tok_s = 0, out = o.out}
  end
  -- templated prompts
  local texts, ids, longest = {}, {}, 0
  for _, i in ipairs(todo) do
    texts[i] = genlib.chatml({{role = "user", content = prompts[i]}}, o.system)
    ids[i] = codec.encode(texts[i])
    if #ids[i] > longest then longest = #ids[i] end
  end
  local max_seq = model:config().max_seq or 2048
  local max_ctx = math.min(o.max_ctx or (longest + o.max_tokens + 1), max_seq, 4096)
  local e = hyb.engine(model, {slots = o.slots or 8, max_ctx = max_ctx, prefill_chunk = o.prefill_chunk or 0,
                               kv_cache = o.kv_cache})
  local out_f = assert(io.open(o.out, "ab"))
  local idx_f = assert(io.open(o.out .. ".idx", "a"))
  local pos = last_end
  local req = {}
  local skipped = 0
  local function record(i, text, n_prompt, n_gen, finish)
    out_f:write(text)
    out_f:flush()
    pos = pos + #text
    idx_f:write(("%d\t%d\t%d\t%d\t%s\n"):format(i, pos, n_prompt, n_gen, finish))
    idx_f:flush()
  end
  for _, i in ipairs(todo) do
    if #ids[i] + 1 >= max_ctx then
      log(("teacher data: prompt %d has %d tokens, more than the context (%d) allows: skipped"):format(i, #ids[i], max_ctx))
      record(i, "", #ids[i], 0, "skipped")
      skipped = skipped + 1
    else
      local id = e:submit(ids[i], {max_tokens = math.min(o.max_tokens, max_ctx - #ids[i] - 1),
        temperature = o.temperature, top_p = o.top_p, top_k = o.top_k or 0,
        seed = o.seed * 1000003 + i, eos = #codec.stop > 0 and codec.stop or nil})
      req[id] = i
    end
  end
  log(("teacher data: %d prompts to do (%d done before) -> %s, %d slots, context %d"):format(#todo - skipped,
    n_done, o.out, o.slots or 8, max_ctx))
  local t0, gen, fin = hyb.time(), 0, 0
  local last_log = t0
  while e:pending() > 0 do
    for _, c in ipairs(e:step()) do
      local i = req[c.id]
      local reply = codec.decode(c.tokens)
      record(i, texts[i] .. reply .. "\n\n", #ids[i], #c.tokens, c.finish)
      gen = gen + #c.tokens
      fin = fin + 1
    end
    local now = hyb.time()
    if now - last_log >= (o.log_every or 15) then
      last_log = now
      log(("teacher data: %d/%d done, %d tokens, %.1f tok/s"):format(n_done + fin + skipped, #prompts, gen, gen / (now - t0)))
    end
  end
  out_f:close()
  idx_f:close()
  local secs = hyb.time() - t0
  local st = e:stats()
  e:close()
  local r = {done = #prompts, new = fin, tokens = gen, seconds = secs, tok_s = gen / math.max(secs, 1e-9),
    prefill_tokens = st.prefill_tokens, out = o.out}
  log(("teacher data: %d replies, %d generated tokens (+%d prompt tokens prefilled) in %.1f s: %.1f generated tok/s -> %s")
    :format(fin, gen, st.prefill_tokens, secs, r.tok_s, o.out))
  return r
end

return T
