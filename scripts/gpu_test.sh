#!/usr/bin/env bash
# scripts/gpu_test.sh: ONE command for a GPU machine with no package registry (the lent H100/H200):
# unpack the .debs collected by scripts/gpu_carry.sh into a private prefix (dpkg -x: no root, no
# apt), configure and build hyb against them, run the `cuda` tests on the GPU (a skip fails), then
# the GPU benchmarks (bench/gpu_bench.c, bench/gpu_torch_ref.py), all inside HYB_GPU_BUDGET seconds
# (default 480), fetching nothing. JSON goes to bench/gpu-results/ (HYB_GPU_RESULTS), logs to
# $HYB_GPU_BUILD/*.log, and a table to stdout (the last lines).
#
#   scripts/gpu_test.sh [DEBS_DIR=.debs]
#   HYB_GPU_SMOKE=1 scripts/gpu_test.sh       # here, without a GPU: the same steps on the CUDA
#                                             # emulation at tiny sizes (label cuda-emu tests)
#
# On the device machine (the `run` tool), with `.debs` in carry:
#   scripts/gpu_test.sh 2>&1 | tee $OUT/gpu_test.log; cp -r bench/gpu-results $OUT/
#
# Environment:
#   HYB_GPU_PREFIX   where the packages are unpacked (default .gpu-prefix; re-created each run)
#   HYB_GPU_BUILD    the build directory (default build-gpu)
#   HYB_GPU_STEPS    all (default: build, test, bench) | configure (stop after unpacking +
#                    configuring, to check the carried packages on a machine without a GPU) |
#                    test (build + tests, no benchmarks) | bench (build + benchmarks, no tests)
#   HYB_GPU_REQUIRE  1 (default): fail when a `cuda` test was skipped (no GPU found), so a GPU run
#                    can never pass by skipping; 0: allow skipping
#   HYB_GPU_LABELS   ctest label regex (default '^cuda$'; smoke: '^cuda-emu$')
#   HYB_GPU_BUDGET   seconds for the whole script (default 480); each step gets what is left
#   HYB_GPU_RESULTS  where the benchmark JSON goes (default bench/gpu-results)
#   HYB_GPU_MODEL    the default model's GGUF (default $HOME/.cache/hyb/models/SmolLM2-135M-
#                    Instruct.Q4_1.gguf; 98 MB, more than the 64 MiB that travels to the device
#                    machine: without it the decode benchmark uses the same shapes with random
#                    weights, graphs/smollm2-135m.toml, and says so)
#   HYB_GPU_BENCH_ARGS  extra options for bench/gpu_bench (e.g. "--serve-layers 50")
#   HYB_GPU_SMOKE    1: emulation (HYB_CUDA_EMULATE=1), tiny sizes, mixers without CUDA kernels
#                    on their CPU kernels; the .debs are optional (this machine has the libraries)
#   CUDA_HOME        the CUDA toolkit: its include/ is needed to compile the CUDA backend, its
#                    lib64/libnvrtc* and libcublas* at run time (default /usr/local/cuda)
#   JOBS             parallel build jobs (default: nproc)
set -euo pipefail

t_start=$(date +%s)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
debs=$(realpath -m "${1:-.debs}")
prefix=$(realpath -m "${HYB_GPU_PREFIX:-.gpu-prefix}")
build=$(realpath -m "${HYB_GPU_BUILD:-build-gpu}")
steps=${HYB_GPU_STEPS:-all}
smoke=${HYB_GPU_SMOKE:-0}
budget=${HYB_GPU_BUDGET:-480}
results=$(realpath -m "${HYB_GPU_RESULTS:-bench/gpu-results}")
if [[ "$smoke" == 1 ]]; then
    labels=${HYB_GPU_LABELS:-^cuda-emu\$}
    export HYB_CUDA_EMULATE=1
else
    labels=${HYB_GPU_LABELS:-^cuda\$}
fi
jobs=${JOBS:-$(nproc 2>/dev/null || echo 4)}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
left() { local l=$((budget - ($(date +%s) - t_start))); ((l > 1)) || l=1; echo "$l"; }
say() { echo "gpu_test [$(($(date +%s) - t_start))s]: $*"; }
status=0

