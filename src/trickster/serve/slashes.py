"""Paths that name a route another way. A path with a trailing slash is served as the path without
it: `POST /v1/completions/` is a completion, `GET /v1/models/` the list. A route's path without its
`/v1` (a client given the base URL `http://host:8000`) gets a 404 that says so.

Starlette, like FastAPI under vLLM, answers such a path with a bare 307 to the path without the
slash: an empty body that a client not following redirects (curl without -L, the `openai` package,
Python's urllib for a POST) shows as an empty answer, and one that follows it sends the request
again, body and all, for nothing. A base URL written with a slash (`http://host:8000/v1/`) and a
route joined onto it by hand give such paths.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send


class TrailingSlash:
    """The request's path without its trailing slashes (`/` itself kept), before any route or
    guard reads it (so `/health/` is the unguarded `/health`)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
            raw = scope.get("raw_path")
            if raw is not None:  # its query is not in it (ASGI): only the path's own slashes go
                scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


def without_v1(request: Request) -> str:
    """For a 404: where the request's path is one of its app's routes without the /v1
    (`/completions`), the words that say so."""
    path = request.url.path
    # any method: a route asked with another one is a partial match, and still the route meant
    asked = {"type": "http", "path": f"/v1{path}", "root_path": "", "method": "GET"}
    if any(route.matches(asked)[0] is not Match.NONE for route in request.app.routes):
        return f" (did you mean /v1{path}? a client's base URL ends in /v1: http://HOST:PORT/v1)"
    return ""
