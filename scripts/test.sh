#!/usr/bin/env bash
# Set up and run the whole test suite (slow-marked tests included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
python -m pytest "$@"
