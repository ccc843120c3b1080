"""The routes: OpenAI's /v1/models, /v1/completions and /v1/chat/completions, the playground at /,
and /health for a load balancer's or container's probe.

Every error is OpenAI's error JSON with its status, and the server goes on serving after it.
`usage` comes with every answer; streams.py shapes the answers streamed (OpenAI's server-sent
events) or collected whole.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from trickster.data.json_records import checked_text
from trickster.errors import UserError
from trickster.serve import chat, schemas, streams
from trickster.serve.body import BODY_TIMEOUT, MAX_BODY, read_body
from trickster.serve.chat import TemplateRefused
from trickster.serve.choices import Generation
from trickster.serve.context_room import check_room
from trickster.serve.engine import Engine
from trickster.serve.guard import HostGuard, check_post
from trickster.serve.models import Catalog
from trickster.serve.offered import Offered
from trickster.serve.schemas import APIError, ChatRequest, CompletionRequest
from trickster.serve.slashes import TrailingSlash, without_v1

MAX_CHOICES = 128  # completions in one request (prompts x n): one client cannot queue thousands


class Server:
    def __init__(
        self,
        catalog: Catalog,
        engine: Engine,
        api_key: str | None = None,
        max_body: int = MAX_BODY,
        body_timeout: float = BODY_TIMEOUT,
    ):
        self.catalog, self.engine, self.api_key = catalog, engine, api_key
        self.max_body, self.body_timeout = max_body, body_timeout

    # ------------------------------------------------------------------ routes

    async def playground(self, request: Request) -> Response:
        page = resources.files("trickster.serve").joinpath("playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    async def health(self, request: Request) -> Response:
        # no key asked, as vLLM's and llama.cpp's: a probe holds none, and the answer tells nothing
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        # as on disk now: a run served as it trains has written a new best, or a new step, meanwhile
        offered = await asyncio.to_thread(self.catalog.every)
        return JSONResponse({"object": "list", "data": [self._card(o) for o in offered]})

    async def model(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse(self._card(await self._offered(request.path_params["name"])))

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        req = schemas.parse(CompletionRequest, await self._body(request))
        offered = await self._offered(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt: give a string (or a list of strings) to continue", param="prompt")
        if len(prompts) * req.n > MAX_CHOICES:
            raise APIError(
                400,
                f"prompt: {len(prompts)} prompts with n={req.n} ask for {len(prompts) * req.n} completions; "
                f"one request asks for at most {MAX_CHOICES}",
                param="prompt",
            )
        # in a batch, an error names the prompt by its index, as pydantic names a message ("prompt.3")
        params = ["prompt"] if isinstance(req.prompt, str) else [f"prompt.{i}" for i in range(len(prompts))]

        def prepare(offered: Offered) -> tuple[list[list[int]], int]:
            ids = self._encode(offered, prompts, params)
            given = "max_tokens" in req.model_fields_set  # left out, or null: the default
            for one, param in zip(ids, params, strict=True):
                check_room(offered.context, len(one), req.max_tokens, param, given=given)
            return ids, req.max_tokens

        generation = await self._generation(offered, req, prepare, req.logprobs)
        if req.stream:
            return streams.sse(streams.completion_chunks(generation, req))
        texts, logprobs, reasons = await streams.collect_unless_gone(request, generation)
        choices = [
            {
                "index": i,
                "text": texts[i],
                "logprobs": streams.openai_logprobs(logprobs[i]) if req.logprobs is not None else None,
                "finish_reason": reasons[i],
            }
            for i in range(len(texts))
        ]
        use = schemas.usage(generation.prompt_tokens, generation.completion_tokens)
        return JSONResponse(
            schemas.envelope("text_completion", schemas.new_id("cmpl"), req.model, choices, use, generation)
        )

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        req = schemas.parse(ChatRequest, await self._body(request))
        offered = await self._offered(req.model)
        messages = [{"role": m.role, "content": m.content} for m in req.messages]

        def prepare(offered: Offered) -> tuple[list[list[int]], int]:
            if offered.chat_template is None:
                raise APIError(
                    400,
                    f"model {req.model!r} has no chat template: it continues text, so use "
                    "/v1/completions (or serve it with --chat-template FILE)",
                    param="model",
                    code="no_chat_template",
                )
            try:
                ids = offered.chat_template.prompt_ids(messages)
            except TemplateRefused as err:
                raise APIError(400, f"messages: {err}", param="messages") from None
            except UserError as err:
                raise APIError(400, f"messages: {err}", param="messages", code="unknown_character") from None
            if not ids:
                raise APIError(
                    400,
                    "messages: the chat template rendered these messages as no text; send some text "
                    "to answer",
                    param="messages",
                )
            max_tokens = req.max_completion_tokens or req.max_tokens or max(1, offered.context - len(ids))
            asked = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            check_room(offered.context, len(ids), max_tokens, "messages", asked)
            return [ids], max_tokens

        generation = await self._generation(offered, req, prepare, None)
        if req.stream:
            return streams.sse(streams.chat_chunks(generation, req))
        texts, _, reasons = await streams.collect_unless_gone(request, generation)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": texts[i]},
                "logprobs": None,
                "finish_reason": reasons[i],
            }
            for i in range(len(texts))
        ]
        use = schemas.usage(generation.prompt_tokens, generation.completion_tokens)
        return JSONResponse(
            schemas.envelope(
                "chat.completion", schemas.new_id("chatcmpl"), req.model, choices, use, generation
            )
        )

    # ------------------------------------------------------------------ checks

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        # 'Bearer KEY', the scheme in any case and one space or more (RFC 9110 11.4)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.lstrip(" ") if scheme.lower() == "bearer" else ""
        if not token:
            raise APIError(401, _no_key(header), code="invalid_api_key")
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise APIError(
                401, "the API key is wrong; use the key the server was started with", code="invalid_api_key"
            )

    async def _body(self, request: Request) -> bytes:
        check_post(request)  # a JSON body, not from another origin's page
        return await read_body(request, self.max_body, self.body_timeout)

    async def _offered(self, name: str) -> Offered:
        """The model asked for, as on disk now (Catalog.current, off the event loop: a replaced
        checkpoint is read anew, one saved since the start found); the request tokenizes with it and
        holds it to the end, or takes the one its hold gives for both (_generation)."""
        offered = await asyncio.to_thread(self.catalog.current, name)
        if offered is None or self.catalog.gone(name):
            raise self._not_found(name, unknown=not self.catalog.gone(name))
        return offered

    def _not_found(self, name: str, unknown: bool) -> APIError:
        have = ", ".join(n for n in self.catalog.offered if not self.catalog.gone(n))
        what = "does not exist" if unknown else "was deleted from disk after the server started"
        return APIError(404, f"model {name!r} {what}; this server has: {have}", "model", "model_not_found")

    async def _hold(self, offered: Offered) -> Offered:
        """The model held in memory for a request (Catalog.hold: the one offered now if `offered` was
        replaced and unloaded meanwhile): at once if it is loaded, else off the event loop (loading,
        or waiting for room, blocks)."""
        name = offered.name
        try:
            held = self.catalog.hold(offered, load=False)  # at once, if it is loaded
            return held or await run_in_threadpool(self.catalog.hold, offered)
        except Exception as err:
            # deleted after `_offered` saw it (a run pruning it as the request came in): whatever
            # the load tripped over, the answer a request a moment later gets
            if self.catalog.gone(name):
                raise self._not_found(name, unknown=False) from None
            if self.catalog.replacing(name):  # still, after models.REPLACE_WAIT: its writer stopped?
                raise APIError(
                    503, f"model {name!r} is being replaced on disk (a new {name} written); ask again"
                ) from None
            if isinstance(err, UserError):
                raise APIError(500, f"model {name!r} could not be loaded: {err}") from None
            raise

    def _encode(self, offered: Offered, prompts: list[str], params: list[str]) -> list[list[int]]:
        """Each prompt's ids, started as `trickster generate` starts a prompt; an error names the
        prompt's param."""
        encoded = []
        for prompt, param in zip(prompts, params, strict=True):
            try:
                ids = chat.encode(
                    offered.tokenizer, checked_text(prompt, "the prompt", "send whole characters")
                )
            except UserError as err:
                raise APIError(400, f"{param}: {err}", param=param, code="unknown_character") from None
            if not ids:
                raise APIError(400, f"{param} is empty; give some text to continue", param=param)
            encoded.append(offered.tokenizer.start_ids() + ids)
        return encoded

    async def _generation(self, offered, req, prepare, logprobs) -> Generation:
        """The request's choices, with its model held (after `prepare` has tokenized its prompts and
        checked them: a refused request loads nothing); the generation releases it. One version of
        the model does both: the hold may give the one that replaced `offered` on disk (another
        run's, perhaps, with another tokenizer), and then that one tokenizes anew."""
        # off the event loop (in asyncio's threads, not those where requests wait for a model's
        # room): tokenizing 1 MiB of prompt takes a bpe tokenizer seconds
        ids, max_tokens = await asyncio.to_thread(prepare, offered)
        held = await self._hold(offered)
        release = functools.partial(self.catalog.release, held)
        try:
            if held is not offered:
                ids, max_tokens = await asyncio.to_thread(prepare, held)
            top_p = req.top_p if req.top_p < 1 else None
            sampling = dict(
                max_tokens=max_tokens,
                temperature=req.temperature,
                top_k=req.top_k,
                top_p=top_p,
                logprobs=logprobs,
            )
            return Generation(self.engine, held, ids, req.n, sampling, req.seed, req.stop or [], release)
        except BaseException:
            release()
            raise

    def _card(self, offered: Offered) -> dict:
        default = offered.name == self.catalog.default  # kept in memory; the playground's first pick
        return schemas.model_card(offered.name, offered.created, {**offered.card(), "default": default})


