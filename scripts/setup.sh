#!/usr/bin/env bash
# scripts/setup.sh: the one command for a new user. Installs what is missing, builds, fetches
# the default model (SmolLM2-135M-Instruct), installs the training corpus (scripts/corpus.sh:
# the Python and Linux manuals' text from Debian packages), then runs the main job on it: a chat
# reply from the teacher, streamed token by token, with prefill/decode speed at the end.
#
#   scripts/setup.sh                       # the default prompt
#   scripts/setup.sh "Write a haiku about the sea."
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${HYB_BUILD_DIR:-$root/build}

"$root/scripts/build.sh"
HYB_MODEL=$("$root/scripts/fetch_model.sh")
export HYB_MODEL
echo "setup: default model at $HYB_MODEL" >&2
# the corpus for distillation recipes (not needed by the build, the tests or the main job: a
# failure here is reported and setup goes on)
if ! "$root/scripts/corpus.sh" | sed 's/^/setup: corpus: /' >&2; then
    echo "setup: the corpus is incomplete (see above); recipes that use it will fail until" \
         "scripts/corpus.sh succeeds" >&2
fi

if [[ ! -x "$build/hyb" ]]; then
    echo "setup: $build/hyb was not built (runtime/ missing?)" >&2
    exit 1
fi
cd "$root"
prompt=${1:-"In two sentences, what is a state space model?"}
echo "setup: running: hyb generate --chat --max-tokens 160 \"$prompt\"" >&2
exec "$build/hyb" generate --chat --max-tokens 160 "$prompt"
