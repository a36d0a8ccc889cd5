-- tests/lua/test_recipe.lua: recipes are validated whole before any work starts
-- (scripts/recipelib.lua): an unknown key names file:line:col and the nearest valid key, a wrong
-- type or an out-of-range value names the key, the value and the range; `hyb distill` with such
-- a recipe exits non-zero with one line and writes nothing. Also hyb.train.read_toml's positions.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")
local RL = require("recipelib")

local root = os.getenv("HYB_SOURCE_DIR") or "."
local bin = arg[-1]
local tmp = H.tmpdir()
hyb.log_level("warn")

-- a valid recipe; `edit` replaces its line `from` (a pattern) with `to`
local good = ([[
[run]
teacher = "%s/teacher"
seed = 3
eval_batches = 2
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
generate = { corpus = ["x"], n = 2 }
[train]
lr = 1e-3
batch = 2
seq_len = 32
lr_scale = { "*" = 0.5, "model.layers.*" = 1.0 }
[stages.s1]
layers = [3]
mixer = "identity"
steps = 2
]]):format(tmp, root)

local function write(name, text)
  local p = tmp .. "/" .. name
  local f = assert(io.open(p, "w"))
  f:write(text)
  f:close()
  return p
end

local function edit(from, to)
  local s, n = good:gsub(from, to, 1)
  assert(n == 1, "test recipe has no line " .. from)
  return s
end

-- RL.read on the text: the error message ("" when it passes)
local function check(text)
  local p = write("r.toml", text)
  local ok, err = pcall(RL.read, p)
  return ok and "" or tostring(err), p
end

H.run("read_toml positions", function()
  local p = write("pos.toml", "[a]\nx = 1\n  y = { z = 2 }\n[b.c]\nw = \"s\"\n")
  local t, pos = hyb.train.read_toml(p, {positions = true})
  H.eq(t.a.x, 1, "value")
  H.eq(pos["a.x"], p .. ":2:1", "key position")
  H.eq(pos["a.y.z"], p .. ":3:9", "inline table key position")
  H.eq(pos["b.c.w"], p .. ":5:1", "nested table key position")
  H.eq(select("#", hyb.train.read_toml(p)), 1, "one result without positions")
  H.raises(function() hyb.train.read_toml(p, {position = true}) end, "position")
end)

H.run("a valid recipe passes", function()
  H.eq(check(good), "", "the base recipe")
end)

H.run("unknown keys: file:line:col and the nearest valid key", function()
  local msg, p = check(edit("lr = 1e%-3", "learning_rat = 1e-4"))
  H.check(msg:find(p .. ":11:1: unknown key 'learning_rat' in [train] (did you mean 'lr'?)", 1, true) ~= nil, msg)
  msg = check(edit("seq_len = 32", "seq_lne = 32"))
  H.check(msg:find(":13:1: unknown key 'seq_lne' in [train] (did you mean 'seq_len'?)", 1, true) ~= nil, msg)
  msg = check(edit("steps = 2", "step = 2"))
  H.check(msg:find(":18:1: unknown key 'step' in stage 's1' (did you mean 'steps'?)", 1, true) ~= nil, msg)
  msg = check(edit("seed = 3", "sed = 3"))
  H.check(msg:find(":3:1: unknown key 'sed' in [run] (did you mean 'seed'?)", 1, true) ~= nil, msg)
  msg = check(edit("n = 2", "count = 2"))
  H.check(msg:find(":9:30: unknown key 'count' in 'data.generate'", 1, true) ~= nil, msg)
  H.check(not msg:find("did you mean", 1, true), "no suggestion for a far key: " .. msg)
  msg = check(edit("%[train%]", "[trian]"))
  H.check(msg:find(":10:2: unknown key 'trian' in the recipe", 1, true) ~= nil and msg:find("did you mean 'train'", 1, true), msg)
  msg = check(edit("batch = 2", "batch_size = 2"))
  H.check(msg:find("unknown key 'batch_size' in [train] (did you mean 'batch'?)", 1, true) ~= nil, msg)
  msg = check(good .. "bogus_top = 1\n")
  H.check(msg:find("unknown key 'bogus_top'", 1, true) ~= nil, msg)
end)

