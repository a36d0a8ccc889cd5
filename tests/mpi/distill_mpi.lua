-- tests/mpi/distill_mpi.lua: data-parallel `hyb distill` under `mpirun -np 2 --oversubscribe`
-- (issue 18, docs/DISTRIBUTED.md) on a tiny model (graphs/tiny.toml; two stages, identity then
-- mamba1, global batch 4 rows x accum 2). One case per run, so each ctest entry stays short:
--
--   hyb run tests/mpi/distill_mpi.lua equal   np=2 vs one process with the same global batch:
--       parameters equal to <= 1e-5 relative (Frobenius norm of the difference over all
--       parameters), the losses of every step to 1e-5, the run with the all-reduce overlapped
--       with the backward bitwise equal to the one without (HYB_COMM_OVERLAP=0), and the two
--       ranks' parameters bitwise
--       identical (the "ranks" line distill writes after each stage compares their hashes); a
--       `lowest = 1` stage ranked by LOO split over the 2 ranks chooses the layer one process
--       chooses (scores within 1e-5); a batch that does not divide over the ranks is refused
--       naming the recipe's file:line:col and key; `hyb importance` (LOO and MMR probes split over
--       the ranks, scores gathered) writes the same ranking file as one process
--   hyb run tests/mpi/distill_mpi.lua kill    rank 1 SIGKILLed after 5 updates: mpirun exits
--       non-zero within 60 s, the checkpoint on disk parses, the same command resumes and ends
--       bitwise equal to an uninterrupted np=2 run; resuming that checkpoint in one process
--       (another world size) ends equal to it within 1e-5
--   hyb run tests/mpi/distill_mpi.lua stall   rank 1 stops taking part (sleeps 60 s) with
--       HYB_COMM_TIMEOUT=3: rank 0's collective times out, the job ends non-zero within 30 s with
--       a message naming the rank and the collective
--
-- Skips (status 77) with a message when mpirun is missing or hyb was built without MPI.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/tests/mpi/[^/]*$") .. "/tests/lua/harness.lua")
local mode = arg[1] or "equal"
local root = os.getenv("HYB_SOURCE_DIR") or arg[0]:match("^(.*)/tests/mpi/[^/]*$")
local bin = arg[-1]
hyb.log_level("warn")

local function sh(cmd)
  local ok, _, code = os.execute(cmd)
  return ok and 0 or code
