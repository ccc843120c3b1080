"""A stand-in for the Hugging Face Hub on 127.0.0.1, for the few endpoints `snapshot_download` calls:

    GET  /api/models/ORG/NAME/revision/REV       the commit REV is at, and the files (siblings)
    GET  /api/models/ORG/NAME/tree/REV           the files with sizes (huggingface_hub >= 1.0)
    HEAD /ORG/NAME/resolve/REV/FILE              X-Repo-Commit, ETag, Content-Length
    GET  /ORG/NAME/resolve/REV/FILE              the bytes

and the Hub's errors as huggingface_hub tells them apart: 401 with X-Error-Code RepoNotFound (an
unknown or private repo), 404 RevisionNotFound, 403 GatedRepo. `hub.use(monkeypatch, cache)` points
huggingface_hub at it (its constants, read when it was imported, stand for HF_ENDPOINT and
HF_HUB_CACHE). Every request is logged in `requests` as "METHOD PATH".
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]]  # commit sha -> file name -> content
    refs: dict[str, str]  # branch or tag -> commit sha
    gated: bool = False

    def commit_of(self, revision: str) -> str | None:
        return revision if revision in self.commits else self.refs.get(revision)


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def add(self, repo_id: str, files: dict[str, bytes], revision: str = "main", gated: bool = False) -> str:
        """A commit of `files` that `revision` (a branch or tag) points at; returns its sha."""
        commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, Repo({}, {}, gated))
        repo.commits[commit] = dict(files)
        repo.refs[revision] = commit
        return commit

    def use(self, monkeypatch, cache: Path, offline: bool = False, url: str | None = None) -> None:
        """huggingface_hub's endpoint (this server, or `url`), cache and offline switch."""
        from huggingface_hub import constants

        url = url or self.url
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    def downloads(self) -> list[str]:
        """The files fetched whole (GET .../resolve/REV/FILE), by name."""
        fetched = [
            r.split("/resolve/", 1)[1] for r in self.requests if r.startswith("GET ") and "/resolve/" in r
        ]
        return [path.split("/", 1)[1] for path in fetched]


def start(hub: FakeHub) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                self._api(f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:]), body)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._file(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), body)
            else:
                self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)

        def _repo(self, repo_id: str, revision: str, body: bool) -> tuple[Repo, str] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._send(401, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
                return None
            if repo.gated:
                self._send(403, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"}, body)
                return None
            commit = repo.commit_of(revision)
            if commit is None:
                self._send(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}, body)
                return None
            return repo, commit

        def _api(self, repo_id: str, kind: str, revision: str, body: bool) -> None:
            found = self._repo(repo_id, revision, body)
            if found is None:
                return
            repo, commit = found
            files = repo.commits[commit]
            if kind == "revision":
                answer = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": name} for name in files]}
            else:
                answer = [
                    {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in files.items()
                ]
            self._send(200, json.dumps(answer).encode(), {"Content-Type": "application/json"}, body)

        def _file(self, repo_id: str, revision: str, name: str, body: bool) -> None:
            found = self._repo(repo_id, revision, body)
            if found is None:
                return
            repo, commit = found
            data = repo.commits[commit].get(name)
            if data is None:
                self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)
                return
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            self._send(200, data, {"X-Repo-Commit": commit, "ETag": etag}, body)

        def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler
