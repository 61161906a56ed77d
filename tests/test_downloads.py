"""Data files resolve as users expect, and downloads are checksummed, atomic and retried.

The real download code runs against a local HTTP server on 127.0.0.1 serving the shared
data folder (a mirror with the data layout, `GPT2JAX_DOWNLOAD_BASE_URL`), or zips built from
it; the server can corrupt a file or cut the connection halfway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest
import tiktoken
import tiktoken.registry

from configs import common
from gpt2jax.data import downloads, registry, resolve, sources
from gpt2jax.errors import DataError
from gpt2jax.data.bpe import get_encoding

DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there


class Server:
    """Serves `root` (plus in-memory `extra` files) on 127.0.0.1; `modes[path]` misbehaves:
    "corrupt" flips a byte, "cut" sends the full Content-Length then half the body and closes,
    "cut_once" does that on the first request only."""

    def __init__(self, root: Path, extra: dict[str, bytes] | None = None):
        self.root, self.extra = root, dict(extra or {})
        self.requests: list[str] = []
        self.modes: dict[str, str] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.body(self.path)
                if body is None:
                    self.send_error(404)
                    return
                mode = server.modes.get(self.path, "")
                if mode == "corrupt":
                    body = bytes([body[0] ^ 1]) + body[1:]
                cut = mode == "cut" or (mode == "cut_once" and
                                        server.requests.count(self.path) == 1)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def body(self, path: str) -> bytes | None:
        if path in self.extra:
            return self.extra[path]
        file = self.root / path.lstrip("/")
        return file.read_bytes() if file.is_file() else None

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """No data dir, an empty cache and tiktoken cache; returns the cache folder."""
    monkeypatch.delenv(resolve.DATA_ENV, raising=False)
    monkeypatch.delenv("GPT2JAX_TIKTOKEN_RANKS", raising=False)
    monkeypatch.delenv(resolve.UNPINNED_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    monkeypatch.setenv(resolve.BASE_URL_ENV, DEAD_URL)
    return tmp_path / "cache" / "gpt2jax"


@pytest.fixture
def server(data_dir, monkeypatch):
    srv = Server(data_dir)
    monkeypatch.setenv(resolve.BASE_URL_ENV, srv.url)
    yield srv
    srv.stop()


def cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_good_download_then_cache_without_server(fresh, server, data_dir, monkeypatch):
    path = resolve.data_file("ptb/ptb.valid.txt")
    assert path == fresh / "ptb" / "ptb.valid.txt"
    assert path.read_bytes() == (data_dir / "ptb" / "ptb.valid.txt").read_bytes()
    assert server.requests == ["/ptb/ptb.valid.txt"]
    server.stop()
    assert resolve.data_file("ptb/ptb.valid.txt") == path       # cache, no server
    assert cached_files(fresh) == [path]                        # no temporary left over
    # the data dir wins over the cache; an explicit folder is the only place looked at
    monkeypatch.setenv(resolve.DATA_ENV, str(data_dir))
    assert resolve.data_file("ptb/ptb.valid.txt") == data_dir / "ptb" / "ptb.valid.txt"
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        resolve.data_file("ptb/ptb.valid.txt", data_dir=fresh.parent / "nowhere")


def test_tokenizer_downloads_the_bpe_ranks_once(fresh, server):
    enc = get_encoding()
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert server.requests == ["/gpt2/gpt2.tiktoken"]
    server.stop()
    assert get_encoding().encode_ordinary(" The quick") == [383, 2068]


def test_tokenizer_reads_tiktoken_own_cache_first(fresh, data_dir, tmp_path):
    # tiktoken caches a URL's bytes at TIKTOKEN_CACHE_DIR / sha1(url); the download URL
    # is dead (fixture), so this can only work from tiktoken's cache.
    url = registry.FILES["gpt2/gpt2.tiktoken"].url
    key = hashlib.sha1(url.encode()).hexdigest()
    (tmp_path / "tiktoken").mkdir()
    (tmp_path / "tiktoken" / key).write_bytes((data_dir / "gpt2" / "gpt2.tiktoken").read_bytes())
    assert get_encoding().encode_ordinary("Hello world") == [15496, 995]
    assert cached_files(fresh) == []


def test_tokenizer_reads_tiktoken_gpt2_encoding_from_its_cache(
        fresh, data_dir, tmp_path, monkeypatch):
    # tiktoken's own "gpt2" encoding is built from encoder.json + vocab.bpe; with both in its
    # cache (and its in-memory registry emptied) no ranks file and no network are needed.
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    (tmp_path / "tiktoken").mkdir()
    for name in ("gpt2/encoder.json", "gpt2/vocab.bpe"):
        key = hashlib.sha1(registry.FILES[name].url.encode()).hexdigest()
        (tmp_path / "tiktoken" / key).write_bytes((data_dir / name).read_bytes())
    enc = get_encoding()
    assert enc.name == "gpt2" and enc.encode_ordinary("Hello world") == [15496, 995]
    assert cached_files(fresh) == []


def test_corrupted_download_is_refused_and_nothing_cached(fresh, server):
    server.modes["/lambada/lambada_test.jsonl"] = "corrupt"
    with pytest.raises(DataError, match=r"lambada_test.jsonl downloaded from http://127.*"
                                        r"not the pinned 4aa8d02c.*nothing was cached"):
        resolve.data_file("lambada/lambada_test.jsonl")
    assert cached_files(fresh) == []


def test_connection_cut_halfway_is_retried(fresh, server, data_dir):
    server.modes["/ptb/ptb.test.txt"] = "cut_once"
    path = resolve.data_file("ptb/ptb.test.txt")
    assert server.requests == ["/ptb/ptb.test.txt"] * 2
    assert path.read_bytes() == (data_dir / "ptb" / "ptb.test.txt").read_bytes()
    assert cached_files(fresh) == [path]


def test_connection_always_cut_is_a_clean_error(fresh, server, tmp_path):
    server.modes["/ptb/ptb.test.txt"] = "cut"
    dest = tmp_path / "out" / "ptb.test.txt"
    with pytest.raises(downloads.DownloadError,
                       match=r"Could not download ptb.test.txt .*closed after 224,972 of "
                             r"449,945 bytes, 2 tries.*use the data dir"):
        downloads.download(f"{server.url}/ptb/ptb.test.txt", dest,
                           registry.FILES["ptb/ptb.test.txt"].sha256, what="ptb.test.txt",
                           hint="use the data dir", attempts=2, backoff_s=0.0)
    assert server.requests == ["/ptb/ptb.test.txt"] * 2
    assert cached_files(dest.parent) == []


def test_offline_error_names_file_url_and_variable(fresh):
    with pytest.raises(DataError) as info:
        resolve.data_file("lambada/lambada_test.jsonl")
    message = str(info.value)
    assert "\n" not in message
    for part in ("lambada/lambada_test.jsonl", f"{DEAD_URL}/lambada/lambada_test.jsonl",
                 "offline?", "GPT2JAX_DATA_DIR=DIR", str(fresh)):
        assert part in message, message
    assert cached_files(fresh) == []


def test_a_mirror_that_is_not_http_is_refused(fresh, data_dir, monkeypatch):
    # urlopen reads file: and custom schemes too (ruff S310); only http(s) is fetched
    monkeypatch.setenv(resolve.BASE_URL_ENV, data_dir.as_uri())  # file:///.../shared/data
    with pytest.raises(DataError, match="only http\\(s\\) URLs are fetched") as info:
        resolve.data_file("lambada/lambada_test.jsonl")
    assert "GPT2JAX_DOWNLOAD_BASE_URL" in str(info.value) and cached_files(fresh) == []


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _serve_zip(monkeypatch, server, data: bytes):
    """Points the WikiText-2 archive at the local server, pinned to `data`'s sha256."""
    monkeypatch.delenv(resolve.BASE_URL_ENV)   # canonical sources, i.e. the archive
    server.extra["/wikitext-2-v1.zip"] = data
    old = registry.FILES["wikitext-2/wiki.test.tokens"].archive
    archive = registry.Archive(f"{server.url}/wikitext-2-v1.zip",
                               hashlib.sha256(data).hexdigest(), old.members)
    for name in old.members:
        monkeypatch.setitem(registry.FILES, name,
                            dataclasses.replace(registry.FILES[name], archive=archive))


