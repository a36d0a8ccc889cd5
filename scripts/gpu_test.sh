#!/usr/bin/env bash
# scripts/gpu_test.sh: on a GPU machine with no package registry, unpack the .debs collected by
# scripts/gpu_carry.sh into a private prefix (dpkg -x: no root, no apt), configure and build hyb
# against them, and run the unit and CUDA tests.
#
#   scripts/gpu_test.sh [DEBS_DIR=.debs]
#
# Environment:
#   HYB_GPU_PREFIX   where the packages are unpacked (default .gpu-prefix; re-created each run)
#   HYB_GPU_BUILD    the build directory (default build-gpu)
#   HYB_GPU_STEPS    all (default) | configure: stop after unpacking + configuring (to check
#                    the carried packages on a machine without a GPU)
#   HYB_GPU_REQUIRE  1 (default): fail when the `cuda` tests were skipped (no GPU found), so a
#                    GPU run can never pass by skipping; 0: allow skipping
#   HYB_GPU_LABELS   ctest label regex (default 'unit|cuda')
#   CUDA_HOME        the CUDA toolkit: its include/ is needed to compile the CUDA backend, its
#                    lib64/libnvrtc* and libcublas* at run time (default /usr/local/cuda)
#   JOBS             parallel build jobs (default: nproc)
# Output: the configure/build logs in $HYB_GPU_BUILD/*.log and the ctest summary.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
debs=$(realpath -m "${1:-.debs}")
prefix=$(realpath -m "${HYB_GPU_PREFIX:-.gpu-prefix}")
build=$(realpath -m "${HYB_GPU_BUILD:-build-gpu}")
steps=${HYB_GPU_STEPS:-all}
labels=${HYB_GPU_LABELS:-unit|cuda}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 4)}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

compgen -G "$debs/*.deb" >/dev/null || { echo "gpu_test: no .deb files in $debs (run scripts/gpu_carry.sh)" >&2; exit 1; }

# ---- 1. unpack -----------------------------------------------------------------------------------
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
echo "gpu_test: unpacked $n packages into $prefix"

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
export LD_LIBRARY_PATH="$ldpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH="$prefix/usr/lib/$multiarch/pkgconfig:$prefix/usr/lib/$multiarch/openblas-pthread/pkgconfig:$prefix/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# carried tools (cmake, pkg-config) only when this machine has none
cmake_bin=$(command -v cmake || true)
[[ -z "$cmake_bin" && -x "$prefix/usr/bin/cmake" ]] && cmake_bin="$prefix/usr/bin/cmake"
[[ -n "$cmake_bin" ]] || { echo "gpu_test: no cmake here and none carried" >&2; exit 1; }
ctest_bin=$(dirname "$cmake_bin")/ctest
pkgconf_bin=$(command -v pkg-config || true)
[[ -z "$pkgconf_bin" && -x "$prefix/usr/bin/pkgconf" ]] && pkgconf_bin="$prefix/usr/bin/pkgconf"
echo "gpu_test: cmake $cmake_bin, pkg-config ${pkgconf_bin:-none}, CUDA_HOME $CUDA_HOME"
[[ -f "$CUDA_HOME/include/cuda.h" ]] ||
    echo "gpu_test: warning: no $CUDA_HOME/include/cuda.h: the CUDA backend will not be compiled" >&2

# ---- 2. configure --------------------------------------------------------------------------------
mkdir -p "$build"
if ! "$cmake_bin" -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release \
        ${pkgconf_bin:+-DPKG_CONFIG_EXECUTABLE="$pkgconf_bin"} > "$build/configure.log" 2>&1; then
    cat "$build/configure.log" >&2
    echo "gpu_test: configure failed (log: $build/configure.log)" >&2
    exit 1
fi
grep -E '^-- (hyb|Checking for module|  Found)' "$build/configure.log" || true
# show where each dependency was found (they must come from the prefix or the system)
grep -E '^(LUA|OPENBLAS|TOMLPP|PCRE2|CJSON)_(INCLUDE_DIRS|LINK_LIBRARIES):' "$build/CMakeCache.txt" | sed 's/^/  /'
[[ "$steps" == configure ]] && { echo "gpu_test: configured in $build (HYB_GPU_STEPS=configure: stopping)"; exit 0; }

# ---- 3. build and test ---------------------------------------------------------------------------
if ! "$cmake_bin" --build "$build" -j"$jobs" > "$build/build.log" 2>&1; then
    tail -50 "$build/build.log" >&2
    echo "gpu_test: build failed (log: $build/build.log)" >&2
    exit 1
fi
echo "gpu_test: built"
nvidia-smi -L 2>/dev/null || echo "gpu_test: nvidia-smi not found or no GPU listed"
set +e
"$ctest_bin" --test-dir "$build" -L "$labels" --output-on-failure -j"$jobs" 2>&1 | tee "$build/ctest.log"
rc=${PIPESTATUS[0]}
set -e
if [[ "${HYB_GPU_REQUIRE:-1}" == 1 ]] && grep -qE 'cuda_[a-z_]+ .*\(Skipped\)|cuda_[a-z_]+ .*Skipped' "$build/ctest.log"; then
    echo "gpu_test: the CUDA tests were SKIPPED (no GPU/driver found): failing (HYB_GPU_REQUIRE=1)" >&2
    exit 1
fi
exit "$rc"
