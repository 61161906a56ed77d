"""A minimal stand-in for the Hugging Face hub's file endpoint, on 127.0.0.1, for tests.

It answers what `huggingface_hub.hf_hub_download` asks (read from huggingface_hub 2.x
`file_download.py`: `get_hf_file_metadata`, `_get_metadata_or_catch_error`, `http_get`):

- `HEAD|GET /{repo_id}/resolve/{revision}/{filename}`: 200 with `X-Repo-Commit` (a 40-hex
  commit, required), `ETag` (git-style for small files) or `X-Linked-Etag` + `X-Linked-Size`
  (the sha256 the hub sends for LFS files; it names the blob in the cache), `Content-Length`;
- a file missing from a known repo: 404 with `X-Error-Code: EntryNotFound` (and the commit,
  which the client uses to cache the non-existence);
- an unknown repo: 401 with `X-Error-Code: RepoNotFound`, as the real hub answers;
- a renamed repo (`gpt2` -> `openai-community/gpt2`): a relative 307 to the new name, which
  the client follows on the same host.

No xet headers are sent, so the client downloads over plain HTTP GET. Every request is
recorded in `requests` as (method, path, status) so tests can assert what was fetched.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".h5")


class HubStandIn:
    """Serves `repos` ({repo_id: folder}) and `renames` ({old: new}) until `close()`."""

    def __init__(self, repos: dict[str, Path], renames: dict[str, str] | None = None):
        self.repos = {name: Path(folder) for name, folder in repos.items()}
        self.renames = dict(renames or {})
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files_fetched(self) -> list[str]:
        """`repo/filename` of every GET answered with a file (200)."""
        out = []
        for method, path, status in self.requests:
            if method == "GET" and status == 200:
                repo, _, tail = path.lstrip("/").partition("/resolve/")
                out.append(f"{repo}/{tail.split('/', 1)[1]}")
        return out

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def send_response(self, code, message=None):
                hub.requests.append((self.command, self.path, code))
                super().send_response(code, message)

            def _answer(self, body: bool):
                head, sep, tail = self.path.partition("/resolve/")
                repo = head.lstrip("/")
                if not sep or tail.count("/") < 1:
                    return self._error(404, "EntryNotFound")
                revision, filename = tail.split("/", 1)
                if repo in hub.renames:
                    self.send_response(307)
                    self.send_header("Location", f"/{hub.renames[repo]}/resolve/{tail}")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                if repo not in hub.repos:
                    return self._error(401, "RepoNotFound")
                path = hub.repos[repo] / filename
                if revision not in ("main", COMMIT) or not path.is_file():
                    return self._error(404, "EntryNotFound")
                self._send_file(path.read_bytes(), body)

            def _send_file(self, data: bytes, body: bool):
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                if self.path.endswith(LFS_SUFFIXES):
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                git_sha = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                self.send_header("ETag", f'"{git_sha}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
