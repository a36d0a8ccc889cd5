#!/bin/sh
# bench/quant_bench.sh: build bench/quant_bench.c against the Release build and run it on the
# default model (issue 22: quantized decode speed and accuracy against the f32 computation).
#   bench/quant_bench.sh [POSITIONS [STEPS [ROUNDS [JSON]]]]
# Environment: HYB_BUILD_DIR (default build), HYB_MODEL (default: scripts/fetch_model.sh),
# QUANT_TEXT (default: examples/data/garden.txt + apache-2.0.txt), OMP_NUM_THREADS (default 2),
# QUANT_LLAMA=1: also llama.cpp on the same file and thread count (llama-cpp-python and numpy
# installed into .venv-bench on first use, compiled from PyPI's sdist: long on 2 cores): decode
# rounds interleaved with hyb's, and its KL / top-1 against hyb's f32 logits. llama.cpp runs with
# OMP_WAIT_POLICY=passive, as hyb does (its default active spinning measured 1.7-8 tok/s against
# 36 passive on the busy 2-core machine). QUANT_LLAMA_PYTHONPATH: a llama_cpp package to use
# instead of the pip install (e.g. one whose lib/ holds an already built libllama).
set -eu
cd "$(dirname "$0")/.."
B=${HYB_BUILD_DIR:-build}
MODEL=${HYB_MODEL:-$(scripts/fetch_model.sh | tail -1)}
TEXT=${QUANT_TEXT:-}
if [ -z "$TEXT" ]; then
  TEXT=$B/quant_text.txt
  cat examples/data/garden.txt examples/data/apache-2.0.txt > "$TEXT"
fi
gcc -O2 -fopenmp -Icore/include -Icore bench/quant_bench.c "$B/libhyb_core.a" \
  $(pkg-config --libs openblas tomlplusplus libpcre2-8 libcjson) -lstdc++ -ldl -lm \
  -o "$B/quant_bench"
mkdir -p bench/results
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HYB_PLUGIN_PATH=${HYB_PLUGIN_PATH:-$B/plugins}
[ "${QUANT_LLAMA:-0}" = 1 ] && export QUANT_DUMP=$B/quant_ref.bin
"$B/quant_bench" "$MODEL" "$TEXT" "$@"
if [ "${QUANT_LLAMA:-0}" = 1 ]; then
  PY=.venv-bench/bin/python
  [ -x "$PY" ] || python3 -m venv .venv-bench
  if [ -n "${QUANT_LLAMA_PYTHONPATH:-}" ]; then
    export PYTHONPATH=$QUANT_LLAMA_PYTHONPATH LD_LIBRARY_PATH=$QUANT_LLAMA_PYTHONPATH/llama_cpp/lib
  fi
  "$PY" -c "import llama_cpp, numpy" 2>/dev/null || .venv-bench/bin/pip install -q numpy llama-cpp-python
  STEPS=${2:-32}
  ROUNDS=${3:-5}
  echo
  echo "hyb and llama.cpp decode, $STEPS steps after a 32-token prompt, rounds in turn:"
  r=1
  while [ "$r" -le "$ROUNDS" ]; do
    QUANT_DUMP= "$B/quant_bench" "$MODEL" "$TEXT" 0 "$STEPS" 1 "$B/quant_round.json" 2>/dev/null |
      grep -E "^(f32|precise|fast) " | sed "s/^/  round $r hyb /"
    OMP_WAIT_POLICY=passive "$PY" bench/quant_llama.py "$MODEL" "$STEPS" 1 | sed "s/^/  round $r /"
    r=$((r + 1))
  done
  OMP_WAIT_POLICY=passive "$PY" bench/quant_llama.py "$MODEL" "$STEPS" 0 "$QUANT_DUMP" | tail -1
fi
# peak resident memory of a whole `hyb generate` (load + 16 tokens) per mode, two rounds in turn
echo
echo "peak RSS of hyb generate (load + 16 tokens), MB:"
for round in 1 2; do
  for mode in off precise fast; do
    HYB_QUANT=$mode /usr/bin/time -o "$B/quant_rss.txt" -f "%M" "$B/hyb" generate \
      --model "$MODEL" --max-tokens 16 --temperature 0 "The garden in spring" > /dev/null 2>&1
    kb=$(tail -1 "$B/quant_rss.txt")
    printf "  round %d  %-8s %s\n" "$round" "$mode" "$(( kb / 1024 ))"
  done
  if [ "${QUANT_LLAMA:-0}" = 1 ]; then # the python process (numpy included), 16 decode steps
    OMP_WAIT_POLICY=passive /usr/bin/time -o "$B/quant_rss.txt" -f "%M" .venv-bench/bin/python \
      bench/quant_llama.py "$MODEL" 16 1 > /dev/null 2>&1
    printf "  round %d  %-8s %s\n" "$round" "llama.cpp" "$(( $(tail -1 "$B/quant_rss.txt") / 1024 ))"
  fi
done
