"""What a request must show before it is served: without an API key, that a browser asked for this
server by one of its names (HostGuard, before any route); for a POST, before its body is read, that
the body is JSON (or says nothing of its type, as vLLM's FastAPI reads such a body), not compressed,
and, when a browser sends it, that the page sending it is the server's own (check_post).

A page of another site can point a DNS name of its own at 127.0.0.1 (DNS rebinding): the browser
then takes the server for that site, sends the page's requests to it with that name in `Host` and
lets the page read every answer, as its own origin's. A name the user did not choose is refused;
an address is never a rebound name. ollama (allowedHost), Jupyter (local_hostnames) and
webpack-dev-server (allowedHosts) check the same header.

A browser sends a POST whose body is text, a form or bytes from any page without asking the server
first (no CORS preflight): a page on another site, or on another port of this machine, could make
the server generate for it, reading no answer but taking the server's time. The origin check is
Go's `http.CrossOriginProtection`: the browser's `Sec-Fetch-Site` where it sends one, else its
`Origin` against the `Host` it asked (a browser sends one or the other with every cross-origin
POST); a request with neither comes from a program, such as curl or the `openai` package.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from trickster.errors import UserError
from trickster.serve.schemas import APIError

OWN_PAGE = {"same-origin", "none"}  # Sec-Fetch-Site of the server's own page, or of a typed address
UNGUARDED = {"/health"}  # a probe may ask by any name (a container's), and the answer tells nothing
HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?", re.IGNORECASE)  # as a Host header holds it


def check_post(request: Request) -> None:
    """A 403 for another origin's page; a 415 for a body declared as something other than JSON, or
    compressed. The 403 first: a page posts text or a form without a preflight, and is to be told it
    may not call the API, not to send JSON, which it cannot without the preflight that fails."""
    headers = request.headers
    site, origin = headers.get("sec-fetch-site"), headers.get("origin")
    if site is not None:
        foreign = site.lower() not in OWN_PAGE
    else:
        foreign = origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower()
    if foreign:
        raise APIError(
            403,
            f"a web page of another origin ({origin or site}) may not call this API; call it from a "
            "program (curl, the openai package) or from the playground this server serves",
        )
    declared = headers.get("content-type")
    if declared is not None and not _is_json(declared):
        raise APIError(
            415,
            f"the request body must be JSON, and its Content-Type says {declared!r}; send the header "
            "'Content-Type: application/json' (curl: -H 'Content-Type: application/json')",
        )
    coding = headers.get("content-encoding", "identity")
    if coding.strip().lower() != "identity":  # its bytes were read as JSON text: 'not valid JSON'
        raise APIError(
            415,
            f"the request body is compressed (Content-Encoding: {coding}), and this server reads "
            "bodies as they are; send it uncompressed, without a Content-Encoding header",
        )


def _is_json(declared: str) -> bool:
    media = declared.partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


class HostGuard:
    """A 403 for a request whose `Host` is a name other than localhost (and its subdomains, which
    browsers keep on this machine) or one of `names`; an address (127.0.0.1, [::1], a LAN address),
    or no Host (not a browser's request), passes. Only mounted without --api-key: a rebound page
    cannot send a key it does not know."""

    def __init__(self, app: ASGIApp, names: Iterable[str]):
        self.app, self.names = app, {_bare(name) for name in names}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = Headers(scope=scope).get("host") if scope["type"] == "http" else None
        if not host or scope["path"] in UNGUARDED or self._ours(_bare(host)):
            return await self.app(scope, receive, send)
        error = APIError(
            403,
            f"Host {host!r} is not a name of this server: a page of another site may be reaching it "
            "through a DNS name pointed at this machine (DNS rebinding); ask for it by localhost or an "
            f"IP address, or start the server with --allowed-host {_bare(host)} if that name is yours, "
            "or with --api-key KEY",
        )
        await JSONResponse(error.body(), status_code=403)(scope, receive, send)

    def _ours(self, name: str) -> bool:
        if name == "localhost" or name.endswith(".localhost") or name in self.names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def allowed_hosts(names: list[str] | None, api_key: str | None) -> list[str]:
    """--allowed-host's names, each checked to be one a browser can send in `Host`."""
    if names and api_key is not None:
        raise UserError(
            "--allowed-host does nothing with --api-key: with a key any name is served, as a page of "
            "another site cannot send the key; leave out one of the two"
        )
    for name in names or []:
        if not HOST_NAME.fullmatch(name):
            raise UserError(
                f"--allowed-host takes a host name as a browser sends it, such as llm.example.com "
                "(letters, digits, dots and hyphens; no scheme, port or path; an address needs none), "
                f"not {name!r}"
            )
    return list(names or [])


def _bare(host: str) -> str:
    """A Host's name or address as compared: its port, an IPv6 address's brackets and a final dot
    (`localhost.` is `localhost`) left out, in lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.removesuffix(".")
