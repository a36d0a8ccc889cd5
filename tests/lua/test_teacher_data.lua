-- tests/lua/test_teacher_data.lua: scripts/teacher_data.lua and the [data] generate table of
-- scripts/distill.lua on the tiny random byte-level model (graphs/tiny.toml): transcripts written,
-- resuming skips what is done (no duplicates, a partial transcript dropped), growing n adds only
-- the new prompts, settings are not mixed, prompts from corpus snippets, and clear errors.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")
hyb.log_level("warn")

local root = os.getenv("HYB_SOURCE_DIR") or H.root
local bin = arg[-1]
local tmp = H.tmpdir()
package.path = root .. "/scripts/?.lua;" .. package.path
local T = require("teacherlib")

local function write(path, text) H.write(path, text, true) end
local read = H.read
local function count(s, pat)
  local n = 0
  for _ in (s or ""):gmatch(pat) do n = n + 1 end
  return n
end
local function idx_prompts(out)
  local r = {}
  for line in (read(out .. ".idx") or ""):gmatch("[^\n]+") do
    local i = line:match("^(%d+)\t")
    if i then r[#r + 1] = tonumber(i) end
  end
  table.sort(r)
  return table.concat(r, ",")
end

local prompts = tmp .. "/prompts.txt"
write(prompts, table.concat({
  "Say hello.",
  "# a comment line",
  "",
  '{"prompt": "Quote \\"this\\" and \\u00e9.", "id": 7}',
  "Name a colour.",
  '{"instruction": "Count to three."}',
  "Last one.",
}, "\n") .. "\n")

local function td(args)
  return H.sh(("HYB_MODEL= %s teacher_data --teacher %s %s"):format(H.quote(bin),
    H.quote(root .. "/graphs/tiny.toml"), args))
end

H.run("prompts file: lines, comments, JSONL", function()
  local p = T.read_prompts(prompts)
  H.eq(#p, 5, "five prompts")
  H.eq(p[2], 'Quote "this" and \195\169.', "JSON escapes decoded")
  H.eq(p[4], "Count to three.", "instruction field")
end)

H.run("generate, resume, grow", function()
  local out = tmp .. "/gen/t.txt"
  local base = ("--out %s --prompts %s --max-tokens 6 --temperature 0.9 --top-p 0.9 --slots 2 --seed 5"):format(H.quote(out), H.quote(prompts))
  local log, rc = td(base .. " --n 3")
  H.eq(rc, 0, "first run: " .. log)
  H.check(log:find("generated tok/s", 1, true) ~= nil, "prints tokens/s")
  local a = read(out)
  H.eq(count(a, "<|im_start|>assistant\n"), 3, "three transcripts")
  H.check(a:find("<|im_start|>user\nSay hello.<|im_end|>\n", 1, true) ~= nil, "the ChatML user turn")
  H.check(a:find('Quote "this" and \195\169.', 1, true) ~= nil, "the JSON prompt")
  H.eq(idx_prompts(out), "1,2,3", "index")
  -- again: nothing to do, the file is unchanged
  log, rc = td(base .. " --n 3")
  H.eq(rc, 0, "second run")
  H.check(log:find("all 3 prompts done", 1, true) ~= nil, "reports completion: " .. log)
  H.eq(read(out), a, "file unchanged")
  -- grow to 5: only prompts 4 and 5 are added, after the first three
  log, rc = td(base .. " --n 5")
  H.eq(rc, 0, "grow: " .. log)
  local b = read(out)
  H.eq(b:sub(1, #a), a, "earlier transcripts kept byte for byte")
  H.eq(count(b, "<|im_start|>assistant\n"), 5, "five transcripts")
  H.eq(count(b, "Say hello%."), 1, "no duplicate")
  H.eq(idx_prompts(out), "1,2,3,4,5", "index")
  -- a kill between the transcript and its index line: the partial text is dropped, the prompt redone
  local idx = read(out .. ".idx")
  write(out .. ".idx", idx:gsub("[^\n]*\n$", ""))
  write(out, b .. "<|im_start|>system\npartial")
  log, rc = td(base .. " --n 5")
  H.eq(rc, 0, "resume after a kill: " .. log)
  local c = read(out)
  H.check(log:find("dropping", 1, true) ~= nil, "says it drops the partial transcript")
  H.eq(count(c, "<|im_start|>assistant\n"), 5, "still five transcripts")
  H.eq(count(c, "partial"), 0, "partial text gone")
  H.eq(idx_prompts(out), "1,2,3,4,5", "each prompt once")
  H.eq(c:sub(1, #a), a, "the first transcripts untouched")
  -- other settings into the same file: refused
  log, rc = td(base:gsub("--max%-tokens 6", "--max-tokens 7") .. " --n 5")
  H.check(rc ~= 0 and log:find("other settings", 1, true) ~= nil, "settings mismatch refused: " .. log)
  H.eq(read(out), c, "file untouched by the refused run")
  -- the output reads as a dataset (bytes)
  local ds = hyb.data.dataset{files = out, val_fraction = 0}
  H.eq(ds:info().train_tokens, #c, "dataset reads the transcripts")
end)

H.run("prompts from corpus snippets", function()
  local para = "The kernel schedules tasks on each processor according to their priority and the time they have already used, so that interactive work stays responsive. "
  for i = 1, 6 do
    write(("%s/corpus/sub/doc%d.rst.txt"):format(tmp, i), ("Title %d\n=======\n\n%s%d\n\n.. code-block:: c\n\n   x = %d;\n"):format(i, para, i, i))
  end
  write(tmp .. "/corpus/skip.png", "binary")
  local o = {corpus = {tmp .. "/corpus"}, include = {"*.rst.txt"}, seed = 2, snippet_chars = 60}
  local few = T.corpus_prompts(o, 2)
  local many = T.corpus_prompts(o, 5)
  H.eq(#few, 2, "two made")
  H.eq(#many, 5, "five made")
  H.eq(few[1], many[1], "prompt 1 does not depend on n")
  H.eq(few[2], many[2], "prompt 2 does not depend on n")
  local ok = true
  for _, p in ipairs(many) do
    ok = ok and p:find("The kernel schedules", 1, true) ~= nil and not p:find("code%-block") and #p < 200
  end
  H.check(ok, "snippets of prose paragraphs, cut short: " .. many[1])
  -- a prompts file topped up from the corpus
  local out = tmp .. "/gen2/t.txt"
  local log, rc = td(("--out %s --prompts %s --corpus %s --include '*.rst.txt' --n 7 --max-tokens 4 --slots 3 --snippet-chars 40 --system S"):format(
    H.quote(out), H.quote(prompts), H.quote(tmp .. "/corpus")))
  H.eq(rc, 0, "file + corpus: " .. log)
  H.eq(count(read(out), "<|im_start|>assistant\n"), 7, "seven transcripts")
  H.eq(count(read(out), "<|im_start|>system\nS<|im_end|>"), 7, "the --system turn")
  H.eq(count(log, "skipped"), 0, "every prompt fits the tiny model's context")
end)

H.run("bad arguments", function()
  local out = H.quote(tmp .. "/bad/t.txt")
  local log, rc = td("--out " .. out .. " --prompts " .. H.quote(tmp .. "/missing-prompts.txt"))
  H.check(rc ~= 0 and log:find(tmp .. "/missing-prompts.txt", 1, true) ~= nil, "missing prompts file named: " .. log)
  log, rc = td("--prompts " .. H.quote(prompts))
  H.check(rc == 2 and log:find("--out is required", 1, true) ~= nil, "--out required: " .. log)
  log, rc = td("--out " .. out)
  H.check(rc == 2 and log:find("--prompts", 1, true) ~= nil, "needs a prompt source: " .. log)
  log, rc = td("--out " .. out .. " --corpus " .. H.quote(tmp .. "/corpus"))
  H.check(rc == 2 and log:find("--n is required", 1, true) ~= nil, "--n with --corpus: " .. log)
  log, rc = td("--out " .. out .. " --prompts " .. H.quote(prompts) .. " --n 9")
  H.check(rc ~= 0 and log:find("holds 5 prompts but n = 9", 1, true) ~= nil, "too few prompts: " .. log)
  log, rc = td("--out " .. out .. " --prompts " .. H.quote(prompts) .. " --top-p 0")
  H.check(rc == 2 and log:find("--top-p", 1, true) ~= nil, "bad top-p: " .. log)
  log, rc = td("--out " .. out .. " --prompts " .. H.quote(prompts) .. " --max-tokens x")
  H.check(rc == 2 and log:find("--max-tokens must be an integer", 1, true) ~= nil, "bad number: " .. log)
  log, rc = td("--out " .. out .. " --prompts " .. H.quote(prompts) .. " --bogus 1")
  H.check(rc == 2 and log:find("unknown option --bogus", 1, true) ~= nil, "unknown option: " .. log)
  write(tmp .. "/badjson.txt", "fine\n{\"other\": \"x\"}\n")
  log, rc = td("--out " .. out .. " --prompts " .. H.quote(tmp .. "/badjson.txt"))
  H.check(rc ~= 0 and log:find(tmp .. "/badjson.txt:2:", 1, true) ~= nil, "bad JSON line named with its line: " .. log)
  log, rc = H.sh(("%s teacher_data --teacher %s --out %s --prompts %s"):format(H.quote(bin),
    H.quote(tmp .. "/no-model.gguf"), out, H.quote(prompts)))
  H.check(rc == 2 and log:find(tmp .. "/no-model.gguf", 1, true) ~= nil, "missing teacher named: " .. log)
  write(tmp .. "/bad/t.txt", "not ours\n")
  log, rc = td("--out " .. out .. " --prompts " .. H.quote(prompts))
  H.check(rc ~= 0 and log:find("not a teacher_data output", 1, true) ~= nil, "a foreign output file is not appended to: " .. log)
end)

H.run("distill with [data] generate", function()
  local t = hyb.model(root .. "/graphs/tiny.toml", {seed = 1})
  t:save(tmp .. "/teacher")
  local recipe = tmp .. "/r.toml"
  write(recipe, ([[
[run]
teacher = "%s/teacher"
seed = 3
log_every = 100
eval_every = 100
eval_batches = 1
[data]
files = ["%s/examples/data"]
include = ["*.txt"]
tokenizer = "bytes"
val_fraction = 0.1
generate = { prompts = "%s", n = 3, max_tokens = 8, temperature = 0.8, top_p = 0.95, slots = 2 }
[train]
batch = 1
seq_len = 32
[stages.s1]
layers = [1]
mixer = "identity"
steps = 2
]]):format(tmp, root, prompts))
  local cmd = ("%s distill %s %s"):format(H.quote(bin), H.quote(recipe), H.quote(tmp .. "/D"))
  local log, rc = H.sh(cmd)
  H.eq(rc, 0, "distill runs: " .. log)
  local gen = read(tmp .. "/D/teacher.txt")
  H.eq(count(gen, "<|im_start|>assistant\n"), 3, "the teacher wrote three transcripts into out_dir/teacher.txt")
  H.check(log:find("generated tok/s", 1, true) ~= nil, "generation reported")
  H.check(log:find("in 3 files", 1, true) ~= nil, "garden.txt + apache-2.0.txt + the transcripts: " .. log)
  local log2, rc2 = H.sh(cmd)
  H.eq(rc2, 0, "second run")
  H.check(log2:find("teacher.txt complete", 1, true) ~= nil, "generation skipped when complete: " .. log2)
  H.eq(read(tmp .. "/D/teacher.txt"), gen, "teacher text unchanged")
  -- a bad generate table is named
  write(tmp .. "/r2.toml", (read(recipe):gsub("slots = 2", "slots = 2, nn = 1")))
  local log3, rc3 = H.sh(("%s distill %s %s"):format(H.quote(bin), H.quote(tmp .. "/r2.toml"), H.quote(tmp .. "/E")))
  H.check(rc3 ~= 0 and log3:find("unknown key 'nn'", 1, true) ~= nil, "unknown generate key: " .. log3)
end)

H.rmdir(tmp)
os.exit(H.done())
