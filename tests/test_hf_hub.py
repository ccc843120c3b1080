"""`trickster import hf ORG/NAME`: a Hugging Face Hub repo, without a network.

A tiny random Llama is saved with save_pretrained() and then either laid out as the Hub's cache
would hold it (read with HF_HUB_OFFLINE=1, in a real process that reads the environment) or served
by `fake_hub`, a local HTTP server answering the endpoints `snapshot_download` calls. The failure
lines are rows of tests/test_cli_errors.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import trickster
from trickster import cli, run_checkpoints
from trickster.export import hf_hub
from trickster.train import checkpoint_load

from . import fake_hub
from .test_hf import tiny_llama

pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")

TEXT = "ROMEO: Is it so? then I defy you, stars!"


def logits(run: Path, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return checkpoint_load.load_checkpoint(run).model(torch.tensor([ids]))[0]


def cache_layout(cache: Path, repo_id: str, commit: str, src: Path) -> Path:
    """The Hub cache's own layout: each file a blob named by its sha256, linked from the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in src.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_cached_hub_repo_imports_offline_as_its_local_folder_does(tmp_path):
    """HF_HUB_OFFLINE=1 and the repo in HF_HUB_CACHE: `import hf org/tiny` reads the snapshot, and the
    run gives the logits that importing the same files as a folder gives (and transformers gives)."""
    src, theirs, hf_tok = tiny_llama(tmp_path)
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache_layout(tmp_path / "hub-cache", "org/tiny", commit, src)
    assert cli.main(["import", "hf", str(src), "--out", str(tmp_path / "from-folder")]) == 0

    env = {
        **os.environ,
        "PYTHONPATH": str(Path(trickster.__file__).parent.parent),  # the trickster under test
        "HF_HOME": str(tmp_path / "hf-home"),  # no token or settings of this machine's user
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # were it asked, nothing answers
    }
    argv = ["import", "hf", "org/tiny", "--out", str(tmp_path / "from-hub")]
    done = subprocess.run(
        [sys.executable, "-m", "trickster", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"imported org/tiny (Hugging Face Hub, commit {commit})" in done.stdout, done.stdout

    ids = hf_tok(TEXT)["input_ids"]
    from_hub = logits(tmp_path / "from-hub", ids)
    assert torch.equal(from_hub, logits(tmp_path / "from-folder", ids))
    with torch.no_grad():
        torch.testing.assert_close(from_hub, theirs(torch.tensor([ids])).logits)
    info = run_checkpoints.read_info(tmp_path / "from-hub" / "checkpoints" / "final")
    assert info["hub"] == {"repo_id": "org/tiny", "revision": "main", "commit": commit}


@pytest.fixture(scope="module")
def hub():
    hub = fake_hub.FakeHub()
    server = fake_hub.start(hub)
    yield hub
    server.shutdown()


def halved(src: Path) -> bytes:
    """model.safetensors with every weight halved: another commit of the same repo."""
    weights = {name: tensor * 0.5 for name, tensor in load_file(src / "model.safetensors").items()}
    save_file(weights, src.parent / "halved.safetensors", metadata={"format": "pt"})
    return (src.parent / "halved.safetensors").read_bytes()


def test_import_downloads_only_what_it_reads_once_and_the_revision_asked(tmp_path, hub, monkeypatch, capsys):
    src, theirs, hf_tok = tiny_llama(tmp_path)
    files = {file.name: file.read_bytes() for file in src.iterdir()}
    # what a Hub repo also holds: pickled weights, another format's copy; neither is ever fetched
    extra = {"pytorch_model.bin": b"pickled", "consolidated.safetensors": b"x", "README.md": b"# tiny"}
    old = hub.add("org/versions", {**files, "model.safetensors": halved(src)}, revision="v1")
    new = hub.add("org/versions", {**files, **extra})
    assert old != new
    hub.use(monkeypatch, tmp_path / "hub-cache")
    hub.requests.clear()
    assert cli.main(["import", "hf", "org/versions", "--out", str(tmp_path / "main")]) == 0
    assert sorted(hub.downloads()) == sorted(files)  # config, tokenizer files, model.safetensors
    ids = hf_tok(TEXT)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(logits(tmp_path / "main", ids), theirs(torch.tensor([ids])).logits)
    info = run_checkpoints.read_info(tmp_path / "main" / "checkpoints" / "final")
    assert info["hub"] == {"repo_id": "org/versions", "revision": "main", "commit": new}

    # the second import reads the cache: nothing downloaded again
    hub.requests.clear()
    assert cli.main(["import", "hf", "org/versions", "--out", str(tmp_path / "again")]) == 0
    assert hub.downloads() == []
    assert torch.equal(logits(tmp_path / "again", ids), logits(tmp_path / "main", ids))

    # --revision: the tag's commit, whose weights are the halved ones, named in info
    assert cli.main(["import", "hf", "org/versions", "--revision", "v1", "--out", str(tmp_path / "v1")]) == 0
    info = run_checkpoints.read_info(tmp_path / "v1" / "checkpoints" / "final")
    assert info["hub"] == {"repo_id": "org/versions", "revision": "v1", "commit": old}
    halved_norm = checkpoint_load.load_checkpoint(tmp_path / "v1").model.norm.weight
    assert torch.equal(halved_norm, theirs.model.norm.weight.detach() * 0.5)
    capsys.readouterr()
    assert cli.main(["info", "--checkpoint", str(tmp_path / "v1")]) == 0
    assert f"imported from org/versions (Hugging Face Hub, commit {old})" in capsys.readouterr().out

    # offline, the cached snapshot of main is enough, and nothing is asked of the Hub
    hub.use(monkeypatch, tmp_path / "hub-cache", offline=True)
    hub.requests.clear()
    assert cli.main(["import", "hf", "org/versions", "--out", str(tmp_path / "offline")]) == 0
    assert hub.requests == []
    assert torch.equal(logits(tmp_path / "offline", ids), logits(tmp_path / "main", ids))


def test_shards_are_fetched_by_the_index_and_a_non_llama_before_any_weights(tmp_path, hub, monkeypatch):
    src, theirs, hf_tok = tiny_llama(tmp_path, tie=True)  # saved in shards with an index
    files = {file.name: file.read_bytes() for file in src.iterdir()}
    shards = sorted(json.loads(files["model.safetensors.index.json"])["weight_map"].values())
    assert len(set(shards)) > 1
    hub.add("org/sharded", files)
    hub.use(monkeypatch, tmp_path / "hub-cache")
    hub.requests.clear()
    assert cli.main(["import", "hf", "org/sharded", "--out", str(tmp_path / "run")]) == 0
    assert sorted(hub.downloads()) == sorted(files)
    ids = hf_tok(TEXT)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(logits(tmp_path / "run", ids), theirs(torch.tensor([ids])).logits)

    gpt2 = {**json.loads(files["config.json"]), "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    hub.add("org/not-llama", {**files, "config.json": json.dumps(gpt2).encode()})
    hub.requests.clear()
    assert cli.main(["import", "hf", "org/not-llama", "--out", str(tmp_path / "gpt2")]) == 2
    assert not any(name.endswith(".safetensors") for name in hub.downloads())
    assert not (tmp_path / "gpt2").exists()


def test_a_refused_connection_is_named_in_the_systems_words_whatever_wraps_it():
    """huggingface_hub before 1.0 raises requests' ConnectionError, whose text nests urllib3's
    MaxRetryError and NewConnectionError reprs (300+ characters); the line shows the system's reason."""
    requests = pytest.importorskip("requests")
    from trickster.export.hf_hub import _network_reason

    with pytest.raises(requests.ConnectionError) as refused:
        requests.get("http://127.0.0.1:9/api/models/org/tiny/revision/main", timeout=10)  # nothing listens
    assert len(str(refused.value)) > 200
    assert _network_reason(refused.value) == "[Errno 111] Connection refused"


def test_the_weights_are_those_of_the_commit_whose_config_was_checked(tmp_path, hub, monkeypatch):
    """A push to main while import checks config.json and the tokenizer (or fetches gigabytes):
    the weights still come from the commit those were read from, and info names that commit."""
    src, theirs, hf_tok = tiny_llama(tmp_path)
    files = {file.name: file.read_bytes() for file in src.iterdir()}
    pushed = {**files, "model.safetensors": halved(src)}
    first = hub.add("org/moving", files)
    hub.use(monkeypatch, tmp_path / "hub-cache")
    fetch = hf_hub._snapshot

    def pushed_after_the_config(repo_id, revision, patterns):
        folder = fetch(repo_id, revision, patterns)
        if "config.json" in patterns:
            hub.add("org/moving", pushed)
        return folder

    monkeypatch.setattr(hf_hub, "_snapshot", pushed_after_the_config)
    assert cli.main(["import", "hf", "org/moving", "--out", str(tmp_path / "run")]) == 0
    assert run_checkpoints.read_info(tmp_path / "run" / "checkpoints" / "final")["hub"]["commit"] == first
    ids = hf_tok(TEXT)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(logits(tmp_path / "run", ids), theirs(torch.tensor([ids])).logits)


def test_an_org_name_folder_on_disk_is_imported_from_disk(tmp_path, hub, monkeypatch):
    """ORG/NAME that exists as a folder is that folder, not a Hub repo of that name."""
    src, theirs, hf_tok = tiny_llama(tmp_path)
    shutil.copytree(src, tmp_path / "org" / "local")
    hub.use(monkeypatch, tmp_path / "hub-cache")  # no such repo there
    monkeypatch.chdir(tmp_path)
    hub.requests.clear()
    assert cli.main(["import", "hf", "org/local", "--out", str(tmp_path / "run")]) == 0
    assert hub.requests == []
    ids = hf_tok(TEXT)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(logits(tmp_path / "run", ids), theirs(torch.tensor([ids])).logits)


def test_offline_a_cache_that_lacks_the_weights_says_so(tmp_path, hub, monkeypatch, capsys):
    """A download stopped after config and tokenizer: offline, the weights are missing from the
    cache, not from the repo (which the 'no safetensors weights' line would claim)."""
    src, _, _ = tiny_llama(tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    for file in src.iterdir():
        if file.name != "model.safetensors":
            shutil.copyfile(file, partial / file.name)
    cache_layout(tmp_path / "hub-cache", "org/partial", "a" * 40, partial)
    hub.use(monkeypatch, tmp_path / "hub-cache", offline=True)
    capsys.readouterr()
    assert cli.main(["import", "hf", "org/partial", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"org/partial@{'a' * 40} is in the Hugging Face cache without model.safetensors" in err, err
    assert "HF_HUB_OFFLINE=1" in err and not (tmp_path / "run").exists()