def test_archive_members_are_extracted_to_the_layout(fresh, server, data_dir, monkeypatch):
    test, valid = (data_dir / "wikitext-2" / f"wiki.{s}.tokens" for s in ("test", "valid"))
    files = {"wikitext-2/wiki.test.tokens": test.read_bytes(),
             "wikitext-2/wiki.valid.tokens": valid.read_bytes(),
             "wikitext-2/wiki.train.tokens": b" = Train = \n"}   # not in the shared data
    _serve_zip(monkeypatch, server, _zip(files))
    path = resolve.data_file("wikitext-2/wiki.test.tokens")
    assert path == fresh / "wikitext-2" / "wiki.test.tokens"
    assert path.read_bytes() == test.read_bytes()
    assert resolve.data_file("wikitext-2/wiki.valid.tokens").read_bytes() == valid.read_bytes()
    assert server.requests == ["/wikitext-2-v1.zip"]   # one download serves every split
    assert [p.relative_to(fresh).as_posix() for p in cached_files(fresh)] == sorted(files)


def test_archive_member_with_wrong_hash_is_not_cached(fresh, server, data_dir, monkeypatch):
    test, valid = ((data_dir / "wikitext-2" / f"wiki.{s}.tokens").read_bytes()
                   for s in ("test", "valid"))
    files = {"wikitext-2/wiki.test.tokens": test + b" extra\n",
             "wikitext-2/wiki.valid.tokens": valid, "wikitext-2/wiki.train.tokens": b"t\n"}
    _serve_zip(monkeypatch, server, _zip(files))
    with pytest.raises(DataError, match="wiki.test.tokens in wikitext-2-v1.zip has sha256"):
        resolve.data_file("wikitext-2/wiki.test.tokens")
    assert not (fresh / "wikitext-2" / "wiki.test.tokens").exists()
    assert not (fresh / "downloads" / "wikitext-2-v1.zip").exists()
    assert not any(p.name.endswith(".part") for p in cached_files(fresh))


