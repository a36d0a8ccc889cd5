-- tests/lua/test_mamba2_lua.lua: examples/mixers/mamba2.lua (Mamba-2 written with the tensor ops,
-- the prototype of plugins/mamba2) against (1) the PyTorch float64 reference's golden files that
-- the C plugin's rows in tests/test_mixers.c use (tests/reference/mamba2_ref.py: forward, every
-- gradient through the tape, the final ssm and conv states through the step form), at the C rows'
-- bounds; (2) the C plugin on the same weights and inputs (forward, gradients, decode steps) in
-- two models that differ only in that layer; (3) its step form equals its parallel form, and a
-- tiny model with it trains and generates; MIL init from attention.
-- Run: hyb run tests/lua/test_mamba2_lua.lua
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
local hyb = require("hyb")
local ML = require("mixerlib")
local M2 = H.root .. "/examples/mixers/mamba2.lua"

-- max |a - b| / max(max |ref|, 1) (the C rows' rel1) and max |a - b| / (1 + max |ref|) (abs1)
local function err(a, ref, kind)
  local m = math.max(math.abs(ref:max()), math.abs(ref:min()))
  local d = a:contiguous():max_abs_diff(ref)
  return kind == "abs1" and d / (1 + m) or d / math.max(m, 1)
end

-- A golden file of mamba2_ref.py: header, x, the 8 parameters, y, dy, dx, 8 gradients, states.
local PNAMES = {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
                "norm.weight", "out_proj.weight"}
local function golden(file)
  local f = assert(io.open(H.root .. "/tests/data/mamba2/" .. file, "rb"))
  local s = f:read("a")
  f:close()
  local h, pos = {}, 1
  for i = 1, 12 do h[i], pos = string.unpack("<i4", s, pos) end
  assert(h[1] == 0x3241424D, file .. ": bad magic")
  local eps
  eps, pos = string.unpack("<d", s, pos)
  local B, T, D, Di, Pd, G, N, K = h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]
  local nh, GN = Di // Pd, G * N
  local Cd = Di + 2 * GN
  local function arr(shape)
    local n = 1
    for _, v in ipairs(shape) do n = n * v end
    local v = {}
    for i = 1, n do v[i], pos = string.unpack("<f", s, pos) end
    return hyb.tensor(shape, v)
  end
  local pshapes = {{2 * Di + 2 * GN + nh, D}, {Cd, 1, K}, {Cd}, {nh}, {nh}, {nh}, {Di}, {D, Di}}
  local g = {cfg = {d_inner = Di, headdim = Pd, ngroups = G, d_state = N, d_conv = K, chunk_size = h[10],
                    norm_eps = eps}, D = D, x = arr({B, T, D}), p = {}, grad = {}}
  for i, n in ipairs(PNAMES) do g.p[n] = arr(pshapes[i]) end
  g.y, g.dy, g.dx = arr({B, T, D}), arr({B, T, D}), arr({B, T, D})
  for i, n in ipairs(PNAMES) do g.grad[n] = arr(pshapes[i]) end
  g.ssm, g.conv = arr({B, nh, Pd, N}), arr({B, Cd, K})
  assert(pos == #s + 1, file .. ": size")
  return g
end

local function instance(g, chunk)
  local cfg = {}
  for k, v in pairs(g.cfg) do cfg[k] = v end
  if chunk then cfg.chunk_size = chunk end
  local m = ML.load(M2, cfg, {d_model = g.D})
  m:init(1)
  for n, t in pairs(g.p) do m.params[n] = t:clone():requires_grad() end
  return m
end

-- the rows of tests/test_mixers.c: (file, chunk to run with; nil = the file's)
for _, row in ipairs({{"groups2.bin"}, {"groups2.bin", 64}, {"groups2.bin", 1}, {"group1.bin"},
                      {"group1.bin", 3}, {"groups4.bin"}}) do
  H.run(("PyTorch reference %s chunk %s"):format(row[1], row[2] or "file"), function()
    local g = golden(row[1])
    local m = instance(g, row[2])
    local x = g.x:clone():requires_grad()
    local y = m:forward(x)
    local e = err(y, g.y)
    H.check(e < 1e-5, "y rel err " .. e)
    ;(y * g.dy):sum_all():backward()
    e = err(x.grad, g.dx)
    H.check(e < 1e-5, "dx rel err " .. e)
    local worst, wn = 0, ""
    for _, n in ipairs(PNAMES) do
      local en = err(m.params[n].grad, g.grad[n], "abs1")
      if en > worst then worst, wn = en, n end
    end
    H.check(worst < 1e-5, ("gradients: worst %s %.2e"):format(wn, worst))
    local ys, st = hyb.no_grad(function() return m:step_all(g.x) end)
    e = err(ys, g.y)
    H.check(e < 1e-5, "step form y rel err " .. e)
    e = err(st.ssm_state, g.ssm)
    H.check(e < 1e-5, "final ssm_state rel err " .. e)
    e = st.conv_state:contiguous():max_abs_diff(g.conv)
    H.check(e < 1e-5, "final conv_state abs err " .. e)
    print(("  %s chunk %s: y %.1e, dx %.1e, worst gradient %s %.1e"):format(row[1], row[2] or "file",
      err(y, g.y), err(x.grad, g.dx), wn, worst))
  end)
end

-- ---- the Lua prototype vs the C plugin: two models that differ only in layer 1's mixer ----------
local MAP = [[
[model]
name = "tinym2"
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

[mixers.m2]
type = "TYPE"
symbol = "m"
d_inner = 64
headdim = 16
ngroups = 2
d_state = 8
d_conv = 4
chunk_size = 8

[layout]
pattern = "tm"
]]
local function model(kind, seed)
  local ty = kind == "lua" and "lua:examples/mixers/mamba2.lua" or "mamba2"
  return hyb.model(hyb.parse_layermap((MAP:gsub("TYPE", ty)), "inline.toml"), {seed = seed})
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
-- the C plugin's model and a Lua one holding the same weights (a checkpoint of the first: the
-- parameter names and shapes are the same, so model:load_params takes it as it is)
local function pair(seed)
  local c = model("c", seed)
  local dir = H.tmpdir()
  c:save(dir .. "/ck")
  local l = model("lua", seed + 1)
  local f = io.popen("ls " .. dir .. "/ck/*.safetensors")
  local st = f:read("l")
  f:close()
  l:load_params(st)
  H.rmdir(dir)
  return c, l
end

H.run("C plugin vs Lua prototype: forward, gradients, decode", function()
  local c, l = pair(11)
  local names = c:params()
  H.check(#names == #l:params(), "same parameter count")
  for _, n in ipairs(names) do H.eq(c:param(n):max_abs_diff(l:param(n)), 0, "same weights: " .. n) end
  -- T = 21 over chunks of 8 (8, 8, 5)
  local ids, tg = abab(3, 3, 21)
  c:zero_grad(); l:zero_grad()
  local lc, ll = c:forward(ids, 3, 21), l:forward(ids, 3, 21)
  local e = err(ll, lc)
  H.check(e < 1e-5, "logits rel err " .. e)
  c:loss(lc, tg):backward()
  l:loss(ll, tg):backward()
  local worst, wn = 0, ""
  for _, n in ipairs(names) do
    local en = err(l:grad(n), c:grad(n), "abs1")
    if en > worst then worst, wn = en, n end
  end
  H.check(worst < 1e-5, ("gradients of all %d parameters: worst %s %.2e"):format(#names, wn, worst))
  -- decode: prefill then steps through each mixer's own state; the layer's output at the last
  -- decode step (captured) and the greedy tokens agree
  local prompt = {3, 9, 3, 9, 3, 1, 4}
  for _, m in ipairs({c, l}) do m:capture{layers = 1, points = "mixer_out"} end
  local gc, gl = hyb.train.greedy(c, prompt, 9), hyb.train.greedy(l, prompt, 9)
  H.eq(table.concat(gl, " "), table.concat(gc, " "), "greedy tokens")
  local oc, ol = c:captured()[1].mixer_out.value, l:captured()[1].mixer_out.value
  e = err(ol, oc)
  H.check(e < 1e-5, "mixer output at decode step 8: rel err " .. e)
  print(("  C vs Lua: logits %.1e, worst gradient %s %.1e, decode-step output %.1e"):format(
    err(ll, lc), wn, worst, e))
end)

H.run("tiny model with the Lua mamba2 layer: trains, step = parallel, generates", function()
  local m = model("lua", 21)
  local opt = hyb.optim.adamw(m, {lr = 3e-3})
  local alog0 = m:param("model.layers.1.mixer.A_log"):clone()
  local first, last = 0, 0
  for step = 1, 50 do
    local ids, tg = abab(step % 4, 8, 16)
    local loss = m:loss(m:forward(ids, 8, 16), tg)
    loss:backward()
    opt:step()
    if step <= 4 then first = first + loss:value() / 4 end
    if step > 46 then last = last + loss:value() / 4 end
  end
  print(("  training: loss %.3f -> %.3f"):format(first, last))
  H.check(last < 0.7 * first, ("training loss falls: %.3f -> %.3f"):format(first, last))
  local prompt = {3, 9, 3, 9, 3}
  local gen = hyb.train.greedy(m, prompt, 6)
  local seq = {table.unpack(prompt)}
  for _ = 1, 6 do
    local lg = m:forward(seq, 1, #seq, {grad = false})
    seq[#seq + 1] = lg:argmax_last()[#seq]
  end
  H.eq(table.concat(gen, " "), table.concat({table.unpack(seq, #prompt + 1)}, " "), "decode by steps = full forwards")
  H.check(m:param("model.layers.1.mixer.A_log"):max_abs_diff(alog0) > 0, "the Lua layer's A_log trained")
  -- the mixer alone: step form vs chunked form on an odd length, at 1e-5
  local x = hyb.randn({2, 19, 32}, 8)
  local mx = ML.load(M2, {d_inner = 64, headdim = 16, ngroups = 2, d_state = 8, chunk_size = 4}, {d_model = 32})
  mx:init(4)
  local y = hyb.no_grad(function() return mx:forward(x) end)
  local ys = hyb.no_grad(function() return mx:step_all(x) end)
  e = err(ys, y)
  H.check(e < 1e-5, "step vs parallel rel err " .. e)
end)

H.run("MIL init from attention and bad config", function()
  local map = MAP:gsub("TYPE", "mamba2"):gsub('pattern = "tm"', 'pattern = "tt"')
  local m = hyb.model(hyb.parse_layermap(map, "inline.toml"), {seed = 5})
  local pre = "model.layers.1.self_attn."
  local q, k, v, o = m:param(pre .. "q_proj.weight"):clone(), m:param(pre .. "k_proj.weight"):clone(),
                     m:param(pre .. "v_proj.weight"):clone(), m:param(pre .. "o_proj.weight"):clone()
  -- attention: 2 query heads of 16, one key head: d_inner = 16, ngroups = 1, d_state = 16
  H.raises(function() m:swap({1}, "lua:examples/mixers/mamba2.lua", {init = "mil"}) end, "mamba2 init_from: needs d_inner = 16")
  m:swap({1}, "lua:examples/mixers/mamba2.lua", {init = "mil", config = "d_inner = 16\nheaddim = 8\nngroups = 1\nd_state = 16"})
  local W = m:param("model.layers.1.mixer.in_proj.weight")
  H.eq(W:narrow(1, 17, 16):max_abs_diff(v), 0, "x rows <- v_proj")
  H.eq(W:narrow(1, 33, 16):max_abs_diff(k), 0, "B rows <- k_proj")
  local qm = (q:narrow(1, 1, 16) + q:narrow(1, 17, 16)) * 0.5
  H.check(W:narrow(1, 49, 16):max_abs_diff(qm) < 1e-6, "C rows <- mean of the query heads")
  local om = o:narrow(2, 1, 16) + o:narrow(2, 17, 16)
  H.check(m:param("model.layers.1.mixer.out_proj.weight"):max_abs_diff(om) < 1e-6, "out_proj <- o_proj summed over the query heads")
  H.raises(function() ML.load(M2, {d_state = "8"}, {d_model = 8}) end, "config key 'd_state' must be a number")
  H.raises(function() ML.load(M2, {dstate = 8}, {d_model = 8}) end, "unknown config key 'dstate'")
end)

os.exit(H.done())
