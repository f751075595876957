"""A small fake of the Hugging Face Hub's HTTP API, for the quantization layer's lookup tests.

Pure stdlib (http.server in a thread). It serves what huggingface_hub calls:
``GET /api/models?search=&author=&limit=`` (a model listing), ``GET /api/models/{repo}``
(one model's info) and ``GET|HEAD /{repo}/resolve/{rev}/{file}`` (a file such as
config.json, with the X-Repo-Commit and ETag headers the real Hub sends). Point
huggingface_hub at it with ``HF_ENDPOINT=server.url`` or ``endpoint=server.url``.

    with running_fake_hub({"org/M-AWQ": {"quantization_config": {"quant_method": "awq"}}}) as hub:
        ...  # hub.url, hub.requests, hub.auth_headers
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class FakeHub:
    """The fake's models and knobs, and what it saw (read by tests after a lookup)."""

    # repo id -> its config.json (None: the repo has no config.json)
    models: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)  # repos that answer 401 without a token
    fail_status: int = 0  # every request answers this HTTP status (0: never)
    delay_s: float = 0.0  # before every answer (a slow or hung Hub)
    url: str = ""
    requests: list[str] = field(default_factory=list)  # "GET /path?query"
    auth_headers: list[str | None] = field(default_factory=list)

    def listing(self, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        """/api/models: ids containing ``search`` (case-insensitive) by ``author``."""
        search = (query.get("search") or [""])[0].lower()
        author = (query.get("author") or [""])[0].lower()
        limit = int((query.get("limit") or ["1000"])[0])
        out = []
        for repo in sorted(self.models):
            if search in repo.lower() and (not author or repo.split("/")[0].lower() == author):
                out.append({"_id": _sha(repo)[:24], "id": repo, "modelId": repo, "likes": 0})
        return out[:limit]


def _sha(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub  # set on the subclass each server makes

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        hub = self.hub
        hub.requests.append(f"{self.command} {self.path}")
        hub.auth_headers.append(self.headers.get("authorization"))
        if hub.delay_s:
            time.sleep(hub.delay_s)
        if hub.fail_status:
            self._error(hub.fail_status, "ServerError", "the fake Hub is failing on purpose")
            return
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        if path == "/api/models":
            self._send(200, hub.listing(parse_qs(parts.query)))
        elif path.startswith("/api/models/"):
            self._model_info(path.removeprefix("/api/models/"))
        elif "/resolve/" in path:
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            self._resolve(repo, rest.partition("/")[2])
        else:
            self._error(404, "NotFound", f"no route {path}")

    def _model_info(self, repo: str) -> None:
        if repo not in self.hub.models:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {repo}")
            return
        files = ["config.json"] if self.hub.models[repo] is not None else []
        siblings = [{"rfilename": f} for f in files]
        self._send(200, {"id": repo, "modelId": repo, "sha": _sha(repo), "siblings": siblings})

    def _resolve(self, repo: str, filename: str) -> None:
        hub = self.hub
        if repo not in hub.models:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {repo}")
            return
        if repo in hub.gated and not self.headers.get("authorization"):
            self._error(401, "GatedRepo", f"Access to model {repo} is restricted")
            return
        config = hub.models[repo]
        if filename != "config.json" or config is None:
            self._error(404, "EntryNotFound", f"{filename} not found in {repo}")
            return
        body = json.dumps(config).encode()
        headers = {"X-Repo-Commit": _sha(repo), "ETag": f'"{hashlib.sha1(body).hexdigest()}"'}
        self._send(200, config, headers)


@contextlib.contextmanager
def running_fake_hub(
    models: Mapping[str, dict[str, Any] | None] | None = None, **knobs: Any
) -> Iterator[FakeHub]:
    """A fake Hub on a free loopback port for the duration of the block."""
    hub = FakeHub(models=dict(models or {}), **knobs)
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a request held by delay_s never blocks shutdown
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
