"""What `trickster serve` takes from a client beyond the fields it uses: the paths it answers (a
trailing slash), and OpenAI's fields it ignores, checked to be of the type OpenAI takes."""

from __future__ import annotations

import pytest
import torch

from .live_server import live_server

httpx = pytest.importorskip("httpx")

CHAT_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
GOOD = {"model": "best", "prompt": "ROMEO:", "max_tokens": 8, "seed": 3}
CHAT = {"model": "best", "messages": [{"role": "user", "content": "Who?"}], "max_tokens": 8, "seed": 3}


@pytest.fixture(scope="module")
def server(trained_run):
    with live_server(trained_run, chat_template=CHAT_TEMPLATE, checkpoints=["best"]) as live:
        yield live


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def test_a_trailing_slash_is_the_same_route(server):
    """POST /v1/completions/ was a bare 307 with an empty body (Starlette's redirect, as FastAPI
    gives vLLM): curl without -L and the openai client showed nothing, and every other client
    sent the whole request twice. Each route answers with or without a slash, /health/ too for a
    name the server does not know (it is the unguarded /health)."""
    for path, body in [("/v1/completions", GOOD), ("/v1/chat/completions", CHAT)]:
        plain, slashed = _post(server, path, body), _post(server, path + "/", body)
        assert slashed.status_code == 200, slashed.text
        assert slashed.json()["choices"] == plain.json()["choices"]
    assert [m["id"] for m in httpx.get(server.url + "/v1/models/").json()["data"]] == ["best"]
    assert httpx.get(server.url + "/v1/models/best/").json()["id"] == "best"
    assert httpx.get(server.url + "/health/", headers={"Host": "rebind.example"}).json() == {"status": "ok"}
    missing = httpx.get(server.url + "/v1/embeddings/")
    assert missing.status_code == 404 and "no route /v1/embeddings;" in missing.json()["error"]["message"]


def _message(**extra) -> dict:
    return {**CHAT, "messages": [{"role": "user", "content": "Who?", **extra}]}


WRONG_TYPES = [
    ("user", {**GOOD, "user": 5}, "user: Input should be a valid string (got 5)"),
    ("store", {**CHAT, "store": "no"}, 'store: Input should be a valid boolean (got "no")'),
    ("service_tier", {**GOOD, "service_tier": 1}, "service_tier: Input should be a valid string (got 1)"),
    (
        "safety_identifier",
        {**CHAT, "safety_identifier": []},
        "safety_identifier: Input should be a valid string",
    ),
    (
        "prompt_cache_key",
        {**GOOD, "prompt_cache_key": {}},
        "prompt_cache_key: Input should be a valid string",
    ),
    (
        "parallel_tool_calls",
        {**CHAT, "parallel_tool_calls": 1},
        "parallel_tool_calls: Input should be a valid boolean",
    ),
    (
        "metadata",
        {**GOOD, "metadata": {"run": 3}},
        "metadata: Input should be an object whose values are strings",
    ),
    ("metadata", {**GOOD, "metadata": ["a"]}, "metadata: Input should be an object whose values are strings"),
    (
        "metadata",
        {**CHAT, "metadata": {f"k{i}": "v" for i in range(17)}},
        "metadata: Input should have at most 16 keys (it has 17)",
    ),
    ("metadata", {**GOOD, "metadata": {"k" * 65: "v"}}, "is 65 characters; a key has at most 64"),
    (
        "metadata",
        {**GOOD, "metadata": {"k": "v" * 513}},
        "the value of 'k' is 513 characters; a value has at most 512",
    ),
    ("messages.0.name", _message(name=7), "messages.0.name: Input should be a valid string (got 7)"),
    (
        "messages.0.annotations",
        _message(annotations="cited"),
        "messages.0.annotations: Input should be a valid array",
    ),
    (
        "stream_options.include_obfuscation",
        {**CHAT, "stream": True, "stream_options": {"include_obfuscation": "false"}},
        'stream_options.include_obfuscation: Input should be a valid boolean (got "false")',
    ),
]