async def _api_error(request: Request, err: APIError) -> Response:
    # a 408 closes the connection (RFC 9110 asks it), as the rest of a slow body is not worth waiting
    # for. A 413 does not: a client writing a big body at full speed reads its answer only once it
    # has written it all, and a connection closed under it is a reset ('Broken pipe' in http.client)
    # instead of the 413; uvicorn reads and drops the rest of the body.
    headers = {"Connection": "close"} if err.status == 408 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _http_error(request: Request, err: HTTPException) -> Response:
    """Starlette's own errors (no route, wrong method) in OpenAI's shape, with their headers (Allow)."""
    message = {
        404: f"no route {request.url.path}{without_v1(request)}; this server answers "
        f"{_api_routes(request.app.routes)} (and the playground at /)",
        405: f"{request.method} is not allowed on {request.url.path}; use {(err.headers or {}).get('Allow')}",
    }
    error = APIError(err.status_code, message.get(err.status_code, str(err.detail)))
    return JSONResponse(error.body(), status_code=error.status, headers=err.headers)


def _api_routes(routes: list) -> str:
    """What a client that asked for another route (/v1/embeddings, /v1/responses, /completions) can
    have: the app's /v1 routes but those with a parameter, each with its method ('GET /v1/models')."""
    named = [
        f"{'GET' if 'GET' in route.methods else min(route.methods)} {route.path}"
        for route in routes
        if isinstance(route, Route) and route.path.startswith("/v1/") and "{" not in route.path
    ]
    return f"{', '.join(named[:-1])} and {named[-1]}" if len(named) > 1 else "".join(named)


