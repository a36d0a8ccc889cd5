#!/usr/bin/env bash
# bench/distill_dp.sh: data-parallel distillation, one step of the default model at 1 and 2 ranks
# on this machine (bench/distill_dp.lua), interleaved 1 2 1 2 ... so that a change in machine load
# hits both alike; both use the machine's 2 cores (1 rank x 2 OpenMP threads, 2 ranks x 1).
#
#   bench/distill_dp.sh [B] [T] [K] [rounds]      (defaults 2 64 2 2)
#
# Env: HYB (default build/hyb), HYB_MODEL (default the SmolLM2-135M Q4_1 GGUF). Prints a table and
# writes bench/results/distill_dp-<date>.json (every run's JSON, uptime before and after).
# OVERLAP_AB=1: each round also runs 2 ranks with the all-reduce after the backward
# (HYB_COMM_OVERLAP=0) next to the default (buckets posted from the backward), both without the
# profiling barrier (it would let the posted buckets progress while it waits): rows 2-seq, 2-ovl.
# OVERLAP_AB=2: only those two rows (no 1-rank and profiled 2-rank runs).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-2}; T=${2:-64}; K=${3:-2}; ROUNDS=${4:-2}
HYB=${HYB:-build/hyb}
command -v mpirun >/dev/null || { echo "distill_dp.sh: mpirun not found (scripts/bootstrap.sh)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
up_before=$(uptime)
for r in $(seq 1 "$ROUNDS"); do
  if [ "${OVERLAP_AB:-0}" != 2 ]; then
  echo "== round $r: 1 rank x 2 threads ($(uptime | sed 's/.*load/load/'))" >&2
  OMP_NUM_THREADS=2 "$HYB" run bench/distill_dp.lua --B "$B" --T "$T" --K "$K" --out "$tmp/np1-$r.json" >/dev/null
  echo "== round $r: 2 ranks x 1 thread ($(uptime | sed 's/.*load/load/'))" >&2
  OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe "$HYB" run bench/distill_dp.lua --B "$B" --T "$T" --K "$K" \
    --out "$tmp/np2-$r.json" >/dev/null
  fi
  if [ "${OVERLAP_AB:-0}" != 0 ]; then
    for v in 0 1; do
      tag=$([ $v = 0 ] && echo 2-seq || echo 2-ovl)
      echo "== round $r: 2 ranks x 1 thread, $tag, no profiling barrier ($(uptime | sed 's/.*load/load/'))" >&2
      OMP_NUM_THREADS=1 HYB_COMM_OVERLAP=$v mpirun -np 2 --oversubscribe "$HYB" run bench/distill_dp.lua \
        --B "$B" --T "$T" --K "$K" --profile 0 --out "$tmp/np$tag-$r.json" >/dev/null
    done
  fi
done
up_after=$(uptime)
mkdir -p bench/results
out=bench/results/distill_dp-$(date -u +%Y%m%d-%H%M).json
python3 - "$tmp" "$ROUNDS" "$up_before" "$up_after" "$out" <<'PY'
import json, sys, statistics
tmp, rounds, up0, up1, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
import os
keys = [k for k in (1, 2, "2-seq", "2-ovl") if os.path.exists(f"{tmp}/np{k}-1.json")]
runs = {n: [json.load(open(f"{tmp}/np{n}-{r}.json")) for r in range(1, rounds + 1)] for n in keys}
med = lambda n, k: statistics.median(x[k] for x in runs[n])
print(f"load before: {up0.strip()}\nload after:  {up1.strip()}")
print("| ranks | tokens/step | step s | tok/s | comm s (share) | wait s (share) | all-reduce alone s (GB/s) |")
print("|---|---|---|---|---|---|---|")
for n in keys:
    ar = med(n, "allreduce_s")
    gb = runs[n][0]["grad_bytes"] / ar / 1e9 if ar > 0 else 0
    print(f"| {n} | {runs[n][0]['tokens_per_step']} | {med(n, 'step_s'):.2f} | {med(n, 'tok_s'):.1f} | "
          f"{med(n, 'comm_s'):.2f} ({100 * med(n, 'comm_share'):.0f}%) | {med(n, 'wait_s'):.2f} "
          f"({100 * med(n, 'wait_share'):.0f}%) | " + (f"{ar:.2f} ({gb:.2f})" if ar > 0 else "-") + " |")
k0 = keys[0]
scaling = med(2, "tok_s") / med(1, "tok_s") if 1 in runs and 2 in runs else None
if scaling: print(f"scaling 2 ranks / 1 rank (tok/s): {scaling:.2f}x")
if "2-seq" in runs:
    print(f"overlapped / after the backward (step s, per round): " +
          ", ".join(f"{o['step_s'] / q['step_s']:.2f}" for q, o in zip(runs["2-seq"], runs["2-ovl"])))
print(f"gradient bytes per step {runs[k0][0]['grad_bytes']}")
json.dump({"runs": {str(k): v for k, v in runs.items()}, "uptime_before": up0, "uptime_after": up1,
           "scaling": scaling}, open(out, "w"), indent=1)
print("wrote", out)
PY
