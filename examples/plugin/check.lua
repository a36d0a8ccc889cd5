-- examples/plugin/check.lua: the example plugin (examples/plugin/retention.c, built out of tree)
-- used end to end from Lua, on the tiny hybrid of examples/plugin/tiny-retention.toml (attention
-- in layers 0 and 2, retention in 1 and 3):
--
--   cmake -S examples/plugin -B build-retention -DHYB_INCLUDE_DIR=$PWD/core/include
--   cmake --build build-retention
--   HYB_PLUGIN_PATH=$PWD/build-retention build/hyb run examples/plugin/check.lua [out_dir] [steps]
--
-- Checks (each failure is an error, exit status 1):
--   1. the plugin is loaded from HYB_PLUGIN_PATH and the model has its parameters
--   2. causality: the logits of a prefix equal the first rows of the whole sequence's logits
--   3. training (hyb.train, cross-entropy, `steps` = 30 updates): the loss falls and the
--      retention layers' weights move
--   4. generation (before and after training): hyb.train.greedy decodes with the O(1) recurrent
--      state; every id it picks is the argmax of the full (parallel) forward at that position
--   5. save, hyb.load, identical logits and identical greedy continuation
-- The exact comparisons of decode, prefill and gradients are in tests/example_retention.c.
local hyb = require("hyb")

local root = (arg[0]:match("^(.*)/examples/plugin/[^/]*$")) or "."
local out_dir = arg[1] or "out/tiny-retention"
local steps = tonumber(arg[2] or "30")

local function check(cond, fmt, ...)
  if not cond then error(fmt:format(...), 2) end
end

-- 1. the plugin, from HYB_PLUGIN_PATH (building the model loads it)
local plugin
local model = hyb.model(root .. "/examples/plugin/tiny-retention.toml", {seed = 7})
for _, p in ipairs(hyb.plugins()) do
  if p.name == "retention" then plugin = p end
end
check(plugin ~= nil, "no retention plugin on the search path %s", hyb.plugin_path())
print(("plugin: %s %s from %s (%s)"):format(plugin.name, plugin.version, plugin.path, plugin.description))
check(model:pattern() == "trtr", "pattern %s", model:pattern())
local wq = model:param("model.layers.1.retention.q_proj.weight")
check(wq ~= nil, "no model.layers.1.retention.q_proj.weight")
local q0 = wq:clone()
print(("model: %s, %d parameters"):format(model:pattern(), model:n_params()))

-- Generation through decode agrees with the full forward: for each of 12 prompts (windows of the
-- text), hyb.train.greedy picks 6 ids, the first from the prefill's logits and the others through
-- decode steps with the recurrent state; each must be the argmax of the parallel forward over
-- prompt + ids at that position. At random init the 12 prompts give varied ids (checked), so a
-- decode that drifts from the forward shows; after 30 steps the model mostly predicts spaces.
local tokens = hyb.data.bytes(root .. "/examples/data")
local function greedy_check(m, label, min_distinct)
  local agree, total, distinct, seen, sample = 0, 0, 0, {}, nil
  for j = 1, 12 do
    local prompt = {}
    for i = 1, 12 do prompt[i] = tokens:get(j * 997 + i) end
    local gen = hyb.train.greedy(m, prompt, 6)
    local all = {table.unpack(prompt)}
    for _, id in ipairs(gen) do all[#all + 1] = id end
    local am = m:forward(all, 1, #all, {grad = false}):argmax_last()
    for i = 1, #gen do
      total = total + 1
      if am[#prompt + i - 1] == gen[i] then agree = agree + 1 end
      if not seen[gen[i]] then seen[gen[i]], distinct = true, distinct + 1 end
    end
    if j == 1 then
      local s = {}
      for i, id in ipairs(all) do s[i] = (id >= 32 and id < 127) and string.char(id) or "." end
      sample = table.concat(s)
    end
  end
  print(("greedy (%s): e.g. %q; %d/%d ids equal the forward's argmax, %d distinct ids"):format(
    label, sample, agree, total, distinct))
  check(agree == total, "%s: decode and the full forward disagree at %d of %d ids", label,
    total - agree, total)
  check(distinct >= min_distinct, "%s: only %d distinct greedy ids: too uniform to test decode",
    label, distinct)
end

-- 2. causality of the parallel form
local V = model:config().vocab_size
local ids = {}
for i = 1, 20 do ids[i] = (i * 53 + 7) % 256 end
local full = model:forward(ids, 1, #ids, {grad = false}):clone()
local k = 9
local head = model:forward({table.unpack(ids, 1, k)}, 1, k, {grad = false})
local worst = 0
for t = 1, k do
  for v = 1, V do worst = math.max(worst, math.abs(head:get(1, t, v) - full:get(1, t, v))) end
end
print(("causality: prefix of %d vs the whole %d: max |diff| %.3g"):format(k, #ids, worst))
check(worst < 1e-4, "the prefix's logits differ from the sequence's: %g", worst)
-- the random-init model generates varied ids: a decode that drifts from the forward shows
greedy_check(model, "random init", 6)

-- 3. training
local B, T = 4, 64
local tr = hyb.train.trainer(model, {loss = "ce", lr = 3e-3, min_lr = 3e-4, warmup = 5,
  steps = steps, weight_decay = 0.01, clip = 1})
local first, last = 0, 0
for step = 1, steps do
  local x, y = hyb.data.batch(tokens, B, T, step, 1234)
  local st = tr:step(x, B, T, {targets = y})
  if step <= 5 then first = first + st.loss / 5 end
  if step > steps - 5 then last = last + st.loss / 5 end
  if step == 1 or step % 10 == 0 then
    print(("step %3d  loss %.4f  |g| %.3f  lr %.2e"):format(step, st.loss, st.grad_norm, st.lr))
  end
end
print(("loss: first 5 steps %.4f -> last 5 %.4f"):format(first, last))
check(last < 0.85 * first, "the loss did not fall: %.4f -> %.4f", first, last)
local moved = model:param("model.layers.1.retention.q_proj.weight"):max_abs_diff(q0)
check(moved > 1e-4, "retention's q_proj did not move in training (max |change| %g)", moved)

-- 4. after training
greedy_check(model, "trained", 1) -- 30 steps learn mostly spaces

-- 5. save and reload: identical logits (ids as in step 2) and greedy continuation
model:save(out_dir)
local back = hyb.load(out_dir)
local ref = model:forward(ids, 1, #ids, {grad = false}):clone()
local diff = back:forward(ids, 1, #ids, {grad = false}):max_abs_diff(ref)
check(diff == 0, "the reloaded model's logits differ (max |diff| %g)", diff)
local g1, g2 = hyb.train.greedy(model, ids, 16), hyb.train.greedy(back, ids, 16)
for i = 1, 16 do check(g1[i] == g2[i], "reloaded greedy differs at %d", i) end
print("saved to " .. out_dir .. ", loaded back: identical logits and greedy ids")
print("example plugin: all checks passed")
