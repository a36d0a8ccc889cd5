-- bench/route_llm.lua: prefill and decode through hyb.llm's building blocks (llm:prefill,
-- llm:feed: hyb_model_prefill / hyb_model_decode, no sampling), the same calls in any hyb build,
-- for A/B runs of the compute route (bench/route_ab.sh runs it with both binaries).
--   hyb run bench/route_llm.lua [model.gguf] [prefill_tokens] [decode_steps]   -> one JSON line
local path = arg[1] or os.getenv("HYB_MODEL")
  or (os.getenv("HOME") .. "/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf")
local T, steps = tonumber(arg[2] or "256"), tonumber(arg[3] or "64")
hyb.log_level("warn")
local llm = hyb.llm(path, {max_ctx = T + steps + 8})
local ids = {}
for i = 1, T do ids[i] = 100 + (i * 37) % 4000 end
local best_p, best_d = math.huge, math.huge
for _ = 1, 3 do
  llm:reset()
  local t0 = hyb.time()
  llm:prefill(ids)
  local t1 = hyb.time()
  for k = 1, steps do llm:feed(200 + k) end
  local t2 = hyb.time()
  best_p, best_d = math.min(best_p, t1 - t0), math.min(best_d, t2 - t1)
end
print(string.format('{"prefill_T": %d, "prefill_tok_s": %.3f, "decode_steps": %d, "decode_tok_s": %.3f}',
  T, T / best_p, steps, steps / best_d))
