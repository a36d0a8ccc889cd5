-- scripts/recipelib.lua: the schema of a distillation recipe (scripts/distill.lua) and its
-- validation. Every section and key is checked before any work starts: an unknown key is an error
-- naming the file, line:col and the nearest valid key ("did you mean 'lr'?"); a value of the
-- wrong type or out of its range names the key, the value and the range.
--
--   local RL = require("recipelib")
--   local recipe = RL.read(path)   -- read_toml + RL.check; raises one line on the first problem
local hyb = require("hyb")
local RL = {}

local BIG = 1 << 53 -- step counters, seeds and byte counts: as the trainer and the dataset take them

-- A type spec: {t = "int" | "number" | "string" | "bool" | "strings" (a string or a list of
-- strings) | "ints" (a list of integers) | "table" (checked by `keys` or `each`), lo =, hi =,
-- open = (lo excluded), enum = {...}, keys = {sub-schema}, each = spec of every value}
local function int(lo, hi) return {t = "int", lo = lo, hi = hi} end
local function num(lo, hi, open) return {t = "number", lo = lo, hi = hi, open = open} end
local str = {t = "string"}
local strs = {t = "strings"}

RL.schema = {
  run = {t = "table", keys = {
    teacher = {t = "string", nonempty = true}, out = {t = "string", nonempty = true}, seed = int(0, BIG),
    log_every = int(1, BIG), eval_every = int(1, BIG), eval_batches = int(1, 1 << 20), ckpt_every = int(1, BIG),
    device = {t = "string", nonempty = true}, checkpoints = {t = "string", enum = {"lean", "full"}},
    teacher_quant = {t = "string", enum = {"off", "precise", "fast"}},
  }},
  data = {t = "table", keys = {
    files = strs, include = strs, exclude = strs, max_bytes = int(1, BIG), tokenizer = {t = "string", nonempty = true},
    special = {t = "bool"}, val_fraction = {t = "number", lo = 0, hi = 1, hi_open = true}, seed = int(0, BIG),
    generate = {t = "table", keys = {
      n = int(1, 1 << 31), prompts = str, corpus = strs, include = strs, exclude = strs,
      snippet_chars = int(1, 1 << 24), max_tokens = int(1, 1 << 24), temperature = num(0, 100),
      top_p = num(0, 1, true), top_k = int(0, 1 << 31), seed = int(0, BIG), slots = int(1, 4096),
      system = str, out = {t = "string", nonempty = true}, max_ctx = int(1, 1 << 24),
    }},
  }},
  -- how stages with `lowest` choose their layers (scripts/distill.lua, scripts/rankinglib.lua)
  rank = {t = "table", keys = {
    progressive = {t = "bool"}, method = {t = "string", enum = {"mmr", "loo"}},
    criterion = {t = "string", enum = {"rkl", "nll"}}, steps = int(1, BIG), lr = num(0, 1, true),
    batch = int(1, 65536), seq_len = int(1, 1 << 24), batches = int(1, 1 << 20), seed = int(0, BIG),
  }},
  train = {t = "table", keys = {}}, -- filled below: the training keys
  stages = {t = "table", each = {t = "table", keys = {}}}, -- filled below
}

-- [train] keys; every stage may override them
RL.train_keys = {
  lr = num(0, 10), min_lr = num(0, 10), warmup = int(0, BIG), batch = int(1, 65536),
  seq_len = int(1, 1 << 24), accum = int(1, 65536),
  loss = {t = "string", enum = {"reverse_kl", "forward_kl", "ce", "mix"}},
  weights = {t = "table", keys = {rkl = num(0, 1e3), fkl = num(0, 1e3), ce = num(0, 1e3)}},
  temperature = num(0, 100, true), weight_decay = num(0, 10), clip = num(0, 1e6),
  freeze = strs, unfreeze = strs,
  lr_scale = {t = "table", each = num(0, 1e6), what = '{ "glob" = scale, ... }'},
}
RL.stage_keys = {
  layers = {t = "ints", lo = 0, hi = 65535}, lowest = int(1, 65535), ranking = {t = "string", nonempty = true},
  mixer = {t = "string", nonempty = true}, init = {t = "string", enum = {"mil", "random"}},
  config = str, steps = int(1, BIG),
}
for k, v in pairs(RL.train_keys) do
  RL.schema.train.keys[k] = v
  RL.schema.stages.each.keys[k] = v
end
for k, v in pairs(RL.stage_keys) do RL.schema.stages.each.keys[k] = v end

