#!/usr/bin/env bash
# scripts/test.sh: the test command (also what CI runs through .ci/run). Installs what is
# missing, builds, fetches the default model for the `model` tests, and runs ctest:
#   unit  - everything that needs neither the model nor a GPU
#   model - needs the default model (scripts/fetch_model.sh; HYB_MODEL points at it)
#   cuda  - GPU tests; each skips with a message when no GPU is present
# then, in three steps that can each be turned off:
#   asan  - the same suite built with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/;
#           any report fails the test); the model tests that take minutes under ASan are left
#           out: $HYB_ASAN_EXCLUDE (default: model_teacher, lua_model_generate, lua_model_bench,
#           serve_curl; serve_openai runs the server under ASan, leak check at its exit included)
#   fuzz  - each libFuzzer target of tests/fuzz/ for $HYB_FUZZ_SECONDS (default 10) seconds
#           from the seeds in the repository (scripts/fuzz.sh; skips with a message when clang or
#           libFuzzer is missing)
#
#   scripts/test.sh                 # everything
#   HYB_NO_MODEL=1 scripts/test.sh  # no download: the model tests skip
#   HYB_TEST_LABELS=unit scripts/test.sh
#   HYB_TEST_ASAN=0 HYB_TEST_FUZZ=0 scripts/test.sh   # the plain build's suite only
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HYB_BUILD_DIR:-$root/build}
asan=${HYB_ASAN_BUILD_DIR:-$root/build-asan}
labels=${HYB_TEST_LABELS:-unit|model|cuda}
step() { echo "== test.sh: $* ($(date -u +%H:%M:%S))"; }

step "build ($build)"
"$root/scripts/build.sh"
if [[ "${HYB_NO_MODEL:-0}" != 1 ]]; then
    HYB_MODEL=$("$root/scripts/fetch_model.sh")
    export HYB_MODEL
fi
step "ctest -L '$labels'"
ctest --test-dir "$build" --output-on-failure -j "${HYB_TEST_JOBS:-2}" -L "$labels"

if [[ "${HYB_TEST_ASAN:-1}" == 1 ]]; then
    step "ASan + UBSan build ($asan)"
    HYB_BUILD_DIR=$asan CMAKE_BUILD_TYPE=RelWithDebInfo "$root/scripts/build.sh" -DHYB_SANITIZE=ON
    # test_cuda_nvrtc: NVRTC compiling every kernel for two archs is the same work (minutes, not
    # instrumented) as in the normal run above. model_kvcache (3.5 min under ASan): its KV-cache
    # conversions run under ASan in test_mha_kv and test_mixers' per-type rows
    exclude=${HYB_ASAN_EXCLUDE-model_teacher|model_kvcache|lua_model_generate|lua_model_bench|serve_curl|test_cuda_nvrtc}
    step "ASan + UBSan ctest -L '$labels'${exclude:+ -E '$exclude' (minutes each under ASan)}"
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
        ctest --test-dir "$asan" --output-on-failure -j "${HYB_TEST_JOBS:-2}" -L "$labels" \
        ${exclude:+-E "$exclude"}
fi

if [[ "${HYB_TEST_FUZZ:-1}" == 1 ]]; then
    step "fuzz targets, ${HYB_FUZZ_SECONDS:-10} s each"
    HYB_FUZZ_SECONDS=${HYB_FUZZ_SECONDS:-10} "$root/scripts/fuzz.sh"
fi
step "done"
