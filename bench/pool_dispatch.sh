#!/usr/bin/env bash
# bench/pool_dispatch.sh: build bench/pool_dispatch.c against the Release build (build/ or
# $HYB_BUILD_DIR) and print the cost of one parallel dispatch: hyb's pool (spinning as shipped,
# and HYB_POOL_SPIN_US=0: sleep at once) against OpenMP regions under OMP_WAIT_POLICY=passive
# (what runtime/main.c sets) and active. One JSON line per configuration; say the load beside it.
#   bench/pool_dispatch.sh [threads=2]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=${HYB_BUILD_DIR:-$root/build}
T=${1:-2}
cd "$root"
gcc -O2 -fopenmp -Icore/include -Icore bench/pool_dispatch.c "$B/libhyb_core.a" \
  $(pkg-config --libs openblas tomlplusplus libpcre2-8 libcjson) -lstdc++ -ldl -lm \
  -o "$B/pool_dispatch"
echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/')"
for r in 1 2; do
  OMP_NUM_THREADS=$T OMP_WAIT_POLICY=passive "$B/pool_dispatch"
  OMP_NUM_THREADS=$T OMP_WAIT_POLICY=active "$B/pool_dispatch"
  OMP_NUM_THREADS=$T OMP_WAIT_POLICY=passive HYB_POOL_SPIN_US=0 "$B/pool_dispatch"
done
echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/')"
