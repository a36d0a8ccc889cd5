-- tests/lua/test_badargs.lua: every binding of the hyb module and every method of its objects,
-- called with many combinations of wrong arguments (nil, negative, huge, NaN, strings, tables,
-- objects of the wrong kind, closed objects). Each call must either succeed or raise a Lua error
-- whose message names the function; nothing may crash (run it under ASan/UBSan too).
-- Run: hyb run tests/lua/test_badargs.lua
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")
local hyb = require("hyb")

local MAP = H.root .. "/graphs/tiny.toml"
local f = io.open(MAP)
if not f then H.skip(MAP .. " not found") end
f:close()

local tmp = H.tmpdir()
local afile = tmp .. "/file"
f = assert(io.open(afile, "w"))
f:write("not a directory")
f:close()

local model = hyb.model(MAP, {seed = 1})
local other = hyb.model(MAP, {seed = 2})
local opt = hyb.optim.adamw(other)
local logits = model:forward({1, 2}, 1, 2)
local loss = model:loss(logits, {3, 4})
local closed = hyb.tensor({2})
getmetatable(closed).__close(closed)
local map = hyb.layermap(MAP)

-- Values to try: each is fine somewhere and wrong almost everywhere. Strings are paths that can
-- be neither read nor created (a child of a regular file), so nothing is written by accident.
local pool = {
  nil, -1, 0, 1, 3, 0.5, 1e300, 0 / 0, math.maxinteger, math.mininteger,
  "", afile .. "/sub", true, {}, {-1}, {1, 2}, {"a"}, {kind = "zz"}, {seed = -3},
  hyb.tensor({2}, {1, 2}), hyb.tensor({2}, {1, 2}, "i32"), closed, model, map, loss, opt,
  print,
}
local NP = 27 -- #pool with the leading nil counted

local function try(name, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then return "ok" end
  if type(err) ~= "string" then
    H.check(false, name .. ": error object is a " .. type(err))
    return "bad"
  end
  return "err"
end

local calls, errors = 0, 0
local function sweep(name, fn, self, max_arity)
  for a = 1, NP do
    for b = 1, (max_arity >= 2 and NP or 1) do
      for c = 1, (max_arity >= 3 and NP or 1) do
        local r
        if self ~= nil then
          r = try(name, fn, self, pool[a], pool[b], pool[c])
        else
          r = try(name, fn, pool[a], pool[b], pool[c])
        end
        calls = calls + 1
        if r == "err" then errors = errors + 1 end
      end
    end
  end
end

local skip = {llm = true, sampler = true, plugins = true} -- plugins: no args; llm loads a model

H.run("module functions", function()
  local names = {}
  for k, v in pairs(hyb) do
    if type(v) == "function" and not skip[k] then names[#names + 1] = k end
  end
  table.sort(names)
  for _, k in ipairs(names) do sweep("hyb." .. k, hyb[k], nil, 3) end
  for k, v in pairs(hyb.data) do sweep("hyb.data." .. k, v, nil, 3) end
  -- hyb.comm (one process here); kill and abort end the process by design
  for k, v in pairs(hyb.comm) do
    if k ~= "kill" and k ~= "abort" then sweep("hyb.comm." .. k, v, nil, 2) end
  end
  hyb.comm.timeout(600)
  sweep("hyb.optim.adamw", hyb.optim.adamw, nil, 2)
  H.check(calls > 1000, "many calls made: " .. calls)
end)

H.run("methods", function()
  local objects = {
    tensor = hyb.tensor({2, 2}, {1, 2, 3, 4}),
    layermap = map,
    model = hyb.model(MAP, {seed = 3}),
    loss = loss,
    adamw = hyb.optim.adamw(hyb.model(MAP, {seed = 4})),
  }
  for kind, obj in pairs(objects) do
    local mt = getmetatable(obj)
    local names = {}
    for k in pairs(mt.__index) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do
      local fn = mt.__index[k]
      local arity = (k == "forward" or k == "loss" or k == "set" or k == "get" or k == "swap") and 3 or 2
      sweep(kind .. ":" .. k, fn, obj, arity)
      -- wrong self
      for i = 1, NP do
        calls = calls + 1
        if try(kind .. ":" .. k, fn, pool[i]) == "err" then errors = errors + 1 end
      end
    end
    -- metamethods with wrong self
    for _, mm in ipairs({"__gc", "__close", "__tostring", "__len"}) do
      if mt[mm] then
        for i = 1, NP do
          if pool[i] ~= nil and getmetatable(pool[i]) ~= mt then try(kind .. "." .. mm, mt[mm], pool[i]) end
        end
      end
    end
  end
  H.check(errors > calls / 2, ("most calls were rejected (%d of %d)"):format(errors, calls))
end)

H.run("still usable afterwards", function()
  local m = hyb.model(MAP, {seed = 5})
  local lg = m:forward({1, 2, 3}, 1, 3)
  H.eq(lg:numel(), 3 * 256, "a fresh model still works")
  H.check(hyb.tensor({2}, {5, 6}):sum() == 11, "tensors still work")
end)

print(("%d calls, %d rejected with an error"):format(calls, errors))
H.rmdir(tmp)
os.exit(H.done())
