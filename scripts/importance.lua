-- scripts/importance.lua: layer importance rankings for choosing which attention layers to
-- replace (SPEC.md section 5, Apriel-H1 staging).
--
--   hyb importance --teacher T --data FILES [--out ranking.json] [--mmr-steps 0] ...
--
-- Leave-one-out (LOO): each layer in turn is replaced by identity (model:set_identity on a clone
-- of the teacher); the metric is the held-out reverse KL to the teacher (per token, averaged over
-- --batches fixed batches). Least important = smallest KL.
-- MMR (with --mmr-steps N > 0 and the mamba1 plugin): each layer alone is swapped to mamba1 with
-- MIL init (shapes from the teacher's attention config), distilled for N steps (reverse KL), and
-- the mean loss of the last half of the steps is recorded. Least important = smallest loss.
-- Writes JSON {"metric", "order" (least important first; from MMR when it ran, else LOO),
-- "loo": {layer: kl}, "mmr": {layer: loss}} (scripts/distill.lua reads "order") and prints a table.
-- Progress on stderr: a bar redrawn in place on a terminal (layer, score, ETA of the whole run),
-- else one line per layer; --quiet prints only the table and errors (HYB_TTY=1/0 overrides).
local hyb = require("hyb")
local E = require("evallib")
local P = require("progresslib")

local usage = [=[usage: hyb importance --teacher PATH --data FILES [--tokenizer bytes|PATH] [--device cpu|cuda[:N]] [--batches 4]
       [--batch 2] [--seq-len 128] [--layers 0,1,...] [--mmr-steps 0] [--mmr-lr 1e-3]
       [--out ranking.json] [--cache PATH] [--val-fraction 0.05] [--seed 1]
       [--include GLOBS] [--exclude GLOBS] [--max-bytes N] [--special] [--quiet]]=]
local o = E.parse_or_usage(arg, E.data_spec{layers = "", mmr_steps = 0, mmr_lr = 1e-3,
  out = "ranking.json"}, usage)

local teacher_path = E.expand(o.teacher)
local load_opts = E.load_opts(o, "importance")
local teacher = hyb.train.load(teacher_path, load_opts)
local ds = E.dataset(o, teacher_path)
local L = teacher:config().n_layers
local layers = {}
if o.layers ~= "" then
  for v in o.layers:gmatch("[^,]+") do layers[#layers + 1] = math.tointeger(tonumber(v)) or error("--layers: not a layer number: " .. v, 0) end
else
  for l = 0, L - 1 do layers[#layers + 1] = l end
end

-- progress in work units: a LOO layer = its forward batches; an MMR step ~ 3 forward batches
-- (forward and backward of the student, forward of the teacher)
local have_mamba = false
for _, p in ipairs(hyb.plugins()) do if p.name == "mamba1" then have_mamba = true end end
local mmr_on = o.mmr_steps > 0 and have_mamba
local prog <close> = P.new{mode = P.mode(o.quiet, io.stderr), stream = io.stderr,
  total = #layers * o.batches + (mmr_on and #layers * o.mmr_steps * 3 or 0)}
local units = 0

-- LOO
local cache = {}
local loo, rows = {}, {}
for i, l in ipairs(layers) do
  local m <close> = hyb.train.clone(teacher)
  m:set_identity(l)
  local t0 = hyb.time()
  loo[l] = E.rkl(m, teacher, ds, o.batches, o.batch, o.seq_len, cache)
  rows[#rows + 1] = {layer = l, loo = loo[l], secs = hyb.time() - t0}
  units = units + o.batches
  prog:update(units, ("LOO layer %d (%d/%d)  rKL %.5f  ETA %s"):format(l, i, #layers, loo[l], P.duration(prog:eta(units))))
  if prog.mode == "lines" then
    prog:log(("LOO layer %d: rKL %.5f  (%d/%d, ETA %s)"):format(l, loo[l], i, #layers, P.duration(prog:eta())))
  end
end

-- MMR
local mmr = nil
if o.mmr_steps > 0 and not have_mamba then
  prog:log("MMR skipped: the mamba1 plugin is not available (hyb plugins)")
elseif o.mmr_steps > 0 then
  -- the teacher's attention shapes give the MIL-compatible mamba1 config (SPEC.md section 4)
  local tmp = os.tmpname()
  E.write(tmp, hyb.train.layermap_toml(teacher))
  local map = hyb.train.read_toml(tmp)
  os.remove(tmp)
  local attn = nil
  for _, name in ipairs(map.mixers.__order) do
    if map.mixers[name].type == "mha" then attn = map.mixers[name] break end
  end
  assert(attn, "MMR needs an mha teacher")
  local hd = attn.head_dim or (map.model.d_model // attn.n_heads)
  local cfg = ("d_inner = %d\nd_xb = %d\nd_state = 16"):format(attn.n_heads * hd, (attn.n_kv_heads or attn.n_heads) * hd)
  -- a map that already names a mixer "mamba1" (a hybrid teacher) is swapped to that spec
  local swap_opts = {init = "mil", config = not map.mixers.mamba1 and cfg or nil}
  mmr = {}
  for i, l in ipairs(layers) do
    local mixer_name = map.layout.layers and map.layout.layers[l + 1]
    if mixer_name and map.mixers[mixer_name].type ~= "mha" then -- attention layers only
      units = units + o.mmr_steps * 3
      goto next_layer
    end
    do
    local m <close> = hyb.train.clone(teacher)
    swap_opts.seed = o.seed + l
    m:swap(l, "mamba1", swap_opts)
    local tr <close> = hyb.train.trainer(m, {teacher = teacher, lr = o.mmr_lr, warmup = 0, steps = 0})
    local sum, n = 0, 0
    for step = 0, o.mmr_steps - 1 do
      local ids = ds:batch(step, o.batch, o.seq_len, o.seed)
      local st = tr:step(ids, o.batch, o.seq_len)
      if step >= o.mmr_steps // 2 then sum, n = sum + st.loss, n + 1 end
      units = units + 3
      prog:update(units, ("MMR layer %d (%d/%d)  step %d/%d  loss %.5f  ETA %s"):format(l, i, #layers, step + 1,
        o.mmr_steps, st.loss, P.duration(prog:eta(units))))
    end
    mmr[l] = sum / n
    rows[i].mmr = mmr[l]
    if prog.mode == "lines" then
      prog:log(("MMR layer %d: loss %.5f  (%d/%d, ETA %s)"):format(l, mmr[l], i, #layers, P.duration(prog:eta())))
    end
    end
    ::next_layer::
  end
end

prog:finish()

local function order_by(scores)
  local ord = {}
  for _, l in ipairs(layers) do ord[#ord + 1] = l end
  local function sc(l) return scores[l] or math.huge end -- unscored (not attention) layers last
  table.sort(ord, function(a, b) if sc(a) ~= sc(b) then return sc(a) < sc(b) end return a < b end)
  return ord
end
local order = order_by(mmr or loo)
local rank = {}
for i, l in ipairs(order) do rank[l] = i end
for _, r in ipairs(rows) do r.rank = rank[r.layer] end
table.sort(rows, function(a, b) return a.rank < b.rank end)
E.table({{"rank", "rank"}, {"layer", "layer"}, {"loo", "LOO rKL", "%.5f"}, {"mmr", "MMR loss", "%.5f"},
  {"secs", "s", "%.1f"}}, rows)
local function keyed(s)
  if not s then return nil end
  local t = {}
  for l, v in pairs(s) do t[tostring(l)] = v end
  return t
end
E.write(o.out, E.json({metric = mmr and "mmr_reverse_kl" or "loo_reverse_kl", teacher = o.teacher, data = o.data,
  order = order, loo = keyed(loo), mmr = keyed(mmr), loo_order = order_by(loo), mmr_steps = o.mmr_steps}) .. "\n")
print("wrote " .. o.out .. "; least important first: " .. table.concat(order, " "))
