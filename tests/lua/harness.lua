-- tests/lua/harness.lua: the Lua twin of tests/harness.h, loaded by each tests/lua/test_*.lua:
--
--   local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")
--   H.run("tensor shape", function() H.check(t:numel() == 6, "numel") end)
--   H.raises(function() hyb.tensor({-1}) end, "shape entry 1 must be a positive integer")
--   os.exit(H.done())     -- prints "N passed, N failed"; 0 only when nothing failed
--
-- Each check counts once. A test function that raises counts as one failure (with traceback)
-- and the remaining tests still run. H.skip(reason) exits with 77 (ctest: skipped).
local H = {passed = 0, failed = 0, current = "?"}

local function fail(msg, level)
  H.failed = H.failed + 1
  local info = debug.getinfo(level or 3, "Sl")
  local where = info and (info.short_src .. ":" .. (info.currentline or 0)) or "?"
  io.stderr:write(("FAIL [%s] %s: %s\n"):format(H.current, where, msg))
end

function H.check(cond, msg)
  if cond then
    H.passed = H.passed + 1
  else
    fail(msg or "check failed")
  end
  return cond
end

function H.eq(a, b, msg)
  if a == b then
    H.passed = H.passed + 1
    return true
  end
  fail(("%s: expected %s, got %s"):format(msg or "eq", tostring(b), tostring(a)))
  return false
end

function H.near(a, b, tol, msg)
  if type(a) == "number" and type(b) == "number" and math.abs(a - b) <= tol then
    H.passed = H.passed + 1
    return true
  end
  fail(("%s: %s vs %s (tol %g)"):format(msg or "near", tostring(a), tostring(b), tol))
  return false
end

-- fn must raise an error whose message contains `text` (plain substring match).
function H.raises(fn, text, msg)
  local ok, err = pcall(fn)
  if ok then
    fail(("%s: expected an error containing %q, but the call succeeded"):format(msg or "raises", text))
    return false
  end
  err = tostring(err)
  if not err:find(text, 1, true) then
    fail(("%s: expected an error containing %q, got %q"):format(msg or "raises", text, err))
    return false
  end
  H.passed = H.passed + 1
  return true
end

function H.run(name, fn)
  H.current = name
  local ok, err = xpcall(fn, debug.traceback)
  if not ok then fail("raised: " .. tostring(err), 2) end
  H.current = "?"
end

function H.skip(reason)
  print("SKIP: " .. reason)
  os.exit(77)
end

function H.done()
  print(("%d passed, %d failed"):format(H.passed, H.failed))
  return H.failed == 0 and 0 or 1
end

-- The repository root (tests/lua/<file> -> ../..), for data files.
H.root = (arg and arg[0] and arg[0]:match("^(.*)/tests/lua/[^/]*$")) or "."

-- A fresh temporary directory (removed by H.rmdir).
-- The [data] and [train] sections of the tiny distillation recipes of the tests: the byte-level
-- example texts of `root`, 2 x 32-token batches, accum micro-batches.
function H.tiny_recipe_data(root, accum)
  return ([[
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
[train]
lr = 1e-3
warmup = 2
batch = 2
seq_len = 32
accum = %d
]]):format(root, accum)
end

function H.tmpdir()
  local p = io.popen("mktemp -d 2>/dev/null")
  local d = p and p:read("l")
  if p then p:close() end
  assert(d and #d > 0, "mktemp -d failed")
  return d
end

function H.rmdir(d)
  if d and d:match("^/tmp/") then os.execute("rm -rf '" .. d .. "'") end
end

-- Run a shell command; returns its combined stdout+stderr and its exit code.
function H.sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local _, how, code = p:close()
  if how == "signal" then code = 128 + code end
  return out, code
end

function H.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- The default model's path ($HYB_MODEL, else the cache's); skips the test (77) when it is missing.
function H.model_path()
  local path = os.getenv("HYB_MODEL")
  if not path or path == "" then
    path = (os.getenv("HOME") or ".") .. "/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  end
  local f = io.open(path, "rb")
  if not f then H.skip("model file " .. path .. " not found") end
  f:close()
  return path
end

-- Whether the mixer plugin `name` is loaded (hyb.plugins()).
function H.have_plugin(name)
  for _, p in ipairs(require("hyb").plugins()) do if p.name == name then return true end end
  return false
end

-- Write text to path (binary), making its directory first when mkdir is true.
function H.write(path, text, mkdir)
  if mkdir then os.execute("mkdir -p " .. H.quote(path:match("^(.*)/[^/]*$"))) end
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Whether path can be opened for reading.
function H.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- The whole file (binary), or nil when it cannot be opened.
function H.read(path)
  local f = io.open(path, "rb")
  local s = f and f:read("a")
  if f then f:close() end
  return s
end

return H
