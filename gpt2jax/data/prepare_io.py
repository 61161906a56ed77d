"""The files of a prepare: shard writers that can be snapshotted and restored, atomic writes.

Every byte goes through `write_all` (os.write on a raw descriptor, so a write error carries
the file's name); a file becomes visible under its final name only by `os.replace` after an
fsync.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from gpt2jax.data.shards import FIX, PARTIAL
from gpt2jax.errors import DataError


def write_all(fd: int, data: bytes | memoryview, path: Path) -> None:
    """Writes all of `data` to `fd`; an OSError names `path`."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def fsync_dir(folder: Path) -> None:
    """Makes the renames inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str) -> None:
    """`path` replaced by `text` as a whole (temp file, fsync, rename): readers see the old
    file or the new one, never a part; a full disk leaves the old file as it was."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, text.encode("utf-8"), tmp)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_state(path: Path) -> dict | None:
    """The progress of an interrupted prepare, or None when there is none."""
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        if state.get("phase") in ("tokenize", "commit") and "meta" in state:
            return state
    except (ValueError, AttributeError):
        pass
    raise DataError(f"{str(path)!r} is not the progress file of a prepare; delete the "
                    f"{PARTIAL}/ folder and run prepare again.")


class SplitWriter:
    """One split's token stream as files of at most `tokens_per_shard` tokens.

    `add_documents` appends documents (EOT between them); a full shard is fsynced and renamed
    from `NAME.tmp` to `NAME`. `snapshot()` is what state.json keeps; a writer built from it
    continues exactly where the snapshot was taken (the open shard cut back to its length).
    """

    def __init__(self, folder: Path, split: str, dtype: np.dtype, tokens_per_shard: int,
                 saved: dict | None = None):
        self.folder, self.split, self.dtype = folder, split, np.dtype(dtype)
        self.tokens_per_shard = tokens_per_shard
        saved = saved or {"files": [], "num_tokens": 0, "num_documents": 0, "open": None}
        self.files: list[dict] = list(saved["files"])
        self.num_tokens, self.num_documents = saved["num_tokens"], saved["num_documents"]
        self.fd: int | None = None
        self.fill, self.max_id, self.hasher = 0, -1, hashlib.sha256()
        for entry in self.files:
            _check_finished(folder / entry["name"], entry)
        if saved["open"]:
            self._reopen(saved["open"]["num_tokens"])

    def _name(self) -> str:
        return f"{self.split}_{len(self.files):05d}.bin"

    def file_names(self) -> list[str]:
        """Names in the staging folder that belong to this writer's state."""
        names = [e["name"] for e in self.files]
        return names + ([self._name() + ".tmp"] if self.fd is not None else [])

    def _reopen(self, tokens: int) -> None:
        """Opens the shard of the snapshot again, cut back to `tokens` (its content after
        them belongs to batches the resumed run reads again)."""
        tmp = self.folder / (self._name() + ".tmp")
        done = self.folder / self._name()
        if not tmp.is_file() and done.is_file():  # finished after the snapshot was taken
            os.replace(done, tmp)
        size = tokens * self.dtype.itemsize
        if not tmp.is_file() or tmp.stat().st_size < size:
            raise DataError(f"{str(tmp)!r} is shorter than the progress file records; delete "
                            f"the {PARTIAL}/ folder and run prepare again.")
        os.truncate(tmp, size)
        self.fd = os.open(tmp, os.O_WRONLY | os.O_APPEND)
        data = np.fromfile(tmp, self.dtype)
        self.fill, self.max_id = tokens, int(data.max()) if tokens else -1
        self.hasher = hashlib.sha256(data.tobytes())

    def add_documents(self, arrays: list[np.ndarray], eot: np.ndarray | None) -> int:
        """Appends documents (arrays of this writer's dtype, none empty), EOT before each
        one but the split's first. Returns the number of shards finished."""
        if not arrays:
            return 0
        pieces = []
        for a in arrays:
            if eot is not None and (self.num_tokens or pieces):
                pieces.append(eot)
            pieces.append(a)
        self.num_documents += len(arrays)
        return self._write(np.concatenate(pieces))

    def _write(self, ids: np.ndarray) -> int:
        finished = 0
        while len(ids):
            if self.fd is None:
                path = self.folder / (self._name() + ".tmp")
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            take = ids[: self.tokens_per_shard - self.fill]
            data = take.tobytes()
            write_all(self.fd, data, self.folder / (self._name() + ".tmp"))
            self.hasher.update(data)
            self.max_id = max(self.max_id, int(take.max()))
            self.fill += len(take)
            self.num_tokens += len(take)
            ids = ids[len(take):]
            if self.fill == self.tokens_per_shard:
                self._close_shard()
                finished += 1
        return finished

    def _close_shard(self) -> None:
        name = self._name()
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.replace(self.folder / (name + ".tmp"), self.folder / name)
        self.files.append({"name": name, "num_tokens": self.fill,
                           "bytes": self.fill * self.dtype.itemsize,
                           "sha256": self.hasher.hexdigest(), "max_id": self.max_id})
        self.fill, self.max_id, self.hasher = 0, -1, hashlib.sha256()

    def finish(self) -> None:
        """Closes the last, partly filled shard as a finished one."""
        if self.fd is not None and self.fill:
            self._close_shard()
        elif self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def snapshot(self) -> dict:
        """The writer's state for state.json (the open shard fsynced first)."""
        if self.fd is not None:
            os.fsync(self.fd)
        return {"files": list(self.files), "num_tokens": self.num_tokens,
                "num_documents": self.num_documents,
                "open": {"num_tokens": self.fill} if self.fd is not None else None}


def _check_finished(path: Path, entry: dict) -> None:
    if not path.is_file() or path.stat().st_size != entry["bytes"]:
        raise DataError(f"Finished shard {str(path)!r} of an interrupted prepare is missing or "
                        f"changed; delete the {PARTIAL}/ folder, then {FIX}.")
