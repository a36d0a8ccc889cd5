-- scripts/mil_check.lua: does MIL initialisation give a better starting point than random init?
-- (SPEC.md section 4). Swaps the same layers of a clone of the teacher to mamba1 twice, once with
-- MIL init and once with random init, and measures, before any training, on the held-out split:
-- perplexity and the reverse / forward KL to the teacher (per token, averaged); then greedy-
-- generates --gen tokens from a few ChatML prompts with the teacher and the MIL hybrid. A last row
-- has the same layers as identity (removed), the baseline the swapped layers must beat.
-- With --train-steps N, both hybrids are then distilled for N updates (reverse KL, only the
-- swapped-in mixers trained, same data order, AdamW at --train-lr with 2 warmup steps, accum 2)
-- and measured again: whether MIL is the better starting point for distillation.
--
--   hyb mil_check --teacher T --data FILES [--layers 5,15,25 | --ranking r.json --lowest 3]
--       [--batches 4] [--batch 2] [--seq-len 128] [--gen 40] [--cache PATH] [--out mil.json]
--
-- The mamba1 config is the recipe's (recipes/smollm2-h3-h6.toml): d_inner = n_heads * head_dim,
-- d_xb = n_kv_heads * head_dim, d_state 16, dt_rank 16, d_conv 4 (--config overrides it).
local hyb = require("hyb")
local E = require("evallib")
local G = require("genlib")

local usage = [=[usage: hyb mil_check --teacher PATH --data FILES [--layers 5,15,25] [--ranking r.json --lowest 3]
       [--batches 4] [--batch 2] [--seq-len 128] [--gen 40] [--seed 1] [--config TOML] [--out mil.json]
       [--cache PATH] [--val-fraction 0.05] [--tokenizer bytes|PATH] [--device cpu|cuda[:N]] [--train-steps 0] [--train-lr 3e-3]
       [--include GLOBS] [--exclude GLOBS] [--max-bytes N]]=]
local o = E.parse_or_usage(arg, E.data_spec{layers = "", ranking = "", lowest = 3, gen = 40,
  out = "mil.json", train_steps = 0, train_lr = 3e-3,
  config = "d_inner = 576\nd_xb = 192\nd_state = 16\ndt_rank = 16\nd_conv = 4"}, usage)
-- --gen (0: no generation) is an integer in [0, 2^24]: checked by E.parse_args

local teacher_path = E.expand(o.teacher)
local load_opts = E.load_opts(o, "mil_check")
local teacher = hyb.train.load(teacher_path, load_opts)
local ds, tok = E.dataset(o, teacher_path)

local layers = {}
if o.layers ~= "" then
  for v in o.layers:gmatch("[^,]+") do layers[#layers + 1] = math.tointeger(tonumber(v)) or error("--layers: not a layer number: " .. v, 0) end
elseif o.ranking ~= "" then
  local f = assert(io.open(E.expand(o.ranking), "r"))
  local list = f:read("a"):match('"order"%s*:%s*%[([^%]]*)%]') or error(o.ranking .. ": no \"order\" list")
  f:close()
  for v in list:gmatch("%-?%d+") do
    if #layers < o.lowest then layers[#layers + 1] = tonumber(v) end
  end
  table.sort(layers)
else
  layers = {5, 15, 25}
end
print("layers swapped to mamba1: " .. table.concat(layers, ","))

local prompts = {
  "What is the capital of France?",
  "Write a short sentence about the ocean.",
  "Give me three tips for staying healthy.",
}
local function generate(model)
  local outs = {}
  if o.gen == 0 then return outs end -- --gen 0: measure only
  for i, p in ipairs(prompts) do
    local ids = tok:encode(G.chatml({{role = "user", content = p}}))
    local gen = hyb.train.greedy(model, ids, o.gen)
    local cut = {}
    for _, t in ipairs(gen) do
      if t == tok:eos() then break end
      cut[#cut + 1] = t
    end
    outs[i] = tok:decode(cut)
  end
  return outs
end

local rows, gens = {}, {}
local function measure(name, model)
  local t0 = hyb.time()
  local r = E.heldout(model, teacher, ds, o.batches, o.batch, o.seq_len)
  r.model, r.pattern, r.secs = name, model:pattern(), hyb.time() - t0
  if model == teacher then r.rkl, r.fkl = 0, 0 end
  rows[#rows + 1] = r
  io.stderr:write(("measured %s (%.1f s)\n"):format(name, r.secs))
end

measure("teacher", teacher)
gens.teacher = generate(teacher)
local mil = hyb.train.clone(teacher)
mil:swap(layers, "mamba1", {init = "mil", seed = o.seed, config = o.config})
measure("mil", mil)
gens.mil = generate(mil)
local rnd = hyb.train.clone(teacher)
rnd:swap(layers, "mamba1", {init = "random", seed = o.seed, config = o.config})
measure("random", rnd)
gens.random = generate(rnd)

-- the same layers removed (identity): what the swapped layers add over nothing
local idm = hyb.train.clone(teacher)
idm:set_identity(layers)
measure("identity", idm)

-- both inits distilled the same way: the swapped mixers only, same batches
local function distill(name, model)
  hyb.train.freeze(model, "*")
  hyb.train.freeze(model, "model.layers.*.mixer.*", false)
  local tr = hyb.train.trainer(model, {teacher = teacher, lr = o.train_lr, min_lr = o.train_lr, warmup = 2,
    steps = o.train_steps, accum = 2, loss = "reverse_kl", temperature = 1, weight_decay = 0, clip = 1.0})
  local t0 = hyb.time()
  for s = 0, o.train_steps - 1 do tr:step(ds:batch(s, 2 * o.batch, o.seq_len, 1001), o.batch, o.seq_len) end
  io.stderr:write(("trained %s: %d updates in %.1f s\n"):format(name, o.train_steps, hyb.time() - t0))
  measure(("%s+%d"):format(name, o.train_steps), model)
end
-- --train-steps (an integer >= 0) and --train-lr (> 0): checked by E.parse_args
if o.train_steps > 0 then
  distill("mil", mil)
  distill("random", rnd)
end

E.table({{"model", "init"}, {"pattern", "layers"}, {"ppl", "ppl", "%.3f"}, {"rkl", "rKL", "%.4f"},
  {"fkl", "fKL", "%.4f"}, {"secs", "s", "%.1f"}}, rows)
for i, p in ipairs(o.gen > 0 and prompts or {}) do
  print(("\nprompt: %s"):format(p))
  for _, k in ipairs({"teacher", "mil", "random"}) do
    print(("  %-8s %q"):format(k .. ":", gens[k][i]))
  end
end
E.write(o.out, E.json({teacher = o.teacher, data = o.data, layers = layers, batches = o.batches, batch = o.batch,
  seq_len = o.seq_len, config = o.config, train_steps = o.train_steps, train_lr = o.train_lr, results = rows, prompts = prompts, generations = gens}) .. "\n")
print("wrote " .. o.out)