end
local function capture(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local s = p:read("a")
  p:close()
  return s
end

local mpirun = capture("command -v mpirun"):match("^(%S+)")
if not mpirun then H.skip("mpirun not found (apt-get install openmpi-bin libopenmpi-dev; scripts/bootstrap.sh)") end
if not hyb.comm.have_mpi() then H.skip("this hyb was built without MPI (no libopenmpi-dev when configured)") end

local tmp = H.tmpdir()
-- one OpenMP thread per rank (the CI has 2 cores); root may run mpirun (containers);
-- ASan builds: OpenMPI's own allocations at exit are not hyb's leaks
local env = "OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " ..
  "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 "
-- (the ranks of one node inherit mpirun's environment: no -x needed)
local mpi = ("'%s' -np 2 --oversubscribe "):format(mpirun)

hyb.model(root .. "/graphs/tiny.toml", {seed = 1}):save(tmp .. "/teacher")
local recipe = tmp .. "/r.toml"
local f = assert(io.open(recipe, "w"))
f:write(([[
[run]
teacher = "%s/teacher"
seed = 5
log_every = 100
eval_every = 4
eval_batches = 3
ckpt_every = 2
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
[train]
lr = 1e-3
warmup = 2
batch = 4
seq_len = 32
accum = 2
[stages.s1]
layers = [3]
mixer = "identity"
steps = 6
[stages.s2]
layers = [1]
mixer = "mamba1"
config = "d_inner = 128\nd_xb = 64\nd_state = 16"
steps = 4
]]):format(tmp, root))
f:close()
local log = tmp .. "/log.txt"
local function distill(out, extra, ranks)
  local pre = env .. (extra or "") .. (ranks == 1 and "" or mpi)
  return ("%s'%s' run '%s/scripts/distill.lua' --quiet '%s' '%s/%s' >> '%s' 2>&1"):format(pre,
    bin, root, recipe, tmp, out, log)
end
local function dump_log()
  io.stderr:write(capture("tail -40 '" .. log .. "'"), "\n")
end

-- relative Frobenius difference over all parameters, and the number of tensors not bitwise equal
local function compare(pa, pb)
  local a, b = hyb.train.load(pa), hyb.train.load(pb)
  local dd, nn, nbit = 0, 0, 0
  for _, name in ipairs(a:params()) do
    local x, y = a:param(name), b:param(name)
    if not x:equal(y) then nbit = nbit + 1 end
    local function walk(p, q)
      if type(p) == "table" then
        for i = 1, #p do walk(p[i], q[i]) end
      else
        dd, nn = dd + (p - q) ^ 2, nn + q ^ 2
      end
    end
    walk(x:totable(), y:totable())
  end
  return math.sqrt(dd / nn), nbit
end

local function metrics(out)
  local rows = {}
  for line in io.lines(tmp .. "/" .. out .. "/metrics.jsonl") do rows[#rows + 1] = line end
  return rows
end

if mode == "equal" then
  H.run("np=2 equals one process with the same global batch; ranks bitwise identical", function()
    H.eq(sh(distill("one", nil, 1)), 0, "one-process run")
    -- 0.1 MB buckets: several packed buckets (norms, biases) and in-place ones (the matrices)
    local rc = sh(distill("two", "HYB_COMM_BUCKET_MB=0.1 ", 2))
    if rc ~= 0 then dump_log() end
    H.eq(rc, 0, "mpirun -np 2 run")
    local rel, nbit = compare(tmp .. "/one/s2/final.safetensors", tmp .. "/two/s2/final.safetensors")
    io.stderr:write(("  np=2 vs np=1: relative difference %.3g, %d tensors not bitwise equal\n"):format(rel, nbit))
    H.check(rel <= 1e-5, ("parameters differ by %.3g relative (> 1e-5)"):format(rel))
    -- the buckets posted from the backward's gradient-ready hook (the default) reduce the same
    -- buckets in the same order as after the backward (HYB_COMM_OVERLAP=0): the same bits; a
    -- bucket posted before its gradients are final would miss their last contributions
    rc = sh(distill("seq", "HYB_COMM_BUCKET_MB=0.1 HYB_COMM_OVERLAP=0 ", 2))
    if rc ~= 0 then dump_log() end
    H.eq(rc, 0, "mpirun -np 2 run without overlap")
    local rel2, nbit2 = compare(tmp .. "/seq/s2/final.safetensors", tmp .. "/two/s2/final.safetensors")
    io.stderr:write(("  np=2 overlapped vs after the backward: relative %.3g, %d tensors not bitwise equal\n"):format(rel2, nbit2))
    H.eq(nbit2, 0, "tensors of the overlapped run not bitwise equal to the non-overlapped one")
    -- the same steps' losses (global, averaged over the ranks)
    local l1, l2 = {}, {}
    for _, line in ipairs(metrics("one")) do
      if line:find('"kind":"train"', 1, true) then l1[#l1 + 1] = tonumber(line:match('"loss":([%d%.eE+-]+)')) end
    end
    local same, ranks_lines = 0, 0
    for _, line in ipairs(metrics("two")) do
      if line:find('"kind":"train"', 1, true) then l2[#l2 + 1] = tonumber(line:match('"loss":([%d%.eE+-]+)')) end
      if line:find('"kind":"ranks"', 1, true) then
        ranks_lines = ranks_lines + 1
        if line:find('"same":true', 1, true) and line:find('"ranks":2', 1, true) then same = same + 1 end
      end
    end
    H.eq(#l2, #l1, "train lines")
    for i = 1, #l1 do H.near(l2[i], l1[i], 1e-5 * math.abs(l1[i]) + 1e-9, "loss of update " .. i) end
    H.eq(ranks_lines, 2, "'ranks' lines (one per stage)")
    H.eq(same, 2, "stages after which both ranks' parameters were bitwise the same")
    -- rank 0 alone wrote: no file of rank 1 (its temporaries would carry its pid)
    H.eq(tonumber(capture("find '" .. tmp .. "/two' -name '*.tmp*' | wc -l")), 0, "temporaries left")
  end)
  H.run("LOO ranking split over the ranks chooses as one process; a batch that does not divide is refused", function()
    local rl = tmp .. "/rank.toml"
    local g = assert(io.open(rl, "w"))
    g:write(([[
[run]
teacher = "%s/teacher"
seed = 5
eval_batches = 2
[data]
files = ["%s/examples/data"]
tokenizer = "bytes"
val_fraction = 0.1
[train]
lr = 1e-3
batch = 2
seq_len = 32
[rank]
method = "loo"
[stages.s1]
layers = [3]
mixer = "identity"
steps = 2
[stages.s2]
lowest = 1
mixer = "identity"
steps = 2
]]):format(tmp, root))
    g:close()
    local function run(out, ranks)
      return sh(("%s%s'%s' run '%s/scripts/distill.lua' --quiet '%s' '%s/%s' >> '%s' 2>&1"):format(env,
        ranks == 1 and "" or mpi, bin, root, rl, tmp, out, log))
    end
    H.eq(run("rank1", 1), 0, "one process")
    local rc = run("rank2", 2)
    if rc ~= 0 then dump_log() end
    H.eq(rc, 0, "np=2")
    local function choice(out)
      for _, line in ipairs(metrics(out)) do
        if line:find('"kind":"rank"', 1, true) then return require("rankinglib").json_decode(line, out) end
      end
    end
    local c1, c2 = choice("rank1"), choice("rank2")
    H.check(c1 and c2, "both runs ranked the layers")
    H.eq(table.concat(c2.layers, ","), table.concat(c1.layers, ","), "layers chosen")
    H.eq(table.concat(c2.order, ","), table.concat(c1.order, ","), "order")
    for l, sc in pairs(c1.scores) do
      H.near(c2.scores[l].rkl, sc.rkl, 1e-5 * math.abs(sc.rkl), "LOO rKL of layer " .. l)
    end
    -- batch 3 over 2 ranks
    local bad = tmp .. "/bad.toml"
    g = assert(io.open(bad, "w"))
    g:write((io.open(rl):read("a"):gsub("batch = 2", "batch = 3")))
    g:close()
    local text = capture(("%s%s'%s' run '%s/scripts/distill.lua' '%s' '%s/bad'"):format(env, mpi, bin, root, bad, tmp))
    H.check(text:find("bad.toml:11:1: [train] batch = 3 (the global micro-batch) does not divide over 2 ranks", 1, true) ~= nil,
      "the error names the file, the key and the ranks:\n" .. text:sub(1, 600))
  end)
  H.run("hyb importance (LOO + MMR) split over 2 ranks writes the one-process ranking file", function()
    local function run(out, ranks)
      return sh(("%s%s'%s' run '%s/scripts/importance.lua' --teacher '%s/teacher' --data '%s/examples/data' " ..
        "--tokenizer bytes --batches 2 --seq-len 32 --mmr-steps 2 --out '%s/%s' --quiet >> '%s' 2>&1"):format(env,
        ranks == 1 and "" or mpi, bin, root, tmp, root, tmp, out, log))
    end
    H.eq(run("imp1.json", 1), 0, "one process")
    local rc = run("imp2.json", 2)
    if rc ~= 0 then dump_log() end
    H.eq(rc, 0, "np=2")
    -- each probe runs in one process on one rank: the scores are bitwise the same, so the files are
    local a, b = io.open(tmp .. "/imp1.json"):read("a"), io.open(tmp .. "/imp2.json"):read("a")
    H.check(a:find('"mmr": {', 1, true) ~= nil, "MMR ran: " .. a:sub(1, 200))
    H.eq(b, a, "ranking file")
  end)
elseif mode == "kill" then
  H.run("a rank killed mid-run ends the job; the resume matches an uninterrupted run", function()
    local rc = sh(distill("ref", nil, 2))
    if rc ~= 0 then dump_log() end
    H.eq(rc, 0, "uninterrupted np=2 run")
    local t0 = hyb.time()
    rc = sh(distill("cut", "HYB_DISTILL_EXIT_AFTER=5 HYB_DISTILL_EXIT_RANK=1 ", 2))
    local secs = hyb.time() - t0
    io.stderr:write(("  killed run: mpirun status %d after %.1f s\n"):format(rc, secs))
    H.check(rc ~= 0, "mpirun must exit non-zero when a rank is killed")
    H.check(secs < 60, ("the job ended %.1f s after start (> 60 s)"):format(secs))
    H.check(capture("cat '" .. log .. "'"):find("rank 1", 1, true) ~= nil, "the launcher's message names rank 1")
    local ck = tmp .. "/cut/s1/ckpt.safetensors"
    local ok, meta = pcall(hyb.train.checkpoint_meta, ck)
    H.check(ok, "the last checkpoint parses: " .. tostring(meta))
    H.eq(ok and meta.world_size, "2", "checkpoint's world_size")
    H.eq(ok and tonumber(meta.step), 4, "checkpoint step (ckpt_every 2, killed after 5)")
    -- copy the cut run before resuming it, to resume it in one process as well
    H.eq(sh(("cp -r '%s/cut' '%s/cut1'"):format(tmp, tmp)), 0, "copy")
    rc = sh(distill("cut", nil, 2))
    if rc ~= 0 then dump_log() end
    H.eq(rc, 0, "resumed np=2 run")
    local rel, nbit = compare(tmp .. "/ref/s2/final.safetensors", tmp .. "/cut/s2/final.safetensors")
    io.stderr:write(("  resumed np=2 vs uninterrupted np=2: relative %.3g, %d tensors differ\n"):format(rel, nbit))
    H.eq(nbit, 0, "tensors not bitwise equal to the uninterrupted run")
    rc = sh(distill("cut1", nil, 1))
    if rc ~= 0 then dump_log() end
    H.eq(rc, 0, "np=2 checkpoint resumed by one process")
    rel = compare(tmp .. "/ref/s2/final.safetensors", tmp .. "/cut1/s2/final.safetensors")
    io.stderr:write(("  np=2 checkpoint resumed at np=1 vs uninterrupted np=2: relative %.3g\n"):format(rel))
    H.check(rel <= 1e-5, ("resumed on another world size: %.3g relative (> 1e-5)"):format(rel))
  end)
elseif mode == "stall" then
  H.run("a rank that stops taking part: the others time out, the job ends naming the rank", function()
    local t0 = hyb.time()
    local rc = sh(distill("stall", "HYB_COMM_TIMEOUT=3 HYB_DISTILL_STALL_AFTER=3 HYB_DISTILL_EXIT_RANK=1 ", 2))
    local secs = hyb.time() - t0
    local text = capture("cat '" .. log .. "'")
    io.stderr:write(("  stalled run: mpirun status %d after %.1f s\n"):format(rc, secs))
    H.check(rc ~= 0, "mpirun must exit non-zero")
    H.check(secs < 30, ("the job ended after %.1f s (the rank sleeps 60 s; timeout 3 s)"):format(secs))
    H.check(text:find("rank 0 of 2: allreduce", 1, true) ~= nil and text:find("did not complete within 3 s", 1, true),
      "rank 0's message names itself, the collective and the deadline:\n" .. text:sub(-1500))
    local ok = pcall(hyb.train.checkpoint_meta, tmp .. "/stall/s1/ckpt.safetensors")
    H.check(ok, "the last checkpoint parses")
  end)
else
  error("usage: hyb run tests/mpi/distill_mpi.lua equal|kill|stall")
end

local rc = H.done()
H.rmdir(tmp)
os.exit(rc)
