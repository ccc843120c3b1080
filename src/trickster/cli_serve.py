"""The options of `trickster serve` that say who may reach it: where it listens, the key it asks
for, and the names a browser may ask for it by (serve/guard.py); and how much it holds at once.
Imports nothing heavy (--help)."""

from __future__ import annotations

import argparse

from trickster.cli_argparse import integer
from trickster.serve import limits  # imports nothing


def add_access(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=integer, default=8000, help="default 8000; 0 picks a free one")
    serve.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1")
    serve.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="without --api-key, a name besides localhost and addresses that a browser may ask for the "
        "server by (a reverse proxy's, passed on in Host); repeatable",
    )


def add_limits(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--max-batch",
        type=integer,
        default=limits.MAX_BATCH,
        help="sequences decoded together per model (default %(default)s)",
    )
    serve.add_argument(
        "--max-loaded-models",
        type=integer,
        default=limits.MAX_LOADED_MODELS,
        help="models held in memory (default %(default)s)",
    )
