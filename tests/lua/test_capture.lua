-- tests/lua/test_capture.lua: model:capture / model:captured (core: hyb_model_capture in
-- core/model/forward.c, gradient taps in core/graph/graph.c). Every captured value is checked
-- against an independent computation in Lua from the parameters (the embedding rows, each norm,
-- the MLP, the final norm and lm_head), the gradients against finite differences of the loss
-- and against the parameter gradients of other kernels, and capture off against a model that
-- never had one (bitwise logits, the same graph bytes and nodes). Tiny models (graphs/tiny.toml).
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")
local hyb = require("hyb")
hyb.log_level("warn")

local B, T = 2, 5
local ids, tg = {}, {}
for i = 1, B * T do
  ids[i] = (i * 37 + 11) % 256 -- all distinct
  tg[i] = (i * 53 + 3) % 256
end

local function tiny_text(untied)
  local f = assert(io.open(H.root .. "/graphs/tiny.toml"))
  local s = f:read("a")
  f:close()
  if untied then s = s:gsub("tie_embeddings = true", "tie_embeddings = false") end
  return s
end

-- [B, T, D] -> rows[B*T][D] (plain Lua numbers)
local function rows(t)
  local out = {}
  for _, b in ipairs(t:totable()) do
    for _, r in ipairs(b) do out[#out + 1] = r end
  end
  return out
end

local function vec(t) return t:totable() end

local function rmsnorm(x, w, eps)
  local ss = 0
  for d = 1, #x do ss = ss + x[d] * x[d] end
  local r = 1 / math.sqrt(ss / #x + eps)
  local y = {}
  for d = 1, #x do y[d] = x[d] * r * w[d] end
  return y, r
end

-- y = x W^T for W given as rows (a Linear weight [N, K])
local function linear(x, W)
  local y = {}
  for n = 1, #W do
    local s, w = 0, W[n]
    for k = 1, #x do s = s + x[k] * w[k] end
    y[n] = s
  end
  return y
end

local function max_rel(a, b) -- rows vs rows
  local m, scale = 0, 0
  for i = 1, #a do
    for d = 1, #a[i] do
      m = math.max(m, math.abs(a[i][d] - b[i][d]))
      scale = math.max(scale, math.abs(b[i][d]))
    end
  end
  return m / math.max(scale, 1e-30)
end

local ALL = {"block_in", "mixer_in", "mixer_out", "mlp_in", "mlp_out", "block_out"}

-- Each captured value from the parameters: block_in(0) is the embedding, mixer_in and mlp_in the
-- norms, mlp_out the MLP, block_out the residual sum, block_in(l+1) block_out(l) bitwise, and
-- block_out(L-1) through the final norm and lm_head the logits.
local function check_values(m, label)
  local L, eps = 4, 1e-5 -- graphs/tiny.toml
  m:capture({points = ALL})
  local logits = rows(m:forward(ids, B, T, {grad = false}))
  local c = m:captured()
  local E = vec(m:param("model.embed_tokens.weight"))
  local b0 = rows(c[0].block_in.value)
  local want = {}
  for i = 1, B * T do want[i] = E[ids[i] + 1] end
  H.eq(max_rel(b0, want), 0, label .. ": block_in(0) is the embedding rows")
  for l = 0, L - 1 do
    local P = "model.layers." .. l .. "."
    local e = c[l]
    H.check(e and e.block_in and e.block_out and e.mlp_in and e.mlp_out, label .. ": layer " .. l)
    local bin, bout = rows(e.block_in.value), rows(e.block_out.value)
    H.eq(#bin, B * T, label .. ": rows")
    local mid = {} -- h' = h + mixer_out (identity layers: h)
    if e.mixer_out then
      local u = {}
      local w = vec(m:param(P .. "input_layernorm.weight"))
      for i = 1, #bin do u[i] = rmsnorm(bin[i], w, eps) end
      H.check(max_rel(rows(e.mixer_in.value), u) < 1e-5, label .. ": mixer_in = norm(block_in), layer " .. l)
      local y = rows(e.mixer_out.value)
      for i = 1, #bin do
        mid[i] = {}
        for d = 1, #bin[i] do mid[i][d] = bin[i][d] + y[i][d] end
      end
    else
      H.check(e.mixer_in == nil, label .. ": identity layer " .. l .. " has no mixer_in")
      mid = bin
    end
    local wp = vec(m:param(P .. "post_attention_layernorm.weight"))
    local Wg, Wu = vec(m:param(P .. "mlp.gate_proj.weight")), vec(m:param(P .. "mlp.up_proj.weight"))
    local Wd = vec(m:param(P .. "mlp.down_proj.weight"))
    local v, dout, sum = {}, {}, {}
    for i = 1, #mid do
      v[i] = rmsnorm(mid[i], wp, eps)
      local g, up = linear(v[i], Wg), linear(v[i], Wu)
      local a = {}
      for f = 1, #g do a[f] = g[f] / (1 + math.exp(-g[f])) * up[f] end
      dout[i] = linear(a, Wd)
      sum[i] = {}
      for d = 1, #mid[i] do sum[i][d] = mid[i][d] + dout[i][d] end
    end
    H.check(max_rel(rows(e.mlp_in.value), v) < 1e-5, label .. ": mlp_in = norm(h + mixer_out), layer " .. l)
    H.check(max_rel(rows(e.mlp_out.value), dout) < 1e-4, label .. ": mlp_out = MLP(mlp_in), layer " .. l)
    H.check(max_rel(bout, sum) < 1e-5, label .. ": block_out = h + mixer_out + mlp_out, layer " .. l)
    if l + 1 < L then
      H.check(c[l + 1].block_in.value:equal(e.block_out.value),
              label .. ": block_in(" .. (l + 1) .. ") == block_out(" .. l .. ") bitwise")
    end
  end
  -- the last block's output through the final norm and lm_head is the logits
  local wf = vec(m:param("model.norm.weight"))
  local head = E -- tied
  for _, n in ipairs(m:params()) do if n == "lm_head.weight" then head = vec(m:param(n)) end end
  local lg = {}
  for i, x in ipairs(rows(c[L - 1].block_out.value)) do lg[i] = linear(rmsnorm(x, wf, eps), head) end
  H.check(max_rel(logits, lg) < 1e-4, label .. ": final norm + lm_head of block_out(L-1) = logits")
  m:capture(nil)
end

H.run("values: attention layers", function()
  check_values(hyb.model(H.root .. "/graphs/tiny.toml", {seed = 3}), "tiny")
end)

H.run("values: a swapped mixer and an identity layer (plugins are opaque)", function()
  local m = hyb.model(H.root .. "/graphs/tiny.toml", {seed = 4})
  if H.have_plugin("mamba1") then m:swap(1, "mamba1", {init = "mil", config = "d_xb = 64"}) end
  m:set_identity(2)
  check_values(m, "hybrid")
end)

-- graphs/tiny.toml's attention (4 query heads over 2 KV heads of 32, RoPE theta 1e4, HF's
-- half-split layout, causal softmax, no biases) written out in Lua: rows u[T][D] of one sequence
-- -> the mixer's output rows
local function attention(m, l, u)
  local H_, KV, hd, theta = 4, 2, 32, 10000.0
  local P = "model.layers." .. l .. ".self_attn."
  local Wq, Wk = vec(m:param(P .. "q_proj.weight")), vec(m:param(P .. "k_proj.weight"))
  local Wv, Wo = vec(m:param(P .. "v_proj.weight")), vec(m:param(P .. "o_proj.weight"))
  local function rope(x, heads, pos)
    for h = 0, heads - 1 do
      for i = 0, hd / 2 - 1 do
        local a = pos * theta ^ (-2 * i / hd)
        local x1, x2 = x[h * hd + i + 1], x[h * hd + i + hd / 2 + 1]
        x[h * hd + i + 1] = x1 * math.cos(a) - x2 * math.sin(a)
        x[h * hd + i + hd / 2 + 1] = x2 * math.cos(a) + x1 * math.sin(a)
      end
    end
    return x
  end
  local q, k, v = {}, {}, {}
  for t = 1, #u do
    q[t], k[t], v[t] = rope(linear(u[t], Wq), H_, t - 1), rope(linear(u[t], Wk), KV, t - 1), linear(u[t], Wv)
  end
  local out = {}
  for t = 1, #u do
    local o = {}
    for h = 0, H_ - 1 do
      local g = h // (H_ // KV)
      local s, mx = {}, -math.huge
      for j = 1, t do
        local d = 0
        for i = 1, hd do d = d + q[t][h * hd + i] * k[j][g * hd + i] end
        s[j] = d / math.sqrt(hd)
        mx = math.max(mx, s[j])
      end
      local z = 0
      for j = 1, t do s[j] = math.exp(s[j] - mx); z = z + s[j] end
      for i = 1, hd do
        local acc = 0
        for j = 1, t do acc = acc + s[j] / z * v[j][g * hd + i] end
        o[h * hd + i] = acc
      end
    end
    out[t] = linear(o, Wo)
  end
  return out
end

H.run("mixer_out of attention = attention recomputed in Lua from mixer_in", function()
  local m = hyb.model(H.root .. "/graphs/tiny.toml", {seed = 11})
  m:capture({layers = {0, 2}, points = {"mixer_in", "mixer_out"}})
  m:forward(ids, B, T, {grad = false})
  local c = m:captured()
  for _, l in ipairs({0, 2}) do
    local u, y = rows(c[l].mixer_in.value), rows(c[l].mixer_out.value)
    for b = 0, B - 1 do
      local ub, yb = {}, {}
      for t = 1, T do ub[t], yb[t] = u[b * T + t], y[b * T + t] end
      H.check(max_rel(yb, attention(m, l, ub)) < 1e-4,
              ("layer %d, sequence %d: captured mixer_out = attention(mixer_in)"):format(l, b))
    end
  end
end)

H.run("capture off: bitwise logits, the same graph memory and nodes", function()
  local m = hyb.model(H.root .. "/graphs/tiny.toml", {seed = 5})
  local l0 = m:forward(ids, B, T):clone()
  local s0 = m:graph_stats()
  m:capture({layers = {0, 3}, points = ALL})
  local l1 = m:forward(ids, B, T):clone()
  local s1 = m:graph_stats()
  H.check(l1:equal(l0), "values-only capture leaves the logits bitwise")
  H.eq(s1.nodes, s0.nodes, "values-only capture adds no node")
  H.eq(s1.bytes, s0.bytes, "values-only capture takes nothing from the graph's arena")
  m:capture({layers = {0, 3}, points = ALL, grads = true})
  local l2 = m:forward(ids, B, T):clone()
  H.check(l2:equal(l0), "capture with grads leaves the logits bitwise")
  m:capture(nil)
  local l3 = m:forward(ids, B, T):clone()
  local s3 = m:graph_stats()
  H.check(l3:equal(l0), "after capture(nil): logits bitwise")
  H.eq(s3.nodes, s0.nodes, "after capture(nil): nodes")
  H.eq(s3.bytes, s0.bytes, "after capture(nil): graph bytes")
  H.raises(function() m:captured() end, "model:captured: no capture is set")
end)

-- loss of the untied model m at ids/tg (f64 of the f32 mean CE)
local function loss_of(m)
  return m:loss(m:forward(ids, B, T, {grad = false}), tg):value()
end

H.run("gradients: finite differences and the parameter gradients", function()
  local m = hyb.model(hyb.parse_layermap(tiny_text(true), "tiny-untied"), {seed = 6})
  local eps_n = 1e-5
  m:capture({layers = {0, 2}, points = ALL, grads = true})
  m:zero_grad()
  local loss = m:loss(m:forward(ids, B, T), tg)
  loss:backward()
  local c = m:captured()
  for _, l in ipairs({0, 2}) do
    for _, p in ipairs(ALL) do
      H.check(c[l][p].grad ~= nil, ("grad of %s at layer %d"):format(p, l))
    end
    -- the residual add passes its gradient on unchanged
    H.check(c[l].mlp_out.grad:equal(c[l].block_out.grad), "mlp_out.grad == block_out.grad, layer " .. l)
  end
  -- the embedding rows' gradient (embedding_bwd) is block_in(0)'s gradient, row by row
  local gE = vec(m:grad("model.embed_tokens.weight"))
  local g0 = rows(c[0].block_in.grad)
  local want = {}
  for i = 1, B * T do want[i] = gE[ids[i] + 1] end
  H.check(max_rel(g0, want) < 1e-5, "block_in(0).grad = the embedding rows' gradient")
  -- the input norm weight's gradient (rmsnorm_bwd) from mixer_in's gradient and block_in
  local l = 2
  local P = "model.layers." .. l .. ".input_layernorm.weight"
  local w = vec(m:param(P))
  local gu, x = rows(c[l].mixer_in.grad), rows(c[l].block_in.value)
  local gw = {}
  for d = 1, #w do gw[d] = 0 end
  for i = 1, #x do
    local _, r = rmsnorm(x[i], w, eps_n)
    for d = 1, #w do gw[d] = gw[d] + gu[i][d] * x[i][d] * r end
  end
  H.check(max_rel({gw}, {vec(m:grad(P))}) < 1e-4, "norm weight grad from mixer_in.grad")
  -- finite differences of the loss in the direction of a few parameters, predicted from the
  -- captured gradients alone
  local h = 1e-2
  local wp = m:param(P)
  for _, d in ipairs({1, 17, 100}) do
    local w0 = wp:get(d)
    wp:set(d, w0 + h)
    local lp = loss_of(m)
    wp:set(d, w0 - h)
    local lm = loss_of(m)
    wp:set(d, w0)
    H.near((lp - lm) / (2 * h), gw[d], 2e-3 + 2e-2 * math.abs(gw[d]),
           "finite difference of the loss along " .. P .. "[" .. d .. "]")
  end
  local Ep = m:param("model.embed_tokens.weight")
  for _, k in ipairs({{1, 5}, {7, 64}}) do
    local i, d = k[1], k[2]
    local e0 = Ep:get(ids[i] + 1, d)
    Ep:set(ids[i] + 1, d, e0 + h)
    local lp = loss_of(m)
    Ep:set(ids[i] + 1, d, e0 - h)
    local lm = loss_of(m)
    Ep:set(ids[i] + 1, d, e0)
    H.near((lp - lm) / (2 * h), g0[i][d], 2e-3 + 2e-2 * math.abs(g0[i][d]),
           ("finite difference along the embedding of token %d, dim %d"):format(i, d))
  end
end)

H.run("gradients with every parameter frozen equal the trainable model's", function()
  local m = hyb.model(H.root .. "/graphs/tiny.toml", {seed = 7})
  m:capture({layers = {1, 3}, points = {"block_in", "mixer_out", "block_out"}, grads = true})
  m:loss(m:forward(ids, B, T), tg):backward()
  local a = m:captured()
  hyb.train.freeze(m, "*")
  m:loss(m:forward(ids, B, T), tg):backward()
  local b = m:captured()
  for _, l in ipairs({1, 3}) do
    for _, p in ipairs({"block_in", "mixer_out", "block_out"}) do
      H.check(b[l][p].grad:equal(a[l][p].grad), ("frozen: %s grad at layer %d"):format(p, l))
    end
  end
end)

H.run("prefill and decode record too (no tape there)", function()
  local m = hyb.model(H.root .. "/graphs/tiny.toml", {seed = 8})
  m:capture({layers = 3, points = "block_out"})
  local out = hyb.train.greedy(m, {1, 2, 3}, 2)
  H.eq(#out, 2, "greedy ids")
  local c = m:captured()
  local sh = c[3].block_out.value:shape()
  H.eq(sh[1] * sh[2], 1, "the last decode step's [1, 1, D]")
  H.eq(sh[3], 128, "D")
  m:capture({layers = 3, points = "block_out", grads = true})
  hyb.train.greedy(m, {1, 2, 3}, 1)
  H.raises(function() m:captured() end, "grads = true but the last forward had no tape")
  H.check(m:captured({grads = false})[3].block_out.value ~= nil, "values without grads")
end)

-- On a device the values are copied there and downloaded for Lua: the same as the CPU's (the
-- CUDA backend, emulated on the CPU by ctest's lua_test_capture_cuda_emu; noted and passed over
-- where no CUDA device can be opened).
H.run("a model on CUDA captures what the CPU does", function()
  local cuda
  for _, d in ipairs(hyb.devices()) do
    if d.name == "cuda" and d.status:match("^available") then cuda = true end
  end
  if not cuda then
    print("note: no CUDA device (real or HYB_CUDA_EMULATE=1): the device case is not run")
    return
  end
  local pts = {"block_in", "mixer_in", "mixer_out", "block_out"}
  local function run(dev)
    local m = hyb.model(H.root .. "/graphs/tiny.toml", {seed = 10})
    if dev then m:to(dev) end
    m:capture({layers = {1, 3}, points = pts, grads = true})
    m:loss(m:forward(ids, B, T), tg):backward()
    return m:captured()
  end
  local a, b = run(nil), run("cuda")
  for _, l in ipairs({1, 3}) do
    for _, p in ipairs(pts) do
      local va, ga = a[l][p].value, a[l][p].grad
      H.check(va:max_abs_diff(b[l][p].value) <= 1e-4 * math.max(1, math.abs(va:max()), math.abs(va:min())),
              ("cuda value of %s at layer %d"):format(p, l))
      H.check(ga:max_abs_diff(b[l][p].grad) <= 1e-4 * math.max(1e-3, math.abs(ga:max()), math.abs(ga:min())),
              ("cuda grad of %s at layer %d"):format(p, l))
    end
  end
end)

H.run("bad arguments", function()
  local m = hyb.model(H.root .. "/graphs/tiny.toml", {seed = 9})
  H.raises(function() m:capture({points = {"mixer_output"}}) end,
           "model:capture: points[1] must be one of block_in, mixer_in, mixer_out")
  H.raises(function() m:capture({points = 3}) end, "model:capture: points must be a point name")
  H.raises(function() m:capture({points = {}}) end, "model:capture: points must not be empty")
  H.raises(function() m:capture({layers = {0, 4}}) end, "model:capture: layers[2] must be")
  H.raises(function() m:capture({layers = -1}) end, "model:capture: layer must be")
  H.raises(function() m:capture({layers = {1, 1}}) end, "model:capture: layer 1 is listed twice")
  H.raises(function() m:capture({layer = 1}) end, "model:capture: unknown option 'layer'")
  H.raises(function() m:capture("mixer_in") end, "model:capture: expected a table")
  H.raises(function() m:capture({grads = "yes"}) end, "grads")
  m:capture({layers = 0, points = "mixer_out", grads = true})
  H.raises(function() m:captured() end, "model:captured: no forward ran since model:capture")
  m:forward(ids, B, T)
  H.raises(function() m:captured() end, "grads = true but no backward ran since the last forward")
  m:forward(ids, B, T, {grad = false})
  H.raises(function() m:captured() end, "grads = true but the last forward had no tape")
  m:capture({layers = 0, points = "mixer_out"})
  m:forward(ids, B, T)
  H.raises(function() m:captured({grads = true}) end, "the capture was made without gradients")
  H.raises(function() m:captured({grad = true}) end, "model:captured: unknown option 'grad'")
  H.check(m:captured()[0].mixer_out.grad == nil, "no grad when not asked")
end)

os.exit(H.done())
