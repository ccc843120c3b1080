"""How the server reads connections (serve/protocol.py), over real sockets: the request line and
headers have HEADER_TIMEOUT seconds (1 s here, 30 s in `trickster serve`), keep-alive and long
answers are untouched, and a request that is not HTTP gets OpenAI's error JSON."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time

import pytest

from .live_server import live_server

httpx = pytest.importorskip("httpx")

HEADER_TIMEOUT = 1.0
MODELS = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture(scope="module")
def server(trained_run):
    with live_server(trained_run, checkpoints=["best"], header_timeout=HEADER_TIMEOUT) as live:
        yield live


def connect(live) -> socket.socket:
    host, port = live.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)  # old uvicorn: no answer, TimeoutError


def answer(sock: socket.socket) -> tuple[int, str, dict]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.getheader("content-type"), json.loads(response.read())


def test_half_a_request_line_is_answered_408_and_closed_at_the_deadline(server):
    start = time.monotonic()
    with connect(server) as sock:
        sock.sendall(b"POST /v1/compl")
        status, kind, body = answer(sock)
        waited = time.monotonic() - start
        assert (status, kind) == (408, "application/json")
        assert "did not all arrive within 1 s" in body["error"]["message"]
        assert sock.recv(1) == b""  # closed
    assert HEADER_TIMEOUT - 0.1 < waited < HEADER_TIMEOUT + 1.5


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(server):
    start = time.monotonic()
    with connect(server) as sock:
        assert sock.recv(1) == b""  # closed without an answer, as an idle keep-alive connection is
    assert HEADER_TIMEOUT - 0.1 < time.monotonic() - start < HEADER_TIMEOUT + 1.5


def test_headers_trickling_in_do_not_push_the_deadline_back(server):
    """A header line every 0.25 s until 0.75 s: the 408 comes at 1 s after the connection opened,
    not 1 s after the last byte (slowloris keeps sending, so an idle timer never fires)."""
    start = time.monotonic()
    with connect(server) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n")
        for _ in range(3):
            time.sleep(0.25)
            sock.sendall(b"X-Slow: 1\r\n")
        status, _, _ = answer(sock)
        assert status == 408
        assert time.monotonic() - start < HEADER_TIMEOUT + 0.6


def test_a_slow_client_within_the_deadline_is_served_and_keeps_its_connection(server):
    """Headers in three parts over 0.6 s: served; the deadline starts again after each answer, so the
    same connection serves a second request 1.3 s after it opened, and a third, half sent, gets 408."""
    with connect(server) as sock:
        for part in (b"GET /v1/models HTTP/1.1\r\n", b"Host: localhost\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(0.3)
        status, _, models = answer(sock)
        assert status == 200 and [m["id"] for m in models["data"]] == ["best"]
        time.sleep(0.4)  # within uvicorn's keep-alive (5 s)
        sock.sendall(MODELS)
        assert answer(sock)[0] == 200
        sock.sendall(b"GET /v1/mod")
        assert answer(sock)[0] == 408


def test_an_answer_longer_than_the_deadline_is_not_cut(server, monkeypatch):
    from trickster.serve.engine import Batch

    decode = Batch._decode

    def slow_decode(self):
        time.sleep(0.2)
        decode(self)

    monkeypatch.setattr(Batch, "_decode", slow_decode)
    body = json.dumps({"model": "best", "prompt": "ROMEO:", "max_tokens": 10, "temperature": 0})
    start = time.monotonic()
    with connect(server) as sock:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body.encode())
        status, _, completion = answer(sock)
        assert status == 200 and completion["usage"]["completion_tokens"] == 10
        assert time.monotonic() - start > HEADER_TIMEOUT + 0.5
        sock.sendall(MODELS)  # and the connection is still open
        assert answer(sock)[0] == 200


@pytest.mark.parametrize(
    "request_",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        # over h11's 16 KiB, unfinished
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20_000,
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["request-line", "header-line", "no-host", "headers-too-long", "bad-chunk"],
)
def test_a_request_that_is_not_http_gets_openai_json_400_and_the_server_goes_on(server, request_):
    with connect(server) as sock:
        sock.sendall(request_)
        status, kind, body = answer(sock)
        assert (status, kind) == (400, "application/json")
        assert body["error"]["message"].startswith("the request is not valid HTTP (")
        assert body["error"]["type"] == "invalid_request_error"
        assert sock.recv(1) == b""
    assert httpx.get(server.url + "/v1/models").status_code == 200


def test_a_client_gone_mid_body_is_no_server_error(server, caplog):
    """A client that hangs up after part of its body (or whose chunk framing is broken, above) is no
    bug of the server: nothing is logged as an exception."""
    with connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
    time.sleep(0.3)
    assert "Exception in ASGI application" not in caplog.text


def read_until_closed(sock: socket.socket, wait: float = 6) -> bytes:
    """What the server sent, up to its end of the connection (a reset counts), or `wait` seconds."""
    sock.settimeout(wait)
    data = b""
    try:
        while part := sock.recv(65536):
            data += part
    except (ConnectionResetError, TimeoutError):
        pass
    return data


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_an_answer_left_unread_is_dropped_and_its_generation_stopped(trained_run, monkeypatch, stream):
    """16 completions of 58 tokens with 5 logprobs each (about 300 KB of answer) for a client that
    reads nothing: once the buffers are full (4 KB of kernel buffer on each side here, then
    asyncio's 64 KiB), the server waits 0.5 s for it to take some, then drops the connection, and a
    stream's sequences leave the batch (each decoding step slowed to 0.04 s: 58 would take 2.3 s).
    The answer waited for the client for ever: in a trial with 128 completions the server's send
    queue still held 2.8 MB after 20 s."""
    from trickster.serve.engine import Batch

    decode, steps = Batch._decode, []

    def slow_decode(self):
        time.sleep(0.04 if stream else 0)
        steps.append(len(self.rows))
        decode(self)

    monkeypatch.setattr(Batch, "_decode", slow_decode)
    with live_server(trained_run, checkpoints=["best"], send_timeout=0.5, send_buffer=4096) as live:
        fields = {"model": "best", "prompt": "ROMEO:", "n": 16, "max_tokens": 58, "logprobs": 5, "seed": 0}
        body = json.dumps({**fields, "stream": stream})
        host, port = live.url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            head = f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body.encode())
            time.sleep(3 if stream else 1.5)  # a stream takes 2.3 s to decode, if not stopped
            decoded = len(steps)
            data = read_until_closed(sock)
        head, _, answer = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        if stream:
            assert b"data: [DONE]" not in answer
            assert decoded < 50, f"{decoded} decoding steps for a client that read nothing"
        else:
            length = int(re.search(rb"content-length: (\d+)", head)[1])
            assert 0 <= len(answer) < length
        assert live.catalog.get("best").holds == 0
        assert (
            httpx.post(live.url + "/v1/completions", json={**fields, "n": 1, "max_tokens": 2}).status_code
            == 200
        )
