-- tests/lua/test_distill_stages.lua: scripts/distill.lua runs two stages that both swap layers to
-- the mamba1 plugin with a `config` (stage 2's student, loaded from stage 1's checkpoint, already
-- has a mamba1 mixer in its layer map; model:swap refuses a config for such a mixer, so distill.lua
-- must drop it). Skips when the mamba1 plugin is not built.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")

local root = os.getenv("HYB_SOURCE_DIR") or "."
local bin = arg[-1]
hyb.log_level("warn")
local have_mamba = H.have_plugin("mamba1")

H.run("two mamba1 stages with config", function()
  if not have_mamba then print("skip: no mamba1 plugin") return end
  local tmp = H.tmpdir()
  hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
  local recipe = tmp .. "/r.toml"
  local f = assert(io.open(recipe, "w"))
  local stage = 'mixer = "mamba1"\nconfig = "d_inner = 128\\nd_xb = 64\\nd_state = 16"\nsteps = 1\n'
  f:write(([[
[run]
teacher = "%s/teacher"
eval_batches = 1
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
[train]
lr = 1e-4
batch = 1
seq_len = 16
[stages.a]
layers = [1]
%s
[stages.b]
layers = [2]
%s]]):format(tmp, root, stage, stage))
  f:close()
  local ok = os.execute(("'%s' run '%s/scripts/distill.lua' '%s' '%s/out' > '%s/log.txt' 2>&1"):format(bin, root,
    recipe, tmp, tmp))
  if not ok then
    local l = io.open(tmp .. "/log.txt")
    if l then io.stderr:write(l:read("a")) l:close() end
  end
  H.check(ok, "both stages run")
  local m = hyb.train.load(tmp .. "/out/b/final.safetensors")
  H.eq(m:pattern():sub(2, 3), "mm", "layers 1 and 2 are mamba1 after stage b")
  os.execute("rm -rf '" .. tmp .. "'")
end)

os.exit(H.done())
