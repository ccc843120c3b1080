"""A `trickster serve` server on 127.0.0.1 (a free port) in a thread of the test process."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from trickster.serve.app import create_app
from trickster.serve.engine import Engine
from trickster.serve.limits import MAX_BATCH, MAX_LOADED_MODELS
from trickster.serve.models import Catalog
from trickster.serve.server import bind, uvicorn_config


@dataclass
class Live:
    url: str  # http://127.0.0.1:PORT
    engine: Engine
    catalog: Catalog


@contextlib.contextmanager
def live_server(
    target: Path,
    api_key: str | None = None,
    chat_template: str | None = None,
    checkpoints: list[str] | None = None,
    max_batch: int = MAX_BATCH,
    max_body: int | None = None,
    body_timeout: float | None = None,
    header_timeout: float | None = None,
    max_loaded: int = MAX_LOADED_MODELS,
    send_timeout: float | None = None,
    send_buffer: int | None = None,
    allowed_hosts: tuple[str, ...] = (),
):
    """`send_buffer`: the kernel's send buffer of each connection, in bytes (accepted sockets take the
    listening one's), so that a test fills it with a small answer."""
    import uvicorn

    catalog = Catalog(target, torch.device("cpu"), checkpoints, chat_template, max_loaded)
    catalog.start()
    engine = Engine(max_batch)
    sock = bind("127.0.0.1", 0)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    extra = {"max_body": max_body, "body_timeout": body_timeout}
    extra = {key: value for key, value in extra.items() if value is not None}
    app = create_app(catalog, engine, api_key, **extra, allowed_hosts=allowed_hosts)
    timeouts = {"send_timeout": send_timeout} if send_timeout is not None else {}
    server = uvicorn.Server(uvicorn_config(app, header_timeout, **timeouts))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test server did not start"
    try:
        yield Live(f"http://127.0.0.1:{sock.getsockname()[1]}", engine, catalog)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()
        sock.close()


def run_saving(trained_run: Path, tmp_path: Path) -> tuple[Path, Callable[[str], None]]:
    """A copy of the trained run without its checkpoints (tmp_path/run), and a function that saves
    one of the trained run's checkpoints into it as training does (written beside it, renamed in)."""
    run, saved = tmp_path / "run", trained_run / "checkpoints"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "checkpoints").mkdir()

    def save(name: str) -> None:
        shutil.copytree(saved / name, tmp_path / name)
        (tmp_path / name).rename(run / "checkpoints" / name)

    return run, save
