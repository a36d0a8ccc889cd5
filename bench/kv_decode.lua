-- bench/kv_decode.lua: batch-1 decode speed of one model with each KV-cache type (f32, f16,
-- q8_0) at a short and a long context, runs interleaved (type after type, repetition after
-- repetition) so that a busy machine slows all of them alike. Reports the best wall and CPU
-- seconds per token of each, the KV bytes per token of context, and the load average around.
--
--   hyb run bench/kv_decode.lua [model.gguf] [reps (3)] [steps (32)] [long ctx (2000)]
local path = (arg[1] ~= "" and arg[1]) or os.getenv("HYB_MODEL")
  or (os.getenv("HOME") .. "/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf")
local reps, steps, long = tonumber(arg[2]) or 3, tonumber(arg[3]) or 32, tonumber(arg[4]) or 2000
local kinds = {"f32", "f16", "q8_0"}
local function loadavg()
  local f = io.open("/proc/loadavg")
  local s = f and f:read("l") or "?"
  if f then f:close() end
  return s:match("^(%S+ %S+ %S+)") or s
end
local m = {}
for _, k in ipairs(kinds) do m[k] = hyb.bench.load(path, {kv_cache = k}) end
local best = {}
local before = loadavg()
for _ = 1, reps do
  for _, ctx in ipairs({1, long}) do
    for _, k in ipairs(kinds) do
      local w, c = m[k]:decode(1, steps, ctx)
      local key = k .. "@" .. ctx
      local b = best[key] or {w = math.huge, c = math.huge}
      b.w, b.c = math.min(b.w, w), math.min(b.c, c)
      best[key] = b
    end
  end
end
print(("model %s; %d reps of %d decode steps (B = 1), best of each; load avg before %s, after %s")
  :format(path, reps, steps, before, loadavg()))
print(("%-6s %12s %10s %12s %10s %12s"):format("kv", "KV B/token", "ctx", "tok/s", "ms/tok",
  "cpu ms/tok"))
for _, ctx in ipairs({1, long}) do
  for _, k in ipairs(kinds) do
    local b = best[k .. "@" .. ctx]
    print(("%-6s %12d %10d %12.2f %10.2f %12.2f"):format(k, m[k]:kv_bytes_per_token(), ctx,
      steps / b.w, b.w / steps * 1e3, b.c / steps * 1e3))
  end
end
