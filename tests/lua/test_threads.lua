-- tests/lua/test_threads.lua: hyb.threads (the CPU compute threads: hyb's pool and OpenMP) from
-- Lua: set, read back, default from OMP_NUM_THREADS (2 in the test environment), bad values
-- refused with a message naming the range; and a model decodes the same tokens on 1, 2 and 3
-- threads (its products are large enough to run on the pool).
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")
hyb.log_level("warn")

H.run("settings", function()
  H.eq(hyb.threads(3), 3, "set 3")
  H.eq(hyb.threads(), 3, "read back")
  H.eq(hyb.threads(1), 1, "set 1")
  local env = tonumber(os.getenv("OMP_NUM_THREADS") or "")
  local d = hyb.threads(0)
  H.check(d >= 1, "default >= 1")
  if env then H.eq(d, env, "default follows OMP_NUM_THREADS") end
  H.raises(function() hyb.threads(-1) end, "n must be in [0, 1024]")
  H.raises(function() hyb.threads(5000) end, "n must be in [0, 1024]")
  H.raises(function() hyb.threads("x") end, "number expected")
end)

local MAP = [[
[model]
name = "lua-threads"
d_model = 256
n_layers = 2
vocab_size = 300
d_ff = 1024
norm_eps = 1e-5
tie_embeddings = true
max_seq = 64

[mixers.attn]
type = "mha"
symbol = "t"
n_heads = 4
head_dim = 64

[layout]
pattern = "tt"
]]

H.run("same tokens on 1, 2, 3 threads", function()
  local m = hyb.model(hyb.parse_layermap(MAP, "lua-threads.toml"), {seed = 3})
  local prompt = {5, 17, 42, 7, 99, 3}
  local ref
  for _, t in ipairs({1, 2, 3}) do
    hyb.threads(t)
    local out = hyb.train.greedy(m, prompt, 24)
    if ref == nil then ref = out else
      H.eq(table.concat(out, ","), table.concat(ref, ","), ("threads %d"):format(t))
    end
  end
  hyb.threads(0)
end)

os.exit(H.done())
