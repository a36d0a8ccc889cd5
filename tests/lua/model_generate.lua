-- hyb.llm / hyb.sampler / scripts/genlib.lua on the default teacher: the prompt's token ids and
-- the greedy reply equal HF transformers' (tests/data/teacher/teacher.json), stop strings,
-- seeded sampling is reproducible, argument errors are Lua errors. Skips (77) without the model.
local hyb = require("hyb")
local path = os.getenv("HYB_MODEL")
if not path or path == "" then
  path = (os.getenv("HOME") or ".") .. "/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf"
end
local f = io.open(path, "rb")
if not f then print("skipped: model file " .. path .. " not found"); os.exit(77) end
f:close()
package.path = (os.getenv("HYB_SOURCE_DIR") or ".") .. "/scripts/?.lua;" .. package.path
local gen = require("genlib")

local failed, passed = 0, 0
local function check(cond, msg)
  if cond then passed = passed + 1 else failed = failed + 1; print("FAIL: " .. msg) end
end
local function ids_of(s)
  local t = {}
  for d in s:gmatch("%d+") do t[#t + 1] = math.tointeger(tonumber(d)) end
  return t
end
local function same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

local jf = assert(io.open((os.getenv("HYB_TEST_DATA") or "tests/data") .. "/teacher/teacher.json"))
local json = jf:read("a")
jf:close()
local prompt_ids = ids_of(json:match('"ids": %[%s*%[([%d,%s]+)%]'))
local greedy_ids = ids_of(json:match('"greedy": {.-"ids": %[([%d,%s]+)%]'))
local prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"

-- max_ctx past the model's max_seq (8192) is refused with the range (issue 19)
do
  local ok, err = pcall(hyb.llm, path, {max_ctx = 8193})
  check(not ok and tostring(err):find("max_seq 8192", 1, true), "max_ctx 8193: " .. tostring(err))
end
local llm = hyb.llm(path, {max_ctx = 128})
check(llm:vocab_size() == 49152 and llm:max_ctx() == 128, "vocab/max_ctx")
check(llm:eos() == 2, "eos id " .. tostring(llm:eos()))

-- 1. tokenizer agrees with HF
local ids = llm:encode(prompt)
check(same(ids, prompt_ids), "encode(prompt) differs from HF: " .. table.concat(ids, ","))

-- 2. greedy reply == HF's continuation up to EOS
local streamed = {}
local r = gen.generate(llm, ids, {sampler = hyb.sampler{}, max_tokens = 16,
                                  on_text = function(s) streamed[#streamed + 1] = s end})
local want = {}
for i = 1, #greedy_ids do
  if greedy_ids[i] == llm:eos() then break end
  want[#want + 1] = greedy_ids[i]
end
check(same(r.ids, want), "greedy ids " .. table.concat(r.ids, ",") .. " vs HF " .. table.concat(want, ","))
check(r.reason == "eos", "reason " .. r.reason)
check(r.text == llm:decode(want), "text '" .. r.text .. "'")
check(table.concat(streamed) == r.text, "streamed text differs")
check(r.text == "The capital of France is Paris.", "reply '" .. r.text .. "'")
check(llm:pos() == #ids + #want, "context holds " .. llm:pos())
check(r.prefill_tokens == #ids and r.decode_tokens == #want, "stats")

-- 3. stop strings: output ends before the stop string, nothing of it is streamed
llm:reset()
check(llm:pos() == 0, "reset")
streamed = {}
r = gen.generate(llm, ids, {sampler = hyb.sampler{}, max_tokens = 16, stop = {" Paris"},
                            on_text = function(s) streamed[#streamed + 1] = s end})
check(r.reason == "stop" and r.text == "The capital of France is", "stop: '" .. r.text .. "' " .. r.reason)
check(table.concat(streamed) == r.text, "stop: streamed '" .. table.concat(streamed) .. "'")

-- 4. seeded sampling is reproducible; another seed differs
local function sample_run(seed)
  llm:reset()
  local s = hyb.sampler{temperature = 1.0, top_k = 50, top_p = 0.95, repetition_penalty = 1.1, seed = seed}
  return gen.generate(llm, ids, {sampler = s, max_tokens = 5}).ids
end
local a, b, c = sample_run(7), sample_run(7), sample_run(8)
check(same(a, b), "same seed, different tokens")
check(not same(a, c), "different seeds, same tokens")

-- 4b. llm:generate (the generation API): a stop string spanning tokens is cut and never
-- streamed; after an EOS the logits it came from stay (llm:sample gives it again); a max_tokens
-- ending keeps its last token in the context and the next call continues as one long prompt
llm:reset()
streamed = {}
r = llm:generate(ids, {max_tokens = 16, stop = {"capital of", "zzz"},
                       on_text = function(s) streamed[#streamed + 1] = s end})
check(r.reason == "stop" and r.text == "The " and table.concat(streamed) == "The ",
      "stop across tokens: '" .. r.text .. "' streamed '" .. table.concat(streamed) .. "'")
llm:reset()
r = llm:generate(ids, {max_tokens = 16})
check(r.reason == "eos" and llm:sample() == llm:eos(), "logits after eos")
llm:reset()
local r1 = llm:generate(ids, {max_tokens = 3})
check(r1.reason == "max_tokens" and #r1.ids == 3 and llm:pos() == #ids + 3, "pos after max_tokens " .. llm:pos())
local more = llm:encode(" Answer again:")
local r2 = llm:generate(more, {max_tokens = 6})
check(r2.prefill_tokens == #more + 1, "continuation prefilled " .. r2.prefill_tokens)
llm:reset()
local whole = {}
for _, t in ipairs(ids) do whole[#whole + 1] = t end
for _, t in ipairs(r1.ids) do whole[#whole + 1] = t end
for _, t in ipairs(more) do whole[#whole + 1] = t end
local r3 = llm:generate(whole, {max_tokens = 6})
check(same(r2.ids, r3.ids), "continued " .. table.concat(r2.ids, ",") .. " vs whole " .. table.concat(r3.ids, ","))
-- an on_text error reaches the caller as raised; the llm stays usable
llm:reset()
local okb, errb = pcall(llm.generate, llm, ids, {max_tokens = 4, on_text = function() error("boom") end})
check(not okb and tostring(errb):find("boom"), "on_text error: " .. tostring(errb))
check(llm:pos() >= #ids and llm:pos() <= #ids + 4, "pos after on_text error " .. llm:pos())
llm:reset()
local function raises(f, want, what)
  local okf, e = pcall(f)
  check(not okf and tostring(e):find(want, 1, true), what .. ": " .. tostring(e))
end
raises(function() llm:generate({}, {}) end, "ids is empty", "empty ids")
raises(function() llm:generate(ids, {max_tokens = 0}) end, "max_tokens", "max_tokens 0")
raises(function() llm:generate(ids, {max_tokens = 128}) end, "max_tokens", "max_tokens past the context")
raises(function() llm:generate(ids, {sampler = 5}) end, "hyb.sampler", "sampler 5")
raises(function() llm:generate(ids, {stop = {""}}) end, "stop[1]", "empty stop")
raises(function() llm:generate(ids, {stop = "x"}) end, "stop must be a table", "stop string")
raises(function() llm:generate(ids, {on_text = 1}) end, "on_text", "on_text 1")
raises(function() llm:generate(ids, {max_token = 1}) end, "max_token", "unknown option")
check(llm:pos() == 0, "failed calls leave the context alone")

-- 6. a saved model is a model (issue 16): model:save + tokenizer:save make a directory that
-- hyb.llm (and so generate / chat / serve) opens as it is, with the GGUF's eos and chat template;
-- without tokenizer.json the error names --tokenizer, and tokenizer = PATH supplies one
do
  local dir = os.tmpname()
  os.remove(dir)
  hyb.train.load(path):save(dir)
  local ok, err = pcall(hyb.llm, dir, {max_ctx = 128})
  check(not ok and tostring(err):find("--tokenizer PATH", 1, true), "dir without a tokenizer: " .. tostring(err))
  local l2 = hyb.llm(dir, {max_ctx = 128, tokenizer = path})
  local r2 = gen.generate(l2, l2:encode(prompt), {sampler = hyb.sampler{}, max_tokens = 16})
  check(r2.text == "The capital of France is Paris.", "tokenizer = gguf: '" .. r2.text .. "'")
  l2:close()
  local tok = hyb.data.tokenizer(path)
  check((tok:chat_template() or ""):find("<|im_start|>", 1, true), "the GGUF's chat template")
  tok:save(dir)
  local l3 = hyb.llm(dir, {max_ctx = 128})
  check(l3:eos() == 2, "saved tokenizer eos " .. l3:eos())
  check(same(l3:encode(prompt), prompt_ids), "saved tokenizer ids differ from HF")
  local r3 = gen.generate(l3, l3:encode(prompt), {sampler = hyb.sampler{}, max_tokens = 16})
  check(r3.text == "The capital of France is Paris." and r3.reason == "eos",
        "saved dir: '" .. r3.text .. "' " .. r3.reason)
  check(hyb.data.tokenizer(dir):chat_template() == tok:chat_template(), "chat template kept")
  l3:close()
  check(not pcall(hyb.llm, dir, {tokenizer = 5}), "tokenizer = 5 accepted")
  os.execute("rm -rf '" .. dir .. "'")
end

-- 5. errors
check(not pcall(hyb.sampler, {top_k = -1}), "top_k = -1 accepted")
check(not pcall(hyb.sampler, {temperatur = 1}), "unknown option accepted")
check(not pcall(llm.feed, llm, 49152), "token id 49152 accepted")
llm:reset()
local long = {}
for i = 1, 129 do long[i] = 100 end
local ok, err = pcall(llm.prefill, llm, long)
check(not ok and tostring(err):find("max_ctx"), "context overflow: " .. tostring(err))
check(not pcall(hyb.llm, "/nonexistent/model.gguf"), "missing model file accepted")
do -- quant: a bad value is refused naming it (before the model loads)
  local ok2, err2 = pcall(hyb.llm, path, {quant = "turbo"})
  check(not ok2 and tostring(err2):find('quant must be "off", "precise", "fast" or "auto", got "turbo"', 1, true),
        "quant = turbo: " .. tostring(err2))
end
llm:close()
check(not pcall(llm.pos, llm), "closed llm usable")

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
