-- tests/lua/test_bench.lua: hyb.bench helpers that need no model (mem, bandwidth, load errors).
-- Run: hyb run tests/lua/test_bench.lua
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")

H.run("mem: rss and high-water mark, growing with a touched allocation", function()
  local a = hyb.bench.mem()
  H.check(a.rss_mb > 1 and a.hwm_mb >= a.rss_mb - 1e-9, "rss " .. a.rss_mb .. " hwm " .. a.hwm_mb)
  local t = hyb.randn({ 24 * 1024 * 1024 }, 1) -- 96 MiB, every page written
  local b = hyb.bench.mem()
  H.check(b.hwm_mb - a.hwm_mb > 80, "hwm grew by " .. (b.hwm_mb - a.hwm_mb) .. " MB for 96 MiB")
  H.check(b.rss_mb - a.rss_mb > 80, "rss grew by " .. (b.rss_mb - a.rss_mb) .. " MB for 96 MiB")
  t = nil
  collectgarbage()
end)

H.run("bandwidth: positive and finite", function()
  local bw = hyb.bench.bandwidth(8)
  H.check(bw.copy > 1e8 and bw.copy < 1e13, "copy " .. bw.copy)
  H.check(bw.read > 1e8 and bw.read < 1e13, "read " .. bw.read)
  H.raises(function() hyb.bench.bandwidth(0) end, "hyb.bench.bandwidth")
end)

H.run("load: a missing file is an error naming the call", function()
  H.raises(function() hyb.bench.load("/nonexistent/model.gguf") end, "hyb.bench.load")
end)

os.exit(H.done())
