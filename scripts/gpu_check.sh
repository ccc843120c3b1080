#!/usr/bin/env bash
# One command that checks nano-trickster on a CUDA GPU machine and prints one summary table
# (steps and columns: docs/distributed.md, "Checking a GPU machine"). Exit status: 0 all steps
# passed, 1 a step failed, 2 a bad command line, no GPU or a missing dependency.
#
#   scripts/gpu_check.sh                  # the seven checks, roughly 10-15 minutes on one H100/H200
#   scripts/gpu_check.sh --steps probe    # some of them
#   scripts/gpu_check.sh --cpu-dry-run    # every step at toy size on the CPU
#   scripts/gpu_check.sh --steps $(scripts/gpu_check.sh --order) --time-limit 540 --out OUT
#
# It uses the Python and torch already there (PYTHON=... to choose) and installs nothing from an
# index. What GPU images tend to lack is pydantic (and transformers, for the `generate` step;
# starlette and uvicorn, for the `serve` step): on a machine with network, run
#   pip download -c constraints.txt pydantic transformers starlette uvicorn --python-version 3.12 \
#     --only-binary :all: --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d wheels/ \
#     && rm wheels/numpy-*.whl
# (--python-version as the GPU machine's), bring wheels/ along, and this script installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# what is missing goes from wheels/ into a folder of its own, first on the path: the image's own
# site-packages may be read-only, and nothing of it is replaced
SITE="${TMPDIR:-/tmp}/trickster-site"
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
install_wheels() {  # WHEEL FILE...
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$SITE" "$@"
}
if ! "$PY" -c "import pydantic" 2>/dev/null; then
    if compgen -G "wheels/pydantic-*.whl" > /dev/null; then
        install_wheels wheels/{pydantic,pydantic_core,annotated_types,typing_inspection,typing_extensions}-*.whl
    else
        echo "gpu_check: pydantic is missing and there is no wheels/ folder; see the top of $0 to bring it" >&2
        exit 2
    fi
fi
# the generate step compares with transformers; without it that step says so and goes on
if ! "$PY" -c "import transformers" 2>/dev/null && compgen -G "wheels/transformers-*.whl" > /dev/null; then
    install_wheels wheels/*.whl ||
        echo "gpu_check: transformers from wheels/ did not install; the generate step skips it" >&2
fi
# the serve step runs `trickster serve`; without them that step fails with its one line
if ! "$PY" -c "import starlette, uvicorn" 2>/dev/null && compgen -G "wheels/starlette-*.whl" > /dev/null; then
    install_wheels wheels/{starlette,uvicorn}-*.whl ||
        echo "gpu_check: starlette and uvicorn from wheels/ did not install; the serve step fails" >&2
fi
exec "$PY" scripts/gpu_check.py "$@"
