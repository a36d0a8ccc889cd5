#!/usr/bin/env bash
# scripts/corpus.sh: install the real-text training corpus from Debian packages (only what is
# missing) and print where it is. Called by scripts/setup.sh; never by the tests.
#
#   scripts/corpus.sh               # as root, or as a user with sudo
#   HYB_NO_BOOTSTRAP=1 ...          # never call apt-get: only report what is there
#   HYB_BOOTSTRAP_DRY_RUN=1 ...     # print what would be installed, install nothing
#
# The corpus is the reStructuredText sources (plain text, not gzipped) that Sphinx ships beside
# the HTML of two manuals: English technical prose, code and lists.
#   python3.11-doc  /usr/share/doc/python3.11/html/_sources       ~500 *.rst.txt,  ~11 MB
#   linux-doc-6.1   /usr/share/doc/linux-doc-6.1/html/_sources    ~3200 *.rst.txt, ~24 MB
#                   (its translations/ subtree is not English: recipes exclude it)
# Output: one line per corpus directory, "<dir> <files> <bytes>", then "total <files> <bytes>"
# (the bytes of the *.rst.txt files; the same selection as include = ["*.rst.txt"]).
# A recipe takes it as, for example (recipes/smollm2-h3-h6-cpu.toml):
#   [data]
#   files = ["/usr/share/doc/python3.11/html/_sources", "/usr/share/doc/linux-doc-6.1/html/_sources"]
#   include = ["*.rst.txt"]
#   exclude = ["translations/*"]
#   max_bytes = 12000000
set -euo pipefail
# shellcheck source=scripts/apt_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_lib.sh"

PKGS=(python3.11-doc linux-doc-6.1)
DIRS=(/usr/share/doc/python3.11/html/_sources /usr/share/doc/linux-doc-6.1/html/_sources)

need=()
if command -v dpkg-query >/dev/null 2>&1; then
    mapfile -t need < <(hyb_dpkg_missing "${PKGS[@]}")
else
    echo "corpus: not a Debian-based system; install the Python 3.11 and Linux 6.1 documentation" \
         "(Sphinx _sources) by other means" >&2
fi

if ((${#need[@]} > 0)); then
    if [[ "${HYB_BOOTSTRAP_DRY_RUN:-0}" == 1 ]]; then
        echo "corpus: would install: ${need[*]}"
        exit 0
    elif [[ "${HYB_NO_BOOTSTRAP:-0}" == 1 ]]; then
        echo "corpus: missing packages (HYB_NO_BOOTSTRAP=1, not installing): ${need[*]}" >&2
    else
        hyb_apt_install corpus "about 50 MB to download" "${need[@]}" || exit 1
    fi
fi

tf=0
tb=0
missing=0
for d in "${DIRS[@]}"; do
    if [[ ! -d "$d" ]]; then
        echo "corpus: $d is missing" >&2
        missing=1
        continue
    fi
    read -r f b < <(find "$d" -type f -name '*.rst.txt' -printf '%s\n' |
                    awk '{ n++; s += $1 } END { printf "%d %d\n", n, s }')
    echo "$d $f $b"
    tf=$((tf + f))
    tb=$((tb + b))
done
echo "total $tf $tb"
exit "$missing"
