-- scripts/bench_cpu.lua: CPU inference benchmark of the default teacher (or $HYB_MODEL / arg 1).
--
--   hyb bench_cpu [model.gguf] [--quick] [--quant off|precise|fast] [--out FILE]
--                 [--kv-cache f16|q8_0|f32]
--
-- --quant: how a quantized GGUF's weights compute, as hyb generate --quant (default $HYB_QUANT,
-- else precise; off = dequantised to f32 at load).
-- Reports load time, prefill tok/s at prompt lengths 64/256/1024, decode tok/s at batch 1/4/16
-- (after a 32-token context per sequence), peak RSS, and the memory-bound floor: bytes of weights
-- one decode step reads divided by the measured read bandwidth. Prints a table and writes JSON to
-- bench/results/cpu-<date>.json (or --out). Each number is the best of `reps` runs (after one
-- warm-up run), so background load shows up as noise in the worst, not the reported, figure.
-- CPU seconds (user + system of all threads) are reported too: on a shared machine they move
-- less with other processes' load than wall time does. "ms" is per prefill / per decode step.
-- --kv-cache: the attention KV cache's storage type (default f16; kv_bytes_per_token follows it).
local USAGE = "usage: hyb bench_cpu [model.gguf] [--quick] [--quant off|precise|fast] [--out FILE]"
  .. " [--kv-cache f16|q8_0|f32]"
local function usage(msg)
  if not msg then print(USAGE) os.exit(0) end -- --help
  io.stderr:write("hyb bench_cpu: ", msg, "\n", USAGE, "\n")
  os.exit(2)
end
local args = { ... }
local path, out, quick, quant, kv_cache = nil, nil, false, nil, "f16"
local i = 1
while i <= #args do
  local a = args[i]
  if a == "--help" or a == "-h" then
    usage()
  elseif a == "--quick" then
    quick = true
  elseif a == "--kv-cache" or a:match("^%-%-kv%-cache=") then
    kv_cache = a:match("^%-%-kv%-cache=(.*)$")
    if not kv_cache then
      i = i + 1
      kv_cache = args[i] or usage("--kv-cache needs a value")
    end
    if kv_cache ~= "f16" and kv_cache ~= "q8_0" and kv_cache ~= "f32" then
      usage("--kv-cache must be one of f16, q8_0, f32, got '" .. kv_cache .. "'")
    end
  elseif a == "--out" then
    i = i + 1
    out = args[i] or usage("--out needs a value")
  elseif a == "--quant" or a:match("^%-%-quant=") then
    quant = a:match("^%-%-quant=(.*)$")
    if not quant then
      i = i + 1
      quant = args[i] or usage("--quant needs a value")
    end
    if quant ~= "off" and quant ~= "precise" and quant ~= "fast" then
      usage("--quant must be off, precise or fast, got '" .. quant .. "'")
    end
  elseif a:sub(1, 1) == "-" then
    usage("unknown option " .. a)
  elseif path then
    usage("unexpected argument " .. a .. " (one model path only)")
  else
    path = a
  end
  i = i + 1
end
path = path or os.getenv("HYB_MODEL")
  or (os.getenv("HOME") .. "/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf")

local reps = quick and 1 or 3
local prefill_lens = quick and { 64 } or { 64, 256, 1024 }
local batches = quick and { 1 } or { 1, 4, 16 }
local decode_steps = quick and 8 or 32

-- best wall and best CPU seconds (user + system, all threads) over n runs
local function best(f, n)
  local b, bc = math.huge, math.huge
  for _ = 1, n do
    local t, c = f()
    if t < b then b = t end
    if c < bc then bc = c end
  end
  return b, bc
end

local function sh(cmd)
  local p = io.popen(cmd)
  if not p then return "" end
  local s = p:read("a") or ""
  p:close()
  return (s:gsub("%s+$", ""))
end

