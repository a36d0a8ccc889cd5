-- scripts/evallib.lua: helpers shared by scripts/eval.lua and scripts/importance.lua: argument
-- parsing, the held-out data, held-out metrics of a model against the teacher, JSON (also for
-- distill.lua and bench_cpu.lua) and tables.
local hyb = require("hyb")
local E = {}

-- The stated range of each numeric option of eval, importance and mil_check: {lo, hi[, lo_open]}.
E.ranges = {
  batches = {1, 1 << 20}, batch = {1, 65536}, seq_len = {1, 1 << 24}, prompts = {0, 1 << 20},
  prompt_len = {1, 1 << 24}, gen = {0, 1 << 24}, val_fraction = {0, 1, true}, seed = {0, 1 << 53},
  max_bytes = {0, 1 << 53}, lowest = {1, 1024}, mmr_steps = {0, 1 << 30}, mmr_lr = {0, 1, true},
  train_steps = {0, 1 << 30}, train_lr = {0, 1, true},
}

-- "--key value" and "--flag" options; the rest are positional. spec: key -> default (a boolean
-- default makes it a flag; an integer default takes integers only). Unknown options, missing
-- values and numbers outside E.ranges print the message and the usage on stderr and exit 2;
-- --help / -h prints the usage on stdout and exits 0.
function E.parse_args(args, spec, usage)
  local function fail(msg)
    io.stderr:write("hyb: ", msg, "\n", usage, "\n")
    os.exit(2)
  end
  local o, pos = {}, {}
  for k, v in pairs(spec) do o[k] = v end
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      print(usage)
      os.exit(0)
    end
    local key = a:match("^%-%-([%w_-]+)$")
    if key then
      local flag = key
      key = key:gsub("-", "_")
      if spec[key] == nil then fail(("unknown option --%s%s"):format(flag, require("recipelib").option_hint(flag, spec))) end
      if type(spec[key]) == "boolean" then
        o[key] = true
      else
        i = i + 1
        local v = args[i]
        if v == nil then fail(("option --%s needs a value"):format(flag)) end
        if type(spec[key]) == "number" then
          local n = tonumber(v)
          if math.type(spec[key]) == "integer" then n = math.tointeger(n) end
          if not n or n ~= n then
            fail(("option --%s needs %s, got %q"):format(flag,
              math.type(spec[key]) == "integer" and "an integer" or "a number", v))
          end
          local r = E.ranges[key]
          if r and (n < r[1] or n > r[2] or (r[3] and n == r[1])) then
            fail(("option --%s must be in %s%s, %s], got %s"):format(flag, r[3] and "(" or "[",
              tostring(r[1]), tostring(r[2]), v))
          end
          o[key] = n
        else
          o[key] = v
        end
      end
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return o, pos
end

-- The options of hyb.train.load for `--device D` (o.device; "" = the CPU). The device is opened
-- at once: one that cannot be used ends the program with one line naming it (exit status 1).
function E.load_opts(o, prog)
  if (o.device or "") == "" then return nil end
  return E.device_opts(o, prog)
end

-- As load_opts, for a command that only runs models forward (eval): a quantized GGUF keeps its
-- blocks, computing in o.quant (--quant off|precise|fast; "" = $HYB_QUANT, else precise).
function E.inference_load_opts(o, prog)
  if o.quant ~= "" and o.quant ~= "off" and o.quant ~= "precise" and o.quant ~= "fast" then
    io.stderr:write(prog, ": --quant must be off, precise or fast, got '", o.quant, "'\n")
    os.exit(2)
  end
  local r = (o.device or "") ~= "" and E.device_opts(o, prog) or {}
  -- quantized weights compute on the CPU: another device loads f32 unless --quant says
  r.quant = o.quant ~= "" and o.quant or ((o.device or "") == "" or o.device == "cpu") and "auto" or nil
  return r
end

function E.device_opts(o, prog)
  local ok, err = pcall(hyb.device, o.device)
  if not ok then
    io.stderr:write(prog, ": ", (tostring(err):gsub("^hyb%.device: ", "")), "\n")
    os.exit(1)
  end
  return {device = o.device}
end

-- The options eval and importance share (their defaults), plus `extra` (a new table): the
-- teacher and its device, the held-out data (E.dataset) and its batches, the seed.
function E.data_spec(extra)
  local spec = {teacher = "", device = "", data = "", tokenizer = "", batches = 4, batch = 2,
    seq_len = 128, cache = "", val_fraction = 0.05, include = "", exclude = "", max_bytes = 0,
    special = false, seed = 1, help = false, quiet = false}
  for k, v in pairs(extra) do spec[k] = v end
  return spec
end

-- Parse the command line with spec; print usage and exit unless --teacher and --data are there.
-- Returns the options and the positional arguments, after quieting the log.
function E.parse_or_usage(args, spec, usage)
  local o, pos = E.parse_args(args, spec, usage)
  if o.help or o.teacher == "" or o.data == "" then print(usage) os.exit(o.help and 0 or 2) end
  hyb.log_level("warn")
  return o, pos
end

function E.expand(p)
  return (p:gsub("^~", os.getenv("HOME") or "~"))
end

