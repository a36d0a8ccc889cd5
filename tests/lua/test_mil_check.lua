-- tests/lua/test_mil_check.lua: `hyb mil_check` (scripts/mil_check.lua) end to end on the tiny
-- random model: MIL, random and identity rows before training, both inits after --train-steps,
-- --gen 0 (measure only), and clear errors for a bad --gen. Skips without the mamba1 plugin.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")

local root = os.getenv("HYB_SOURCE_DIR") or "."
local bin = arg[-1]
hyb.log_level("warn")
local have_mamba = false
for _, p in ipairs(hyb.plugins()) do if p.name == "mamba1" then have_mamba = true end end

local function sh(cmd, log)
  local ok = os.execute(cmd .. " > '" .. log .. "' 2>&1")
  local f = io.open(log)
  local text = f and f:read("a") or ""
  if f then f:close() end
  return ok, text
end

H.run("mil_check rows before and after training", function()
  if not have_mamba then print("skip: no mamba1 plugin") return end
  local tmp = os.tmpname()
  os.remove(tmp)
  assert(os.execute("mkdir -p '" .. tmp .. "'"))
  hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
  local base = ("'%s' run '%s/scripts/mil_check.lua' --teacher '%s/teacher' --data '%s/examples/data' " ..
    "--tokenizer bytes --val-fraction 0.1 --layers 1,2 --batches 1 --batch 1 --seq-len 16 " ..
    "--config 'd_inner = 128\nd_xb = 64\nd_state = 16'"):format(bin, root, tmp, root)
  local ok, log = sh(base .. (" --gen 0 --train-steps 2 --out '%s/mil.json'"):format(tmp), tmp .. "/log.txt")
  if not ok then io.stderr:write(log) end
  H.check(ok, "mil_check runs")
  local f = io.open(tmp .. "/mil.json")
  H.check(f ~= nil, "writes the JSON file")
  local js = f and f:read("a") or ""
  if f then f:close() end
  local names = {}
  for name in js:gmatch('"model"%s*:%s*"([^"]+)"') do names[#names + 1] = name end
  H.eq(table.concat(names, ","), "teacher,mil,random,identity,mil+2,random+2", "one row per model")
  local n = 0
  for v in js:gmatch('"rkl"%s*:%s*([-%d.eE+]+)') do
    n = n + 1
    H.check(tonumber(v) and tonumber(v) >= 0, "rKL is a number >= 0: " .. v)
  end
  H.eq(n, 6, "an rKL per row")
  H.check(log:find("identity", 1, true) ~= nil and not log:find("prompt:", 1, true), "--gen 0: table, no generations")

  local bad, err = sh(base .. " --gen -3", tmp .. "/bad.txt")
  H.check(not bad, "--gen -3 fails")
  H.check(err:find("--gen must be in [0, 16777216], got -3", 1, true) ~= nil, "names the option and range: " .. err)
  bad, err = sh(base .. " --gen 1.5", tmp .. "/bad2.txt")
  H.check(not bad and err:find("--gen needs an integer", 1, true) ~= nil, "non-integer --gen: " .. err)
  H.check(not err:find("stack traceback", 1, true), "no traceback for a usage error: " .. err)
  os.execute("rm -rf '" .. tmp .. "'")
end)

os.exit(H.done())
