#!/usr/bin/env bash
# bench/train_step.sh: one training step, hyb vs PyTorch on the CPU (same model, weights, batch,
# loss, optimiser), interleaved A B A B so that a change in machine load hits both alike.
#
#   bench/train_step.sh [B] [T] [K] [rounds]        (defaults 2 64 4 2; ~3-4 min on 2 cores)
#
# Env: HYB (default build/hyb), PY (default ${HYB_VENV:-/work/venv}/bin/python3, with torch),
# THREADS (default 2: OMP_NUM_THREADS for hyb, torch.set_num_threads for PyTorch), MAP (layer map).
# Both run with OMP_WAIT_POLICY=passive (hyb sets it itself; PyTorch gets the same so that neither
# spins on the shared cores). Prints a table with hyb tok/s / torch tok/s and writes
# bench/results/train_step-<date>.json (every round's raw JSON, the pooled medians, uptime).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-2}; T=${2:-64}; K=${3:-4}; ROUNDS=${4:-2}
HYB=${HYB:-build/hyb}
PY=${PY:-${HYB_VENV:-/work/venv}/bin/python3}
THREADS=${THREADS:-2}
MAP=${MAP:-graphs/smollm2-135m-h3.toml}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$THREADS
up_before=$(uptime)
for r in $(seq 1 "$ROUNDS"); do
  save=(); [ "$r" = 1 ] && save=(--save "$tmp/w")
  echo "== round $r: hyb" >&2
  "$HYB" run bench/train_step.lua --map "$MAP" --B "$B" --T "$T" --K "$K" --warmup 1 "${save[@]}" \
    --out "$tmp/hyb-$r.json" 2>&1 | grep -E '^hyb (reverse|ce)' >&2
  echo "== round $r: torch" >&2
  "$PY" bench/train_step_torch.py --weights "$tmp/w" --map "$MAP" --K "$K" --warmup 1 \
    --threads "$THREADS" --out "$tmp/torch-$r.json" >&2
done
up_after=$(uptime)
mkdir -p bench/results
out=bench/results/train_step-$(date -u +%Y%m%d-%H%M).json
"$PY" - "$tmp" "$ROUNDS" "$out" "$up_before" "$up_after" "$MAP" <<'PYEOF'
import json, statistics, sys
tmp, rounds, out, ub, ua, mp = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
raw = {impl: [json.load(open(f"{tmp}/{impl}-{r}.json")) for r in range(1, rounds + 1)] for impl in ("hyb", "torch")}
B, T = raw["hyb"][0]["B"], raw["hyb"][0]["T"]
rows, summary = [], {}
for kind in ("rkl", "ce"):
    s = {}
    for impl in ("hyb", "torch"):
        times = [t for rec in raw[impl] for t in rec[kind]["times"]]
        m = statistics.median(times)
        s[impl] = {"median_s": m, "tok_s": B * T / m, "n_steps": len(times), "first_loss": raw[impl][0][kind]["first_loss"]}
    s["ratio"] = s["hyb"]["tok_s"] / s["torch"]["tok_s"]
    fl_h, fl_t = s["hyb"]["first_loss"], s["torch"]["first_loss"]
    s["first_loss_rel_diff"] = abs(fl_h - fl_t) / max(abs(fl_t), 1e-30)
    summary[kind] = s
name = {"rkl": "reverse KL (teacher fwd + student fwd/bwd + AdamW)", "ce": "CE (student fwd/bwd + AdamW)"}
print(f"\nTraining step, {mp}, B={B} T={T}, {raw['torch'][0]['threads']} threads, torch {raw['torch'][0]['torch']}")
print(f"| step | hyb s/step | hyb tok/s | torch s/step | torch tok/s | hyb/torch | first loss hyb | first loss torch | rel diff |")
print(f"|---|---|---|---|---|---|---|---|---|")
for kind, s in summary.items():
    h, t = s["hyb"], s["torch"]
    print(f"| {name[kind]} | {h['median_s']:.3f} | {h['tok_s']:.1f} | {t['median_s']:.3f} | {t['tok_s']:.1f} | "
          f"{s['ratio']:.2f} | {h['first_loss']:.6f} | {t['first_loss']:.6f} | {s['first_loss_rel_diff']:.1e} |")
print(f"uptime before: {ub.strip()}\nuptime after:  {ua.strip()}")
json.dump({"B": B, "T": T, "map": mp, "summary": summary, "uptime_before": ub, "uptime_after": ua, "raw": raw},
          open(out, "w"), indent=1)
print("wrote", out)
PYEOF
