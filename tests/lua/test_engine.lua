-- tests/lua/test_engine.lua: hyb.engine and hyb.plan_memory from Lua (label unit).
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")
hyb.log_level("warn")

local MAP = [[
[model]
name = "lua-engine"
d_model = 32
n_layers = 2
vocab_size = 40
d_ff = 48
norm_eps = 1e-5
tie_embeddings = true
max_seq = 64

[mixers.attn]
type = "mha"
symbol = "t"
n_heads = 2
head_dim = 16

[layout]
pattern = "tt"
]]

local function model() return hyb.model(hyb.parse_layermap(MAP, "lua-engine.toml"), {seed = 3}) end

-- greedy reference: full forward over the growing sequence, arg max of the last position
local function greedy_alone(m, prompt, n)
  local ids, out = {table.unpack(prompt)}, {}
  for _ = 1, n do
    local logits = m:forward(ids, 1, #ids, {grad = false})
    local t = logits:argmax_last()[#ids]
    out[#out + 1] = t
    ids[#ids + 1] = t
  end
  return out
end

H.run("engine equals generation alone", function()
  local m = model()
  local e = hyb.engine(m, {slots = 2, max_ctx = 48, prefill_chunk = 5})
  local prompts, ids = {}, {}
  for r = 1, 5 do
    local p = {}
    for i = 1, 3 + 2 * r do p[i] = (r * 7 + i * 3) % 40 end
    prompts[r] = p
    ids[e:submit(p, {max_tokens = 4 + r})] = r
  end
  local cs = e:run()
  H.eq(#cs, 5, "all finished")
  for _, c in ipairs(cs) do
    local r = ids[c.id]
    local ref = greedy_alone(m, prompts[r], 4 + r)
    H.eq(#c.tokens, #ref, "length")
    for i = 1, #ref do H.eq(c.tokens[i], ref[i], ("request %d token %d"):format(r, i)) end
    H.eq(c.finish, "length")
    H.check(c.ttft >= 0 and #c.token_times == #c.tokens, "metrics")
  end
  local s = e:stats()
  H.eq(s.finished, 5)
  H.eq(s.max_active, 2)
  -- 2 layers x (K + V) x 2 KV heads x 16 values, f16 by default
  H.eq(s.kv_cache, "f16")
  H.eq(s.kv_bytes_per_token, 2 * 2 * 2 * 16 * 2)
  for kv, row in pairs({f32 = 16 * 4, q8_0 = 2 + 16}) do -- q8_0: one f16 scale + 16 int8 a row
    local s2 = hyb.engine(m, {slots = 3, max_ctx = 48, kv_cache = kv}):stats()
    H.eq(s2.kv_cache, kv)
    H.eq(s2.kv_bytes_per_token, 2 * 2 * 2 * row)
    H.eq(s2.state_bytes, 3 * 2 * math.ceil(2 * 2 * row * 48 / 64) * 64)
  end
end)

H.run("prefix cache from Lua", function()
  local m = model()
  local e = hyb.engine(m, {slots = 1, max_ctx = 48})
  local pre = {1, 2, 3, 4, 5, 6, 7, 8}
  e:add_prefix(pre)
  local a = e:submit({1, 2, 3, 4, 5, 6, 7, 8, 9}, {max_tokens = 3})
  local b = e:submit({1, 2, 3, 4, 5, 6, 7, 8, 10}, {max_tokens = 3})
  local cs = e:run()
  local s = e:stats()
  H.eq(s.prefix_hits, 1)
  H.eq(s.prefix_misses, 1)
  H.eq(cs[2].prefix_tokens, 8)
  local ref = greedy_alone(m, {1, 2, 3, 4, 5, 6, 7, 8, 10}, 3)
  for i = 1, 3 do H.eq(cs[2].tokens[i], ref[i]) end
  H.check(a ~= b)
end)

H.run("plan_memory", function()
  local p = hyb.plan_memory("graphs/smollm2-135m.toml", {budget_bytes = 4e9, context = 1024,
                                                         kv_cache = "f32"})
  -- 30 layers x K and V x 3 KV heads x 64 x 4 bytes
  H.eq(p.kv_bytes_per_token, 30 * 2 * 3 * 64 * 4)
  H.eq(p.fixed_bytes_per_seq, 0)
  H.eq(p.bytes_per_seq, 30 * 2 * 3 * 64 * 4 * 1024)
  -- the default KV cache is f16 (2 bytes a value); q8_0: two f16 scales and 64 int8 a row of 64
  local p16 = hyb.plan_memory("graphs/smollm2-135m.toml", {budget_bytes = 4e9, context = 1024})
  H.eq(p16.kv_bytes_per_token, 30 * 2 * 3 * 64 * 2)
  local p8 = hyb.plan_memory("graphs/smollm2-135m.toml",
                             {budget_bytes = 4e9, context = 1024, kv_cache = "q8_0"})
  H.eq(p8.kv_bytes_per_token, 30 * 2 * 3 * (2 * 2 + 64))
  H.raises(function() hyb.plan_memory("graphs/smollm2-135m.toml", {kv_cache = "q4"}) end,
           "kv_cache: unknown KV cache type 'q4' (allowed: f16, q8_0, f32)")
  H.eq(p.max_batch, (4000000000 - p.weight_bytes) // p.bytes_per_seq)
  -- the 15B map is only planned, never built
  local q = hyb.plan_memory("graphs/apriel-nemotron-15b.toml",
                            {budget_bytes = 80e9, context = 8192, weight_dtype = "bf16"})
  H.eq(q.kv_bytes_per_token, 50 * 2 * 8 * 128 * 2)
  H.check(q.max_batch >= 1 and q.weight_bytes > 25e9, q.text)
  H.raises(function() hyb.plan_memory("graphs/apriel-nemotron-15b.toml", {budget_bytes = 1e9}) end,
           "does not hold the weights")
  H.raises(function() hyb.plan_memory("graphs/tiny.toml", {context = 100000}) end, "context")
  H.raises(function() hyb.plan_memory("graphs/tiny.toml", {budgt = 1}) end, "budgt")
end)

H.run("bad arguments", function()
  local m = model()
  H.raises(function() hyb.engine(42) end, "hyb.model or a hyb.llm")
  H.raises(function() hyb.engine(m, {slots = 0}) end, "slots")
  H.raises(function() hyb.engine(m, {kv_cache = "f8"}) end,
           "hyb.engine: kv_cache: unknown KV cache type 'f8' (allowed: f16, q8_0, f32)")
  H.raises(function() hyb.engine(m, {kv_cache = 16}) end, "kv_cache")
  local e = hyb.engine(m, {max_ctx = 16})
  H.raises(function() e:submit({}) end, "1 or more ids")
  H.raises(function() e:submit({1, 2, 99}) end, "[0, 39]")
  H.raises(function() e:submit({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}) end, "max_ctx 16")
  H.raises(function() e:submit({1}, {max_tokens = 0}) end, "max_tokens")
  H.raises(function() e:submit({1}, {eos = 99}) end, "eos")
  H.raises(function() e:submit({1}, {temprature = 1}) end, "temprature")
  e:close()
  H.raises(function() e:step() end, "closed")
end)

os.exit(H.done())
