"""The console of `run.py` when nobody reads it any more.

`python run.py --mode=train ... | head` closes the pipe after a few lines; Python then raises
`BrokenPipeError` at the next print, which would end a training run between checkpoints.
`PipeSafeStdout` wraps `sys.stdout`: at the first broken pipe it points file descriptor 1 at
/dev/null (so Python's own flush at exit cannot fail either), warns once on stderr, and the
run goes on; metrics.jsonl, checkpoints and exports are written as usual.
"""

from __future__ import annotations

import os
from typing import TextIO

from absl import logging


class PipeSafeStdout:
    """A text stream that forwards to `stream` until its reader goes away, then discards."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._reader_gone = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard()
            return self._stream.write(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()
            self._stream.flush()

    def _discard(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)
        if not self._reader_gone:
            self._reader_gone = True
            logging.warning("stdout's reader has gone (e.g. `| head`): the run goes on and its "
                            "console lines are discarded; metrics.jsonl and checkpoints are "
                            "written as usual.")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
