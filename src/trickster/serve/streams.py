"""An answer's body, from a request's Generation: collected whole (a 499 when the client hangs up
first), or streamed as server-sent events in OpenAI's chunk format, ending with `data: [DONE]`, with
`usage` on the last chunk (or on a chunk of its own with `stream_options.include_usage`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

from trickster.serve import schemas
from trickster.serve.choices import Delta, Generation
from trickster.serve.schemas import APIError, ChatRequest, CompletionRequest

Collected = tuple[list[str], list[list[dict]], list[str | None]]  # texts, logprobs, finish reasons


async def _collect(generation: Generation) -> Collected:
    count = len(generation.choices)
    texts, logprobs, reasons = [""] * count, [[] for _ in range(count)], [None] * count
    async for delta in generation.deltas():
        texts[delta.index] += delta.text
        logprobs[delta.index] += delta.logprobs
        reasons[delta.index] = delta.finish_reason or reasons[delta.index]
    return texts, logprobs, reasons


async def collect_unless_gone(request: Request, generation: Generation) -> Collected:
    """`_collect`, or a 499 (nginx's 'client closed request', which no one reads) when the client
    hangs up first: its sequences then leave the batch (a stream notices by itself, as Starlette
    stops iterating it)."""
    collecting = asyncio.ensure_future(_collect(generation))
    hung_up = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({collecting, hung_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hung_up.cancel()
        collecting.cancel()  # a no-op once it is done; otherwise `deltas` cancels the sequences
    if not collecting.done() or collecting.cancelled():
        raise APIError(499, "the client closed the connection before its answer was ready")
    return collecting.result()


async def _disconnect(request: Request) -> None:
    """Returns when the client has gone (the body is read by now: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _with_last(generation: Generation) -> AsyncIterator[tuple[Delta, bool]]:
    """Each delta, and whether it finishes the last unfinished choice (the usage goes there)."""
    open_choices = len(generation.choices)
    async for delta in generation.deltas():
        open_choices -= delta.finish_reason is not None
        if delta.text or delta.logprobs or delta.finish_reason:
            yield delta, open_choices == 0


def _include_usage(req) -> bool:
    return req.stream_options is not None and req.stream_options.include_usage


def openai_logprobs(entries: list[dict]) -> dict:
    """OpenAI's legacy completions shape: parallel lists, text offsets into the whole completion
    (a stream's chunks too)."""
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [e["top"] for e in entries],
        "text_offset": [e["offset"] for e in entries],
    }


def sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def events():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
        except Exception as err:  # headers are gone: the error travels as an event, as OpenAI's does
            error = err if isinstance(err, APIError) else APIError(500, f"generation failed: {err}")
            yield f"data: {json.dumps(error.body())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def completion_chunks(generation: Generation, req: CompletionRequest) -> AsyncIterator[dict]:
    request_id = schemas.new_id("cmpl")
    async for delta, last in _with_last(generation):
        # a chunk without a token (the end's, or text a stop string held back) has null, not
        # four empty lists: as OpenAI's chat chunks without a token (its last); the client's
        # CompletionChoice.logprobs is Optional
        listed = req.logprobs is not None and delta.logprobs
        choice = {
            "index": delta.index,
            "text": delta.text,
            "logprobs": openai_logprobs(delta.logprobs) if listed else None,
            "finish_reason": delta.finish_reason,
        }
        yield _chunk("text_completion", request_id, req, [choice], generation, last)
    if _include_usage(req):
        yield _chunk("text_completion", request_id, req, [], generation, True)


async def chat_chunks(generation: Generation, req: ChatRequest) -> AsyncIterator[dict]:
    request_id, greeted = schemas.new_id("chatcmpl"), set()
    async for delta, last in _with_last(generation):
        message = {"content": delta.text} if delta.text or delta.finish_reason is None else {}
        if delta.index not in greeted:  # the first chunk of each choice names the role
            message = {"role": "assistant", **message}
            greeted.add(delta.index)
        choice = {
            "index": delta.index,
            "delta": message,
            "logprobs": None,
            "finish_reason": delta.finish_reason,
        }
        yield _chunk("chat.completion.chunk", request_id, req, [choice], generation, last)
    if _include_usage(req):
        yield _chunk("chat.completion.chunk", request_id, req, [], generation, True)


def _chunk(kind, request_id, req, choices, generation, last) -> dict:
    with_usage = (choices == []) if _include_usage(req) else last
    use = schemas.usage(generation.prompt_tokens, generation.completion_tokens) if with_usage else None
    return schemas.envelope(kind, request_id, req.model, choices, use, generation)