local res = {
  model = path,
  date = os.date("!%Y-%m-%dT%H:%M:%SZ"),
  host = sh("uname -srm"),
  cpus = tonumber(sh("nproc")) or 0,
  cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"):gsub("^%s+", ""),
  load_before = sh("cut -d' ' -f1-3 /proc/loadavg"),
  omp_num_threads = os.getenv("OMP_NUM_THREADS") or "",
  omp_wait_policy = os.getenv("OMP_WAIT_POLICY") or "",
  openblas_num_threads = os.getenv("OPENBLAS_NUM_THREADS") or "",
  git = sh("git rev-parse --short HEAD 2>/dev/null"),
  prefill = {},
  decode = {},
}

local bw = hyb.bench.bandwidth(256)
res.copy_GBps, res.read_GBps = bw.copy / 1e9, bw.read / 1e9

res.kv_cache = kv_cache
local m <close> = hyb.bench.load(path, {quant = quant, kv_cache = kv_cache})
res.load_s = m:load_s()
res.weight_bytes = m:weight_bytes()
res.kv_bytes_per_token = m:kv_bytes_per_token()
res.floor_ms_per_token = res.weight_bytes / bw.read * 1e3
res.floor_tok_s = bw.read / res.weight_bytes

for _, T in ipairs(prefill_lens) do
  m:prefill(T) -- warm-up
  local s, c = best(function() return m:prefill(T) end, reps)
  res.prefill[#res.prefill + 1] = { T = T, seconds = s, cpu_seconds = c, tok_s = T / s }
end
for _, B in ipairs(batches) do
  m:decode(B, 2)
  local s, c = best(function() return m:decode(B, decode_steps) end, reps)
  res.decode[#res.decode + 1] = {
    B = B, steps = decode_steps, ctx = 32, seconds = s, cpu_seconds = c,
    ms_per_step = s / decode_steps * 1e3, tok_s = B * decode_steps / s,
  }
end
local mem = hyb.bench.mem()
res.peak_rss_mb, res.rss_mb = mem.hwm_mb, mem.rss_mb
res.load_after = sh("cut -d' ' -f1-3 /proc/loadavg")

print(string.format("model      %s", path))
print(string.format("machine    %s, %d cpus, load avg before %s / after %s", res.cpu, res.cpus,
  res.load_before, res.load_after))
print(string.format("load       %.2f s", res.load_s))
print(string.format("bandwidth  read %.1f GB/s, copy %.1f GB/s (read+write)", res.read_GBps,
  res.copy_GBps))
print(string.format("floor      %.1f MB weights / decode step -> %.1f ms/step, %.1f tok/s at B=1",
  res.weight_bytes / 1e6, res.floor_ms_per_token, res.floor_tok_s))
print(string.format("%-10s %6s %10s %10s %12s", "phase", "T/B", "ms", "tok/s", "cpu ms/tok"))
for _, p in ipairs(res.prefill) do
  print(string.format("%-10s %6d %10.1f %10.1f %12.2f", "prefill", p.T, p.seconds * 1e3, p.tok_s,
    p.cpu_seconds / p.T * 1e3))
end
for _, d in ipairs(res.decode) do
  print(string.format("%-10s %6d %10.1f %10.1f %12.2f   (step = %.2fx floor)", "decode", d.B,
    d.ms_per_step, d.tok_s, d.cpu_seconds / (d.B * d.steps) * 1e3,
    d.ms_per_step / res.floor_ms_per_token))
end
print(string.format("peak RSS   %.0f MB", res.peak_rss_mb))

-- JSON: evallib's encoder, numbers to 6 significant digits
local enc = require("evallib").json_short
if not out then
  os.execute("mkdir -p bench/results")
  out = "bench/results/cpu-" .. os.date("!%Y%m%d-%H%M%S") .. ".json"
end
local f = assert(io.open(out, "w"))
f:write(enc(res), "\n")
f:close()
print("wrote " .. out)
