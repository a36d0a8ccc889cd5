#!/usr/bin/env bash
# scripts/gpu_carry.sh: collect the Debian packages that building and testing hyb needs into a
# folder (default .debs/) that can be carried to a GPU machine with no package registry, where
# scripts/gpu_test.sh unpacks them with `dpkg -x` into a private prefix (no root, no apt there).
#
#   scripts/gpu_carry.sh [DIR]        # on a machine with apt sources (this one): fills DIR/*.deb
#   HYB_CARRY_TOOLS=1 scripts/gpu_carry.sh   # with cmake too, for a machine that has none
#
# Default: no cmake. The lent H100/H200 image has CMake and ninja (KINDS.md), and cmake's closure
# (cmake-data, libicu, perl, curl...) is 51 MB of the 64 MiB that may travel; without it .debs/ is
# about 27 MB (63 packages, with libedit and libmicrohttpd for the prompt and hyb serve), plus
# OpenMPI (below).
#
# What is carried: the dev packages of hyb's dependencies (Lua 5.4, OpenBLAS, toml++, PCRE2,
# cJSON) and pkgconf, plus cmake when HYB_CARRY_TOOLS=1, with the closure of their Depends,
# minus what every Debian system has (Priority required/important) and minus the C toolchain's
# own packages (libc6-dev, libstdc++6, ...: the GPU machine compiles, so it has them). The .debs
# are for this machine's release and architecture: the GPU machine needs the same Debian release
# (or a newer glibc). A file MANIFEST lists the packages and versions.
set -euo pipefail

out=${1:-.debs}
LIBS=(liblua5.4-dev libopenblas-dev libopenblas0-pthread libopenblas-pthread-dev
      libtomlplusplus-dev libpcre2-dev libcjson-dev libedit-dev libmicrohttpd-dev pkgconf)
TOOLS=(cmake)
[[ "${HYB_CARRY_TOOLS:-0}" == 1 ]] && LIBS+=("${TOOLS[@]}")
# OpenMPI (data-parallel distillation, docs/DISTRIBUTED.md; default on, HYB_CARRY_MPI=0: off):
# the run-time library and mpirun with their closure, and libopenmpi-dev alone (mpi.h, libmpi.so,
# the mpicc wrapper) without its Depends, which pull gfortran/flang (~400 MB). Measured
# (apt-cache sizes): +~22 MB, 50 packages, most of it libicu72 (9.4 MB, through libxml2/hwloc).
NODEPS=()
if [[ "${HYB_CARRY_MPI:-1}" == 1 ]]; then
    LIBS+=(libopenmpi3 openmpi-bin openmpi-common)
    NODEPS+=(libopenmpi-dev)
fi
# present wherever a C/C++ compiler is: never carried
TOOLCHAIN=(libc6 libc6-dev libstdc++6 libgcc-s1 gcc-12-base libgomp1 linux-libc-dev libcrypt-dev
           libcrypt1 libnsl-dev libnsl2 libtirpc-dev libtirpc3 rpcsvc-proto)

command -v apt-cache >/dev/null || { echo "gpu_carry: needs apt-cache/apt-get (Debian)" >&2; exit 1; }

closure() { # the packages (real names) that $@ need, recursively, by Depends/PreDepends
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$@" 2>/dev/null | grep -v '^ ' | grep -v '^<' | sort -u
}
base=$( (closure "${TOOLCHAIN[@]}"; printf '%s\n' "${TOOLCHAIN[@]}") | sort -u)
want=$(closure "${LIBS[@]}")
# one apt-cache call for the priorities; the openmp/serial OpenBLAS variants are alternatives
# of the pthread one (gpu_test.sh uses openblas-pthread), not needed
mapfile -t cand < <(comm -23 <(echo "$want") <(echo "$base") |
                    grep -Ev '^libopenblas(0-openmp|0-serial|-openmp-dev|-serial-dev)$')
core=$(apt-cache show --no-all-versions "${cand[@]}" 2>/dev/null |
       awk '/^Package:/ {p = $2} /^Priority: (required|important)$/ {print p}' | sort -u)
pkgs=()
for p in "${cand[@]}"; do
    grep -qx -- "$p" <<<"$core" || pkgs+=("$p")
done
pkgs+=(${NODEPS[@]+"${NODEPS[@]}"})

mkdir -p "$out"
echo "gpu_carry: downloading ${#pkgs[@]} packages into $out/"
(cd "$out" && apt-get download -q "${pkgs[@]}" >/dev/null)
# keep one version per package (re-runs after an upgrade would leave two)
(cd "$out" && for p in "${pkgs[@]}"; do
    ls -1t "${p}"_*.deb 2>/dev/null | tail -n +2 | xargs -r rm -f
done)
(cd "$out" && for f in *.deb; do dpkg-deb -W --showformat='${Package} ${Version}\n' "$f"; done) \
    > "$out/MANIFEST"
echo "gpu_carry: $(ls "$out"/*.deb | wc -l) .deb files, $(du -sh "$out" | cut -f1) in $out/ (see $out/MANIFEST)"
