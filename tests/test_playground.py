"""The playground in a real headless browser: the system's Chromium (Debian's `chromium` package,
which .ci/run installs), driven by Playwright. It types a prompt, presses Generate, sees the text
of two checkpoints stream in side by side, and saves a screenshot (to docs/playground.png with
TRICKSTER_WRITE_SCREENSHOT=1)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from trickster.train import checkpoint as ckpt

from .conftest import events
from .live_server import live_server, run_saving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).parent.parent / "docs" / "playground.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no system Chromium: apt-get install -y chromium (.ci/run does)"
    ),
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def open_playground(browser, live, on_request=None, **page_options):
    """The page, loaded: `on_request` sees every request it makes, from the first."""
    page = browser.new_page(**page_options)
    if on_request is not None:
        page.on("request", on_request)
    page.goto(live.url + "/")
    page.wait_for_selector("#picker input")
    return page


def generate(page, prompt: str, max_tokens: int, seed: int, columns: int) -> dict[str, str]:
    """Type the prompt, press Generate, wait for every column: the text of each, by model."""
    page.fill("#prompt", prompt)
    page.fill("#max_tokens", str(max_tokens))  # a range input takes a value
    page.dispatch_event("#max_tokens", "input")
    page.fill("#seed", str(seed))
    page.click("#generate")
    done = f"document.querySelectorAll('.column[data-done]').length === {columns}"
    page.wait_for_function(done, timeout=60_000)
    return {
        c.get_attribute("data-model"): c.query_selector(".output").inner_text()
        for c in page.query_selector_all(".column")
    }


def assert_the_api_gives(live, texts: dict[str, str], prompt: str, max_tokens: int, seed: int) -> None:
    """The same prompt and seed through the API give the same text as each column shows."""
    import openai

    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    for model, text in texts.items():
        answer = client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, seed=seed, temperature=0.8, top_p=1.0
        )
        assert text == answer.choices[0].text


def test_playground_streams_two_checkpoints_side_by_side(trained_run, browser, tmp_path):
    with live_server(trained_run) as live:
        outside = []  # the page must work offline: nothing but this server is ever asked for

        def elsewhere(request):
            if not request.url.startswith(live.url):
                outside.append(request.url)

        page = open_playground(browser, live, elsewhere, viewport={"width": 1280, "height": 760})
        picked = page.eval_on_selector_all("#picker input:checked", "els => els.map(e => e.value)")
        assert picked == ["untrained", "best"]  # what the model learned, in one look
        texts = generate(page, "ROMEO:", max_tokens=40, seed=7, columns=2)
        updates = [int(c.get_attribute("data-updates")) for c in page.query_selector_all(".column")]
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("TRICKSTER_WRITE_SCREENSHOT"):
            shutil.copy(shot, SCREENSHOT)
        page.close()
        assert not outside, outside
        assert all(n > 10 for n in updates), updates  # streamed: many chunks per column, not one at the end
        assert_the_api_gives(live, texts, "ROMEO:", max_tokens=40, seed=7)
        assert texts["untrained"] != texts["best"]
        assert shot.stat().st_size > 10_000


def test_playground_picks_the_servers_default_beside_untrained(trained_run, browser, tmp_path):
    """A run that has saved no best yet (evaluations off, or not yet reached): the page picked
    `untrained` alone, as it looked for `best` by name; it now picks the server's default, the
    newest checkpoint (final, at step 12), as /v1/models marks it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("best"))
    with live_server(run) as live:
        page = open_playground(browser, live)
        picked = page.eval_on_selector_all("#picker input:checked", "els => els.map(e => e.value)")
        page.close()
    assert picked == ["untrained", "final"]


def test_a_loss_measured_at_an_earlier_step_is_shown_with_that_step(trained_run, browser, tmp_path):
    """A checkpoint saved between evaluations records the earlier one's loss and its step
    (val_loss_step, as its card gives them): the chooser showed that loss as the checkpoint's own."""
    losses = {r["step"]: r["val_loss"] for r in events(trained_run, "eval")}
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    ckpt.update_info(run / "checkpoints" / "step_000006", val_loss=losses[0], val_loss_step=0)
    with live_server(run) as live:
        page = open_playground(browser, live)
        notes = (
            "els => Object.fromEntries(els.map(e => [e.dataset.model, e.querySelector('small').textContent]))"
        )
        shown = page.eval_on_selector_all("#picker .pick", notes)
        page.close()
    assert shown["step_000006"] == f"step 6, val {losses[0]:.3f} (measured at step 0)"
    assert shown["final"] == f"step 12, val {losses[12]:.3f}"