-- The held-out data: a dataset over `opts.data` (comma-separated paths) with the tokenizer spec
-- `opts.tokenizer` ("bytes", a path, or "": the teacher when it is a .gguf). Optional:
-- opts.include / opts.exclude (comma-separated globs for the files found in directories),
-- opts.max_bytes (> 0: a deterministic sample of the directory files; hyb.data.files),
-- opts.special (special-token text is the special id, for teacher transcripts).
function E.dataset(opts, teacher_path)
  local function list(s)
    if s == nil or s == "" then return nil end
    local l = {}
    for f in s:gmatch("[^,]+") do l[#l + 1] = f end
    return l
  end
  local files = {}
  for _, f in ipairs(list(opts.data) or {}) do files[#files + 1] = E.expand(f) end
  local tokspec = (opts.tokenizer or "") ~= "" and opts.tokenizer or (teacher_path:match("%.gguf$") and teacher_path) or "bytes"
  local tok = tokspec ~= "bytes" and hyb.data.tokenizer(E.expand(tokspec)) or nil
  local max_bytes = opts.max_bytes
  if max_bytes ~= nil then
    max_bytes = math.tointeger(max_bytes) or error(("--max-bytes must be an integer, got %s"):format(max_bytes), 0)
    if max_bytes == 0 then max_bytes = nil end
  end
  local ds = hyb.data.dataset{files = files, include = list(opts.include), exclude = list(opts.exclude),
    max_bytes = max_bytes, special = opts.special and tok ~= nil or nil, tokenizer = tok,
    cache = (opts.cache or "") ~= "" and opts.cache or nil,
    val_fraction = opts.val_fraction, seed = opts.seed}
  return ds, tok
end

-- Held-out metrics of `model` against `teacher` over `nb` fixed batches of B x T:
-- ce (mean token cross-entropy), ppl = exp(ce), rkl, fkl (per token, averaged), tok_s (forward).
function E.heldout(model, teacher, ds, nb, B, T)
  local ce, rkl, fkl, secs = 0, 0, 0, 0
  for j = 0, nb - 1 do
    local ids, tg = ds:val_batch(j, B, T)
    local tl = teacher:forward(ids, B, T, {grad = false})
    local t0 = hyb.time()
    local lg = model:forward(ids, B, T, {grad = false})
    secs = secs + hyb.time() - t0
    ce = ce + model:loss(lg, tg):value()
    if teacher ~= model then
      rkl = rkl + model:loss(lg, nil, {kind = "kl_reverse", teacher = tl}):value()
      fkl = fkl + model:loss(lg, nil, {kind = "kl_forward", teacher = tl}):value()
    end
  end
  ce, rkl, fkl = ce / nb, rkl / nb, fkl / nb
  return {ce = ce, ppl = math.exp(ce), rkl = rkl, fkl = fkl, tok_s = nb * B * T / math.max(secs, 1e-9)}
end

-- Held-out reverse KL only (importance ranking).
function E.rkl(model, teacher, ds, nb, B, T, cache)
  local s = 0
  for j = 0, nb - 1 do
    local ids = ds:val_batch(j, B, T)
    local tl = cache and cache[j] or teacher:forward(ids, B, T, {grad = false}):clone()
    if cache then cache[j] = tl end
    s = s + model:loss(model:forward(ids, B, T, {grad = false}), nil, {kind = "kl_reverse", teacher = tl}):value()
  end
  return s / nb
end

-- JSON text of v: a table with keys 1..n only (or none) is an array, other tables are objects
-- with sorted keys. The style st: sep and colon (what follows "," and ":"), num (the format of
-- non-integer numbers) and skip (an object key left out: "__order" of hyb.train.read_toml tables).
local function json(v, st)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return string.format(st.num, v)
  elseif t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  elseif t == "boolean" then return tostring(v)
  elseif t == "table" then
    if #v > 0 or next(v) == nil then
      local parts = {}
      for i = 1, #v do parts[i] = json(v[i], st) end
      return "[" .. table.concat(parts, st.sep) .. "]"
    end
    local keys = {}
    for k in pairs(v) do if k ~= st.skip then keys[#keys + 1] = tostring(k) end end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = json(k, st) .. st.colon .. json(v[k], st) end
    return "{" .. table.concat(parts, st.sep) .. "}"
  end
  return "null"
end
local spaced = {sep = ", ", colon = ": ", num = "%.9g"}
local compact = {sep = ",", colon = ":", num = "%.9g", skip = "__order"}
local short = {sep = ", ", colon = ": ", num = "%.6g"}
function E.json(v) return json(v, spaced) end         -- eval, importance, mil_check
function E.json_compact(v) return json(v, compact) end -- distill (recipes read with read_toml)
function E.json_short(v) return json(v, short) end     -- bench_cpu (6 significant digits)

function E.write(path, text)
  local dir = path:match("^(.*)/[^/]*$")
  if dir then os.execute("mkdir -p '" .. dir .. "'") end
  local f = assert(io.open(path .. ".new", "w"))
  f:write(text)
  f:close()
  assert(os.rename(path .. ".new", path))
end

-- Print rows (tables) as an aligned table with the given columns {key, header, format}.
function E.table(cols, rows)
  local cells, w = {}, {}
  for c, col in ipairs(cols) do w[c] = #col[2] end
  for r, row in ipairs(rows) do
    cells[r] = {}
    for c, col in ipairs(cols) do
      local v = row[col[1]]
      local s = v == nil and "-" or (col[3] and type(v) == "number" and col[3]:format(v) or tostring(v))
      cells[r][c] = s
      if #s > w[c] then w[c] = #s end
    end
  end
  local function line(vals)
    local p = {}
    for c, v in ipairs(vals) do p[c] = (c == 1 and "%-" .. w[c] .. "s" or "%" .. w[c] .. "s"):format(v) end
    print(table.concat(p, "  "))
  end
  local hdr = {}
  for c, col in ipairs(cols) do hdr[c] = col[2] end
  line(hdr)
  for _, r in ipairs(cells) do line(r) end
end

return E
