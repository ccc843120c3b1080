"""OpenAI's request fields that change nothing in the text (who asked, what to tag or store, which
tier): accepted and ignored, once their value has the type OpenAI's API gives it. A value of
another type is a 400 naming the field, as OpenAI answers it, so a client's mistake shows here
as it would there instead of passing unseen (`"store": "no"`, `"metadata": {"run": 3}`).

Each field maps to a check that says what is wrong with a value (None: nothing). Only the type
is checked, and metadata's limits, which are part of its type in OpenAI's reference; a string's
value is not (a `service_tier` OpenAI adds later is still a string).
"""

from __future__ import annotations

from collections.abc import Callable

Check = Callable[[object], "str | None"]

METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512  # OpenAI's limits


def _of(kind: type, words: str) -> Check:
    # strict, as the declared fields: true is no number, and no string is a boolean
    return lambda value: None if isinstance(value, kind) else f"Input should be a valid {words}"


def _metadata(value: object) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return "Input should be an object whose values are strings"
    if len(value) > METADATA_KEYS:
        return f"Input should have at most {METADATA_KEYS} keys (it has {len(value)})"
    if key := next((k for k in value if len(k) > METADATA_KEY_CHARS), None):
        return f"key {key[:20]!r}... is {len(key)} characters; a key has at most {METADATA_KEY_CHARS}"
    if key := next((k for k, v in value.items() if len(v) > METADATA_VALUE_CHARS), None):
        return (
            f"the value of {key!r} is {len(value[key])} characters; a value has at most "
            f"{METADATA_VALUE_CHARS}"
        )
    return None


STRING, BOOLEAN = _of(str, "string"), _of(bool, "boolean")

# in the body of /v1/completions and /v1/chat/completions
HARMLESS: dict[str, Check] = {
    "user": STRING,
    "metadata": _metadata,
    "store": BOOLEAN,
    "service_tier": STRING,
    "safety_identifier": STRING,
    "prompt_cache_key": STRING,
    "parallel_tool_calls": BOOLEAN,
}
# in a chat message: a participant's name; the sources an answer cited (an answer sent back)
MESSAGE_HARMLESS: dict[str, Check] = {"name": STRING, "annotations": _of(list, "array")}
# in stream_options: include_obfuscation pads chunks with a field of random characters, which this
# server's chunks do without; the text is the same
STREAM_OPTIONS_HARMLESS: dict[str, Check] = {"include_obfuscation": BOOLEAN}
