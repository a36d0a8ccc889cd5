-- tests/lua/test_progress.lua: progress reporting (scripts/progresslib.lua) and its use by
-- hyb distill / eval / importance: a bar redrawn in place when the stream is a terminal
-- (HYB_TTY=1 stands for one), plain lines otherwise, nothing but the summary with --quiet; the
-- ETA and the bar cover the whole run (every stage), not the current stage. tests/progress_tmux.sh
-- checks the same through a real terminal.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")
local P = require("progresslib")

local root = os.getenv("HYB_SOURCE_DIR") or "."
local bin = arg[-1]
local tmp = H.tmpdir()
hyb.log_level("warn")

local function sink()
  local s = {buf = {}}
  function s:write(...) for _, x in ipairs({...}) do self.buf[#self.buf + 1] = x end return self end
  function s:flush() end
  function s:text() return table.concat(self.buf) end
  return s
end

local function sh(cmd)
  local f = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = f:read("a")
  f:close()
  local rc = tonumber(out:match("rc=(%d+)\n$"))
  return out:gsub("rc=%d+\n$", ""), rc
end

-- stderr only (stdout dropped)
local function sh_err(cmd)
  return sh("(" .. cmd .. " 2>&1 >/dev/null)")
end

H.run("durations", function()
  H.eq(P.duration(0.4), "0s", "under a second")
  H.eq(P.duration(75), "1m15s", "minutes")
  H.eq(P.duration(3725), "1h02m", "hours")
  H.eq(P.duration(nil), "?", "unknown")
  H.eq(P.duration(0 / 0), "?", "nan")
end)

H.run("bar, lines and quiet modes", function()
  local s = sink()
  local p = P.new{mode = "bar", stream = s, total = 100}
  p:update(25, "step 1")
  H.eq(s:text(), "\r[#####...............]  25% step 1\27[K", "bar drawn in place")
  p:log("held-out 0.5")
  H.eq(s:text(), "\r[#####...............]  25% step 1\27[K\r\27[Kheld-out 0.5\n\r[#####...............]  25% step 1\27[K",
    "a log line clears the bar, stays, and the bar is drawn again below it")
  p:update(100, "done")
  p:finish()
  H.eq(s:text():sub(-2), "K\n", "finish ends the bar line")
  s = sink()
  p = P.new{mode = "lines", stream = s, total = 100}
  p:update(50, "x")
  H.eq(s:text(), "", "lines mode draws nothing on update")
  p:log("a line")
  H.eq(s:text(), "a line\n", "lines mode logs plainly")
  s = sink()
  p = P.new{mode = "quiet", stream = s, total = 100}
  p:update(50, "x")
  p:log("not shown")
  p:summary("the end")
  H.eq(s:text(), "the end\n", "quiet: only the summary")
end)

H.run("ETA from this process's rate, over the whole run", function()
  local p = P.new{mode = "lines", stream = sink(), total = 100, done = 20}
  H.eq(p:eta(), nil, "no rate before any unit")
  p.t0 = hyb.time() - 10
  p:update(40)
  H.near(p:eta(), 30, 0.5) -- 20 units in 10 s, 60 left
  H.near(p:eta(60), 10, 0.5) -- 40 units in 10 s, 40 left
end)

H.run("hyb.isatty and HYB_TTY", function()
  local script = tmp .. "/tty.lua"
  local f = assert(io.open(script, "w"))
  f:write('print(require("hyb").isatty("stdout"), require("hyb").isatty("stderr"))\n')
  f:close()
  H.eq((sh(("'%s' run '%s' > '%s/o.txt'; cat '%s/o.txt'"):format(bin, script, tmp, tmp))), "false\tfalse\n", "a file is not a terminal")
  H.eq((sh(("HYB_TTY=1 '%s' run '%s'"):format(bin, script))), "true\ttrue\n", "HYB_TTY=1")
  H.eq((sh(("HYB_TTY=0 '%s' run '%s'"):format(bin, script))), "false\tfalse\n", "HYB_TTY=0")
  H.raises(function() hyb.isatty("stdlog") end, "stream must be")
end)

H.run("hyb distill in the three modes", function()
  hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
  local recipe = tmp .. "/r.toml"
  local f = assert(io.open(recipe, "w"))
  -- s1: 4 steps x 64 tokens, s2: 6 steps x 128 tokens: s1 is 25% of the run's tokens
  f:write(([[
[run]
teacher = "%s/teacher"
eval_batches = 1
log_every = 2
eval_every = 4
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
[train]
batch = 2
seq_len = 32
[stages.s1]
layers = [3]
mixer = "identity"
steps = 4
[stages.s2]
layers = [2]
mixer = "identity"
steps = 6
seq_len = 64
]]):format(tmp, root))
  f:close()
  local cmd = ("'%s' distill %%s '%s' '%s/%%s'"):format(bin, recipe, tmp)
  local out, rc = sh("HYB_TTY=1 " .. cmd:format("", "bar"))
  H.eq(rc, 0, "bar run: " .. out)
  H.check(out:find("\r[#####...............]  25% stage 1/2 s1  step 4/4", 1, true) ~= nil,
    "the bar counts the whole run (s1 is 25% of it): " .. out)
  H.check(out:find("\r[####################] 100% stage 2/2 s2  step 6/6", 1, true) ~= nil, "the bar ends at 100%")
  H.check(out:find("ETA %d+s %(stage %d+s%)") ~= nil, "run and stage ETA on the bar")
  H.check(out:find("\r\27%[K  %[s1%] held%-out at 4: loss [%d.]+\n\r%[") ~= nil, "held-out lines clear the bar, stay, the bar follows")
  H.check(not out:find("[s1] step", 1, true), "no per-step log lines under a bar")
  out, rc = sh("HYB_TTY=0 " .. cmd:format("", "lines"))
  H.eq(rc, 0, "lines run")
  H.check(not out:find("\r", 1, true) and not out:find("\27", 1, true), "no control characters in a log: " .. out)
  H.check(out:find("  %[s1%] step     2/4  loss [%d.]+  lr [%d.e+-]+  |g| [%d.]+ +%d+ tok/s  ETA +%d+ s  run ETA %d+s") ~= nil,
    "periodic lines with the run's ETA: " .. out)
  H.check(out:find("stage 2/2 's2'", 1, true) ~= nil, "stage k/n")
  out, rc = sh("HYB_TTY=1 " .. cmd:format("--quiet", "quiet"))
  H.eq(rc, 0, "quiet run")
  H.check(out:match("^distillation done: [^\n]*%(2 stages, 10 steps; final held%-out loss [%d.]+, %d+s in this run%)\n" ..
    "chat with the student: [^\n]*\n$") ~= nil, "--quiet prints the summary only: " .. out)
  -- eval and importance: a bar on stderr, lines without a terminal, nothing with --quiet
  local base = ("'%s' %%s --teacher '%s/teacher' --data '%s/examples/data' --tokenizer bytes --batches 1 " ..
    "--seq-len 16 %%s"):format(bin, tmp, root)
  local ev = "--prompts 1 --gen 2 --out '" .. tmp .. "/e.json' '" .. tmp .. "/lines/s1/model'"
  out = sh_err("HYB_TTY=1 " .. base:format("eval", ev))
  H.check(out:find("\r[####################] 100% model 2/2: agreement 1/1", 1, true) ~= nil, "eval bar: " .. out)
  out = sh_err("HYB_TTY=0 " .. base:format("eval", ev))
  H.check(out:find("evaluated teacher (1/2, ETA", 1, true) ~= nil and not out:find("\r", 1, true), "eval lines: " .. out)
  out = sh_err("HYB_TTY=1 " .. base:format("eval", "--quiet " .. ev))
  H.eq(out, "", "eval --quiet: nothing on stderr")
  local im = "--out '" .. tmp .. "/rank.json'"
  out = sh_err("HYB_TTY=1 " .. base:format("importance", im))
  H.check(out:find("\r[####################] 100% LOO layer 3 (4/4)", 1, true) ~= nil, "importance bar: " .. out)
  out = sh_err("HYB_TTY=0 " .. base:format("importance", im))
  H.check(out:find("LOO layer 0: rKL [%d.]+  NLL [%d.]+  %(1/4, ETA") ~= nil, "importance lines: " .. out)
  out = sh_err("HYB_TTY=1 " .. base:format("importance", "--quiet " .. im))
  H.eq(out, "", "importance --quiet: nothing on stderr")
  out, rc = sh(base:format("eval", "--prompts 1 '" .. tmp .. "/missing'"))
  H.check(rc == 2 and out:find("missing: no such model", 1, true) ~= nil, "a missing model fails before the work: " .. out)
end)

os.execute("rm -rf '" .. tmp .. "'")
os.exit(H.done())
