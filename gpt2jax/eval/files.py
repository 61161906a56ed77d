"""Where an evaluation task finds its data files (one-line errors naming the task and file)."""

from __future__ import annotations

import os
from pathlib import Path

from gpt2jax.data import resolve
from gpt2jax.errors import DataError


def data_file(data_dir: str | os.PathLike, relative: str, task: str) -> Path:
    """The path of a task's data file, found by `gpt2jax.data.resolve.data_file`: in
    `data_dir` when one is given, else $GPT2JAX_DATA_DIR, the cache or a checksummed download.
    Errors are one line naming the task and the file."""
    try:
        return resolve.data_file(relative, data_dir)
    except DataError as e:
        raise type(e)(f"Task {task!r} needs the file {relative!r}: {e} Or override its "
                      "path with --config.eval.files.<name>=PATH.") from None
