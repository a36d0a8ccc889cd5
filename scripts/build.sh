#!/usr/bin/env bash
# scripts/build.sh: install what is missing (scripts/bootstrap.sh), configure and build into
# build/ (or $HYB_BUILD_DIR). Extra arguments go to cmake's configure step:
#
#   scripts/build.sh                       # Release build in build/
#   scripts/build.sh -DHYB_SANITIZE=ON     # e.g. ASan + UBSan (use another HYB_BUILD_DIR)
#   HYB_JOBS=8 scripts/build.sh            # parallel jobs (default: nproc)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HYB_BUILD_DIR:-$root/build}

"$root/scripts/bootstrap.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" --log-level=WARNING "$@"
cmake --build "$build" -j "${HYB_JOBS:-$(nproc)}"
