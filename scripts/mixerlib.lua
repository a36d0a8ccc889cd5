-- scripts/mixerlib.lua: mixers defined in Lua (issue 21 item 2, the Lua side; docs/PROTOTYPING.md).
-- A mixer file returns a table:
--   name     string
--   config   defaults of its settings (a table); the keys given at load are checked against it
--   params   function(cfg, dims) -> { {name=, shape=, init = "normal" (default) | "zeros" | "ones"
--            | a number, std = 0.02}, ... } (dims.d_model, ...)
--   forward  function(params, x [B, T, D], cfg, mixer) -> y [B, T, D] (the parallel form)
--   state    function(cfg, dims) -> { name = shape (without the batch dim), ... }
--   step     function(params, x [B, 1, D], state, cfg, mixer) -> y [B, 1, D], new state
--   init_from (optional) function(params, src, cfg) -> params: from the layer it replaces
-- Gradients come from the tensor ops' tape (t:backward, hyb.grad).
--
--   local ML = require("mixerlib")
--   local m = ML.load("examples/mixers/gla.lua", {heads = 4}, {d_model = 64})
--   m:init(42)                     -- m.params: leaf tensors that require grad
--   local y = m:forward(x)         -- [B, T, D]
--   local st = m:new_state(B); local y1; y1, st = m:step(x1, st)
local M = {}
M.__index = M

local function fail(self, fmt, ...)
  error(("lua mixer '%s'%s: " .. fmt):format(self.def.name or self.path,
    self.layer and (" (layer %d)"):format(self.layer) or "", ...), 0)
end

local function shape_str(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end

-- ML.load(path, config_overrides, dims[, layer]) -> a mixer instance (params not yet made)
function M.load(path, overrides, dims, layer)
  local ok, def = pcall(dofile, path)
  if not ok then error(("lua mixer %s: %s"):format(path, tostring(def)), 0) end
  if type(def) ~= "table" then
    error(("lua mixer %s: the file must return a table, it returned a %s"):format(path, type(def)), 0)
  end
  local self = setmetatable({def = def, path = path, dims = dims or {}, layer = layer}, M)
  if type(def.name) ~= "string" then fail(self, "`name` must be a string (in %s)", path) end
  for _, k in ipairs({"params", "forward", "step", "state"}) do
    if type(def[k]) ~= "function" then fail(self, "missing function `%s` (in %s)", k, path) end
  end
  if def.init_from ~= nil and type(def.init_from) ~= "function" then
    fail(self, "`init_from` must be a function")
  end
  local cfg = {}
  for k, v in pairs(def.config or {}) do cfg[k] = v end
  for k, v in pairs(overrides or {}) do
    local d = (def.config or {})[k]
    if d == nil then
      local known = {}
      for kk in pairs(def.config or {}) do known[#known + 1] = kk end
      table.sort(known)
      fail(self, "unknown config key '%s' (known: %s)", tostring(k), table.concat(known, ", "))
    end
    if type(v) ~= type(d) then fail(self, "config key '%s' must be a %s, got %s", k, type(d), type(v)) end
    cfg[k] = v
  end
  self.cfg = cfg
  return self
end

-- Make the parameters (leaves requiring grad) from the declarations; seed makes them reproducible.
function M:init(seed)
  local decls = self.def.params(self.cfg, self.dims)
  if type(decls) ~= "table" then fail(self, "params() must return a table of declarations") end
  self.params, self.names = {}, {}
  for i, d in ipairs(decls) do
    if type(d.name) ~= "string" or type(d.shape) ~= "table" then
      fail(self, "parameter declaration %d needs a name and a shape", i)
    end
    local t
    if d.init == "zeros" then t = hyb.zeros(d.shape)
    elseif d.init == "ones" then t = hyb.ones(d.shape)
    elseif type(d.init) == "number" then t = hyb.full(d.shape, d.init)
    elseif d.init == nil or d.init == "normal" then t = hyb.randn(d.shape, (seed or 0) * 1000 + i, d.std or 0.02)
    else fail(self, "parameter '%s': unknown init %s", d.name, tostring(d.init)) end
    self.params[d.name] = t:requires_grad()
    self.names[i] = d.name
  end
  return self.params
end

function M:forward(x)
  local ok, y = pcall(self.def.forward, self.params, x, self.cfg, self.def)
  if not ok then fail(self, "forward: %s", tostring(y)) end
  if getmetatable(y) ~= getmetatable(x) then fail(self, "forward returned a %s, not a tensor", type(y)) end
  if shape_str(y) ~= shape_str(x) then
    fail(self, "forward returned %s for an input %s (must be the input's shape)", shape_str(y), shape_str(x))
  end
  return y
end

-- Zeroed decode state for B sequences: { name = tensor [B, ...] }
function M:new_state(B)
  local st = {}
  for k, s in pairs(self.def.state(self.cfg, self.dims)) do
    local shape = {B}
    for i = 1, #s do shape[i + 1] = s[i] end
    st[k] = hyb.zeros(shape)
  end
  return st
end

function M:step(x, state)
  local ok, y, st = pcall(self.def.step, self.params, x, state, self.cfg, self.def)
  if not ok then fail(self, "step: %s", tostring(y)) end
  if getmetatable(y) ~= getmetatable(x) or shape_str(y) ~= shape_str(x) then
    fail(self, "step returned %s for an input %s", type(y) == "userdata" and shape_str(y) or type(y), shape_str(x))
  end
  if type(st) ~= "table" then fail(self, "step must return the new state (a table) second") end
  for k, v in pairs(state) do
    if st[k] == nil or shape_str(st[k]) ~= shape_str(v) then
      fail(self, "step's new state '%s' is missing or changed shape", k)
    end
  end
  return y, st
end

-- Run the step form over x [B, T, D] token by token from a zero state: [B, T, D].
function M:step_all(x)
  local s = x:shape()
  local st, ys = self:new_state(s[1]), {}
  for t = 1, s[2] do
    ys[t], st = self:step(x:narrow(2, t, 1), st)
  end
  return hyb.cat(ys, 2), st
end

-- Snapshot / restore of a decode state (copies of its tensors).
function M.snapshot(state)
  local c = {}
  for k, v in pairs(state) do c[k] = v:detach():clone() end
  return c
end

-- ---- for runtime/lua_mixer.c (layer maps naming type = "lua:<path>") ----------------------------

-- The parameter declarations, checked: { {name=, shape=, init=, std=}, ... }
function M:decls()
  local decls = self.def.params(self.cfg, self.dims)
  if type(decls) ~= "table" then fail(self, "params() must return a table of declarations") end
  for i, d in ipairs(decls) do
    if type(d.name) ~= "string" or type(d.shape) ~= "table" then
      fail(self, "parameter declaration %d needs a name and a shape", i)
    end
  end
  return decls
end

-- The state's entries in name order: { {name, shape}, ... }
function M:state_list()
  local st = self.def.state(self.cfg, self.dims)
  if type(st) ~= "table" then fail(self, "state() must return a table of shapes") end
  local names = {}
  for k in pairs(st) do names[#names + 1] = k end
  table.sort(names)
  local out = {}
  for i, k in ipairs(names) do out[i] = {k, st[k]} end
  return out
end

function M:describe()
  local keys = {}
  for k in pairs(self.cfg) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {self.def.name}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(self.cfg[k]) end
  return table.concat(parts, " ") .. " (Lua, " .. self.path .. ")"
end

return M
