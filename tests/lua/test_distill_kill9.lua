-- tests/lua/test_distill_kill9.lua: kill -9 of scripts/distill.lua at random moments (in the
-- middle of a step, a checkpoint save, an evaluation, a stage switch), then the same command
-- again, several times: the final parameters equal an uninterrupted run bit for bit, every
-- checkpoint left on disk parses, and no temporary file ("*.tmp.<pid>.<n>" of a killed save)
-- remains (issue 19). The kill times are drawn from $HYB_KILL_SEED (default: the clock; printed,
-- so a failure can be replayed).
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")

local root = os.getenv("HYB_SOURCE_DIR") or "."
local bin = arg[-1]
local tmp = H.tmpdir()
hyb.log_level("warn")

local function sh(cmd)
  local ok, _, code = os.execute(cmd)
  return ok and 0 or code
end

local function count(dir, pattern)
  local p = io.popen("find '" .. dir .. "' -name '" .. pattern .. "' | wc -l")
  local n = tonumber(p:read("a"))
  p:close()
  return n
end

H.run("distill: kill -9 at random moments, resume, same result, no temporaries", function()
  hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
  local recipe = tmp .. "/r.toml"
  local f = assert(io.open(recipe, "w"))
  f:write(([[
[run]
teacher = "%s/teacher"
seed = 5
log_every = 100
eval_every = 4
eval_batches = 1
ckpt_every = 1
%s[stages.s1]
layers = [3]
mixer = "identity"
steps = 12
[stages.s2]
layers = [1]
mixer = "identity"
steps = 8
]]):format(tmp, H.tiny_recipe_data(root, 1)))
  f:close()
  local cmd = ("'%s' run '%s/scripts/distill.lua' '%s' '%%s' >> '%s/log.txt' 2>&1"):format(bin, root, recipe, tmp)
  local t0 = hyb.time()
  H.eq(sh(cmd:format(tmp .. "/A")), 0, "uninterrupted run")
  local full = hyb.time() - t0
  H.check(io.open(tmp .. "/A/s2/final.safetensors") ~= nil, "uninterrupted run finished")

  local seed = tonumber(os.getenv("HYB_KILL_SEED") or "") or os.time()
  math.randomseed(seed)
  local kills, dirty, tries = 0, 0, 0
  for k = 1, 12 do
    if kills == 4 then break end
    tries = k
    -- a moment in (0.05, 0.35) of an uninterrupted run's time after this restart: each restart
    -- resumes, so the kills cut ever later parts of the run (start-up, steps, saves, the stage
    -- switch) and the run is not over before the last kill
    local at = full * (0.05 + 0.3 * math.random())
    local p = io.popen(("%s & pid=$!; sleep %.3f; if kill -9 $pid 2>/dev/null; then echo killed; fi; " ..
      "wait $pid 2>/dev/null; true"):format(cmd:format(tmp .. "/B"), at))
    local out = p:read("a")
    p:close()
    if out:find("killed", 1, true) then kills = kills + 1 end
    dirty = dirty + count(tmp .. "/B", "*.tmp.*")
    -- whatever is on disk now parses: a kill never leaves a half-written checkpoint
    for _, st in ipairs({"s1", "s2"}) do
      for _, name in ipairs({"ckpt", "final"}) do
        local path = ("%s/B/%s/%s.safetensors"):format(tmp, st, name)
        local g = io.open(path, "rb")
        if g then
          g:close()
          local ok, err = pcall(hyb.train.checkpoint_meta, path)
          H.check(ok, ("kill %d (seed %d, %.2f s): %s does not parse: %s"):format(k, seed, at, path, tostring(err)))
        end
      end
    end
  end
  io.stderr:write(("  %d kill -9 in %d tries (seed %d, full run %.1f s); %d temporaries seen right after a kill\n")
    :format(kills, tries, seed, full, dirty))
  H.check(kills >= 2, ("at least 2 kills landed while the run was going (seed %d): %d"):format(seed, kills))
  H.eq(sh(cmd:format(tmp .. "/B")), 0, "the resumed run completes")
  H.eq(count(tmp .. "/B", "*.tmp*"), 0, "temporary files left after the resume (seed " .. seed .. ")")
  local a = hyb.train.load(tmp .. "/A/s2/final.safetensors")
  local b = hyb.train.load(tmp .. "/B/s2/final.safetensors")
  local diff = 0
  for _, name in ipairs(a:params()) do
    if not a:param(name):equal(b:param(name)) then diff = diff + 1 end
  end
  H.eq(diff, 0, "parameters differing from the uninterrupted run (seed " .. seed .. ")")
end)

H.rmdir(tmp)
os.exit(H.done())
