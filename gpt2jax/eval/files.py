"""Where an evaluation finds its files, and the one-line errors when it cannot.

Two kinds of names, as in `config.data.train_file`:
- `dataset:NAME` (the defaults of configs/eval.py, e.g. `dataset:wikitext-2-raw/wiki.test.raw`)
  is a file of the data layout, found by `gpt2jax.data.resolve.data_file`: in `data_dir` when
  one is given, else $GPT2JAX_DATA_DIR, the cache or a checksummed download.
  `$GPT2JAX_DATA_DIR/NAME` means the same.
- any other path is the user's own file: `~` and `$VARS` expanded, a relative path read from
  the current working directory (never from the data folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gpt2jax.data import resolve
from gpt2jax.errors import ConfigError, DataError

# `$GPT2JAX_DATA_DIR/NAME` (or `${GPT2JAX_DATA_DIR}/NAME`): the data layout, like dataset:NAME.
_DATA_DIR_PATH = re.compile(r"^\$\{?" + resolve.DATA_ENV + r"\}?/(.+)$")


def user_path(name: str, key: str) -> Path:
    """A user's path (`~`, `$VARS` expanded; relative = from the working directory), made
    absolute so that messages show where it was looked for. `key` names the config field."""
    expanded = os.path.expanduser(os.path.expandvars(name))
    unset = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
    if unset:
        raise ConfigError(f"--config.{key}={name!r} uses ${unset.group(1)}, which is not set; "
                          f"export {unset.group(1)}=/path or give the path itself.")
    return Path(expanded).absolute()


def data_file(data_dir: str | os.PathLike, name: str, task: str, key: str = "eval.files") -> Path:
    """The path of a task's file `name` (see the module docstring: `dataset:NAME` from the
    data layout, anything else from the working directory). Errors are one line naming the
    task, the file and the fix."""
    old_style = _DATA_DIR_PATH.match(name)
    if old_style:
        name = resolve.PREFIX + old_style.group(1)
    if name.startswith(resolve.PREFIX):
        bare = name[len(resolve.PREFIX):]
        try:
            return resolve.data_file(bare, data_dir)
        except DataError as e:
            raise type(e)(f"Task {task!r} needs the file {bare!r}: {e} Or give your own file "
                          f"with --config.{key}=PATH.") from None
    path = user_path(name, key)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(f"Task {task!r} reads --config.{key}={name!r}, but {str(path)!r} {what}; "
                        "relative paths are read from the working directory. Give an existing "
                        f"file, or dataset:NAME for a file of the data folder.")
    return path


def read_text_file(path: Path, key: str) -> str:
    """The UTF-8 text of `path` exactly as on disk (no newline translation); an empty or
    undecodable file is a one-line DataError naming it and the fix."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"--config.{key}: {str(path)!r} is empty; give a file that contains "
                        "text.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"--config.{key}: {str(path)!r} is not UTF-8 text (byte {e.start}: "
                        f"{data[e.start:e.end]!r}); convert it first, e.g. "
                        "`iconv -f latin1 -t utf-8 FILE > FILE.utf8`.") from None