def test_playground_sends_the_seed_typed_also_past_2_53_and_below_0(trained_run, browser):
    """A seed above 2**53 is no JavaScript number: sent as one, 2**53 + 1 went as 2**53 and gave
    that seed's text, not the one `generate --seed` and the API give for the seed typed."""
    with live_server(trained_run) as live:
        sent = []

        def completion(request):
            if request.url.endswith("/v1/completions"):
                sent.append(json.loads(request.post_data)["seed"])

        page = open_playground(browser, live, completion)
        for seed in (2**53 + 1, -1):
            page.uncheck("#picker input[value=untrained]")
            texts = generate(page, "ROMEO:", max_tokens=12, seed=seed, columns=1)
            assert_the_api_gives(live, texts, "ROMEO:", max_tokens=12, seed=seed)
        page.close()
        assert sent == [2**53 + 1, -1]


def test_playground_chat_view_holds_a_conversation(trained_run, browser):
    """With the picks the page starts with, untrained and best, the chat is with best (it took the
    first picked, untrained, whose replies are noise)."""
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    with live_server(trained_run, chat_template=template) as live:
        page = open_playground(browser, live)
        assert page.eval_on_selector_all("#picker input:checked", "es => es.map(e => e.value)") == [
            "untrained",
            "best",
        ]
        page.click("#tab-chat")
        page.fill("#max_tokens", "12")
        page.dispatch_event("#max_tokens", "input")
        page.fill("#chat-input", "Who?")
        page.click("#send")
        page.wait_for_function("document.querySelector('#messages').dataset.turns === '2'", timeout=60_000)
        reply = page.eval_on_selector(".msg.assistant span", "e => e.textContent")
        page.close()
        import openai

        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model="best",
            messages=[{"role": "user", "content": "Who?"}],
            max_tokens=12,
            seed=1337,
            temperature=0.8,
        )
        assert reply == answer.choices[0].message.content


def test_playground_compares_three_checkpoints_with_room_for_two(trained_run, browser):
    """With --max-loaded-models 2 the default (best) and one more fit: of three columns, the one
    that finds both held waits for a model to be released, then streams; each column still shows
    the text the API gives."""
    with live_server(trained_run, max_loaded=2) as live:
        page = open_playground(browser, live)
        page.check("#picker input[value='step_000006']")
        texts = generate(page, "ROMEO:", max_tokens=30, seed=7, columns=3)
        page.close()
        assert set(texts) == {"untrained", "step_000006", "best"}
        assert_the_api_gives(live, texts, "ROMEO:", max_tokens=30, seed=7)
        assert sum(o.model is not None for o in live.catalog.offered.values()) <= 2


LOADED_MARKS = """rows => Object.fromEntries(rows.map(
    r => [r.querySelector("input").value, r.textContent.includes("(loaded)")]))"""


def test_the_chooser_says_which_models_are_loaded(trained_run, browser):
    """/v1/models says which models are in memory; the chooser marks them "(loaded)" and keeps
    up: with room for two, a request for a third loads it and unloads the one used least lately."""
    with live_server(trained_run, max_loaded=2) as live:

        def in_memory() -> dict[str, bool]:
            return {name: o.model is not None for name, o in live.catalog.offered.items()}

        def marks_follow(expected: dict[str, bool]) -> None:
            same = f"Object.entries({json.dumps(expected)}).every(([m, on]) => "
            same += f"({LOADED_MARKS})([...document.querySelectorAll('#picker .pick')])[m] === on)"
            page.wait_for_function(same, timeout=10_000)

        page = open_playground(browser, live)
        shown = page.eval_on_selector_all("#picker .pick", LOADED_MARKS)
        assert (
            shown == in_memory() == {"untrained": False, "step_000006": False, "best": True, "final": False}
        )
        generate(page, "ROMEO:", max_tokens=4, seed=1, columns=2)  # untrained and best
        assert in_memory() == {"untrained": True, "step_000006": False, "best": True, "final": False}
        marks_follow(in_memory())
        page.uncheck("#picker input[value='untrained']")
        page.check("#picker input[value='step_000006']")
        generate(page, "ROMEO:", max_tokens=4, seed=1, columns=2)
        assert in_memory() == {"untrained": False, "step_000006": True, "best": True, "final": False}
        marks_follow(in_memory())
        page.close()


PICKED = "els => els.map(e => e.value)"


def a_run_saving(trained_run, tmp_path, first: str):
    """A copy of the run holding only its checkpoint `first`, and a function that saves another
    of the trained run's checkpoints into it as training does (renamed in whole)."""
    run, save = run_saving(trained_run, tmp_path)
    save(first)
    return run, save


def wait_for_rows(page, rows: list[str]) -> None:
    """Until the picker lists these models, in this order (the page asks the server on its own)."""
    listed = "[...document.querySelectorAll('#picker .pick')].map(r => r.dataset.model).join()"
    now = f"{listed} === {json.dumps(','.join(rows))}"
    page.wait_for_function(now, timeout=15_000)