@pytest.mark.parametrize(
    ("param", "body", "said"), WRONG_TYPES, ids=[f"{w[0]}-{i}" for i, w in enumerate(WRONG_TYPES)]
)
def test_an_ignored_field_of_another_type_than_openai_takes_is_400(server, param, body, said):
    """These fields change nothing in the text, and were accepted whatever their value: OpenAI
    answers a wrong type with a 400, so a client's mistake went unseen here."""
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    answer = _post(server, path, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert said in error["message"] and error["param"] == param, error
    assert error["type"] == "invalid_request_error"


def test_ignored_fields_of_the_right_type_change_nothing(server):
    fine = {
        "user": "me",
        "store": False,
        "service_tier": "flex",  # a tier OpenAI names later is a string too
        "metadata": {"k" * 64: "v" * 512, **{f"k{i}": "" for i in range(15)}},
        "safety_identifier": "hash",
        "prompt_cache_key": "key",
        "parallel_tool_calls": True,
    }
    assert (
        _post(server, "/v1/completions", {**GOOD, **fine}).json()["choices"]
        == (_post(server, "/v1/completions", GOOD).json()["choices"])
    )
    named = _message(name="romeo", annotations=[])
    assert (
        _post(server, "/v1/chat/completions", named).json()["choices"]
        == (_post(server, "/v1/chat/completions", CHAT).json()["choices"])
    )


def test_a_chat_that_fills_the_context_asks_for_shorter_messages(server):
    """A chat has no prompt its client wrote: it was told to 'send a shorter prompt'."""
    long = {**CHAT, "messages": [{"role": "user", "content": "a" * 200}]}
    del long["max_tokens"]
    error = _post(server, "/v1/chat/completions", long).json()["error"]
    assert error["message"].endswith(
        "tokens fill this model's context of 64 tokens; send shorter or fewer messages"
    )
    assert error["param"] == "messages" and error["code"] == "context_length_exceeded"


def test_a_route_without_its_v1_says_where_the_base_url_goes_wrong(server):
    """A client given http://HOST:PORT as its base URL asks for /completions: the 404 listed the
    routes, and left the user to spot the missing /v1."""
    for method, path in [("POST", "/completions"), ("POST", "/chat/completions"), ("GET", "/models/best")]:
        answer = httpx.request(method, server.url + path, json=GOOD)
        assert answer.status_code == 404
        said = (
            f"no route {path} (did you mean /v1{path}? a client's base URL ends in /v1: http://HOST:PORT/v1)"
        )
        assert answer.json()["error"]["message"].startswith(said)
    assert "did you mean" not in httpx.get(server.url + "/v1/embeddings").json()["error"]["message"]


def test_a_route_added_to_the_app_is_named_when_asked_for_without_its_v1(trained_run):
    """The 404's 'did you mean /v1...' kept its own list of routes beside the app's: a route added
    to the app, as /v1/embeddings would be, got no hint until someone remembered that list too."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from trickster.serve.app import create_app
    from trickster.serve.engine import Engine
    from trickster.serve.models import Catalog

    engine = Engine(1)
    try:
        app = create_app(Catalog(trained_run, torch.device("cpu"), ["best"]), engine, api_key="k")
        app.router.routes.append(Route("/v1/embeddings", lambda request: JSONResponse({}), methods=["POST"]))
        client = TestClient(app, headers={"Authorization": "Bearer k"})
        for method, path in [("POST", "/embeddings"), ("GET", "/embeddings"), ("POST", "/completions")]:
            answer = client.request(method, path, json=GOOD)
            assert answer.status_code == 404
            assert (
                f"(did you mean /v1{path}? a client's base URL ends in /v1"
                in answer.json()["error"]["message"]
            )
        assert "did you mean" not in client.get("/v1/embeddings/x").json()["error"]["message"]
    finally:
        engine.close()
