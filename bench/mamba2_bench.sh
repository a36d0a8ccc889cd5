#!/usr/bin/env bash
# bench/mamba2_bench.sh: one mamba2 mixer layer on the CPU, hyb's plugin (bench/mamba2_bench.c) vs
# the Lua prototype examples/mixers/mamba2.lua (bench/mamba2_bench_lua.lua) vs the PyTorch
# reference eager in float32 (bench/mamba2_bench_torch.py), on the same weights and inputs (the Lua
# and torch sides check they compute the plugin's y and dx), interleaved hyb / lua / torch per
# round so that a change in load hits all three.
# Timed: a training step (forward + backward into every parameter gradient; no optimiser) at
# B x T, wall and process CPU time (on a loaded machine the CPU time is the steadier measure of the
# work), and a decode step (one token after a prefill of T) at batch 1 and batch B.
#
#   bench/mamba2_bench.sh [rounds] [threads]              (defaults 3, 1)
# Env: SHAPE="B T D d_inner headdim ngroups d_state d_conv chunk" (default "4 256 256 512 64 1 64 4
# 64": 8 heads), REPS (training steps per round, 5), STEPS (decode steps per round, 50),
# PY (python with torch; default ${HYB_VENV:-.venv}/bin/python3), BUILD (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; THREADS=${2:-1}
SHAPE=${SHAPE:-"4 256 256 512 64 1 64 4 64"}
REPS=${REPS:-5}; STEPS=${STEPS:-50}
BUILD=${BUILD:-build}
PY=${PY:-${HYB_VENV:-.venv}/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=passive HYB_PLUGIN_PATH=$BUILD/plugins
up_before=$(uptime)
for r in $(seq 1 "$ROUNDS"); do
  # shellcheck disable=SC2086
  "$BUILD/tests/mamba2_bench" $SHAPE "$REPS" "$STEPS" "$tmp/dump.bin" > "$tmp/hyb-$r.json"
  "$BUILD/hyb" run bench/mamba2_bench_lua.lua "$tmp/dump.bin" "$REPS" "$STEPS" "$THREADS" > "$tmp/lua-$r.json"
  "$PY" bench/mamba2_bench_torch.py "$tmp/dump.bin" "$REPS" "$STEPS" "$THREADS" > "$tmp/torch-$r.json"
done
up_after=$(uptime)
"$PY" - "$tmp" "$ROUNDS" "$THREADS" "$SHAPE" "$up_before" "$up_after" <<'PYEOF'
import json, statistics, sys
tmp, rounds, threads, shape, ub, ua = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
raw = {i: [json.load(open(f"{tmp}/{i}-{r}.json")) for r in range(1, rounds + 1)] for i in ("hyb", "lua", "torch")}
B, T = raw["hyb"][0]["B"], raw["hyb"][0]["T"]
print(f"mamba2 layer, B T D d_inner headdim ngroups d_state d_conv chunk = {shape}; {threads} thread(s); "
      f"median over {rounds} interleaved rounds")
print(f"check: torch vs hyb y max rel {max(t['y_vs_hyb'] for t in raw['torch']):.2g}, "
      f"dx max rel {max(t['dx_vs_hyb'] for t in raw['torch']):.2g} (torch {raw['torch'][0]['torch']}); "
      f"lua vs hyb y {max(t['y_vs_hyb'] for t in raw['lua']):.2g}, dx {max(t['dx_vs_hyb'] for t in raw['lua']):.2g}")
print(f"| {'':28} | {'hyb (ms)':>10} | {'lua (ms)':>10} | {'torch (ms)':>10} | {'lua / hyb':>10} | {'torch / hyb':>11} |")
print(f"|{'-' * 30}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 13}|")
for key, name in (("train_ms", f"train step B={B} T={T}"), ("train_cpu_ms", "  the same, process CPU time"),
                  ("decode1_ms", "decode step, batch 1"),
                  ("decodeB_ms", f"decode step, batch {B}")):
    h = statistics.median(x[key] for x in raw["hyb"])
    lu = statistics.median(x[key] for x in raw["lua"])
    t = statistics.median(x[key] for x in raw["torch"])
    print(f"| {name:28} | {h:10.3f} | {lu:10.3f} | {t:10.3f} | {lu / h:9.2f}x | {t / h:10.2f}x |")
print(f"load before: {ub.strip()}")
print(f"load after:  {ua.strip()}")
PYEOF
