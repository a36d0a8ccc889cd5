#!/usr/bin/env bash
# scripts/fuzz.sh: build the libFuzzer targets (tests/fuzz/fuzz_*.c, clang + ASan + UBSan) into
# build-fuzz/ (or $HYB_FUZZ_BUILD_DIR) and run each from its seeds (the files tests/fuzz/CMakeLists
# names: tests/fuzz/corpus/<name>/, graphs/, tests/data/...).
#
#   scripts/fuzz.sh                      # 10M executions per target (hours on 2 cores)
#   HYB_FUZZ_RUNS=200000 scripts/fuzz.sh # fewer executions
#   HYB_FUZZ_SECONDS=10 scripts/fuzz.sh  # a time limit per target instead (CI: scripts/test.sh)
#   scripts/fuzz.sh gguf tokenizer       # only these targets
#
# Each target runs on a scratch corpus (build-fuzz/fuzz-corpus/<name>, seeded from the repository's
# seeds; new inputs stay there, the repository is not touched). A crash, leak or UB report stops
# with status 1 and leaves the input in build-fuzz/fuzz-artifacts/. Prints one line per target:
# executions, seconds, executions/s, corpus size. Without clang or libFuzzer it prints why and
# exits 0 (skipped), so CI never fails for a missing optional tool: `scripts/bootstrap.sh --fuzz`
# installs them (clang, libclang-rt-dev).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HYB_FUZZ_BUILD_DIR:-$root/build-fuzz}
targets=("$@")
((${#targets[@]})) || targets=(chattemplate gguf hfconfig layermap safetensors tokenizer)

"$root/scripts/bootstrap.sh" --fuzz || true
cc=$(command -v clang || true)
cxx=$(command -v clang++ || true)
if [[ -z "$cc" || -z "$cxx" ]]; then
    echo "fuzz: SKIPPED: clang/clang++ not found (scripts/bootstrap.sh --fuzz installs them)"
    exit 0
fi
probe=$(mktemp -d "${TMPDIR:-/tmp}/hyb-fuzz-probe.XXXXXX")
printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' >"$probe/p.c"
if ! "$cc" -fsanitize=fuzzer "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; then
    rm -rf "$probe"
    echo "fuzz: SKIPPED: $cc cannot link -fsanitize=fuzzer (libFuzzer missing: libclang-rt-dev)"
    exit 0
fi
rm -rf "$probe"

mkdir -p "$build"
blog=$build/fuzz-build.log
if ! { CC=$cc CXX=$cxx cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
           -DHYB_FUZZ=ON --log-level=WARNING &&
       cmake --build "$build" -j "${HYB_JOBS:-$(nproc)}" --target "${targets[@]/#/fuzz_}"; } \
       >"$blog" 2>&1; then
    tail -30 "$blog"
    echo "fuzz: the build failed (log: $blog)"
    exit 1
fi

art=$build/fuzz-artifacts
mkdir -p "$art"
status=0
for t in "${targets[@]}"; do
    bin=$build/tests/fuzz/fuzz_$t
    corpus=$build/fuzz-corpus/$t
    mkdir -p "$corpus"
    # the seeds: files and directories, "--prefix=B" prepends byte B to those after it
    prefix=""
    n=0
    while IFS= read -r s; do
        [[ -z "$s" ]] && continue
        if [[ "$s" == --prefix=* ]]; then
            prefix=${s#--prefix=}
            continue
        fi
        while IFS= read -r -d '' f; do
            n=$((n + 1))
            out="$corpus/seed-$(printf '%04d' "$n")-$(basename "$f")"
            if [[ -n "$prefix" ]]; then
                { printf "\\$(printf '%03o' "$prefix")"; cat "$f"; } >"$out"
            else
                cp "$f" "$out"
            fi
        done < <(find "$s" -type f -print0 | sort -z)
    done <"$bin.seeds"
    if [[ -n "${HYB_FUZZ_SECONDS:-}" ]]; then
        limit=(-max_total_time="$HYB_FUZZ_SECONDS")
    else
        limit=(-runs="${HYB_FUZZ_RUNS:-10000000}")
    fi
    log=$build/fuzz-$t.log
    t0=$(date +%s.%N)
    if (cd "$root" && HYB_TEST_DATA="$root/tests/data" ASAN_OPTIONS=detect_leaks=1 \
            "$bin" "${limit[@]}" -max_len=65536 -timeout=30 -rss_limit_mb=3072 \
            -artifact_prefix="$art/$t-" -print_final_stats=1 "$corpus" >"$log" 2>&1); then
        rc=0
    else
        rc=$?
    fi
    t1=$(date +%s.%N)
    runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    rate=$(awk -v r="${runs:-0}" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0) ? r / s : 0 }')
    size=$(find "$corpus" -type f | wc -l)
    if ((rc == 0)); then
        echo "fuzz_$t: ${runs:-0} executions in $secs s ($rate/s), $n seeds, corpus $size: no crash"
    else
        echo "fuzz_$t: FAILED (status $rc) after ${runs:-?} executions; log $log, input in $art/"
        grep -a -m 20 -E 'ERROR|runtime error|SUMMARY|#[0-9] ' "$log" || tail -20 "$log"
        status=1
    fi
done
exit "$status"
