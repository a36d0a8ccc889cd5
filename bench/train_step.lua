-- bench/train_step.lua: time hyb training steps (distillation and CE) on the CPU, for the
-- side-by-side comparison with PyTorch (bench/train_step_torch.py, driven by bench/train_step.sh).
--
--   build/hyb run bench/train_step.lua [--map graphs/smollm2-135m-h3.toml] [--B 1] [--T 64]
--       [--K 3] [--warmup 1] [--seed 1] [--save DIR] [--out FILE.json]
--
-- Models: the teacher is the layer map's all-attention version (every layer's mixer replaced by
-- the map's attention mixer) with random init from --seed; the student is a clone of it with the
-- map's mamba1 layers swapped in by MIL, as `hyb distill` does. One fixed batch of B x T random
-- token ids (seeded) with targets shifted by one.
-- Timed: K steps after `warmup` untimed ones, each a full tr:step (teacher forward without a tape,
-- student forward + backward, clip, AdamW) with loss = reverse KL (T = 1); then the same for a
-- loss = "ce" trainer (no teacher). Reported: the median step time and B*T / median tokens/s, and
-- the loss of the first step (before any update) for the sanity check against PyTorch.
-- --save DIR writes teacher and student with model:save (HF names, safetensors) into DIR/teacher,
-- DIR/student and the batch into DIR/batch.txt, so that PyTorch can run on the same weights.
local hyb = require("hyb")

local opt = {map = "graphs/smollm2-135m-h3.toml", B = 1, T = 64, K = 3, warmup = 1, seed = 1,
  save = nil, out = nil}
local i = 1
while i <= #arg do
  local k = arg[i]:match("^%-%-(.+)$")
  if not k or opt[k] == nil and k ~= "save" and k ~= "out" then
    io.stderr:write("usage: hyb run bench/train_step.lua [--map M] [--B n] [--T n] [--K n] [--warmup n] [--seed n] [--save DIR] [--out FILE]\n")
    os.exit(2)
  end
  local v = arg[i + 1] or error("--" .. k .. " needs a value")
  opt[k] = tonumber(v) and math.tointeger(tonumber(v)) or v
  i = i + 2
end
local B, T, K, W = opt.B, opt.T, opt.K, opt.warmup

-- ---- models -----------------------------------------------------------------------------------
local map = hyb.layermap(opt.map)
local cfg = hyb.train.read_toml(opt.map)
local attn_name, ssm_name
for _, name in ipairs(cfg.mixers.__order) do
  local ty = cfg.mixers[name].type
  if ty == "mha" then attn_name = attn_name or name else ssm_name = ssm_name or name end
end
local pattern = map:pattern():gsub("%s", "")
local attn_sym = cfg.mixers[attn_name].symbol
local ssm_layers = {}
for l = 1, #pattern do
  if pattern:sub(l, l) ~= attn_sym then ssm_layers[#ssm_layers + 1] = l - 1 end
end
-- the teacher: the same map with every layer attention
local text = io.open(opt.map):read("a")
local teacher_text = text:gsub('pattern%s*=%s*"[^"]*"', 'pattern = "' .. string.rep(attn_sym, #pattern) .. '"')
local teacher = hyb.model(hyb.parse_layermap(teacher_text, opt.map .. " (all attention)"), {seed = opt.seed})
local student = hyb.train.clone(teacher)
if #ssm_layers > 0 then student:swap(ssm_layers, ssm_name, {init = "mil", seed = opt.seed + 1}) end
local V = teacher:config().vocab_size
local D = teacher:config().d_model

-- ---- a fixed batch ----------------------------------------------------------------------------
local seq = {}
local s = opt.seed * 2654435761 % 4294967296
for j = 1, B * T + 1 do
  s = (s * 1103515245 + 12345) % 2147483648
  seq[j] = s % V
end
local ids, targets = {}, {}
for b = 0, B - 1 do
  for t = 1, T do
    -- each row its own window of the stream (rows overlap by design: only the cost matters)
    ids[b * T + t] = seq[(b * 7 + t - 1) % (B * T) + 1]
    targets[b * T + t] = seq[(b * 7 + t) % (B * T) + 1]
  end
end

if opt.save then
  teacher:save(opt.save .. "/teacher")
  student:save(opt.save .. "/student")
  local f = assert(io.open(opt.save .. "/batch.txt", "w"))
  f:write(("%d %d\n"):format(B, T), table.concat(ids, " "), "\n", table.concat(targets, " "), "\n")
  f:close()
end

-- ---- timing -----------------------------------------------------------------------------------
local function median(xs)
  local c = {}
  for j, x in ipairs(xs) do c[j] = x end
  table.sort(c)
  local n = #c
  if n % 2 == 1 then return c[(n + 1) // 2] end
  return (c[n // 2] + c[n // 2 + 1]) / 2
end

local function bench(loss)
  -- fresh copy of the student so both losses start from the same weights
  local st = hyb.train.clone(student)
  local tr = hyb.train.trainer(st, {teacher = loss ~= "ce" and teacher or nil, loss = loss, lr = 3e-4,
    min_lr = 3e-4, steps = W + K, weight_decay = 0.1, betas = {0.9, 0.95}, clip = 1.0})
  local first, times = nil, {}
  for step = 1, W + K do
    local t0 = hyb.time()
    local r = tr:step(ids, B, T, {targets = targets})
    local dt = hyb.time() - t0
    if step == 1 then first = r.loss end
    if step > W then times[#times + 1] = dt end
  end
  local m = median(times)
  return {loss = loss, first_loss = first, median_s = m, tok_s = B * T / m, times = times}
end

local results = {bench("reverse_kl"), bench("ce")}

-- ---- report -----------------------------------------------------------------------------------
local function json(v)
  local t = type(v)
  if t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.9g", v)
  elseif t == "string" then return '"' .. v .. '"'
  elseif t == "table" then
    if #v > 0 then
      local p = {}
      for j = 1, #v do p[j] = json(v[j]) end
      return "[" .. table.concat(p, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local p = {}
    for _, k in ipairs(keys) do p[#p + 1] = json(k) .. ":" .. json(v[k]) end
    return "{" .. table.concat(p, ",") .. "}"
  end
  return "null"
end
local rec = {impl = "hyb", map = opt.map, B = B, T = T, K = K, warmup = W, seed = opt.seed,
  d_model = D, vocab = V, n_params_student = student:n_params(), pattern = student:pattern(),
  threads = os.getenv("OMP_NUM_THREADS") or "default"}
for _, r in ipairs(results) do rec[r.loss == "ce" and "ce" or "rkl"] = r end
for _, r in ipairs(results) do
  print(("hyb %-10s B=%d T=%d: first loss %.6f  median %.3f s/step  %.1f tok/s"):format(r.loss, B, T,
    r.first_loss, r.median_s, r.tok_s))
end
if opt.out then
  local f = assert(io.open(opt.out, "w"))
  f:write(json(rec), "\n")
  f:close()
end
