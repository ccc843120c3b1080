"""Reading a request's body: at most `max_body` bytes, all of them within `timeout` seconds of the
headers. A deadline for the whole read, not a wait between bytes, so that a client sending a byte
now and then is cut off as surely as a silent one. A body is refused (413) as soon as it is known
to be too large: from its Content-Length, from what has arrived, or from the size a chunk of a
chunked body declares (which protocol.py puts in the request's scope), before its bytes come."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from trickster.serve.protocol import PROMISED
from trickster.serve.schemas import APIError

MAX_BODY = 1 << 20  # bytes; a prompt longer than any context we train fits many times over
BODY_TIMEOUT = 60.0  # seconds for a whole body, from its headers (1 MiB needs 17.5 KB/s); then a 408


async def read_body(request: Request, max_body: int = MAX_BODY, timeout: float = BODY_TIMEOUT) -> bytes:
    declared = request.headers.get("content-length", "")
    too_big = APIError(413, f"the request body is larger than {max_body:,} bytes; send a shorter prompt")
    if declared.isdigit() and int(declared) > max_body:
        raise too_big
    body = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        # ASGI's receive, not request.stream(), which waits through a message without bytes: the one
        # that says a chunk's size has been read
        try:
            message = await asyncio.wait_for(request.receive(), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            fix = (
                "send all the bytes Content-Length promises, without pausing"
                if declared
                else "send all the chunks without pausing, ending with a chunk of size 0"
            )
            raise APIError(
                408,
                f"the request body did not all arrive within {timeout:g} s ({len(body):,} bytes in); {fix}",
            ) from None
        if message["type"] == "http.disconnect":  # an answer no one reads; not a server error to log
            raise APIError(499, "the client closed the connection before its body was all in")
        body += message.get("body", b"")
        if len(body) + request.scope.get(PROMISED, 0) > max_body:
            raise too_big
        if not message.get("more_body", False):
            return bytes(body)
