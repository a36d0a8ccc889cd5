#!/bin/sh
# bench/quant_bench.sh: build bench/quant_bench.c against the Release build and run it on the
# default model (issue 22: quantized decode speed and accuracy against the f32 computation).
#   bench/quant_bench.sh [POSITIONS [STEPS [ROUNDS [JSON]]]]
# Environment: HYB_BUILD_DIR (default build), HYB_MODEL (default: scripts/fetch_model.sh),
# QUANT_TEXT (default: examples/data/garden.txt + apache-2.0.txt), OMP_NUM_THREADS (default 2).
# hyb's paths against each other and against the f32 computation (activation roundings g4..g32);
# the comparison with llama.cpp is bench/llama_compare.sh.
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
"$B/quant_bench" "$MODEL" "$TEXT" "$@"
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
done
