-- tests/lua/test_distill_stages.lua: scripts/distill.lua runs two stages that both swap layers to
-- the mamba1 plugin with a `config` (stage 2's student, loaded from stage 1's checkpoint, already
-- has a mamba1 mixer in its layer map; model:swap refuses a config for such a mixer, so distill.lua
-- must drop it). Progressive staging: each `lowest` stage re-ranks the layers still attention with
-- the current student against the teacher (MMR probes), records its choice in metrics.jsonl,
-- <stage>/ranking.json and report.md/json, and a run killed after a stage's choice resumes with
-- the same layers and ends bitwise equal. Skips when the mamba1 plugin is not built.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")

local root = os.getenv("HYB_SOURCE_DIR") or "."
local bin = arg[-1]
hyb.log_level("warn")
local have_mamba = H.have_plugin("mamba1")

H.run("two mamba1 stages with config", function()
  if not have_mamba then print("skip: no mamba1 plugin") return end
  local tmp = H.tmpdir()
  hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
  local recipe = tmp .. "/r.toml"
  local f = assert(io.open(recipe, "w"))
  local stage = 'mixer = "mamba1"\nconfig = "d_inner = 128\\nd_xb = 64\\nd_state = 16"\nsteps = 1\n'
  f:write(([[
[run]
teacher = "%s/teacher"
eval_batches = 1
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
[train]
lr = 1e-4
batch = 1
seq_len = 16
[stages.a]
layers = [1]
%s
[stages.b]
layers = [2]
%s]]):format(tmp, root, stage, stage))
  f:close()
  local ok = os.execute(("'%s' run '%s/scripts/distill.lua' '%s' '%s/out' > '%s/log.txt' 2>&1"):format(bin, root,
    recipe, tmp, tmp))
  if not ok then
    local l = io.open(tmp .. "/log.txt")
    if l then io.stderr:write(l:read("a")) l:close() end
  end
  H.check(ok, "both stages run")
  local m = hyb.train.load(tmp .. "/out/b/final.safetensors")
  H.eq(m:pattern():sub(2, 3), "mm", "layers 1 and 2 are mamba1 after stage b")
  os.execute("rm -rf '" .. tmp .. "'")
end)

