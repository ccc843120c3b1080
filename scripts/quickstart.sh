#!/usr/bin/env bash
# The main job on a fresh machine: set up, prepare Tiny Shakespeare (or, offline, the Python
# standard library), train the `tiny` preset for a few minutes, then show its sample next to an
# untrained model's. Extra arguments go to `trickster quickstart` (e.g. --path FILE, --steps N).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
trickster quickstart "$@"
