"""The requests the server accepts (pydantic, strict: a wrongly typed field is an error, not a guess),
the answers it gives, and OpenAI's error object."""

from __future__ import annotations

import difflib
import json
import uuid
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trickster import untrusted
from trickster.errors import did_you_mean, single_line
from trickster.serve.ignored import HARMLESS, MESSAGE_HARMLESS, STREAM_OPTIONS_HARMLESS, Check


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
    model_config = ConfigDict(strict=True, extra="ignore")  # Request checks the others first
    include_usage: bool = False


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
# the type OpenAI gives the numbers among them: checked before the value, as pydantic checks declared
# fields, since Python's True == 1 and False == 0 (`best_of: true` passed as 1)
NUMBERS = {"frequency_penalty": float, "presence_penalty": float, "best_of": int, "top_logprobs": int}
# the same rules inside a chat message (OpenAI's fields of messages, an answer's sent back included)
MESSAGE_UNSUPPORTED = {
    "tool_calls": (lambda v: v == [], TOOLS, "leave it out"),
    "function_call": (lambda v: False, TOOLS, "leave it out"),
    "tool_call_id": (lambda v: False, TOOLS, "leave it out"),
    "refusal": (lambda v: v == "", "the chat template renders content only", "put the text in content"),
    "audio": (lambda v: False, "this model reads and answers text only", "leave it out"),
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
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # as `generate --seed` and OpenAI's API take it
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

    @model_validator(mode="before")
    @classmethod
    def _no_stream_option_ignored(cls, data):
        options = data.get("stream_options") if isinstance(data, dict) else None
        if isinstance(options, dict):
            known = set(StreamOptions.model_fields)
            extra = {k: v for k, v in options.items() if k not in known}
            refuse_ignored(extra, known, STREAM_OPTIONS_HARMLESS, {}, "stream_options.")
        return data

    @model_validator(mode="after")
    def _no_field_ignored(self):
        refuse_ignored(self.model_extra or {}, set(type(self).model_fields), HARMLESS, UNSUPPORTED)
        return self

    @model_validator(mode="after")
    def _stream_options_with_a_stream(self):
        """As OpenAI (and vLLM) refuse them: options of a stream that is not asked for change nothing."""
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400,
                'stream_options: only allowed when stream is true; send "stream": true, or leave '
                "stream_options out",
                "stream_options",
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

    @field_validator("logprobs", mode="before")
    @classmethod
    def _logprobs_count(cls, value):
        """A count of tokens here (OpenAI's spec, and its client's type); chat's form is a bool.
        false asks for none (what Python's logprobs=False sends, bool being an int there); true
        does not say how many."""
        if value is False:
            return None
        if value is True:
            raise ValueError(
                "on /v1/completions it is how many of the likeliest tokens to list beside each token: "
                "send a number from 0 to 20 (true/false is chat's form), or false or null for none"
            )
        return value

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_text(cls, value):
        if isinstance(value, str) or _strings(value):
            return value
        raise ValueError("give a string or a list of strings (token ids are not taken)")


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # ChatRequest checks the others first
    role: Literal["system", "developer", "user", "assistant"]
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

    @model_validator(mode="after")
    def _one_limit(self):
        """Both names of the limit, with different values: OpenAI deprecates max_tokens for
        max_completion_tokens, and vLLM takes max_completion_tokens over it unsaid; which the client
        meant is not known, so it is asked to send one (equal values say one thing)."""
        old, new = self.max_tokens, self.max_completion_tokens
        if old is not None and new is not None and old != new:
            raise APIError(
                400,
                f"max_tokens ({old}) and max_completion_tokens ({new}) differ: send one of them "
                "(max_completion_tokens is the current name)",
                "max_tokens",
            )
        return self

    @field_validator("messages", mode="before")
    @classmethod
    def _some(cls, value):
        if value == []:  # pydantic's words: "List should have at least 1 item after validation"
            raise ValueError('give at least one message, such as {"role": "user", "content": "Hello"}')
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_message_field_ignored(cls, data):
        """Each message's fields by the request's rules (before its own: a tool call's message has
        no content, and 'content: give a string' would hide why). A tool's answer (role tool, or
        the older function) is refused: this model never asked for one."""
        messages = data.get("messages") if isinstance(data, dict) else None
        for i, message in enumerate(messages if isinstance(messages, list) else []):
            if not isinstance(message, dict):
                continue
            if message.get("role") in ("tool", "function"):
                raise APIError(
                    400,
                    f"messages.{i}.role: {TOOLS}, so it reads no tool's answer; leave out the "
                    f"messages of role {message['role']}",
                    f"messages.{i}.role",
                    "unsupported_parameter",
                )
            known = set(ChatMessage.model_fields)
            extra = {k: v for k, v in message.items() if k not in known}
            refuse_ignored(extra, known, MESSAGE_HARMLESS, MESSAGE_UNSUPPORTED, f"messages.{i}.")
        return data


def refuse_ignored(
    extra: dict, known: set[str], harmless: dict[str, Check], unsupported: dict, at: str = ""
) -> None:
    """A 400 for the first field in `extra` (those the model does not declare) that would be ignored
    while it changes the answer, or is not of the type OpenAI takes: each of `harmless` passes,
    whatever it says, if of its type (ignored.py); one of `unsupported` passes only with the value
    that asks for nothing; any other name is unrecognized, with the nearest known one. `at`
    prefixes the names in the message and param ("messages.2.")."""
    for name, value in extra.items():
        if value is None:  # null: OpenAI's "not given"
            continue
        if name in harmless:
            if wrong := harmless[name](value):
                raise APIError(400, f"{at}{name}: {wrong} (got {json.dumps(value)[:80]})", at + name)
            continue
        if name in unsupported:
            if name in NUMBERS and not _number(value, NUMBERS[name]):
                kind = "integer" if NUMBERS[name] is int else "number"
                got = json.dumps(value)[:80]
                raise APIError(400, f"{at}{name}: Input should be a valid {kind} (got {got})", at + name)
            asks_nothing, why, fix = unsupported[name]
            if asks_nothing(value):
                continue
            raise APIError(
                400,
                f"{at}{name}: {why}; {fix} (got {json.dumps(value)[:80]})",
                at + name,
                "unsupported_parameter",
            )
        hint = did_you_mean(name, sorted({*known, *harmless}), prefix=at)
        raise APIError(
            400,
            f"{at}{name}: unrecognized request argument{hint}; fix its name or leave it out",
            at + name,
            "unknown_parameter",
        )


def _number(value, kind: type) -> bool:
    """Whether a JSON value is of `kind` as pydantic's strict mode takes it: an int is a float too,
    a bool is neither."""
    return not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def parse(kind: type[BaseModel], raw: bytes) -> BaseModel:
    """The request body as `kind`, or an APIError naming the first field that is wrong."""
    try:
        data = untrusted.parse(json.loads, raw)
    except UnicodeDecodeError as err:
        raise APIError(
            400,
            f"the request body is not UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start:,} is "
            "not valid UTF-8); send JSON text encoded as UTF-8",
        ) from None
    except json.JSONDecodeError as err:
        raise APIError(400, f"the request body is not valid JSON ({err}); send a JSON object") from None
    except untrusted.Unreadable as err:
        raise APIError(400, f"the request body {err.reason}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "missing":
            _refuse_misspelt(kind, data, first["loc"])
        param = ".".join(str(part) for part in first["loc"]) or None
        got = "" if first["type"] == "missing" else f" (got {json.dumps(first.get('input'))[:80]})"
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param}: {message}{got}", param=param) from None


def _refuse_misspelt(kind: type[BaseModel], data: dict, loc: tuple) -> None:
    """A 400 naming a field beside the missing one at `loc` that is its name misspelt (`promt` for
    prompt), as refuse_ignored names it: 'prompt: Field required' hid the typo to fix."""
    *outer, missing = loc
    record = data
    for part in outer:
        record = record[part] if isinstance(record, (dict, list)) else None
    if not isinstance(record, dict) or not isinstance(missing, str):
        return
    known = set(kind.model_fields) if not outer else set()
    unknown = [name for name in record if name not in known and name != missing]
    close = difflib.get_close_matches(missing, unknown, n=1, cutoff=0.6)
    if close:
        at = "".join(f"{part}." for part in outer)
        raise APIError(
            400,
            f"{at}{close[0]}: unrecognized request argument (did you mean {at}{missing}?); fix its name",
            at + close[0],
            "unknown_parameter",
        )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Answering(Protocol):
    """What every answer and chunk of one request's generation (choices.Generation) says as OpenAI's do."""

    created: int  # when its generation began, the same in each chunk of a stream
    system_fingerprint: str | None  # which weights answer (models.Offered.system_fingerprint)


def envelope(
    kind: str, request_id: str, model: str, choices: list[dict], use: dict | None, generation: Answering
) -> dict:
    """kind: text_completion, chat.completion or chat.completion.chunk."""
    body = {"id": request_id, "object": kind, "created": generation.created, "model": model}
    body |= {"system_fingerprint": generation.system_fingerprint, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body


def model_card(name: str, created: int, extra: dict) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "trickster", **extra}
