"""How the server reads and writes each connection: uvicorn's h11 protocol with a deadline on a
request's headers and on an answer the client leaves unread, the size a chunked body declares told
to the app, and OpenAI's error JSON for a request that is not HTTP.

uvicorn has no time limit on the request line and headers (asked for in uvicorn#157; none in 0.54): its
keep-alive timer starts only after a response and any byte stops it, so a client that connects
and sends nothing, or sends its headers a byte at a time (slowloris), holds its connection for
ever. Here a request's headers must all be in within `header_timeout` seconds of the connection
opening or of the previous response ending. Then a client that sent part of a request gets a 408
and the connection is closed; one that sent nothing is closed without a word, as uvicorn closes an
idle keep-alive connection. The body has a deadline of its own (body.BODY_TIMEOUT), and time
spent answering is not bounded at all: a long stream is never cut.

Nor has uvicorn a limit on writing: an answer the client does not read fills the socket's buffers,
then waits in memory for as long as the connection lasts, which is for ever (and `close()` waits
for the buffer to be sent first). Here, as nginx's `send_timeout` does, a connection whose answer
has not moved for `send_timeout` seconds once the buffers are full is dropped: the app sees the
client gone, and a stream stops generating for it.

The hooks are methods uvicorn calls on its protocol object (connection_made, data_received,
on_response_complete, connection_lost, send_400_response) and asyncio's flow control
(pause_writing, resume_writing), unchanged from 0.30 to 0.54. The server always speaks h11, even
with httptools installed (which uvicorn's "auto" would pick instead).
"""

from __future__ import annotations

import asyncio
import http
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from trickster.serve.schemas import APIError

HEADER_TIMEOUT = 30.0  # seconds for a request line and headers (the body has body.BODY_TIMEOUT)
SEND_TIMEOUT = 60.0  # seconds an answer may stay unread once the buffers are full (nginx's send_timeout)
# the request scope's key for the bytes the chunk being read still promises (body.read_body reads it)
PROMISED = "trickster.chunk_promised"


class Protocol(H11Protocol):
    """One connection. uvicorn builds a new `self.scope` for each request whose headers h11 has
    parsed: a new scope is what ends the wait for headers. The deadline's state is in class
    attributes, so uvicorn's __init__ (whose parameters have changed over versions) is left alone."""

    header_timeout = HEADER_TIMEOUT
    send_timeout = SEND_TIMEOUT
    header_deadline: asyncio.TimerHandle | None = None
    send_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        scope = self.scope
        super().data_received(data)
        if self.scope is not scope:
            self._stop_waiting()
        self._tell_promised()

    def on_response_complete(self) -> None:
        scope = self.scope
        super().on_response_complete()  # which may start a pipelined request already read
        if self.scope is scope and not self.transport.is_closing():
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        self._stop_send_clock()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """asyncio's call when the write buffer passes its high mark: the kernel's buffers are full."""
        super().pause_writing()
        self._stop_send_clock()
        self.send_deadline = self.loop.call_later(self.send_timeout, self._send_too_slow)

    def resume_writing(self) -> None:
        self._stop_send_clock()
        super().resume_writing()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer when h11 cannot parse the request (uvicorn says plain text)."""
        self._refuse(
            400,
            "the request is not valid HTTP (a malformed request line, header or chunk, or headers "
            "too long); send a well-formed request",
        )

    # ------------------------------------------------------------------ the deadline

    def _await_headers(self) -> None:
        self._stop_waiting()
        self.header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_waiting(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if self.transport.is_closing():
            return
        if not self.conn.trailing_data[0]:  # not a byte of a request: an idle connection
            self.transport.close()
            return
        self._refuse(
            408,
            f"the request line and headers did not all arrive within {self.header_timeout:g} s; "
            "send them without pausing",
        )

    def _stop_send_clock(self) -> None:
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None

    def _send_too_slow(self) -> None:
        """The client has taken nothing for `send_timeout` seconds: drop the connection. abort(), not
        close(), which would wait for the buffer to be sent; uvicorn then tells the app the client is
        gone (an ASGI http.disconnect), which stops a stream and its generation."""
        self.send_deadline = None
        self.transport.abort()

    # ------------------------------------------------------------------ a chunked body

    def _tell_promised(self) -> None:
        """Put in the request's scope how many bytes the chunk being read still promises, and wake
        the app to look, so that a chunk declaring more than a body may hold is a 413 at once, not a
        408 when the body's deadline is past. h11 knows the size once it has read the chunk's size
        line, before any of its bytes, but only in its reader's `_bytes_in_chunk` (h11 0.7 to 0.16):
        without it, nothing is told and the body is limited as it arrives, as before."""
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            return
        # a body all in promises nothing (its last read took the rest of what was promised before)
        reader = getattr(self.conn, "_reader", None) if cycle.more_body else None
        promised = getattr(reader, "_bytes_in_chunk", 0)
        if isinstance(promised, int) and promised != self.scope.get(PROMISED, 0):
            self.scope[PROMISED] = promised
            cycle.message_event.set()  # the app's receive() returns, with the bytes in so far

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with OpenAI's error JSON and close, if no answer has begun; else just close."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # SEND_RESPONSE: a request, no answer yet
            body = json.dumps(APIError(status, message).body()).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            reason = http.HTTPStatus(status).phrase.encode()
            answer = h11.Response(status_code=status, headers=headers, reason=reason)
            for event in (answer, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        self.transport.close()


def protocol(header_timeout: float = HEADER_TIMEOUT, send_timeout: float = SEND_TIMEOUT) -> type[Protocol]:
    """The class to give uvicorn.Config(http=...): uvicorn makes one per connection."""
    return type("Protocol", (Protocol,), {"header_timeout": header_timeout, "send_timeout": send_timeout})
