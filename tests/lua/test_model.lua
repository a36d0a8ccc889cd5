-- tests/lua/test_model.lua: layer maps, models, losses, AdamW, swap/identity and checkpoints from
-- Lua, on graphs/tiny.toml (byte-level, 4 attention layers). Checks the bindings' wiring against
-- values computed here independently (cross-entropy from the logits), that a short training run
-- lowers the loss, that save -> load gives identical logits, and that every bad argument raises a
-- clear error. Run: hyb run tests/lua/test_model.lua (HYB_PLUGIN_PATH must find libhyb-mha.so).
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
local hyb = require("hyb")

local MAP = H.root .. "/graphs/tiny.toml"
local DATA = H.root .. "/examples/data"
local f = io.open(MAP)
if not f then H.skip(MAP .. " not found") end
f:close()

local tmp = H.tmpdir()
local B, T = 2, 8

-- Deterministic ids in [0, 256) without Lua-side randomness.
local function ids_table(n, salt)
  local t = {}
  for i = 1, n do t[i] = (i * 37 + salt * 11) % 256 end
  return t
end

H.run("layer map", function()
  local map = hyb.layermap(MAP)
  H.eq(map:n_layers(), 4, "n_layers")
  H.eq(map:pattern(), "tttt", "pattern")
  H.check(map:describe():find("tiny", 1, true), "describe names the model")
  local c = map:config()
  H.check(c.d_model == 128 and c.vocab_size == 256 and c.max_seq == 256, "config dims")
  H.check(tostring(map):find("hyb.layermap(", 1, true), "tostring")
  H.raises(function() hyb.layermap(7) end, "hyb.layermap: path must be a string, got 7")
  H.raises(function() hyb.layermap(tmp .. "/missing.toml") end, "missing.toml")
  H.raises(function() hyb.parse_layermap("[model]\nd_model = 'x'\n", "inline.toml") end, "inline.toml:")
  H.raises(function() map.n_layers(1) end, "layermap:n_layers: expected a hyb.layermap, got 1")
end)

