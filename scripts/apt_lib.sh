# scripts/apt_lib.sh: sourced by scripts/bootstrap.sh and scripts/corpus.sh (not run on its own).
#
#   hyb_dpkg_missing PKG...          prints (one per line) the packages dpkg does not have installed
#   hyb_apt_install TAG NOTE PKG...  installs them with apt-get as root or through sudo, quietly;
#                                    on failure prints apt's output and "TAG: apt-get failed" and
#                                    returns 1; NOTE (may be empty) is added to the "installing" line
#
# HYB_BOOTSTRAP_DRY_RUN=1 makes hyb_apt_install print what it would install and return 0.

hyb_dpkg_missing() {
    local installed p
    installed=$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null |
                awk '$NF == "installed" && $(NF-1) == "ok" { print $1 }' || true)
    for p in "$@"; do
        grep -qx -- "$p" <<<"$installed" || echo "$p"
    done
}

hyb_apt_install() {
    local tag=$1 note=$2
    shift 2
    if [[ "${HYB_BOOTSTRAP_DRY_RUN:-0}" == 1 ]]; then
        echo "$tag: would install: $*"
        return 0
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "$tag: missing packages: $*" >&2
            echo "$tag: not root and no sudo; run as root: apt-get update && apt-get install -y $*" >&2
            return 1
        fi
    fi
    echo "$tag: installing $*${note:+ ($note)}" >&2
    local log rc=0
    log=$(mktemp "${TMPDIR:-/tmp}/hyb-$tag.XXXXXX")
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq >"$log" 2>&1 ||
       ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
            "$@" >>"$log" 2>&1; then
        cat "$log" >&2
        echo "$tag: apt-get failed (output above)" >&2
        rc=1
    fi
    rm -f "$log"
    return "$rc"
}
