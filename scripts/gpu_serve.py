"""Step 11 of scripts/gpu_check.py: `trickster serve` with its model on the GPU (a run of the
tutorial or nano step). Its worker thread decodes every batch on the GPU while asyncio's threads
tokenize the prompts of requests still coming in (serve/app.py): concurrent greedy completions of
one prompt must all be answered alike, with prompts of a few hundred kilobytes tokenized beside
them (and refused for the context they overflow), a seeded completion must be the text
`trickster generate` writes with that seed on the GPU (both in bfloat16 there), and the server
must end cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from gpu_runs import ROOT, Context, Result, StepFailed, check, trickster

GREEDY, LONG = 8, 4  # concurrent requests: greedy completions of one prompt, overlong prompts
LONG_PROMPT = "ROMEO: " * 40_000  # 280 KB: seconds of tokenizing for a BPE, refused after it


def post(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def start_server(ctx: Context, run) -> tuple[subprocess.Popen, str]:
    """`trickster serve RUN --device DEVICE --port 0` and the URL its first line gives."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "trickster", "serve", str(run), "--device", ctx.device, "--port", "0"]
    log = open(ctx.work / "serve.log", "w")  # noqa: SIM115 (the server's, closed by step_serve)
    server = subprocess.Popen(command, cwd=ctx.work, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    line = server.stdout.readline()  # "serving NAMES from RUN at http://127.0.0.1:PORT/v1 (...)"
    log.write(line)
    if " at http" not in line:
        server.wait(timeout=30)
        said = (ctx.work / "serve.log").read_text().strip().splitlines()
        raise StepFailed(f"`trickster serve` did not start: {said[-1] if said else 'no output'}")
    return server, line.split(" at ", 1)[1].split("/v1", 1)[0]


def step_serve(ctx: Context) -> Result:
    ctx.require_gpu("serve")
    run = ctx.trained_run("tutorial", "nano")
    if run is None:
        raise StepFailed("needs the tutorial or nano step's run (run it first, with the same --work)")
    server, url = start_server(ctx, run)
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=60) as answer:
            names = [card["id"] for card in json.loads(answer.read())["data"]]
        model = "best" if "best" in names else names[0]
        greedy = {"model": model, "prompt": "ROMEO:", "max_tokens": 40, "temperature": 0}
        long = {"model": model, "prompt": LONG_PROMPT, "max_tokens": 8}
        started = time.perf_counter()
        with ThreadPoolExecutor(GREEDY + LONG) as pool:
            asked = [greedy] * GREEDY + [long] * LONG
            answers = list(pool.map(lambda body: post(url + "/v1/completions", body), asked))
        seconds = time.perf_counter() - started
        seeded = {"model": model, "prompt": "ROMEO:", "max_tokens": 40, "temperature": 0.9, "seed": 11}
        served = post(url + "/v1/completions", seeded)  # alone: the shapes `generate` computes with
    finally:
        server.terminate()
        ended = server.wait(timeout=60)
    statuses = [status for status, _ in answers]
    check(statuses == [200] * GREEDY + [400] * LONG, f"statuses {statuses}: {answers[-1][1]}")
    texts = {body["choices"][0]["text"] for _, body in answers[:GREEDY]}
    check(len(texts) == 1 and len(next(iter(texts))) > 0, f"greedy answers differ or are empty: {texts}")
    refused = answers[-1][1]["error"]
    check(refused["code"] == "context_length_exceeded", f"an overlong prompt refused otherwise: {refused}")
    check(ended in (0, -15), f"the server ended with status {ended} (see serve.log)")
    target = str(run / "checkpoints" / model) if model != "best" else str(run)
    argv = ["--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "11", "--temperature", "0.9"]
    expected = trickster(ctx, "serve-generate", "generate", target, "--device", ctx.device, *argv)
    check(served[0] == 200, f"the seeded request got {served}")
    text = "ROMEO:" + served[1]["choices"][0]["text"]
    check(text == expected.rstrip("\n"), f"served {text!r}, generate wrote {expected.rstrip()!r} (seed 11)")
    note = (
        f"{GREEDY} greedy completions alike and {LONG} prompts of {len(LONG_PROMPT) // 1000} KB refused "
        f"for the context, concurrently, in {seconds:.1f} s on {ctx.device}; a seeded completion = "
        "`trickster generate` with its seed"
    )
    return Result("serve", notes=[note])


STEP_FUNCTIONS = {"serve": step_serve}
