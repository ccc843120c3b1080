#!/usr/bin/env bash
# Create .venv (once) and install nano-trickster with its tested, pinned dependencies.
# Sourced by quickstart.sh and test.sh; afterwards `trickster` and `pytest` are on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
# constraints.txt pins torch: an unpinned torch pulls a newer build with gigabytes of CUDA packages
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c constraints.txt -e ".[dev]"
export PATH="$PWD/.venv/bin:$PATH"
