#!/usr/bin/env bash
# tests/repl_tmux.sh HYB: the interactive prompt driven as a user would, through a real terminal
# (tmux): load the default model, Tab-complete a method, print a generation, survive an error
# line, keep a multi-line statement, leave on Ctrl-D. Skips (77) without the model or tmux.
set -uo pipefail
HYB=${1:?usage: repl_tmux.sh HYB}
MODEL=${HYB_MODEL:-$HOME/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[[ -r "$MODEL" ]] || { echo "skipped: $MODEL not found"; exit 77; }
command -v tmux >/dev/null || { echo "tmux is missing (scripts/bootstrap.sh installs it)"; exit 1; }
tmp=$(mktemp -d)
sock="$tmp/tmux.sock"
T() { tmux -S "$sock" "$@"; }
cleanup() { T kill-server 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; echo "--- screen:"; T capture-pane -p -t repl 2>/dev/null | sed '/^$/d'; fails=$((fails + 1)); }
screen() { T capture-pane -p -J -S -200 -t repl; }
# wait_for TEXT SECONDS: until the screen holds TEXT
wait_for() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        screen | grep -qF -- "$1" && return 0
        sleep 0.1
    done
    return 1
}

T new-session -d -s repl -x 180 -y 50 "HYB_HISTORY=$tmp/history OMP_NUM_THREADS=2 $HYB; echo REPL-EXIT-\$?; sleep 30"
wait_for "Ctrl-D leaves" 10 || fail "no banner"
T send-keys -t repl "m = hyb.llm(\"$MODEL\", {max_ctx = 128})" Enter
T send-keys -t repl '=m:max_ctx() + 1000' Enter
wait_for "1128" 60 || fail "model did not load"
# Tab completes a method name through the userdata's metatable
T send-keys -t repl 'r = m:gen' Tab
wait_for "r = m:generate" 5 || fail "Tab did not complete m:gen -> m:generate"
T send-keys -t repl '(m:encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"), {max_tokens = 12})' Enter
T send-keys -t repl 'r.text' Enter
wait_for '"The capital of France is Paris."' 60 || fail "generation not printed"
# an error is one line and the session goes on
T send-keys -t repl 'error("deliberate 17")' Enter
wait_for "deliberate 17" 5 || fail "error line not shown"
screen | grep -q "stack traceback" && fail "a traceback was printed"
# a statement over several lines, then an expression after it
T send-keys -t repl -l 'for i = 1, 3 do'
T send-keys -t repl Enter
T send-keys -t repl -l 'acc = (acc or 0) + i'
T send-keys -t repl Enter
T send-keys -t repl -l 'end' # -l: literally (tmux reads a bare "end" as the End key)
T send-keys -t repl Enter
T send-keys -t repl -l '=acc * 7'
T send-keys -t repl Enter
wait_for "42" 5 || fail "multi-line statement"
# history was kept: up-arrow recalls the last line
T send-keys -t repl Up
wait_for "> =acc * 7" 5 || fail "history (Up) did not recall the last line"
T send-keys -t repl C-u
# Ctrl-D leaves with status 0
T send-keys -t repl C-d
wait_for "REPL-EXIT-0" 10 || fail "Ctrl-D did not end the prompt with status 0"
# (libedit's history file escapes spaces)
grep -qF "deliberate" "$tmp/history" || fail "history file not written"
if ((fails)); then
    echo "$fails check(s) failed"
    exit 1
fi
echo "repl through a terminal: load, Tab completion, generation, error, multi-line, history, Ctrl-D: ok"
