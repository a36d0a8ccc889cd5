-- scripts/samples.lua: greedy generations of trained checkpoints on a few ChatML prompts (the
-- prompts of scripts/mil_check.lua), for a quick coherence check of distilled students.
--   hyb samples TOKENIZER(.gguf) N_TOKENS MODEL...
-- MODEL: anything hyb.train.load takes (model:save dir, .safetensors checkpoint, .gguf).
local hyb = require("hyb")
local G = require("genlib")
local USAGE = "usage: hyb samples TOKENIZER N MODEL..."
if arg[1] == "--help" or arg[1] == "-h" then print(USAGE) os.exit(0) end
if #arg < 3 then io.stderr:write(USAGE, "\n") os.exit(2) end
hyb.log_level("warn")
local function expand(p) return (p:gsub("^~", os.getenv("HOME") or "~")) end
local n = math.tointeger(tonumber(arg[2]))
if not n or n < 1 or n > 1 << 24 then
  io.stderr:write(("hyb samples: N must be an integer in [1, 16777216], got '%s'\n%s\n"):format(arg[2], USAGE))
  os.exit(2)
end
local tok = hyb.data.tokenizer(expand(arg[1]))
local prompts = {
  "What is the capital of France?",
  "Write a short sentence about the ocean.",
  "Give me three tips for staying healthy.",
}
for i = 3, #arg do
  local m <close> = hyb.train.load(expand(arg[i]))
  print(("== %s (%s)"):format(arg[i], m:pattern()))
  for _, p in ipairs(prompts) do
    local gen = hyb.train.greedy(m, tok:encode(G.chatml({{role = "user", content = p}})), n)
    local cut = {}
    for _, t in ipairs(gen) do
      if t == tok:eos() then break end
      cut[#cut + 1] = t
    end
    print(("  %s -> %q"):format(p, tok:decode(cut)))
  end
end