def test_unpinned_file_needs_an_explicit_opt_in(fresh, server, monkeypatch):
    server.extra["/text8/text8"] = b" anarchism originated as a term of abuse"
    with pytest.raises(DataError, match="text8/text8 has no pinned sha256.*"
                                        "GPT2JAX_ALLOW_UNPINNED=1"):
        resolve.data_file("text8/text8")
    assert server.requests == [] and cached_files(fresh) == []
    monkeypatch.setenv(resolve.UNPINNED_ENV, "1")
    assert resolve.data_file("text8/text8").read_bytes() == server.extra["/text8/text8"]


def test_unknown_file_is_not_downloaded(fresh, server):
    with pytest.raises(DataError, match=r"'cnn_dailymail/test.jsonl' was not found \(it has no "
                                        r"known download source\); put the file at"):
        resolve.data_file("cnn_dailymail/test.jsonl")
    assert server.requests == []


def test_text_source_resolves_dataset_names(fresh):
    packaged = resolve.packaged_file("tinyshakespeare/input.txt")
    for pattern in ("dataset:tinyshakespeare/input.txt",
                    "$GPT2JAX_DATA_DIR/tinyshakespeare/input.txt"):   # data dir unset
        assert sources.resolve_files(pattern, "train_file") == [str(packaged)]
    with pytest.raises(DataError, match="ptb.train.txt.*offline"):
        sources.resolve_files(common.data_config(train_file="dataset:ptb/ptb.train.txt")
                              .train_file, "train_file")