H.run("types and ranges name the key, the value and the range", function()
  local msg = check(edit("lr = 1e%-3", "lr = \"fast\""))
  H.check(msg:find(":11:1: 'train.lr' must be a number, got \"fast\"", 1, true) ~= nil, msg)
  msg = check(edit("lr = 1e%-3", "lr = -1.0"))
  H.check(msg:find(":11:1: 'train.lr' = -1 is out of range: it must be in [0, 10]", 1, true) ~= nil, msg)
  msg = check(edit("batch = 2", "batch = 2.5"))
  H.check(msg:find("'train.batch' must be an integer, got 2.5", 1, true) ~= nil, msg)
  msg = check(edit("batch = 2", "batch = 0"))
  H.check(msg:find("'train.batch' = 0 is out of range: it must be in [1, 65536]", 1, true) ~= nil, msg)
  msg = check(edit("val_fraction = 0.1", "val_fraction = 1.0"))
  H.check(msg:find("'data.val_fraction' = 1 is out of range: it must be in [0, 1)", 1, true) ~= nil, msg)
  msg = check(edit("steps = 2", "steps = 0"))
  H.check(msg:find("'stages.s1.steps' = 0 is out of range", 1, true) ~= nil, msg)
  msg = check(edit("layers = %[3%]", "layers = [1, -2]"))
  H.check(msg:find("'stages.s1.layers' element 2 = -2 is out of range", 1, true) ~= nil, msg)
  msg = check(edit("layers = %[3%]", "layers = 3"))
  H.check(msg:find("'stages.s1.layers' must be a list of integers, got 3", 1, true) ~= nil, msg)
  msg = check(edit("mixer = \"identity\"", "mixer = \"identity\"\ninit = \"mli\""))
  H.check(msg:find("'stages.s1.init' = \"mli\" is not one of: mil, random (did you mean 'mil'?)", 1, true) ~= nil, msg)
  msg = check(edit("seq_len = 32", "seq_len = 32\nloss = \"reverse-kl\""))
  H.check(msg:find("is not one of: reverse_kl, forward_kl, ce, mix (did you mean 'reverse_kl'?)", 1, true) ~= nil, msg)
  msg = check(edit('"%*" = 0.5', '"*" = -0.5'))
  H.check(msg:find(":14:14: 'train.lr_scale.*' = -0.5 is out of range: it must be in [0, 1e+06]", 1, true) ~= nil, msg)
  msg = check(edit("tokenizer = \"bytes\"", "tokenizer = \"bytes\"\nspecial = \"yes\""))
  H.check(msg:find("'data.special' must be true or false, got \"yes\"", 1, true) ~= nil, msg)
  msg = check(edit("files = [^\n]*", "files = [1, 2]"))
  H.check(msg:find("'data.files' element 1 must be a string, got 1", 1, true) ~= nil, msg)
  msg = check(edit("%[stages.s1%]", "[stages]\ns1 = 5\n[stages.s2]"))
  H.check(msg:find("'stages.s1' must be a table", 1, true) ~= nil, msg)
end)

H.run("rules across keys", function()
  local msg = check(edit("steps = 2\n", ""))
  H.check(msg:find("stage 's1': steps is missing", 1, true) ~= nil, msg)
  msg = check(edit("layers = %[3%]", "lowest = 2"))
  H.eq(msg, "", "lowest without ranking: ranked in the run (progressive, the default)")
  msg = check((edit("layers = %[3%]", "lowest = 2"):gsub("%[stages.s1%]", "[rank]\nprogressive = false\n[stages.s1]")))
  H.check(msg:find("stage 's1': lowest needs ranking (a file from hyb importance) when [rank] progressive = false", 1, true) ~= nil, msg)
  msg = check((edit("layers = %[3%]", "lowest = 2"):gsub("%[stages.s1%]", "[rank]\nmethod = \"mmr\"\n[stages.s1]")))
  H.check(msg:find("[rank] method = \"mmr\" probes a mixer, but the stage's mixer is identity", 1, true) ~= nil, msg)
  msg = check((good:gsub("%[stages.s1%]", "[rank]\nprogresive = true\n[stages.s1]")))
  H.check(msg:find(":16:1: unknown key 'progresive' in [rank] (did you mean 'progressive'?)", 1, true) ~= nil, msg)
  msg = check((good:gsub("%[stages.s1%]", "[rank]\nsteps = 0\n[stages.s1]")))
  H.check(msg:find("'rank.steps' = 0 is out of range: it must be in [1, 2^53]", 1, true) ~= nil, msg)
  msg = check((good:gsub("%[stages.s1%]", "[rank]\ncriterion = \"nlll\"\n[stages.s1]")))
  H.check(msg:find("'rank.criterion' = \"nlll\" is not one of: rkl, nll (did you mean 'nll'?)", 1, true) ~= nil, msg)
  msg = check(edit("layers = %[3%]", "ranking = \"r.json\""))
  H.check(msg:find("ranking is used with lowest = n", 1, true) ~= nil, msg)
  msg = check(edit("layers = %[3%]", "layers = [3]\nlowest = 1\nranking = \"r.json\""))
  H.check(msg:find("give layers or lowest", 1, true) ~= nil, msg)
  msg = check(edit("lr = 1e%-3", "lr = 1e-3\nmin_lr = 1e-2"))
  H.check(msg:find("min_lr = 0.01 is above lr = 0.001", 1, true) ~= nil, msg)
  msg = check(edit("seq_len = 32", "seq_len = 32\nloss = \"mix\""))
  H.check(msg:find("loss = \"mix\" needs weights", 1, true) ~= nil, msg)
  msg = check(edit("teacher = [^\n]*\n", ""))
  H.check(msg:find("[run] teacher is missing", 1, true) ~= nil, msg)
  msg = check((good:gsub("%[stages.s1%].*$", "")))
  H.check(msg:find("no [stages.<name>] tables", 1, true) ~= nil, msg)
  msg = check(edit("%[run%]", "[run"))
  H.check(msg:find(":1:", 1, true) ~= nil and not msg:find("read_toml", 1, true), "a TOML syntax error: " .. msg)
end)

