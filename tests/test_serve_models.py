"""`trickster serve --max-loaded-models N`: at most N models' weights in memory (the default one
among them, never unloaded), the least recently used idle one unloaded first, none that a request
holds; a request that finds every loaded model held waits for one; one load per model however
many requests ask at once. Memory is counted by weak references to the models after garbage
collection, so a reference kept anywhere (the engine's batch, a finished request) shows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch

from trickster import run_checkpoints
from trickster.data.tokenizers import ByteTokenizer
from trickster.errors import UserError
from trickster.model.generate import generate
from trickster.model.transformer import Transformer
from trickster.serve import chat, models
from trickster.serve.choices import Generation
from trickster.serve.engine import Batch, Engine
from trickster.serve.models import Catalog
from trickster.train import checkpoint as ckpt
from trickster.train import checkpoint_load, weight_loading

from .live_server import live_server, run_saving

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

NAMES = ["best", "final", "step_000006", "untrained"]  # the trained run's models; best is the default
GREEDY = dict(prompt="ROMEO:", max_tokens=20, temperature=0)


def client_of(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def completion(client, **fields) -> str:
    return client.completions.create(**fields).choices[0].text


def loaded(live) -> set[str]:
    """The models GET /v1/models says are in memory (and GET /v1/models/NAME says the same)."""
    cards = httpx.get(live.url + "/v1/models").json()["data"]
    for card in cards:
        assert httpx.get(f"{live.url}/v1/models/{card['id']}").json()["loaded"] == card["loaded"]
    return {card["id"] for card in cards if card["loaded"]}


def alive(refs: list[weakref.ref], most: int) -> list[torch.nn.Module]:
    """The models still referenced somewhere, once no more than `most` are or 5 s have passed (the
    engine drops a finished model's batch at its next round)."""
    deadline = time.monotonic() + 5
    while True:
        gc.collect()
        living = {id(m): m for m in (r() for r in refs) if m is not None}
        if len(living) <= most or time.monotonic() > deadline:
            return list(living.values())
        del living  # else it keeps them alive through the next look
        time.sleep(0.02)


def test_at_most_n_models_stay_in_memory_and_answer_as_before(trained_run):
    """Bound 2, four models asked for in turn, twice: the default and the newest stay, every other
    one is freed, and a model loaded again gives the greedy tokens it gave before. /v1/models says
    which are loaded."""
    with live_server(trained_run, max_loaded=2) as live:
        client, catalog = client_of(live), live.catalog
        first, refs, other = {}, [], set()
        assert loaded(live) == {"best"}
        for name in NAMES * 2:
            text = completion(client, model=name, **GREEDY)
            other = {name} if name != "best" else other  # the room beside best holds the latest other
            assert loaded(live) == {"best", *other}
            assert first.setdefault(name, text) == text, f"{name} answers otherwise after a reload"
            refs.append(weakref.ref(catalog.offered[name].model))
            assert len(alive(refs, 2)) <= 2, f"more than 2 models in memory after {name}"
        assert len(set(first.values())) > 1  # different models, different answers
        kept = alive(refs, 2)
        assert {id(m) for m in kept} == {id(catalog.offered[n].model) for n in ("best", "untrained")}
        assert all(o.holds == 0 for o in catalog.offered.values())
        # a refused request (too many tokens) loads nothing
        too_long = {"model": "final", **GREEDY, "max_tokens": 999}
        refused = httpx.post(live.url + "/v1/completions", json=too_long)
        assert refused.status_code == 400 and catalog.offered["final"].model is None


def test_the_least_recently_used_idle_model_goes_first(trained_run):
    catalog = Catalog(trained_run, torch.device("cpu"), max_loaded=3)
    catalog.load(catalog.default)
    for name in ["final", "step_000006", "final", "untrained"]:  # room for 2 beside best
        catalog.load(name)
    assert [n for n, o in catalog.offered.items() if o.model is not None] == ["best", "final", "untrained"]
    catalog.hold("final")  # a request holds it: the idle one goes even though final is older
    catalog.load("untrained")
    catalog.load("step_000006")
    assert [n for n, o in catalog.offered.items() if o.model is not None] == ["best", "final", "step_000006"]


def test_a_model_in_flight_is_not_unloaded_and_the_next_one_waits(trained_run, monkeypatch, capsys):
    """Bound 2: best (the default) and step_000006, whose stream is held in the engine (its decoding
    steps wait on a gate), fill it. A request for final then waits, with final unloaded and
    step_000006 in memory; opened, the gate lets the stream finish, and final is loaded and answers."""
    gate, decode = threading.Event(), Batch._decode

    def gated(self):
        assert gate.wait(60)
        decode(self)

    monkeypatch.setattr(Batch, "_decode", gated)
    with live_server(trained_run, max_loaded=2) as live:
        client, catalog = client_of(live), live.catalog
        stream = iter(client.completions.create(model="step_000006", **GREEDY, stream=True))
        held = [next(stream).choices[0].text]  # the prompt's token; the next step waits on the gate
        in_flight = weakref.ref(catalog.offered["step_000006"].model)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                waiting = pool.submit(completion, client, model="final", **GREEDY)
                time.sleep(1.0)
                assert not waiting.done() and catalog.offered["final"].model is None
                assert catalog.offered["step_000006"].model is in_flight()
            finally:
                gate.set()
            held += [chunk.choices[0].text for chunk in stream]
            final = waiting.result(timeout=60)
        assert catalog.offered["final"].model is not None
        assert alive([in_flight], 0) == []  # unloaded once its request was done
        assert "".join(held) == completion(client, model="step_000006", **GREEDY)
        assert final == completion(client, model="final", **GREEDY)
        assert all(o.holds == 0 for o in catalog.offered.values())


def test_requests_waiting_for_room_get_it_in_arrival_order(trained_run, tmp_path, monkeypatch):
    """Bound 2: best (the default) and final, whose stream is held in the engine, fill it. Requests
    for nine other checkpoints arrive one after another (each waiting before the next is sent, in an
    order that is neither their names' nor the catalog's) and wait; once the stream ends they are
    loaded one at a time, first come first served. A hold of a loaded model meanwhile does not wait
    behind them."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # more checkpoints than the micro run has (the same weights under other names), so that the old
    # wake-up order, no order, is caught: with 5 waiting it served them in order in 1 run of 8, with
    # 9 in none of 10
    arrival = [f"step_{step:06d}" for step in (11, 6, 14, 8, 12, 7, 13, 9, 10)]
    for name in [n for n in arrival if n != "step_000006"]:
        shutil.copytree(run / "checkpoints/step_000006", run / "checkpoints" / name)
    gate, decode, loads, read = threading.Event(), Batch._decode, [], checkpoint_load.load_checkpoint

    def gated(self):
        assert gate.wait(60)
        decode(self)

    def recorded(path, device, **options):
        loads.append(path.name)
        return read(path, device, **options)

    monkeypatch.setattr(Batch, "_decode", gated)
    monkeypatch.setattr(checkpoint_load, "load_checkpoint", recorded)
    with live_server(run, checkpoints=["best", "final", *arrival], max_loaded=2) as live:
        client, catalog = client_of(live), live.catalog
        stream = iter(client.completions.create(model="final", **GREEDY, stream=True))
        next(stream)  # final is held: its next decoding step waits on the gate
        loads.clear()
        with concurrent.futures.ThreadPoolExecutor(len(arrival)) as pool:
            try:
                answers = []
                for name in arrival:
                    answers.append(pool.submit(completion, client, model=name, **GREEDY))
                    deadline = time.monotonic() + 30
                    while catalog.offered[name].holds == 0 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    assert catalog.offered[name].holds == 1, f"the request for {name} did not arrive"
                assert loads == [] and not any(a.done() for a in answers)
                # a loaded model is held at once, ahead of them (a request would then wait on the gate)
                with concurrent.futures.ThreadPoolExecutor(1) as other:
                    assert other.submit(catalog.hold, "final").result(timeout=5).model is not None
                catalog.release("final")
            finally:
                gate.set()
            list(stream)
            texts = [a.result(timeout=60) for a in answers]
        assert loads == arrival
        assert len(set(texts)) == 1  # the same weights under nine names
        assert all(o.holds == 0 for o in catalog.offered.values())


def test_concurrent_first_requests_load_a_model_once(trained_run, monkeypatch):
    loads, read = [], checkpoint_load.load_checkpoint

    def slow_load(path, device, **options):
        loads.append(path.name)
        time.sleep(0.5)  # long enough for every request to arrive while it loads
        return read(path, device, **options)

    monkeypatch.setattr(checkpoint_load, "load_checkpoint", slow_load)
    with live_server(trained_run, max_loaded=2) as live:
        loads.clear()  # the default's, at start
        client = client_of(live)
        barrier = threading.Barrier(6)

        def ask(_):
            barrier.wait()
            return completion(client, model="final", **GREEDY)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, range(6)))
        assert loads == ["final"] and len(set(answers)) == 1


def test_a_generation_releases_its_model_when_the_engine_is_done_not_when_read(trained_run):
    """A client that reads slowly does not keep a model from being unloaded: the hold goes when the
    engine has finished every choice, and only once."""
    catalog = Catalog(trained_run, torch.device("cpu"))
    engine = Engine()
    offered = catalog.hold("final")

    async def read_one_delta():
        sampling = dict(max_tokens=8, temperature=0.0, top_k=None, top_p=None, logprobs=None)
        release = lambda: catalog.release("final")  # noqa: E731
        generation = Generation(engine, offered, [[1, 2, 3]], 3, sampling, 0, [], release)
        deltas = generation.deltas()
        await anext(deltas)  # and then no more reading for a while
        for _ in range(250):
            if offered.holds == 0:
                break
            await asyncio.sleep(0.02)
        assert offered.holds == 0 and len(generation.ended) == 3
        await deltas.aclose()
        assert offered.holds == 0  # released once

    try:
        asyncio.run(read_one_delta())
    finally:
        engine.close()


def test_a_checkpoint_pruned_while_serving_is_404_and_the_list_goes_on(trained_run, tmp_path):
    """A run served as it trains deletes its old numbered checkpoints (keep_last): GET /v1/models read
    each one's folder at every listing and answered 500 to every client once one was gone. A deleted
    one leaves the list, in memory or not (final was listed, and answered, for as long as its
    weights happened to stay loaded), and its weights are freed."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with live_server(run) as live:
        client = client_of(live)
        assert completion(client, model="final", **GREEDY)
        refs = [weakref.ref(live.catalog.offered["final"].model)]
        for name in ("step_000006", "final"):
            run_checkpoints.remove(run / "checkpoints" / name)  # as prune deletes one
        listed = httpx.get(live.url + "/v1/models")
        assert listed.status_code == 200, listed.text
        assert [card["id"] for card in listed.json()["data"]] == ["best", "untrained"]
        assert alive(refs, 0) == []
        for name in ("step_000006", "final"):
            with pytest.raises(
                openai.NotFoundError, match=f"'{name}' was deleted from disk after the server"
            ):
                completion(client, model=name, **GREEDY)
            assert httpx.get(f"{live.url}/v1/models/{name}").status_code == 404
        assert completion(client, model="best", **GREEDY)


def greedy_text(checkpoint: Path, prompt: str = "ROMEO:", tokens: int = 20) -> str:
    """What `trickster generate CHECKPOINT --temperature 0` writes after the prompt."""
    loaded = checkpoint_load.load_checkpoint(checkpoint)
    tokenizer = loaded.tokenizer
    ids = tokenizer.start_ids() + tokenizer.encode(prompt)
    out = generate(
        loaded.model, ids, tokens, 0, vocab_limit=tokenizer.vocab_size, stop_ids=tokenizer.stop_ids
    )
    return tokenizer.decode(list(out))


def test_checkpoints_saved_while_serving_are_offered_at_once(trained_run, tmp_path):
    """A run served as it trains saves step_N after step_N: a folder that was not there when the
    server started was a 404 'does not exist' until a restart. A request naming it, or a listing,
    now finds it (each renamed into checkpoints/ whole, as a save puts it there)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = run / "checkpoints"
    (folder / "step_000006").rename(tmp_path / "step_000006")
    shutil.copytree(tmp_path / "step_000006", tmp_path / "step_000012")
    expected = greedy_text(tmp_path / "step_000006")
    with live_server(run) as live:
        client = client_of(live)
        with pytest.raises(openai.NotFoundError, match="'step_000006' does not exist"):
            completion(client, model="step_000006", **GREEDY)
        assert [card["id"] for card in httpx.get(live.url + "/v1/models").json()["data"]] == [
            "best",
            "final",
            "untrained",
        ]
        (tmp_path / "step_000006").rename(folder / "step_000006")
        assert completion(client, model="step_000006", **GREEDY) == expected
        (tmp_path / "step_000012").rename(folder / "step_000012")
        assert list(cards(live)) == ["best", "final", "step_000006", "step_000012", "untrained"]
        assert completion(client, model="step_000012", **GREEDY) == expected


def test_room_for_one_model_is_refused_where_the_run_will_save_a_second(trained_run, tmp_path):
    """With --max-loaded-models 1 the default stays loaded, so a request for any other model waits
    for room forever, and the requests in line behind it too (the default following the run does
    not help: the model it replaces is one more that never loads again). A server with room for one
    is refused where it offers more than one, counting the names given to --checkpoints that the
    run has yet to save: `untrained,best` before the first save started, then hung once `best`
    came."""
    run, _ = run_saving(trained_run, tmp_path)
    refused = "holds only untrained, which stays loaded: the 1 other model offered would never load"
    with pytest.raises(UserError, match=refused):
        Catalog(run, torch.device("cpu"), ["untrained", "best"], max_loaded=1)
    assert list(Catalog(run, torch.device("cpu"), ["untrained"], max_loaded=1).offered) == ["untrained"]


def test_a_run_served_before_its_first_save_offers_untrained_then_its_checkpoints(trained_run, tmp_path):
    """`trickster train` and `trickster serve` started together: the run folder holds its config.yaml
    and tokenizer.json, no checkpoint yet. The server was refused ('train first'); it now offers
    `untrained` (the model the checkpoints' own `untrained` is), then each checkpoint as it is saved."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    with live_server(trained_run) as live:
        untrained_text = completion(client_of(live), model="untrained", **GREEDY)
    with live_server(run) as live:
        client = client_of(live)
        assert list(cards(live)) == ["untrained"]
        assert cards(live)["untrained"]["step"] == 0
        assert completion(client, model="untrained", **GREEDY) == untrained_text
        (run / "checkpoints").mkdir()
        shutil.copytree(trained_run / "checkpoints" / "step_000006", tmp_path / "step_000006")
        (tmp_path / "step_000006").rename(run / "checkpoints" / "step_000006")
        assert list(cards(live)) == ["step_000006", "untrained"]
        assert cards(live)["step_000006"]["step"] == 6
        expected = greedy_text(trained_run / "checkpoints" / "step_000006")
        assert completion(client, model="step_000006", **GREEDY) == expected
        shutil.copytree(trained_run / "checkpoints" / "best", tmp_path / "best")
        (tmp_path / "best").rename(run / "checkpoints" / "best")
        assert list(cards(live)) == ["best", "step_000006", "untrained"]


def test_checkpoints_named_before_the_run_saves_them_are_offered_once_saved(trained_run, tmp_path):
    """`--checkpoints best,untrained` on a run before its first save was refused ('no checkpoint
    best'): a filtered server could not be started ahead of the saves. A name the run will save is
    now taken; it is offered once saved, and checkpoints not named stay out."""
    run, save = run_saving(trained_run, tmp_path)
    saved = trained_run / "checkpoints"

    with live_server(run, checkpoints=["best", "step_000006", "untrained"]) as live:
        assert list(cards(live)) == ["untrained"]
        save("final")
        assert list(cards(live)) == ["untrained"]  # not named
        save("step_000006")
        assert list(cards(live)) == ["step_000006", "untrained"]
        save("best")
        assert list(cards(live)) == ["best", "step_000006", "untrained"]
        expected = greedy_text(saved / "best")
        assert completion(client_of(live), model="best", **GREEDY) == expected


@pytest.mark.parametrize("first", ["untrained", "step_000006"])
def test_the_default_model_follows_the_newest_checkpoint_as_the_run_saves(trained_run, tmp_path, first):
    """The default model (kept in memory, `default` in /v1/models, the playground's first pick) was
    chosen at start for the server's whole life: `untrained` for one started before the run's first
    save, step_000006 for one started when only that was saved, whatever the run saved later. Now it
    follows the rule of a server started afterwards, the run's best, else its newest: step_000006,
    final (step 12), then best, each saved into the run as training renames it in. With
    --max-loaded-models 2 it stays in memory whichever others requests ask for; untrained still
    answers when named."""
    run, save = run_saving(trained_run, tmp_path)
    saved = trained_run / "checkpoints"

    def default(live) -> list[str]:
        return [name for name, card in cards(live).items() if card["default"]]

    if first == "step_000006":
        save("step_000006")
    with live_server(run, max_loaded=2) as live:
        client = client_of(live)
        untrained_text = completion(client, model="untrained", **GREEDY)
        assert default(live) == [first] and first in loaded(live)
        for name in ["step_000006", "final", "best"][["untrained", "step_000006"].index(first) :]:
            if name != first:
                save(name)
            assert default(live) == [name]
            assert completion(client, model=name, **GREEDY) == greedy_text(saved / name)
        for name in ["untrained", "step_000006", "final", "untrained", "final"]:  # room for one beside best
            completion(client, model=name, **GREEDY)
            assert "best" in loaded(live), f"best, the default, was unloaded for {name}"
        assert completion(client, model="untrained", **GREEDY) == untrained_text


def test_a_checkpoint_served_as_dot_or_dot_dot_is_named_as_its_folder(trained_run, monkeypatch):
    """`trickster serve .` inside a checkpoint folder (or `..` below it) offers the checkpoint by
    its folder's name, as `serve runs/x/checkpoints/final` does: the name a request gives."""
    final = trained_run / "checkpoints" / "final"
    for cwd, target in ((final, "."), (final / "nowhere", ".."), (trained_run, "checkpoints/final/")):
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        assert list(Catalog(Path(target), torch.device("cpu")).offered) == ["final", models.UNTRAINED]
    (final / "nowhere").rmdir()


def test_a_folder_that_is_not_a_run_is_still_refused(trained_run, tmp_path):
    """Only a run folder (its config.yaml and tokenizer.json) is served before a checkpoint exists."""
    for kept in ([], ["config.yaml"], ["tokenizer.json"]):
        folder = tmp_path / f"not-a-run-{len(kept)}-{''.join(kept)}"
        folder.mkdir()
        for name in kept:
            shutil.copy(trained_run / name, folder / name)
        with pytest.raises(UserError, match="no complete checkpoint in .*; train first"):
            Catalog(folder, torch.device("cpu"))


def test_a_checkpoint_pruned_as_a_stream_decodes_on_it_leaves_the_list_and_the_stream_finishes(
    trained_run, tmp_path, monkeypatch
):
    """Deleted while a stream decodes with it (held in the engine): it leaves the list and a new
    request for it is a 404 at once, while the stream goes on to its whole text; its weights are
    freed when the stream ends."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    gate, decode = threading.Event(), Batch._decode

    def gated(self):
        assert gate.wait(60)
        decode(self)

    with live_server(run) as live:
        client, catalog = client_of(live), live.catalog
        text = completion(client, model="step_000006", **GREEDY)
        monkeypatch.setattr(Batch, "_decode", gated)
        stream = iter(client.completions.create(model="step_000006", **GREEDY, stream=True))
        streamed = [next(stream).choices[0].text]  # the prompt's token; the next step waits on the gate
        refs = [weakref.ref(catalog.offered["step_000006"].model)]
        try:
            run_checkpoints.remove(run / "checkpoints" / "step_000006")
            assert "step_000006" not in cards(live)
            assert [o.model for o in catalog.retired] == [refs[0]()]
            with pytest.raises(openai.NotFoundError, match="deleted from disk after the server started"):
                completion(client, model="step_000006", **GREEDY)
        finally:
            gate.set()
        streamed += [chunk.choices[0].text for chunk in stream]
        assert "".join(streamed) == text
        assert alive(refs, 0) == [] and catalog.retired == []


@pytest.mark.parametrize("moment", ["load_checkpoint", "load_weights"], ids=["before-load", "mid-load"])
def test_a_checkpoint_deleted_as_it_is_loaded_is_the_same_404(
    trained_run, tmp_path, monkeypatch, caplog, moment
):
    """Deleted after the request found it on disk but before (or while) its weights were read: the
    failed load was a 500 naming a CLI fix ('could not be loaded: ... not found; pass a run folder',
    or '... is damaged or not a safetensors file'), where one deleted a moment earlier gets a 404."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    owner = {"load_checkpoint": checkpoint_load, "load_weights": weight_loading}[moment]
    original = getattr(owner, moment)

    def deleted_first(path, *args, **kwargs):
        folder = run / "checkpoints" / "step_000006"
        if folder.exists():
            run_checkpoints.remove(folder)  # as a training run's prune deletes it
        return original(path, *args, **kwargs)

    with live_server(run) as live:
        monkeypatch.setattr(owner, moment, deleted_first)  # after best was loaded at start
        answer = httpx.post(live.url + "/v1/completions", json={"model": "step_000006", **GREEDY})
        assert answer.status_code == 404, answer.text
        error = answer.json()["error"]
        assert error["message"].startswith(
            "model 'step_000006' was deleted from disk after the server started;"
        )
        assert (error["param"], error["code"]) == ("model", "model_not_found")
        listed = httpx.get(live.url + "/v1/models").json()["data"]
        assert [card["id"] for card in listed] == ["best", "final", "untrained"]
        assert completion(client_of(live), model="final", **GREEDY)  # another checkpoint still loads
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text


@pytest.mark.parametrize("moment", ["before-request", "mid-load"])
def test_a_checkpoint_replaced_as_it_is_asked_for_answers_from_the_new_one(
    trained_run, tmp_path, monkeypatch, caplog, moment
):
    """A training run writes a new `final` (or `best`) while it is served: atomic.replace_dir
    renames the old folder away, then the new one into place. A request that came between the two
    renames (held apart for 0.3 s here), or whose load began before the first, was answered 404
    'was deleted from disk after the server started'; it waits for the new folder and answers with
    its weights (here those of step_000006)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = run / "checkpoints"
    new, old = folder / f".final.tmp-{os.getpid()}", folder / f".final.old-{os.getpid()}"
    shutil.copytree(folder / "step_000006", new)

    def replace_dir_renames():
        (folder / "final").rename(old)
        threading.Timer(0.3, lambda: (new.rename(folder / "final"), shutil.rmtree(old))).start()

    with live_server(run, max_loaded=2) as live:
        client = client_of(live)
        before = completion(client, model="final", **GREEDY)
        expected = completion(client, model="step_000006", **GREEDY)  # which unloads final
        assert before != expected and "final" not in loaded(live)
        if moment == "before-request":
            replace_dir_renames()
        else:
            load, loads = checkpoint_load.load_checkpoint, []

            def replaced_first(path, *args, **kwargs):
                if Path(path) == folder / "final" and not loads:  # the first load of final begins
                    loads.append(path)
                    replace_dir_renames()
                return load(path, *args, **kwargs)

            monkeypatch.setattr(checkpoint_load, "load_checkpoint", replaced_first)
        start = time.monotonic()
        answer = httpx.post(live.url + "/v1/completions", json={"model": "final", **GREEDY}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["text"] == expected
        assert time.monotonic() - start > 0.25  # it waited for the second rename
        assert [card["id"] for card in httpx.get(live.url + "/v1/models").json()["data"]] == NAMES
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("writer", ["killed", "stopped"])
def test_a_checkpoint_left_half_replaced_is_404_or_503(trained_run, tmp_path, monkeypatch, writer):
    """A writer killed between the two renames left the old folder under its hidden name (training
    puts it back when it resumes): nothing is coming, so the 404 comes at once. One that still runs
    but does not finish (stopped there, as by Ctrl-Z) gets REPLACE_WAIT (0.3 s here), then a 503.
    The killed case is given a long REPLACE_WAIT so that "at once" holds on a loaded machine too."""
    monkeypatch.setattr(models, "REPLACE_WAIT", 30.0 if writer == "killed" else 0.3)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid = dead.pid if writer == "killed" else os.getpid()
    folder = run / "checkpoints"
    with live_server(run) as live:
        (folder / "final").rename(folder / f".final.old-{pid}")
        start = time.monotonic()
        answer = httpx.post(live.url + "/v1/completions", json={"model": "final", **GREEDY})
        waited = time.monotonic() - start
        message = answer.json()["error"]["message"]
        if writer == "killed":
            assert answer.status_code == 404 and "was deleted from disk" in message
            assert waited < 10  # far from the 30 s it would have waited
        else:
            assert answer.status_code == 503
            assert message == "model 'final' is being replaced on disk (a new final written); ask again"
            assert 0.3 <= waited < 2


def cards(live) -> dict[str, dict]:
    return {card["id"]: card for card in httpx.get(live.url + "/v1/models").json()["data"]}


def test_a_best_replaced_as_it_is_served_answers_from_the_new_one_and_a_stream_finishes_on_the_old(
    trained_run, tmp_path, monkeypatch
):
    """Training writes a new `best` (here the product's own save, of step_000006's weights and info)
    while a stream decodes with the old one, held in the engine. The old best was served for ever,
    its card unchanged: now the next request answers with the new weights and the card says the new
    step and val_loss, while the stream goes on with the old model's weights alone (its whole text is
    the old best's) beside it; the old model is freed once the stream ends."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = run / "checkpoints"
    gate, decode, held_back = threading.Event(), Batch._decode, []

    def gated(self):  # the old best's decoding steps are skipped (the engine's one thread goes on)
        if any(self.model is model for model in held_back) and not gate.is_set():
            time.sleep(0.01)
            return
        decode(self)

    monkeypatch.setattr(Batch, "_decode", gated)
    with live_server(run) as live:
        client, catalog = client_of(live), live.catalog
        old_text, new_text = (completion(client, model=n, **GREEDY) for n in ("best", "step_000006"))
        assert old_text != new_text
        old_model = catalog.offered["best"].model
        held_back.append(old_model)
        stream = iter(client.completions.create(model="best", **GREEDY, stream=True))
        streamed = [next(stream).choices[0].text]  # the prompt's token; its next step waits on the gate
        new = checkpoint_load.load_checkpoint(folder / "step_000006")
        try:
            ckpt.save_checkpoint(folder / "best", new.model, new.cfg, new.tokenizer, new.info)
            assert completion(client, model="best", **GREEDY) == new_text
            card, info = cards(live)["best"], run_checkpoints.read_info(folder / "best")
            assert (card["step"], card["val_loss"]) == (6, new.info["val_loss"]) == (6, info["val_loss"])
            assert card["loaded"] and catalog.offered["best"].model is not old_model
            assert [o.model for o in catalog.retired] == [old_model]  # still decoding the stream
        finally:
            gate.set()
        streamed += [chunk.choices[0].text for chunk in stream]
        assert "".join(streamed) == old_text
        refs = [weakref.ref(old_model)]
        del old_model, held_back[:]
        assert alive(refs, 0) == [] and catalog.retired == []
        assert all(o.holds == 0 for o in catalog.offered.values())


def test_a_rewritten_info_json_updates_the_card_without_a_reload(trained_run, tmp_path):
    """Training rewrites a checkpoint's info.json alone (checkpoint.update_info: the val_loss of the
    evaluation that follows its save): the card says the new value, and the weights stay loaded."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with live_server(run) as live:
        model = live.catalog.offered["best"].model
        assert cards(live)["best"]["val_loss"] != 1.25
        ckpt.update_info(run / "checkpoints" / "best", val_loss=1.25)
        assert cards(live)["best"]["val_loss"] == 1.25
        assert live.catalog.offered["best"].model is model


def test_the_system_fingerprint_names_the_weights_and_changes_with_them(trained_run, tmp_path):
    """OpenAI's answers carry a system_fingerprint, which clients read to tell whether the backend
    changed: every answer and chunk of one model carries the same, a rewritten info.json (a val_loss)
    keeps it, and a new `best` saved over the one served (step_000006's weights) changes it;
    checkpoints of the same weights file (best and final at the last step) share one, and each other
    model has its own."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with live_server(run, chat_template=template) as live:
        client = client_of(live)

        def fingerprints(model: str) -> set[str]:
            answers = [client.completions.create(model=model, **GREEDY)]
            answers += list(client.completions.create(model=model, **GREEDY, stream=True))
            chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "A"}])
            return {answer.system_fingerprint for answer in [*answers, chat]}

        each = {name: fingerprints(name) for name in NAMES}
        assert all(len(found) == 1 and next(iter(found)).startswith("fp_") for found in each.values())
        weights = {
            name: (run / "checkpoints" / name / run_checkpoints.WEIGHTS).read_bytes() for name in NAMES[:3]
        }
        assert weights["best"] == weights["final"] != weights["step_000006"]  # best is step 12's
        assert each["best"] == each["final"] and len(set.union(*each.values())) == 3
        best = run / "checkpoints" / "best"
        ckpt.update_info(best, val_loss=1.25)
        assert fingerprints("best") == each["best"]
        new = checkpoint_load.load_checkpoint(run / "checkpoints" / "step_000006")
        ckpt.save_checkpoint(best, new.model, new.cfg, new.tokenizer, new.info)
        after = fingerprints("best")
        # the same tensors; safetensors orders the header's metadata differently from one process to
        # another, so the file is step_000006's byte for byte or not, and the fingerprint follows it
        same_file = (best / run_checkpoints.WEIGHTS).read_bytes() == weights["step_000006"]
        assert len(after) == 1 and after != each["best"] and (after == each["step_000006"]) == same_file
        assert completion(client, model="best", **GREEDY) == completion(client, model="step_000006", **GREEDY)
    older = run / "checkpoints" / "step_000006"  # as saved before checkpoints recorded their sums
    info = run_checkpoints.read_info(older)
    (older / "info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "sha256"}))
    assert Catalog(older, torch.device("cpu")).get("step_000006").system_fingerprint is None


@pytest.mark.slow
def test_a_run_trained_further_as_it_is_served_is_served_as_it_is_now(trained_run, tmp_path):
    """`trickster serve RUN` while `trickster train --resume` takes the run on from step 12 to 24:
    its new best and final are what the server answers with, and what its cards say, as a server
    started afresh on the run answers and says."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    resume = [sys.executable, "-m", "trickster", "train", "--config", str(run / "config.yaml")]
    resume += ["--out", str(run), "--resume", "--no-progress", "training_config.max_steps=24"]
    with live_server(run) as live:
        client = client_of(live)
        before = {n: (completion(client, model=n, **GREEDY), cards(live)[n]) for n in ("best", "final")}
        subprocess.run(resume, check=True, capture_output=True, timeout=300)
        after = {n: (completion(client, model=n, **GREEDY), cards(live)[n]) for n in ("best", "final")}
    with live_server(run) as fresh:
        started_now = {n: (completion(client_of(fresh), model=n, **GREEDY), cards(fresh)[n]) for n in after}
    for name in ("best", "final"):
        info, (text, card) = run_checkpoints.read_info(run / "checkpoints" / name), after[name]
        assert (card["step"], card["val_loss"]) == (info["step"], info["val_loss"])
        assert info["step"] > before[name][1]["step"] and text != before[name][0]
        assert (text, card["step"], card["val_loss"]) == (
            started_now[name][0],
            started_now[name][1]["step"],
            started_now[name][1]["val_loss"],
        )


@pytest.mark.slow
def test_a_finished_run_resumed_to_more_steps_takes_the_names_it_will_save(trained_run, tmp_path):
    """The trained run has its `final` (step 12); resumed towards step 600 it trains again, and
    `--checkpoints final,step_000018` names a checkpoint it will save, taken as for a run that never
    finished (it was refused: 'no checkpoint step_000018'); offered once saved. The same name on the
    finished run, nothing training, is still refused."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with pytest.raises(UserError, match="no checkpoint step_000018 in "):
        Catalog(run, torch.device("cpu"), ["final", "step_000018"])
    resume = [sys.executable, "-m", "trickster", "train", "--config", str(run / "config.yaml")]
    resume += ["--out", str(run), "--resume", "--no-progress", "training_config.max_steps=600"]
    training = subprocess.Popen(resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        status = run / "status.json"
        while not status.exists() or json.loads(status.read_text())["step"] < 13:  # the resumed run's
            assert training.poll() is None and time.monotonic() < deadline, training.stderr.read()
            time.sleep(0.05)
        # held while the server starts (seconds on a loaded machine, in which it saved step 18 first)
        training.send_signal(signal.SIGSTOP)
        assert not (run / "checkpoints" / "step_000018").exists()
        with live_server(run, checkpoints=["final", "step_000018"]) as live:
            assert list(cards(live)) == ["final"]
            training.send_signal(signal.SIGCONT)
            while "step_000018" not in cards(live):
                assert training.poll() is None and time.monotonic() < deadline, training.stderr.read()
                time.sleep(0.05)
            assert cards(live)["step_000018"]["step"] == 18
    finally:
        training.send_signal(signal.SIGCONT)
        training.terminate()
        training.wait(timeout=120)


def weights_of(model: torch.nn.Module) -> torch.Tensor:
    return model.tok_embeddings.weight.detach().clone()


def test_a_best_replaced_in_a_folder_of_the_same_inode_is_served_as_the_new_one(trained_run, tmp_path):
    """Training saves new bests while no request comes: a later folder may take the inode number of
    the one served (ext4 gives a freed inode to the next folder made: seen with three saves of one
    best), and the folder's inode alone took it for the served one with only info.json rewritten,
    serving its old weights under the new card. Here the new checkpoint's files are renamed into the
    served folder, which keeps its inode whatever the file system."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    best, new = (
        run / "checkpoints" / "best",
        checkpoint_load.load_checkpoint(run / "checkpoints" / "step_000006"),
    )
    catalog = Catalog(run, torch.device("cpu"))
    assert catalog.load("best").info["step"] != new.info["step"]
    ckpt.save_checkpoint(tmp_path / "new", new.model, new.cfg, new.tokenizer, new.info)
    for file in (tmp_path / "new").iterdir():
        file.replace(best / file.name)
    assert catalog.current("best").info["step"] == new.info["step"]
    torch.testing.assert_close(weights_of(catalog.load("best").model), weights_of(new.model))


def test_a_request_that_read_a_model_replaced_before_it_held_it_holds_the_new_one(trained_run, tmp_path):
    """A request reads `final` (Catalog.current), and while it encodes its prompt another request
    finds `final` replaced on disk: the first one's Offered, held by no one then, lost its place. Its
    hold read the new folder's weights into it, out of the catalog's count (bound 2 held three
    models) and under the old card; now it holds the model offered as `final` now."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = run / "checkpoints"
    catalog = Catalog(run, torch.device("cpu"), max_loaded=2)
    catalog.load("best")
    read_first = catalog.current("final")
    new = checkpoint_load.load_checkpoint(folder / "step_000006")
    ckpt.save_checkpoint(folder / "final", new.model, new.cfg, new.tokenizer, new.info)
    assert catalog.current("final") is not read_first
    held = catalog.hold(read_first)
    assert held is catalog.offered["final"] and held.info["step"] == new.info["step"]
    catalog.release(held)
    catalog.load("step_000006")  # room for one beside best: final goes
    every = [*catalog.offered.values(), read_first, *catalog.retired]
    assert sum(o.model is not None for o in {id(o): o for o in every}.values()) == 2


def test_a_request_tokenizes_with_the_model_it_decodes_with(trained_run, tmp_path, monkeypatch):
    """Another run (a byte model) is saved at `final`'s path while a request for final encodes its
    prompt, and another request reads the new final meanwhile: the first request's hold gave it the
    new model, which decoded the char tokenizer's ids. It tokenizes again with the new one, and
    answers what a request sent afterwards answers."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    old = checkpoint_load.load_checkpoint(run / "checkpoints" / "final")
    cfg = old.cfg.model_copy(deep=True)
    cfg.model.vocab_size = 256
    torch.manual_seed(0)
    other = Transformer(cfg.model)
    encode, seen = chat.encode, []
    with live_server(run) as live:

        def replaced_meanwhile(tokenizer, text):
            seen.append(tokenizer.kind)
            if len(seen) == 1:
                ckpt.save_checkpoint(run / "checkpoints" / "final", other, cfg, ByteTokenizer(), {"step": 99})
                assert live.catalog.current("final").tokenizer.kind == "byte"  # as a request a moment later
            return encode(tokenizer, text)

        monkeypatch.setattr(chat, "encode", replaced_meanwhile)
        during = completion(client_of(live), model="final", **GREEDY)
        assert seen == ["char", "byte"]
        after = completion(client_of(live), model="final", **GREEDY)
    assert during == after


@pytest.mark.parametrize("noticed_by", ["listing", "another-model"])
def test_a_replaced_model_that_was_loaded_is_loaded_again_before_it_is_asked_for(
    trained_run, tmp_path, noticed_by
):
    """Training writes a new best: the first request for best read its weights (seconds, for a
    large model). Noticed by a listing (the playground's) or by a request for another model (the
    save changed checkpoints/), they are read in the background, and best answers with them."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = run / "checkpoints"
    new = checkpoint_load.load_checkpoint(folder / "step_000006")
    with live_server(run) as live:
        catalog = live.catalog
        assert catalog.offered["best"].model is not None
        ckpt.save_checkpoint(folder / "best", new.model, new.cfg, new.tokenizer, new.info)
        if noticed_by == "listing":
            assert cards(live)["best"]["step"] == 6
        else:
            assert completion(client_of(live), model="untrained", **GREEDY)
        deadline = time.monotonic() + 20
        while catalog.offered["best"].model is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert catalog.offered["best"].info["step"] == 6 and catalog.offered["best"].model is not None
        torch.testing.assert_close(weights_of(catalog.offered["best"].model), weights_of(new.model))
        assert completion(client_of(live), model="best", **GREEDY) == greedy_text(folder / "step_000006")


def test_a_replaced_model_is_not_loaded_ahead_where_it_would_take_room(trained_run, tmp_path):
    """Bound 2, filled by the old best (held by a request) and step_000006: the new best is not
    read ahead, which would unload step_000006 or pass the bound; its first request loads it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = run / "checkpoints"
    catalog = Catalog(run, torch.device("cpu"), max_loaded=2)
    held = catalog.hold("best")
    catalog.load("step_000006")
    new = checkpoint_load.load_checkpoint(folder / "step_000006")
    ckpt.save_checkpoint(folder / "best", new.model, new.cfg, new.tokenizer, new.info)
    fresh = catalog.current("best")
    assert fresh is not held and catalog.retired == [held]
    time.sleep(0.5)
    assert fresh.model is None and not fresh.loading and catalog.offered["step_000006"].model is not None
    catalog.release(held)
    assert held.model is None and catalog.load("best") is fresh and fresh.model is not None


def test_a_model_replaced_on_disk_before_its_first_load_answers_under_the_new_card(trained_run, tmp_path):
    """A request reads `final` (Catalog.current), then training writes a new final before the
    request's hold loads it, and no other request looks in between: the hold read the new folder's
    weights into the old Offered, so they answered under the old card and system_fingerprint (seen
    with four clients while best was replaced: each fingerprint came with both checkpoints' texts).
    Now the hold gives the model offered as `final` now, its card and its weights one checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = run / "checkpoints"
    catalog = Catalog(run, torch.device("cpu"), max_loaded=2)
    read_first = catalog.current("final")
    assert read_first.model is None
    new = checkpoint_load.load_checkpoint(folder / "step_000006")
    ckpt.save_checkpoint(folder / "final", new.model, new.cfg, new.tokenizer, new.info)
    held = catalog.hold(read_first)
    assert held.info["step"] == new.info["step"] == 6
    assert held.system_fingerprint != read_first.system_fingerprint
    torch.testing.assert_close(weights_of(held.model), weights_of(new.model))
    catalog.release(held)
    assert held is catalog.offered["final"] and read_first.model is None


@pytest.mark.parametrize("damaged", ["step_000006", "best"])
def test_a_damaged_checkpoint_among_others_is_left_out_and_the_rest_served(trained_run, tmp_path, damaged):
    """One checkpoint folder with a config.yaml edited wrong refused the whole run at start ('...
    is missing or damaged; use another checkpoint'), though its other checkpoints were whole. It is
    left out now, with a line serve prints, and the others serve (the newest in place of a damaged
    best). Named with --checkpoints, or served alone, it is refused as before."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    (run / "checkpoints" / damaged / "config.yaml").write_text("model_config: [\n")
    catalog = Catalog(run, torch.device("cpu"))
    assert set(catalog.offered) == set(NAMES) - {damaged}
    assert catalog.default == ("final" if damaged == "best" else "best")
    [line] = catalog.left_out
    assert line.startswith(f"{damaged} is not offered: ") and f"{damaged}/config.yaml" in line
    with live_server(run) as live:
        client = client_of(live)
        assert [m.id for m in client.models.list().data] == [n for n in NAMES if n != damaged]
        assert completion(client, model="untrained", **GREEDY)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=damaged, **GREEDY)
    for target, names in [(run, [damaged, "final"]), (run / "checkpoints" / damaged, None)]:
        with pytest.raises(UserError, match=f"{damaged}/config.yaml"):
            Catalog(target, torch.device("cpu"), names)


def test_a_damaged_checkpoint_is_read_once_until_its_files_change(trained_run, tmp_path, monkeypatch):
    """A checkpoint left out as damaged was read again (config, tokenizer, info.json) at every
    rescan, each second a run is served while it stays damaged. It is read once now, and again once
    its files change: repaired, it is offered at the next rescan."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    config = run / "checkpoints" / "step_000006" / "config.yaml"
    whole = config.read_text()
    config.write_text("model_config: [\n")
    monkeypatch.setattr(models, "SETTLE", 0.05)  # a rescan lists checkpoints/ again 0.05 s after
    time.sleep(0.1)  # the damage settled: older than SETTLE
    reads, listings = [], []
    real_read, real_listing = checkpoint_load.read_config, models.disk.listing
    monkeypatch.setattr(checkpoint_load, "read_config", lambda path: reads.append(path) or real_read(path))
    monkeypatch.setattr(
        models.disk, "listing", lambda folder: listings.append(folder) or real_listing(folder)
    )
    catalog = Catalog(run, torch.device("cpu"))
    assert "step_000006" not in catalog.offered and catalog.left_out
    listings.clear()  # those of the start
    for _ in range(4):
        time.sleep(0.1)
        catalog.rescan()
    assert len(listings) == 4  # each rescan looked at the folder
    assert reads.count(config.parent) == 1
    config.write_text(whole)
    time.sleep(0.1)
    catalog.rescan()
    assert reads.count(config.parent) == 2 and "step_000006" in catalog.offered


def test_a_damaged_checkpoint_saved_after_the_start_is_warned_of_once(
    trained_run, tmp_path, monkeypatch, capsys
):
    """A damaged checkpoint that appears in a served run (found by a rescan) was left out without a
    word, where one at the start gets serve's line and one replaced in place a warning. Now one
    warning line names its file and the problem, once, not at every rescan; repaired, it is offered
    in silence."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    monkeypatch.setattr(models, "SETTLE", 0.05)  # a rescan lists checkpoints/ again 0.05 s after
    catalog = Catalog(run, torch.device("cpu"))
    staged = Path(shutil.copytree(run / "checkpoints" / "step_000006", tmp_path / "staged"))
    whole = (staged / "config.yaml").read_text()
    (staged / "config.yaml").write_text("model_config: [\n")
    time.sleep(0.1)  # the damage settled: older than SETTLE
    capsys.readouterr()
    staged.rename(run / "checkpoints" / "step_000008")  # renamed in, as a save is
    config = run / "checkpoints" / "step_000008" / "config.yaml"
    for _ in range(4):
        time.sleep(0.1)
        catalog.rescan()
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: step_000008 is not offered: "), warnings
    assert str(config) in warnings[0] and "step_000008" not in catalog.offered
    config.write_text(whole)
    time.sleep(0.1)
    catalog.rescan()
    assert "step_000008" in catalog.offered and not capsys.readouterr().err


@pytest.mark.parametrize("damaged", [run_checkpoints.WEIGHTS, "info.json"])
def test_a_best_replaced_by_a_damaged_one_is_read_once_and_the_one_in_memory_answers(
    trained_run, tmp_path, monkeypatch, capsys, damaged
):
    """A served best's weights (or info.json) replaced by a file cut short: the weights were read
    at every request, each answered 500, the model in memory dropped; a damaged info.json was read
    at every request too, in silence. Now the one in memory answers, one warning line names the file,
    and the checkpoint is read again only once its files change (put back: served as before)."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    file = run / "checkpoints" / "best" / damaged
    whole = file.read_bytes()
    monkeypatch.setattr(models, "SETTLE", 0.05)
    reads, real_read = [], checkpoint_load.read_config
    monkeypatch.setattr(checkpoint_load, "read_config", lambda path: reads.append(path) or real_read(path))

    def put(content: bytes) -> None:  # renamed in, as a save renames its files: a new inode
        file.with_suffix(".new").write_bytes(content)
        file.with_suffix(".new").replace(file)
        time.sleep(0.1)  # older than SETTLE

    with live_server(run) as live:
        client = client_of(live)
        before = completion(client, model="best", **GREEDY)
        capsys.readouterr()
        reads.clear()
        put(whole[: len(whole) // 2])
        answers = [completion(client, model="best", **GREEDY) for _ in range(5)]
        assert cards(live)["best"]["loaded"]
        assert answers == [before] * 5
        assert reads.count(file.parent) == 1
        warnings = capsys.readouterr().err.splitlines()
        assert len(warnings) == 1 and warnings[0].startswith("warning: best was replaced by a damaged ")
        assert str(file) in warnings[0]
        put(whole)
        assert completion(client, model="best", **GREEDY) == before
        assert reads.count(file.parent) >= 2 and not capsys.readouterr().err


def test_weights_only_their_checksum_finds_damaged_are_read_once_for_every_500(
    trained_run, tmp_path, monkeypatch, capsys
):
    """A new best whose weights keep a whole header but not the bytes saved (their checksum no
    longer matches): each request read them again for its 500. Now they are read once, a warning
    line names the file, and every request gets the same 500 until the file changes."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    weights = run / "checkpoints" / "best" / run_checkpoints.WEIGHTS
    whole = weights.read_bytes()
    monkeypatch.setattr(models, "SETTLE", 0.05)
    reads, real_read = [], checkpoint_load.read_config
    monkeypatch.setattr(checkpoint_load, "read_config", lambda path: reads.append(path) or real_read(path))
    with live_server(run) as live:
        client = client_of(live)
        capsys.readouterr()
        flipped = weights.with_suffix(".new")
        flipped.write_bytes(whole[:-4] + bytes(b ^ 0xFF for b in whole[-4:]))  # the last weight's bytes
        flipped.replace(weights)
        time.sleep(0.1)  # older than SETTLE
        for _ in range(3):
            with pytest.raises(openai.InternalServerError, match="no longer matches the checksum"):
                client.completions.create(model="best", **GREEDY)
        read_then = len(reads)
        for _ in range(3):
            with pytest.raises(openai.InternalServerError, match="no longer matches the checksum"):
                client.completions.create(model="best", **GREEDY)
        assert len(reads) == read_then
        warnings = capsys.readouterr().err.splitlines()
        assert len(warnings) == 1 and str(weights) in warnings[0] and "checksum" in warnings[0]