# ---- 1. unpack -----------------------------------------------------------------------------------
if compgen -G "$debs/*.deb" >/dev/null; then
rm -rf "$prefix"
mkdir -p "$prefix"
n=0
for f in "$debs"/*.deb; do
    if command -v dpkg-deb >/dev/null; then
        dpkg-deb -x "$f" "$prefix"
    else # no dpkg: a .deb is an ar archive holding data.tar.{xz,zst,gz}
        member=$(ar t "$f" | grep '^data\.tar')
        case "$member" in
            *.xz) ar p "$f" "$member" | tar -xJ -C "$prefix" ;;
            *.zst) ar p "$f" "$member" | zstd -dc | tar -x -C "$prefix" ;;
            *.gz) ar p "$f" "$member" | tar -xz -C "$prefix" ;;
            *) ar p "$f" "$member" | tar -x -C "$prefix" ;;
        esac
    fi
    n=$((n + 1))
done
say "unpacked $n packages into $prefix"

# .pc files name /usr: point them into the prefix
find "$prefix" -name '*.pc' -type f -print0 |
    xargs -0 -r sed -i -e "s#=/usr/#=$prefix/usr/#g" -e "s#=/usr\$#=$prefix/usr#g" \
                       -e "s#-I/usr/#-I$prefix/usr/#g" -e "s#-L/usr/#-L$prefix/usr/#g"

# Run-time libraries: only the sonames this machine lacks, through one directory of links (so the
# carried copies never shadow the system's own libraries, e.g. for the compiler).
libdirs=("$prefix/usr/lib/$multiarch" "$prefix/usr/lib/$multiarch/openblas-pthread"
         "$prefix/lib/$multiarch" "$prefix/usr/lib")
ldpath="$prefix/ldpath"
mkdir -p "$ldpath"
have=$(ldconfig -p 2>/dev/null | awk '{print $1}' | sort -u)
for d in "${libdirs[@]}"; do
    [[ -d "$d" ]] || continue
    for so in "$d"/*.so.*; do
        [[ -e "$so" ]] || continue
        name=$(basename "$so")
        grep -qx -- "$name" <<<"$have" && continue
        [[ -e "$ldpath/$name" ]] || ln -s "$so" "$ldpath/$name"
    done
done
# OpenMPI carried (scripts/gpu_carry.sh) and none here: its libraries, wrappers and mpirun from
# the prefix (OPAL_PREFIX relocates Debian's /usr build)
mpi_cmake=()
if ! command -v mpirun >/dev/null && [[ -x "$prefix/usr/bin/mpicc.openmpi" ]]; then
    export OPAL_PREFIX="$prefix/usr" # (libmpi.so.40 and its peers are linked into $ldpath above)
    mkdir -p "$prefix/bin"
    ln -sf "$prefix/usr/bin/mpirun.openmpi" "$prefix/bin/mpirun"
    ln -sf "$prefix/usr/bin/mpicc.openmpi" "$prefix/bin/mpicc"
    export PATH="$prefix/bin:$prefix/usr/bin:$PATH"
    mpi_cmake=(-DMPI_C_COMPILER="$prefix/usr/bin/mpicc.openmpi")
    say "OpenMPI from the prefix (OPAL_PREFIX=$OPAL_PREFIX)"
fi
export LD_LIBRARY_PATH="$ldpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH="$prefix/usr/lib/$multiarch/pkgconfig:$prefix/usr/lib/$multiarch/openblas-pthread/pkgconfig:$prefix/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
elif [[ "$smoke" == 1 ]]; then
    say "no .deb files in $debs: using this machine's libraries (smoke mode)"
else
    echo "gpu_test: no .deb files in $debs (run scripts/gpu_carry.sh here and name .debs in carry)" >&2
    exit 1
fi
# carried tools (cmake, pkg-config) only when this machine has none
cmake_bin=$(command -v cmake || true)
[[ -z "$cmake_bin" && -x "$prefix/usr/bin/cmake" ]] && cmake_bin="$prefix/usr/bin/cmake"
[[ -n "$cmake_bin" ]] || { echo "gpu_test: no cmake here and none carried (HYB_CARRY_TOOLS=1 scripts/gpu_carry.sh)" >&2; exit 1; }
ctest_bin=$(dirname "$cmake_bin")/ctest
pkgconf_bin=$(command -v pkg-config || true)
[[ -z "$pkgconf_bin" && -x "$prefix/usr/bin/pkgconf" ]] && pkgconf_bin="$prefix/usr/bin/pkgconf"
say "cmake $cmake_bin, pkg-config ${pkgconf_bin:-none}, CUDA_HOME $CUDA_HOME"
for h in cuda.h nvrtc.h; do
    [[ -f "$CUDA_HOME/include/$h" ]] || {
        echo "gpu_test: no $CUDA_HOME/include/$h: the CUDA backend cannot be compiled (set CUDA_HOME)" >&2
        exit 1
    }
done
# cuBLAS's headers: the toolkit's, else those of Python's nvidia-cublas wheel, merged with the
# toolkit's into a CUDA_HOME of links (lib64 stays the toolkit's)
if [[ ! -f "$CUDA_HOME/include/cublas_v2.h" ]]; then
    hdr=$(find /usr/local /opt /usr/lib /usr/include -name cublas_v2.h -path '*include*' 2>/dev/null | head -1)
    [[ -n "$hdr" ]] || { echo "gpu_test: no cublas_v2.h in $CUDA_HOME/include or elsewhere: cannot compile the CUDA backend" >&2; exit 1; }
    merged="$prefix/cuda-home"
    rm -rf "$merged" && mkdir -p "$merged/include"
    ln -s "$CUDA_HOME/include/"* "$merged/include/"
    for f in "$(dirname "$hdr")"/*; do [[ -e "$merged/include/$(basename "$f")" ]] || ln -s "$f" "$merged/include/"; done
    [[ -d "$CUDA_HOME/lib64" ]] && ln -s "$CUDA_HOME/lib64" "$merged/lib64"
    say "cuBLAS headers from $(dirname "$hdr") (merged into $merged)"
    export CUDA_HOME="$merged"
fi
# NVRTC, cuBLAS and NCCL at run time: the loader path, then $CUDA_HOME/lib64; else the copies
# inside Python's nvidia-* wheels, when that is where this machine has them
if [[ "$smoke" != 1 ]]; then
    for lib in libnvrtc.so libcublas.so libnccl.so; do
        if ! ldconfig -p 2>/dev/null | grep -q "$lib\." && ! compgen -G "$CUDA_HOME/lib64/$lib.*" >/dev/null; then
            d=$(find /usr/local /opt /usr/lib -name "$lib.1[0-9]*" 2>/dev/null | head -1)
            [[ -n "$d" ]] || d=$(find /usr/local /opt /usr/lib -name "$lib.[0-9]*" 2>/dev/null | head -1)
            if [[ -n "$d" ]]; then
                export LD_LIBRARY_PATH="$(dirname "$d")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
                say "$lib from $(dirname "$d")"
            else
                echo "gpu_test: warning: no $lib found (loader path, $CUDA_HOME/lib64, elsewhere)" >&2
            fi
        fi
    done
fi

# ---- 2. configure --------------------------------------------------------------------------------
mkdir -p "$build"
if ! "$cmake_bin" -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release ${mpi_cmake[@]+"${mpi_cmake[@]}"} \
        ${pkgconf_bin:+-DPKG_CONFIG_EXECUTABLE="$pkgconf_bin"} > "$build/configure.log" 2>&1; then
    cat "$build/configure.log" >&2
    echo "gpu_test: configure failed (log: $build/configure.log)" >&2
    exit 1
fi
grep -E '^-- (hyb|Checking for module|  Found)' "$build/configure.log" || true
# show where each dependency was found (they must come from the prefix or the system)
grep -E '^(LUA|OPENBLAS|TOMLPP|PCRE2|CJSON)_(INCLUDE_DIRS|LINK_LIBRARIES):' "$build/CMakeCache.txt" | sed 's/^/  /'
grep -q 'data-parallel training compiled in' "$build/configure.log" && have_mpi=1 || have_mpi=0
grep -q 'CUDA backend compiled in' "$build/configure.log" ||
    { echo "gpu_test: configured WITHOUT the CUDA backend (see $build/configure.log)" >&2; exit 1; }
[[ "$steps" == configure ]] && { say "configured in $build (HYB_GPU_STEPS=configure: stopping)"; exit 0; }

# ---- 3. build: the tests of the label, the benchmark, the plugins ---------------------------------
mapfile -t tests < <("$ctest_bin" --test-dir "$build" -N -L "$labels" | sed -n 's/^ *Test *#[0-9]*: *//p')
if [[ "$smoke" == 1 ]]; then
    targets=(all) # the emulation tests use many executables (and the emulation library)
else
    # tests/cuda_*.c: the ctest name is the executable's name
    targets=(gpu_bench hyb)
    for t in "${tests[@]}"; do
        [[ -f "tests/$t.c" ]] && targets+=("$t")
    done
fi
mapfile -t targets < <(printf '%s\n' "${targets[@]}" | sort -u)
say "building ${targets[*]} (-j$jobs)"
if ! timeout "$(left)" "$cmake_bin" --build "$build" -j"$jobs" --target "${targets[@]}" > "$build/build.log" 2>&1; then
    tail -50 "$build/build.log" >&2
    echo "gpu_test: build failed or ran out of time (log: $build/build.log)" >&2
    exit 1
fi
say "built"
gpu_name=unknown
if [[ "$smoke" == 1 ]]; then
    gpu_name="emulated (HYB_CUDA_EMULATE=1)"
elif command -v nvidia-smi >/dev/null; then
    nvidia-smi -L || true
    gpu_name=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo unknown)
else
    say "nvidia-smi not found"
fi
export HYB_GPU_NAME="$gpu_name"

# ---- 4. the tests ---------------------------------------------------------------------------------
if [[ "$steps" == all || "$steps" == test ]]; then
    say "ctest -L '$labels' (${#tests[@]} tests)"
    set +e
    timeout "$(left)" "$ctest_bin" --test-dir "$build" -L "$labels" --output-on-failure -j"$jobs" 2>&1 | tee "$build/ctest.log"
    rc=${PIPESTATUS[0]}
    set -e
    [[ "$rc" == 0 ]] || { say "tests FAILED (status $rc)"; status=1; }
    if [[ "${HYB_GPU_REQUIRE:-1}" == 1 ]] && grep -qE 'Skipped|Not Run' "$build/ctest.log"; then
        echo "gpu_test: a test was SKIPPED (no GPU/driver found?): failing (HYB_GPU_REQUIRE=1)" >&2
        status=1
    fi
    [[ "${#tests[@]}" -gt 0 ]] || { echo "gpu_test: no test has the label '$labels'" >&2; status=1; }
    # NCCL for distillation's gradients (docs/DISTRIBUTED.md): under mpirun, hyb_comm_grads(cuda)
    # is the NCCL comm and sums a device buffer on the GPU (cuda_comm_grads nccl; ctest ran its
    # one-process mode). A build without MPI cannot: that fails the run (HYB_GPU_REQUIRE=1).
    if [[ "$smoke" != 1 ]]; then
        if [[ "$have_mpi" == 1 ]] && command -v mpirun >/dev/null; then
            say "NCCL: mpirun -np 1 cuda_comm_grads nccl"
            set +e
            OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent=false \
                timeout $(( $(left) > 120 ? 120 : $(left) )) mpirun -np 1 --oversubscribe \
                "$build/tests/cuda_comm_grads" nccl 2>&1 | tee "$build/nccl.log"
            rc=${PIPESTATUS[0]}
            set -e
            if [[ "$rc" == 0 ]] && grep -q "device floats summed on nccl, exact" "$build/nccl.log"; then
                say "NCCL under mpirun: ok"
            else
                say "NCCL under mpirun FAILED (status $rc, log $build/nccl.log)"; status=1
            fi
        else
            say "NCCL under mpirun: NOT RUN (hyb built without MPI, or no mpirun: scripts/gpu_carry.sh carries OpenMPI)"
            [[ "${HYB_GPU_REQUIRE:-1}" == 1 ]] && status=1
        fi
    fi