async def _bug(request: Request, err: Exception) -> Response:
    return await _api_error(request, APIError(500, f"internal error ({type(err).__name__}: {err})"))


def create_app(
    catalog: Catalog,
    engine: Engine,
    api_key: str | None = None,
    max_body: int = MAX_BODY,
    body_timeout: float = BODY_TIMEOUT,
    allowed_hosts: tuple[str, ...] = (),  # besides localhost, without an API key (guard.HostGuard)
) -> Starlette:
    server = Server(catalog, engine, api_key, max_body, body_timeout)
    routes = [
        Route("/", server.playground),
        Route("/health", server.health),
        Route("/v1/models", server.models),
        Route("/v1/models/{name:path}", server.model),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
    ]
    handlers = {APIError: _api_error, HTTPException: _http_error, Exception: _bug}
    guards = [] if api_key is not None else [Middleware(HostGuard, names=allowed_hosts)]
    return Starlette(
        routes=routes, exception_handlers=handlers, middleware=[Middleware(TrailingSlash), *guards]
    )


def _no_key(header: str) -> str:
    """A 401's words for an Authorization `header` with no Bearer key in it (blank when none came).
    Only a scheme is named, never what follows it, which may be a secret."""
    scheme, space, _ = header.strip(" ").partition(" ")
    if not scheme:
        given = "no API key given"
    elif scheme.lower() == "bearer":
        given = "the Authorization header has no key after 'Bearer'"
    elif space:
        given = f"the Authorization header is '{scheme} ...', not 'Bearer KEY'"
    else:
        given = "the Authorization header does not start with 'Bearer '"
    return f"{given}; send the header 'Authorization: Bearer KEY'"
