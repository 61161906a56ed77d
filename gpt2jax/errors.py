"""Typed user errors. Every message names the problem and the fix.

`run.py` prints a `GPT2JaxError` as one line and exits non-zero (no stack trace); the API
raises them as they are. Subclasses also derive from the builtin they refine (ValueError,
FileNotFoundError, ...) so that generic handlers keep working.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path


class GPT2JaxError(Exception):
    """Base class of every error caused by user input (config, files, arguments)."""


class ConfigError(GPT2JaxError, ValueError):
    """A configuration or argument that cannot work."""


class DataError(GPT2JaxError, ValueError):
    """A data file or dataset that is missing, empty, too short or undecodable."""


class WeightsError(GPT2JaxError, ValueError):
    """A checkpoint / weights file that is missing, truncated or does not fit the model."""


class StorageError(GPT2JaxError, OSError):
    """A file or folder that cannot be written or read as one (disk full, read-only, a folder
    where a file belongs); what was saved before is left as it was."""


# errno values that mean "the disk is full" (ENOSPC; EDQUOT: a quota counts as full too)
_FULL = (errno.ENOSPC, errno.EDQUOT)
# how TensorStore (Orbax's array writer) and safetensors (Rust) report an OS error inside
# their own messages: `[os_error_code='28']`, `I/O error: ... (os error 28)`
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)|\(os error (\d+)\)")


def os_errno(error: BaseException) -> int | None:
    """The errno behind `error`: an OSError's own, one in its cause/context chain, or the code
    TensorStore writes into its message (`[os_error_code='28']`); None if there is none."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno:
            return error.errno
        found = _TENSORSTORE_ERRNO.search(str(error))
        if found:
            return int(found.group(1) or found.group(2))
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def is_disk_full(error: BaseException) -> bool:
    return os_errno(error) in _FULL


def describe_write_error(error: BaseException, path: str | os.PathLike) -> str:
    """What went wrong writing below `path`, in words: the OS reason, and for a full or
    read-only disk which one, e.g. "No space left on device (the disk mounted at /data has
    0.1 MB free of 24.0 MB)"; for an error without an errno, its type and first line."""
    code = os_errno(error)
    if code is None:
        first = (str(error).strip().splitlines() or [""])[0][:200]
        return f"{type(error).__name__}: {first}"
    if code not in _FULL + (errno.EROFS,):  # not about the disk: the reason alone
        return os.strerror(code)
    mount = Path(path).expanduser().absolute()
    while not mount.exists() and mount != mount.parent:
        mount = mount.parent
    where = mount
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    space = ""
    if code in _FULL:
        try:
            usage = shutil.disk_usage(where)
            space = f" has {usage.free / 1e6:.1f} MB free of {usage.total / 1e6:.1f} MB"
        except OSError:
            pass
    return f"{os.strerror(code)} (the disk mounted at {mount}{space})"


class OutOfMemoryError(GPT2JaxError, MemoryError):
    """A device (or the host) ran out of memory for the computation a config asks for."""
