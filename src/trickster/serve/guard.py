"""What a POST must show before its body is read: that the body is JSON (or says nothing of its type,
as vLLM's FastAPI reads such a body), not compressed, and, when a browser sends it, that the page
sending it is the server's own (the playground).

A browser sends a POST whose body is text, a form or bytes from any page without asking the server
first (no CORS preflight): a page on another site, or on another port of this machine, could make
the server generate for it, reading no answer but taking the server's time. The origin check is
Go's `http.CrossOriginProtection`: the browser's `Sec-Fetch-Site` where it sends one, else its
`Origin` against the `Host` it asked (a browser sends one or the other with every cross-origin
POST); a request with neither comes from a program, such as curl or the `openai` package.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

from trickster.serve.schemas import APIError

OWN_PAGE = {"same-origin", "none"}  # Sec-Fetch-Site of the server's own page, or of a typed address


def check_post(request: Request) -> None:
    """A 415 for a body declared as something other than JSON, or compressed; a 403 for another
    origin's page."""
    headers = request.headers
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


def _is_json(declared: str) -> bool:
    media = declared.partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))