H.run("build: determinism and bad arguments", function()
  local m1 = hyb.model(MAP, {seed = 5})
  local m2 = hyb.model(hyb.layermap(MAP), {seed = 5})
  local m3 = hyb.model(MAP, {seed = 6})
  local ids = ids_table(B * T, 1)
  local a = m1:forward(ids, B, T, {grad = false})
  local s = a:shape()
  H.check(#s == 3 and s[1] == B and s[2] == T and s[3] == 256, "logits [B, T, V]")
  H.check(a:equal(m2:forward(ids, B, T, {grad = false})), "same seed (path or map): same logits")
  H.check(not a:equal(m3:forward(ids, B, T, {grad = false})), "another seed: other logits")
  H.eq(m1:n_params(), m3:n_params(), "n_params")
  H.check(m1:n_params() > 100000, "n_params counts elements")
  H.check(#m1:params() > 10 and m1:params()[1]:find("model.", 1, true) == 1, "params are HF names")
  H.check(m1:layout():find("tiny", 1, true), "layout text")
  H.eq(m1:pattern(), "tttt", "model pattern")
  H.raises(function() hyb.model(42) end, "hyb.model: expected a layer map path (string) or a hyb.layermap, got 42")
  H.raises(function() hyb.model(MAP, {sed = 1}) end, "hyb.model: unknown option 'sed' (known: seed)")
  H.raises(function() hyb.model(MAP, {seed = -1}) end, "hyb.model: option 'seed' must be an integer >= 0, got -1")
  H.raises(function() hyb.model(MAP, 3) end, "hyb.model: options must be a table, got 3")
  H.raises(function() hyb.model(tmp .. "/nope.toml") end, "nope.toml")
  local bad = hyb.parse_layermap([[
[model]
name = "bad"
d_model = 16
n_layers = 1
vocab_size = 8
d_ff = 32
max_seq = 16
[mixers.x]
type = "no_such_mixer"
symbol = "x"
[layout]
pattern = "x"
]], "bad.toml")
  H.raises(function() hyb.model(bad) end, "no_such_mixer")
end)

H.run("forward: bad arguments and stale tensors", function()
  local m = hyb.model(MAP, {seed = 1})
  local ids = ids_table(B * T, 2)
  H.raises(function() m:forward(ids, 0, T) end, "model:forward: B must be an integer in [1, 1048576], got 0")
  H.raises(function() m:forward(ids, B, 300) end, "model:forward: T must be an integer in [1, 256], got 300")
  H.raises(function() m:forward(ids, B, T + 1) end, "model:forward: ids must hold 18 entries (B*T), got 16")
  local bad = ids_table(B * T, 2)
  bad[3] = 256
  H.raises(function() m:forward(bad, B, T) end, "model:forward: ids entry 3 must be an integer in [0, 255], got 256")
  bad[3] = -1
  H.raises(function() m:forward(bad, B, T) end, "ids entry 3 must be an integer in [0, 255], got -1")
  bad[3] = "x"
  H.raises(function() m:forward(bad, B, T) end, 'ids entry 3 must be an integer in [0, 255], got string "x"')
  H.raises(function() m:forward("abc", B, T) end, "ids must be a table of integers or a hyb.tensor, got string")
  H.raises(function() m:forward(hyb.tensor({B * T}, nil, "bf16"), B, T) end, "ids must be an i32 or f32 tensor, got bf16")
  H.raises(function() m:forward(ids, B, T, {gard = false}) end, "unknown option 'gard' (known: grad, reset)")
  H.raises(function() m.forward(ids, B, T) end, "model:forward: expected a hyb.model, got table")
  -- ids as tensors: i32 and integral f32 give the same logits as the table
  local ref = m:forward(ids, B, T, {grad = false}):clone()
  local it = hyb.tensor({B, T}, ids, "i32")
  H.check(ref:equal(m:forward(it, B, T, {grad = false})), "i32 tensor ids")
  H.check(ref:equal(m:forward(hyb.tensor({B * T}, ids), B, T, {grad = false})), "f32 tensor ids")
  local frac = hyb.tensor({B * T}, ids)
  frac:set(1, 0.5)
  H.raises(function() m:forward(frac, B, T) end, "ids entry 1 is 0.5, not an integer")
  -- graph tensors go stale at the next forward
  local l1 = m:forward(ids, B, T)
  local keep = l1:clone()
  m:forward(ids, B, T)
  H.raises(function() l1:get(1, 1, 1) end, "is stale: it belonged to a model graph that was reset")
  H.eq(tostring(l1), "hyb.tensor(stale)", "tostring of a stale tensor")
  H.check(keep:equal(ref), "a clone survives the next forward")
  -- {reset = false} keeps the previous forward's tensors in the graph
  local g1 = m:forward(ids, B, T)
  local g2 = m:forward(ids, B, T, {reset = false})
  H.check(g1:equal(g2), "reset = false: the earlier logits stay valid")
  m:loss(g2, ids):backward()
  H.check(m:graph_stats().nodes > 0, "graph_stats counts nodes")
end)

H.run("plugins", function()
  local list = hyb.plugins()
  local mha
  for _, p in ipairs(list) do
    if p.name == "mha" then mha = p end
  end
  H.check(mha ~= nil, "hyb.plugins() lists mha")
  if mha then
    H.check(mha.version:match("^%d+%.%d+"), "version string")
    H.check(mha.path:find("libhyb-mha.so", 1, true), "path to the shared object")
    H.check(#mha.devices >= 1 and mha.devices[1] == "cpu", "devices")
    H.check(#mha.description > 0, "description")
  end
  H.check(type(hyb.plugin_path()) == "string" and #hyb.plugin_path() > 0, "plugin_path")
end)

-- Cross-entropy of logits [n, V] (Lua tables) against targets, weighted by mask: independent of C.
local function ce_ref(lt, targets, mask)
  local sum, wsum = 0, 0
  local n = 0
  for b = 1, #lt do
    for t = 1, #lt[b] do
      n = n + 1
      local row = lt[b][t]
      local mx = -math.huge
      for v = 1, #row do mx = math.max(mx, row[v]) end
      local z = 0
      for v = 1, #row do z = z + math.exp(row[v] - mx) end
      local w = mask and mask[n] or 1
      if targets[n] >= 0 then
        sum = sum + w * (mx + math.log(z) - row[targets[n] + 1])
        wsum = wsum + w
      end
    end
  end
  return sum / wsum
end

H.run("losses: values and bad arguments", function()
  local m = hyb.model(MAP, {seed = 2})
  local ids, targets = ids_table(B * T, 3), ids_table(B * T, 4)
  local logits = m:forward(ids, B, T)
  local lt = logits:totable()
  local loss = m:loss(logits, targets)
  H.near(loss:value(), ce_ref(lt, targets), 1e-4, "ce matches an independent computation")
  H.near(loss:value(), math.log(256), 0.2, "a fresh model is near uniform")
  local mask = {}
  for i = 1, B * T do mask[i] = (i % 3 == 0) and 1 or 0 end
  H.near(m:loss(logits, targets, {mask = mask}):value(), ce_ref(lt, targets, mask), 1e-4, "masked ce")
  local ign = ids_table(B * T, 4)
  ign[1], ign[5] = -100, -1
  H.near(m:loss(logits, ign):value(), ce_ref(lt, ign), 1e-4, "negative targets are ignored")
  H.check(tostring(loss):find("hyb.loss(ce", 1, true), "tostring")
  -- KL: a model against a copy of its own logits is 0; against another model it is > 0
  local same = m:loss(logits, nil, {kind = "kl_reverse", teacher = logits:clone()})
  H.near(same:value(), 0, 1e-6, "reverse KL to itself is 0")
  local other = hyb.model(MAP, {seed = 3})
  local tl = other:forward(ids, B, T, {grad = false}):clone()
  local kr = m:loss(logits, nil, {kind = "kl_reverse", teacher = tl})
  local kf = m:loss(logits, nil, {kind = "kl_forward", teacher = tl, temperature = 2})
  H.check(kr:value() > 0 and kf:value() > 0, "KL to another model is positive")
  -- bad arguments
  H.raises(function() m:loss(logits, {1, 2}) end, "model:loss: targets must hold 16 entries (B*T), got 2")
  local bt = ids_table(B * T, 4)
  bt[2] = 256
  H.raises(function() m:loss(logits, bt) end, "targets entry 2 must be an integer in [-2147483648, 255], got 256")
  H.raises(function() m:loss(logits) end, 'model:loss: kind "ce" needs targets')
  H.raises(function() m:loss(logits, targets, {kind = "mse"}) end, "option 'kind' must be \"ce\", \"kl_forward\" or \"kl_reverse\", got \"mse\"")
  H.raises(function() m:loss(logits, nil, {kind = "kl_reverse"}) end, "needs option 'teacher'")
  H.raises(function() m:loss(logits, targets, {kind = "kl_reverse", teacher = tl}) end, "takes no targets")
  H.raises(function() m:loss(logits, targets, {teacher = tl}) end, "option 'teacher' is only used by kind")
  H.raises(function() m:loss(logits, nil, {kind = "kl_forward", teacher = hyb.zeros({2, 2})}) end,
    "teacher logits [2, 2] f32 must match the student's [2, 8, 256] f32")
  H.raises(function() m:loss(logits, nil, {kind = "kl_forward", teacher = tl, temperature = 0}) end,
    "option 'temperature' must be > 0, got 0")
  H.raises(function() m:loss(logits, targets, {mask = {1}}) end, "option 'mask' must hold 16 entries (B*T), got 1")
  local negmask = {}
  for i = 1, B * T do negmask[i] = 1 end
  negmask[4] = -1
  H.raises(function() m:loss(logits, targets, {mask = negmask}) end, "option 'mask' entry 4 must be a finite weight >= 0, got -1")
  H.raises(function() m:loss(tl, targets) end, "model:loss: logits must be the output of this model's forward")
  H.raises(function() m:loss(hyb.zeros({3}), targets) end, "logits must be the output of this model's forward")
  H.raises(function() m:loss(logits, targets, {knid = "ce"}) end, "unknown option 'knid'")
end)

H.run("backward rules and gradients", function()
  local m = hyb.model(MAP, {seed = 4})
  local ids, targets = ids_table(B * T, 5), ids_table(B * T, 6)
  local name = "model.embed_tokens.weight"
  local p = m:param(name)
  local ps = p:shape()
  H.check(ps[1] == 256 and ps[2] == 128, "embedding shape")
  m:zero_grad()
  H.eq(m:grad(name):max_abs_diff(hyb.zeros({256, 128})), 0, "zero_grad")
  local loss = m:loss(m:forward(ids, B, T), targets)
  loss:backward()
  H.check(m:grad(name):max_abs_diff(hyb.zeros({256, 128})) > 0, "backward fills grads")
  H.raises(function() loss:backward() end, "loss:backward: backward already ran on this graph")
  local old = m:loss(m:forward(ids, B, T), targets)
  m:forward(ids, B, T)
  H.raises(function() old:backward() end, "the graph of this loss was reset by a later forward")
  H.check(old:value() > 0, "value() still works after the reset")
  local ng = m:loss(m:forward(ids, B, T, {grad = false}), targets)
  H.raises(function() ng:backward() end, "the forward ran with {grad = false}")
  local l2 = m:loss(m:forward(ids, B, T), targets)
  H.raises(function() l2:backward("x") end, 'loss:backward: scale must be a number, got string "x"')
  H.raises(function() l2.backward(m) end, "loss:backward: expected a hyb.loss, got hyb.model")
  H.raises(function() m:param("nope") end, "model:param: the model has no parameter 'nope'")
  H.raises(function() m:param(3) end, "model:param: name must be a string, got 3")
  -- gradient accumulation: backward with scale 2 doubles the gradient
  m:zero_grad()
  m:loss(m:forward(ids, B, T), targets):backward()
  local g1 = m:grad(name):clone()
  m:zero_grad()
  m:loss(m:forward(ids, B, T), targets):backward(2.0)
  local g2 = m:grad(name)
  local twice = g1:clone()
  H.check(g2:max_abs_diff(g1) > 0, "scaled grads differ")
  H.near(g2:max(), 2 * g1:max(), 1e-5 * math.abs(g1:max()) + 1e-9, "scale 2 doubles the gradient")
  H.check(twice:equal(g1), "clone of a grad is independent")
end)

H.run("optimiser: bad arguments", function()
  local m = hyb.model(MAP, {seed = 1})
  H.raises(function() hyb.optim.adamw(m, {lr = -1}) end, "hyb.optim.adamw: option 'lr' must be > 0, got -1")
  H.raises(function() hyb.optim.adamw(m, {lr = "fast"}) end, "option 'lr' must be a finite number, got string \"fast\"")
  H.raises(function() hyb.optim.adamw(m, {betas = {1, 0.9}}) end, "betas[1] must be in [0, 1), got 1")
  H.raises(function() hyb.optim.adamw(m, {betas = 0.9}) end, "option 'betas' must be a table {beta1, beta2}, got 0.9")
  H.raises(function() hyb.optim.adamw(m, {weight_decay = -0.1}) end, "option 'weight_decay' must be >= 0")
  H.raises(function() hyb.optim.adamw(m, {clip = -1}) end, "option 'clip' must be >= 0")
  H.raises(function() hyb.optim.adamw(m, {momentum = 0.9}) end, "unknown option 'momentum' (known: lr, weight_decay, betas, eps, clip)")
  H.raises(function() hyb.optim.adamw("m") end, "hyb.optim.adamw: expected a hyb.model, got string \"m\"")
  local opt = hyb.optim.adamw(m, {lr = 1e-3})
  H.raises(function() opt:set_lr(-1) end, "opt:set_lr: lr must be >= 0, got -1")
  H.raises(function() opt.step(m) end, "opt:step: expected a hyb.adamw optimiser, got hyb.model")
  opt:set_lr(5e-4)
  H.near(opt:lr(), 5e-4, 1e-10, "set_lr")
  H.eq(opt:steps(), 0, "no steps yet")
end)

H.run("a short training run lowers the loss", function()
  local m = hyb.model(MAP, {seed = 7})
  local tok = hyb.data.bytes(DATA)
  local opt = hyb.optim.adamw(m, {lr = 3e-3, weight_decay = 0.01, clip = 1.0})
  local Bt, Tt = 4, 32
  local first, last = nil, {}
  local p0 = m:param("model.norm.weight"):clone()
  for step = 1, 20 do
    local ids, tg = hyb.data.batch(tok, Bt, Tt, step, 11)
    local loss = m:loss(m:forward(ids, Bt, Tt), tg)
    opt:zero_grad()
    loss:backward()
    local norm = opt:step()
    H.check(norm > 0 and norm == norm, "finite positive grad norm at step " .. step)
    first = first or loss:value()
    if step > 15 then last[#last + 1] = loss:value() end
  end
  local mean = 0
  for _, v in ipairs(last) do mean = mean + v / #last end
  H.eq(opt:steps(), 20, "steps counted")
  H.check(mean < 0.8 * first, ("loss fell: %.3f -> %.3f"):format(first, mean))
  H.check(not p0:equal(m:param("model.norm.weight")), "parameters moved")
end)

H.run("save, load, load_params: identical logits", function()
  local m = hyb.model(MAP, {seed = 9})
  -- one optimiser step so the weights differ from any fresh init
  local opt = hyb.optim.adamw(m, {lr = 1e-2})
  local ids, tg = ids_table(B * T, 7), ids_table(B * T, 8)
  m:loss(m:forward(ids, B, T), tg):backward()
  opt:step()
  local dir = tmp .. "/ckpt/nested"
  m:save(dir)
  local ref = m:forward(ids, B, T, {grad = false}):clone()
  local back = hyb.load(dir)
  H.eq(back:pattern(), m:pattern(), "pattern survives")
  H.eq(back:n_params(), m:n_params(), "n_params survives")
  H.eq(back:forward(ids, B, T, {grad = false}):max_abs_diff(ref), 0, "hyb.load: identical logits")
  local fresh = hyb.model(MAP, {seed = 10})
  H.check(fresh:forward(ids, B, T, {grad = false}):max_abs_diff(ref) > 0, "a fresh model differs")
  fresh:load_params(dir .. "/model.safetensors")
  H.eq(fresh:forward(ids, B, T, {grad = false}):max_abs_diff(ref), 0, "load_params: identical logits")
  H.raises(function() hyb.load(tmp .. "/nothing-here") end, "nothing-here")
  H.raises(function() hyb.load(nil) end, "hyb.load: dir must be a string, got nil")
  H.raises(function() m:save(5) end, "model:save: dir must be a string, got 5")
  H.raises(function() fresh:load_params(tmp .. "/none.safetensors") end, "none.safetensors")
  local fd = io.open(tmp .. "/file", "w")
  fd:write("x")
  fd:close()
  H.raises(function() m:save(tmp .. "/file/sub") end, "model:save: cannot create directory")
end)

H.run("resume: model + optimiser state give a bitwise identical continuation", function()
  local tok = hyb.data.bytes(DATA)
  local function train(m, opt, from, to)
    for step = from, to do
      local ids, tg = hyb.data.batch(tok, 2, 16, step, 5)
      local loss = m:loss(m:forward(ids, 2, 16), tg)
      opt:zero_grad()
      loss:backward()
      opt:step()
    end
  end
  local m = hyb.model(MAP, {seed = 12})
  local opt = hyb.optim.adamw(m, {lr = 2e-3, clip = 1.0})
  train(m, opt, 1, 3)
  local dir = tmp .. "/resume"
  m:save(dir)
  opt:save(dir .. "/optim/state.safetensors")
  train(m, opt, 4, 6)
  local m2 = hyb.load(dir)
  local opt2 = hyb.optim.adamw(m2, {lr = 2e-3, clip = 1.0})
  opt2:load(dir .. "/optim/state.safetensors")
  H.eq(opt2:steps(), 3, "step restored")
  train(m2, opt2, 4, 6)
  local ids = ids_table(B * T, 3)
  H.eq(m2:forward(ids, B, T, {grad = false}):max_abs_diff(m:forward(ids, B, T, {grad = false})), 0,
    "resumed run matches the uninterrupted one")
  local opt3 = hyb.optim.adamw(m2)
  H.raises(function() opt3:load(tmp .. "/none.safetensors") end, "opt:load:")
  H.raises(function() opt3:save(7) end, "opt:save: path must be a string, got 7")
  H.raises(function() opt3:load({}) end, "opt:load: path must be a string, got table")
  -- a model whose layer 0 attention has other shapes (2 heads): the moments do not fit
  local narrow = hyb.model(MAP, {seed = 1})
  narrow:swap(0, "mha", {config = "n_heads = 2\nn_kv_heads = 2\nhead_dim = 32\n"})
  local opt4 = hyb.optim.adamw(narrow)
  H.raises(function() opt4:load(dir .. "/optim/state.safetensors") end, "q_proj")
end)

H.run("swap and set_identity", function()
  local m = hyb.model(MAP, {seed = 3})
  local ids = ids_table(B * T, 9)
  local p = m:param("model.layers.1.self_attn.q_proj.weight")
  local opt = hyb.optim.adamw(m)
  local n0 = m:n_params()
  local before = m:forward(ids, B, T, {grad = false}):clone()
  m:set_identity(1)
  H.check(m:n_params() < n0, "identity layer drops the mixer's parameters")
  H.check(m:pattern() ~= "tttt", "pattern changed: " .. m:pattern())
  H.raises(function() p:get(1, 1) end, "is stale: its model's parameters were replaced")
  H.raises(function() opt:step() end, "the model's parameters changed (swap or close) after this optimiser was made")
  local after = m:forward(ids, B, T, {grad = false})
  H.check(after:max_abs_diff(before) > 0, "identity changes the output")
  H.raises(function() m:swap(1, "attn", {init = "mil"}) end, "identity layer")
  m:swap({1}, "attn", {seed = 5})
  H.eq(m:pattern(), "tttt", "swapped back to attention")
  H.eq(m:n_params(), n0, "parameters back")
  local opt2 = hyb.optim.adamw(m, {lr = 1e-3})
  m:loss(m:forward(ids, B, T), ids):backward()
  H.check(opt2:step() > 0, "a new optimiser works after the swap")
  H.raises(function() m:swap(4, "attn") end, "model:swap: layer must be an integer in [0, 3], got 4")
  H.raises(function() m:swap({0, 0}, "attn") end, "model:swap: layer 0 is listed twice")
  H.raises(function() m:swap({}, "attn") end, "model:swap: layers must not be empty")
  H.raises(function() m:swap(0, 5) end, "model:swap: mixer must be a string")
  H.raises(function() m:swap(0, "attn", {init = "magic"}) end, "option 'init' must be \"random\", \"mil\", \"dil\" or \"from_old\", got \"magic\"")
  H.raises(function() m:swap(0, "attn", {config = "n_heads = 4"}) end, "is a mixer of the layer map")
  H.raises(function() m:swap(0, "no_such_plugin_type") end, "no_such_plugin_type")
  H.eq(m:pattern(), "tttt", "failed swaps leave the model unchanged")
  H.raises(function() m:set_identity("x") end, "model:set_identity: layers must be a layer index or a table of them")
  -- a plugin type with an inline config (same shapes as the map's attention)
  m:swap(2, "mha", {config = "n_heads = 4\nn_kv_heads = 2\nhead_dim = 32\n"})
  H.eq(m:n_params(), n0, "inline-config mha has the same parameter count")
  local dir = tmp .. "/swapped"
  m:save(dir)
  local back = hyb.load(dir)
  H.eq(back:forward(ids, B, T, {grad = false}):max_abs_diff(m:forward(ids, B, T, {grad = false})), 0,
    "a swapped model saves and loads")
end)

H.run("clone", function()
  local m = hyb.model(MAP, {seed = 21})
  m:set_identity(3)
  local c = m:clone()
  local ids = ids_table(B * T, 5)
  local ref = m:forward(ids, B, T, {grad = false}):clone()
  H.eq(c:pattern(), m:pattern(), "clone keeps the layout (identity layer too)")
  H.eq(c:forward(ids, B, T, {grad = false}):max_abs_diff(ref), 0, "clone: identical logits")
  local opt = hyb.optim.adamw(c, {lr = 1e-2})
  c:loss(c:forward(ids, B, T), ids):backward()
  opt:step()
  H.check(c:forward(ids, B, T, {grad = false}):max_abs_diff(ref) > 0, "training the clone changes it")
  H.eq(m:forward(ids, B, T, {grad = false}):max_abs_diff(ref), 0, "... and not the original")
  H.raises(function() m.clone(1) end, "model:clone: expected a hyb.model, got 1")
end)

H.run("close", function()
  local m = hyb.model(MAP, {seed = 1})
  local lg = m:forward(ids_table(B * T, 1), B, T)
  getmetatable(m).__close(m)
  H.raises(function() m:forward({}, 1, 1) end, "model:forward: the hyb.model is closed")
  H.raises(function() lg:get(1, 1, 1) end, "stale")
  H.eq(tostring(m), "hyb.model(closed)", "tostring of a closed model")
  do
    local c <close> = hyb.model(MAP, {seed = 1})
    H.eq(c:pattern(), "tttt", "to-be-closed model")
  end
  collectgarbage()
  collectgarbage()
  H.check(true, "gc after close")
end)

-- issue 16: a model saved by hyb that no HF config can express (an identity layer keeping its
-- MLP, as set_identity leaves it) has only layermap.toml + safetensors: hyb.llm opens it from
-- layermap.toml, with the tokenizer given, and generates what the in-memory model predicts
H.run("a saved hybrid without config.json is a model for hyb.llm", function()
  local src = io.open(MAP):read("a"):gsub("vocab_size = 256", "vocab_size = 902")
  local m = hyb.model(hyb.parse_layermap(src, "tiny902.toml"), {seed = 3})
  m:set_identity({1})
  local dir = tmp .. "/no_config"
  m:save(dir)
  H.check(io.open(dir .. "/config.json") == nil, "config.json written for an unexpressible model")
  local tokjson = (os.getenv("HYB_TEST_DATA") or (H.root .. "/tests/data")) .. "/tokenizer/llama3_tiny.tokenizer.json"
  H.raises(function() hyb.llm(dir) end, "--tokenizer PATH")
  local llm = hyb.llm(dir, {tokenizer = tokjson, max_ctx = 32})
  local ids = llm:encode("hello world")
  local r = llm:generate(ids, {max_tokens = 4})
  H.eq(#r.ids, 4, "generated ids")
  -- the same greedy continuation from the model in memory: argmax of its logits, token by token
  local seq = {}
  for i, v in ipairs(ids) do seq[i] = v end
  for k = 1, 4 do
    local lg = m:forward(seq, 1, #seq, {grad = false})
    local best, bi = -math.huge, -1
    for v = 1, 902 do
      local x = lg:get(1, #seq, v)
      if x > best then best, bi = x, v - 1 end
    end
    H.eq(r.ids[k], bi, "greedy token " .. k)
    seq[#seq + 1] = bi
  end
  llm:close()
end)

H.rmdir(tmp)
os.exit(H.done())
