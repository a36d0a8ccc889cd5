-- scripts/distill.lua: staged distillation driven by a TOML recipe (SPEC.md section 5).
--
--   hyb distill recipes/smollm2-h3-h6.toml [out_dir]
--
-- The teacher is always the original model. Stage 1's student is a clone of the teacher; every
-- later stage starts from the previous stage's final checkpoint. In each stage the listed layers
-- are swapped to the stage's mixer (MIL init by default), then the student is distilled for
-- `steps` optimiser updates. Output in out_dir:
--   data.bin                     the tokenized dataset cache
--   <stage>/ckpt.safetensors     training checkpoint (every ckpt_every steps, atomic; lean)
--   <stage>/final.safetensors    the stage's final parameters (its presence = stage done; lean)
--   <stage>/model/               model:save of the final student (layermap.toml + safetensors)
--   metrics.jsonl                one JSON object per step / evaluation / layer choice ("kind":"rank")
--   <stage>/ranking.json         the stage's layer choice: how, the candidates' scores, the layers
--                                (a resumed stage takes its layers from here)
--   report.md, report.json       every stage's choice and scores, held-out loss before and after
--   loss.svg                     the loss curves (train, held-out), stage boundaries
-- Running the same command again after a kill resumes from the last checkpoint and produces
-- bitwise the same result as an uninterrupted run (data order is a function of (seed, step)).
--
-- Recipe keys (all optional unless said):
--   [run]   teacher (required: .gguf, HF dir, model:save dir), out, seed = 1,
--           log_every = 10, eval_every = 50, eval_batches = 4, ckpt_every = 50,
--           teacher_quant = "precise" | "fast" | "off" (a .gguf teacher on the CPU computes from
--           its quantized blocks, default precise; off: dequantised to f32 at load),
--           checkpoints = "lean" | "full" (lean: <stage>/ckpt and final hold only the trainable
--           parameters, the frozen ones stay in the stage's base, the teacher or the previous
--           stage's final, named by path and content hash; final never holds optimiser state)
--   [data]  files (required unless generate is given: paths; a directory gives its files,
--           recursively, sorted), include = ["*.rst.txt", ...] and exclude = ["translations/*"]
--           (globs for the files found in directories: a pattern without '/' matches the name,
--           one with '/' the path under the directory), max_bytes (a deterministic sample of the
--           directory files up to this many bytes; files named explicitly are always read),
--           tokenizer ("bytes", a path; default: the teacher when it is a .gguf),
--           special (special-token text such as <|im_start|> becomes the special id; default
--           true when generate is given, else false), val_fraction = 0.05, seed,
--           generate = {n =, prompts = "file", corpus = [paths], include =, exclude =,
--             max_tokens = 256, temperature = 0.8, top_p = 0.95, top_k = 0, seed = [run] seed,
--             slots = 8, system =, out = "<out_dir>/teacher.txt"}: before training, the teacher
--             writes replies to n prompts (scripts/teacher_data.lua; resumable, skipped when
--             the file is complete) and the transcripts are added to the training files.
--   [train] lr = 3e-4, min_lr = lr / 10, warmup = 0, batch = 4, seq_len = 256, accum = 1,
--           loss = "reverse_kl" | "forward_kl" | "ce" | "mix", weights = {rkl=, fkl=, ce=} (mix),
--           temperature = 1, weight_decay = 0.1, clip = 1.0, freeze = [glob patterns],
--           unfreeze = [glob patterns] (applied after freeze: freeze = ["*"] with
--           unfreeze = ["model.layers.*.mixer.*"] trains only the swapped-in mixers),
--           lr_scale = { "*" = 0.01, "model.layers.*.mixer.*" = 1.0 } (learning-rate groups:
--           parameters matching a glob use lr x scale; applied in the order written, a later
--           glob overrides an earlier one: this one trains the mixers at lr, the rest 100x slower)
--   [rank]  how stages with `lowest = n` choose their n layers (scripts/rankinglib.lua):
--           progressive = true (each such stage re-ranks the layers the current student still
--             runs as attention, against the original teacher, just before it swaps; false: the
--             stage's ranking file alone), method = "mmr" | "loo" (default: mmr for a mixer
--             stage, loo for an identity stage), criterion = "rkl" | "nll" (what LOO ranks by:
--             held-out reverse KL to the teacher, or teacher-forced mean token NLL of the
--             held-out text), steps = 20 and lr = 3e-3 (each MMR probe: only the swapped mixer
--             trains, constant lr, reverse KL, on the recipe's training data), batch and seq_len
--             (default the stage's), batches = eval_batches (held-out batches per score), seed.
--   [stages.<name>]  in file order: layers = [..] | lowest = n [, ranking = "file.json"]: the n
--           least important layers not yet swapped; from the file (scripts/importance.lua) when
--           progressive is off, or when the student has no layer converted yet (the file ranks
--           against the teacher itself); else ranked in the run as [rank] says,
--           mixer = "mamba1" | "identity" | a plugin type, init = "mil" | "random",
--           config = "TOML text of the mixer table", steps (required), and any [train] key to
--           override it for this stage.
-- Every section and key is checked before any work starts (scripts/recipelib.lua): an unknown key,
-- a wrong type or a value out of range is one line naming file:line:col, the key and the nearest
-- valid key or the range.
-- Progress: on a terminal, one line redrawn in place (stage k/n, step, loss, tok/s, the ETA of
-- the whole run and of the stage); otherwise a plain line every log_every steps; --quiet prints
-- only the final summary and errors. HYB_TTY=1 / 0 overrides the terminal test.
-- HYB_DISTILL_EXIT_AFTER=n (tests): exit abruptly (status 3) after n optimiser updates of this
-- process, as a kill would; with HYB_DISTILL_EXIT_RANK=r under mpirun only rank r stops, killed
-- by SIGKILL.
-- Data parallel (docs/DISTRIBUTED.md): `mpirun -np N hyb distill recipe.toml` runs N ranks; the
-- recipe's batch is the global one (each rank takes batch / N rows of every micro-batch: batch
-- must divide by N), the gradients are summed over the ranks before every update, rank 0 alone
-- writes (checkpoints, metrics, reports, models), the held-out batches are split over the ranks.
local hyb = require("hyb")
local RL = require("recipelib")
local P = require("progresslib")
local K = require("rankinglib")
local E = require("evallib")

local usage = "usage: hyb distill [--quiet] <recipe.toml> [out_dir]"
local args, quiet = {}, false
for _, a in ipairs(arg) do
  if a == "--help" or a == "-h" then
    print(usage)
    os.exit(0)
  elseif a == "--quiet" or a == "-q" then
    quiet = true
  elseif a ~= "--verbose" then
    args[#args + 1] = a
  end
end
if not args[1] or args[1]:sub(1, 1) == "-" or (args[2] and args[2]:sub(1, 1) == "-") or args[3] then
  local why = not args[1] and "no recipe given"
    or ((args[1]:sub(1, 1) == "-" and args[1]) or (args[2] and args[2]:sub(1, 1) == "-" and args[2]))
       and ("unknown option " .. (args[1]:sub(1, 1) == "-" and args[1] or args[2]))
    or ("unexpected argument " .. args[3])
  io.stderr:write("hyb distill: ", why, "\n", usage, "\n")
  os.exit(2)
end
local recipe_path = args[1]
local R, recipe_pos = RL.read(recipe_path) -- every key checked: nothing runs on a bad recipe
local run = R.run
local data = R.data
local train = R.train or {}
-- data parallel: this process is rank `my_rank` of `world`; only rank 0 writes files
local comm = hyb.comm
local world, my_rank = comm.size(), comm.rank()
local writer = my_rank == 0
if not writer then quiet = true end -- rank 0 speaks for the job
if quiet then hyb.log_level("warn") end
local prog <close> = P.new{mode = P.mode(quiet, io.stdout), stream = io.stdout}
local function say(line) prog:log(line) end
local out = args[2] or run.out or error(recipe_path .. ": [run] out is missing and no out_dir given")
local seed = run.seed or 1
local lean = (run.checkpoints or "lean") == "lean"
local exit_after = tonumber(os.getenv("HYB_DISTILL_EXIT_AFTER") or "")
local exit_rank = tonumber(os.getenv("HYB_DISTILL_EXIT_RANK") or "")
-- HYB_DISTILL_STALL_AFTER=n (tests): rank HYB_DISTILL_EXIT_RANK (default 1) stops taking part
-- for 60 s after n updates, as a hung peer would (the others' collectives must time out)
local stall_after = tonumber(os.getenv("HYB_DISTILL_STALL_AFTER") or "")
-- a long phase on one rank (tokenizing, generating the teacher's text, saving) while the others
-- wait: at least an hour, however short the collectives' deadline
local long_wait = math.max(comm.timeout(), 3600)
local recipe_dir = recipe_path:match("^(.*)/[^/]*$") or "."

local function expand(p)
  if type(p) ~= "string" then return p end
  p = p:gsub("^~", os.getenv("HOME") or "~")
  return p
end

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() return true end
  return false
end

-- ---- JSON (writing; and the small reading the ranking files need) ----------------------------
local json = require("evallib").json_compact -- compact, without read_toml's "__order" keys

-- ---- settings ---------------------------------------------------------------------------------
local function strip(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do if k ~= "__order" then c[k] = v end end
  return c
end

local function setting(stage, key, default)
  if stage and stage[key] ~= nil then return stage[key] end
  if train[key] ~= nil then return train[key] end
  return default
end

local teacher_path = expand(run.teacher or error(recipe_path .. ": [run] teacher is missing"))
if not teacher_path:match("^/") and not exists(teacher_path) and exists(recipe_dir .. "/" .. teacher_path) then
  teacher_path = recipe_dir .. "/" .. teacher_path
end
-- [run] device = "cpu" | "cuda" | "cuda:N": the teacher, the students and all their compute
-- (under mpirun, "cuda" is cuda:<local rank mod devices>)
local device = run.device
if device ~= nil and (type(device) ~= "string" or device == "") then
  error(recipe_path .. ": [run] device must be a device name such as \"cpu\" or \"cuda:0\"", 0)
end
-- data parallel on GPUs: "cuda" without an index puts each rank of a node on its own device
-- (the launcher's local rank modulo the node's device count)
if device == "cuda" and world > 1 then
  local lr = tonumber(os.getenv("OMPI_COMM_WORLD_LOCAL_RANK") or os.getenv("MPI_LOCALRANKID")
    or os.getenv("SLURM_LOCALID") or "")
  local n = 1
  for _, d in ipairs(hyb.devices()) do
    if d.name == "cuda" then n = tonumber(tostring(d.status):match("(%d+) devices?")) or 1 end
  end
  if lr then device = ("cuda:%d"):format(lr % n) end
end
if device ~= nil then
  local ok, err = pcall(hyb.device, device)
  if not ok then error(recipe_path .. ": [run] device: " .. tostring(err):gsub("^hyb%.device: ", ""), 0) end
end
local load_opts = device and {device = device} or nil
-- [run] teacher_quant = "off" | "precise" | "fast": a quantized .gguf teacher is frozen, so on
-- the CPU its forward runs on its GGUF blocks (no f32 copy), precise by default (the f32
-- computation up to summation order); "off" dequantises it to f32. The students are f32 clones.
local teacher_opts = {device = device}
if teacher_path:match("%.gguf$") then
  teacher_opts.quant = run.teacher_quant or ((device == nil or device == "cpu") and "precise" or "off")
end
local teacher = hyb.train.load(teacher_path, teacher_opts)
local V = teacher:config().vocab_size
local n_layers = teacher:config().n_layers
for _, name in ipairs(R.stages.__order) do
  for i, l in ipairs(R.stages[name].layers or {}) do
    if l >= n_layers then
      error(("%s: stage '%s': layers element %d = %d is out of range: the teacher has %d layers (0 to %d)"):format(
        recipe_pos["stages." .. name .. ".layers"] or recipe_path, name, i, l, n_layers, n_layers - 1), 0)
    end
  end
end
-- The recipe's batch is global: every micro-batch splits evenly over the ranks.
if world > 1 then
  for _, name in ipairs(R.stages.__order) do
    local S = R.stages[name]
    local B = S.batch or train.batch or 4
    if B % world ~= 0 then
      local key = S.batch and ("stages." .. name .. ".batch") or "train.batch"
      error(("%s: %s = %d (the global micro-batch) does not divide over %d ranks: each rank takes batch / ranks rows of every micro-batch (accum = %d); use a batch that is a multiple of %d, or another -np"):format(
        recipe_pos[key] or recipe_path, S.batch and ("[stages." .. name .. "] batch") or "[train] batch", B, world,
        S.accum or train.accum or 1, world), 0)
    end
  end
end
-- Each stage's mixer and config, tried on a throwaway clone of the teacher (random init: only the
-- plugin's own checks of its keys, types and ranges), so that a typo in a mixer config fails here
-- and not after the data is tokenized and the earlier stages have trained.
do
  local teacher_map = hyb.train.layermap_toml(teacher)
  local todo, tried = {}, {}
  for _, name in ipairs(R.stages.__order) do
    local S = R.stages[name]
    local mixer = S.mixer or "mamba1"
    local cfg = S.config
    if cfg and teacher_map:find("[mixers." .. mixer .. "]", 1, true) then cfg = nil end
    local key = mixer .. "\0" .. tostring(cfg)
    if mixer ~= "identity" and not tried[key] then
      tried[key] = true
      todo[#todo + 1] = {name = name, S = S, mixer = mixer, cfg = cfg}
    end
  end
  if #todo > 0 then
    local probe <close> = hyb.train.clone(teacher)
    for _, t in ipairs(todo) do
      local ok, err = pcall(probe.swap, probe, (t.S.layers or {})[1] or 0, t.mixer, {init = "random", config = t.cfg})
      if not ok then
        local at = "stages." .. t.name .. (t.S.config ~= nil and ".config" or t.S.mixer ~= nil and ".mixer" or "")
        error(("%s: stage '%s': mixer \"%s\"%s: %s"):format(recipe_pos[at] or recipe_path, t.name, t.mixer,
          t.cfg and " with this config" or "", (tostring(err):gsub("^model:swap: ", ""))), 0)
      end
    end
  end
end

local tok = nil
local tokspec = data.tokenizer or (teacher_path:match("%.gguf$") and teacher_path) or "bytes"
if tokspec ~= "bytes" then tok = hyb.data.tokenizer(expand(tokspec)) end
local files = {}
if data.files == nil and data.generate == nil then error(recipe_path .. ": [data] files is missing", 0) end
if data.files ~= nil and type(data.files) ~= "table" then data.files = {data.files} end
for i, f in ipairs(data.files or {}) do files[i] = expand(f) end
local function strlist(v)
  if type(v) ~= "table" then return v end
  local l = {}
  for i, x in ipairs(v) do l[i] = expand(x) end
  return l
end

-- ---- teacher-generated data ([data] generate) --------------------------------------------------
if data.generate ~= nil then
  local G = data.generate
  local TL = require("teacherlib")
  local corpus = G.corpus
  if type(corpus) == "string" then corpus = {corpus} end
  local src = {prompts = G.prompts and expand(G.prompts), corpus = strlist(corpus), include = strlist(G.include),
    exclude = strlist(G.exclude), snippet_chars = G.snippet_chars, n = G.n, seed = G.seed or seed}
  if not src.prompts and not src.corpus then
    error(recipe_path .. ": [data] generate needs prompts (a file) and/or corpus (paths)", 0)
  end
  local gset = {out = expand(G.out or (out .. "/teacher.txt")), max_tokens = G.max_tokens or 256,
    temperature = G.temperature or 0.8, top_p = G.top_p or 0.95, top_k = G.top_k or 0, seed = G.seed or seed,
    slots = G.slots or 8, system = G.system, max_ctx = G.max_ctx, teacher = TL.teacher_id(teacher_path),
    source = TL.source(src), log = say}
  local ok, prompts = pcall(TL.prompts, src)
  if not ok then error(recipe_path .. ": [data] generate: " .. tostring(prompts), 0) end
  if writer then -- rank 0 writes the teacher's text; the others wait for it
    local done = TL.status(gset, #prompts)
    if done == #prompts then
      say(("data: teacher text %s complete (%d prompts)"):format(gset.out, #prompts))
    else
      TL.generate(teacher, tok, prompts, gset)
    end
  end
  comm.barrier(long_wait)
  files[#files + 1] = gset.out
end

local special = data.special
if special == nil then special = data.generate ~= nil end
local function open_dataset()
  return hyb.data.dataset{files = files, include = strlist(data.include), exclude = strlist(data.exclude),
    max_bytes = data.max_bytes, tokenizer = tok, special = special and tok ~= nil, cache = out .. "/data.bin",
    val_fraction = data.val_fraction or 0.05, seed = data.seed or seed}
end
-- rank 0 tokenizes and writes the cache; then the others read it
local ds = writer and open_dataset() or nil
comm.barrier(long_wait)
ds = ds or open_dataset()
local info = ds:info()
say(("data: %d training + %d held-out tokens from %d documents in %d files, %d bytes (%s)"):format(info.train_tokens,
  info.val_tokens, info.docs, info.files, info.bytes, info.from_cache and "cache" or "tokenized"))
if tok and tok:vocab_size() > V then
  error(("the tokenizer has %d tokens but the teacher's vocabulary is %d"):format(tok:vocab_size(), V))
end

-- ---- metrics: JSONL + SVG ----------------------------------------------------------------------
local metrics_path = out .. "/metrics.jsonl"

-- Keep the lines of stages before `stage` and of `stage` up to `upto` steps (a resumed stage
-- rewrites what came after its checkpoint).
local function truncate_metrics(stage_idx, upto)
  if not writer then return end
  local f = io.open(metrics_path, "r")
  if not f then return end
  local keep = {}
  for line in f:lines() do
    local si = tonumber(line:match('"stage_index":(%d+)'))
    local st = tonumber(line:match('"step":(%d+)'))
    if si and st and (si < stage_idx or (si == stage_idx and st <= upto)) then keep[#keep + 1] = line end
  end
  f:close()
  local w = assert(io.open(metrics_path .. ".new", "w"))
  for _, l in ipairs(keep) do w:write(l, "\n") end
  w:close()
  assert(os.rename(metrics_path .. ".new", metrics_path))
end

local function write_svg()
  if not writer then return end
  local f = io.open(metrics_path, "r")
  if not f then return end
  local tr, va, bounds = {}, {}, {}
  local base, last_stage, gmax = 0, nil, 0
  local offsets = {}
  for line in f:lines() do
    local si = tonumber(line:match('"stage_index":(%d+)'))
    local st = tonumber(line:match('"step":(%d+)'))
    local loss = tonumber(line:match('"loss":([%d%.eE+-]+)'))
    local kind = line:match('"kind":"(%a+)"')
    if si and st and loss then
      if not offsets[si] then offsets[si] = gmax; bounds[#bounds + 1] = gmax end
      local x = offsets[si] + st
      if x > gmax then gmax = x end
      if kind == "val" then va[#va + 1] = {x, loss} else tr[#tr + 1] = {x, loss} end
    end
  end
  f:close()
  if #tr == 0 then return end
  local W, H, m = 800, 400, 50
  local ymin, ymax = math.huge, -math.huge
  for _, s in ipairs({tr, va}) do
    for _, p in ipairs(s) do ymin = math.min(ymin, p[2]); ymax = math.max(ymax, p[2]) end
  end
  if ymax <= ymin then ymax = ymin + 1 end
  local xmax = math.max(gmax, 1)
  local function X(x) return m + (W - 2 * m) * x / xmax end
  local function Y(y) return H - m - (H - 2 * m) * (y - ymin) / (ymax - ymin) end
  local o = {}
  o[#o + 1] = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">'):format(W, H)
  o[#o + 1] = ('<rect width="%d" height="%d" fill="white"/>'):format(W, H)
  o[#o + 1] = ('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>'):format(m, H - m, W - m, H - m)
  o[#o + 1] = ('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>'):format(m, m, m, H - m)
  for k = 0, 4 do
    local y = ymin + (ymax - ymin) * k / 4
    o[#o + 1] = ('<text x="4" y="%.1f">%.3g</text>'):format(Y(y) + 4, y)
  end
  o[#o + 1] = ('<text x="%d" y="%d">%d</text>'):format(W - m - 20, H - m + 18, xmax)
  for _, b in ipairs(bounds) do
    o[#o + 1] = ('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#bbb" stroke-dasharray="4"/>'):format(X(b), m, X(b), H - m)
  end
  local function poly(s, color)
    local pts = {}
    for i, p in ipairs(s) do pts[i] = ("%.1f,%.1f"):format(X(p[1]), Y(p[2])) end
    return ('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>'):format(color, table.concat(pts, " "))
  end
  o[#o + 1] = poly(tr, "#1f77b4")
  if #va > 0 then
    o[#o + 1] = poly(va, "#d62728")
    for _, p in ipairs(va) do
      o[#o + 1] = ('<circle cx="%.1f" cy="%.1f" r="3" fill="#d62728"/>'):format(X(p[1]), Y(p[2]))
    end
  end
  o[#o + 1] = ('<text x="%d" y="20" fill="#1f77b4">train loss</text><text x="%d" y="20" fill="#d62728">held-out loss</text>'):format(m, m + 100)
  o[#o + 1] = ('<text x="%d" y="%d">optimiser step (all stages)</text>'):format(W / 2 - 80, H - 10)
  o[#o + 1] = "</svg>"
  local w = assert(io.open(out .. "/loss.svg.new", "w"))
  w:write(table.concat(o, "\n"), "\n")
  w:close()
  assert(os.rename(out .. "/loss.svg.new", out .. "/loss.svg"))
end

-- ---- stages -------------------------------------------------------------------------------------
-- The first n layers of a ranking file's "order" (least important first) that the student still
-- runs with the teacher's mixer (layers swapped by earlier stages are skipped).
local function ranking_layers(path, n, student)
  local f = assert(io.open(expand(path), "r"), "cannot open ranking file " .. path ..
    " (write it with: hyb importance ...)")
  local text = f:read("a")
  f:close()
  local list = text:match('"order"%s*:%s*%[([^%]]*)%]') or error(path .. ": no \"order\" list")
  local sp, tp = student:pattern(), teacher:pattern()
  local layers = {}
  for v in list:gmatch("%-?%d+") do
    local l = tonumber(v)
    if #layers < n and sp:sub(l + 1, l + 1) == tp:sub(l + 1, l + 1) then layers[#layers + 1] = l end
  end
  if #layers < n then error(("%s: only %d layers left to swap, %d wanted"):format(path, #layers, n)) end
  table.sort(layers)
  return layers
end

-- ---- choosing a stage's layers ([rank]) ---------------------------------------------------------
local choose_layers
local rank = R.rank or {}
local progressive = rank.progressive ~= false

-- The in-run ranking a `lowest` stage does when `converted` layers are already converted, as work
-- units for the run's progress (tokens: a probe update ~ a training step of B x T tokens, a
-- held-out batch of the candidate ~ a third of one, the teacher's logits being cached); nil when
-- the stage ranks nothing here (layers given, or its ranking file serves).
local function rank_plan(S, converted)
  if S.layers or not S.lowest then return nil end
  if S.ranking and (not progressive or converted == 0) then return nil end
  local mixer = S.mixer or "mamba1"
  local method = rank.method or (mixer == "identity" and "loo" or "mmr")
  local B, T = rank.batch or setting(S, "batch", 4), rank.seq_len or setting(S, "seq_len", 256)
  local nb, steps = rank.batches or run.eval_batches or 4, rank.steps or 20
  local eval = nb * B * T // 3
  local per_step = B * T
  local per_layer = method == "mmr" and (steps * per_step + 2 * eval) or eval
  return {method = method, cand = n_layers - converted, per_step = method == "mmr" and per_step or 0,
    eval = method == "mmr" and 2 * eval or eval, units = (n_layers - converted) * per_layer}
end

local function read_json(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return K.json_decode(text, path)
end

-- The layers stage si swaps, recorded in <dir>/ranking.json (and, when ranked here, as a "rank"
-- line of metrics.jsonl): S.layers as given; else the S.lowest least important layers the student
-- still runs with the teacher's mixer, from S.ranking (the file) or ranked now against the teacher.
-- A stage resumed after its choice takes the layers from ranking.json.
choose_layers = function(si, name, S, student, dir)
  local rec_path = dir .. "/ranking.json"
  local mixer = S.mixer or "mamba1"
  -- what the choice depends on in the recipe: a ranking.json made under other settings is not reused
  local sig = json({layers = S.layers, lowest = S.lowest, ranking = S.ranking, mixer = mixer, rank = rank,
    progressive = progressive})
  local old = read_json(rec_path)
  if old and old.layers and old.sig == sig then
    say(("stage %d/%d '%s': layers %s (%s, from %s)"):format(si, #R.stages.__order, name, json(old.layers),
      old.source, rec_path))
    return old.layers
  elseif old and exists(dir .. "/ckpt.safetensors") then
    error(("%s: stage '%s' was started with layers %s chosen under other recipe settings (%s); remove %s to start the stage again"):format(
      recipe_path, name, json(old.layers or {}), rec_path, dir), 0)
  elseif old then
    say(("stage %d/%d '%s': the recipe changed since %s: choosing again"):format(si, #R.stages.__order, name, rec_path))
  end
  local rec = {stage = name, stage_index = si, progressive = progressive, sig = sig}
  local remaining = K.remaining(student, teacher)
  rec.converted_before = n_layers - #remaining
  if S.layers then
    rec.source, rec.layers = "layers", S.layers
  elseif S.ranking and (not progressive or rec.converted_before == 0) then
    rec.source, rec.file = "file", S.ranking
    rec.layers = ranking_layers(S.ranking, S.lowest, student)
  elseif S.lowest then
    local method = rank.method or (mixer == "identity" and "loo" or "mmr")
    local crit = method == "loo" and (rank.criterion or "rkl") or nil
    local key = K.key(method, crit)
    if #remaining < S.lowest then
      error(("%s: stage '%s': only %d layers left to swap, lowest = %d wanted"):format(
        recipe_pos["stages." .. name .. ".lowest"] or recipe_path, name, #remaining, S.lowest), 0)
    end
    local o = {batch = rank.batch or setting(S, "batch", 4), seq_len = rank.seq_len or setting(S, "seq_len", 256),
      batches = rank.batches or run.eval_batches or 4, steps = rank.steps or 20, lr = rank.lr or 3e-3,
      seed = rank.seed or seed, mixer = mixer, init = S.init or "mil", cache = {}}
    -- as for the stage's swap: a student that already has the mixer in its map takes no config
    o.config = S.config
    if o.config and hyb.train.layermap_toml(student):find("[mixers." .. mixer .. "]", 1, true) then o.config = nil end
    say(("stage %d/%d '%s': ranking %d remaining layers by %s%s against the teacher (%d converted)"):format(si,
      #R.stages.__order, name, #remaining, method:upper(), method == "mmr" and
      (" (%d steps at lr %g, only the swapped %s trains)"):format(o.steps, o.lr, mixer) or (" (" .. crit .. ")"),
      rec.converted_before))
    local t0 = hyb.time()
    local plan = rank_plan(S, rec.converted_before)
    local done0, cur_i, cur_l = prog.done, 1, remaining[1]
    local function show(extra)
      prog:update(prog.done, ("stage %d/%d %s  ranking layer %d (%d/%d)%s  ETA %s"):format(si, #R.stages.__order, name,
        cur_l, cur_i, #remaining, extra or "", P.duration(prog:eta())))
    end
    o.on_step = function(step, st)
      prog.done = prog.done + plan.per_step
      show(("  probe step %d/%d  loss %.4f"):format(step, o.steps, st.loss))
    end
    o.on_layer = function(i, l, sc, secs)
      prog.done = prog.done + plan.eval
      cur_i, cur_l = i + 1, remaining[i + 1] or l
      show()
      if method == "mmr" then
        say(("  rank [%s] layer %2d (%d/%d): rKL %.5f after MIL -> %.5f after the probe (x%.3f)  %.1fs"):format(name,
          l, i, #remaining, sc.kl_mil, sc.kl_after, sc.recovered, secs))
      else
        say(("  rank [%s] layer %2d (%d/%d): LOO rKL %.5f  NLL %.4f  %.1fs"):format(name, l, i, #remaining, sc.rkl,
          sc.nll, secs))
      end
    end
    -- each probe clones and swaps: keep their info lines out of the log (HYB_LOG keeps them)
    if not quiet and not os.getenv("HYB_LOG") then hyb.log_level("warn") end
    local okr, scores = pcall(method == "mmr" and K.mmr or K.loo, student, teacher, ds, remaining, o)
    if not quiet and not os.getenv("HYB_LOG") then hyb.log_level("info") end
    if not okr then error(scores, 0) end
    prog.done = done0 + plan.units -- the plan's estimate, whatever the rounding
    local ord = K.order(scores, key)
    local chosen = {}
    for i = 1, S.lowest do chosen[i] = ord[i] end
    table.sort(chosen)
    rec.source, rec.method, rec.criterion, rec.key = method, method, crit, key
    rec.candidates, rec.scores, rec.order, rec.layers = remaining, K.keyed(scores), ord, chosen
    rec.secs = hyb.time() - t0
    if method == "mmr" then rec.probe = {steps = o.steps, lr = o.lr, batch = o.batch, seq_len = o.seq_len} end
    rec.batches = o.batches
  end
  if rec.source ~= "layers" then
    say(("stage %d/%d '%s': layers %s chosen (%s)"):format(si, #R.stages.__order, name, json(rec.layers), rec.source))
  end
  if rec.source ~= "layers" then -- a choice made here (layers given in the recipe are no decision)
    local line = {kind = "rank", stage = name, stage_index = si, step = 0}
    for k, v in pairs(rec) do line[k] = v end
    if writer then
      local mf = assert(io.open(metrics_path, "a"))
      mf:write(json(line), "\n")
      mf:close()
    end
  end
  if writer then E.write(rec_path, E.json(rec) .. "\n") end
  return rec.layers
end

-- report.md / report.json: every stage's layer choice (how, scores) and held-out loss before and
-- after its training, from <stage>/ranking.json and metrics.jsonl.
local function write_report()
  if not writer then return end
  local val = {}
  local f = io.open(metrics_path, "r")
  if f then
    for line in f:lines() do
      if line:find('"kind":"val"', 1, true) then
        local ok, r = pcall(K.json_decode, line, metrics_path)
        if ok and r.stage then
          val[r.stage] = val[r.stage] or {}
          if r.step == 0 then val[r.stage].before = r end
          val[r.stage].after = r
        end
      end
    end
    f:close()
  end
  local rep = {out = out, recipe = recipe_path, teacher = teacher_path, progressive = progressive, stages = {}}
  local md = {"# Distillation report", "", ("recipe `%s`, teacher `%s`, out `%s`; progressive ranking: %s"):format(
    recipe_path, teacher_path, out, progressive and "on" or "off"), "",
    "| # | stage | chosen by | layers | held-out rKL before | after | steps done |", "|---|---|---|---|---|---|---|"}
  local details = {}
  for si, name in ipairs(R.stages.__order) do
    local rec = read_json(out .. "/" .. name .. "/ranking.json")
    if rec then
      local v = val[name] or {}
      local st = {stage = name, index = si, choice = rec, rkl_before = v.before and v.before.rkl,
        rkl_after = v.after and v.after.rkl, loss_after = v.after and v.after.loss, step = v.after and v.after.step}
      rep.stages[#rep.stages + 1] = st
      local how = rec.source == "file" and ("file " .. tostring(rec.file)) or rec.source == "layers" and "given"
        or (rec.method .. (rec.criterion and (" (" .. rec.criterion .. ")") or ""))
      local function f4(x) return x and ("%.5f"):format(x) or "-" end
      md[#md + 1] = ("| %d | %s | %s | %s | %s | %s | %s |"):format(si, name, how, table.concat(rec.layers, " "),
        f4(st.rkl_before), f4(st.rkl_after), tostring(st.step or "-"))
      if rec.scores then
        local chosen = {}
        for _, l in ipairs(rec.layers) do chosen[l] = true end
        details[#details + 1] = ""
        details[#details + 1] = ("## Stage %d '%s': %s over %d remaining layers (%d converted before), %.0f s"):format(si,
          name, how, #rec.candidates, rec.converted_before, rec.secs or 0)
        details[#details + 1] = ""
        if rec.method == "mmr" then
          details[#details + 1] = "| rank | layer | rKL after MIL | rKL after probe | after / MIL | chosen |"
          details[#details + 1] = "|---|---|---|---|---|---|"
        else
          details[#details + 1] = "| rank | layer | LOO rKL | LOO NLL | chosen |"
          details[#details + 1] = "|---|---|---|---|---|"
        end
        for i, l in ipairs(rec.order) do
          local sc = rec.scores[tostring(l)]
          if rec.method == "mmr" then
            details[#details + 1] = ("| %d | %d | %.5f | %.5f | %.3f | %s |"):format(i, l, sc.kl_mil, sc.kl_after,
              sc.recovered, chosen[l] and "yes" or "")
          else
            details[#details + 1] = ("| %d | %d | %.5f | %.4f | %s |"):format(i, l, sc.rkl, sc.nll, chosen[l] and "yes" or "")
          end
        end
      end
    end
  end
  for _, d in ipairs(details) do md[#md + 1] = d end
  E.write(out .. "/report.json", E.json(rep) .. "\n")
  E.write(out .. "/report.md", table.concat(md, "\n") .. "\n")
end

local stages = R.stages
local order = stages.__order
local done_steps = 0
local prev = nil
local eval_batches = run.eval_batches or 4

-- progress of the whole run in tokens (stages may differ in batch x seq_len): all stages' steps,
-- less what finished stages and checkpoints already hold
local function stage_tokens_per_step(S)
  return setting(S, "accum", 1) * setting(S, "batch", 4) * setting(S, "seq_len", 256)
end
local run_tokens, run_done, run_steps = 0, 0, 0
local converted = 0
for _, name in ipairs(order) do
  local S = stages[name]
  local tps = stage_tokens_per_step(S)
  run_tokens = run_tokens + S.steps * tps
  run_steps = run_steps + S.steps
  -- the layer choice of a progressive stage (ranked here): done once its ranking.json is there
  local plan = rank_plan(S, converted)
  converted = converted + (S.layers and #S.layers or S.lowest or 0)
  if plan then
    run_tokens = run_tokens + plan.units
    if exists(out .. "/" .. name .. "/ranking.json") then run_done = run_done + plan.units end
  end
  if exists(out .. "/" .. name .. "/final.safetensors") then
    run_done = run_done + S.steps * tps
  elseif exists(out .. "/" .. name .. "/ckpt.safetensors") then
    local ok, meta = pcall(hyb.train.checkpoint_meta, out .. "/" .. name .. "/ckpt.safetensors")
    run_done = run_done + (ok and tonumber(meta.step) or 0) * tps
  end
end
prog.total, prog.done0, prog.done, prog.t0 = run_tokens, run_done, run_done, hyb.time()
local run_t0 = hyb.time()
local last_val = nil

for si, name in ipairs(order) do
  local S = stages[name]
  local dir = out .. "/" .. name
  local final = dir .. "/final.safetensors"
  if exists(final) then
    say(("stage %d/%d '%s': done (%s)"):format(si, #order, name, final))
    prev = final
    goto continue
  end
  do
    local steps = S.steps or error(("stage '%s': steps is missing"):format(name))
    local B = setting(S, "batch", 4)
    local T = setting(S, "seq_len", 256)
    local accum = setting(S, "accum", 1)
    local student = prev and hyb.train.load(prev, load_opts) or hyb.train.clone(teacher)
    -- lean checkpoints: the trainable parameters (and moments); the frozen ones are the base's,
    -- the file this stage's student was built from (recorded by path and content hash)
    local save_opts = lean and {base = prev or teacher_path} or nil
    local final_opts = {base = lean and (prev or teacher_path) or nil, optimizer = false}
    local mixer = S.mixer or "mamba1"
    local layers = choose_layers(si, name, S, student, dir)
    if layers and #layers > 0 then
      if mixer == "identity" then
        student:set_identity(layers)
      else
        -- a student from an earlier stage may already have the mixer in its layer map (with its
        -- own config); model:swap then takes no config
        local cfg = S.config
        if cfg and hyb.train.layermap_toml(student):find("[mixers." .. mixer .. "]", 1, true) then cfg = nil end
        student:swap(layers, mixer, {init = S.init or "mil", seed = seed + si, config = cfg})
      end
    end
    for _, pat in ipairs(setting(S, "freeze", {})) do hyb.train.freeze(student, pat) end
    for _, pat in ipairs(setting(S, "unfreeze", {})) do
      if hyb.train.freeze(student, pat, false) == 0 then
        error(("stage '%s': unfreeze pattern '%s' matches no parameter"):format(name, pat))
      end
    end
    local tr = hyb.train.trainer(student, {teacher = teacher, lr = setting(S, "lr", 3e-4),
      min_lr = setting(S, "min_lr", setting(S, "lr", 3e-4) / 10), warmup = setting(S, "warmup", 0),
      steps = steps, accum = accum, loss = setting(S, "loss", "reverse_kl"), weights = strip(setting(S, "weights", nil)),
      temperature = setting(S, "temperature", 1.0), weight_decay = setting(S, "weight_decay", 0.1),
      clip = setting(S, "clip", 1.0), data_parallel = world > 1})
    local ckpt = dir .. "/ckpt.safetensors"
    if exists(ckpt) then
      local meta = tr:load(ckpt)
      say(("stage %d '%s': resumed from %s at step %d"):format(si, name, ckpt, tr:steps()))
      assert(meta.stage == name, ckpt .. " belongs to stage " .. tostring(meta.stage))
      -- the data position is (data_seed, step, global batch): the same at any world size, and the
      -- parameters and moments are the same on every rank, so a checkpoint of W ranks resumes
      -- on W' (the gradient sums then run in another order: equal up to float rounding)
      local rows = tonumber(meta.global_batch_rows or "")
      if rows and rows ~= accum * B then
        error(("%s: written with a global batch of %d rows per step, the recipe now says %d (accum %d x batch %d); remove %s to start the stage again"):format(
          ckpt, rows, accum * B, accum, B, dir), 0)
      end
      local w0 = tonumber(meta.world_size or "1")
      if w0 ~= world then
        say(("stage %d '%s': the checkpoint was written by %d rank(s), resuming on %d (same global batch, same data order)"):format(
          si, name, w0, world))
      end
    end
    -- every rank has read the checkpoint before rank 0 may replace it
    comm.barrier()
    local groups = {}
    local scales = setting(S, "lr_scale", nil)
    if scales ~= nil and (type(scales) ~= "table" or not scales.__order) then
      error(("%s: stage '%s': lr_scale must be a table { \"glob\" = scale, ... }"):format(recipe_path, name), 0)
    end
    for _, pat in ipairs(scales and scales.__order or {}) do
      local sc = scales[pat]
      if type(sc) ~= "number" then
        error(("%s: stage '%s': lr_scale '%s' must be a number, got %s"):format(recipe_path, name, pat, type(sc)), 0)
      end
      if tr:lr_scale(pat, sc) == 0 then
        error(("%s: stage '%s': lr_scale pattern '%s' matches no parameter"):format(recipe_path, name, pat), 0)
      end
      groups[#groups + 1] = ("%s x%g"):format(pat, sc)
    end
    if #groups > 0 then say(("stage %d '%s': lr groups: %s"):format(si, name, table.concat(groups, ", "))) end
    truncate_metrics(si, tr:steps())
    say(("stage %d/%d '%s': %s, layers %s -> %s, %d steps of %d x %d x %d tokens"):format(si, #order, name,
      student:pattern(), json(layers or {}), mixer, steps, accum, B, T))
    local mf = writer and assert(io.open(metrics_path, "a"))
      or {write = function() end, flush = function() end, close = function() end}
    local data_seed = seed * 1000 + si
    local Bw = B // world -- this rank's rows of every micro-batch
    local shard = world > 1 and {rank = my_rank, world = world, accum = accum} or nil
    -- checkpoint metadata: the data position (data_seed, step, rows per step) and the world size
    local ckpt_meta = {stage = name, data_seed = data_seed, world_size = tostring(world),
      global_batch_rows = tostring(accum * B)}
    local needs_targets = setting(S, "loss", "reverse_kl") == "ce" or (setting(S, "weights", {}).ce or 0) > 0
    local function evaluate(step)
      local sum, parts = 0, {}
      -- held-out batch j on rank j % world; the sums over the ranks (one process: all of them, in order)
      for j = my_rank, eval_batches - 1, world do
        local ids, tg = ds:val_batch(j, B, T)
        local r = tr:eval(ids, B, T, {targets = tg})
        sum = sum + r.loss
        for k, v in pairs(r) do if k ~= "loss" then parts[k] = (parts[k] or 0) + v / eval_batches end end
      end
      if world > 1 then
        local keys = {"rkl", "fkl", "ce"}
        local v = {sum}
        for i, k in ipairs(keys) do v[1 + i] = parts[k] or 0; v[4 + i] = parts[k] and 1 or 0 end
        v = comm.allreduce(v)
        sum, parts = v[1], {}
        for i, k in ipairs(keys) do if v[4 + i] > 0 then parts[k] = v[1 + i] end end
      end
      local rec = {kind = "val", stage = name, stage_index = si, step = step, loss = sum / eval_batches}
      for k, v in pairs(parts) do rec[k] = v end
      mf:write(json(rec), "\n")
      mf:flush()
      return rec
    end
    if tr:steps() == 0 then
      local r = evaluate(0)
      say(("  held-out before: loss %.4f  rkl %.4f  ce %.4f"):format(r.loss, r.rkl or 0 / 0, r.ce or 0 / 0))
    end
    local t0, tok0 = hyb.time(), 0
    local start = tr:steps()
    local step_tokens = accum * B * T
    local stage_base = prog.done - start * step_tokens -- run tokens before this stage's step 0
    for step = start, steps - 1 do
      local ids, tg = ds:batch(step, accum * B, T, data_seed, shard)
      local st = tr:step(ids, Bw, T, needs_targets and {targets = tg} or nil)
      tok0 = tok0 + step_tokens
      local el = hyb.time() - t0
      local tps = tok0 / math.max(el, 1e-9)
      local rec = {kind = "train", stage = name, stage_index = si, step = st.step, loss = st.loss, rkl = st.rkl,
        fkl = st.fkl, ce = st.ce, lr = st.lr, grad_norm = st.grad_norm, tok_s = tps,
        comm_s = world > 1 and st.comm_s or nil, ranks = world > 1 and world or nil}
      mf:write(json(rec), "\n")
      local run_done_now = stage_base + st.step * step_tokens
      prog:update(run_done_now, ("stage %d/%d %s  step %d/%d  loss %.4f  %.0f tok/s  ETA %s (stage %s)"):format(
        si, #order, name, st.step, steps, st.loss, tps, P.duration(prog:eta(run_done_now)),
        P.duration((steps - st.step) * el / math.max(st.step - start, 1))))
      if prog.mode == "lines" and (st.step % (run.log_every or 10) == 0 or st.step == steps or st.step == start + 1) then
        local eta = (steps - st.step) * el / math.max(st.step - start, 1)
        say(("  [%s] step %5d/%d  loss %.4f  lr %.2e  |g| %.3f  %7.0f tok/s  ETA %5.0f s  run ETA %s"):format(name,
          st.step, steps, st.loss, st.lr, st.grad_norm, tps, eta, P.duration(prog:eta())))
      end
      if st.step % (run.eval_every or 50) == 0 or st.step == steps then
        local r = evaluate(st.step)
        last_val = r.loss
        say(("  [%s] held-out at %d: loss %.4f"):format(name, st.step, r.loss))
      end
      mf:flush()
      if writer and st.step % (run.ckpt_every or 50) == 0 and st.step < steps then
        tr:save(ckpt, ckpt_meta, save_opts)
      end
      done_steps = done_steps + 1
      if stall_after and done_steps == stall_after and my_rank == (exit_rank or 1) then
        os.execute("exec sleep 60 </dev/null >/dev/null 2>&1") -- holds none of mpirun's pipes
      end
      if exit_after and done_steps >= exit_after and (not exit_rank or exit_rank == my_rank) then
        io.stdout:flush()
        if world > 1 then comm.kill() end -- a rank killed: the job must end on every rank
        os.exit(3, false) -- as abrupt as a kill: no cleanup, no close
      end
    end
    if world > 1 then
      -- the ranks apply the same summed gradients: their parameters must be bitwise the same
      local same, h = comm.same_params(student)
      mf:write(json({kind = "ranks", stage = name, stage_index = si, step = steps, ranks = world,
        same = same, hash = h}), "\n")
      mf:flush()
      if not same then
        comm.abort(("stage '%s': the ranks' parameters differ after %d steps (rank %d: %s)"):format(name, steps,
          my_rank, h), 4)
      end
    end
    mf:close()
    if writer then
      student:save(dir .. "/model")
      -- the student is a model: its directory carries the tokenizer (and chat template) it was
      -- distilled with, so hyb generate / chat / serve and hyb.llm open it as it is
      if tok then tok:save(dir .. "/model") end
      -- last: its presence marks the stage done; a model snapshot (no optimiser state: the next
      -- stage starts a new one), lean like the checkpoints; <stage>/model above is the whole model
      tr:save(final, ckpt_meta, final_opts)
      os.remove(ckpt)
    end
    comm.barrier(long_wait) -- the next stage loads `final` on every rank
    write_svg()
    write_report()
    say(("stage %d/%d '%s': done, %s"):format(si, #order, name, final))
    prev = final
  end
  ::continue::
end
write_svg()
write_report()
prog:finish()
prog:summary(("distillation done: %s, report %s/report.md (%d stages, %d steps; %s%s in this run)"):format(out, out, #order, run_steps,
  last_val and ("final held-out loss %.4f, "):format(last_val) or "", P.duration(hyb.time() - run_t0)))
if prev then
  local last = prev:gsub("/[^/]*$", "") .. "/model"
  if tok then
    prog:summary("chat with the student: hyb chat --model " .. last)
  else
    prog:summary("chat with the student: hyb chat --model " .. last .. " --tokenizer <the teacher's tokenizer>")
  end
end
