"""One training run per workdir: an exclusive lock file per process index.

`<workdir>/train.<i>.lock` (i = `jax.process_index()`) holds the owner's host, pid and start
time as JSON and an exclusive `flock` for as long as the run lives. A second run on the same
workdir is refused at start, before it opens anything else there (two Orbax managers on one
directory delete each other's temporary checkpoints; two writers interleave
`metrics.jsonl`). The kernel drops the flock of a process that dies, even by SIGKILL, so the
lock file of a dead run is stale by construction: the next run takes it over with a warning.
The file is removed when the run ends.

Several processes of one multi-host run share the workdir: each takes the lock of its own
index, and they agree (all-gather) before going on, so that a second multi-host run is
refused by all its processes, not by some while the others wait in a collective.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from gpt2jax.errors import ConfigError, StorageError, describe_write_error


class WorkdirLockedError(ConfigError):
    """Another live run holds the workdir; nothing was read or written there."""


def lock_path(workdir: Path, process_index: int) -> Path:
    return Path(workdir) / f"train.{process_index}.lock"


def _owner(fd: int) -> dict:
    """The JSON a lock file holds ({} if empty or unreadable)."""
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "a run that has not written its name yet"
    return (f"pid {owner.get('pid')} on host {owner.get('host')!r}, started "
            f"{owner.get('started', '?')}")


def acquire(workdir: Path, process_index: int = 0) -> int:
    """Takes `<workdir>/train.<process_index>.lock`; returns its file descriptor.

    Raises WorkdirLockedError if a live process holds it, StorageError if the workdir cannot
    be written (read-only, full). A lock file left by a dead process is taken over (logged as
    a warning).
    """
    path = lock_path(workdir, process_index)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # checked first: nothing else is written before the lock
            raise StorageError(f"The workdir {workdir} is not writable: "
                               f"{describe_write_error(e, workdir)}; pass a writable "
                               "--workdir.") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            raise WorkdirLockedError(
                f"The workdir {workdir} is in use by another training run ({_describe(owner)}; "
                f"lock {path}); wait for it to end, or pass another --workdir.") from None
        try:  # the owner may have removed the file between our open and flock: retry
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    stale = _owner(fd)
    if stale:
        logging.warning("Took over the lock %s of a run that is gone (%s).", path,
                        _describe(stale))
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "process_index": process_index}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return fd


def release(workdir: Path, fd: int, process_index: int = 0) -> None:
    """Removes the lock file (while still holding it) and closes it."""
    try:
        os.unlink(lock_path(workdir, process_index))
    except FileNotFoundError:
        pass
    os.close(fd)


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """Holds this process's workdir lock for the body; all processes agree before it runs.

    Raises WorkdirLockedError (on every process of a multi-host run) if any process found
    its lock held by another run.
    """
    index = jax.process_index()
    fd, error = None, None
    try:
        fd = acquire(workdir, index)
    except WorkdirLockedError as e:
        error = e
    if jax.process_count() > 1:
        ok = multihost_utils.process_allgather(np.int32(fd is not None))
        refused = [i for i, v in enumerate(np.asarray(ok).ravel()) if not v]
        if refused and error is None:
            release(workdir, fd, index)
            error = WorkdirLockedError(
                f"The workdir {workdir} is in use by another training run (processes "
                f"{refused} found their lock held); wait for it to end, or pass another "
                "--workdir.")
    if error is not None:
        raise error
    try:
        yield
    finally:
        release(workdir, fd, index)
