#!/usr/bin/env bash
# The main job on a fresh machine: set up, prepare Tiny Shakespeare (or, offline, the Python
# standard library), train the `tiny` preset for a few minutes, then show its sample next to an
# untrained model's. Extra arguments go to `trickster quickstart` (e.g. --path FILE, --steps N).
set -euo pipefail
started_in="$PWD"
cd "$(dirname "$0")/.."
source scripts/setup.sh
# .venv is active in this script only, and the paths printed are relative to the repository: the
# `trickster ...` lines printed at the end (or after Ctrl-C) need both in the user's shell too
hint() {
  local code=$? go=""
  [ "$started_in" = "$PWD" ] || go="cd $PWD && "
  if { [ "$code" -eq 0 ] || [ "$code" -eq 130 ]; } && [ "${VIRTUAL_ENV:-}" != "$PWD/.venv" ]; then
    echo "(trickster is installed in .venv: run \`${go}source .venv/bin/activate\` before the commands above)"
  fi
}
trap hint EXIT
trickster quickstart "$@"
