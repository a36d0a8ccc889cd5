-- bench/threads_engine.lua: batched decode through hyb.engine (continuous batching): `n`
-- sequences of distinct short prompts decode together for `tokens` greedy tokens each; prints one
-- JSON line with the decode tokens/s of the engine's batched steps (stats: decode_tokens /
-- t_decode). Used by bench/threads_bench.sh; runs in any hyb build that has hyb.engine.
--   hyb run bench/threads_engine.lua [model.gguf] [n=16] [tokens=64]
local path = arg[1] or os.getenv("HYB_MODEL")
  or (os.getenv("HOME") .. "/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf")
local n, tokens = tonumber(arg[2] or "16"), tonumber(arg[3] or "64")
hyb.log_level("warn")
local llm = hyb.llm(path, {max_ctx = 256})
local e = hyb.engine(llm, {slots = n, max_ctx = 256})
for i = 1, n do
  local ids = {}
  for k = 1, 12 do ids[k] = 100 + (i * 131 + k * 37) % 4000 end
  e:submit(ids, {max_tokens = tokens, temperature = 0, eos = {}})
end
local t0 = hyb.time()
local done = e:run()
local wall = hyb.time() - t0
local st = e:stats()
local ntok = 0
for _, c in ipairs(done) do ntok = ntok + #c.tokens end
print(string.format('{"sequences": %d, "tokens": %d, "decode_tokens": %d, "t_decode": %.4f, ' ..
  '"decode_tok_s": %.2f, "wall_s": %.3f}', n, ntok, st.decode_tokens, st.t_decode,
  st.decode_tokens / st.t_decode, wall))
e:close()
