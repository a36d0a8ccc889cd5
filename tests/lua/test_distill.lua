-- tests/lua/test_distill.lua: hyb.train / hyb.data.dataset bindings and scripts/distill.lua:
-- a run killed mid-stage (HYB_DISTILL_EXIT_AFTER makes it os.exit abruptly) and resumed with the
-- same command ends bitwise equal to an uninterrupted run; no *.tmp file is left and every
-- checkpoint on disk parses.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")

local root = os.getenv("HYB_SOURCE_DIR") or "."
local bin = arg[-1]
local tmp = H.tmpdir()
hyb.log_level("warn")

local exists = H.exists

local function sh(cmd)
  local ok, how, code = os.execute(cmd)
  return ok and 0 or code
end

local function tmp_files(dir)
  local p = io.popen("find '" .. dir .. "' -name '*.tmp*' | wc -l")
  local n = tonumber(p:read("a"))
  p:close()
  return n
end

H.run("lr schedule", function()
  local s = {lr = 1, min_lr = 0.1, warmup = 4, steps = 14}
  H.near(hyb.train.lr(0, s), 0.25, 1e-7)
  H.near(hyb.train.lr(4, s), 1.0, 1e-7)
  H.near(hyb.train.lr(8, s), 0.1 + 0.45 * (1 + math.cos(4 * math.pi / 9)), 1e-6)
  H.near(hyb.train.lr(13, s), 0.1, 1e-7)
  H.raises(function() hyb.train.lr(-1, s) end, "step")
  H.raises(function() hyb.train.lr(1, {lr = 1, bogus = 2}) end, "bogus")
end)

