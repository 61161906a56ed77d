"""The command line's own files: a text file given by a flag, read; a result file, checked
before the work and written whole after it.

A flag that names a file gets one-line errors naming the flag, the problem and the fix: a
folder where a file belongs, a file that is not UTF-8 text, a result path in a folder that
cannot be written. Result files are checked before any work is done (a generation or an
evaluation that ends in a lost result wastes the run), and written atomically.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from gpt2jax.errors import ConfigError, StorageError, describe_write_error

# Byte-order marks of encodings that are not UTF-8, and the name iconv knows them by.
_OTHER_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
               (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def read_text_file(path: str | os.PathLike, flag: str, what: str) -> str:
    """The UTF-8 text of the file a flag names (a leading UTF-8 byte-order mark dropped). A pipe
    (`--flag=<(cmd)`) is read like a file. `what` says what the file should hold.

    Raises ConfigError: missing, a folder, not readable, or not UTF-8 (naming the encoding
    when a byte-order mark shows it, and the command that converts it).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{flag}={path} does not exist; pass {what}.")
    if p.is_dir():
        raise ConfigError(f"{flag}={path} is a folder; pass {what}.")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{flag}={path} cannot be read ({e.strerror}); pass {what}.") from e
    for bom, encoding in _OTHER_BOMS:
        if data.startswith(bom):
            raise ConfigError(
                f"{flag}={path} is {encoding} text, not UTF-8; convert it: "
                f"iconv -f {encoding} -t UTF-8 {path} > {_utf8_name(p)}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{flag}={path} is not UTF-8 text (byte {e.start}: {data[e.start:e.end]!r}); "
            f"convert it, e.g. from Latin-1: iconv -f LATIN1 -t UTF-8 {path} > "
            f"{_utf8_name(p)}") from None


def _utf8_name(p: Path) -> Path:
    """Where the converted copy of `p` could go: beside it, `<stem>.utf8<suffix>`."""
    return p.with_name(f"{p.stem}.utf8{p.suffix}")


def _is_stream(p: Path) -> bool:
    """A pipe or a terminal (`/dev/stdout`, `>(cmd)`): written as it is, never replaced."""
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Before the work: the result file a flag names can be written. Missing folders are
    fine (`write_json` creates them, as `--workdir` is created; nothing is made before the
    result exists); a folder at the path, a file where a folder belongs, or a folder that
    cannot be written is a one-line error naming the flag and the fix. A pipe or terminal is
    accepted."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{flag}={path} is a folder; pass a file path, e.g. "
                          f"{flag}={p / 'results.json'}.")
    if _is_stream(p):
        return p
    if p.exists() and not p.is_file():
        raise ConfigError(f"{flag}={path} is not a regular file; pass a file path.")
    existing = p.parent  # the folders to create are made when the result is written
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag}={path} cannot be written: {existing} is a file, not a "
                          "folder (not a directory); pass a path in a writable folder.")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f".{p.name}.probe-"):
            pass  # root ignores permission bits: only a real write tells
    except OSError as e:
        raise StorageError(f"{flag}={path} cannot be written in {existing}: "
                           f"{describe_write_error(e, existing)}; pass a path in a "
                           "writable folder.") from e
    return p


def write_json(path: Path, obj: Any, flag: str, indent: int = 1) -> None:
    """Writes `obj` as JSON to `path` whole (a temporary file renamed over it; a pipe or
    terminal is written directly)."""
    if _is_stream(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=indent) + "\n")
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(obj, indent=indent) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"{flag}={path} could not be written "
                           f"({describe_write_error(e, path.parent)}); free space or pass "
                           "another path, and run again.") from e
