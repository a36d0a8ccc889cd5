-- tests/lua/test_train_badargs.lua: every hyb.train function and every trainer / dataset /
-- tokenizer method called with many combinations of wrong (and some right) arguments: a Lua
-- error with a string message or a result, never a crash (the style of test_badargs.lua).
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")
local root = os.getenv("HYB_SOURCE_DIR") or "."
hyb.log_level("error")

local tmp = os.tmpname() -- a regular file: its children can be neither read nor created
local model = hyb.model(root .. "/graphs/tiny.toml", {seed = 1})
local other = hyb.model(root .. "/graphs/tiny.toml", {seed = 2})
local closed = hyb.model(root .. "/graphs/tiny.toml", {seed = 3})
getmetatable(closed).__close(closed)
local tr = hyb.train.trainer(other, {teacher = model, steps = 4})
local ds = hyb.data.dataset{files = root .. "/examples/data/garden.txt", val_fraction = 0.2}
local tok = hyb.data.tokenizer(root .. "/tests/data/tokenizer/smollm2.tokenizer.json")
local pool = {
  nil, -1, 0, 1, 0 / 0, math.maxinteger, "", tmp .. "/sub", true, {}, {1, 2}, {teacher = model},
  hyb.tensor({2}, {1, 2}, "i32"), model, closed, tr, ds, tok,
}
local NP = 18

local calls, bad = 0, 0
local function sweep(name, fn, self, arity)
  for a = 1, NP do
    for b = 1, (arity >= 2 and NP or 1) do
      for c = 1, (arity >= 3 and NP or 1) do
        local ok, err
        if self ~= nil then ok, err = pcall(fn, self, pool[a], pool[b], pool[c])
        else ok, err = pcall(fn, pool[a], pool[b], pool[c]) end
        calls = calls + 1
        if not ok and type(err) ~= "string" then
          bad = bad + 1
          H.check(false, name .. ": error object is a " .. type(err))
        end
      end
    end
  end
end

H.run("hyb.train functions", function()
  local names = {}
  for k in pairs(hyb.train) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do sweep("hyb.train." .. k, hyb.train[k], nil, 3) end
end)

H.run("methods", function()
  for _, obj in ipairs({tr, ds, tok}) do
    local mt = getmetatable(obj).__index
    local names = {}
    for k in pairs(mt) do if k ~= "close" then names[#names + 1] = k end end
    table.sort(names)
    for _, k in ipairs(names) do sweep(tostring(obj) .. ":" .. k, mt[k], obj, 3) end
    for _, k in ipairs(names) do -- wrong self
      for a = 1, NP do pcall(mt[k], pool[a]) calls = calls + 1 end
    end
  end
  H.check(calls > 20000, "many calls: " .. calls)
  H.eq(bad, 0, "non-string errors")
end)

H.run("still usable", function()
  local ids = hyb.tensor({1, 16}, nil, "i32")
  H.check(tr:eval(ids, 1, 16).rkl ~= nil, "trainer works after the sweep")
  H.check(#tok:encode("hello") > 0, "tokenizer works")
  H.check(ds:info().train_tokens > 0, "dataset works")
  H.eq(tr:lr_scale("model.layers.*", 0.5), #other:params() - 2, "lr_scale counts the matches (all but the embedding and the final norm)")
  H.eq(tr:lr_scale("nothing.*", 0.5), 0, "no match is 0, not an error")
  local ok, err = pcall(tr.lr_scale, tr, "*", -1)
  H.check(not ok and err:find("scale must be a finite number", 1, true) ~= nil, tostring(err))
  ok, err = pcall(tr.lr_scale, tr, "*", 0 / 0)
  H.check(not ok and err:find("trainer:lr_scale", 1, true) ~= nil, tostring(err))
end)
-- every numeric trainer option has a stated range, checked before it becomes a float (issue 19:
-- 1e300 used to turn into an infinite learning rate)
H.run("trainer options outside their ranges", function()
  local cases = {
    {{lr = 1e300}, "option 'lr' must be in [0, 10], got 1e+300"},
    {{lr = -1}, "option 'lr' must be in [0, 10], got -1"},
    {{min_lr = 0 / 0}, "option 'min_lr' must be a finite number"},
    {{min_lr = 11}, "option 'min_lr' must be in [0, 10], got 11"},
    {{weight_decay = 1e300}, "option 'weight_decay' must be in [0, 10], got 1e+300"},
    {{eps = 0}, "option 'eps' must be in (0, 1], got 0"},
    {{clip = -1}, "option 'clip' must be in [0, 1e+06], got -1"},
    {{temperature = 1e300}, "option 'temperature' must be in (0, 100], got 1e+300"},
    {{betas = {0.9, 1}}, "betas must be in [0, 1), got {0.9, 1}"},
    {{steps = math.maxinteger}, "steps"},
    {{loss = "mix", weights = {rkl = 1e300}}, "option 'rkl' must be in [0, 1000], got 1e+300"},
  }
  for _, c in ipairs(cases) do
    c[1].teacher = model
    local ok, err = pcall(hyb.train.trainer, other, c[1])
    H.check(not ok and tostring(err):find(c[2], 1, true) ~= nil, c[2] .. ": " .. tostring(err))
  end
  local ok, err = pcall(hyb.train.lr, 0, {lr = 1e300})
  H.check(not ok and tostring(err):find("hyb.train.lr: option 'lr' must be in [0, 10]", 1, true) ~= nil, tostring(err))
end)
os.remove(tmp)
os.exit(H.done())
