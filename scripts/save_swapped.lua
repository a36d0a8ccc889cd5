-- scripts/save_swapped.lua: save the teacher with the given layers swapped to mamba1 (MIL init),
-- untrained: the "after swap" row of an evaluation (scripts/eval.lua).
--   hyb save_swapped TEACHER LAYERS(5,15,25) OUT_DIR [CONFIG_TOML]
local hyb = require("hyb")
local USAGE = "usage: hyb save_swapped TEACHER LAYERS OUT_DIR [CONFIG]"
if arg[1] == "--help" or arg[1] == "-h" then print(USAGE) os.exit(0) end
if #arg < 3 then io.stderr:write(USAGE, "\n") os.exit(2) end
local teacher = hyb.train.load((arg[1]:gsub("^~", os.getenv("HOME") or "~")))
local layers = {}
for v in arg[2]:gmatch("[^,]+") do
  local l = math.tointeger(tonumber(v))
  if not l or l < 0 then
    io.stderr:write(("hyb save_swapped: LAYERS must be layer numbers (0-based) like 5,15,25, got '%s'\n%s\n"):format(arg[2], USAGE))
    os.exit(2)
  end
  layers[#layers + 1] = l
end
local m = hyb.train.clone(teacher)
m:swap(layers, "mamba1", {init = "mil", seed = 2, config = arg[4] or
  "d_inner = 576\nd_xb = 192\nd_state = 16\ndt_rank = 16\nd_conv = 4"})
m:save(arg[3])
print("saved " .. arg[3] .. ": " .. m:pattern())
