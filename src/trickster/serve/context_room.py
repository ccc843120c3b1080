"""Whether a request's prompt and the tokens it asks for fit its model's context."""

from __future__ import annotations

from trickster.serve.schemas import APIError


def check_room(
    context: int,
    prompt_tokens: int,
    max_tokens: int,
    prompt_param: str = "prompt",
    max_param: str = "max_tokens",
    given: bool = True,
) -> None:
    """A 400 naming the request's fields when the prompt fills the context or the tokens asked for
    do not fit after it; `given` false: the request left max_tokens to its default, and the message
    says so (a client that never sent 16 would not know where it came from)."""
    room = context - prompt_tokens
    if room < 1:
        # a chat's messages as the chat template renders them, which its client never sees as a prompt
        shorter = "send shorter or fewer messages" if prompt_param == "messages" else "send a shorter prompt"
        raise APIError(
            400,
            f"{prompt_param}: {prompt_tokens} tokens fill this model's context of {context} tokens; "
            + shorter,
            param=prompt_param,
            code="context_length_exceeded",
        )
    if max_tokens > room:
        told = "" if given else f" (the default, as the request gives no {max_param})"
        fix = f"ask for at most {room}" if given else f"send {max_param} of at most {room}"
        raise APIError(
            400,
            f"{max_param}: {max_tokens} new tokens{told} after a prompt of {prompt_tokens} exceed this "
            f"model's context of {context} tokens; {fix}",
            param=max_param,
            code="context_length_exceeded",
        )
