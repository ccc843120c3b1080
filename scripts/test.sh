#!/usr/bin/env bash
# Set up and run the whole test suite (slow-marked tests included) on every core. Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# one worker per core (pytest-xdist); worksteal keeps both busy while a long test runs on one
python -m pytest -n auto --dist worksteal "$@"
