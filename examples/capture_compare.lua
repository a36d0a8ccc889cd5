-- examples/capture_compare.lua: how close is a swapped-in mixer to the attention it replaced?
--
--   hyb run examples/capture_compare.lua                     # graphs/tiny.toml, random init
--   hyb run examples/capture_compare.lua ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf 3,9,15
--
-- For each layer k: a student is the teacher with layer k swapped to mamba1, initialised from the
-- attention weights (MIL); both run the same batch with model:capture on layer k, and the script
-- prints the cosine similarity and the relative error of the student's mixer output against the
-- teacher's attention output, per layer. The mixer inputs are the same bitwise (layers below k
-- are the teacher's), which the script checks. It also prints, from the same captures, the
-- teacher's mean attention entropy at the layer (recomputed in Lua from mixer_in and the layer's
-- q/k/v/o weights; the recomputation's error against the captured attention output is the
-- column `recomp`), and how much the loss depends on the layer: the norm of d loss / d mixer_out
-- (the teacher's, on next-token CE).
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
  local fmt = "d_inner = %d\nd_xb = %d\nd_state = 16\ndt_rank = 16\nd_conv = 4\n"
  return fmt:format(teacher:param(P .. "q_proj.weight"):shape()[1],
                                               teacher:param(P .. "k_proj.weight"):shape()[1])
end

-- (with hyb.model's random init the attention is near uniform: its entropy is about the mean of
-- log t over the positions)
-- the teacher's attention (hyb's mha: RoPE in HF's half-split layout, grouped KV heads, causal
-- softmax, no biases) written out in Lua over rows u[t] of one sequence: the output rows and the
-- mean entropy (nats) of the attention distributions over heads and positions
local map = hyb.train.layermap_toml(teacher)
local NH, KV = tonumber(map:match("n_heads = (%d+)")), tonumber(map:match("n_kv_heads = (%d+)"))
local HD, THETA = tonumber(map:match("head_dim = (%d+)")), tonumber(map:match("rope_theta = ([%d.e+]+)"))
local function linear(x, W)
  local y = {}
  for n = 1, #W do
    local acc, w = 0, W[n]
    for i = 1, #x do acc = acc + x[i] * w[i] end
    y[n] = acc
  end
  return y
end
local function attention(k, u)
  local P = "model.layers." .. k .. ".self_attn."
  local W = {}
  for _, n in ipairs({"q", "k", "v", "o"}) do W[n] = teacher:param(P .. n .. "_proj.weight"):totable() end
  local function rope(x, heads, pos)
    for h = 0, heads - 1 do
      for i = 0, HD / 2 - 1 do
        local a, j1, j2 = pos * THETA ^ (-2 * i / HD), h * HD + i + 1, h * HD + i + HD / 2 + 1
        x[j1], x[j2] = x[j1] * math.cos(a) - x[j2] * math.sin(a), x[j2] * math.cos(a) + x[j1] * math.sin(a)
      end
    end
    return x
  end
  local q, kk, v = {}, {}, {}
  for t = 1, #u do
    q[t] = rope(linear(u[t], W.q), NH, t - 1)
    kk[t], v[t] = rope(linear(u[t], W.k), KV, t - 1), linear(u[t], W.v)
  end
  local out, ent = {}, 0
  for t = 1, #u do
    local o = {}
    for h = 0, NH - 1 do
      local g, s, mx, z = h // (NH // KV), {}, -math.huge, 0
      for j = 1, t do
        local d = 0
        for i = 1, HD do d = d + q[t][h * HD + i] * kk[j][g * HD + i] end
        s[j] = d / math.sqrt(HD)
        mx = math.max(mx, s[j])
      end
      for j = 1, t do s[j] = math.exp(s[j] - mx); z = z + s[j] end
      for j = 1, t do
        local p = s[j] / z
        if p > 0 then ent = ent - p * math.log(p) end
        s[j] = p
      end
      for i = 1, HD do
        local acc = 0
        for j = 1, t do acc = acc + s[j] * v[j][g * HD + i] end
        o[h * HD + i] = acc
      end
    end
    out[t] = linear(o, W.o)
  end
  return out, ent / (#u * NH)
end

print(("%-6s %10s %10s %12s %14s %9s %9s"):format("layer", "cosine", "rel.err", "|mix|/|attn|",
                                                  "|dloss/dout|", "entropy", "recomp"))
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
  local u, flat_out = ref[k].mixer_in.value:totable()[1], {}
  local out, ent = attention(k, u)
  for _, row in ipairs(out) do for _, x in ipairs(row) do flat_out[#flat_out + 1] = x end end
  local _, recomp = compare(flat_out, flat(ref[k].mixer_out.value))
  assert(recomp < 1e-3, ("layer %d: attention recomputed from the captured mixer_in is %g off the "
                         .. "captured mixer_out"):format(k, recomp))
  print(("%-6d %10.4f %10.4f %12.4f %14.3e %9.3f %9.1e"):format(k, cos, rel, ratio, math.sqrt(gn),
                                                              ent, recomp))
end