H.run("progressive MMR stages re-rank with the current student", function()
  if not have_mamba then print("skip: no mamba1 plugin") return end
  local K = require("rankinglib")
  local tmp = H.tmpdir()
  hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
  local recipe = tmp .. "/p.toml"
  local f = assert(io.open(recipe, "w"))
  local stage = 'mixer = "mamba1"\nconfig = "d_inner = 128\\nd_xb = 64\\nd_state = 16"\nsteps = 2\n'
  f:write(([[
[run]
teacher = "%s/teacher"
eval_batches = 1
ckpt_every = 1
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
[rank]
steps = 3
lr = 3e-3
batches = 2
[train]
lr = 1e-3
batch = 1
seq_len = 16
[stages.a]
lowest = 1
%s
[stages.b]
lowest = 2
%s]]):format(tmp, root, stage, stage))
  f:close()
  local function run(out, env)
    local ok = os.execute(("%s '%s' distill '%s' '%s/%s' > '%s/%s.log' 2>&1"):format(env or "", bin, recipe, tmp, out,
      tmp, out))
    return ok
  end
  H.check(run("P", "HYB_TTY=1"), "progressive run")
  local plog = io.open(tmp .. "/P.log"):read("a")
  H.check(plog:find("%] +%d+%% stage 2/2 b  ranking layer %d %(%d/3%)  probe step 3/3  loss [%d.]+  ETA") ~= nil,
    "the bar shows the ranking's progress")
  -- one rank line per stage; stage b ranks the 3 layers left with a's layer already converted
  local ranks = {}
  for line in io.lines(tmp .. "/P/metrics.jsonl") do
    if line:find('"kind":"rank"', 1, true) then ranks[#ranks + 1] = K.json_decode(line) end
  end
  H.eq(#ranks, 2, "one rank line per stage")
  local a, b = ranks[1], ranks[2]
  H.eq(a.method, "mmr")
  H.eq(#a.candidates, 4, "stage a ranks all 4 layers")
  H.eq(b.converted_before, 1, "stage b's student has a's layer converted")
  H.eq(#b.candidates, 3, "stage b ranks the 3 layers left")
  for _, l in ipairs(b.candidates) do H.check(l ~= a.layers[1], "a's layer is not a candidate again") end
  -- b's scores are measured on the current student: the same layer scores differently than in a
  local l0 = b.candidates[1]
  H.check(math.abs(b.scores[tostring(l0)].kl_mil - a.scores[tostring(l0)].kl_mil) > 1e-6,
    "stage b's MIL KL of a layer differs from stage a's (another student)")
  -- the chosen layers are the lowest-scoring ones
  local want = {b.order[1], b.order[2]}
  table.sort(want)
  H.eq(table.concat(b.layers, ","), table.concat(want, ","), "b takes its two lowest scores")
  for i = 2, #b.order do
    H.check(b.scores[tostring(b.order[i - 1])].kl_after <= b.scores[tostring(b.order[i])].kl_after, "order ascending")
  end
  local m = hyb.train.load(tmp .. "/P/b/final.safetensors")
  local pat = {"t", "t", "t", "t"}
  for _, l in ipairs({a.layers[1], b.layers[1], b.layers[2]}) do pat[l + 1] = "m" end
  H.eq(m:pattern(), table.concat(pat), "the student has the chosen layers as mamba1")
  local rep = io.open(tmp .. "/P/report.md"):read("a")
  H.check(rep:find("| 2 | b | mmr | " .. table.concat(b.layers, " ") .. " |", 1, true) ~= nil, "report.md: " .. rep)
  H.check(rep:find("## Stage 2 'b': mmr over 3 remaining layers (1 converted before)", 1, true) ~= nil, "report details")
  local rj = K.json_decode(io.open(tmp .. "/P/report.json"):read("a"))
  H.eq(#rj.stages, 2, "report.json lists both stages")
  -- killed after stage b's choice and first step: the resumed run reuses b/ranking.json
  H.check(not run("Q", "HYB_DISTILL_EXIT_AFTER=3"), "the run stops after 3 updates")
  H.check(H.exists(tmp .. "/Q/b/ranking.json") and H.exists(tmp .. "/Q/b/ckpt.safetensors"), "b chose and checkpointed")
  H.check(run("Q"), "resumed")
  local log = io.open(tmp .. "/Q.log"):read("a")
  H.check(log:find("stage 2/2 'b': layers [" .. table.concat(b.layers, ",") .. "] (mmr, from ", 1, true) ~= nil,
    "the resumed stage takes its layers from ranking.json: " .. log)
  H.check(not log:find("ranking 3 remaining", 1, true), "and does not rank again")
  local n = 0
  for line in io.lines(tmp .. "/Q/metrics.jsonl") do if line:find('"kind":"rank"', 1, true) then n = n + 1 end end
  H.eq(n, 2, "no rank line is repeated")
  local q = hyb.train.load(tmp .. "/Q/b/final.safetensors")
  for _, name in ipairs(m:params()) do
    H.check(q:param(name):equal(m:param(name)), name .. ": resumed run equals the uninterrupted one")
  end
  os.execute("rm -rf '" .. tmp .. "'")
end)

H.run("progressive: a ranking file for the first stage, then LOO by held-out NLL", function()
  local K = require("rankinglib")
  local tmp = H.tmpdir()
  hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
  local recipe = tmp .. "/l.toml"
  local f = assert(io.open(recipe, "w"))
  f:write(([[
[run]
teacher = "%s/teacher"
eval_batches = 1
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
[rank]
criterion = "nll"
batches = 2
[train]
batch = 1
seq_len = 16
[stages.a]
lowest = 1
ranking = "%s/rank.json"
mixer = "identity"
steps = 1
[stages.b]
lowest = 1
ranking = "%s/rank.json"
mixer = "identity"
steps = 1
]]):format(tmp, root, tmp, tmp))
  f:close()
  -- a ranking file serves the first stage (nothing converted yet); b ranks in the run
  local g = assert(io.open(tmp .. "/rank.json", "w"))
  g:write('{"order": [2, 0, 1, 3]}\n')
  g:close()
  H.check(os.execute(("'%s' distill --quiet '%s' '%s/L' > '%s/l.log' 2>&1"):format(bin, recipe, tmp, tmp)), "LOO run")
  local a = K.json_decode(io.open(tmp .. "/L/a/ranking.json"):read("a"))
  H.eq(a.source, "file", "stage a takes the file's ranking")
  H.eq(a.layers[1], 2, "the file's least important layer")
  local b = K.json_decode(io.open(tmp .. "/L/b/ranking.json"):read("a"))
  H.eq(table.concat(b.candidates, ","), "0,1,3", "b ranks the rest")
  H.eq(b.method, "loo")
  H.eq(b.criterion, "nll")
  H.eq(#b.candidates, 3, "b ranks the layers a left")
  local best, bl = math.huge, nil
  for l, sc in pairs(b.scores) do if sc.nll < best then best, bl = sc.nll, tonumber(l) end end
  H.eq(b.layers[1], bl, "b takes the layer whose removal costs the least NLL")
  os.execute("rm -rf '" .. tmp .. "'")
end)

os.exit(H.done())
