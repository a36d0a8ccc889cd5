#!/usr/bin/env bash
# bench/threads_bench.sh: decode tokens/s of two hyb builds (A = baseline, B = this tree),
# interleaved round by round on the same machine, for the CPU thread pool (core/backend/cpu/
# cpu_pool.c): `hyb generate` (batch 1, 128 greedy tokens) with f32 weights and HYB_QUANT=fast at
# 1 and 2 threads, the same with a competing busy process on the machine (a shell loop at nice 0:
# a stolen core must not make decode fall off a cliff), and batched decode of 16 sequences
# through hyb.engine (bench/threads_engine.lua). Threads are set with OMP_NUM_THREADS, which both
# builds follow. Prints a table (median and min..max over the rounds) and writes JSON.
#
#   bench/threads_bench.sh [A_hyb] [B_hyb] [rounds] [out.json]
#     A_hyb  default /work/main/build/hyb (the baseline build); B_hyb default build/hyb
#     env: HYB_MODEL (default SmolLM2-135M-Instruct.Q4_1.gguf), TOKENS (128), CASES (all:
#          "gen_f32_t2 gen_fast_t2 gen_f32_t1 gen_fast_t1 busy_f32_t2 busy_fast_t2 eng16_f32_t2
#          eng16_fast_t2")
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
A=${1:-/work/main/build/hyb}
B=${2:-$root/build/hyb}
R=${3:-3}
OUT=${4:-$root/bench/results/threads_bench.json}
MODEL=${HYB_MODEL:-$HOME/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf}
TOKENS=${TOKENS:-128}
CASES=${CASES:-"gen_f32_t2 gen_fast_t2 gen_f32_t1 gen_fast_t1 busy_f32_t2 busy_fast_t2 eng16_f32_t2 eng16_fast_t2"}
PROMPT="The history of the city begins with a small settlement on the river, where"
for b in "$A" "$B"; do [ -x "$b" ] || { echo "threads_bench: $b is not an executable" >&2; exit 2; }; done
[ -f "$MODEL" ] || { echo "threads_bench: model $MODEL not found (HYB_MODEL)" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"
tmp=$(mktemp -d)
busy_pid=
cleanup() { [ -n "$busy_pid" ] && kill "$busy_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

# one measurement: prints decode tok/s
run_case() { # bin case
  local bin=$1 c=$2 q=off t=2
  case $c in *_fast_*) q=fast ;; esac
  case $c in *_t1) t=1 ;; esac
  case $c in
    eng16_*)
      HYB_QUANT=$q OMP_NUM_THREADS=$t "$bin" run "$root/bench/threads_engine.lua" "$MODEL" 16 64 \
        | sed -n 's/.*"decode_tok_s": \([0-9.]*\).*/\1/p' ;;
    *)
      HYB_QUANT=$q OMP_NUM_THREADS=$t "$bin" generate --model "$MODEL" --max-tokens "$TOKENS" \
        --temperature 0 "$PROMPT" 2>&1 >/dev/null | sed -n 's/.*decode \([0-9.]*\) tok\/s.*/\1/p' ;;
  esac
}

echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/')  A=$A  B=$B  rounds=$R" >&2
for r in $(seq 1 "$R"); do
  for c in $CASES; do
    case $c in busy_*) nice -n 0 sh -c 'while :; do :; done' & busy_pid=$! ;; esac
    for side in A B; do
      bin=$A; [ $side = B ] && bin=$B
      v=$(run_case "$bin" "$c")
      echo "$c $side ${v:-nan}" >> "$tmp/raw"
      echo "round $r $c $side ${v:-nan} tok/s  ($(uptime | sed 's/.*average: //'))" >&2
    done
    if [ -n "$busy_pid" ]; then kill "$busy_pid"; wait "$busy_pid" 2>/dev/null || true; busy_pid=; fi
  done
done

python3 - "$tmp/raw" "$OUT" "$A" "$B" "$R" "$MODEL" "$(uptime)" <<'PY'
import json, statistics, sys
raw, out, a, b, rounds, model, up = sys.argv[1:]
vals = {}
for line in open(raw):
    c, side, v = line.split()
    vals.setdefault(c, {}).setdefault(side, []).append(float(v))
rows = []
print(f"{'case':16} {'A median':>9} {'A range':>15} {'B median':>9} {'B range':>15} {'B/A':>6}")
for c, d in vals.items():
    ma, mb = statistics.median(d.get('A', [0])), statistics.median(d.get('B', [0]))
    ra = f"{min(d['A']):.1f}..{max(d['A']):.1f}"
    rb = f"{min(d['B']):.1f}..{max(d['B']):.1f}"
    ratio = mb / ma if ma > 0 else float('nan')
    print(f"{c:16} {ma:9.1f} {ra:>15} {mb:9.1f} {rb:>15} {ratio:6.2f}")
    rows.append({"case": c, "A": d['A'], "B": d['B'], "A_median": ma, "B_median": mb,
                 "B_over_A": ratio})
json.dump({"A": a, "B": b, "rounds": int(rounds), "model": model, "uptime_end": up.strip(),
           "unit": "decode tokens/s", "cases": rows}, open(out, "w"), indent=1)
print(f"wrote {out}")
PY
