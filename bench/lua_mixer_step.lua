-- bench/lua_mixer_step.lua: A/B of one training step (forward, backward, AdamW) of a two-layer
-- d_model 128 model with both layers attention (tt) vs one of them the Lua GLA of
-- examples/mixers/gla.lua (tg), interleaved rounds, median. Run from the repository root:
--   build/hyb run bench/lua_mixer_step.lua
local MAP = [[
[model]
name = "b"
d_model = 128
n_layers = 2
vocab_size = 256
d_ff = 384
norm_eps = 1e-5
tie_embeddings = true
max_seq = 256
[mixers.attn]
type = "mha"
symbol = "t"
n_heads = 4
n_kv_heads = 2
head_dim = 32
rope_theta = 10000.0
[mixers.gla]
type = "lua:examples/mixers/gla.lua"
symbol = "g"
heads = 4
head_dim = 32
[layout]
pattern = "PAT"
]]
local B, T = 4, 64
local ids, tg = {}, {}
for i = 1, B * T do ids[i] = (i * 7) % 256; tg[i] = (i * 11) % 256 end
local models = {}
for _, p in ipairs({"tt", "tg"}) do
  local m = hyb.model(hyb.parse_layermap(MAP:gsub("PAT", p), "b.toml"), {seed = 1})
  models[p] = {m = m, opt = hyb.optim.adamw(m), t = {}}
end
for round = 1, 7 do
  for _, p in ipairs({"tt", "tg"}) do
    local x = models[p]
    local t0 = hyb.time()
    for _ = 1, 5 do local l = x.m:loss(x.m:forward(ids, B, T), tg) l:backward() x.opt:step() end
    if round > 1 then x.t[#x.t + 1] = (hyb.time() - t0) / 5 * 1000 end
  end
end
for _, p in ipairs({"tt", "tg"}) do
  table.sort(models[p].t)
  print(p, ("median %.2f ms / step (B=%d T=%d D=128, 6 rounds of 5 steps)"):format(models[p].t[3], B, T))
end
