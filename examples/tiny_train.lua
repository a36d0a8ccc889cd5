-- examples/tiny_train.lua: train the tiny byte-level model (graphs/tiny.toml: 4 attention layers,
-- d_model 128, vocab 256 = one token per byte) on the text in examples/data/ with AdamW, on the CPU.
--
--   hyb run examples/tiny_train.lua [out_dir=out/tiny] [steps=300]
--
-- Prints step, loss, learning rate, gradient norm and tokens per second; checks that the loss fell
-- clearly (final < 0.6 x initial) and that the held-out loss fell too; saves the model to out_dir,
-- loads it back with hyb.load and checks that the logits are identical. Any failed check is an
-- error (exit status 1). About a minute on two CPU cores (ctest runs it with steps=80:
-- test example_tiny_train).
local hyb = require("hyb")

local root = (arg[0]:match("^(.*)/examples/[^/]*$")) or "."
local out_dir = arg[1] or "out/tiny"
local steps = tonumber(arg[2] or "300")
assert(steps and steps >= 20 and steps == math.floor(steps), "steps must be an integer >= 20")

local B, T = 8, 64
local lr_max, warmup = 3e-3, 20
local seed = 1234

local model = hyb.model(root .. "/graphs/tiny.toml", {seed = seed})
local cfg = model:config()
assert(cfg.vocab_size == 256, "tiny_train expects a byte-level model (vocab 256), got " .. cfg.vocab_size)
print(("model: %s, %d parameters"):format(model:pattern(), model:n_params()))

local tokens = hyb.data.bytes(root .. "/examples/data")
local train, val = hyb.data.split(tokens, 0.9)
print(("data: %d bytes (%d train, %d held out)"):format(tokens:numel(), train:numel(), val:numel()))

-- Held-out loss on a fixed set of batches, without building a tape.
local function eval_loss()
  local sum, n = 0, 4
  for i = 1, n do
    local ids, tg = hyb.data.batch(val, B, T, i, 99)
    sum = sum + model:loss(model:forward(ids, B, T, {grad = false}), tg):value()
  end
  return sum / n
end

-- Linear warmup, then cosine decay to 10% of the peak.
local function lr_at(step)
  if step <= warmup then return lr_max * step / warmup end
  local p = (step - warmup) / math.max(1, steps - warmup)
  return lr_max * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
end

local opt = hyb.optim.adamw(model, {lr = lr_max, weight_decay = 0.01, betas = {0.9, 0.95}, clip = 1.0})
local val0 = eval_loss()
print(("held-out loss before training: %.4f (uniform would be %.4f)"):format(val0, math.log(256)))

local first, window, window_n = nil, 0, 0
local recent = {}
local t_start, t_last, tok_last = hyb.time(), hyb.time(), 0
for step = 1, steps do
  opt:set_lr(lr_at(step))
  local ids, targets = hyb.data.batch(train, B, T, step, seed)
  local loss = model:loss(model:forward(ids, B, T), targets)
  opt:zero_grad()
  loss:backward()
  local norm = opt:step()
  local v = loss:value()
  first = first or v
  window, window_n = window + v, window_n + 1
  recent[#recent + 1] = v
  if #recent > 20 then table.remove(recent, 1) end
  if step % 25 == 0 or step == 1 or step == steps then
    local now = hyb.time()
    local tps = (step * B * T - tok_last) / math.max(now - t_last, 1e-9)
    print(("step %4d  loss %.4f  lr %.2e  |g| %.3f  %7.0f tok/s"):format(step, window / window_n,
      opt:lr(), norm, tps))
    window, window_n, t_last, tok_last = 0, 0, now, step * B * T
  end
end
local elapsed = hyb.time() - t_start
local final = 0
for _, v in ipairs(recent) do final = final + v / #recent end
local val1 = eval_loss()
print(("trained %d steps in %.1f s (%.0f tok/s); loss %.4f -> %.4f; held-out %.4f -> %.4f"):format(
  steps, elapsed, steps * B * T / elapsed, first, final, val0, val1))

if not (final < 0.6 * first) then
  error(("the training loss did not fall enough: %.4f -> %.4f (need < 0.6 x initial)"):format(first, final))
end
if not (val1 < 0.8 * val0) then
  error(("the held-out loss did not fall: %.4f -> %.4f"):format(val0, val1))
end

-- Save, load back, compare logits on a fixed batch.
model:save(out_dir)
print("saved to " .. out_dir)
local back = hyb.load(out_dir)
local ids = hyb.data.batch(val, 2, T, 0, 7)
local ref = model:forward(ids, 2, T, {grad = false}):clone()
local got = back:forward(ids, 2, T, {grad = false})
local diff = got:max_abs_diff(ref)
if diff ~= 0 then error(("the loaded model's logits differ from the trained model's (max |diff| %g)"):format(diff)) end
print("loaded back: identical logits")

-- A taste of what it learned: greedy continuation of a prompt, one byte at a time (the whole
-- context is re-run each step; fine for a few dozen bytes).
local prompt = "the Licensor "
local ctx = {}
for i = 1, #prompt do ctx[i] = prompt:byte(i) end
local out = {}
for _ = 1, 40 do
  local n = #ctx
  local best = back:forward(ctx, 1, n, {grad = false}):argmax_last()[n]
  ctx[#ctx + 1] = best
  out[#out + 1] = string.char(best)
  if #ctx >= cfg.max_seq then break end
end
print(("sample: %q"):format(prompt .. table.concat(out)))
