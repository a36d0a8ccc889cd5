-- scripts/eval.lua: compare checkpoints with their teacher on held-out text.
--
--   hyb eval --teacher T --data FILES [options] CKPT...
--
-- CKPT: a directory written by model:save, an HF directory, a .gguf file or a training
-- checkpoint (.safetensors). FILES: comma-separated text files / directories. For each model
-- (the teacher first) it measures over --batches fixed held-out batches of --batch x --seq-len:
--   ppl       exp(mean token cross-entropy)
--   rkl, fkl  reverse / forward KL to the teacher per token, averaged
--   agree     teacher-forced top-1 agreement with the teacher's greedy continuation: over --prompts
--             prompts (held-out windows of --prompt-len tokens) the teacher generates --gen tokens
--             greedily; the model sees the same context and its argmax is compared at each step
--   prefix    mean length of the identical prefix of the model's own greedy continuation
--   tok/s     forward throughput (full sequences); gen tok/s: greedy decode with the KV cache
-- --quant: how quantized GGUF models (the teacher, a .gguf CKPT) compute, as hyb generate --quant
-- (default $HYB_QUANT, else precise); other models are f32.
-- Prints a table and writes JSON (--out, default eval.json). Progress on stderr: a bar redrawn in
-- place on a terminal (model k/n, ETA of the whole run), else one line per model; --quiet prints
-- only the table and errors (HYB_TTY=1/0 overrides the terminal test).
local hyb = require("hyb")
local E = require("evallib")
local P = require("progresslib")

local usage = [[usage: hyb eval --teacher PATH --data FILES [--tokenizer bytes|PATH] [--device cpu|cuda:N]
       [--quant off|precise|fast] [--batches 4]
       [--batch 2] [--seq-len 128] [--prompts 4] [--prompt-len 32] [--gen 32] [--out eval.json]
       [--cache PATH] [--val-fraction 0.05] [--seed 1]
       [--include GLOBS] [--exclude GLOBS] [--max-bytes N] [--special] [--quiet] CKPT...]]
local o, ckpts = E.parse_or_usage(arg, E.data_spec{prompts = 4, prompt_len = 32, gen = 32,
  out = "eval.json", quant = ""}, usage)

for _, c in ipairs(ckpts) do -- before any work: a missing model is one line, not a late error
  local f = io.open(E.expand(c), "rb")
  if not f then io.stderr:write("hyb eval: ", c, ": no such model (a model:save directory, an HF directory, a .gguf or a checkpoint)\n") os.exit(2) end
  f:close()
end
local teacher_path = E.expand(o.teacher)
local load_opts = E.inference_load_opts(o, "eval") -- models only run forward here
local teacher = hyb.train.load(teacher_path, load_opts)
local ds = E.dataset(o, teacher_path)

-- progress in work units: a held-out batch = 1, a prompt (teacher-forced pass + greedy decode) = 1
local n_models = 1 + #ckpts
local prog <close> = P.new{mode = P.mode(o.quiet, io.stderr), stream = io.stderr,
  total = o.prompts + n_models * o.batches + #ckpts * o.prompts}
local units, model_i = 0, 0
local function tick(what)
  units = units + 1
  prog:update(units, ("%s  ETA %s"):format(what, P.duration(prog:eta(units))))
end

-- prompts and the teacher's greedy continuations
local prompts, tcont = {}, {}
local t_gen, n_gen = 0, 0
for p = 0, o.prompts - 1 do
  local ids = ds:val_batch(p, 1, o.prompt_len)
  local pr = ids:totable()[1]
  prompts[#prompts + 1] = pr
  local t0 = hyb.time()
  tcont[#tcont + 1] = hyb.train.greedy(teacher, pr, o.gen)
  t_gen, n_gen = t_gen + hyb.time() - t0, n_gen + o.gen
  tick(("teacher continuations %d/%d"):format(p + 1, o.prompts))
end

local function agreement(model)
  local hit, total, prefix, secs = 0, 0, 0, 0
  for p = 1, #prompts do
    local seq = {}
    for _, v in ipairs(prompts[p]) do seq[#seq + 1] = v end
    for _, v in ipairs(tcont[p]) do seq[#seq + 1] = v end
    local n = #seq - 1 -- predict positions prompt_len .. end from the preceding context
    local am = model:forward({table.unpack(seq, 1, n)}, 1, n, {grad = false}):argmax_last()
    for i = 1, o.gen do
      total = total + 1
      if am[#prompts[p] + i - 1] == tcont[p][i] then hit = hit + 1 end
    end
    local t0 = hyb.time()
    local own = hyb.train.greedy(model, prompts[p], o.gen)
    secs = secs + hyb.time() - t0
    local k = 0
    while k < o.gen and own[k + 1] == tcont[p][k + 1] do k = k + 1 end
    prefix = prefix + k
    tick(("model %d/%d: agreement %d/%d"):format(model_i, n_models, p, #prompts))
  end
  return hit / total, prefix / #prompts, #prompts * o.gen / math.max(secs, 1e-9)
end

local rows = {}
local function evaluate(name, model)
  model_i = model_i + 1
  local r = E.heldout(model, teacher, ds, o.batches, o.batch, o.seq_len)
  units = units + o.batches - 1
  tick(("model %d/%d: held-out"):format(model_i, n_models))
  r.model = name
  r.pattern = model:pattern()
  r.params = model:n_params()
  if model == teacher then
    r.agree, r.prefix, r.gen_tok_s = 1.0, o.gen, n_gen / math.max(t_gen, 1e-9)
    r.rkl, r.fkl = 0, 0
  else
    r.agree, r.prefix, r.gen_tok_s = agreement(model)
  end
  rows[#rows + 1] = r
  if prog.mode == "lines" then
    prog:log(("evaluated %s (%d/%d, ETA %s)"):format(name, #rows, n_models, P.duration(prog:eta())))
  end
end

evaluate("teacher", teacher)
for _, c in ipairs(ckpts) do
  local m <close> = hyb.train.load(E.expand(c), load_opts)
  evaluate(c, m)
end

prog:finish()
E.table({{"model", "model"}, {"pattern", "layers"}, {"ppl", "ppl", "%.3f"}, {"rkl", "rKL", "%.4f"},
  {"fkl", "fKL", "%.4f"}, {"agree", "agree", "%.3f"}, {"prefix", "prefix", "%.1f"},
  {"tok_s", "tok/s", "%.0f"}, {"gen_tok_s", "gen tok/s", "%.1f"}}, rows)
E.write(o.out, E.json({teacher = o.teacher, data = o.data, batches = o.batches, batch = o.batch,
  seq_len = o.seq_len, prompts = o.prompts, prompt_len = o.prompt_len, gen = o.gen, results = rows}) .. "\n")
print("wrote " .. o.out)
