"""The playground in a real headless browser: the system's Chromium (Debian's `chromium` package,
which .ci/run installs), driven by Playwright. It types a prompt, presses Generate, sees the text
of two checkpoints stream in side by side, and saves a screenshot (to docs/playground.png with
TRICKSTER_WRITE_SCREENSHOT=1)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .live_server import live_server

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


def test_playground_streams_two_checkpoints_side_by_side(trained_run, browser, tmp_path):
    with live_server(trained_run) as live:
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        outside = []  # the page must work offline: nothing but this server is ever asked for
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(live.url) else None)
        page.goto(live.url + "/")
        page.wait_for_selector("#picker input")
        picked = page.eval_on_selector_all("#picker input:checked", "els => els.map(e => e.value)")
        assert picked == ["untrained", "best"]  # what the model learned, in one look
        page.fill("#prompt", "ROMEO:")
        page.fill("#max_tokens", "40")  # a range input takes a value
        page.dispatch_event("#max_tokens", "input")
        page.fill("#seed", "7")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('.column[data-done]').length === 2", timeout=60_000)
        columns = page.query_selector_all(".column")
        texts = {c.get_attribute("data-model"): c.query_selector(".output").inner_text() for c in columns}
        updates = [int(c.get_attribute("data-updates")) for c in columns]
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("TRICKSTER_WRITE_SCREENSHOT"):
            shutil.copy(shot, SCREENSHOT)
        page.close()
        assert not outside, outside
        assert all(n > 10 for n in updates), updates  # streamed: many chunks per column, not one at the end
        # the same prompt and seed through the API give the same text as each column shows
        import openai

        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        for model, text in texts.items():
            answer = client.completions.create(
                model=model, prompt="ROMEO:", max_tokens=40, seed=7, temperature=0.8, top_p=1.0
            )
            assert text == answer.choices[0].text
        assert texts["untrained"] != texts["best"]
        assert shot.stat().st_size > 10_000


def test_playground_chat_view_holds_a_conversation(trained_run, browser):
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    with live_server(trained_run, chat_template=template, checkpoints=["best"]) as live:
        page = browser.new_page()
        page.goto(live.url + "/")
        page.wait_for_selector("#picker input")
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
        page = browser.new_page()
        page.goto(live.url + "/")
        page.wait_for_selector("#picker input")
        page.check("#picker input[value='step_000006']")
        page.fill("#prompt", "ROMEO:")
        page.fill("#max_tokens", "30")
        page.dispatch_event("#max_tokens", "input")
        page.fill("#seed", "7")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('.column[data-done]').length === 3", timeout=60_000)
        columns = page.query_selector_all(".column")
        texts = {c.get_attribute("data-model"): c.query_selector(".output").inner_text() for c in columns}
        page.close()
        assert set(texts) == {"untrained", "step_000006", "best"}
        import openai

        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        for model, text in texts.items():
            answer = client.completions.create(
                model=model, prompt="ROMEO:", max_tokens=30, seed=7, temperature=0.8, top_p=1.0
            )
            assert text == answer.choices[0].text
        assert sum(o.model is not None for o in live.catalog.offered.values()) <= 2
