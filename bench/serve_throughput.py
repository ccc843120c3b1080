"""Total tokens/s of `trickster serve` for 1, 4 and 16 concurrent streaming clients.

    python bench/serve_throughput.py                          # nano preset, CPU, 128 tokens each
    python bench/serve_throughput.py --clients 1 4 16 --max-tokens 128 --repeats 3

The server runs as its own process (`python -m trickster serve`, as a user starts it) over one
checkpoint of the preset's shape with random weights (speed does not depend on them) and a byte
tokenizer. Each client streams one /v1/completions request (a 16-byte prompt, temperature 1,
its own seed, no stop token, so every request makes exactly --max-tokens tokens); the figure is
all tokens over the time from the first request sent to the last [DONE], the median of
--repeats rounds after one warm-up round, the levels timed in turns. Clients run in this process
with httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from trickster.config import load_config
from trickster.data.tokenizers import ByteTokenizer
from trickster.model.transformer import Transformer
from trickster.train import checkpoint as ckpt

PROMPT = "The king is dead"


def write_run(preset: str, folder: Path) -> Path:
    cfg = load_config(preset=preset, overrides=["model_config.vocab_size=256"])
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    run = folder / "run"
    ckpt.save_checkpoint(run / "checkpoints" / "final", model, cfg, ByteTokenizer(), {"step": 0})
    return run


def start_server(run: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    src = Path(__file__).resolve().parent.parent / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [
        sys.executable,
        "-m",
        "trickster",
        "serve",
        str(run),
        "--port",
        "0",
        "--device",
        "cpu",
        "--checkpoints",
        "final",
        "--max-batch",
        str(max_batch),
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline()
    if not line.startswith("serving"):
        server.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return server, line.split(" at ")[1].split("/v1")[0]


async def one_client(client: httpx.AsyncClient, url: str, seed: int, max_tokens: int) -> int:
    body = {
        "model": "final",
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": seed,
        "stream": True,
    }
    tokens = 0
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
    return tokens


async def round_of(url: str, clients: int, max_tokens: int, seed: int) -> tuple[int, float]:
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        counts = await asyncio.gather(
            *(one_client(client, url, seed + i, max_tokens) for i in range(clients))
        )
        return sum(counts), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = write_run(args.preset, Path(folder))
        server, url = start_server(run, max(args.clients))
        try:
            for clients in args.clients:  # warm-up: each level once
                asyncio.run(round_of(url, clients, args.max_tokens, 0))
            rates = {clients: [] for clients in args.clients}
            for r in range(args.repeats):  # in turns, so that a busy spell of a shared machine hits all alike
                for clients in args.clients:
                    tokens, seconds = asyncio.run(round_of(url, clients, args.max_tokens, 1000 * (r + 1)))
                    assert tokens == clients * args.max_tokens, tokens
                    rates[clients].append(tokens / seconds)
            rows = [(c, statistics.median(r), min(r), max(r)) for c, r in rates.items()]
        finally:
            server.terminate()
            server.wait(timeout=30)
    base = rows[0][1]
    print(f"{args.preset}, {args.max_tokens} tokens per client, median of {args.repeats} rounds")
    print("| clients | total tokens/s | min | max | per client | vs 1 client |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for clients, rate, low, high in rows:
        cells = [f"{clients}", f"{rate:,.0f}", f"{low:,.0f}", f"{high:,.0f}", f"{rate / clients:,.0f}"]
        print("| " + " | ".join(cells) + f" | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
