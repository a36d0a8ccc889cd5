-- tests/lua/test_data_select.lua: which files hyb.data.files / hyb.data.dataset read: recursive
-- directories, include / exclude globs, the max_bytes sample (deterministic, independent of where
-- the tree is, files named explicitly always kept), the special-token option, and the errors.
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
local hyb = require("hyb")
hyb.log_level("warn")

local tmp = H.tmpdir()
local function write(path, text) H.write(path, text, true) end

-- a small tree: 40 .rst.txt files of different sizes in nested directories, plus noise
local function make_tree(root)
  for i = 1, 40 do
    local sub = ({"a", "b/c", "translations/zh", "d"})[i % 4 + 1]
    local body = {}
    for k = 1, 10 + i * 3 do body[k] = ("paragraph %d of file %d.\n\n"):format(k, i) end
    write(("%s/%s/f%02d.rst.txt"):format(root, sub, i), table.concat(body))
  end
  write(root .. "/a/image.png", "\137PNG....")
  write(root .. "/a/.hidden.rst.txt", "hidden")
  write(root .. "/b/notes.txt", "plain notes\n")
end
make_tree(tmp .. "/one")
make_tree(tmp .. "/two/deeper")

local function rel(list, root)
  local r = {}
  for i, p in ipairs(list) do r[i] = p:sub(#root + 2) end
  return r
end

H.run("recursive listing, sorted, hidden skipped", function()
  local l, bytes = hyb.data.files(tmp .. "/one")
  H.eq(#l, 42, "40 rst + png + notes, no hidden file")
  local sorted = true
  for i = 2, #l do sorted = sorted and l[i - 1] < l[i] end
  H.check(sorted, "sorted by path")
  local sum = 0
  for _, p in ipairs(l) do
    local f = io.open(p, "rb"); sum = sum + #f:read("a"); f:close()
  end
  H.eq(bytes, sum, "bytes is the total size")
end)

H.run("include / exclude", function()
  local l = hyb.data.files(tmp .. "/one", {include = "*.rst.txt"})
  H.eq(#l, 40, "include by name")
  local l2 = hyb.data.files(tmp .. "/one", {include = {"*.rst.txt", "*.txt"}, exclude = {"translations/*"}})
  H.eq(#l2, 31, "30 rst outside translations/ + notes.txt")
  for _, p in ipairs(l2) do H.check(not p:find("translations", 1, true), "excluded " .. p) end
  local l3 = hyb.data.files(tmp .. "/one", {include = "b/*"})
  H.eq(#l3, 11, "a pattern with '/' matches the relative path ('*' crosses '/')")
  local l4 = hyb.data.files(tmp .. "/one", {exclude = "f0?.rst.txt"})
  H.eq(#l4, 42 - 9, "exclude alone")
end)

H.run("max_bytes: a deterministic sample", function()
  local opts = {include = "*.rst.txt", max_bytes = 20000}
  local a, ab = hyb.data.files(tmp .. "/one", opts)
  local b, bb = hyb.data.files(tmp .. "/one", opts)
  local _, all = hyb.data.files(tmp .. "/one", {include = "*.rst.txt"})
  H.check(ab <= 20000 and ab > 15000, ("within the cap and near it: %d bytes"):format(ab))
  H.check(all > 20000, "the cap matters")
  H.eq(table.concat(a, "|"), table.concat(b, "|"), "same call, same files")
  H.eq(ab, bb, "same bytes")
  -- the same tree elsewhere gives the same relative choice
  local c = hyb.data.files(tmp .. "/two/deeper", opts)
  H.eq(table.concat(rel(a, tmp .. "/one"), "|"), table.concat(rel(c, tmp .. "/two/deeper"), "|"),
       "the choice does not depend on where the tree is")
  -- not simply the first files in name order
  local first = hyb.data.files(tmp .. "/one", {include = "*.rst.txt"})
  local prefix = true
  for i = 1, #a do prefix = prefix and a[i] == first[i] end
  H.check(not prefix, "a sample across the tree, not a prefix of the sorted list")
  local sorted = true
  for i = 2, #a do sorted = sorted and a[i - 1] < a[i] end
  H.check(sorted, "the sample is read in sorted order")
  -- an explicit file is always kept and counts first
  local big = tmp .. "/big.txt"
  write(big, ("x"):rep(15000) .. "\n")
  local d, db = hyb.data.files({tmp .. "/one", big}, opts)
  H.eq(d[#d], big, "explicit file kept, in argument order")
  H.check(db <= 20000 and #d < #a, "fewer directory files once the explicit one is counted")
  local e = hyb.data.files(big, {include = "*.rst.txt", max_bytes = 10})
  H.eq(#e, 1, "filters and cap do not drop a file named explicitly")
end)

H.run("dataset with include / max_bytes", function()
  local o = {files = {tmp .. "/one"}, include = "*.rst.txt", exclude = "translations/*",
    max_bytes = 20000, val_fraction = 0.1, seed = 3, cache = tmp .. "/c/data.bin"}
  local ds = hyb.data.dataset(o)
  local i = ds:info()
  H.check(i.bytes <= 20000 and i.bytes > 0, "bytes within the cap")
  H.eq(i.matched_files, 30, "files passing the filters")
  H.check(i.files < 30, "max_bytes took a subset")
  H.eq(i.train_tokens + i.val_tokens, i.bytes, "bytes tokenizer: one token per byte read")
  H.check(not i.from_cache, "tokenized")
  local again = hyb.data.dataset(o)
  H.check(again:info().from_cache, "the same selection reads the cache")
  local x1 = ds:batch(5, 2, 32, 9)
  local x2 = again:batch(5, 2, 32, 9)
  H.check(x1:equal(x2), "same batches")
  o.max_bytes = 30000
  local other = hyb.data.dataset(o)
  H.check(not other:info().from_cache and other:info().bytes > i.bytes, "another cap: rebuilt")
end)

H.run("special tokens in the text", function()
  -- a byte-level tokenizer.json with one special token
  local vocab, merges = {}, {}
  local bs = {}
  for b = 33, 126 do bs[#bs + 1] = b end
  for b = 161, 172 do bs[#bs + 1] = b end
  for b = 174, 255 do bs[#bs + 1] = b end
  local seen, cs, n = {}, {}, 0
  for _, b in ipairs(bs) do seen[b] = true; cs[b] = b end
  for b = 0, 255 do
    if not seen[b] then cs[b] = 256 + n; n = n + 1 end
  end
  for b = 0, 255 do vocab[#vocab + 1] = ('"%s": %d'):format(utf8.char(cs[b]):gsub('[\\"]', "\\%0"), b) end
  local json = ('{"model": {"type": "BPE", "vocab": {%s}, "merges": []}, ' ..
    '"added_tokens": [{"id": 256, "content": "<|im_start|>", "special": true}], ' ..
    '"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}}'):format(table.concat(vocab, ", "))
  write(tmp .. "/tok/tokenizer.json", json)
  local ok, tok = pcall(hyb.data.tokenizer, tmp .. "/tok/tokenizer.json")
  if not ok then
    H.check(false, "tokenizer.json fixture loads: " .. tostring(tok))
    return
  end
  write(tmp .. "/chat/t.txt", "<|im_start|>user\nhi\n")
  local plain = hyb.data.dataset{files = tmp .. "/chat", tokenizer = tok, val_fraction = 0}
  local sp = hyb.data.dataset{files = tmp .. "/chat", tokenizer = tok, val_fraction = 0, special = true}
  H.eq(plain:info().train_tokens, 20, "plain text: the marker is 12 byte tokens")
  H.eq(sp:info().train_tokens, 9, "special = true: the marker is one token")
  H.eq(sp:batch(0, 1, 8, 1):get(1, 1) == 256 or sp:batch(0, 1, 8, 1):get(1, 2) == 256, true,
       "id 256 appears")
end)

H.run("errors name the path or the option", function()
  H.raises(function() hyb.data.files(tmp .. "/nowhere") end, tmp .. "/nowhere")
  H.raises(function() hyb.data.files(tmp .. "/one", {include = "*.md"}) end,
           "the directory holds no file to read with include '*.md'")
  H.raises(function() hyb.data.files(tmp .. "/one", {include = {"*.txt", 3}}) end, "option 'include' entry 2")
  H.raises(function() hyb.data.files(tmp .. "/one", {include = ""}) end, "include pattern 1 is empty")
  H.raises(function() hyb.data.files(tmp .. "/one", {exclude = 5}) end, "option 'exclude' must be")
  H.raises(function() hyb.data.files(tmp .. "/one", {max_bytes = -1}) end, "max_bytes")
  H.raises(function() hyb.data.files(tmp .. "/one", {include = "*.rst.txt", max_bytes = 10}) end,
           "max_bytes 10 is smaller than every matching file")
  H.raises(function() hyb.data.files(tmp .. "/one", {bogus = 1}) end, "bogus")
  H.raises(function() hyb.data.files({}) end, "the list of files is empty")
  H.raises(function() hyb.data.dataset{files = tmp .. "/one", include = "*.nope"} end, "*.nope")
  H.raises(function() hyb.data.dataset{files = tmp .. "/one", special = "yes"} end, "special")
end)

H.rmdir(tmp)
os.exit(H.done())
