#!/usr/bin/env bash
# scripts/setup.sh: the one command for a new user. Installs what is missing, builds, fetches
# the default model, then runs the main job (for now: train the tiny byte-level model on the CPU).
#
#   scripts/setup.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HYB_BUILD_DIR:-$root/build}

"$root/scripts/build.sh"
HYB_MODEL=$("$root/scripts/fetch_model.sh")
export HYB_MODEL
echo "setup: default model at $HYB_MODEL" >&2

if [[ ! -x "$build/hyb" ]]; then
    echo "setup: $build/hyb was not built (runtime/ missing?)" >&2
    exit 1
fi
cd "$root"
echo "setup: running: hyb run examples/tiny_train.lua" >&2
exec "$build/hyb" run examples/tiny_train.lua "$@"