def test_a_checkpoint_saved_after_the_page_loaded_appears_and_becomes_the_pick(
    trained_run, browser, tmp_path
):
    """The page read /v1/models once: a checkpoint the run saved after it loaded was not in the
    picker until a reload. It now asks every few seconds while shown, with no one touching it: the
    new checkpoint appears, and the picks follow the server's default (the newest) until the user
    picks."""
    run, save = a_run_saving(trained_run, tmp_path, "step_000006")
    with live_server(run) as live:
        page = open_playground(browser, live)
        assert page.eval_on_selector_all("#picker input:checked", PICKED) == ["untrained", "step_000006"]
        save("final")
        wait_for_rows(page, ["untrained", "step_000006", "final"])
        picked = page.eval_on_selector_all("#picker input:checked", PICKED)
        page.close()
    assert picked == ["untrained", "final"]


def test_the_users_picks_are_kept_and_a_pruned_pick_is_said(trained_run, browser, tmp_path):
    """Once the user has picked, a new default does not move their picks; a picked checkpoint the
    run prunes leaves the picker, the status line says so, and the default takes its place."""
    run, save = a_run_saving(trained_run, tmp_path, "step_000006")
    with live_server(run) as live:
        page = open_playground(browser, live)
        page.uncheck("#picker input[value=untrained]")
        save("final")
        page.hover("#picker")  # approaching the picker asks at once
        wait_for_rows(page, ["untrained", "step_000006", "final"])
        kept = page.eval_on_selector_all("#picker input:checked", PICKED)
        shutil.rmtree(run / "checkpoints" / "step_000006")
        wait_for_rows(page, ["untrained", "final"])
        after_pruning = page.eval_on_selector_all("#picker input:checked", PICKED)
        status = page.inner_text("#status")
        page.close()
    assert kept == ["step_000006"]
    assert after_pruning == ["final"]
    assert "step_000006 no longer offered: picked final" in status


def test_a_checkpoint_named_like_markup_is_shown_as_its_name(trained_run, browser, tmp_path):
    """A checkpoint folder's name is shown as text in its column's heading: one named like an
    HTML element was parsed as markup (here an image whose error handler ran a script)."""
    name = "<img src=x onerror=document.title='ran'>"
    checkpoint = tmp_path / name
    shutil.copytree(trained_run / "checkpoints" / "final", checkpoint)
    with live_server(checkpoint) as live:
        page = open_playground(browser, live)
        generate(page, "ROMEO:", max_tokens=4, seed=1, columns=2)
        headings = [h.inner_text() for h in page.query_selector_all(".column h2 .model")]
        images, title = len(page.query_selector_all(".column img")), page.title()
        page.close()
    assert images == 0 and title != "ran"
    assert sorted(headings) == sorted([name, "untrained"])


def test_the_first_generate_fits_a_context_below_the_sliders_default(trained_run, browser):
    """The max-tokens slider starts at 200; on a model whose context is smaller (64 here, 128 for
    the tiny preset) it is lowered to fit. Lowering the slider's max clamped its value to the
    context itself before the page compared them, so a first Generate with the page as it loaded
    asked for 64 tokens after the prompt: a 400 in every column."""
    with live_server(trained_run) as live:
        page = open_playground(browser, live)
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('.column[data-done]').length === 2", timeout=60_000)
        asked = int(page.eval_on_selector("#max_tokens", "e => e.value"))
        shown = "els => els.map(e => [e.className, e.textContent])"
        outputs = page.eval_on_selector_all(".column .output", shown)
        page.close()
    assert asked == 32  # half the context of 64: room for a prompt
    for kind, text in outputs:
        assert "error" not in kind and len(text) == asked, text


POST_FROM_PAGE = """async ([url, body, kind]) => {
    const data = kind === "text" ? body : new Blob([body]);  // text/plain, or bytes of no type
    const r = await fetch(url, {method: "POST", mode: "no-cors", body: data});
    return r.type;
}"""


def test_a_page_of_another_origin_cannot_make_the_server_generate(trained_run, browser, tmp_path):
    """A browser posts text, or bytes of no type, from any page without a preflight: a page on
    another port of this machine made the server load a checkpoint and generate for it (reading
    nothing back). Now it is refused before the body is read; the playground still works."""
    (tmp_path / "index.html").write_text("<p>another site</p>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with live_server(trained_run) as live:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{other.server_port}/")
            body = json.dumps({"model": "step_000006", "prompt": "ROMEO:", "max_tokens": 5})
            for kind in ("text", "blob"):
                assert page.evaluate(POST_FROM_PAGE, [live.url + "/v1/completions", body, kind]) == "opaque"
            page.close()
            assert live.catalog.offered["step_000006"].model is None  # never loaded: nothing generated
            own = open_playground(browser, live)
            own.uncheck("#picker input[value=untrained]")
            own.check("#picker input[value=step_000006]")
            texts = generate(own, "ROMEO:", max_tokens=5, seed=1, columns=2)
            own.close()
        assert set(texts) == {"step_000006", "best"} and all(len(t) == 5 for t in texts.values())
    finally:
        other.shutdown()


