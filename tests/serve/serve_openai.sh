#!/usr/bin/env bash
# tests/serve/serve_openai.sh BUILD_DIR HYB: the `openai` client test. The client comes from PyPI
# into a venv under the build directory (made once, reused); when the venv cannot be made or PyPI
# cannot be reached the test says so and is skipped (exit 77), it does not fail.
set -uo pipefail
build=$1 hyb=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=$build/serve-venv
if ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
    if ! python3 -m venv "$venv" >/tmp/hyb-serve-venv.$$ 2>&1; then
        echo "SKIP: cannot make a venv (python3 -m venv $venv):"; cat /tmp/hyb-serve-venv.$$
        rm -f /tmp/hyb-serve-venv.$$; exit 77
    fi
    if ! timeout 300 "$venv/bin/pip" install -q --disable-pip-version-check openai \
            >/tmp/hyb-serve-venv.$$ 2>&1; then
        echo "SKIP: pip install openai failed (PyPI unreachable?); the openai client test did" \
             "not run:"; tail -5 /tmp/hyb-serve-venv.$$
        rm -f /tmp/hyb-serve-venv.$$; exit 77
    fi
    rm -f /tmp/hyb-serve-venv.$$
fi
exec "$venv/bin/python" "$here/serve_openai.py" "$hyb"
