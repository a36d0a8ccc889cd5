-- bench/llama_compare.lua: hyb's side of bench/llama_compare.sh; one process is one measurement.
--
--   hyb run bench/llama_compare.lua speed  MODEL IDS [options]      one JSON line on stdout
--   hyb run bench/llama_compare.lua logits MODEL IDS OUT N [options]
--
-- IDS: a file of whitespace-separated token ids (the held-out text, tokenized once by the
-- driver), fed to hyb and to llama.cpp alike; no sampling on either side.
-- speed: load time (hyb.llm), a short untimed warm-up, then
--   prefill: the first --prefill ids (default 512) in one call, from an empty context;
--   decode at context 0: --decode ids (default 128), one decode step (llm:feed) each;
--   decode at context --ctx (default 2000): the first --ctx ids prefilled in chunks of 512
--     (llama.cpp's n_batch), untimed, then --decode steps;
--   wall seconds (hyb.time) and CPU seconds of the process, all threads (os.clock), of each
--   timed part; resident memory (VmRSS) before the load and the peak (VmHWM) at the end.
-- logits: the first N ids fed one decode step at a time (the generation path); each position's
--   logits [V] appended to OUT as little-endian f32 (N x V), for the KL / top-1 analysis.
-- Options: --prefill N, --decode N, --ctx N, and --llm KEY=VALUE (repeatable): a field of
-- hyb.llm's option table (e.g. quant=fast, kv_cache=f16), or threads=N (hyb.threads); bench/llama_compare.sh
-- passes the ones this hyb lists as flags of `hyb generate`, so that an older binary is not
-- given options it would refuse. Values that look like integers are passed as integers.
local hyb = require("hyb")
hyb.log_level("warn")

local function fail(msg)
  io.stderr:write("llama_compare.lua: ", msg, "\n")
  os.exit(2)
end

local mode, model, ids_path = arg[1], arg[2], arg[3]
if mode ~= "speed" and mode ~= "logits" then fail("first argument: speed or logits, got " .. tostring(mode)) end
if not model or not ids_path then fail("usage: speed|logits MODEL IDS [OUT N] [options]") end
local i = 4
local out_path, npos
if mode == "logits" then
  out_path, npos = arg[4], math.tointeger(tonumber(arg[5] or ""))
  if not out_path or not npos or npos < 1 then fail("logits: give OUT and a positive N") end
  i = 6
end
local o = {prefill = 512, decode = 128, ctx = 2000}
local llm_opts = {}
while arg[i] do
  local a = arg[i]
  local k = a:match("^%-%-(%w+)$")
  if k == "llm" then
    local key, v = (arg[i + 1] or ""):match("^([%w_]+)=(.+)$")
    if not key then fail("--llm needs KEY=VALUE, got " .. tostring(arg[i + 1])) end
    llm_opts[key] = math.tointeger(tonumber(v)) or v
  elseif k and o[k] then
    o[k] = math.tointeger(tonumber(arg[i + 1] or ""))
    if not o[k] or o[k] < 1 then fail("--" .. k .. " needs a positive integer") end
  else
    fail("unknown argument " .. a)
  end
  i = i + 2
end

local ids = {}
do
  local f = io.open(ids_path, "r")
  if not f then fail("cannot read " .. ids_path) end
  for w in f:read("a"):gmatch("%S+") do ids[#ids + 1] = math.tointeger(tonumber(w)) end
  f:close()
end
local need = mode == "logits" and npos or math.max(o.prefill, o.ctx + o.decode, o.decode)
if #ids < need then fail(("%s holds %d ids, %d needed"):format(ids_path, #ids, need)) end

local function status_kb(field)
  local f = io.open("/proc/self/status", "r")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)")) or 0
end

local function slice(a, b)
  local t = {}
  for k = a, b do t[#t + 1] = ids[k] end
  return t
end

local rss0 = status_kb("VmRSS")
if mode == "logits" then llm_opts.max_ctx = llm_opts.max_ctx or npos + 8
else llm_opts.max_ctx = llm_opts.max_ctx or math.max(o.prefill, o.ctx + o.decode) + 8 end
local t0 = hyb.time()
-- the thread count is the process's (hyb.threads), not an option of one model
if llm_opts.threads then
  if hyb.threads then hyb.threads(llm_opts.threads) end
  llm_opts.threads = nil
end
local llm = hyb.llm(model, llm_opts)
local load_s = hyb.time() - t0

if mode == "logits" then
  local f = io.open(out_path, "wb")
  if not f then fail("cannot write " .. out_path) end
  local fmt
  for p = 1, npos do
    llm:feed(ids[p])
    local l = llm:logits():totable()
    fmt = fmt or ("<" .. ("f"):rep(#l))
    f:write(fmt:pack(table.unpack(l)))
  end
  f:close()
  io.write(('{"positions": %d, "vocab": %d, "load_s": %.4f}\n'):format(npos, llm:vocab_size(), load_s))
  return
end

-- warm-up (untimed): first touches of scratch buffers on both sides of the comparison
llm:prefill(slice(1, 16))
for k = 17, 20 do llm:feed(ids[k]) end

local function timed(fn)
  local c, t = os.clock(), hyb.time()
  fn()
  return hyb.time() - t, os.clock() - c
end

llm:reset()
local pre_s, pre_cpu = timed(function() llm:prefill(slice(1, o.prefill)) end)

llm:reset()
local d0_s, d0_cpu = timed(function() for k = 1, o.decode do llm:feed(ids[k]) end end)

llm:reset()
for a = 1, o.ctx, 512 do llm:prefill(slice(a, math.min(a + 511, o.ctx))) end
local dc_s, dc_cpu = timed(function() for k = o.ctx + 1, o.ctx + o.decode do llm:feed(ids[k]) end end)

io.write(('{"load_s": %.4f, "prefill_tokens": %d, "prefill_s": %.4f, "prefill_cpu_s": %.4f, ' ..
  '"decode_tokens": %d, "decode0_s": %.4f, "decode0_cpu_s": %.4f, "ctx": %d, ' ..
  '"decodec_s": %.4f, "decodec_cpu_s": %.4f, "rss_before_load_kb": %d, "peak_rss_kb": %d}\n'):format(
  load_s, o.prefill, pre_s, pre_cpu, o.decode, d0_s, d0_cpu, o.ctx, dc_s, dc_cpu, rss0,
  status_kb("VmHWM")))