def test_a_chat_message_refused_is_no_turn_of_the_conversation(trained_run, browser):
    """A message the server refuses (here one that leaves no room in the context for the tokens
    asked) went into the conversation with the error's text as the model's reply, sent back with
    every later message: on a char model its '[' then made each of them a 400 too. Now the error
    is shown beside the conversation, the message goes back in the box, and the next message is
    sent with the conversation as it was."""
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    with live_server(trained_run, chat_template=template, checkpoints=["best"]) as live:
        sent = []

        def chat(request):
            if request.url.endswith("/v1/chat/completions"):
                sent.append(json.loads(request.post_data)["messages"])

        page = open_playground(browser, live, chat)
        page.click("#tab-chat")
        page.fill("#max_tokens", "8")
        page.dispatch_event("#max_tokens", "input")
        too_long = "ROMEO: " * 8  # 56 characters: with the template's and 8 tokens, past 64
        # no turns yet reads '0' on both sides: `undefined !== '0'` ended the first wait at once, and
        # under load the next message went out while the first one was still being answered
        answered = (
            "([m, before]) => (m.dataset.turns || '0') !== before || m.querySelector('.msg.error') !== null"
        )
        for message in ["Hi", too_long, "Hi"]:
            before = page.eval_on_selector("#messages", "e => e.dataset.turns || '0'")
            page.fill("#chat-input", message)
            page.click("#send")  # clears a shown error at once
            page.wait_for_function(answered, arg=[page.query_selector("#messages"), before])
            if message == too_long:
                error = page.query_selector("#messages .msg.error")
                assert error is not None and "context of 64 tokens" in error.inner_text()
                assert page.eval_on_selector("#chat-input", "e => e.value") == too_long.strip()
                assert page.eval_on_selector("#messages", "e => e.dataset.turns") == "2"
                page.fill("#chat-input", "")
        turns = page.eval_on_selector("#messages", "e => e.dataset.turns")
        errors = page.query_selector_all("#messages .msg.error")
        page.close()
    first_reply = sent[2][1]
    assert sent[2] == [{"role": "user", "content": "Hi"}, first_reply, {"role": "user", "content": "Hi"}]
    assert first_reply["role"] == "assistant" and "[" not in first_reply["content"]
    assert turns == "4" and not errors


def test_the_page_asks_for_the_api_key_and_says_when_it_is_wrong(trained_run, browser):
    """A wrong key was met with 'this server wants an API key', as if none had been typed."""
    status = "document.querySelector('#status').textContent"
    with live_server(trained_run, api_key="sesame", checkpoints=["best"]) as live:
        page = browser.new_page()
        page.goto(live.url + "/")
        page.wait_for_function(f"{status}.startsWith('no API key given')", timeout=10_000)
        assert page.is_visible("#api-key")
        for key, shown in [("open", "the API key is wrong"), ("sesame", "1 checkpoint")]:
            page.fill("#api-key", key)
            page.dispatch_event("#api-key", "change")
            page.wait_for_function(f"{status}.startsWith({shown!r})", timeout=10_000)
        assert page.inner_text("#status") == "1 checkpoint"  # not '1 checkpoints'
        page.close()


def test_a_failed_column_says_so_and_generate_with_nothing_picked_says_what_to_do(trained_run, browser):
    """A column refused by the server (a character outside a char vocabulary) showed the error
    with its footer still '…', as if the model still wrote; Generate with every checkpoint
    unticked did nothing, without a word."""
    with live_server(trained_run, checkpoints=["best", "untrained"]) as live:
        page = open_playground(browser, live)
        page.fill("#prompt", "ROMEO: \u00e9")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('.column[data-done]').length === 2", timeout=60_000)
        footers = page.eval_on_selector_all(".column footer", "els => els.map(e => e.textContent)")
        errors = page.eval_on_selector_all(".column .output.error", "els => els.map(e => e.textContent)")
        for box in page.query_selector_all("#picker input:checked"):
            box.click()
        page.click("#generate")
        said = page.inner_text("#columns")
        page.close()
    assert footers == ["failed", "failed"]
    assert len(errors) == 2 and all("is not in this model's character vocabulary" in e for e in errors)
    assert said == "Tick a checkpoint (up to three) to generate."
