#!/usr/bin/env bash
# One command that checks nano-trickster on a CUDA GPU machine and prints one summary table
# (steps and columns: docs/distributed.md, "Checking a GPU machine"). Exit status: 0 all steps
# passed, 1 a step failed, 2 a bad command line, no GPU or a missing dependency.
#
#   scripts/gpu_check.sh                  # the seven checks, roughly 10-15 minutes on one H100/H200
#   scripts/gpu_check.sh --steps probe    # some of them
#   scripts/gpu_check.sh --cpu-dry-run    # nano, resume and fsdp at toy size on the CPU
#
# It uses the Python and torch already there (PYTHON=... to choose) and installs nothing from an
# index. What GPU images tend to lack is pydantic (and transformers, for the `generate` step): on a
# machine with network, run
#   pip download -c constraints.txt pydantic transformers --python-version 3.12 --only-binary :all: \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d wheels/ && rm wheels/numpy-*.whl
# (--python-version as the GPU machine's), bring wheels/ along, and this script installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import pydantic" 2>/dev/null; then
    if compgen -G "wheels/*.whl" > /dev/null; then
        "$PY" -m pip install --quiet --no-index --find-links wheels pydantic
    else
        echo "gpu_check: pydantic is missing and there is no wheels/ folder; see the top of $0 to bring it" >&2
        exit 2
    fi
fi
# the generate step compares with transformers; without it that step says so and goes on
if ! "$PY" -c "import transformers" 2>/dev/null && compgen -G "wheels/transformers-*.whl" > /dev/null; then
    "$PY" -m pip install --quiet --no-index --find-links wheels transformers ||
        echo "gpu_check: transformers from wheels/ did not install; the generate step skips it" >&2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_check.py "$@"
