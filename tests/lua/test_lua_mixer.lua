-- tests/lua/test_lua_mixer.lua: a mixer defined in Lua (examples/mixers/gla.lua, 55 lines, through
-- scripts/mixerlib.lua): its step form equals its parallel forward, its autodiff gradients match
-- finite differences, a tiny language model built from it trains (the loss falls) and generates
-- the same tokens by steps as by full forwards; bad mixer files and configs are clear errors.
-- Run: hyb run tests/lua/test_lua_mixer.lua
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
local hyb = require("hyb")
local ML = require("mixerlib")
local GLA = H.root .. "/examples/mixers/gla.lua"
local D = 16
-- a short directory: a layer-map mixer type ("lua:<path>") has at most 63 bytes
local function shortdir()
  local p = io.popen("mktemp -d /tmp/hlmXXXXXX")
  local d = p:read("l")
  p:close()
  return assert(d, "mktemp failed")
end

local function flat(t)
  local out = {}
  local function rec(v) if type(v) == "table" then for _, x in ipairs(v) do rec(x) end else out[#out + 1] = v end end
  rec(t:totable())
  return out
end

H.run("step equals the parallel forward", function()
  local m = ML.load(GLA, {heads = 2, head_dim = 4}, {d_model = D})
  m:init(1)
  local x = hyb.randn({2, 7, D}, 5)
  local y = hyb.no_grad(function() return m:forward(x) end)
  local ys = hyb.no_grad(function() return m:step_all(x) end)
  local d = y:max_abs_diff(ys:contiguous())
  H.check(d < 1e-5, "max |forward - steps| = " .. d)
  -- a snapshot taken mid-sequence and restored continues identically
  local st = m:new_state(2)
  local a
  for t = 1, 4 do a, st = m:step(x:narrow(2, t, 1), st) end
  local snap = ML.snapshot(st)
  local y5 = m:step(x:narrow(2, 5, 1), st)
  local y5b = m:step(x:narrow(2, 5, 1), snap)
  H.check(y5:contiguous():equal(y5b:contiguous()), "state snapshot/restore")
end)

H.run("gradients vs finite differences", function()
  local m = ML.load(GLA, {heads = 2, head_dim = 3}, {d_model = 6})
  m:init(2)
  local x = hyb.randn({2, 5, 6}, 9):requires_grad()
  local R = hyb.randn({2, 5, 6}, 10)
  local Rv = flat(R)
  local function L() local v, s = flat(hyb.no_grad(function() return m:forward(x) end)), 0
    for i = 1, #v do s = s + v[i] * Rv[i] end return s end
  ;(m:forward(x) * R):sum_all():backward()
  local worst, n = 0, 0
  local leaves = {x = x}
  for k, p in pairs(m.params) do leaves[k] = p end
  for name, t in pairs(leaves) do
    local s = t:shape()
    for j = 0, t:numel() - 1 do
      local idx, r = {}, j
      for k = #s, 1, -1 do idx[k] = r % s[k] + 1; r = r // s[k] end
      local function set(v) local a = {table.unpack(idx)} a[#a + 1] = v t:set(table.unpack(a)) end
      local x0 = t:get(table.unpack(idx))
      set(x0 + 1e-2); local lp = L()
      set(x0 - 1e-2); local lm = L()
      set(x0)
      local num, ana = (lp - lm) / 2e-2, t.grad:get(table.unpack(idx))
      local e = math.abs(num - ana) / math.max(1, math.abs(num))
      if e > worst then worst = e end
      n = n + 1
    end
  end
  H.check(worst < 2e-3, ("%d partial derivatives, worst relative error %.2e"):format(n, worst))
end)

-- A tiny LM: one-hot embedding (tied head), one block with the Lua mixer.
local V, B, T = 10, 8, 12
local function batch(seed)
  local ids, tg = {}, {}
  local r = hyb.randn({B * 2}, seed)
  local rv = flat(r)
  for b = 1, B do
    local s = {math.floor(math.abs(rv[2 * b - 1]) * 7) % V, math.floor(math.abs(rv[2 * b]) * 7) % V}
    for t = 3, T + 1 do s[t] = (s[t - 1] + s[t - 2]) % V end -- needs the previous token too
    for t = 1, T do ids[#ids + 1] = s[t]; tg[#tg + 1] = s[t + 1] end
  end
  return ids, tg
end
local function onehot(ids, n)
  local v = {}
  for i = 1, #ids do for c = 0, V - 1 do v[#v + 1] = ids[i] == c and 1 or 0 end end
  return hyb.tensor({#ids // n, n, V}, v)
end
local function lm(P, m, x, state)
  local h = x:matmul(P.E)
  local u = hyb.rms_norm(h, P.g1)
  local y, st
  if state then y, st = m:step(u, state) else y = m:forward(u) end
  return hyb.rms_norm(h + y, P.g2):matmul(P.E:transpose()), st
end

H.run("a tiny model with the Lua mixer trains and generates", function()
  local m = ML.load(GLA, {heads = 2, head_dim = 8}, {d_model = D})
  m:init(3)
  local P = {E = hyb.randn({V, D}, 4, 0.5):requires_grad(), g1 = hyb.ones({D}):requires_grad(),
             g2 = hyb.ones({D}):requires_grad()}
  local all = function()
    local t = {}
    for k, v in pairs(P) do t["lm." .. k] = {P, k} end
    for k in pairs(m.params) do t[k] = {m.params, k} end
    return t
  end
  local mom, b1, b2, lr = {}, 0.9, 0.99, 3e-2
  local first, last
  for step = 1, 60 do
    local ids, tg = batch(step % 4)
    local lg = lm(P, m, onehot(ids, T))
    local idx = hyb.tensor({B, T, 1}, tg, "i32")
    local loss = -hyb.gather(lg:log_softmax(-1), 3, idx):mean_all()
    loss:backward()
    local lv = loss:item()
    first = first or lv
    last = lv
    hyb.no_grad(function()
      for k, ref in pairs(all()) do
        local p = ref[1][ref[2]]
        local g = p.grad
        local s = mom[k] or {m = g * 0, v = g * 0}
        s.m = s.m * b1 + g * (1 - b1)
        s.v = s.v * b2 + g * g * (1 - b2)
        mom[k] = s
        local upd = (s.m / (1 - b1 ^ step)) / ((s.v / (1 - b2 ^ step)):sqrt() + 1e-8)
        ref[1][ref[2]] = (p - upd * lr):requires_grad()
      end
    end)
  end
  H.check(last < 0.5 * first, ("loss falls: %.4f -> %.4f"):format(first, last))
  -- greedy generation: by steps (the state) and by full forwards must agree token by token
  local seq = {3, 4}
  local stepped = {3, 4}
  hyb.no_grad(function()
    local st = m:new_state(1)
    local lg
    for i = 1, #stepped do lg, st = lm(P, m, onehot({stepped[i]}, 1), st) end
    for _ = 1, 8 do
      local nxt = lg:argmax_last()[1]
      stepped[#stepped + 1] = nxt
      lg, st = lm(P, m, onehot({nxt}, 1), st)
    end
    for _ = 1, 8 do
      local full = lm(P, m, onehot(seq, #seq))
      seq[#seq + 1] = full:argmax_last()[#seq]
    end
  end)
  H.eq(table.concat(stepped, " "), table.concat(seq, " "), "step decode = parallel decode")
  local right = 0
  for i = 3, #seq do if seq[i] == (seq[i - 1] + seq[i - 2]) % V then right = right + 1 end end
  print(("generated %s (%d of %d follow the rule)"):format(table.concat(seq, " "), right, #seq - 2))
end)

H.run("bad mixers are clear errors", function()
  local dir = H.tmpdir()
  local function file(name, text) local p = dir .. "/" .. name local f = assert(io.open(p, "w")) f:write(text) f:close() return p end
  H.raises(function() ML.load(GLA, {heads = 2, nheads = 3}, {d_model = D}) end, "lua mixer 'gla': unknown config key 'nheads' (known: head_dim, heads)", "config key")
  H.raises(function() ML.load(GLA, {heads = "2"}, {d_model = D}) end, "config key 'heads' must be a number", "config type")
  local nostep = file("nostep.lua", "local m = dofile('" .. GLA .. "') m.step = nil return m")
  H.raises(function() ML.load(nostep, nil, {d_model = D}) end, "missing function `step`", "missing step")
  local wrong = file("wrong.lua", "local m = dofile('" .. GLA .. "') m.forward = function(p, x) return x:narrow(2, 1, 1) end return m")
  local w = ML.load(wrong, nil, {d_model = D}, 3)
  w:init(1)
  H.raises(function() w:forward(hyb.randn({1, 4, D}, 1)) end, "lua mixer 'gla' (layer 3): forward returned [1, 1, 16] for an input [1, 4, 16]", "wrong shape")
  local bad = file("bad.lua", "return 42")
  H.raises(function() ML.load(bad) end, "must return a table", "not a table")
  local m = ML.load(GLA, nil, {d_model = D})
  m:init(1)
  H.raises(function() m:forward(hyb.randn({1, 4, 5}, 1)) end, "hyb.matmul: [1, 4, 5] @ [16, 16]: inner dims differ", "an op's shape error names the mixer and the op")
  H.rmdir(dir)
end)

-- ---- the same mixer in a layer map: type = "lua:<path>" (runtime/lua_mixer.c) ------------------
local MAP = [[
[model]
name = "tinylua"
d_model = 32
n_layers = 2
vocab_size = 16
d_ff = 64
norm_eps = 1e-5
tie_embeddings = true
max_seq = 64

[mixers.attn]
type = "mha"
symbol = "t"
n_heads = 2
n_kv_heads = 1
head_dim = 16
rope_theta = 10000.0

[mixers.gla]
type = "lua:examples/mixers/gla.lua"
symbol = "g"
heads = 2
head_dim = 8

[layout]
pattern = "PATTERN"
]]
local function map_of(pattern, extra)
  return hyb.parse_layermap(MAP:gsub("PATTERN", pattern):gsub("head_dim = 8\n", "head_dim = 8\n" .. (extra or "")), "inline.toml")
end
-- sequences a b a b ...: the next token is the one two back (the mixer must carry it)
local function abab(seed, Bn, Tn)
  local r = hyb.randn({2 * Bn}, seed):totable()
  local ids, tg = {}, {}
  for b = 1, Bn do
    local a, c = math.floor(math.abs(r[2 * b - 1]) * 40) % 16, math.floor(math.abs(r[2 * b]) * 40) % 16
    for t = 1, Tn do ids[#ids + 1] = t % 2 == 1 and a or c; tg[#tg + 1] = t % 2 == 1 and c or a end
  end
  return ids, tg
end

H.run("layer map: gradients through the model vs finite differences", function()
  local m = hyb.model(map_of("tg"), {seed = 1})
  local ids, tg = abab(5, 2, 6)
  local function L() return m:loss(m:forward(ids, 2, 6, {grad = false}), tg):value() end
  m:zero_grad()
  m:loss(m:forward(ids, 2, 6), tg):backward()
  local worst, n = 0, 0
  -- the Lua mixer's parameters, and one before it (its dx reaches layer 0)
  for _, name in ipairs({"model.layers.1.mixer.q_proj.weight", "model.layers.1.mixer.a_proj.weight",
                         "model.layers.1.mixer.o_proj.weight", "model.layers.0.self_attn.v_proj.weight"}) do
    local p, g = m:param(name), m:grad(name)
    local s = p:shape()
    for j = 1, 8 do
      local r, idx = (j * 37) % p:numel(), {}
      for k = #s, 1, -1 do idx[k] = r % s[k] + 1; r = r // s[k] end
      local a = {table.unpack(idx)}
      local x0 = p:get(table.unpack(idx))
      a[#a + 1] = x0 + 1e-2; p:set(table.unpack(a)); local lp = L()
      a[#a] = x0 - 1e-2; p:set(table.unpack(a)); local lm = L()
      a[#a] = x0; p:set(table.unpack(a))
      local num, ana = (lp - lm) / 2e-2, g:get(table.unpack(idx))
      worst = math.max(worst, math.abs(num - ana) / math.max(1e-2, math.abs(num)))
      n = n + 1
    end
  end
  H.check(worst < 1e-2, ("%d model gradients, worst relative error %.2e"):format(n, worst))
end)

H.run("layer map: trains, generates (steps = full forwards), saves and loads", function()
  local m = hyb.model(map_of("tg"), {seed = 1})
  local opt = hyb.optim.adamw(m, {lr = 3e-3})
  local first, last = 0, 0
  for step = 1, 60 do
    local ids, tg = abab(step % 4, 8, 16)
    local loss = m:loss(m:forward(ids, 8, 16), tg)
    loss:backward()
    opt:step()
    if step <= 4 then first = first + loss:value() / 4 end
    if step > 56 then last = last + loss:value() / 4 end
  end
  print(("layer map training: loss %.3f -> %.3f"):format(first, last))
  H.check(last < 0.7 * first, ("training loss falls: %.3f -> %.3f"):format(first, last))
  -- generation through the engine (prefill fills the Lua state, decode steps it) vs argmax of
  -- full forwards over the growing sequence
  local prompt = {3, 9, 3, 9, 3}
  local gen = hyb.train.greedy(m, prompt, 6)
  local seq = {table.unpack(prompt)}
  for _ = 1, 6 do
    local lg = m:forward(seq, 1, #seq, {grad = false})
    seq[#seq + 1] = lg:argmax_last()[#seq]
  end
  H.eq(table.concat(gen, " "), table.concat({table.unpack(seq, #prompt + 1)}, " "), "engine decode = full forwards")
  local dir = H.tmpdir()
  m:save(dir .. "/ck")
  local back = hyb.load(dir .. "/ck")
  local ids = abab(99, 2, 8)
  local a = m:forward(ids, 2, 8, {grad = false}):clone()
  local b = back:forward(ids, 2, 8, {grad = false}):clone()
  H.eq(a:max_abs_diff(b), 0, "a saved and loaded model gives the same logits")
  H.rmdir(dir)
end)

H.run("layer map: swap and bad input", function()
  local m = hyb.model(map_of("tt"), {seed = 2})
  m:swap({1}, "lua:examples/mixers/gla.lua", {config = "heads = 4\nhead_dim = 4"})
  H.check(m:layout():find("lua:examples/mixers/gla.lua", 1, true), "swapped in: " .. m:layout())
  local ids, tg = abab(1, 2, 8)
  local loss = m:loss(m:forward(ids, 2, 8), tg)
  loss:backward()
  H.check(m:grad("model.layers.1.mixer.q_proj.weight"):max_abs_diff(hyb.zeros({16, 32})) > 0, "the swapped Lua mixer gets gradients")
  -- MIL-style init from the attention it replaces (gla.lua's init_from), on a fresh model
  m = hyb.model(map_of("tt"), {seed = 5})
  local q = m:param("model.layers.0.self_attn.q_proj.weight"):clone()
  local k = m:param("model.layers.0.self_attn.k_proj.weight"):clone() -- [16, 32]: one kv head
  H.raises(function() m:swap({0}, "lua:examples/mixers/gla.lua", {init = "mil"}) end,
    "init_from 'mha': ", "init_from's own error (head_dim 8 does not fit) is reported")
  m:swap({0}, "lua:examples/mixers/gla.lua", {init = "mil", config = "heads = 2\nhead_dim = 16"})
  H.eq(m:param("model.layers.0.mixer.q_proj.weight"):max_abs_diff(q), 0, "q_proj copied from attention")
  local k2 = m:param("model.layers.0.mixer.k_proj.weight")
  H.eq(k2:narrow(1, 1, 16):max_abs_diff(k), 0, "k_proj head 1 = the kv head")
  H.eq(k2:narrow(1, 17, 16):max_abs_diff(k), 0, "k_proj head 2 = the kv head (repeated)")
  H.raises(function() hyb.model(map_of("tg", "nheads = 3\n")) end, "nheads", "unknown config key")
  H.raises(function() hyb.model(map_of("tg", "heads = \"x\"\n")) end, "heads", "config key of the wrong type")
  H.raises(function() hyb.model(hyb.parse_layermap(MAP:gsub("PATTERN", "tg"):gsub("mixers/gla.lua", "mixers/none.lua"), "x.toml")) end, "cannot open the Lua file 'examples/mixers/none.lua'", "missing file")
  local dir = shortdir()
  local f = assert(io.open(dir .. "/w.lua", "w"))
  f:write("local m = dofile('" .. GLA .. "') m.forward = function(p, x) return x:narrow(2, 1, 1) end return m")
  f:close()
  local bad = hyb.model(hyb.parse_layermap(MAP:gsub("PATTERN", "tg"):gsub("examples/mixers/gla.lua", dir .. "/w.lua"), "x.toml"))
  H.raises(function() bad:forward(ids, 2, 8) end, "lua mixer 'gla' (layer 1): forward returned [2, 1, 32] for an input [2, 8, 32]", "wrong output shape names the mixer and layer")
  f = assert(io.open(dir .. "/nan.lua", "w"))
  f:write("local m = dofile('" .. GLA .. "') local fwd = m.forward m.forward = function(p, x, c, s) return fwd(p, x, c, s):log() end return m")
  f:close()
  local nanm = hyb.model(hyb.parse_layermap(MAP:gsub("PATTERN", "tg"):gsub("examples/mixers/gla.lua", dir .. "/nan.lua"), "x.toml"))
  local old = hyb.check_nan(true)
  H.raises(function() nanm:forward(ids, 2, 8) end, "(layer 1): forward: ", "a NaN in a Lua mixer's op names the mixer and the layer")
  H.raises(function() nanm:forward(ids, 2, 8) end, "hyb.log: produced NaN at element", "... and the op")
  hyb.check_nan(old)
  H.rmdir(dir)
end)

H.run("layer map: distillation into a Lua layer (trainer, reverse KL, checkpoint)", function()
  local teacher = hyb.model(map_of("tt"), {seed = 3})
  local student = hyb.train.clone(teacher)
  student:swap({1}, "lua:examples/mixers/gla.lua", {config = "heads = 2\nhead_dim = 16"})
  hyb.train.freeze(student, "*")
  hyb.train.freeze(student, "model.layers.1.mixer.*", false)
  local tr = hyb.train.trainer(student, {teacher = teacher, lr = 1e-2, warmup = 0, steps = 40, weight_decay = 0})
  local ids = abab(7, 4, 16)
  local first = tr:eval(ids, 4, 16).loss
  for _ = 1, 40 do tr:step(ids, 4, 16) end
  local after = tr:eval(ids, 4, 16).loss
  print(("distillation: reverse KL %.4f -> %.4f"):format(first, after))
  H.check(after < 0.7 * first, ("reverse KL to the teacher falls: %.4f -> %.4f"):format(first, after))
  local dir = H.tmpdir()
  tr:save(dir .. "/ck.safetensors")
  local tr2 = hyb.train.trainer(hyb.train.load(dir .. "/ck.safetensors"), {teacher = teacher, lr = 1e-2, warmup = 0, steps = 40, weight_decay = 0})
  tr2:load(dir .. "/ck.safetensors")
  H.near(tr2:eval(ids, 4, 16).loss, after, 1e-6, "a training checkpoint with a Lua layer reloads")
  H.rmdir(dir)
end)

H.run("layer map on (emulated) CUDA: the same logits, gradients and generation as the CPU", function()
  if not pcall(hyb.device, "cuda") then print("(no CUDA device: HYB_CUDA_EMULATE=1 runs this part)") return end
  local cpu = hyb.model(map_of("tg"), {seed = 4})
  local gpu = hyb.model(map_of("tg"), {seed = 4})
  gpu:to("cuda")
  local ids, tg = abab(3, 2, 8)
  local a = cpu:forward(ids, 2, 8, {grad = false}):clone()
  local b = gpu:forward(ids, 2, 8, {grad = false}):to("cpu")
  H.check(a:max_abs_diff(b) < 1e-4, "logits: " .. a:max_abs_diff(b))
  cpu:loss(cpu:forward(ids, 2, 8), tg):backward()
  gpu:loss(gpu:forward(ids, 2, 8), tg):backward()
  for _, n in ipairs({"model.layers.1.mixer.q_proj.weight", "model.layers.1.mixer.a_proj.weight", "model.layers.0.self_attn.q_proj.weight"}) do
    local gc, gg = cpu:grad(n), gpu:grad(n):to("cpu")
    local scale = math.max(1e-3, math.abs(gc:max()), math.abs(gc:min()))
    H.check(gc:max_abs_diff(gg) / scale < 1e-4, n .. ": " .. gc:max_abs_diff(gg) / scale)
  end
  H.eq(table.concat(hyb.train.greedy(gpu, {3, 9, 3}, 5), " "), table.concat(hyb.train.greedy(cpu, {3, 9, 3}, 5), " "), "greedy generation")
end)

os.exit(H.done())
