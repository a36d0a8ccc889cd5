#!/usr/bin/env bash
# tests/progress_tmux.sh HYB: `hyb distill` on a real terminal (tmux) draws its progress as one line
# redrawn in place: after a two-stage run on the tiny model the screen holds exactly one bar line
# (the last, 100%, with the run's ETA), the held-out lines printed above it, and the summary;
# with --quiet only the summary. Skips (77) without tmux.
set -uo pipefail
HYB=${1:?usage: progress_tmux.sh HYB}
command -v tmux >/dev/null || { echo "skipped: tmux is missing"; exit 77; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=$(mktemp -d)
sock="$tmp/tmux.sock"
T() { tmux -S "$sock" "$@"; }
cleanup() { T kill-server 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; echo "--- screen:"; screen | sed '/^$/d'; fails=$((fails + 1)); }
screen() { T capture-pane -p -J -S -200 -t run; }
wait_for() { # wait_for TEXT SECONDS
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        screen | grep -qF -- "$1" && return 0
        sleep 0.1
    done
    return 1
}

echo 'require("hyb").model(arg[1], {seed = 1}):save(arg[2])' > "$tmp/mk.lua"
"$HYB" run "$tmp/mk.lua" "$root/graphs/tiny.toml" "$tmp/teacher" 2>/dev/null || { echo "FAIL: teacher"; exit 1; }
cat > "$tmp/r.toml" <<TOML
[run]
teacher = "$tmp/teacher"
eval_batches = 1
eval_every = 4
[data]
files = ["$root/examples/data"]
tokenizer = "bytes"
[train]
batch = 2
seq_len = 32
[stages.s1]
layers = [3]
mixer = "identity"
steps = 8
[stages.s2]
layers = [2]
mixer = "identity"
steps = 8
TOML

T new-session -d -s run -x 150 -y 50 "OMP_NUM_THREADS=2 HYB_LOG=warn $HYB distill $tmp/r.toml $tmp/out 2>/dev/null; echo RUN-EXIT-\$?; sleep 30"
wait_for "RUN-EXIT-" 120 || fail "distill did not finish"
screen | grep -qF "RUN-EXIT-0" || fail "distill failed"
bars=$(screen | grep -cE '\] +[0-9]+% stage [0-9]/2')
[[ $bars == 1 ]] || fail "expected one bar line redrawn in place, found $bars"
screen | grep -qE '\[#{20}\] 100% stage 2/2 s2  step 8/8  loss [0-9.]+  [0-9]+ tok/s  ETA [0-9]+s \(stage [0-9]+s\)' ||
    fail "the last bar: stage 2/2, step 8/8, loss, tok/s, run and stage ETA"
screen | grep -qF "  [s1] held-out at 8:" || fail "held-out lines stay above the bar"
screen | grep -qF "[s1] step" && fail "per-step log lines on a terminal"
screen | grep -qF "distillation done: $tmp/out" || fail "no summary"

T kill-session -t run
rm -rf "$tmp/out"
T new-session -d -s run -x 150 -y 50 "OMP_NUM_THREADS=2 $HYB distill --quiet $tmp/r.toml $tmp/out; echo RUN-EXIT-\$?; sleep 30"
wait_for "RUN-EXIT-" 120 || fail "distill --quiet did not finish"
[[ $(screen | sed '/^$/d' | grep -vc "RUN-EXIT-0") == 2 ]] || fail "--quiet: the two summary lines only"
screen | grep -F "distillation done: $tmp/out" | grep -qF "(2 stages, 16 steps" || fail "--quiet: no summary"

[[ $fails == 0 ]] && echo "progress_tmux: all checks passed"
exit $((fails > 0))