-- Names people bring from other tools: a typo near one of them suggests the recipe's key.
RL.aliases = {
  learning_rate = "lr", lr_min = "min_lr", min_learning_rate = "min_lr", warmup_steps = "warmup",
  batch_size = "batch", micro_batch_size = "batch", seq_length = "seq_len", sequence_length = "seq_len",
  max_seq_len = "seq_len", context_length = "seq_len", gradient_accumulation_steps = "accum",
  grad_accum = "accum", max_grad_norm = "clip", grad_clip = "clip", gradient_clipping = "clip",
  max_steps = "steps", num_steps = "steps", train_steps = "steps", wd = "weight_decay",
  mixer_type = "mixer", mixer_config = "config", teacher_model = "teacher", output_dir = "out",
  out_dir = "out", kd_temperature = "temperature", loss_type = "loss",
}

-- Edits (insert, delete, substitute, swap two neighbours) from a to b.
function RL.edit_distance(a, b)
  local d = {}
  for i = 0, #a do d[i] = {[0] = i} end
  for j = 0, #b do d[0][j] = j end
  for i = 1, #a do
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        v = math.min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[#a][#b]
end

-- The valid key nearest to `key` (also through RL.aliases: "learning_rate" suggests "lr"), or nil
-- when none is near: at most 3 edits, and fewer than half the length of either name.
function RL.suggest(key, valid)
  local best, bd = nil, math.huge
  local function try(name, canonical)
    if not valid[canonical] then return end
    local d = RL.edit_distance(key:lower(), name)
    if d > 3 or d * 2 >= math.min(#key, #name) then return end
    if d < bd or (d == bd and canonical < best) then best, bd = canonical, d end
  end
  for k in pairs(valid) do try(k, k) end
  for a, k in pairs(RL.aliases) do try(a, k) end
  return best
end

-- " (did you mean --max-tokens?)" for an unknown command-line option, or "": names is a set or a
-- list of the valid option names (without "--"; "_" and "-" are the same).
function RL.option_hint(name, names)
  local valid = {}
  for k, v in pairs(names) do
    local n = type(k) == "number" and v or k
    if type(n) == "string" then valid[(n:gsub("_", "-"))] = true end
  end
  local saved = RL.aliases
  RL.aliases = {}
  local best = RL.suggest((name:gsub("_", "-")), valid)
  RL.aliases = saved
  return best and (" (did you mean --" .. best .. "?)") or ""
end

local function sorted_keys(t)
  local l = {}
  for k in pairs(t) do l[#l + 1] = k end
  table.sort(l)
  return l
end

local function show(v)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) == "table" then return v.__order and "a table" or "a list" end
  if math.type(v) == "float" then return ("%.6g"):format(v) end
  return tostring(v)
end

local function range_text(s)
  local hi = s.hi >= BIG and "2^53" or ("%.6g"):format(s.hi)
  return ("%s%.6g, %s%s"):format(s.open and "(" or "[", s.lo, hi, s.hi_open and ")" or "]")
end

local function in_range(s, v)
  if s.lo == nil then return true end
  if v ~= v or v < s.lo or v > s.hi then return false end
  if s.open and v == s.lo then return false end
  if s.hi_open and v == s.hi then return false end
  return true
end

-- Check `tbl` (read_toml's table) against RL.schema; `pos` is read_toml's positions table.
-- Raises "path:line:col: message" (error level 0: no script position).
function RL.check(tbl, path, pos)
  pos = pos or {}
  local function fail(keypath, fmt, ...)
    local where = pos[keypath]
    if not where then -- a key that is not in the file: its table's position, else the file
      local up = keypath
      repeat up = up:match("^(.*)%.[^.]*$") until not up or pos[up]
      where = up and pos[up] or path
    end
    error(where .. ": " .. fmt:format(...), 0)
  end
  local function label(keypath) return keypath end

  local check_value
  local function check_table(t, spec, keypath, section)
    if spec.keys then
      for _, k in ipairs(t.__order or {}) do
        local kp = keypath == "" and k or keypath .. "." .. k
        local ks = spec.keys[k]
        if not ks then
          local hint = RL.suggest(k, spec.keys)
          fail(kp, "unknown key '%s' in %s%s; valid keys: %s", k, section,
            hint and (" (did you mean '" .. hint .. "'?)") or "", table.concat(sorted_keys(spec.keys), ", "))
        end
        check_value(t[k], ks, kp, k)
      end
    elseif spec.each then
      for _, k in ipairs(t.__order or {}) do
        local kp = keypath .. "." .. k
        check_value(t[k], spec.each, kp, k)
      end
    end
  end

  check_value = function(v, s, kp, name)
    local ty = s.t
    if ty == "table" then
      if type(v) ~= "table" or not v.__order then
        fail(kp, "'%s' must be a table%s, got %s", label(kp), s.what and (" " .. s.what) or "", show(v))
      end
      local section = kp:find("%.") and ("'" .. kp .. "'") or ("[" .. kp .. "]")
      if kp:match("^stages%.") and not kp:match("^stages%.[^.]+%.") then section = "stage '" .. name .. "'" end
      check_table(v, s, kp, section)
    elseif ty == "int" or ty == "number" then
      if type(v) ~= "number" or (ty == "int" and math.type(v) ~= "integer") then
        fail(kp, "'%s' must be %s, got %s", label(kp), ty == "int" and "an integer" or "a number", show(v))
      end
      if not in_range(s, v) then
        fail(kp, "'%s' = %s is out of range: it must be in %s", label(kp), show(v), range_text(s))
      end
    elseif ty == "string" then
      if type(v) ~= "string" then fail(kp, "'%s' must be a string, got %s", label(kp), show(v)) end
      if s.nonempty and v == "" then fail(kp, "'%s' must not be empty", label(kp)) end
      if s.enum then
        local ok = false
        for _, e in ipairs(s.enum) do if v == e then ok = true end end
        if not ok then
          local valid = {}
          for _, e in ipairs(s.enum) do valid[e] = true end
          local hint = RL.suggest(v, valid)
          fail(kp, "'%s' = %s is not one of: %s%s", label(kp), show(v), table.concat(s.enum, ", "),
            hint and (" (did you mean '" .. hint .. "'?)") or "")
        end
      end
    elseif ty == "bool" then
      if type(v) ~= "boolean" then fail(kp, "'%s' must be true or false, got %s", label(kp), show(v)) end
    elseif ty == "strings" then
      if type(v) == "string" then return end
      if type(v) ~= "table" or v.__order then
        fail(kp, "'%s' must be a string or a list of strings, got %s", label(kp), show(v))
      end
      for i, x in ipairs(v) do
        if type(x) ~= "string" then fail(kp, "'%s' element %d must be a string, got %s", label(kp), i, show(x)) end
      end
    elseif ty == "ints" then
      if type(v) ~= "table" or v.__order then fail(kp, "'%s' must be a list of integers, got %s", label(kp), show(v)) end
      for i, x in ipairs(v) do
        if math.type(x) ~= "integer" then
          fail(kp, "'%s' element %d must be an integer, got %s", label(kp), i, show(x))
        end
        if not in_range(s, x) then
          fail(kp, "'%s' element %d = %s is out of range: it must be in %s", label(kp), i, show(x), range_text(s))
        end
      end
    end
  end

  check_table(tbl, {keys = RL.schema}, "", "the recipe (sections: [run], [data], [rank], [train], [stages.<name>])")

  -- what the schema alone cannot say
  local run, data, stages = tbl.run, tbl.data, tbl.stages
  if not run then fail("", "missing [run] (teacher = ...)") end
  if run.teacher == nil then fail("run", "[run] teacher is missing") end
  if not data then fail("", "missing [data]") end
  if data.files == nil and data.generate == nil then fail("data", "[data] files is missing") end
  if data.generate and not data.generate.prompts and not data.generate.corpus then
    fail("data.generate", "[data] generate needs prompts (a file) and/or corpus (paths)")
  end
  if not stages or #(stages.__order or {}) == 0 then fail("", "no [stages.<name>] tables") end
  local train = tbl.train or {}
  for _, name in ipairs(stages.__order) do
    local S = stages[name]
    local sp = "stages." .. name
    local function get(k) if S[k] ~= nil then return S[k] end return train[k] end
    if S.steps == nil then fail(sp, "stage '%s': steps is missing", name) end
    if S.layers ~= nil and S.lowest ~= nil then
      fail(sp .. ".lowest", "stage '%s': give layers or lowest (with ranking), not both", name)
    end
    local rank = tbl.rank or {}
    if S.lowest ~= nil and S.ranking == nil and rank.progressive == false then
      fail(sp .. ".lowest", "stage '%s': lowest needs ranking (a file from hyb importance) when [rank] progressive = false", name)
    end
    if S.ranking ~= nil and S.lowest == nil then
      fail(sp .. ".ranking", "stage '%s': ranking is used with lowest = n (how many layers to take)", name)
    end
    if S.lowest ~= nil and rank.method == "mmr" and S.mixer == "identity" then
      fail("rank.method", "stage '%s': [rank] method = \"mmr\" probes a mixer, but the stage's mixer is identity (use method = \"loo\")", name)
    end
    local lr, min_lr = get("lr") or 3e-4, get("min_lr")
    if min_lr and min_lr > lr then
      fail(S.min_lr ~= nil and sp .. ".min_lr" or "train.min_lr", "stage '%s': min_lr = %s is above lr = %s",
        name, show(min_lr), show(lr))
    end
    if get("loss") == "mix" and get("weights") == nil then
      fail(S.loss ~= nil and sp .. ".loss" or "train.loss", "stage '%s': loss = \"mix\" needs weights = {rkl =, fkl =, ce =}", name)
    end
  end
  return tbl
end

-- Read and check a recipe: the table of hyb.train.read_toml (with "__order" lists).
function RL.read(path)
  local ok, t, pos = pcall(hyb.train.read_toml, path, {positions = true})
  if not ok then error((tostring(t):gsub("^hyb%.train%.read_toml: ", "")), 0) end
  return RL.check(t, path, pos), pos
end

return RL
