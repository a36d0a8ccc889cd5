-- tests/lua/test_data.lua: hyb.data.bytes / batch / split: byte values, windows and shifted
-- targets, determinism, and errors. Run: hyb run tests/lua/test_data.lua
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
local hyb = require("hyb")

local tmp = H.tmpdir()
local write = H.write

H.run("bytes of a file", function()
  local text = "Hello, hyb!\n\0\255"
  write(tmp .. "/a.txt", text)
  local t = hyb.data.bytes(tmp .. "/a.txt")
  H.eq(t:dtype(), "i32", "dtype")
  H.eq(t:numel(), #text, "one id per byte")
  local ok = true
  for i = 1, #text do ok = ok and t:get(i) == text:byte(i) end
  H.check(ok, "ids are the byte values (incl. 0 and 255)")
end)

H.run("bytes of a directory and of a list", function()
  local d = tmp .. "/dir"
  local files = {["b.txt"] = "BB", ["a.txt"] = "AAA", ["c.md"] = "ignored", [".hidden.txt"] = "ignored"}
  for name, text in pairs(files) do H.write(d .. "/" .. name, text, true) end
  local t = hyb.data.bytes(d)
  H.eq(t:numel(), 5, "only *.txt, hidden skipped")
  H.eq(t:get(1), string.byte("A"), "sorted by name: a.txt first")
  H.eq(t:get(5), string.byte("B"), "then b.txt")
  local l = hyb.data.bytes({d .. "/b.txt", d .. "/a.txt"})
  H.eq(l:get(1), string.byte("B"), "a list keeps its order")
  H.eq(l:numel(), 5, "list length")
end)

H.run("batch: windows, shifted targets, determinism", function()
  local text = {}
  for i = 0, 999 do text[#text + 1] = string.char(i % 251) end
  write(tmp .. "/seq.txt", table.concat(text))
  local tok = hyb.data.bytes(tmp .. "/seq.txt")
  local B, T = 4, 16
  local ids, tg = hyb.data.batch(tok, B, T, 3, 99)
  local s = ids:shape()
  H.check(#s == 2 and s[1] == B and s[2] == T, "ids [B, T]")
  H.eq(tg:numel(), B * T, "targets [B, T]")
  local shifted, window = true, true
  for b = 1, B do
    for t = 1, T - 1 do shifted = shifted and tg:get(b, t) == ids:get(b, t + 1) end
    -- consecutive bytes of the file (values i % 251 step by 1 modulo 251)
    for t = 1, T - 1 do window = window and ids:get(b, t + 1) == (ids:get(b, t) + 1) % 251 end
    window = window and tg:get(b, T) == (ids:get(b, T) + 1) % 251
  end
  H.check(shifted, "targets are ids shifted by one")
  H.check(window, "each row is a contiguous window of the data")
  local ids2, tg2 = hyb.data.batch(tok, B, T, 3, 99)
  H.check(ids:equal(ids2) and tg:equal(tg2), "same (step, seed): same batch")
  local ids3 = hyb.data.batch(tok, B, T, 4, 99)
  local ids4 = hyb.data.batch(tok, B, T, 3, 98)
  H.check(not ids:equal(ids3), "another step: another batch")
  H.check(not ids:equal(ids4), "another seed: another batch")
  -- the whole data, T = N - 1: the only window is offset 0
  local small = hyb.data.bytes(tmp .. "/a.txt")
  local n = small:numel()
  local i1, t1 = hyb.data.batch(small, 2, n - 1, 0, 0)
  H.eq(i1:get(2, 1), small:get(1), "T = N-1 takes offset 0")
  H.eq(t1:get(1, n - 1), small:get(n), "last target is the last byte")
end)

H.run("split", function()
  local tok = hyb.data.bytes(tmp .. "/seq.txt")
  local a, b = hyb.data.split(tok, 0.9)
  H.eq(a:numel(), 900, "first part")
  H.eq(b:numel(), 100, "second part")
  H.eq(b:get(1), tok:get(901), "second part starts where the first ends")
end)

H.run("bad arguments", function()
  local tok = hyb.data.bytes(tmp .. "/seq.txt")
  H.raises(function() hyb.data.bytes(tmp .. "/missing.txt") end, "hyb.data.bytes: cannot open '" .. tmp .. "/missing.txt': No such file or directory")
  H.raises(function() hyb.data.bytes(42) end, "hyb.data.bytes: expected a file, a directory or a table of files, got 42")
  H.raises(function() hyb.data.bytes({}) end, "the list of files is empty")
  H.raises(function() hyb.data.bytes({tmp .. "/a.txt", 7}) end, "file 2 must be a string, got 7")
  os.execute("mkdir -p " .. H.quote(tmp .. "/empty"))
  H.raises(function() hyb.data.bytes(tmp .. "/empty") end, "has no *.txt files")
  write(tmp .. "/one.txt", "x")
  H.raises(function() hyb.data.bytes(tmp .. "/one.txt") end, "the data holds 1 bytes; at least 2 are needed")
  H.raises(function() hyb.data.batch(tok, 0, 4, 0, 0) end, "hyb.data.batch: B must be an integer in [1, 1048576], got 0")
  H.raises(function() hyb.data.batch(tok, 2, 4.5, 0, 0) end, "T must be an integer in [1, 16777216], got 4.5")
  H.raises(function() hyb.data.batch(tok, 2, 4, -1, 0) end, "step must be an integer >= 0, got -1")
  H.raises(function() hyb.data.batch(tok, 2, 4, 0) end, "seed must be an integer >= 0, got nil")
  H.raises(function() hyb.data.batch(tok, 2, 1000, 0, 0) end, "tokens holds 1000 ids; at least 1001 are needed")
  H.raises(function() hyb.data.batch({1, 2, 3}, 1, 1, 0, 0) end, "hyb.data.batch: tokens must be a hyb.tensor, got table")
  H.raises(function() hyb.data.batch(hyb.zeros({100}), 1, 4, 0, 0) end, "tokens must be a contiguous CPU i32 tensor, got [100] f32")
  H.raises(function() hyb.data.split(tok, 1.5) end, "fraction must be in (0, 1), got 1.5")
  H.raises(function() hyb.data.split(tok, 0.001) end, "leaves a part with fewer than 2")
end)

H.rmdir(tmp)
os.exit(H.done())
