-- examples/capture_compare.lua: how close is a swapped-in mixer to the attention it replaced?
--
--   hyb run examples/capture_compare.lua                     # graphs/tiny.toml, random init
--   hyb run examples/capture_compare.lua ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf 3,9,15
--
-- For each layer k: a student is the teacher with layer k swapped to mamba1, initialised from the
-- attention weights (MIL); both run the same batch with model:capture on layer k, and the script
-- prints the cosine similarity and the relative error of the student's mixer output against the
-- teacher's attention output, per layer. The mixer inputs are the same bitwise (layers below k
-- are the teacher's), which the script checks. With grads it also prints how much the loss
-- depends on the layer: the norm of d loss / d mixer_out (the teacher's, on next-token CE).
local hyb = require("hyb")
hyb.log_level("warn")
local path, list = arg[1], arg[2]

local teacher, ids
local text = assert(io.open("examples/data/garden.txt")):read("a"):sub(1, 600)
if not path or path == "tiny" then
  teacher = hyb.model("graphs/tiny.toml", {seed = 1})
  ids = {}
  for i = 1, 64 do ids[i] = text:byte(i) end
else
  teacher = hyb.train.load(path)
  ids = hyb.data.tokenizer(path):encode(text)
  while #ids > 64 do table.remove(ids) end
end
local T = #ids - 1
local inputs, targets = {table.unpack(ids, 1, T)}, {table.unpack(ids, 2, T + 1)}
local L = teacher:config().n_layers
local layers = {}
for k in (list or ""):gmatch("%d+") do layers[#layers + 1] = tonumber(k) end
if #layers == 0 then for k = 0, L - 1 do layers[#layers + 1] = k end end

-- the teacher once: every chosen layer's mixer input and output, and the gradients
teacher:capture({layers = layers, points = {"mixer_in", "mixer_out"}, grads = true})
teacher:loss(teacher:forward(inputs, 1, T), targets):backward()
local ref = teacher:captured()
teacher:capture(nil)

local function flat(t)
  local out = {}
  for _, b in ipairs(t:totable()) do
    for _, row in ipairs(b) do
      for _, x in ipairs(row) do out[#out + 1] = x end
    end
  end
  return out
end

local function compare(a, b) -- cosine(a, b), |a - b| / |b|, |a| / |b|
  local ab, aa, bb, dd = 0, 0, 0, 0
  for i = 1, #a do
    ab, aa, bb = ab + a[i] * b[i], aa + a[i] * a[i], bb + b[i] * b[i]
    dd = dd + (a[i] - b[i]) ^ 2
  end
  return ab / math.sqrt(aa * bb + 1e-30), math.sqrt(dd / (bb + 1e-30)), math.sqrt(aa / (bb + 1e-30))
end

-- the recipes' mamba1 (recipes/smollm2-h3-h6.toml) with the shapes MIL needs: d_inner from
-- q_proj, d_xb from k_proj
local function mamba_config(k)
  local P = "model.layers." .. k .. ".self_attn."
  return ("d_inner = %d\nd_xb = %d\nd_state = 16\ndt_rank = 16\nd_conv = 4\n"):format(teacher:param(P .. "q_proj.weight"):shape()[1],
                                               teacher:param(P .. "k_proj.weight"):shape()[1])
end

print(("%-6s %10s %10s %12s %14s"):format("layer", "cosine", "rel.err", "|mix|/|attn|",
                                          "|dloss/dout|"))
for _, k in ipairs(layers) do
  local student <close> = teacher:clone()
  student:swap(k, "mamba1", {init = "mil", config = mamba_config(k)})
  student:capture({layers = k, points = {"mixer_in", "mixer_out"}})
  student:forward(inputs, 1, T, {grad = false})
  local got = student:captured()[k]
  assert(got.mixer_in.value:equal(ref[k].mixer_in.value),
         "layer " .. k .. ": the student's mixer input differs from the teacher's")
  local cos, rel, ratio = compare(flat(got.mixer_out.value), flat(ref[k].mixer_out.value))
  local g = flat(ref[k].mixer_out.grad)
  local gn = 0
  for i = 1, #g do gn = gn + g[i] * g[i] end
  print(("%-6d %10.4f %10.4f %12.4f %14.3e"):format(k, cos, rel, ratio, math.sqrt(gn)))
end
