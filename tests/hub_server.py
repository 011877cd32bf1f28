"""A stand-in for the Hugging Face Hub's file API, serving dataset repos from local folders (tests only).

No hub is reachable from the machines kubetune is tested on, so this answers the few requests huggingface_hub
makes to download a dataset repo (`repo_info` with its file list, then each file's `resolve` URL), from folders a
test writes. Point `HF_ENDPOINT` at `url` and clear `HF_HUB_OFFLINE`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

_SHA = "0123456789abcdef0123456789abcdef01234567"


class _Hub(ThreadingHTTPServer):
    repos: dict[str, Path]
    requests: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Hub

    def log_message(self, *args) -> None:  # noqa: ANN002  (quiet)
        pass

    def _files(self, repo: str) -> list[str]:
        root = self.server.repos[repo]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def _answer(self, body: bytes, content_type: str, *, head: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        path = unquote(self.path.split("?")[0])
        self.server.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        # /api/datasets/<owner>/<name>/tree/<rev>: the file list (recursive; one page)
        if parts[:2] == ["api", "datasets"] and len(parts) > 4 and parts[4] == "tree":
            repo = "/".join(parts[2:4])
            root = self.server.repos.get(repo)
            files = self._files(repo) if root else []
            tree = [{"type": "file", "path": f, "size": (root / f).stat().st_size,
                     "oid": hashlib.sha1((root / f).read_bytes()).hexdigest()} for f in files]
            return self._answer(json.dumps(tree).encode(), "application/json", head=head)
        # /api/datasets/<owner>/<name>/revision/<rev>   and   /api/datasets/<owner>/<name>
        if parts[:2] == ["api", "datasets"] and "/".join(parts[2:4]) in self.server.repos:
            repo = "/".join(parts[2:4])
            info = {"id": repo, "sha": _SHA, "private": False, "disabled": False,
                    "siblings": [{"rfilename": f} for f in self._files(repo)]}
            return self._answer(json.dumps(info).encode(), "application/json", head=head)
        # /datasets/<owner>/<name>/resolve/<rev>/<file...>
        if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
            repo, file = "/".join(parts[1:3]), "/".join(parts[5:])
            if repo in self.server.repos and (self.server.repos[repo] / file).is_file():
                body = (self.server.repos[repo] / file).read_bytes()
                etag = '"' + hashlib.sha1(body).hexdigest() + '"'
                return self._answer(body, "application/octet-stream", head=head,
                                    extra={"ETag": etag, "X-Repo-Commit": _SHA})
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound" if parts[:1] == ["datasets"] else "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)


@contextmanager
def start_hub(repos: dict[str, Path]) -> Iterator[_Hub]:
    """Serve `repos` (repo id → folder) on a free loopback port; `.url` is the endpoint, `.requests` the log."""
    hub = _Hub(("127.0.0.1", 0), _Handler)
    hub.repos, hub.requests = repos, []
    hub.url = f"http://127.0.0.1:{hub.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()
