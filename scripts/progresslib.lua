-- scripts/progresslib.lua: progress reporting for long loops (distill, importance, eval).
--
--   local P = require("progresslib")
--   local p = P.new{mode = P.mode(quiet, io.stdout), stream = io.stdout, total = work_units}
--   p:update(done_units, "text after the bar")   -- redrawn in place (bar) or every `every` (lines)
--   p:log("a line that stays")                  -- clears the bar, prints, redraws the bar below
--   p:finish()                                   -- ends the bar line (it stays on screen)
--
-- Modes: "bar" (the stream is a terminal: one line redrawn in place), "lines" (plain lines, for
-- logs and pipes), "quiet" (nothing but what the caller prints with p:summary and errors).
-- hyb.isatty decides; HYB_TTY=1 / HYB_TTY=0 overrides it (tests).
local hyb = require("hyb")
local P = {}
P.__index = P

-- "bar" | "lines" | "quiet" for output on `stream` (io.stdout or io.stderr)
function P.mode(quiet, stream)
  if quiet then return "quiet" end
  return hyb.isatty(stream == io.stderr and "stderr" or "stdout") and "bar" or "lines"
end

-- 75 -> "1m15s", 3725 -> "1h02m", nil / inf / nan -> "?"
function P.duration(s)
  if not s or s ~= s or s == math.huge or s < 0 then return "?" end
  s = math.floor(s + 0.5)
  if s < 60 then return ("%ds"):format(s) end
  if s < 3600 then return ("%dm%02ds"):format(s // 60, s % 60) end
  return ("%dh%02dm"):format(s // 3600, (s % 3600) // 60)
end

-- o: mode, stream (default io.stdout), total (work units of the whole run, e.g. tokens),
-- done (units already done before this process: a resumed run), width (bar cells, 20)
function P.new(o)
  local self = setmetatable({}, P)
  self.mode = o.mode or "lines"
  self.stream = o.stream or io.stdout
  self.total = o.total or 0
  self.done0 = o.done or 0
  self.done = self.done0
  self.width = o.width or 20
  self.t0 = hyb.time()
  self.drawn = false
  self.columns = tonumber(os.getenv("COLUMNS") or "") or 120
  return self
end

-- Seconds left for the whole run, from the rate of this process (units per wall second,
-- everything included: evaluations, checkpoints), nil before any unit is done. done: the units
-- done now (default: the last update's).
function P:eta(done)
  done = done or self.done
  local did = done - self.done0
  if did <= 0 then return nil end
  local rate = did / math.max(hyb.time() - self.t0, 1e-9)
  return math.max(self.total - done, 0) / rate
end

function P:bar()
  local f = self.total > 0 and math.min(self.done / self.total, 1) or 0
  local n = math.floor(f * self.width + 0.5)
  return ("[%s%s] %3d%%"):format(("#"):rep(n), ("."):rep(self.width - n), math.floor(f * 100))
end

-- Record progress (done units of the run) and, in bar mode, redraw the line: bar, then text.
function P:update(done, text)
  self.done = done
  if self.mode ~= "bar" then return end
  local line = self:bar() .. " " .. (text or "")
  if #line > self.columns - 1 then line = line:sub(1, self.columns - 1) end
  self.line = line
  self.stream:write("\r", line, "\27[K")
  self.stream:flush()
  self.drawn = true
end

-- A line that stays (not in quiet mode): in bar mode it goes above the bar, which is redrawn
-- below it.
function P:log(line)
  if self.mode == "quiet" then return end
  if self.drawn then self.stream:write("\r\27[K") end
  self.stream:write(line, "\n")
  if self.drawn then self.stream:write("\r", self.line, "\27[K") end
  self.stream:flush()
end

-- A line printed in every mode (the final summary).
function P:summary(line)
  if self.drawn then self.stream:write("\r\27[K") self.drawn = false end
  self.stream:write(line, "\n")
  self.stream:flush()
end

-- End the bar line (the last state stays on screen).
function P:finish()
  if self.drawn then self.stream:write("\n") self.stream:flush() end
  self.drawn = false
end

-- `local p <close> = P.new{...}`: an error that ends the script ends the bar line first, so the
-- message is a line of its own.
P.__close = P.finish

return P
