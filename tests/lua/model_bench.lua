-- tests/lua/model_bench.lua: scripts/bench_cpu.lua --quick on the default teacher: it runs, and
-- its JSON holds the fields docs/BENCHMARKS.md reads, with plausible values.
-- Run: hyb run tests/lua/model_bench.lua   (skips without the model file)
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
local path = H.model_path()

local tmp = H.tmpdir()
H.run("bench_cpu --quick writes its table and JSON", function()
  local out_json = tmp .. "/b.json"
  local out, code = H.sh(H.quote(arg[-1]) .. " run " .. H.quote(H.root .. "/scripts/bench_cpu.lua")
    .. " " .. H.quote(path) .. " --quick --out " .. H.quote(out_json))
  H.eq(code, 0, "exit status: " .. out)
  H.check(out:find("prefill%s+64"), "table has the prefill row: " .. out)
  H.check(out:find("decode%s+1"), "table has the decode row: " .. out)
  local j = assert(io.open(out_json)):read("a")
  -- weights of SmolLM2-135M in f32: 134515008 parameters * 4 bytes (tied lm_head counted once,
  -- the embedding read as the lm_head)
  H.check(j:find('"weight_bytes": 538060032', 1, true), "weight_bytes: " .. j)
  -- KV cache (f16, the default): 30 layers x (K + V) x 3 heads x 64 x 2 bytes per token
  H.check(j:find('"kv_bytes_per_token": 23040', 1, true), "kv_bytes_per_token: " .. j)
  H.check(j:find('"kv_cache": "f16"', 1, true), "kv_cache: " .. j)
  for _, key in ipairs({ "load_s", "read_GBps", "floor_ms_per_token", "peak_rss_mb", "tok_s" }) do
    local v = tonumber(j:match('"' .. key .. '": ([%d%.e+-]+)'))
    H.check(v and v > 0, key .. " = " .. tostring(v))
  end
  H.check(tonumber(j:match('"peak_rss_mb": ([%d%.e+-]+)')) > 500, "peak RSS holds the f32 weights")
end)
H.rmdir(tmp)
os.exit(H.done())
