"""`trickster report` and `trickster runs` on a short real run."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from trickster import run_checkpoints
from trickster.cli import main
from trickster.config import load_config
from trickster.observe.events import read_metrics
from trickster.observe.report import build_report
from trickster.observe.runs import Metrics, Run, guess_preset, read_run
from trickster.observe.status import write_status
from trickster.train import checkpoint_load
from trickster.units import format_duration

SECTIONS = [
    "Stops and resumes",
    "Loss curves",
    "Trained versus untrained",
    "Samples at every evaluation",
    "Learning rate, gradient norm and throughput",
    "Model",
    "Config",
    "Run manifest",
    "Checkpoints",
]


class Page(HTMLParser):
    """The parts of the page the tests look at."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.images, self.headings, self.links = [], [], [], []
        self._in_h2 = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        self.links += [v for k, v in attrs.items() if k in ("src", "href") and v]
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        self._in_h2 = False if tag == "h2" else self._in_h2

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)


def test_an_out_ending_in_a_slash_is_a_folder_for_the_page(trained_run, tmp_path, capsys):
    """`--out pages/` means a folder (made if missing): the page is pages/report.html (it was a
    file named `pages`)."""
    folder = tmp_path / "pages"
    assert main(["report", str(trained_run), "--out", f"{folder}/"]) == 0
    assert [p.name for p in folder.iterdir()] == ["report.html"]
    assert capsys.readouterr().out.strip() == f"wrote {folder / 'report.html'} (open it in a browser)"


