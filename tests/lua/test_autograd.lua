-- tests/lua/test_autograd.lua: the tensor ops of runtime/lua_autograd.c and their gradients.
-- Forward values against plain-Lua references (scalar loops over :totable()), every op's
-- backward against central finite differences (in double, of L = sum(out * R) with a fixed
-- random R), including broadcast operands and non-contiguous views; the autodiff API (backward,
-- .grad, no_grad, grad), printing, and the errors for bad arguments.
-- Run: hyb run tests/lua/test_autograd.lua
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
local hyb = require("hyb")

-- ---- helpers ----------------------------------------------------------------------------------
local function flat(t)
  local out = {}
  local function rec(v)
    if type(v) == "table" then for _, x in ipairs(v) do rec(x) end else out[#out + 1] = v end
  end
  rec(t:totable())
  return out
end

local function shape_eq(t, s)
  local ts = t:shape()
  if #ts ~= #s then return false end
  for i = 1, #s do if ts[i] ~= s[i] then return false end end
  return true
end

-- index table of flat position j (0-based) in shape s
local function unflat(j, s)
  local idx = {}
  for k = #s, 1, -1 do idx[k] = j % s[k] + 1; j = j // s[k] end
  return idx
end

local function setv(t, idx, v)
  local a = {table.unpack(idx)}
  a[#a + 1] = v
  t:set(table.unpack(a))
end

local seed = 100
local function rnd(shape, lo, hi)
  seed = seed + 1
  local t = hyb.randn(shape, seed)
  if lo then -- uniform-ish in [lo, hi] from the normal values
    local n = t:numel()
    local v = flat(t)
    for j = 0, n - 1 do
      local u = 0.5 + 0.5 * math.tanh(v[j + 1])
      setv(t, unflat(j, shape), lo + (hi - lo) * u)
    end
  end
  return t
end

-- Finite-difference check of f(inputs...) -> tensor. inputs: leaf tensors (contiguous, f32).
local function gradcheck(name, f, inputs, tol)
  tol = tol or 2e-3
  for _, x in ipairs(inputs) do x:zero_grad(); x:requires_grad() end
  local out = f(table.unpack(inputs))
  local R = hyb.randn(out:shape(), 7)
  local Rv = flat(R)
  local function loss_num()
    local o = hyb.no_grad(f, table.unpack(inputs))
    local v, s = flat(o), 0
    for i = 1, #v do s = s + v[i] * Rv[i] end
    return s
  end
  (out * R):sum_all():backward()
  local worst, eps = 0, 1e-2
  for k, x in ipairs(inputs) do
    local s = x:shape()
    local g = x.grad
    H.check(g ~= nil, name .. ": input " .. k .. " has a gradient")
    if not g then return end
    for j = 0, x:numel() - 1 do
      local idx = unflat(j, s)
      local x0 = x:get(table.unpack(idx))
      setv(x, idx, x0 + eps); local lp = loss_num()
      setv(x, idx, x0 - eps); local lm = loss_num()
      setv(x, idx, x0)
      local num = (lp - lm) / (2 * eps)
      local ana = g:get(table.unpack(idx))
      local err = math.abs(num - ana) / math.max(1, math.abs(num))
      if err > worst then worst = err end
      if err > tol then
        H.check(false, ("%s: d/d input %d [%s]: finite difference %.6g, backward %.6g"):format(
          name, k, table.concat(idx, ","), num, ana))
        return worst
      end
    end
  end
  H.check(true, name)
  if os.getenv("HYB_GRADCHECK_VERBOSE") then print(("%-40s worst rel err %.2e"):format(name, worst)) end
  return worst
end

local function near_all(got, want, tol, msg)
  local g = flat(got)
  H.eq(#g, #want, msg .. ": element count")
  local worst = 0
  for i = 1, #want do
    local d = math.abs(g[i] - want[i]) / math.max(1, math.abs(want[i]))
    if d ~= d or d > worst then worst = d end
  end
  H.check(worst <= tol, ("%s: max rel diff %g (tol %g)"):format(msg, worst, tol))
end

-- ---- forward values ---------------------------------------------------------------------------
H.run("elementwise forward vs Lua math", function()
  local x = rnd({3, 4}, 0.2, 2.0)
  local v = flat(x)
  local function sig(a) return 1 / (1 + math.exp(-a)) end
  local cases = {
    {"exp", math.exp}, {"log", math.log}, {"sigmoid", sig}, {"silu", function(a) return a * sig(a) end},
    {"softplus", function(a) return math.log(1 + math.exp(a)) end}, {"tanh", function(a) return (math.exp(2 * a) - 1) / (math.exp(2 * a) + 1) end},
    {"sqrt", math.sqrt}, {"rsqrt", function(a) return 1 / math.sqrt(a) end}, {"neg", function(a) return -a end},
  }
  for _, c in ipairs(cases) do
    local want = {}
    for i = 1, #v do want[i] = c[2](v[i]) end
    near_all(hyb[c[1]](x), want, 1e-6, c[1])
    near_all(x[c[1]](x), want, 1e-6, "method " .. c[1])
  end
  local want = {}
  for i = 1, #v do want[i] = v[i] ^ 3 end
  near_all(x ^ 3, want, 1e-6, "x ^ 3")
  for i = 1, #v do want[i] = 2 / v[i] - 1 end
  near_all(2 / x - 1, want, 1e-6, "2 / x - 1")
  for i = 1, #v do want[i] = -(v[i] * 3 + 0.5) end
  near_all(-(x * 3 + 0.5), want, 1e-6, "-(x * 3 + 0.5)")
end)

H.run("broadcasting forward", function()
  local a, b = rnd({2, 3, 1}), rnd({4})
  local av, bv = flat(a), flat(b)
  local c = a * b + b
  H.check(shape_eq(c, {2, 3, 4}), "[2,3,1] * [4] -> [2,3,4]")
  local want = {}
  for i = 1, 6 do for j = 1, 4 do want[#want + 1] = av[i] * bv[j] + bv[j] end end
  near_all(c, want, 1e-6, "a * b + b")
  local m = hyb.where(a:gt(0), a, b:reshape({1, 1, 4}))
  want = {}
  for i = 1, 6 do for j = 1, 4 do want[#want + 1] = av[i] > 0 and av[i] or bv[j] end end
  near_all(m, want, 0, "where(a > 0, a, b)")
  near_all(hyb.where(a:lt(0), 0, a), (function() local w = {} for i = 1, 6 do w[i] = av[i] < 0 and 0 or av[i] end return w end)(), 0, "where with a number")
end)

H.run("views forward", function()
  local x = hyb.arange(24):reshape({2, 3, 4})
  local t = x:transpose(1, 3) -- [4, 3, 2]
  H.check(shape_eq(t, {4, 3, 2}), "transpose shape")
  H.eq(t:get(4, 2, 1), x:get(1, 2, 4), "transpose value")
  local p = x:permute({3, 1, 2}) -- [4, 2, 3]
  H.eq(p:get(3, 2, 1), x:get(2, 1, 3), "permute value")
  local n = x:narrow(3, 2, 2)
  H.check(shape_eq(n, {2, 3, 2}) and n:get(2, 3, 1) == x:get(2, 3, 2), "narrow")
  local s = x:slice(2, 2, -1)
  H.check(shape_eq(s, {2, 2, 4}) and s:get(1, 1, 1) == x:get(1, 2, 1), "slice to the end")
  local parts = x:split(3, 3)
  H.check(#parts == 2 and shape_eq(parts[1], {2, 3, 3}) and shape_eq(parts[2], {2, 3, 1}), "split sizes")
  H.eq(parts[2]:get(2, 1, 1), x:get(2, 1, 4), "split value")
  local c = hyb.cat({parts[2], parts[1]}, 3)
  H.eq(c:get(1, 2, 1), x:get(1, 2, 4), "cat first piece")
  H.eq(c:get(1, 2, 2), x:get(1, 2, 1), "cat second piece")
  local e = hyb.arange(3):reshape({3, 1}):expand({2, 3, 4})
  H.check(shape_eq(e, {2, 3, 4}) and e:get(2, 3, 4) == 2, "expand")
  local r = t:reshape({4, 6}) -- non-contiguous source: copied
  H.eq(r:get(2, 3), t:get(2, 2, 1), "reshape of a transposed view")
  H.check(shape_eq(x:unsqueeze(1), {1, 2, 3, 4}) and shape_eq(x:unsqueeze(1):squeeze(1), {2, 3, 4}), "unsqueeze/squeeze")
end)

H.run("axis ops forward", function()
  local x = rnd({2, 3, 4})
  local v = x:totable()
  local function ref(dim, fn) -- fn(list) over dim (1-based) of a [2,3,4] nested table
    local s = {2, 3, 4}
    local out = {}
    local ranges = {}
    for d = 1, 3 do ranges[d] = d == dim and 1 or s[d] end
    for i = 1, ranges[1] do for j = 1, ranges[2] do for k = 1, ranges[3] do
      local list = {}
      for m = 1, s[dim] do
        local ii, jj, kk = i, j, k
        if dim == 1 then ii = m elseif dim == 2 then jj = m else kk = m end
        list[m] = v[ii][jj][kk]
      end
      out[#out + 1] = fn(list)
    end end end
    return out
  end
  local function sum(l) local s = 0 for _, a in ipairs(l) do s = s + a end return s end
  local function lse(l) local m = -math.huge for _, a in ipairs(l) do m = math.max(m, a) end local s = 0 for _, a in ipairs(l) do s = s + math.exp(a - m) end return m + math.log(s) end
  for dim = 1, 3 do
    near_all(x:sum(dim), ref(dim, sum), 1e-6, "sum dim " .. dim)
    near_all(x:mean(dim), ref(dim, function(l) return sum(l) / #l end), 1e-6, "mean dim " .. dim)
    near_all(x:max(dim), ref(dim, function(l) return math.max(table.unpack(l)) end), 0, "max dim " .. dim)
    near_all(x:logsumexp(dim), ref(dim, lse), 1e-6, "logsumexp dim " .. dim)
  end
  H.check(shape_eq(x:sum(2, true), {2, 1, 4}), "keepdim")
  -- softmax / cumsum along dim 2: compare element by element
  local sm, cs = x:softmax(2), x:cumsum(2)
  local worst_s, worst_c = 0, 0
  for i = 1, 2 do for k = 1, 4 do
    local l = {v[i][1][k], v[i][2][k], v[i][3][k]}
    local z, acc = lse(l), 0
    for j = 1, 3 do
      acc = acc + l[j]
      worst_s = math.max(worst_s, math.abs(sm:get(i, j, k) - math.exp(l[j] - z)))
      worst_c = math.max(worst_c, math.abs(cs:get(i, j, k) - acc))
    end
  end end
  H.check(worst_s < 1e-6, "softmax dim 2: " .. worst_s)
  H.check(worst_c < 1e-5, "cumsum dim 2: " .. worst_c)
  H.near(x:sum_all():item(), x:sum(), 1e-4, "sum_all")
end)

H.run("matmul, tril, conv1d, rms_norm, gather forward", function()
  local a, b = rnd({2, 3, 4}), rnd({4, 5})
  local c = a:matmul(b)
  H.check(shape_eq(c, {2, 3, 5}), "batched @ 2-d shape")
  local worst = 0
  for i = 1, 2 do for m = 1, 3 do for n = 1, 5 do
    local s = 0
    for k = 1, 4 do s = s + a:get(i, m, k) * b:get(k, n) end
    worst = math.max(worst, math.abs(c:get(i, m, n) - s))
  end end end
  H.check(worst < 1e-5, "matmul values: " .. worst)
  local bt = rnd({2, 5, 4})
  local d = a:matmul(bt:transpose(2, 3)) -- a transposed operand, batched both sides
  worst = 0
  for i = 1, 2 do for m = 1, 3 do for n = 1, 5 do
    local s = 0
    for k = 1, 4 do s = s + a:get(i, m, k) * bt:get(i, n, k) end
    worst = math.max(worst, math.abs(d:get(i, m, n) - s))
  end end end
  H.check(worst < 1e-5, "a @ b^T values: " .. worst)
  local t = hyb.ones({2, 3, 3}):tril()
  H.check(t:get(1, 1, 2) == 0 and t:get(2, 3, 1) == 1 and t:get(1, 2, 2) == 1, "tril")
  local u = hyb.ones({3, 3}):triu(1)
  H.check(u:get(1, 1) == 0 and u:get(1, 2) == 1 and u:get(3, 3) == 0, "triu(1)")
  local x, w = rnd({2, 5, 3}), rnd({3, 4})
  local y = hyb.conv1d_causal(x, w)
  worst = 0
  for bb = 1, 2 do for tt = 1, 5 do for ch = 1, 3 do
    local s = 0
    for j = 1, 4 do local src = tt - 4 + j if src >= 1 then s = s + w:get(ch, j) * x:get(bb, src, ch) end end
    worst = math.max(worst, math.abs(y:get(bb, tt, ch) - s))
  end end end
  H.check(worst < 1e-5, "conv1d_causal values: " .. worst)
  local g = rnd({6})
  local r = hyb.rms_norm(x, g:narrow(1, 1, 3), 1e-5)
  worst = 0
  for bb = 1, 2 do for tt = 1, 5 do
    local ms = 0
    for ch = 1, 3 do ms = ms + x:get(bb, tt, ch) ^ 2 end
    local rs = 1 / math.sqrt(ms / 3 + 1e-5)
    for ch = 1, 3 do worst = math.max(worst, math.abs(r:get(bb, tt, ch) - x:get(bb, tt, ch) * rs * g:get(ch))) end
  end end
  H.check(worst < 1e-5, "rms_norm values: " .. worst)
  local idx = hyb.tensor({2, 2, 3}, {0, 4, 2, 1, 1, 0, 3, 3, 3, 4, 0, 1}, "i32")
  local ga = hyb.gather(x, 2, idx)
  H.check(shape_eq(ga, {2, 2, 3}) and ga:get(1, 1, 2) == x:get(1, 5, 2) and ga:get(2, 2, 3) == x:get(2, 2, 3), "gather (0-based index values)")
end)

-- ---- gradients --------------------------------------------------------------------------------
H.run("gradients: elementwise and broadcasting", function()
  local pos = function(s) return rnd(s, 0.3, 2.0) end
  gradcheck("add broadcast", function(a, b) return a + b end, {rnd({2, 3, 1}), rnd({4})})
  gradcheck("sub broadcast", function(a, b) return a - b end, {rnd({3, 1}), rnd({1, 4})})
  gradcheck("mul broadcast", function(a, b) return a * b end, {rnd({2, 3, 4}), rnd({3, 1})})
  gradcheck("div broadcast", function(a, b) return a / b end, {rnd({2, 3}), pos({3})})
  gradcheck("scalars", function(a) return (2 - a) * 3 + a / 4 - 1 end, {rnd({5})})
  gradcheck("rdiv", function(a) return 2 / a end, {pos({4})})
  gradcheck("unary minus", function(a) return -a end, {rnd({4})})
  gradcheck("pow", function(a) return a ^ 3 + a:pow(0.5) end, {pos({5})})
  for _, op in ipairs({"exp", "sigmoid", "silu", "softplus", "tanh"}) do
    gradcheck(op, function(a) return hyb[op](a) end, {rnd({2, 5})})
  end
  for _, op in ipairs({"log", "sqrt", "rsqrt"}) do
    gradcheck(op, function(a) return hyb[op](a) end, {pos({2, 5})})
  end
  local cond = rnd({3, 4}):gt(0)
  gradcheck("where", function(a, b) return hyb.where(cond, a * 2, b) end, {rnd({3, 4}), rnd({4})})
  gradcheck("maximum", function(a, b) return hyb.maximum(a, b) end, {rnd({3, 4}), rnd({3, 4})})
end)

H.run("gradients: views (non-contiguous inputs to ops)", function()
  gradcheck("transpose then exp", function(a) return a:transpose():exp() end, {rnd({3, 4})})
  gradcheck("permute then mul (strided both)", function(a, b) return a:permute({3, 1, 2}) * b:transpose(1, 2) end, {rnd({2, 3, 4}), rnd({2, 4, 3})})
  gradcheck("narrow", function(a) return a:narrow(2, 2, 3) * 2 end, {rnd({3, 5})})
  gradcheck("slice of a transpose", function(a) return a:transpose():slice(1, 2, 3):sigmoid() end, {rnd({3, 4})})
  gradcheck("reshape", function(a) return a:reshape({6, -1}):tanh() end, {rnd({2, 3, 4})})
  gradcheck("reshape of a transpose", function(a) return a:transpose(1, 2):reshape({12}) end, {rnd({3, 4})})
  gradcheck("expand", function(a) return a:expand({2, 3, 4}) * 1.5 end, {rnd({3, 1})})
  gradcheck("unsqueeze/squeeze", function(a) return a:unsqueeze(2):squeeze(2):unsqueeze(1) * 2 end, {rnd({3, 4})})
  gradcheck("cat", function(a, b) return hyb.cat({a, b:transpose(), a}, 2) end, {rnd({3, 2}), rnd({4, 3})})
  gradcheck("split", function(a) local p = a:split(2, 1) return p[1] * p[2] end, {rnd({4, 3})})
  gradcheck("contiguous", function(a) return a:transpose():contiguous() end, {rnd({2, 3})})
  gradcheck("a tensor used twice", function(a) return a * a:transpose():transpose() + a end, {rnd({2, 3})})
end)

H.run("gradients: axis ops", function()
  for dim = 1, 3 do
    gradcheck("sum dim " .. dim, function(a) return a:sum(dim) end, {rnd({2, 3, 4})})
    gradcheck("mean dim " .. dim, function(a) return a:mean(dim, true) end, {rnd({2, 3, 4})})
    gradcheck("max dim " .. dim, function(a) return a:max(dim) end, {rnd({2, 3, 4})})
    gradcheck("logsumexp dim " .. dim, function(a) return a:logsumexp(dim) end, {rnd({2, 3, 4})})
    gradcheck("softmax dim " .. dim, function(a) return a:softmax(dim) end, {rnd({2, 3, 4})})
    gradcheck("log_softmax dim " .. dim, function(a) return a:log_softmax(dim) end, {rnd({2, 3, 4})})
    gradcheck("cumsum dim " .. dim, function(a) return a:cumsum(dim) end, {rnd({2, 3, 4})})
  end
  gradcheck("softmax of a transposed view", function(a) return a:transpose():softmax(-1) end, {rnd({3, 4})})
  gradcheck("sum_all / mean_all", function(a) return a:sum_all() * a:mean_all() end, {rnd({2, 3})})
end)

H.run("gradients: matmul, masks, conv, norm, gather", function()
  gradcheck("matmul 2-d", function(a, b) return a:matmul(b) end, {rnd({3, 4}), rnd({4, 2})})
  gradcheck("matmul batched @ 2-d", function(a, b) return a:matmul(b) end, {rnd({2, 3, 4}), rnd({4, 2})})
  gradcheck("matmul batched @ batched", function(a, b) return a:matmul(b) end, {rnd({2, 2, 3, 4}), rnd({2, 2, 4, 5})})
  gradcheck("matmul 2-d @ batched", function(a, b) return a:matmul(b) end, {rnd({3, 4}), rnd({2, 4, 2})})
  gradcheck("matmul with transposed operands", function(a, b) return a:transpose(2, 3):matmul(b:transpose()) end, {rnd({2, 4, 3}), rnd({5, 4})})
  gradcheck("matmul of a narrowed view", function(a, b) return a:narrow(2, 2, 3):matmul(b) end, {rnd({2, 5, 4}), rnd({4, 3})})
  gradcheck("tril", function(a) return a:tril() end, {rnd({2, 3, 3})})
  gradcheck("triu(-1)", function(a) return a:triu(-1) end, {rnd({3, 4})})
  gradcheck("conv1d_causal", function(x, w) return hyb.conv1d_causal(x, w) end, {rnd({2, 5, 3}), rnd({3, 4})})
  gradcheck("conv1d_causal of a transposed view", function(x, w) return hyb.conv1d_causal(x:transpose(), w) end, {rnd({3, 6}), rnd({3, 2})})
  gradcheck("rms_norm", function(x, w) return hyb.rms_norm(x, w) end, {rnd({2, 3, 4}), rnd({4})})
  local idx = hyb.tensor({2, 4}, {0, 2, 2, 1, 1, 1, 0, 2}, "i32")
  gradcheck("gather (repeated indices)", function(x) return hyb.gather(x, 2, idx) end, {rnd({2, 3})})
  gradcheck("attention-like composite", function(q, k, v)
    local s = q:matmul(k:transpose()) * 0.5
    local mask = hyb.ones({4, 4}):tril()
    local p = hyb.where(mask, s, -1e9):softmax(-1)
    return p:matmul(v)
  end, {rnd({2, 4, 3}), rnd({2, 4, 3}), rnd({2, 4, 3})})
end)

H.run("gradcheck fails on a wrong gradient", function()
  -- the checker itself: a function whose recorded backward disagrees with its values must fail
  local fails_before = H.failed
  local x = rnd({3})
  local real_check = H.check
  local caught = false
  H.check = function(c, msg) if not c then caught = true end end
  gradcheck("deliberately wrong", function(a)
    -- forward value a*a, but the tape sees 3*a (the detach hides a factor)
    return a * a:detach() + a * 1
  end, {x})
  H.check = real_check
  H.check(caught, "gradcheck reports a backward that disagrees with the finite differences")
  H.eq(H.failed, fails_before, "no failure recorded")
end)

-- ---- API --------------------------------------------------------------------------------------
H.run("backward, .grad, no_grad, grad", function()
  local x = hyb.from({1, 2, 3}):requires_grad()
  local y = (x * x):sum_all()
  H.eq(y:grad_fn(), "hyb.sum_all", "grad_fn names the op")
  H.check(x:is_leaf() and not y:is_leaf(), "is_leaf")
  y:backward()
  near_all(x.grad, {2, 4, 6}, 0, "d sum(x^2) = 2x")
  y:backward()
  near_all(x.grad, {4, 8, 12}, 0, "gradients accumulate")
  x:zero_grad()
  H.check(x.grad == nil, "zero_grad clears")
  local z = hyb.no_grad(function() return x * 2 end)
  H.check(z:grad_fn() == nil and not hyb.grad_enabled() == false, "no_grad records nothing")
  H.raises(function() z:sum_all():backward() end, "does not require grad", "backward off the tape")
  H.raises(function() (x * 2):backward() end, "not one element", "non-scalar backward needs a gradient")
  local w = x * 2
  w:backward(hyb.from({1, 0, 1}))
  near_all(x.grad, {2, 0, 2}, 0, "backward with an explicit gradient")
  local df = hyb.grad(function(p, c) return (p.a * p.b + c):sum_all() end)
  local a, b = hyb.from({1, 2}), hyb.from({3, 4})
  local g, v = df({a = a, b = b}, 1)
  near_all(g.a, {3, 4}, 0, "grad wrt a table: a")
  near_all(g.b, {1, 2}, 0, "grad wrt a table: b")
  H.eq(v, 1 * 3 + 2 * 4 + 2, "grad returns the value")
  H.check(a.grad == nil and not a:is_leaf() == false, "hyb.grad leaves its arguments' .grad alone")
  local d2 = hyb.grad(function(u, s) return (u * s):sum_all() end, {argnum = 2})
  local gs = d2(hyb.from({5, 6}), hyb.from({1, 1}))
  near_all(gs, {5, 6}, 0, "argnum = 2")
  H.raises(function() hyb.grad(function(u) return u * 2 end)(hyb.from({1, 2})) end, "one element", "hyb.grad of a non-scalar")
end)

H.run("printing", function()
  local s = tostring(hyb.from({{1, 2}, {3, 4}}))
  H.eq(s, "tensor([[1., 2.],\n        [3., 4.]], shape=[2, 2], dtype=f32, device=cpu)", "small tensor")
  local big = tostring(hyb.arange(2000):reshape({40, 50}) * 0.5)
  H.check(big:find("...", 1, true) and big:find("shape=[40, 50]", 1, true) and big:find("grad_fn") == nil, "summarised: " .. big:sub(1, 80))
  H.check(#big < 1000, "summarised output is short")
  H.check(tostring(hyb.from({0.5}):requires_grad()):find("requires_grad=true", 1, true), "requires_grad shown")
end)

H.run("errors", function()
  local x = hyb.ones({2, 3})
  H.raises(function() return x + hyb.ones({3, 2}) end, "hyb.add: shapes [2, 3] and [3, 2] do not broadcast", "shape mismatch names op and shapes")
  H.raises(function() return hyb.matmul(x, "w") end, "hyb.matmul: argument 2 must be a hyb.tensor, got string", "non-tensor argument position")
  H.raises(function() return hyb.exp(nil) end, "hyb.exp: argument 1 must be a hyb.tensor", "nil argument")
  H.raises(function() return x:matmul(x) end, "inner dims differ (3 vs 2)", "matmul inner dims")
  H.raises(function() return x:sum(3) end, "outside the tensor's 2 dims", "bad dim")
  H.raises(function() return x:reshape({4, 2}) end, "cannot reshape [2, 3]", "reshape count")
  H.raises(function() return x:expand({2, 4}) end, "only size-1 dims expand", "bad expand")
  H.raises(function() return hyb.gather(x, 2, hyb.tensor({2, 1}, {0, 3}, "i32")) end, "index 3", "gather index out of range")
  H.raises(function() return hyb.exp(hyb.zeros({2}, "i32")) end, "must be an f32 tensor", "dtype")
  H.raises(function() return hyb.cat({x, 5}) end, "entry 2 of argument 1", "cat entry")
  local old = hyb.check_nan(true)
  H.raises(function() return hyb.log(x - 2) end, "hyb.log: produced NaN", "check_nan catches a NaN")
  hyb.check_nan(old)
  local y = hyb.log(x - 2)
  H.check(y:has_nan(), "has_nan without check_nan")
end)

H.run("CUDA kernels equal the CPU's: forward and gradients", function()
  if not pcall(hyb.device, "cuda") then print("(no CUDA device: HYB_CUDA_EMULATE=1 runs this part)") return end
  local pos = function(s) return rnd(s, 0.3, 2.0) end
  local idx = hyb.tensor({2, 4}, {0, 2, 2, 1, 1, 1, 0, 2}, "i32")
  local cases = {
    {"broadcast arithmetic", function(d, a, b) return (a * b + a / (b * b + 1) - 2) ^ 2 end, {rnd({2, 3, 1}), rnd({4})}},
    {"unary", function(d, a) return a:exp() + a:sigmoid() + a:silu() + a:softplus() + a:tanh() + a:abs() end, {rnd({3, 5})}},
    {"unary (positive)", function(d, a) return a:log() + a:sqrt() + a:rsqrt() + 1 / a end, {pos({3, 5})}},
    {"where, maximum", function(d, a, b) return hyb.where(a:gt(0), a, b) + hyb.maximum(a, b) end, {rnd({3, 4}), rnd({4})}},
    {"views", function(d, a) return hyb.cat({a:transpose(1, 2), a:narrow(2, 1, 2):permute({2, 1, 3})}, 1):expand({2, 5, 2, 3}) * 1 end, {rnd({2, 3, 3})}},
    {"axis ops", function(d, a) return a:softmax(2) + a:log_softmax(1) + a:cumsum(3) + a:logsumexp(2, true) + a:max(3, true) + a:mean(1, true) end, {rnd({2, 3, 4})}},
    {"matmul", function(d, a, b, c) return a:matmul(b):matmul(c:transpose()) end, {rnd({2, 3, 4}), rnd({4, 5}), rnd({2, 6, 5})}},
    {"tril, conv1d, rms_norm", function(d, x, w, g) return hyb.rms_norm(hyb.conv1d_causal(x, w), g):tril(1) end, {rnd({2, 5, 3}), rnd({3, 4}), rnd({3})}},
    {"gather", function(d, x) return hyb.gather(x, 2, idx:to(d)) end, {rnd({2, 3})}},
  }
  for _, c in ipairs(cases) do
    local res = {}
    for _, dev in ipairs({"cpu", "cuda"}) do
      local leaves = {}
      for i, x in ipairs(c[3]) do leaves[i] = x:to(dev):detach():requires_grad() end
      local out = c[2](dev, table.unpack(leaves))
      local R = hyb.randn(out:shape(), 3):to(dev)
      ;(out * R):sum_all():backward()
      local r = {out:to("cpu")}
      for i, l in ipairs(leaves) do r[i + 1] = l.grad:to("cpu") end
      res[dev] = r
    end
    local worst = 0
    for i = 1, #res.cpu do
      local a, b = res.cpu[i], res.cuda[i]
      local scale = math.max(1, math.abs(a:max()), math.abs(a:min()))
      worst = math.max(worst, a:max_abs_diff(b) / scale)
    end
    H.check(worst < 1e-5, ("%s: CUDA vs CPU, worst relative difference %.2e"):format(c[1], worst))
  end
  local m = hyb.model(H.root .. "/graphs/tiny.toml", {seed = 1})
  m:to("cuda")
  H.check(tostring(m:param("model.norm.weight")):find("device=cuda", 1, true), "a device tensor prints")
end)

H.run("a loop of ops frees its tensors as it goes (the collector is told about their data)", function()
  local x = hyb.randn({128, 1024}, 1):requires_grad() -- 512 KB
  collectgarbage()
  local before, peak = hyb.live_tensor_bytes(), 0
  for _ = 1, 150 do -- ~2 MB of tensors per step
    (x * 1.0001):exp():sum_all():backward()
    peak = math.max(peak, hyb.live_tensor_bytes() - before)
  end
  H.check(peak < 40 * 2 ^ 20, ("at most %.1f MB of tensors alive over 150 steps (about 300 MB if nothing were freed)"):format(peak / 2 ^ 20))
end)

os.exit(H.done())
