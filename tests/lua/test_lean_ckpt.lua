-- tests/lua/test_lean_ckpt.lua: lean checkpoints (tr:save with {base =}) hold only the trainable
-- parameters and their moments plus the base's path and content hash; they restore exactly (a
-- resumed run is bitwise the uninterrupted one), load as models through their base (chains too),
-- and refuse a base that changed. Model snapshots ({optimizer = false}) cannot resume. hyb distill
-- writes lean checkpoints by default and ends bitwise where checkpoints = "full" ends.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")

local root = os.getenv("HYB_SOURCE_DIR") or "."
local bin = arg[-1]
local tmp = H.tmpdir()
hyb.log_level("warn")

local function size(p)
  local f = assert(io.open(p, "rb"))
  local n = f:seek("end")
  f:close()
  return n
end

local ids = hyb.tensor({2, 16}, (function() local v = {} for i = 1, 32 do v[i] = (i * 37) % 256 end return v end)(), "i32")

local function same_params(a, b)
  local diff = 0
  for _, name in ipairs(a:params()) do
    if not a:param(name):equal(b:param(name)) then diff = diff + 1 end
  end
  return diff
end

-- a student of the base: layer 1 trains, the rest is frozen
local function student_of(base)
  local s = hyb.train.load(base)
  hyb.train.freeze(s, "*")
  hyb.train.freeze(s, "model.layers.1.*", false)
  return s
end

