-- scripts/rankinglib.lua: layer-importance scores (SPEC.md section 5) shared by hyb importance
-- (scripts/importance.lua) and the progressive stages of hyb distill (scripts/distill.lua).
--
--   local K = require("rankinglib")
--   local s = K.loo(student, teacher, ds, layers, {batches =, batch =, seq_len =})
--     -- s[l] = {rkl =, nll =}: layer l of the student replaced by identity
--   local s = K.mmr(student, teacher, ds, layers, {mixer =, config =, init = "mil", steps =, lr =,
--                   batch =, seq_len =, batches =, seed =})
--     -- s[l] = {kl_mil =, kl_after =, recovered =}: layer l alone swapped to `mixer`, only that
--     -- mixer's parameters trained for `steps` updates against the teacher
--   local order = K.order(s, "rkl")  -- least important (smallest score) first
--
-- Under mpirun (hyb.comm.size() > 1) K.loo and K.mmr split `layers` over the ranks (the i-th on
-- rank (i - 1) % size; each probe is independent of the others) and every rank returns every
-- layer's score, gathered with hyb.comm.broadcast; on_layer runs for this rank's layers.
--
-- Every score is measured against `teacher`, the original model, on the dataset's held-out
-- batches; `student` is the model whose layers are candidates (the teacher itself, or a student
-- with earlier stages' layers already converted). Neither model is changed.
local hyb = require("hyb")
local K = {}

-- free a model now (what `<close>` does), for the paths that hand it back or drop it
local function free(m)
  local mt = getmetatable(m)
  local f = type(mt) == "table" and (mt.__close or mt.__gc)
  if f then f(m) end
end

-- Held-out reverse KL to the teacher and mean token NLL (teacher-forced cross-entropy on the
-- next token) of `model` over `nb` fixed held-out batches of B x T. `cache` keeps the teacher's
-- logits per batch across calls (one cache per (B, T, teacher)).
function K.heldout(model, teacher, ds, nb, B, T, cache)
  local rkl, nll = 0, 0
  for j = 0, nb - 1 do
    local ids, tg = ds:val_batch(j, B, T)
    local tl = cache and cache[j]
    if not tl then
      tl = teacher:forward(ids, B, T, {grad = false}):clone()
      if cache then cache[j] = tl end
    end
    local lg = model:forward(ids, B, T, {grad = false})
    rkl = rkl + model:loss(lg, nil, {kind = "kl_reverse", teacher = tl}):value()
    nll = nll + model:loss(lg, tg):value()
  end
  return rkl / nb, nll / nb
end

-- The mixer type of each layer of `model` (0-based: types[l] = "mha", "mamba1", "identity", ...),
-- from its layer map.
function K.mixer_types(model)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write(hyb.train.layermap_toml(model))
  f:close()
  local ok, map = pcall(hyb.train.read_toml, tmp)
  os.remove(tmp)
  if not ok then error(map, 0) end
  local types = {}
  for i, name in ipairs(map.layout.layers) do types[i - 1] = map.mixers[name] and map.mixers[name].type or name end
  return types
end

-- The candidates for conversion: the layers (among `layers`, default all) that are attention
-- (mixer type mha) in the teacher and still the teacher's mixer in `student` (not converted yet).
function K.remaining(student, teacher, layers)
  local sp, tp = student:pattern(), teacher:pattern()
  local st, tt = K.mixer_types(student), K.mixer_types(teacher)
  local out = {}
  local function keep(l)
    if tt[l] == "mha" and st[l] == "mha" and sp:sub(l + 1, l + 1) == tp:sub(l + 1, l + 1) then out[#out + 1] = l end
  end
  if layers then for _, l in ipairs(layers) do keep(l) end
  else for l = 0, #tp - 1 do keep(l) end end
  return out
end

-- Data parallel: is the i-th layer of a list this rank's?
local function mine(i)
  local W = hyb.comm.size()
  return W == 1 or (i - 1) % W == hyb.comm.rank()
end

-- Every rank's scores to every rank: {layer = {key = number}}, numbers in %.17g (exact).
function K.gather(scores)
  local c = hyb.comm
  if c.size() == 1 then return scores end
  local lines = {}
  for l, v in pairs(scores) do
    local kv = {}
    for k, x in pairs(v) do kv[#kv + 1] = ("%s=%.17g"):format(k, x) end
    table.sort(kv)
    lines[#lines + 1] = l .. " " .. table.concat(kv, " ")
  end
  local all = {}
  for r = 0, c.size() - 1 do
    local text = c.broadcast(c.rank() == r and table.concat(lines, "\n") or nil, r)
    for line in text:gmatch("[^\n]+") do
      local l = tonumber(line:match("^(%-?%d+)"))
      local v = {}
      for k, x in line:gmatch("([%w_]+)=(%S+)") do v[k] = tonumber(x) end
      all[l] = v
    end
  end
  return all
end

-- Leave-one-out: each layer of `layers` replaced by identity on a clone of `student`.
-- o: batches, batch, seq_len, cache (teacher logits), on_layer(i, l, score, secs)
function K.loo(student, teacher, ds, layers, o)
  local scores = {}
  local cache = o.cache or {}
  for i, l in ipairs(layers) do
    if mine(i) then
      local t0 = hyb.time()
      local m <close> = hyb.train.clone(student)
      m:set_identity(l)
      local rkl, nll = K.heldout(m, teacher, ds, o.batches, o.batch, o.seq_len, cache)
      scores[l] = {rkl = rkl, nll = nll}
      if o.on_layer then o.on_layer(i, l, scores[l], hyb.time() - t0) end
    end
  end
  return K.gather(scores)
end

-- The parameter glob of layer l's mixer: the only parameters an MMR probe trains.
function K.mixer_glob(l) return ("model.layers.%d.mixer.*"):format(l) end

-- One MMR probe: a clone of `student` with layer l swapped to o.mixer (o.init, default MIL, from
-- the attention weights), every parameter frozen except that mixer's, trained o.steps updates
-- (AdamW at the constant o.lr, reverse KL against `teacher`, training batches
-- ds:batch(step, o.batch, o.seq_len, o.seed)). Returns the score {kl_mil = held-out rKL right
-- after the swap, kl_after = after the probe, recovered = kl_after / kl_mil} and, when o.keep,
-- the probed model (the caller closes it). o.on_step(step, stats) after each update.
function K.mmr_probe(student, teacher, ds, l, o)
  local m = hyb.train.clone(student)
  local ok, err = pcall(function()
    m:swap(l, o.mixer, {init = o.init or "mil", seed = (o.seed or 1) + l, config = o.config})
    hyb.train.freeze(m, "*")
    if hyb.train.freeze(m, K.mixer_glob(l), false) == 0 then
      error(("MMR probe: layer %d's mixer has no parameters to train (mixer %s)"):format(l, o.mixer), 0)
    end
  end)
  if not ok then free(m) error(err, 0) end
  local cache = o.cache or {}
  local kl_mil = K.heldout(m, teacher, ds, o.batches, o.batch, o.seq_len, cache)
  local tr <close> = hyb.train.trainer(m, {teacher = teacher, lr = o.lr, min_lr = o.lr, warmup = 0,
    steps = o.steps, weight_decay = 0, clip = 1.0})
  for step = 0, o.steps - 1 do
    local ids = ds:batch(step, o.batch, o.seq_len, o.seed or 1)
    local st = tr:step(ids, o.batch, o.seq_len)
    if o.on_step then o.on_step(step + 1, st) end
  end
  local kl_after = K.heldout(m, teacher, ds, o.batches, o.batch, o.seq_len, cache)
  local score = {kl_mil = kl_mil, kl_after = kl_after, recovered = kl_after / math.max(kl_mil, 1e-30)}
  if o.keep then return score, m end
  free(m)
  return score
end

-- MIL-Mamba-Replacement: K.mmr_probe for each layer of `layers`; o.on_layer(i, l, score, secs).
function K.mmr(student, teacher, ds, layers, o)
  local scores = {}
  o.cache = o.cache or {}
  for i, l in ipairs(layers) do
    if mine(i) then
      local t0 = hyb.time()
      scores[l] = K.mmr_probe(student, teacher, ds, l, o)
      if o.on_layer then o.on_layer(i, l, scores[l], hyb.time() - t0) end
    end
  end
  return K.gather(scores)
end

-- The scored layers ordered by scores[l][key] (a number table works too), smallest first; ties
-- by layer index.
function K.order(scores, key)
  local ord = {}
  for l in pairs(scores) do ord[#ord + 1] = l end
  local function sc(l) local v = scores[l] if type(v) == "table" then v = v[key] end return v end
  table.sort(ord, function(a, b) if sc(a) ~= sc(b) then return sc(a) < sc(b) end return a < b end)
  return ord
end

-- The score each method ranks by: MMR by the held-out rKL after the probe; LOO by `criterion`
-- ("rkl": reverse KL to the teacher; "nll": teacher-forced mean token NLL of the held-out text).
function K.key(method, criterion)
  if method == "mmr" then return "kl_after" end
  return criterion or "rkl"
end

-- A table keyed by layer number -> the same keyed by strings (JSON objects).
function K.keyed(s)
  if not s then return nil end
  local t = {}
  for l, v in pairs(s) do t[tostring(l)] = v end
  return t
end

-- A small JSON reader for the files these scripts write (objects, arrays, strings, numbers,
-- true/false/null). Raises "<what>: bad JSON at byte N".
function K.json_decode(text, what)
  local pos = 1
  local function fail() error(("%s: bad JSON at byte %d"):format(what or "json", pos), 0) end
  local function ws() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local value
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = text:sub(pos, pos)
      if c == "" then fail() end
      if c == '"' then pos = pos + 1 break end
      if c == "\\" then
        local e = text:sub(pos + 1, pos + 1)
        if e == "u" then
          out[#out + 1] = utf8.char(tonumber(text:sub(pos + 2, pos + 5), 16) or fail())
          pos = pos + 6
        else
          out[#out + 1] = ({n = "\n", t = "\t", r = "\r", b = "\b", f = "\f"})[e] or e
          pos = pos + 2
        end
      else
        out[#out + 1] = c
        pos = pos + 1
      end
    end
    return table.concat(out)
  end
  value = function()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then
      local t = {}
      pos = pos + 1
      ws()
      if text:sub(pos, pos) == "}" then pos = pos + 1 return t end
      while true do
        ws()
        if text:sub(pos, pos) ~= '"' then fail() end
        local k = str()
        ws()
        if text:sub(pos, pos) ~= ":" then fail() end
        pos = pos + 1
        t[k] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return t end
        if d ~= "," then fail() end
      end
    elseif c == "[" then
      local t = {}
      pos = pos + 1
      ws()
      if text:sub(pos, pos) == "]" then pos = pos + 1 return t end
      while true do
        t[#t + 1] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return t end
        if d ~= "," then fail() end
      end
    elseif c == '"' then
      return str()
    elseif text:sub(pos, pos + 3) == "true" then pos = pos + 4 return true
    elseif text:sub(pos, pos + 4) == "false" then pos = pos + 5 return false
    elseif text:sub(pos, pos + 3) == "null" then pos = pos + 4 return nil
    else
      local num = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" then fail() end
      pos = pos + #num
      return math.tointeger(tonumber(num)) or tonumber(num) or fail()
    end
  end
  local v = value()
  ws()
  if pos <= #text then fail() end
  return v
end

return K
