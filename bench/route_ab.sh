#!/usr/bin/env bash
# bench/route_ab.sh: two hyb builds side by side, interleaved (A B, B A, A B, ...), on the default
# model: prefill (64/256/1024 tokens) and decode (batch 1/4/16) tok/s from scripts/bench_cpu.lua,
# and one distillation step (reverse KL) and one CE step of the h3 hybrid from bench/train_step.lua.
# Written for the one-compute-route change (issue 13: each within 5% of before, or faster), usable
# for any A/B of two binaries.
#
#   bench/route_ab.sh [rounds]                  (default 3; ~2.5 min a round on 2 cores)
#
# Env: A (default /work/wt-base/build/hyb: a checkout of the base commit, built), B (default
# build/hyb), MODEL (default the teacher GGUF). Both binaries run the SAME scripts (this tree's
# scripts/bench_cpu.lua and bench/train_step.lua). Each figure is the median over rounds of each
# run's best-of-3 (bench_cpu) or median step (train_step). Prints a table, writes
# bench/results/route-ab-<date>.json with every raw run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
A=${A:-/work/wt-base/build/hyb}
B=${B:-build/hyb}
MODEL=${MODEL:-$HOME/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf}
for bin in "$A" "$B"; do [[ -x $bin ]] || { echo "route_ab: $bin is not an executable" >&2; exit 2; }; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_WAIT_POLICY=passive HYB_SCRIPTS_DIR=$PWD/scripts  # both binaries run these scripts and libraries
up_before=$(uptime)
run() { # label binary round
    "$2" run scripts/bench_cpu.lua "$MODEL" --out "$tmp/cpu-$1-$3.json" >/dev/null 2>&1
    "$2" run bench/train_step.lua --map graphs/smollm2-135m-h3.toml --B 2 --T 64 --K 3 --warmup 1 \
        --out "$tmp/train-$1-$3.json" >/dev/null 2>&1
    echo "  round $3: $1 done" >&2
}
for r in $(seq 1 "$ROUNDS"); do
    if (( r % 2 )); then run A "$A" "$r"; run B "$B" "$r"; else run B "$B" "$r"; run A "$A" "$r"; fi
done
up_after=$(uptime)
mkdir -p bench/results
out=bench/results/route-ab-$(date -u +%Y%m%d-%H%M).json
python3 - "$tmp" "$ROUNDS" "$out" "$A" "$B" "$up_before" "$up_after" <<'PYEOF'
import json, statistics, sys
tmp, rounds, out, A, B, ub, ua = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
raw = {s: {"cpu": [json.load(open(f"{tmp}/cpu-{s}-{r}.json")) for r in range(1, rounds + 1)],
           "train": [json.load(open(f"{tmp}/train-{s}-{r}.json")) for r in range(1, rounds + 1)]}
       for s in ("A", "B")}
def med(xs): return statistics.median(xs)
rows = []
for T in (64, 256, 1024):
    v = {s: med([p["tok_s"] for c in raw[s]["cpu"] for p in c["prefill"] if p["T"] == T]) for s in "AB"}
    rows.append((f"prefill T={T}", v["A"], v["B"]))
for Bn in (1, 4, 16):
    v = {s: med([d["tok_s"] for c in raw[s]["cpu"] for d in c["decode"] if d["B"] == Bn]) for s in "AB"}
    rows.append((f"decode B={Bn}", v["A"], v["B"]))
for k, name in (("rkl", "distill step (rKL)"), ("ce", "train step (CE)")):
    v = {s: med([t[k]["tok_s"] for t in raw[s]["train"]]) for s in "AB"}
    rows.append((name, v["A"], v["B"]))
print(f"A = {A}\nB = {B}\nrounds {rounds}, interleaved; load before: {ub.strip()}\n"
      f"                                after:  {ua.strip()}")
print(f"{'tok/s':<22}{'A':>10}{'B':>10}{'B/A':>8}")
for name, a, b in rows:
    print(f"{name:<22}{a:>10.1f}{b:>10.1f}{b / a:>8.3f}")
json.dump({"A": A, "B": B, "rounds": rounds, "uptime_before": ub, "uptime_after": ua,
           "summary": [{"what": n, "A_tok_s": a, "B_tok_s": b, "ratio": b / a} for n, a, b in rows],
           "raw": raw}, open(out, "w"), indent=1)
print(f"wrote {out}")
PYEOF
