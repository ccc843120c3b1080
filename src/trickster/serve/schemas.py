"""The requests the server accepts (pydantic, strict: a wrongly typed field is an error, not a guess),
the answers it gives, and OpenAI's error object."""

from __future__ import annotations

import difflib
import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trickster import untrusted
from trickster.errors import single_line


class APIError(Exception):
    """An answer in OpenAI's error format: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        message = single_line(message)  # a path, a file name or an exception's text may hold a break
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


# OpenAI's fields that change nothing in the text: accepted, whatever they say, and ignored
HARMLESS = {
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "parallel_tool_calls",
}
TOOLS = "this model does not call tools (it answers with text only)"
# OpenAI's fields that would change the answer in a way this server does not: accepted only with the
# value that asks for nothing (as clients send by default), else a 400 naming the field, never an
# answer that silently is something else. Each: (whether a value asks for nothing, why not, the fix).
UNSUPPORTED = {
    "frequency_penalty": (lambda v: v == 0, "this server applies no penalties", "send 0 or leave it out"),
    "presence_penalty": (lambda v: v == 0, "this server applies no penalties", "send 0 or leave it out"),
    "logit_bias": (lambda v: v == {}, "this server does not bias tokens", "leave it out"),
    "echo": (lambda v: v is False, "the answer never repeats the prompt", "leave it out"),
    "best_of": (lambda v: v == 1, "this server returns every completion it makes", "ask for n of them"),
    "suffix": (lambda v: v == "", "this server continues text, never inserts it", "leave it out"),
    "logprobs": (lambda v: v is False, "chat answers carry no logprobs", "use /v1/completions for them"),
    "top_logprobs": (lambda v: v == 0, "chat answers carry no logprobs", "use /v1/completions for them"),
    "tools": (lambda v: v == [], TOOLS, "leave it out"),
    "functions": (lambda v: v == [], TOOLS, "leave it out"),
    "tool_choice": (lambda v: v in ("none", "auto"), TOOLS, "leave it out"),
    "function_call": (lambda v: v in ("none", "auto"), TOOLS, "leave it out"),
    "response_format": (
        lambda v: v == {"type": "text"},
        "this server does not constrain the answer to JSON",
        "leave it out",
    ),
    "modalities": (lambda v: v == ["text"], "this model answers with text only", "leave it out"),
    "audio": (lambda v: False, "this model answers with text only", "leave it out"),
    "prediction": (lambda v: False, "this server takes no predicted output", "leave it out"),
    "reasoning_effort": (lambda v: False, "this model does not reason before answering", "leave it out"),
    "verbosity": (lambda v: False, "this server does not adjust the answer's length to it", "use max_tokens"),
    "web_search_options": (lambda v: False, "this server does not search the web", "leave it out"),
}


class Request(BaseModel):
    """strict: "16" is not 16. A field it does not declare is refused with a 400 naming it (as
    OpenAI refuses names it does not know), unless it is one of OpenAI's that change nothing in the
    text (HARMLESS) or that ask for nothing with the value sent (UNSUPPORTED). The APIError is
    raised from validation: pydantic lets it through, and the route answers it."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(description="a checkpoint of the run: best, final, step_000500, untrained")
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False, description="0 means greedy")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, description="an extension (as vLLM has it); 0 or -1 means off")
    stop: str | list[str] | None = Field(None, description="up to 4 strings that end the text")
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        """OpenAI documents its optional fields as "... or null": a null one takes its default."""
        if not isinstance(data, dict):
            return data
        optional = {name for name, field in cls.model_fields.items() if not field.is_required()}
        return {key: value for key, value in data.items() if value is not None or key not in optional}

    @model_validator(mode="after")
    def _no_field_ignored(self):
        for name, value in (self.model_extra or {}).items():
            if value is None or name in HARMLESS:  # null: OpenAI's "not given"
                continue
            if name in UNSUPPORTED:
                asks_nothing, why, fix = UNSUPPORTED[name]
                if asks_nothing(value):
                    continue
                raise APIError(
                    400, f"{name}: {why}; {fix} (got {json.dumps(value)[:80]})", name, "unsupported_parameter"
                )
            known = [*type(self).model_fields, *HARMLESS]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise APIError(
                400,
                f"{name}: unrecognized request argument{hint}; fix its name or leave it out",
                name,
                "unknown_parameter",
            )
        return self

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, value):
        if value is None or isinstance(value, str) or _strings(value):
            return value
        raise ValueError("give a string or a list of up to 4 strings")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("give at most 4 non-empty stop strings")
        return stops

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value):
        if value is not None and value < -1:  # not a count of tokens, nor one of vLLM's two "off"s
            raise ValueError("give a number of tokens (1 or more), or 0 or -1 for off")
        return None if value is not None and value <= 0 else value


class CompletionRequest(Request):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_text(cls, value):
        if isinstance(value, str) or _strings(value):
            return value
        raise ValueError("give a string or a list of strings (token ids are not taken)")


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, value):
        """A string, or OpenAI's list of content parts: their texts, joined."""
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(part, dict) for part in value):
            other = [part.get("type") for part in value if part.get("type") != "text"]
            if None in other:  # OpenAI's parts all name their type
                raise ValueError('a part has no "type"; send {"type": "text", "text": "..."}')
            if other:
                raise ValueError(f"this model reads text only; drop the {other[0]!r} part")
            if all(isinstance(part.get("text"), str) for part in value):
                return "".join(part["text"] for part in value)
        raise ValueError('give a string or a list of parts {"type": "text", "text": "..."}')


class ChatRequest(Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="default: the rest of the context")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def parse(kind: type[BaseModel], raw: bytes) -> BaseModel:
    """The request body as `kind`, or an APIError naming the first field that is wrong."""
    try:
        data = untrusted.parse(json.loads, raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON ({err}); send a JSON object") from None
    except untrusted.Unreadable as err:
        raise APIError(400, f"the request body {err.reason}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        got = "" if first["type"] == "missing" else f" (got {json.dumps(first.get('input'))[:80]})"
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param}: {message}{got}", param=param) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(kind: str, request_id: str, model: str, choices: list[dict], use: dict | None) -> dict:
    """kind: text_completion, chat.completion or chat.completion.chunk."""
    body = {"id": request_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def model_card(name: str, created: int, extra: dict) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "trickster", **extra}