def test_report_is_one_self_contained_page_with_the_whole_story(trained_run, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(trained_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (open it in a browser)"
    text = out.read_text(encoding="utf-8")
    page = Page(text)

    # self-contained: no scripts, no stylesheets or images from elsewhere, no web address at all
    assert "script" not in page.tags and "link" not in page.tags
    assert all(link.startswith("data:image/png;base64,") for link in page.links), page.links
    assert "http://" not in text and "https://" not in text
    assert page.headings == SECTIONS
    sizes = [Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size for src in page.images]
    assert sizes == [(1100, 420), (1100, 280)]  # the loss curves, then lr / grad norm / tokens per second

    records = read_metrics(trained_run / "metrics.jsonl")
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 6, 12] and all("sample" in r for r in evals)
    samples = text.split("<h2>Samples at every evaluation</h2>")[1].split("<h2>")[0]
    assert samples.count("<tr>") == 1 + len(evals)
    for r in evals:  # every sample, escaped, after its highlighted prompt, with its step and loss
        assert html.escape(r["sample"].removeprefix("ROMEO:")) in samples
        assert f"<td class='n'>{r['step']:,}</td>" in samples and f"{r['val_loss']:.4f}" in samples
    comparison = text.split("<h2>Trained versus untrained</h2>")[1].split("<h2>")[0]
    assert (
        f"<b>{evals[0]['val_loss']:.4f}</b>" in comparison
        and f"<b>{evals[-1]['val_loss']:.4f}</b>" in comparison
    )
    assert "untrained (step 0" in comparison and "trained (step 12)" in comparison

    loaded = checkpoint_load.load_checkpoint(trained_run / "checkpoints" / "final")
    total = sum(p.numel() for p in loaded.model.parameters())
    assert f"<th>total</th><td>{total:,}</td>" in text
    assert "max_steps: 12" in text  # the config
    manifest = read_run(trained_run).manifest
    assert f"<th>torch</th><td>{manifest['torch']}</td>" in text
    tokens_per_sec = statistics.median([r["tokens_per_sec"] for r in records if r["event"] == "train"][1:])
    assert f"{tokens_per_sec:,.0f}" in text
    flops = next(r for r in records if r["event"] == "start")["flops_per_token"]
    gflops = re.search(r"<th>achieved GFLOP/s[^<]*</th><td>([\d,.]+)</td>", text).group(1)
    assert float(gflops.replace(",", "")) == pytest.approx(tokens_per_sec * flops / 1e9, abs=0.05)
    layers = loaded.cfg.model.num_layers
    in_blocks = sum(p.numel() for name, p in loaded.model.named_parameters() if name.startswith("layers."))
    assert f"<th>blocks (x{layers})</th><td>{in_blocks:,}</td>" in text
    assert f"<th>per block</th><td>{in_blocks // layers:,}</td>" in text
    for name in ("step_000006", "best", "final"):
        assert f"<th>{name}</th>" in text


def test_report_shows_the_tokens_each_evaluation_had_seen_across_a_resume_with_another_batch(tmp_path):
    """A run resumed with a larger global batch: the samples table shows each evaluation's own
    tokens_seen, not its step times the first segment's tokens per step."""
    from trickster.observe.report import build_report

    def evaluation(step: int, tokens_seen: int) -> dict:
        record = {"event": "eval", "step": step, "time": step, "val_loss": 2.0, "val_perplexity": 7.4}
        return {**record, "tokens_seen": tokens_seen}

    records = [
        {"event": "start", "step": 0, "time": 0.0, "tokens_per_step": 64},
        evaluation(0, 0),
        evaluation(10, 640),
        {"event": "resume", "step": 10, "time": 11.0, "checkpoint": "step_000010", "changed": {}},
        evaluation(20, 3200),
    ]  # 10 steps of 64 tokens, then 10 of 256
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    samples = build_report(run).split("<h2>Samples at every evaluation</h2>")[1].split("<h2>")[0]
    tokens = re.findall(r"<tr><td class='n'>[\d,]+</td><td class='n'>([^<]*)</td>", samples)
    assert tokens == ["0", "640", "3,200"]


def test_report_compares_the_untrained_model_with_the_last_evaluation_and_escapes_samples(tmp_path):
    """The best evaluation (step 6) is not the last (step 12): the summary's best card names step 6,
    the comparison shows the model as trained, at step 12; a sample's text is text, never markup."""
    from trickster.observe.report import build_report

    def evaluation(step: int, loss: float, sample: str) -> dict:
        record = {"event": "eval", "step": step, "time": step, "val_loss": loss, "sample": sample}
        return {**record, "val_perplexity": round(2.718281828**loss, 3), "tokens_seen": 64 * step}

    records = [
        {"event": "start", "step": 0, "time": 0.0, "tokens_per_step": 64},
        evaluation(0, 4.0, "a <b>bold</b> & <script>x</script>"),
        evaluation(6, 2.0, "at six"),
        evaluation(12, 2.5, "at twelve"),
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    page = build_report(run)
    cards = dict(re.findall(r'<div class="k">([^<]*)</div><div class="v">([^<]*)</div>', page))
    assert cards["best val loss"] == "2.0000 (step 6)" and cards["untrained val loss"] == "4.0000"
    comparison = page.split("<h2>Trained versus untrained</h2>")[1].split("<h2>")[0]
    assert "trained (step 12)" in comparison and "at twelve" in comparison and "<b>2.5000</b>" in comparison
    assert "<b>4.0000</b>" in comparison and "at six" not in comparison
    assert "<b>bold</b>" not in page and "<script>" not in page
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;x&lt;/script&gt;" in comparison


def test_report_of_a_run_stopped_for_non_finite_weights(tmp_path, capsys):
    """An evaluation of non-finite weights logs val_loss and val_perplexity as null: the report
    was a TypeError traceback (a None formatted as a number)."""
    records = [
        {"event": "start", "step": 0, "time": 0.0, "tokens_per_step": 8},
        {"event": "eval", "step": 0, "time": 1.0, "val_loss": 4.0, "val_perplexity": 54.6, "tokens_seen": 0},
        {
            "event": "eval",
            "step": 5,
            "time": 2.0,
            "val_loss": None,
            "val_perplexity": None,
            "tokens_seen": 40,
        },
        {"event": "stopped", "step": 5, "time": 3.0, "reason": "non-finite"},
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    comparison = page.split("<h2>Trained versus untrained</h2>")[1].split("<h2>")[0]
    assert "<b>4.0000</b>" in comparison and "<b>not finite</b>, perplexity <b>not finite</b>" in comparison
    samples = page.split("<h2>Samples at every evaluation</h2>")[1].split("<h2>")[0]
    assert "<td class='n'>5</td><td class='n'>40</td><td class='n'>not finite</td>" in samples
    assert "stopped (non-finite)" in page


def test_report_writes_into_the_run_folder_by_default(trained_run, tmp_path):
    copy = Path(shutil.copytree(trained_run, tmp_path / "copy"))
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").read_text(encoding="utf-8").startswith("<!doctype html>")
    (copy / "report.html").write_text("an older report")
    assert main(["report", str(copy)]) == 0  # a page is replaced: the report is written again
    assert (copy / "report.html").read_text(encoding="utf-8").startswith("<!doctype html>")
    assert [p.name for p in copy.iterdir() if p.name.startswith(".")] == []


def test_report_links_the_data_report_when_the_data_folder_has_one(trained_run, shakespeare_dir, tmp_path):
    data = Path(shutil.copytree(shakespeare_dir, tmp_path / "data"))
    copy = Path(shutil.copytree(trained_run, tmp_path / "run"))
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace(str(shakespeare_dir), str(data)))
    assert main(["report", str(copy)]) == 0
    assert "data report" not in (copy / "report.html").read_text()  # none written yet
    assert main(["data", "report", str(data), "--html"]) == 0
    assert main(["report", str(copy)]) == 0
    link = f'<a href="{(data / "report.html").resolve().as_uri()}">data report</a>'
    assert link in (copy / "report.html").read_text()


def test_a_run_config_of_an_empty_mapping_is_named_damaged_not_shown_as_defaults(trained_run, tmp_path):
    copy = Path(shutil.copytree(trained_run, tmp_path / "run"))
    (copy / "config.yaml").write_text("{}\n")  # read as every default, its data path None: a traceback
    assert main(["report", str(copy)]) == 0
    page = (copy / "report.html").read_text(encoding="utf-8")
    assert "config.yaml is missing or damaged" in page


def test_runs_table_lists_each_run_with_its_numbers(trained_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run, runs / "a-finished")
    partial = Path(shutil.copytree(trained_run, runs / "b-partial"))
    lines = (partial / "metrics.jsonl").read_text().splitlines()
    (partial / "metrics.jsonl").write_text("\n".join(lines[:-5]) + "\n" + lines[-5][:20])  # died mid-line
    (runs / "notes").mkdir()  # not a run: ignored
    damaged = Path(shutil.copytree(trained_run, runs / "c-damaged"))
    (damaged / "metrics.jsonl").write_text('{"event": "start"\n{"event": "eval"}\n')  # listed, not fatal

    assert main(["runs", str(runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "run",
        "preset",
        "parameters",
        "steps",
        "best",
        "val",
        "loss",
        "tokens",
        "seen",
    ] + [
        "wall",
        "time",
        "status",
    ]
    out, notes = out[:4], out[4:]  # what each row leaves out, said under the table
    assert out[3].split()[0] == "c-damaged" and out[3].split()[-1] == "unreadable"
    assert notes == [
        f"note: b-partial: the last line of metrics.jsonl is cut short (line {len(lines) - 4}); skipped",
        "note: c-damaged: metrics.jsonl lines 1 and 2 are damaged (not events) and were skipped; delete them "
        "to stop this note",
    ]
    records = read_metrics(trained_run / "metrics.jsonl")
    start, trains = records[0], [r for r in records if r["event"] == "train"]
    best = min(r["val_loss"] for r in records if r["event"] == "eval" and r["step"] > 0)
    wall = format_duration(records[-1]["time"] - records[0]["time"])
    expected = ["a-finished", "custom", f"{start['params']:,}", "12/12", f"{best:.4f}"]
    assert out[1].split() == [*expected, f"{trains[-1]['tokens_seen']:,}", *wall.split(), "finished"]
    kept = read_metrics(partial / "metrics.jsonl")
    assert out[2].split()[0] == "b-partial" and out[2].split()[-1] == "incomplete"
    assert out[2].split()[3] == f"{kept[-1]['step']}/12"
    assert read_run(partial).problem.startswith("the last line of metrics.jsonl is cut short")


def test_runs_reports_an_empty_folder(tmp_path, capsys):
    assert main(["runs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"no runs in {tmp_path}")


def test_preset_is_recognised_by_the_model_shape():
    assert guess_preset(load_config(preset="nano")) == "nano"
    tiny = load_config(preset="tiny", overrides=["model_config.vocab_size=65"])  # auto, resolved
    assert guess_preset(tiny) == "tiny"
    assert guess_preset(load_config(preset="nano", overrides=["model_config.num_layers=5"])) == "custom"


def test_wall_time_leaves_out_the_pause_before_a_resume():
    records = [
        {"event": "start", "step": 0, "time": 100.0},
        {"event": "train", "step": 10, "time": 160.0},
        {"event": "resume", "step": 10, "time": 5000.0},  # an hour later
        {"event": "train", "step": 20, "time": 5030.0},
        {"event": "stopped", "step": 20, "time": 5031.0, "signal": "SIGINT"},
    ]
    run = Run(Path("r"), None, Metrics.from_records(records))
    assert run.wall_seconds == 60.0 + 31.0
    assert run.status == "stopped (SIGINT)"
    assert format_duration(run.wall_seconds) == "1m 31s" and format_duration(7300) == "2h 01m"


def test_runs_tells_a_live_run_from_one_whose_process_died(trained_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("live", "dead"):
        partial = Path(shutil.copytree(trained_run, runs / name))
        lines = (partial / "metrics.jsonl").read_text().splitlines()
        (partial / "metrics.jsonl").write_text("\n".join(lines[:-3]) + "\n")  # no end event yet
    write_status(runs / "live", "running", step=8)  # this process: alive
    code = "import os; print(os.getpid())"
    exited = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    record = write_status(runs / "dead", "running", step=8)
    (runs / "dead" / "status.json").write_text(json.dumps({**record, "pid": int(exited.stdout)}))

    assert main(["runs", str(runs)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["live"].endswith("running") and rows["dead"].endswith("stopped (process died)")


@pytest.mark.parametrize("moment", ["while-listing", "while-drawing"])
def test_report_on_a_live_run_whose_checkpoint_is_rotated_away_meanwhile(
    trained_run, tmp_path, monkeypatch, moment
):
    """`trickster report` on a run that trains with keep_last: a checkpoint deleted between the
    listing and the read of its info.json was an error ("info.json is missing or damaged"), three
    times out of three on a live micro run."""
    from trickster.observe import report

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    doomed = run / "checkpoints" / "step_000006"
    if moment == "while-listing":
        is_complete = run_checkpoints.is_complete

        def rotated(path):
            complete = is_complete(path)
            if path == doomed:
                run_checkpoints.remove(path)  # what keep_last rotation does meanwhile (run_checkpoints.prune)
            return complete

        monkeypatch.setattr(run_checkpoints, "is_complete", rotated)
    else:
        figure = report._figure_section

        def drawn(*args):
            if doomed.exists():
                run_checkpoints.remove(doomed)
            return figure(*args)

        monkeypatch.setattr(report, "_figure_section", drawn)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "<tr><th>final</th><td>step 12, val loss " in page


def test_report_says_when_the_run_stopped_and_was_resumed(shakespeare_dir, tmp_path, monkeypatch):
    """Stopped by SIGTERM at step 3, resumed; then its process ended without a word after step 8
    (a bug here, as a kill or a power cut would), resumed from step 6 and finished. The report said
    none of it: the resumes' events were in metrics.jsonl, and the stops were cut from it by them."""
    import os
    import signal

    from trickster.train import loop
    from trickster.train.loop import train

    from .conftest import QUIET, micro_config

    training = {"max_steps": 12, "warmup_steps": 0, "save_every": 6, "eval_every": 6, "sample_tokens": 0}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=training)
    real_step = loop.Trainer.step

    def stopping(trainer):
        if trainer.state.step == 2:  # during step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(trainer)

    def dying(trainer):
        if trainer.state.step == 8:
            raise SystemExit("the process ends here")  # no stopped event, as after a kill
        return real_step(trainer)

    monkeypatch.setattr(loop.Trainer, "step", stopping)
    assert train(cfg, **QUIET).exit_signal == signal.SIGTERM
    monkeypatch.setattr(loop.Trainer, "step", dying)
    with pytest.raises(SystemExit):
        train(cfg, resume=True, **QUIET)
    monkeypatch.setattr(loop.Trainer, "step", real_step)
    assert train(cfg, resume=True, **QUIET).state.step == 12

    page = build_report(tmp_path / "run")
    section = page.split("<h2>Stops and resumes</h2>")[1].split("<h2>")[0]
    rows = re.findall(r"<tr><td class='n'>[^<]+</td><td class='n'>(\d+)</td><td>([^<]+)</td></tr>", section)
    said = [
        (int(step), re.sub(r", [^,]+ after its last", ", D after its last", html.unescape(what)))
        for step, what in rows
    ]
    assert said == [
        (3, "stopped by SIGTERM (a checkpoint of this step saved)"),
        (3, "resumed from checkpoints/step_000003, D after its last event"),
        (8, "the process ended after this train event, with no word (killed, or the machine stopped)"),
        (6, "resumed from checkpoints/step_000006, D after its last event (steps 7 to 8 trained again)"),
    ], section
