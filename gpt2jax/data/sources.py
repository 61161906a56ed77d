"""Text sources: UTF-8 files (path or glob) and the train/val split of their documents.

A document is one file; inside a file, the literal string `<|endoftext|>` also ends a
document (the layout of GPT-2 fine-tuning `train.txt` files). Blank lines do not: they are
paragraph breaks. Paths may contain `$VARS` (expanded at run time, e.g. `$GPT2JAX_DATA_DIR`)
and globs (`**` recursive); matches are read in sorted order. `dataset:NAME` names a known data
file (e.g. `dataset:tinyshakespeare/input.txt`), found by `resolve.data_file`: the data dir, the
cache, the package or a checksummed download.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from gpt2jax.data import resolve
from gpt2jax.errors import ConfigError, DataError

EOT_TEXT = "<|endoftext|>"
ENCODING_ERRORS = ("strict", "replace")
_UNSET_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
# `$GPT2JAX_DATA_DIR/NAME` written before `dataset:NAME` existed: same file, same search.
_DATA_DIR_PATH = re.compile(r"^\$\{?" + resolve.DATA_ENV + r"\}?/(.+)$")


def expand_path(pattern: str, field: str) -> str:
    """`pattern` with `~` and `$VARS` expanded; an unset variable is a ConfigError."""
    expanded = os.path.expanduser(os.path.expandvars(pattern))
    missing = _UNSET_VAR.findall(expanded)
    if missing:
        raise ConfigError(
            f"config.data.{field}={pattern!r} uses ${missing[0]}, which is not set; export "
            f"{missing[0]}=/path (e.g. GPT2JAX_DATA_DIR=../shared/data) or give a full path."
        )
    return expanded


def resolve_files(pattern: str, field: str) -> list[str]:
    """The files matched by a path or glob (sorted); errors name the pattern and the fix."""
    if not pattern:
        raise ConfigError(f"config.data.{field} is empty; set it to a text file path or glob.")
    old_style = _DATA_DIR_PATH.match(pattern)
    if old_style and not glob.has_magic(pattern):
        pattern = resolve.PREFIX + old_style.group(1)
    if pattern.startswith(resolve.PREFIX):
        return [str(resolve.data_file(pattern))]
    path = expand_path(pattern, field)
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"No file matches config.data.{field}={path!r}; check the glob "
                            "and that the files exist.")
        return files
    if os.path.isdir(path):
        raise DataError(f"Data file {path!r} (config.data.{field}) is a folder; give a text "
                        f"file, or a glob of its files like {os.path.join(path, '*.txt')!r}.")
    if os.path.exists(path) and not os.path.isfile(path):
        raise DataError(f"Data file {path!r} (config.data.{field}) is not a regular file (a "
                        "pipe or a device: it can be read only once); save it to a file first.")
    if not os.path.isfile(path):
        raise DataError(f"Data file {path!r} (config.data.{field}) does not exist; give an "
                        "existing path or glob.")
    return [path]


def read_text(path: str, errors: str = "strict") -> str:
    """The UTF-8 text of `path`; empty or undecodable files raise DataError naming the file."""
    if errors not in ENCODING_ERRORS:
        raise ConfigError(f"config.data.encoding_errors={errors!r}; use one of "
                          f"{ENCODING_ERRORS}.")
    data = Path(path).read_bytes()
    if not data.strip():
        raise DataError(f"Data file {path!r} is empty; give a file that contains text.")
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"Data file {path!r} is not valid UTF-8 (byte {e.start}: {data[e.start:e.end]!r}); "
            "convert it to UTF-8, or set config.data.encoding_errors='replace' to replace "
            "undecodable bytes with U+FFFD."
        ) from None


def split_documents(text: str) -> list[str]:
    """Documents of one file: the pieces between literal `<|endoftext|>` markers."""
    return [d for d in text.split(EOT_TEXT) if d.strip()]


def read_documents(pattern: str, field: str, errors: str = "strict") -> tuple[list[str], list[str]]:
    """(documents, files) of a path or glob; each file gives one or more documents."""
    files = resolve_files(pattern, field)
    docs = []
    for f in files:
        docs.extend(split_documents(read_text(f, errors)))
    return docs, files


def holdout_split(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Splits documents at character `int(n * (1 - fraction))` of their concatenation.

    Like nanoGPT's `data[:int(n*0.9)]`: the last `fraction` of the characters is validation;
    the document that straddles the cut is cut in two.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"config.data.val_fraction={fraction} must lie in (0, 1) when no "
                          "val_file is given; set it (e.g. 0.1) or give config.data.val_file.")
    total = sum(len(d) for d in docs)
    cut = int(total * (1.0 - fraction))
    train, val, seen = [], [], 0
    for d in docs:
        if seen + len(d) <= cut:
            train.append(d)
        elif seen >= cut:
            val.append(d)
        else:
            train.append(d[: cut - seen])
            val.append(d[cut - seen:])
        seen += len(d)
    return [d for d in train if d], [d for d in val if d]


def parallel_chunks(text: str, target_chars: int = 1 << 16) -> list[str]:
    """Cuts `text` into pieces that GPT-2 BPE tokenizes exactly as the whole.

    A cut goes just before a newline that follows a non-whitespace character: no GPT-2
    pre-tokenizer match spans such a point (only whitespace runs contain newlines and they
    start at it), so concatenating the pieces' tokens equals tokenizing `text` at once.
    """
    pieces, start, n = [], 0, len(text)
    while n - start > target_chars:
        pos = text.find("\n", start + target_chars)
        while pos != -1 and text[pos - 1].isspace():
            pos = text.find("\n", pos + 1)
        if pos == -1:
            break
        pieces.append(text[start:pos])
        start = pos
    pieces.append(text[start:])
    return pieces
