-- bench/mamba2_bench_lua.lua: the Lua prototype of Mamba-2 (examples/mixers/mamba2.lua) timed on
-- the weights and inputs that bench/mamba2_bench.c dumps (run by bench/mamba2_bench.sh, interleaved
-- with the C plugin and PyTorch). It checks that it computes the plugin's y and dx, then times a
-- training step (forward + the tape's backward of sum(y * dy) into x and every parameter) and a
-- decode step (the mixer's `step` for one token after a prefill of T tokens by steps, untimed) at batch 1
-- and batch B, each the median over its repetitions. Prints one JSON line.
--   hyb run bench/mamba2_bench_lua.lua dump.bin reps decode_steps threads
local hyb = require("hyb")
local ML = require("mixerlib")
local path, reps, steps, threads = arg[1], tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
assert(path and reps and steps and threads, "usage: mamba2_bench_lua.lua dump.bin reps decode_steps threads")
hyb.threads(threads)
local f = assert(io.open(path, "rb"))
local s = f:read("a")
f:close()
local h, pos = {}, 1
for i = 1, 12 do h[i], pos = string.unpack("<i4", s, pos) end
assert(h[1] == 0x3241424D, path .. ": not a mamba2 dump")
local eps
eps, pos = string.unpack("<d", s, pos)
local B, T, D, Di, Pd, G, N, K, Q = h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10]
local nh, GN = Di // Pd, G * N
local function arr(shape)
  local n = 1
  for _, v in ipairs(shape) do n = n * v end
  local v = {}
  for i = 1, n do v[i], pos = string.unpack("<f", s, pos) end
  return hyb.tensor(shape, v)
end
local x = arr({B, T, D})
local m = ML.load("examples/mixers/mamba2.lua", {d_inner = Di, headdim = Pd, ngroups = G, d_state = N,
  d_conv = K, chunk_size = Q, norm_eps = eps}, {d_model = D})
m:init(1)
for _, p in ipairs({{"in_proj.weight", {2 * Di + 2 * GN + nh, D}}, {"conv1d.weight", {Di + 2 * GN, 1, K}},
                    {"conv1d.bias", {Di + 2 * GN}}, {"dt_bias", {nh}}, {"A_log", {nh}}, {"D", {nh}},
                    {"norm.weight", {Di}}, {"out_proj.weight", {D, Di}}}) do
  m.params[p[1]] = arr(p[2]):requires_grad()
end
local dy, y_h, dx_h = arr({B, T, D}), arr({B, T, D}), arr({B, T, D})
local function median(v)
  table.sort(v)
  local n = #v
  return n % 2 == 1 and v[(n + 1) // 2] or 0.5 * (v[n // 2] + v[n // 2 + 1])
end
local function rel(a, b) return a:contiguous():max_abs_diff(b) / math.max(1, math.abs(b:max()), math.abs(b:min())) end
local tw, tc, y, xx = {}, {}, nil, nil
for k = 0, reps do -- the first is a warm-up
  for _, p in pairs(m.params) do p:zero_grad() end
  xx = x:clone():requires_grad()
  local t0, c0 = hyb.time(), os.clock()
  y = m:forward(xx)
  ;(y * dy):sum_all():backward()
  if k > 0 then tw[#tw + 1], tc[#tc + 1] = (hyb.time() - t0) * 1e3, (os.clock() - c0) * 1e3 end
end
local function decode(n)
  return hyb.no_grad(function()
    local xn = x:narrow(1, 1, 1):expand({n, T, D}):contiguous()
    local st, _ = m:new_state(n)
    for t = 1, T do _, st = m:step(xn:narrow(2, t, 1), st) end
    local ts = {}
    for i = 1, steps do
      local u = xn:narrow(2, (i - 1) % T + 1, 1):contiguous()
      local t0 = hyb.time()
      local _, st2 = m:step(u, st)
      ts[i] = (hyb.time() - t0) * 1e3
      st = st2
    end
    return median(ts)
  end)
end
print(("{\"impl\": \"lua\", \"B\": %d, \"T\": %d, \"train_ms\": %.4f, \"train_cpu_ms\": %.4f, \"decode1_ms\": %.4f, " ..
       "\"decodeB_ms\": %.4f, \"y_vs_hyb\": %.3g, \"dx_vs_hyb\": %.3g}"):format(B, T, median(tw), median(tc),
       decode(1), decode(B), rel(y, y_h), rel(xx.grad, dx_h)))