H.run("hyb distill: a typo fails before any work, one line, nothing written", function()
  hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
  local p = write("typo.toml", edit("lr = 1e%-3", "learning_rat = 1e-4"))
  local cmd = ("'%s' distill '%s' '%s/out' > '%s/log.txt' 2>&1"):format(bin, p, tmp, tmp)
  local ok, _, code = os.execute(cmd)
  H.check(not ok and code == 1, "exit status 1")
  local log = io.open(tmp .. "/log.txt"):read("a")
  H.eq(log, "hyb: " .. p .. ":11:1: unknown key 'learning_rat' in [train] (did you mean 'lr'?); valid keys: " ..
    "accum, batch, clip, freeze, loss, lr, lr_scale, min_lr, seq_len, temperature, unfreeze, warmup, weight_decay, " ..
    "weights\n", "the whole output")
  H.check(not H.exists(tmp .. "/out"), "nothing written")
  -- a layer beyond the teacher's is caught once the teacher is loaded, before the data
  p = write("layer.toml", edit("layers = %[3%]", "layers = [4]"))
  ok = os.execute(("'%s' distill '%s' '%s/out2' > '%s/log.txt' 2>&1"):format(bin, p, tmp, tmp))
  log = io.open(tmp .. "/log.txt"):read("a")
  H.check(not ok and log:find(p .. ":16:1: stage 's1': layers element 1 = 4 is out of range: the teacher has 4 layers",
    1, true) ~= nil, log)
  H.check(not H.exists(tmp .. "/out2/data.bin"), "no data tokenized")
  -- the mixer and its config (the plugin's own key checks) are tried before the data too
  p = write("mixer.toml", edit("mixer = \"identity\"", "mixer = \"mamba9\""))
  ok = os.execute(("'%s' distill '%s' '%s/out3' > '%s/log.txt' 2>&1"):format(bin, p, tmp, tmp))
  log = io.open(tmp .. "/log.txt"):read("a")
  H.check(not ok and log:find(p .. ":17:1: stage 's1': mixer \"mamba9\": ", 1, true) ~= nil and
    log:find("unknown mixer type 'mamba9'", 1, true) ~= nil, log)
  H.check(not H.exists(tmp .. "/out3/data.bin"), "no data tokenized (mixer)")
  if H.have_plugin("mamba1") then
    p = write("config.toml", edit("mixer = \"identity\"", "mixer = \"mamba1\"\nconfig = \"d_inner = 128\\nd_xb = 64\\nd_stat = 16\""))
    ok = os.execute(("'%s' distill '%s' '%s/out4' > '%s/log.txt' 2>&1"):format(bin, p, tmp, tmp))
    log = io.open(tmp .. "/log.txt"):read("a")
    H.check(not ok and log:find(p .. ":18:1: stage 's1': mixer \"mamba1\" with this config: ", 1, true) ~= nil and
      log:find("unknown key 'd_stat' at the top level (did you mean 'd_state'?)", 1, true) ~= nil, log)
    H.check(not H.exists(tmp .. "/out4/data.bin"), "no data tokenized (config)")
  end
end)

os.execute("rm -rf '" .. tmp .. "'")
os.exit(H.done())