H.run("lean save, load as a model, exact resume", function()
  local teacher = hyb.model(root .. "/graphs/tiny.toml", {seed = 1})
  teacher:save(tmp .. "/base")
  local base = tmp .. "/base"
  -- uninterrupted: 4 steps
  local a = student_of(base)
  local ta = hyb.train.trainer(a, {teacher = teacher, lr = 1e-3, steps = 4})
  for _ = 1, 4 do ta:step(ids, 2, 16) end
  -- interrupted after 2, saved lean and full
  local b = student_of(base)
  local tb = hyb.train.trainer(b, {teacher = teacher, lr = 1e-3, steps = 4})
  for _ = 1, 2 do tb:step(ids, 2, 16) end
  tb:save(tmp .. "/full.safetensors")
  tb:save(tmp .. "/lean.safetensors", {note = "x"}, {base = base})
  local meta = hyb.train.checkpoint_meta(tmp .. "/lean.safetensors")
  H.eq(meta.hyb_base_hash, hyb.train.file_hash(base), "the base's hash is recorded")
  H.check(meta.hyb_base:sub(-5) == "/base" and meta.hyb_base:sub(1, 1) == "/", "the base's absolute path")
  local lean_n, full_n = size(tmp .. "/lean.safetensors"), size(tmp .. "/full.safetensors")
  H.check(lean_n * 4 < full_n, ("lean %d bytes vs full %d"):format(lean_n, full_n))
  -- as a model: the base's frozen parameters + the file's trained ones
  local m = hyb.train.load(tmp .. "/lean.safetensors")
  H.eq(same_params(m, b), 0, "parameters differing between the lean checkpoint and the student")
  H.eq(#hyb.train.frozen(m), #hyb.train.frozen(b), "frozen flags")
  -- resume from the lean checkpoint into a student built from the base: bitwise the same end
  local c = student_of(base)
  local tc = hyb.train.trainer(c, {teacher = teacher, lr = 1e-3, steps = 4})
  H.eq(tc:load(tmp .. "/lean.safetensors").note, "x", "metadata")
  H.eq(tc:steps(), 2, "step restored")
  for _ = 1, 2 do tc:step(ids, 2, 16) end
  H.eq(same_params(c, a), 0, "parameters differing between the resumed and the uninterrupted run")
  -- a chain: a lean checkpoint on a lean checkpoint
  local d = hyb.train.load(tmp .. "/lean.safetensors")
  hyb.train.freeze(d, "*")
  hyb.train.freeze(d, "model.layers.2.*", false)
  local td = hyb.train.trainer(d, {teacher = teacher, lr = 1e-3, steps = 2})
  td:step(ids, 2, 16)
  td:save(tmp .. "/lean2.safetensors", nil, {base = tmp .. "/lean.safetensors"})
  H.eq(same_params(hyb.train.load(tmp .. "/lean2.safetensors"), d), 0, "a chain of lean checkpoints loads exactly")
  -- a snapshot without optimiser state loads as a model but cannot resume
  tb:save(tmp .. "/snap.safetensors", nil, {optimizer = false})
  H.check(size(tmp .. "/snap.safetensors") * 2 < full_n, "a snapshot is about a third of a full checkpoint")
  H.eq(same_params(hyb.train.load(tmp .. "/snap.safetensors"), b), 0, "snapshot as a model")
  local e = student_of(base)
  local te = hyb.train.trainer(e, {teacher = teacher, lr = 1e-3, steps = 4})
  H.raises(function() te:load(tmp .. "/snap.safetensors") end, "without optimiser state")
  -- a base that changed is refused, by load and by resume
  hyb.model(root .. "/graphs/tiny.toml", {seed = 2}):save(base)
  H.raises(function() hyb.train.load(tmp .. "/lean.safetensors") end, "has changed since the checkpoint was written")
  H.raises(function() te:load(tmp .. "/lean.safetensors") end, "has changed since")
  os.execute("rm -rf '" .. base .. "'")
  H.raises(function() hyb.train.load(tmp .. "/lean.safetensors") end, "its base")
  H.raises(function() tb:save(tmp .. "/x.safetensors", nil, {base = tmp .. "/nope"}) end, "base")
  H.raises(function() tb:save(tmp .. "/x.safetensors", nil, {bsae = base}) end, "bsae")
end)

H.run("distill: lean checkpoints by default, bitwise the full ones' result", function()
  hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
  local function recipe(mode)
    local p = tmp .. "/r_" .. mode .. ".toml"
    local f = assert(io.open(p, "w"))
    f:write(([[
[run]
teacher = "%s/teacher"
eval_batches = 1
ckpt_every = 2
checkpoints = "%s"
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
[train]
batch = 2
seq_len = 16
freeze = ["*"]
unfreeze = ["model.layers.*.mlp.*"]
[stages.s1]
layers = [3]
mixer = "identity"
steps = 3
[stages.s2]
layers = [2]
mixer = "identity"
steps = 3
]]):format(tmp, mode, root))
    f:close()
    return p
  end
  local function run(mode, out, env)
    return os.execute(("%s '%s' distill -q '%s' '%s/%s' > '%s/log.txt' 2>&1"):format(env or "", bin, recipe(mode), tmp,
      out, tmp))
  end
  H.check(run("full", "F"), "full run")
  H.check(run("lean", "L"), "lean run")
  -- killed after 5 updates (inside s2, its checkpoint at step 2 on s1's lean final), resumed
  H.check(not run("lean", "K", "HYB_DISTILL_EXIT_AFTER=5"), "killed")
  H.eq(hyb.train.checkpoint_meta(tmp .. "/K/s2/ckpt.safetensors").hyb_base, tmp .. "/K/s1/final.safetensors",
    "s2's checkpoint is lean on s1's final")
  H.check(run("lean", "K"), "resumed")
  local f = hyb.train.load(tmp .. "/F/s2/final.safetensors")
  H.eq(same_params(hyb.train.load(tmp .. "/L/s2/final.safetensors"), f), 0, "lean vs full: differing parameters")
  H.eq(same_params(hyb.train.load(tmp .. "/K/s2/final.safetensors"), f), 0, "killed + resumed lean vs full")
  H.eq(same_params(hyb.train.load(tmp .. "/L/s2/model"), f), 0, "the exported model is whole")
  H.check(size(tmp .. "/L/s2/final.safetensors") < size(tmp .. "/F/s2/final.safetensors"), "lean final is smaller")
  H.eq(hyb.train.checkpoint_meta(tmp .. "/F/s2/final.safetensors").hyb_base, nil, "full: no base")
end)

os.execute("rm -rf '" .. tmp .. "'")
os.exit(H.done())