H.run("clone, freeze, trainer, checkpoint", function()
  local t = hyb.model(root .. "/graphs/tiny.toml", {seed = 1})
  local s = hyb.train.clone(t)
  H.check(s:param("model.norm.weight"):equal(t:param("model.norm.weight")), "clone copies params")
  H.eq(hyb.train.freeze(s, "model.layers.0.*"), 9, "layer 0 params frozen")
  H.eq(#hyb.train.frozen(s), 9, "frozen list")
  local before = s:param("model.layers.0.mlp.up_proj.weight"):clone()
  local tr = hyb.train.trainer(s, {teacher = t, lr = 1e-3, steps = 4, accum = 2})
  local ids = hyb.tensor({4, 16}, (function() local v = {} for i = 1, 64 do v[i] = (i * 37) % 256 end return v end)(), "i32")
  local st = tr:step(ids, 2, 16)
  H.check(st.loss >= 0 and st.rkl and st.step == 1 and st.lr > 0, "step stats")
  H.check(s:param("model.layers.0.mlp.up_proj.weight"):equal(before), "frozen param unchanged")
  local ck = tmp .. "/api/ck.safetensors"
  tr:save(ck, {note = "x", n = 5})
  local meta = hyb.train.checkpoint_meta(ck)
  H.eq(meta.note, "x", "meta string")
  H.eq(meta.n, "5", "meta number as string")
  H.eq(meta.step, "1", "meta step")
  local back = hyb.train.load(ck)
  H.check(back:param("model.norm.weight"):equal(s:param("model.norm.weight")), "checkpoint loads as a model")
  H.eq(#hyb.train.frozen(back), 9, "frozen flags in the checkpoint")
  local e = tr:eval(hyb.tensor({2, 16}, nil, "i32"), 2, 16)
  H.check(e.rkl and e.fkl and not e.ce, "eval parts without targets")
  H.raises(function() tr:step(ids, 2, 16, {mask = {}}) end, "mask")
  H.raises(function() hyb.train.trainer(s, {loss = "reverse_kl"}) end, "needs option 'teacher'")
  H.raises(function() hyb.train.trainer(s, {teacher = t, loss = "mix"}) end, "weights")
  H.raises(function() hyb.train.trainer(s, {teacher = t, loss = "nope"}) end, "option 'loss'")
  H.raises(function() tr:save(ck, {step = "1"}) end, "reserved")
  H.raises(function() hyb.train.load(tmp .. "/missing.gguf") end, "missing.gguf")
  s:swap(1, "identity")
  H.raises(function() tr:step(ids, 2, 16) end, "make a new trainer")
  local g = hyb.train.greedy(t, {1, 2, 3}, 5)
  H.eq(#g, 5, "greedy length")
end)

H.run("dataset", function()
  local ds = hyb.data.dataset{files = root .. "/examples/data", cache = tmp .. "/ds/data.bin", val_fraction = 0.1, seed = 2}
  local info = ds:info()
  H.check(info.train_tokens > 0 and info.val_tokens > 0 and not info.from_cache, "built")
  local again = hyb.data.dataset{files = root .. "/examples/data", cache = tmp .. "/ds/data.bin", val_fraction = 0.1, seed = 2}
  H.check(again:info().from_cache, "cached")
  local a = ds:batch(3, 4, 32, 9)
  local b = again:batch(3, 4, 32, 9)
  H.check(a:equal(b), "same batch for (seed, step)")
  local v1 = ds:val_batch(0, 2, 32)
  local v2 = again:val_batch(0, 2, 32)
  H.check(v1:equal(v2), "fixed held-out batch")
  H.raises(function() hyb.data.dataset{files = tmp .. "/none"} end, "cannot open")
  H.raises(function() hyb.data.dataset{files = root .. "/examples/data", bogus = 1} end, "bogus")
end)

H.run("distill: kill and resume equals an uninterrupted run", function()
  local t = hyb.model(root .. "/graphs/tiny.toml", {seed = 1})
  t:save(tmp .. "/teacher")
  local have_mamba = H.have_plugin("mamba1")
  local recipe = tmp .. "/r.toml"
  local f = assert(io.open(recipe, "w"))
  f:write(([[
[run]
teacher = "%s/teacher"
seed = 3
log_every = 100
eval_every = 3
eval_batches = 2
ckpt_every = 2
%s[stages.s1]
layers = [3]
%s
steps = 6
[stages.s2]
layers = [1]
mixer = "identity"
steps = 5
loss = "mix"
weights = {rkl = 1.0, ce = 0.5}
freeze = ["model.embed_tokens.weight"]
lr_scale = { "*" = 0.25, "model.layers.*" = 1.0 }
]]):format(tmp, H.tiny_recipe_data(root, 2), have_mamba and 'mixer = "mamba1"\nconfig = "d_inner = 128\\nd_xb = 64\\nd_state = 16"' or 'mixer = "identity"'))
  f:close()
  local cmd = ("'%s' run '%s/scripts/distill.lua' '%s' '%%s' > '%s/log.txt' 2>&1"):format(bin, root, recipe, tmp)
  H.eq(sh(cmd:format(tmp .. "/A")), 0, "uninterrupted run")
  H.check(exists(tmp .. "/A/s2/final.safetensors") and exists(tmp .. "/A/loss.svg"), "outputs")
  -- killed at update 3 (checkpoint at 2), then at update 6 of the second process (inside s2),
  -- then completed
  H.eq(sh("HYB_DISTILL_EXIT_AFTER=3 " .. cmd:format(tmp .. "/B")), 3, "first kill")
  H.eq(tmp_files(tmp .. "/B"), 0, "no tmp files after a kill")
  H.eq(hyb.train.checkpoint_meta(tmp .. "/B/s1/ckpt.safetensors").step, "2", "checkpoint parses")
  H.eq(sh("HYB_DISTILL_EXIT_AFTER=6 " .. cmd:format(tmp .. "/B")), 3, "second kill")
  H.eq(tmp_files(tmp .. "/B"), 0, "no tmp files after the second kill")
  H.check(exists(tmp .. "/B/s1/final.safetensors"), "stage 1 done before the second kill")
  H.eq(hyb.train.checkpoint_meta(tmp .. "/B/s2/ckpt.safetensors").step, "2", "stage 2 checkpoint")
  H.eq(sh(cmd:format(tmp .. "/B")), 0, "resumed run completes")
  local a = hyb.train.load(tmp .. "/A/s2/final.safetensors")
  local b = hyb.train.load(tmp .. "/B/s2/final.safetensors")
  local diff = 0
  for _, name in ipairs(a:params()) do
    if not a:param(name):equal(b:param(name)) then diff = diff + 1 end
  end
  H.eq(diff, 0, "parameters differing between the killed+resumed and the uninterrupted run")
  -- the metrics agree too (train losses per step; tok/s differs)
  local function losses(p)
    local r = {}
    for line in io.lines(p) do
      local k, st, si = line:match('"kind":"(%a+)"'), line:match('"step":(%d+)'), line:match('"stage_index":(%d+)')
      r[#r + 1] = k .. si .. ":" .. st .. ":" .. line:match('"loss":([^,}]+)')
    end
    return table.concat(r, "\n")
  end
  H.eq(losses(tmp .. "/B/metrics.jsonl"), losses(tmp .. "/A/metrics.jsonl"), "metrics.jsonl")
  local log = io.open(tmp .. "/log.txt"):read("a")
  H.check(log:find("lr groups: * x0.25, model.layers.* x1", 1, true) ~= nil, "stage 2 prints its lr groups")

  -- a bad lr_scale is an error that names the recipe, the stage and the key
  local function bad_recipe(line)
    local r2 = tmp .. "/bad.toml"
    local src = io.open(recipe):read("a"):gsub('lr_scale = [^\n]*', line)
    local g = assert(io.open(r2, "w"))
    g:write(src)
    g:close()
    local rc = sh(("'%s' run '%s/scripts/distill.lua' '%s' '%s/C' > '%s/bad.txt' 2>&1"):format(bin, root, r2, tmp, tmp))
    return rc, io.open(tmp .. "/bad.txt"):read("a")
  end
  local rc, msg = bad_recipe('lr_scale = { "nope.*" = 0.5 }')
  H.check(rc ~= 0 and msg:find("stage 's2': lr_scale pattern 'nope.*' matches no parameter", 1, true) ~= nil, msg)
  -- (recipelib: checked before anything runs, with the position in the file)
  rc, msg = bad_recipe('lr_scale = { "*" = "fast" }')
  H.check(rc ~= 0 and msg:find(":14: 'stages.s2.lr_scale.*' must be a number, got \"fast\"", 1, true) ~= nil, msg)
  rc, msg = bad_recipe('lr_scale = { "*" = -1.0 }')
  H.check(rc ~= 0 and msg:find("'stages.s2.lr_scale.*' = -1 is out of range: it must be in [0, 1e+06]", 1, true) ~= nil, msg)
  rc, msg = bad_recipe('lr_scale = 3')
  H.check(rc ~= 0 and msg:find("'stages.s2.lr_scale' must be a table", 1, true) ~= nil, msg)
end)

H.run("importance and eval scripts", function()
  local base = ("'%s' run '%s/scripts/%%s.lua' --teacher '%s/teacher' --data '%s/examples/data' --tokenizer bytes " ..
    "--batches 2 --seq-len 32 %%s > '%s/log2.txt' 2>&1"):format(bin, root, tmp, root, tmp)
  H.eq(sh(base:format("importance", "--mmr-steps 2 --out '" .. tmp .. "/rank.json'")), 0, "importance runs")
  local f = io.open(tmp .. "/rank.json")
  local text = f and f:read("a") or ""
  if f then f:close() end
  local order = text:match('"order": %[([^%]]*)%]') or ""
  local seen = {}
  for v in order:gmatch("%d+") do seen[#seen + 1] = tonumber(v) end
  table.sort(seen)
  H.eq(table.concat(seen, ","), "0,1,2,3", "the ranking lists every layer once")
  H.check(text:match('"loo": {') ~= nil, "LOO scores")
  H.eq(sh(base:format("eval", "--prompts 2 --gen 8 --out '" .. tmp .. "/eval.json' '" .. tmp .. "/A/s1/model' '" ..
    tmp .. "/A/s2/final.safetensors'")), 0, "eval runs")
  f = io.open(tmp .. "/eval.json")
  text = f and f:read("a") or ""
  if f then f:close() end
  local n = 0
  for _ in text:gmatch('"ppl": [%d.]+') do n = n + 1 end
  H.eq(n, 3, "three models evaluated (teacher + 2)")
  H.check(text:match('"agree": 1,') ~= nil, "the teacher agrees with itself")
  -- a ranking-driven stage picks the least important layers not yet swapped
  local r2 = tmp .. "/r2.toml"
  local g = assert(io.open(r2, "w"))
  g:write(([[
[run]
teacher = "%s/teacher"
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
[rank]
progressive = false
[train]
batch = 1
seq_len = 16
[stages.a]
lowest = 1
ranking = "%s/rank.json"
mixer = "identity"
steps = 1
[stages.b]
lowest = 2
ranking = "%s/rank.json"
mixer = "identity"
steps = 1
]]):format(tmp, root, tmp, tmp))
  g:close()
  H.eq(sh(("'%s' run '%s/scripts/distill.lua' '%s' '%s/C' > '%s/log3.txt' 2>&1"):format(bin, root, r2, tmp, tmp)), 0,
    "ranking recipe runs")
  local m = hyb.train.load(tmp .. "/C/b/final.safetensors")
  local ids = {}
  for v in order:gmatch("%d+") do ids[#ids + 1] = tonumber(v) end
  local pat = m:pattern()
  local want = {}
  for l = 0, 3 do want[l + 1] = "t" end
  for i = 1, 3 do want[ids[i] + 1] = "i" end
  H.eq(pat, table.concat(want), "the three least important layers are identity after two stages")
end)

os.execute("rm -rf '" .. tmp .. "'")
os.exit(H.done())
