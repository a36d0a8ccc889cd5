-- bench/distill_dp.lua: one data-parallel distillation step of the default model, timed on every
-- rank (driven by bench/distill_dp.sh, which runs it alone and under mpirun -np 2, interleaved).
--
--   [mpirun -np N] build/hyb run bench/distill_dp.lua [--model GGUF] [--B 2] [--T 64] [--K 3]
--       [--warmup 1] [--bucket_mb 25] [--out FILE.json]
--
-- Teacher: the model (default $HYB_MODEL or ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf);
-- student: its clone with every parameter trainable (the most gradient bytes a step can reduce).
-- Global batch: B sequences of T tokens (fixed, from a seeded generator); each of the N ranks
-- takes B / N of them, as hyb distill does. Timed: K steps after `warmup`, each a tr:step with
-- reverse KL; with N > 1 the trainer's comm_profile splits each step's communication into the
-- wait for the slowest rank (a barrier: imbalance, not transfer) and the reduction itself (the
-- bucketed gradient all-reduce plus the loss sums). Also timed alone (hyb.comm.bench_allreduce,
-- median of 3): the all-reduce of as many floats as the gradients, after a barrier. Rank 0 prints one JSON line and
-- writes --out.
local hyb = require("hyb")
local comm = hyb.comm
local world, rank = comm.size(), comm.rank()

local opt = {model = os.getenv("HYB_MODEL") or (os.getenv("HOME") .. "/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
  B = 2, T = 64, K = 3, warmup = 1, bucket_mb = 25, profile = 1, out = nil}
local i = 1
while i <= #arg do
  local k = arg[i]:match("^%-%-(.+)$")
  if not k or (opt[k] == nil and k ~= "out") then
    io.stderr:write("usage: hyb run bench/distill_dp.lua [--model GGUF] [--B n] [--T n] [--K n] [--warmup n] [--bucket_mb x] [--profile 0|1] [--out FILE]\n")
    os.exit(2)
  end
  local v = arg[i + 1] or error("--" .. k .. " needs a value")
  opt[k] = tonumber(v) or v
  i = i + 2
end
local B, T, K = math.tointeger(opt.B), math.tointeger(opt.T), math.tointeger(opt.K)
if B % world ~= 0 then error(("--B %d does not divide over %d ranks"):format(B, world), 0) end
local Bw = B // world
hyb.log_level("warn")

local teacher = hyb.train.load(opt.model)
local student = hyb.train.clone(teacher)
local V = teacher:config().vocab_size
local tr = hyb.train.trainer(student, {teacher = teacher, lr = 1e-4, steps = 1000, data_parallel = world > 1,
  bucket_mb = opt.bucket_mb, comm_profile = world > 1 and opt.profile ~= 0})

-- the global batch (the same on every rank), this rank's rows of it
local ids = {}
local s = 12345
for j = 1, B * T do
  s = (s * 1103515245 + 12345) % 2147483648
  ids[j] = s % V
end
local mine = {}
for j = rank * Bw * T + 1, (rank + 1) * Bw * T do mine[#mine + 1] = ids[j] end
local trainable = 0
for _, name in ipairs(student:params()) do trainable = trainable + student:param(name):numel() end

local steps, comms, waits = {}, {}, {}
for k = 1, opt.warmup + K do
  comm.barrier()
  local t0 = hyb.time()
  local st = tr:step(mine, Bw, T)
  local dt = hyb.time() - t0
  if k > opt.warmup then
    steps[#steps + 1], comms[#comms + 1], waits[#waits + 1] = dt, st.comm_s, st.wait_s
  end
end
local function median(t)
  local c = {}
  for j, v in ipairs(t) do c[j] = v end
  table.sort(c)
  return #c % 2 == 1 and c[(#c + 1) // 2] or (c[#c // 2] + c[#c // 2 + 1]) / 2
end
-- every rank's medians to rank 0 (the step is as slow as the slowest rank)
local all = comm.allreduce({median(steps), median(comms), median(waits)})
local step_s, comm_s, wait_s = all[1] / world, all[2] / world, all[3] / world
-- the gradient bytes alone, as the step reduces them (median of 3)
local ar = {}
for k = 1, 3 do ar[k] = comm.bench_allreduce(trainable, opt.bucket_mb) end
local ar_s = world > 1 and comm.allreduce({median(ar)})[1] / world or 0
local r = {ranks = world, allreduce_s = ar_s, B = B, T = T, K = K, tokens_per_step = B * T, step_s = step_s,
  tok_s = B * T / step_s, comm_s = comm_s, wait_s = wait_s, comm_share = comm_s / step_s,
  wait_share = wait_s / step_s, grad_bytes = trainable * 4, bucket_mb = opt.bucket_mb,
  -- algorithm bandwidth: gradient bytes / all-reduce seconds (in the step, and alone)
  step_allreduce_gbps = world > 1 and comm_s > 0 and trainable * 4 / comm_s / 1e9 or nil,
  allreduce_gbps = world > 1 and ar_s > 0 and trainable * 4 / ar_s / 1e9 or nil,
  threads = tonumber(os.getenv("OMP_NUM_THREADS") or "") or 0, model = opt.model,
  overlap = world > 1 and os.getenv("HYB_COMM_OVERLAP") ~= "0", profile = opt.profile ~= 0}
if rank == 0 then
  local line = require("evallib").json_compact(r)
  print(line)
  if opt.out then
    local f = assert(io.open(opt.out, "w"))
    f:write(line, "\n")
    f:close()
  end
end
