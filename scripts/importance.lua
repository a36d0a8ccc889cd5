-- scripts/importance.lua: layer importance rankings for choosing which attention layers to
-- replace (SPEC.md section 5, Apriel-H1 staging; the scores are scripts/rankinglib.lua's).
--
--   hyb importance --teacher T --data FILES [--out ranking.json] [--loo-by rkl|nll] [--mmr-steps 0] ...
--
-- Leave-one-out (LOO): each layer in turn is replaced by identity (model:set_identity on a clone
-- of the teacher) and scored on --batches fixed held-out batches by two numbers: the reverse KL
-- to the teacher (per token) and the teacher-forced log-likelihood of the held-out text (mean
-- token NLL, a benchmark-style score: how well the LOO model still predicts real text).
-- --loo-by picks which one ranks (default rkl). Least important = smallest score.
-- MMR (with --mmr-steps N > 0 and the mamba1 plugin): each attention layer alone is swapped to
-- mamba1 with MIL init (shapes from the teacher's attention config), every other parameter is
-- frozen, and only that mixer trains for N updates (AdamW, constant --mmr-lr, reverse KL against
-- the teacher, training batches of the same data); the score is the held-out reverse KL after
-- the probe (also recorded: right after MIL, and the ratio after / MIL). Least important =
-- smallest KL after the probe.
-- Writes JSON {"metric", "order" (least important first; from MMR when it ran, else LOO by
-- --loo-by), "loo": {layer: rkl}, "loo_nll": {layer: nll}, "teacher_nll", "mmr": {layer: rkl after},
-- "mmr_mil": {layer: rkl after MIL}, "mmr_recovered": {layer: after / MIL}, ...}
-- (scripts/distill.lua reads "order") and prints a table.
-- Progress on stderr: a bar redrawn in place on a terminal (layer, score, ETA of the whole run),
-- else one line per layer; --quiet prints only the table and errors (HYB_TTY=1/0 overrides).
local hyb = require("hyb")
local E = require("evallib")
local P = require("progresslib")
local K = require("rankinglib")

local usage = [=[usage: hyb importance --teacher PATH --data FILES [--tokenizer bytes|PATH] [--device cpu|cuda[:N]] [--batches 4]
       [--batch 2] [--seq-len 128] [--layers 0,1,...] [--loo-by rkl|nll] [--mmr-steps 0] [--mmr-lr 3e-3]
       [--out ranking.json] [--cache PATH] [--val-fraction 0.05] [--seed 1]
       [--include GLOBS] [--exclude GLOBS] [--max-bytes N] [--special] [--quiet]]=]
local o = E.parse_or_usage(arg, E.data_spec{layers = "", loo_by = "rkl", mmr_steps = 0, mmr_lr = 3e-3,
  out = "ranking.json"}, usage)

if o.loo_by ~= "rkl" and o.loo_by ~= "nll" then
  io.stderr:write("hyb: option --loo-by must be rkl or nll, got \"", o.loo_by, "\"\n", usage, "\n")
  os.exit(2)
end
local teacher_path = E.expand(o.teacher)
local load_opts = E.load_opts(o, "importance")
local teacher = hyb.train.load(teacher_path, load_opts)
-- under mpirun: rank 0 tokenizes (and writes --cache) first, then the others read
local ds = hyb.comm.rank() == 0 and E.dataset(o, teacher_path) or nil
hyb.comm.barrier(math.max(hyb.comm.timeout(), 3600))
ds = ds or E.dataset(o, teacher_path)
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
  total = #layers * o.batches + (mmr_on and #layers * (o.mmr_steps * 3 + 2 * o.batches) or 0)}
local units = 0

-- LOO
local cache = {} -- the teacher's held-out logits, shared by LOO and MMR
local rows, rowof = {}, {}
local _, teacher_nll = K.heldout(teacher, teacher, ds, o.batches, o.batch, o.seq_len, cache)
local loo = K.loo(teacher, teacher, ds, layers, {batches = o.batches, batch = o.batch, seq_len = o.seq_len,
  cache = cache, on_layer = function(i, l, sc, secs)
    rows[#rows + 1] = {layer = l, loo = sc.rkl, nll = sc.nll, secs = secs}
    rowof[l] = rows[#rows]
    units = units + o.batches
    prog:update(units, ("LOO layer %d (%d/%d)  rKL %.5f  NLL %.4f  ETA %s"):format(l, i, #layers, sc.rkl, sc.nll,
      P.duration(prog:eta(units))))
    if prog.mode == "lines" then
      prog:log(("LOO layer %d: rKL %.5f  NLL %.4f  (%d/%d, ETA %s)"):format(l, sc.rkl, sc.nll, i, #layers,
        P.duration(prog:eta())))
    end
  end})

-- under mpirun the layers were split over the ranks: the rows of the other ranks' layers
for _, l in ipairs(layers) do
  if not rowof[l] and loo[l] then
    rows[#rows + 1] = {layer = l, loo = loo[l].rkl, nll = loo[l].nll}
    rowof[l] = rows[#rows]
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
  if not attn then error("hyb importance: MMR needs attention layers (mixer type mha) in the teacher", 0) end
  local hd = attn.head_dim or (map.model.d_model // attn.n_heads)
  local cfg = ("d_inner = %d\nd_xb = %d\nd_state = 16"):format(attn.n_heads * hd, (attn.n_kv_heads or attn.n_heads) * hd)
  local cand = {}
  for _, l in ipairs(layers) do
    local mixer_name = map.layout.layers and map.layout.layers[l + 1]
    if mixer_name and map.mixers[mixer_name].type ~= "mha" then -- attention layers only
      units = units + o.mmr_steps * 3 + 2 * o.batches
    else
      cand[#cand + 1] = l
    end
  end
  local cur_i, cur_l = 1, cand[1]
  mmr = K.mmr(teacher, teacher, ds, cand, {mixer = "mamba1", init = "mil",
    -- a map that already names a mixer "mamba1" (a hybrid teacher) is swapped to that spec
    config = not map.mixers.mamba1 and cfg or nil,
    steps = o.mmr_steps, lr = o.mmr_lr, batch = o.batch, seq_len = o.seq_len, batches = o.batches, seed = o.seed,
    cache = cache,
    on_step = function(step, st)
      units = units + 3
      prog:update(units, ("MMR layer %d (%d/%d)  step %d/%d  loss %.5f  ETA %s"):format(cur_l, cur_i, #cand, step,
        o.mmr_steps, st.loss, P.duration(prog:eta(units))))
    end,
    on_layer = function(i, l, sc)
      units = units + 2 * o.batches
      local r = rowof[l]
      r.mmr, r.mil, r.rec = sc.kl_after, sc.kl_mil, sc.recovered
      if prog.mode == "lines" then
        prog:log(("MMR layer %d: rKL %.5f after %d steps, %.5f after MIL (x%.3f)  (%d/%d, ETA %s)"):format(l,
          sc.kl_after, o.mmr_steps, sc.kl_mil, sc.recovered, i, #cand, P.duration(prog:eta())))
      end
      cur_i, cur_l = i + 1, cand[i + 1] or l
    end})
end

if mmr then -- the other ranks' MMR scores (gathered by K.mmr)
  for l, sc in pairs(mmr) do
    local r = rowof[l]
    if r and not r.mmr then r.mmr, r.mil, r.rec = sc.kl_after, sc.kl_mil, sc.recovered end
  end
end
prog:finish()
if hyb.comm.rank() ~= 0 then os.exit(0) end -- rank 0 reports and writes

local function order_by(scores, key)
  local ord = K.order(scores, key)
  local seen = {}
  for _, l in ipairs(ord) do seen[l] = true end
  for _, l in ipairs(layers) do if not seen[l] then ord[#ord + 1] = l end end -- unscored (not attention) layers last
  return ord
end
local order = mmr and order_by(mmr, "kl_after") or order_by(loo, o.loo_by)
local rank = {}
for i, l in ipairs(order) do rank[l] = i end
for _, r in ipairs(rows) do r.rank = rank[r.layer] end
table.sort(rows, function(a, b) return a.rank < b.rank end)
E.table({{"rank", "rank"}, {"layer", "layer"}, {"loo", "LOO rKL", "%.5f"}, {"nll", "LOO NLL", "%.4f"},
  {"mil", "MIL rKL", "%.5f"}, {"mmr", "MMR rKL", "%.5f"}, {"rec", "after/MIL", "%.3f"}, {"secs", "s", "%.1f"}}, rows)
print(("teacher held-out NLL %.4f"):format(teacher_nll))
local function field(s, k)
  if not s then return nil end
  local t = {}
  for l, v in pairs(s) do t[tostring(l)] = v[k] end
  return t
end
E.write(o.out, E.json({metric = mmr and "mmr_reverse_kl" or ("loo_" .. (o.loo_by == "nll" and "nll" or "reverse_kl")),
  teacher = o.teacher, data = o.data, order = order, loo = field(loo, "rkl"), loo_nll = field(loo, "nll"),
  teacher_nll = teacher_nll, loo_by = o.loo_by, mmr = field(mmr, "kl_after"), mmr_mil = field(mmr, "kl_mil"),
  mmr_recovered = field(mmr, "recovered"), loo_order = order_by(loo, "rkl"), loo_nll_order = order_by(loo, "nll"),
  mmr_steps = o.mmr_steps, mmr_lr = o.mmr_lr}) .. "\n")
print("wrote " .. o.out .. "; least important first: " .. table.concat(order, " "))
