-- scripts/bench.lua: serving throughput of the engine (hyb.engine) for one or more layer maps.
--
--   hyb bench [options]
--   hyb run scripts/bench.lua --maps graphs/smollm2-135m.toml,graphs/smollm2-135m-h6.toml \
--       --n 8 --prompt 128 --gen 32 --concurrency 4 --contexts 1024,2048,4096,8000
--
-- Workload: N requests of P random prompt tokens and G generated tokens (greedy), all submitted at
-- once to an engine with C slots (continuous batching, chunked prefill). Reported per map:
-- requests/s, output tokens/s, time to first token (mean, p50, p99), per-token latency (gaps
-- between a request's consecutive tokens: p50, p90, p99) and the process's peak memory (VmHWM,
-- cumulative over the maps run so far in this process).
-- Context sweep (--contexts): per map, one shared random prompt of the largest context is
-- prefilled once (chunked), with a registered prefix at every context of the list (the engine
-- snapshots each in the same pass); every map keeps its engine. Then the maps are measured
-- interleaved: for each repetition, for each context, each map in turn (the map order rotates by
-- one every repetition) runs C requests whose prompt is exactly that prefix: they restore it and
-- decode G tokens together. Reported per (map, context): the median over the repetitions of the
-- decode tokens/s (decode tokens / time in the batched decode), and per hybrid the median of the
-- paired ratios hybrid/first map (both measured seconds apart, so load changes cancel), next to
-- the memory-bound expectation from the memory plans (bytes one decode step reads: weights +
-- C * (KV bytes/token * context + fixed state bytes), first map over this map). The 1-minute
-- load average is recorded at every measurement. Random weights (hyb.model builds them):
-- throughput does not depend on values.
--
-- Options:
--   --maps A,B,...      layer maps (default graphs/smollm2-135m.toml,graphs/smollm2-135m-h6.toml)
--   --n N               requests in the workload (default 8; 0 skips the workload)
--   --prompt P          prompt tokens per request (default 128)
--   --gen G             generated tokens per request (default 32)
--   --concurrency C     engine slots (default 4)
--   --chunk K           prefill tokens per engine step (default 256)
--   --contexts L        comma-separated contexts for the sweep (default none)
--   --sweep-gen G       tokens decoded per request in the sweep (default 16); the largest context
--                       + G must fit the map's max_seq
--   --reps R            repetitions of the interleaved sweep (default 3; the median is reported)
--   --budget BYTES      also print the memory plan of each map for this budget (default 24e9)
--   --out FILE.json     results (default bench/results/engine-<UTC time>.json); the SVG plot goes
--                       next to it (.svg) when there is a sweep
--   --seed S            model and prompt seed (default 1)
local hyb = require("hyb")

local function usage(msg)
  if msg then io.stderr:write("hyb bench: ", msg, "\n") end
  ;(msg and io.stderr or io.stdout):write("usage: hyb bench [--maps A,B] [--n N] [--prompt P] [--gen G] [--concurrency C]\n",
                  "         [--chunk K] [--contexts L] [--sweep-gen G] [--reps R] [--budget BYTES] [--out F]\n",
                  "         [--seed S]\n")
  os.exit(msg and 2 or 0) -- --help: stdout, status 0
end

local function split(s)
  local t = {}
  for x in s:gmatch("[^,]+") do t[#t + 1] = x end
  return t
end

local opt = {maps = "graphs/smollm2-135m.toml,graphs/smollm2-135m-h6.toml", n = 8, prompt = 128,
             gen = 32, concurrency = 4, chunk = 256, contexts = "", ["sweep-gen"] = 16,
             reps = 3, budget = 24e9, out = nil, seed = 1}
local numeric = {n = true, prompt = true, gen = true, concurrency = true, chunk = true,
                 ["sweep-gen"] = true, reps = true, budget = true, seed = true}
local args = {...}
local i = 1
while i <= #args do
  local a = args[i]
  local k = a:match("^%-%-(.+)$")
  if a == "-h" then usage() end
  if not k then usage("unexpected argument " .. a) end
  if k == "help" or a == "-h" then usage() end
  if opt[k] == nil and k ~= "out" then
    local names = {out = true}
    for n in pairs(opt) do names[n] = true end
    usage("unknown option --" .. k .. require("recipelib").option_hint(k, names))
  end
  local v = args[i + 1]
  if v == nil then usage("--" .. k .. " needs a value") end
  if numeric[k] then
    v = tonumber(v)
    if not v or v < 0 or (k ~= "budget" and v ~= math.floor(v)) then usage("--" .. k .. " must be a non-negative integer") end
    v = math.tointeger(v) or v
  end
  opt[k] = v
  i = i + 2
end
if opt.concurrency < 1 then usage("--concurrency must be >= 1") end
if opt.gen < 1 or opt["sweep-gen"] < 2 then usage("--gen must be >= 1 and --sweep-gen >= 2") end
if opt.reps < 1 then usage("--reps must be >= 1") end
if opt.n > 0 and opt.prompt < 1 then usage("--prompt must be >= 1") end

local maps = split(opt.maps)
local contexts = {}
for _, c in ipairs(split(opt.contexts)) do
  local v = math.tointeger(tonumber(c))
  if not v or v < 1 then usage("--contexts entries must be positive integers, got " .. c) end
  contexts[#contexts + 1] = v
end
table.sort(contexts)

---------------------------------------------------------------------------------------------------
local function read_file(p)
  local f = io.open(p, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function vmhwm_bytes()
  local s = read_file("/proc/self/status") or ""
  local kb = s:match("VmHWM:%s*(%d+)%s*kB")
  return kb and tonumber(kb) * 1024 or 0
end

local function loadavg()
  local s = read_file("/proc/loadavg") or ""
  return s:match("^(%S+ %S+ %S+)") or "?"
end

local function ncpu()
  local s = read_file("/proc/cpuinfo") or ""
  local n = 0
  for _ in s:gmatch("\nprocessor%s*:") do n = n + 1 end
  if s:match("^processor") then n = n + 1 end
  return n
end

-- nearest-rank percentile of a sorted list
local function pct(sorted, p)
  if #sorted == 0 then return 0 / 0 end
  local k = math.max(1, math.ceil(p / 100 * #sorted))
  return sorted[math.min(k, #sorted)]
end

local function mean(t)
  local s = 0
  for _, x in ipairs(t) do s = s + x end
  return #t > 0 and s / #t or 0 / 0
end

-- deterministic prompt ids (LCG), different per (seed, request)
local function random_ids(n, V, seed)
  local x, t = (seed * 2654435761 + 12345) % 4294967296, {}
  for k = 1, n do
    x = (1103515245 * x + 12345) % 2147483648
    t[k] = x % V
  end
  return t
end

-- minimal JSON encoder (tables with only positive integer keys are arrays)
local function json(v, ind)
  ind = ind or ""
  local tv = type(v)
  if tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.6g", v)
  elseif tv == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      return ({['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t"})[c] or
             string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif tv == "boolean" then
    return tostring(v)
  elseif tv == "table" then
    local n = #v
    local is_array = n > 0 or next(v) == nil
    if is_array then
      for k in pairs(v) do if math.type(k) ~= "integer" or k < 1 or k > n then is_array = false end end
    end
    local inner = ind .. "  "
    local parts = {}
    if is_array then
      for k = 1, n do parts[k] = inner .. json(v[k], inner) end
      return "[\n" .. table.concat(parts, ",\n") .. "\n" .. ind .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do parts[#parts + 1] = inner .. json(k) .. ": " .. json(v[k], inner) end
    return "{\n" .. table.concat(parts, ",\n") .. "\n" .. ind .. "}"
  end
  return "null"
end

-- tiny SVG line plot: series = {{name=, points={{x, y}, ...}}, ...}; x on a log2 axis
local function svg_plot(path, title, xlabel, ylabel, series)
  local W, Hh, ml, mr, mt, mb = 720, 440, 80, 200, 50, 60
  local pw, ph = W - ml - mr, Hh - mt - mb
  local xmin, xmax, ymax = math.huge, -math.huge, 0
  for _, s in ipairs(series) do
    for _, p in ipairs(s.points) do
      xmin, xmax = math.min(xmin, p[1]), math.max(xmax, p[1])
      ymax = math.max(ymax, p[2])
    end
  end
  if xmin == math.huge then return end
  local lx0, lx1 = math.log(xmin, 2), math.log(xmax, 2)
  if lx1 == lx0 then lx1 = lx0 + 1 end
  ymax = ymax * 1.1
  if ymax <= 0 then ymax = 1 end
  local function X(x) return ml + (math.log(x, 2) - lx0) / (lx1 - lx0) * pw end
  local function Y(y) return mt + ph - y / ymax * ph end
  local colors = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}
  local o = {}
  local function add(fmt, ...) o[#o + 1] = string.format(fmt, ...) end
  add('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">', W, Hh)
  add('<rect width="100%%" height="100%%" fill="white"/>')
  add('<text x="%d" y="25" font-size="15">%s</text>', ml, title)
  add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>', ml, mt + ph, ml + pw, mt + ph)
  add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>', ml, mt, ml, mt + ph)
  for k = 0, 5 do
    local y = ymax * k / 5
    add('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>', ml, Y(y), ml + pw, Y(y))
    add('<text x="%d" y="%.1f" text-anchor="end">%.3g</text>', ml - 6, Y(y) + 4, y)
  end
  local seen = {}
  for _, s in ipairs(series) do
    for _, p in ipairs(s.points) do
      if not seen[p[1]] then
        seen[p[1]] = true
        add('<text x="%.1f" y="%d" text-anchor="middle">%d</text>', X(p[1]), mt + ph + 18, p[1])
      end
    end
  end
  add('<text x="%d" y="%d" text-anchor="middle">%s</text>', ml + pw // 2, Hh - 15, xlabel)
  add('<text x="18" y="%d" transform="rotate(-90 18 %d)" text-anchor="middle">%s</text>',
      mt + ph // 2, mt + ph // 2, ylabel)
  for k, s in ipairs(series) do
    local c = colors[(k - 1) % #colors + 1]
    local pts = {}
    for _, p in ipairs(s.points) do pts[#pts + 1] = string.format("%.1f,%.1f", X(p[1]), Y(p[2])) end
    add('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>', c, table.concat(pts, " "))
    for _, p in ipairs(s.points) do
      add('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>', X(p[1]), Y(p[2]), c)
    end
    add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>', ml + pw + 15,
        mt + 20 * k, ml + pw + 35, mt + 20 * k, c)
    add('<text x="%d" y="%d">%s</text>', ml + pw + 40, mt + 20 * k + 4, s.name)
  end
  add("</svg>")
  local f = assert(io.open(path, "w"))
  f:write(table.concat(o, "\n"), "\n")
  f:close()
end

---------------------------------------------------------------------------------------------------
local function map_name(path) return (path:match("([^/]+)%.toml$") or path) end

local function run_workload(m, V)
  local e = hyb.engine(m, {slots = opt.concurrency, max_ctx = opt.prompt + opt.gen + 1,
                           prefill_chunk = opt.chunk})
  local t0 = hyb.time()
  for r = 1, opt.n do
    e:submit(random_ids(opt.prompt, V, opt.seed * 1000 + r), {max_tokens = opt.gen})
  end
  local cs = e:run()
  local wall = hyb.time() - t0
  local ttft, gaps, out_tokens = {}, {}, 0
  for _, c in ipairs(cs) do
    ttft[#ttft + 1] = c.ttft
    out_tokens = out_tokens + #c.tokens
    for k = 2, #c.token_times do gaps[#gaps + 1] = c.token_times[k] - c.token_times[k - 1] end
  end
  table.sort(ttft)
  table.sort(gaps)
  local s = e:stats()
  e:close()
  return {requests = #cs, wall_s = wall, requests_per_s = #cs / wall,
          output_tokens_per_s = out_tokens / wall, ttft_mean_s = mean(ttft),
          ttft_p50_s = pct(ttft, 50), ttft_p99_s = pct(ttft, 99), tpot_p50_s = pct(gaps, 50),
          tpot_p90_s = pct(gaps, 90), tpot_p99_s = pct(gaps, 99), peak_rss_bytes = vmhwm_bytes(),
          state_bytes = s.state_bytes, prefill_tokens = s.prefill_tokens,
          decode_tokens = s.decode_tokens, t_prefill_s = s.t_prefill, t_decode_s = s.t_decode}
end

-- prefill the longest context once, snapshotting every context; returns the engine kept for the
-- interleaved measurements
local function sweep_setup(m, V, max_seq)
  local G, cmax = opt["sweep-gen"], contexts[#contexts]
  local max_ctx = cmax + G
  if max_ctx > max_seq then
    io.stderr:write(("bench: the largest context %d + %d generated tokens exceeds max_seq %d\n"):format(cmax, G, max_seq))
    os.exit(2)
  end
  local e = hyb.engine(m, {slots = opt.concurrency, max_ctx = max_ctx, prefill_chunk = opt.chunk})
  local base = random_ids(cmax, V, opt.seed * 7777)
  for _, c in ipairs(contexts) do e:add_prefix(table.move(base, 1, c, 1, {})) end
  local long = table.move(base, 1, cmax, 1, {})
  long[#long + 1] = 1
  local t0 = hyb.time()
  e:submit(long, {max_tokens = 1}) -- prefills cmax + 1 tokens once, snapshotting every context
  e:run()
  return {e = e, base = base, prefill_once_s = hyb.time() - t0}
end

-- one measurement: C requests restore the prefix of context c and decode G tokens together
local function sweep_measure(sw, c)
  local G, e = opt["sweep-gen"], sw.e
  local before = e:stats()
  local prompt = table.move(sw.base, 1, c, 1, {})
  local load1 = tonumber((loadavg():match("^(%S+)")))
  local t1 = hyb.time()
  for _ = 1, opt.concurrency do e:submit(prompt, {max_tokens = G}) end
  local cs = e:run()
  local wall = hyb.time() - t1
  local after = e:stats()
  local dtok = after.decode_tokens - before.decode_tokens
  local dt = after.t_decode - before.t_decode
  return {decode_tokens_per_s = dtok / dt, decode_s = dt, decode_tokens = dtok, wall_s = wall,
          load1 = load1, prefix_hits = after.prefix_hits - before.prefix_hits, requests = #cs}
end

local function median(t)
  local s = table.move(t, 1, #t, 1, {})
  table.sort(s)
  local n = #s
  if n == 0 then return 0 / 0 end
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

-- bytes one batched decode step reads at context c (memory plan): weights + C sequences' state
local function step_bytes(plan, c)
  if not plan then return 0 / 0 end
  return plan.weight_bytes + opt.concurrency * (plan.kv_bytes_per_token * c + plan.fixed_bytes_per_seq)
end

---------------------------------------------------------------------------------------------------
hyb.log_level("warn")
local started = os.date("!%Y-%m-%dT%H:%M:%SZ")
local results = {started = started, command = "hyb bench " .. table.concat(args, " "),
                 cpus = ncpu(), load_start = loadavg(), options = opt, maps = {}}
io.stderr:write(("bench: %d CPUs, load average %s\n"):format(results.cpus, results.load_start))
local sweeps = {}
for _, path in ipairs(maps) do
  local name = map_name(path)
  local r = {map = path, name = name}
  local ok, plan = pcall(hyb.plan_memory, path, {budget_bytes = opt.budget,
                                                 context = contexts[#contexts] or opt.prompt + opt.gen})
  if ok then
    r.plan = plan
    io.stderr:write(plan.text, "\n")
  else
    io.stderr:write("memory plan: ", tostring(plan), "\n")
  end
  local lm = hyb.layermap(path)
  local V = lm:config().vocab_size
  local max_seq = lm:config().max_seq
  local m = hyb.model(path, {seed = opt.seed})
  if opt.n > 0 then
    io.stderr:write(("bench %s: workload %d requests x (%d prompt + %d generated), concurrency %d (load %s)\n"):format(
      name, opt.n, opt.prompt, opt.gen, opt.concurrency, loadavg()))
    r.workload = run_workload(m, V)
  end
  if #contexts > 0 then
    io.stderr:write(("bench %s: prefill of %d tokens for the sweep (load %s)\n"):format(
      name, contexts[#contexts], loadavg()))
    local sw = sweep_setup(m, V, max_seq)
    sw.m = m
    sweeps[#sweeps + 1] = sw
    r.sweep = {prefill_once_s = sw.prefill_once_s, samples = {}, rows = {}}
  end
  results.maps[#results.maps + 1] = r
  m = nil
  collectgarbage()
end
-- the interleaved sweep: rep -> context -> maps in rotated order
if #contexts > 0 then
  local nm = #results.maps
  for rep = 1, opt.reps do
    for ci, c in ipairs(contexts) do
      local line = {}
      for k = 0, nm - 1 do
        local mi = (rep - 1 + k) % nm + 1
        local s = sweep_measure(sweeps[mi], c)
        s.rep, s.order = rep, k + 1
        local smp = results.maps[mi].sweep.samples
        smp[ci] = smp[ci] or {}
        smp[ci][rep] = s
        line[#line + 1] = ("%s %.2f"):format(results.maps[mi].name, s.decode_tokens_per_s)
      end
      io.stderr:write(("  rep %d/%d context %6d (load %s): %s tok/s\n"):format(
        rep, opt.reps, c, loadavg(), table.concat(line, ", ")))
    end
  end
  local first = results.maps[1]
  for mi, r in ipairs(results.maps) do
    local sw = sweeps[mi]
    local st = sw.e:stats()
    r.sweep.prefix_bytes = st.prefix_bytes
    r.sweep.prefill_tokens = st.prefill_tokens
    for ci, c in ipairs(contexts) do
      local tps, loads, ratios = {}, {}, {}
      for rep = 1, opt.reps do
        local s = r.sweep.samples[ci][rep]
        tps[#tps + 1] = s.decode_tokens_per_s
        loads[#loads + 1] = s.load1
        ratios[#ratios + 1] = s.decode_tokens_per_s / first.sweep.samples[ci][rep].decode_tokens_per_s
      end
      table.sort(tps)
      r.sweep.rows[ci] = {context = c, decode_tokens_per_s = median(tps), min_tokens_per_s = tps[1],
                          max_tokens_per_s = tps[#tps], ratio_to_first = median(ratios),
                          step_bytes = step_bytes(r.plan, c),
                          expected_ratio_to_first = step_bytes(first.plan, c) / step_bytes(r.plan, c),
                          load1_min = math.min(table.unpack(loads)),
                          load1_max = math.max(table.unpack(loads))}
    end
    sw.e:close()
  end
  results.peak_rss_bytes = vmhwm_bytes()
end
results.load_end = loadavg()

-- tables
local function ms(x) return string.format("%.1f", x * 1000) end
print(("\nServing throughput (load average %s at start, %s at end; %d CPUs)"):format(
  results.load_start, results.load_end, results.cpus))
if opt.n > 0 then
  print(("\nWorkload: %d requests x %d prompt + %d generated tokens, concurrency %d, prefill chunk %d"):format(
    opt.n, opt.prompt, opt.gen, opt.concurrency, opt.chunk))
  print("| layout | req/s | out tok/s | TTFT mean / p50 / p99 (ms) | per-token p50 / p90 / p99 (ms) | peak RSS (MiB) |")
  print("|---|---|---|---|---|---|")
  for _, r in ipairs(results.maps) do
    local w = r.workload
    print(("| %s | %.3f | %.2f | %s / %s / %s | %s / %s / %s | %.0f |"):format(r.name, w.requests_per_s,
      w.output_tokens_per_s, ms(w.ttft_mean_s), ms(w.ttft_p50_s), ms(w.ttft_p99_s), ms(w.tpot_p50_s),
      ms(w.tpot_p90_s), ms(w.tpot_p99_s), w.peak_rss_bytes / 2 ^ 20))
  end
end
if #contexts > 0 then
  print(("\nDecode throughput vs context (%d sequences decoding together, %d tokens each; tokens/s, median of %d interleaved repetitions, min-max in brackets)"):format(
    opt.concurrency, opt["sweep-gen"], opt.reps))
  local hdr, sep = {"| context | load (1 min)"}, {"|---|---"}
  for _, r in ipairs(results.maps) do hdr[#hdr + 1] = " | " .. r.name; sep[#sep + 1] = "|---" end
  for k = 2, #results.maps do
    hdr[#hdr + 1] = " | " .. results.maps[k].name .. " / " .. results.maps[1].name .. " (memory-bound expectation)"
    sep[#sep + 1] = "|---"
  end
  print(table.concat(hdr) .. " |")
  print(table.concat(sep) .. "|")
  for ci, c in ipairs(contexts) do
    local lo, hi = math.huge, -math.huge
    for _, r in ipairs(results.maps) do
      lo = math.min(lo, r.sweep.rows[ci].load1_min)
      hi = math.max(hi, r.sweep.rows[ci].load1_max)
    end
    local row = {("| %d | %.2f-%.2f"):format(c, lo, hi)}
    for _, r in ipairs(results.maps) do
      local w = r.sweep.rows[ci]
      row[#row + 1] = (" | %.2f (%.2f-%.2f)"):format(w.decode_tokens_per_s, w.min_tokens_per_s, w.max_tokens_per_s)
    end
    for k = 2, #results.maps do
      local w = results.maps[k].sweep.rows[ci]
      row[#row + 1] = (" | %.2fx (%.2fx)"):format(w.ratio_to_first, w.expected_ratio_to_first)
    end
    print(table.concat(row) .. " |")
  end
end

-- files
local out = opt.out or ("bench/results/engine-" .. started:gsub("[:]", "") .. ".json")
local dir = out:match("^(.*)/[^/]*$")
if dir then os.execute("mkdir -p '" .. dir .. "'") end
local f = assert(io.open(out, "w"))
f:write(json(results), "\n")
f:close()
print("\nresults: " .. out)
if #contexts > 0 then
  local series = {}
  for _, r in ipairs(results.maps) do
    local pts = {}
    for _, row in ipairs(r.sweep.rows) do pts[#pts + 1] = {row.context, row.decode_tokens_per_s} end
    series[#series + 1] = {name = r.name, points = pts}
  end
  local svg = out:gsub("%.json$", "") .. ".svg"
  svg_plot(svg, ("Decode throughput vs context (%d sequences, median of %d interleaved runs)"):format(
             opt.concurrency, opt.reps),
           "context (tokens)", "decode tokens/s", series)
  print("plot: " .. svg)
end
