"""`trickster serve`: load the run's checkpoints, bind the port, serve until interrupted (Ctrl-C:
exit status 130, as other commands)."""

from __future__ import annotations

import errno
import functools
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from trickster.errors import UserError
from trickster.serve.limits import MAX_BATCH, MAX_LOADED_MODELS

if TYPE_CHECKING:  # both imported when serving starts, so that a missing extra is one clear line
    import uvicorn
    from starlette.applications import Starlette

    from trickster.serve.engine import Engine


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is served, so that a taken port is one clear line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UserError(
            f"--host {host} is not an address of this machine ({err.strerror}); use 127.0.0.1"
        ) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is in use (another server?); pass --port N with a free port"
            ) from None
        if err.errno == errno.EACCES:
            raise UserError(f"port {port} needs privileges; pass --port N with N above 1023") from None
        raise UserError(
            f"cannot listen on {host}:{port} ({err.strerror}); pass another --host or --port"
        ) from None
    return sock


def uvicorn_config(
    app: Starlette, header_timeout: float | None = None, send_timeout: float | None = None
) -> uvicorn.Config:
    """uvicorn's settings: our connection protocol (protocol.py; HEADER_TIMEOUT and SEND_TIMEOUT
    unless told), warnings only, 3 s for answers under way when the server stops."""
    import uvicorn

    from trickster.serve.protocol import HEADER_TIMEOUT, SEND_TIMEOUT, protocol

    http = protocol(
        HEADER_TIMEOUT if header_timeout is None else header_timeout,
        SEND_TIMEOUT if send_timeout is None else send_timeout,
    )
    return uvicorn.Config(app, http=http, log_level="warning", access_log=False, timeout_graceful_shutdown=3)


def stop_then_exit(
    engine: Engine, handle_exit: Callable, received: list[int], signum: int, frame: FrameType | None
) -> None:
    """uvicorn's handler of Ctrl-C and SIGTERM, after the generations under way are ended with a 503
    (a stream: an error event, then [DONE]), so that their answers end within uvicorn's grace period.
    The signal is noted in `received`."""
    from trickster.serve.schemas import APIError

    received.append(signum)
    engine.stop(APIError(503, "the server is stopping (Ctrl-C or SIGTERM); ask again once it is back"))
    handle_exit(signum, frame)


def check_api_key(key: str | None) -> None:
    """A key that a client can send: an Authorization header carries printable ASCII (httpx and the
    openai package refuse to send anything else) and loses the spaces at its ends."""
    if key is None:
        return
    if not key.strip():
        raise UserError("--api-key is blank; pass a key, or leave the option out to serve without one")
    odd = next((c for c in key if not (c.isascii() and c.isprintable())), None)
    if odd is not None:
        raise UserError(
            f"--api-key holds {odd!r}, which an HTTP header cannot carry (clients send printable ASCII "
            "only); pass a key of letters, digits and punctuation"
        )
    if key != key.strip():
        raise UserError(
            "--api-key starts or ends with a space, which an HTTP header drops (no client could send "
            "the key); pass it without"
        )


def read_template(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise UserError(
            f"--chat-template {path} cannot be read ({reason}); pass a UTF-8 Jinja file"
        ) from None


def serve(
    target: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    api_key: str | None = None,
    checkpoints: list[str] | None = None,
    chat_template: str | None = None,
    max_batch: int = MAX_BATCH,
    max_loaded_models: int = MAX_LOADED_MODELS,
    allowed_host: list[str] | None = None,
) -> int:
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise UserError(f"serving needs {err.name}: pip install 'nano-trickster[serve]'") from None
    from trickster.serve.app import create_app
    from trickster.serve.engine import Engine
    from trickster.serve.guard import allowed_hosts
    from trickster.serve.models import Catalog
    from trickster.train.device import resolve_device

    if max_batch < 1:
        raise UserError(f"--max-batch must be >= 1 (got {max_batch})")
    if not 0 <= port <= 65535:  # the socket takes 70000 as 70000 % 65536 and -1 as no service at all
        raise UserError(f"--port must be between 0 and 65535 (got {port}); 0 picks a free one")
    check_api_key(api_key)
    hosts = (host, *allowed_hosts(allowed_host, api_key))  # --host too: a browser may ask by that name
    template = read_template(chat_template)
    catalog = Catalog(target, resolve_device(device, "--device"), checkpoints, template, max_loaded_models)
    # each model offered renders it; one render says whether it renders at all. An empty file
    # leaves each model its own, as describe reads it (`or`): there is none of ours to check
    if template:
        catalog.offered[catalog.default].chat_template.check(f"--chat-template {chat_template}")
    sock = bind(host, port)
    for line in catalog.left_out:  # damaged checkpoints among others that serve
        print(f"note: {line}", file=sys.stderr, flush=True)
    catalog.start()
    engine = Engine(max_batch)
    app = create_app(catalog, engine, api_key, allowed_hosts=hosts)
    bound = sock.getsockname()[1]
    names = ", ".join(catalog.offered)
    if catalog.awaited:  # --checkpoints names the run has yet to save
        names += f" ({', '.join(catalog.awaited)} once saved)"
    url = f"http://{host}:{bound}" if ":" not in host else f"http://[{host}]:{bound}"
    print(f"serving {names} from {target} at {url}/v1 (playground: {url}/); Ctrl-C stops", flush=True)
    server = uvicorn.Server(uvicorn_config(app))
    received: list[int] = []
    server.handle_exit = functools.partial(stop_then_exit, engine, server.handle_exit, received)
    try:
        # a Ctrl-C ends it as it ends every command: cli.main says `interrupted`, exit status 130.
        # uvicorn raises the signal it stopped for again once stopped, but where SIGINT is ignored
        # (a job a script started with `&`, then `kill -INT`), its handler still stopped the
        # server, and nothing is raised. SIGTERM, raised again, ends the process as SIGTERM does.
        server.run(sockets=[sock])
        if signal.SIGINT in received:
            raise KeyboardInterrupt
    finally:
        engine.close()
        sock.close()
    return 0
