#!/usr/bin/env bash
# scripts/test.sh: the test command (also what CI runs through .ci/run). Installs what is
# missing, builds, fetches the default model for the `model` tests, and runs ctest:
#   unit  - everything that needs neither the model nor a GPU
#   model - needs the default model (scripts/fetch_model.sh; HYB_MODEL points at it)
#   cuda  - GPU tests; each skips with a message when no GPU is present
#
#   scripts/test.sh                 # everything
#   HYB_NO_MODEL=1 scripts/test.sh  # no download: the model tests skip
#   HYB_TEST_LABELS=unit scripts/test.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HYB_BUILD_DIR:-$root/build}

"$root/scripts/build.sh"
if [[ "${HYB_NO_MODEL:-0}" != 1 ]]; then
    HYB_MODEL=$("$root/scripts/fetch_model.sh")
    export HYB_MODEL
fi
ctest --test-dir "$build" --output-on-failure -j "${HYB_TEST_JOBS:-2}" \
      -L "${HYB_TEST_LABELS:-unit|model|cuda}"