fi

# ---- 5. the benchmarks ----------------------------------------------------------------------------
if [[ "$steps" == all || "$steps" == bench ]]; then
    mkdir -p "$results"
    rm -f "$results"/gpu-*.json "$results"/torch.json
    bench=("$build/tests/gpu_bench" --out "$results")
    if [[ "$smoke" == 1 ]]; then
        bench+=(--smoke --emu-cpu-mixers)
    else
        model=${HYB_GPU_MODEL:-${HYB_CACHE:-$HOME/.cache/hyb}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
        if [[ -f "$model" ]]; then
            bench+=(--model "$model")
        else
            say "decode: $model is not here (98 MB: more than the 64 MiB that travels to the device machine); the decode benchmark uses the same shapes with random weights (graphs/smollm2-135m.toml)"
        fi
    fi
    # shellcheck disable=SC2206
    bench+=(${HYB_GPU_BENCH_ARGS:-})
    export HYB_PLUGIN_PATH="$build/plugins" OMP_NUM_THREADS=${OMP_NUM_THREADS:-$jobs}
    # the short ones first; serve last with what is left (PyTorch before it, ~1 min)
    for b in copy scan decode distill graph; do
        say "bench $b"
        timeout "$(left)" "${bench[@]}" "$b" 2>&1 | tee -a "$build/bench.log" || status=1
    done
    say "PyTorch reference"
    pyargs=(--out "$results/torch.json" --reps 3)
    [[ "$smoke" == 1 ]] && pyargs+=(--smoke)
    if command -v python3 >/dev/null; then
        PYTHONUNBUFFERED=1 timeout $(( $(left) > 150 ? 150 : $(left) )) python3 bench/gpu_torch_ref.py "${pyargs[@]}" 2>&1 |
            tee -a "$build/bench.log" | grep -E '^(RESULT|gpu_torch)' || true
    fi
    [[ -f "$results/torch.json" ]] || echo '{"bench": "torch", "pytorch": "not available", "reason": "no python3, or it ran out of time"}' > "$results/torch.json"
    say "bench serve ($(left) s left)"
    if [[ "$(left)" -gt 20 ]]; then
        timeout "$(left)" "${bench[@]}" serve 2>&1 | tee -a "$build/bench.log" || status=1
    else
        say "no time left for serve"
    fi
    "$build/tests/gpu_bench" summary "$results"
fi
say "done, status $status (budget ${budget}s)"
exit "$status"
