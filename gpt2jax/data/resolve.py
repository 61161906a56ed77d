"""The one place that turns a data file name into a path on this machine.

A name is a path in the data layout (`tinyshakespeare/input.txt`, `wikitext-2/wiki.test.tokens`,
`gpt2/gpt2.tiktoken`, see `registry.FILES`). `data_file` looks, in order, at:

1. an explicit folder (`data_dir`, e.g. `--config.data_dir`) or an absolute name: only there;
2. `$GPT2JAX_DATA_DIR/NAME`;
3. tiktoken's own cache, for the GPT-2 BPE files it downloads itself;
4. the cache `$XDG_CACHE_HOME/gpt2jax/NAME` (default `~/.cache/gpt2jax/NAME`);
5. the package (`gpt2jax/data/assets/NAME`: Tiny Shakespeare, the main job's default);
6. a download from the file's canonical source (or `$GPT2JAX_DOWNLOAD_BASE_URL/NAME`, a
   mirror laid out like the data folder) into the cache, checked against a pinned sha256.

Configs name such a file as `dataset:NAME` (e.g. `train_file="dataset:tinyshakespeare/input.txt"`).
A file without a pinned sha256 (text8) is only downloaded with `GPT2JAX_ALLOW_UNPINNED=1`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from gpt2jax.data import downloads, registry
from gpt2jax.errors import DataError

DATA_ENV = "GPT2JAX_DATA_DIR"
BASE_URL_ENV = "GPT2JAX_DOWNLOAD_BASE_URL"
UNPINNED_ENV = "GPT2JAX_ALLOW_UNPINNED"
PREFIX = "dataset:"
ASSETS = Path(__file__).resolve().parent / "assets"


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/gpt2jax`, else `~/.cache/gpt2jax` (read at each call)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "gpt2jax"


def packaged_file(name: str) -> Path | None:
    """The copy of `name` shipped inside the package, if there is one."""
    path = ASSETS / name
    return path if path.is_file() else None


def tiktoken_cache_file(name: str) -> Path | None:
    """tiktoken's cached copy of `name` (same cache dir and key as `tiktoken.load`)."""
    remote = registry.FILES.get(name)
    if remote is None or not remote.tiktoken_cached:
        return None
    folder = (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
              or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    path = Path(folder) / hashlib.sha1(remote.url.encode()).hexdigest()
    # tiktoken checks the hash when it reads; so do we (a stale entry is simply not used).
    if path.is_file() and downloads.sha256_of(path) == remote.sha256:
        return path
    return None


def _where(name: str) -> str:
    return (f"put the file at $GPT2JAX_DATA_DIR/{name} (set {DATA_ENV}=DIR) or at "
            f"{cache_dir() / name}")


def _hint(name: str) -> str:
    return f"To avoid the download, {_where(name)}."


def _local(name: str) -> Path | None:
    """Steps 2-5: the first existing copy of `name`, or None."""
    env_dir = os.environ.get(DATA_ENV)
    candidates = [Path(env_dir) / name if env_dir else None, tiktoken_cache_file(name),
                  cache_dir() / name, packaged_file(name)]
    return next((p for p in candidates if p is not None and p.is_file()), None)


def _check_pinned(name: str, sha256: str | None, url: str) -> None:
    if sha256 is None and os.environ.get(UNPINNED_ENV) != "1":
        raise DataError(
            f"{name} has no pinned sha256 (none is published that we could verify), so it is "
            f"not downloaded from {url} unchecked; set {UNPINNED_ENV}=1 to accept it as "
            f"served, or {_where(name)}.")


def _download(name: str, remote: registry.Remote) -> Path:
    dest = cache_dir() / name
    base = os.environ.get(BASE_URL_ENV, "").rstrip("/")
    if base or remote.archive is None:
        url = f"{base}/{name}" if base else remote.url
        _check_pinned(name, remote.sha256, url)
        return downloads.download(url, dest, remote.sha256, what=name, hint=_hint(name))
    archive = remote.archive
    _check_pinned(name, archive.sha256, archive.url)
    zip_name = archive.url.rsplit("/", 1)[-1]
    zip_path = cache_dir() / "downloads" / zip_name
    downloads.download(archive.url, zip_path, archive.sha256, what=zip_name, hint=_hint(name))
    try:
        members = {n: (m, registry.FILES[n].sha256) for n, m in archive.members.items()}
        downloads.extract_members(zip_path, members, cache_dir(), zip_name)
    finally:
        zip_path.unlink(missing_ok=True)   # the members are what is kept
    return dest


def data_file(name: str, data_dir: str | os.PathLike = "", download: bool = True) -> Path:
    """The path of data file `name` on this machine (see the module docstring for the order).

    Args:
      name: a layout name like `wikitext-2/wiki.test.tokens` (or an absolute path).
      data_dir: an explicit folder; when given, the file must be there (no fallback).
      download: False = return only what is already here (raises if nothing is).
    Raises:
      DataError: one line naming the file, where it was looked for and how to provide it.
    """
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if os.path.isabs(name) or data_dir:
        path = Path(name) if os.path.isabs(name) else Path(data_dir).expanduser() / name
        if not path.is_file():
            raise DataError(f"{name!r} was looked for at {str(path)!r}, which does not exist; "
                            "put it there, or drop the explicit folder to use "
                            "$GPT2JAX_DATA_DIR, the cache or a download.")
        return path
    found = _local(name)
    if found is not None:
        return found
    remote = registry.FILES.get(name)
    if remote is None or not download:
        why = "it has no known download source" if remote is None else "downloads are off"
        raise DataError(f"Data file {name!r} was not found ({why}); {_where(name)}.")
    return _download(name, remote)
