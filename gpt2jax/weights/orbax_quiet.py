"""Orbax's echoes of a failure we already report: one log line each, not console tracebacks.

When one array of an Orbax save or restore fails (a full disk, a damaged file), Orbax raises
the error to us, and `training/checkpoint.py` or `weights/loader.py` turn it into one line
that names the problem and the fix. Orbax and TensorStore also echo it, on the console:
1. its helper threads log it again, each with the whole traceback (`logging.error(...,
   exc_info=True)`): 135 tracebacks for one full disk with `async_save=False`;
2. TensorStore reads and writes still in flight finish later and call back into the asyncio
   loop that Orbax closed at the failure: `RuntimeError: Event loop is closed`, printed by
   `sys.unraisablehook` from TensorStore's threads, before or after our error line;
3. coroutines and futures abandoned at the failure are collected later ("Exception ignored
   in: <coroutine ...>"; asyncio's "Future exception was never retrieved", one per array).
None of them says more than the error we raise. `install()` (once per process) keeps (1) as
its one log line with the exception's first line instead of the traceback, and sends (2) and
(3) to the log at verbosity 1; any other unraisable exception goes to the previous hook as it
is. With `-v=1` (absl verbosity >= 1) everything is logged in full, for debugging Orbax.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import types

from absl import logging as absl_logging

_ECHO_SOURCES = ("/orbax/", "/tensorstore/")
_installed = threading.Lock()
_state = {"previous_hook": None}


def _first_line(error: BaseException | None) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _debugging() -> bool:
    """absl verbosity >= 1 (`-v=1`): its logger lets DEBUG records through."""
    try:
        return logging.getLogger("absl").isEnabledFor(logging.DEBUG)
    except Exception:  # noqa: BLE001 - at interpreter exit logging may be half torn down
        return False


# TensorStore's error messages (what Orbax's array reads and writes fail with) say so
_TENSORSTORE_TEXT = re.compile(r"tensorstore|OCDBT|os_error_code|orbax", re.IGNORECASE)


def _is_orbax_failure(error: BaseException | None, tb) -> bool:
    """An exception raised in Orbax or TensorStore code, or a TensorStore error (raised in
    C++, its traceback shows no Python frame of theirs; its message names TensorStore)."""
    return _through_echo_source(tb) or bool(_TENSORSTORE_TEXT.search(str(error)[:2000]))


def _through_echo_source(tb) -> bool:
    """Whether a traceback passes through Orbax or TensorStore code."""
    while tb is not None:
        if any(s in tb.tb_frame.f_code.co_filename for s in _ECHO_SOURCES):
            return True
        tb = tb.tb_next
    return False


class _OneLineOrbaxErrors(logging.Filter):
    """(1): an Orbax record with a traceback keeps its message and the exception's first
    line; the traceback is dropped. asyncio's "exception was never retrieved" about an Orbax
    task (a multi-line echo of the same failure) is dropped. Unless debugging."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or _debugging():
            return True
        error = record.exc_info[1]
        if record.name == "asyncio":  # "Future/Task exception was never retrieved"
            return not _is_orbax_failure(error, record.exc_info[2])
        if any(s in record.pathname for s in _ECHO_SOURCES):
            record.msg, record.args = "%s [%s: %s]", (
                record.getMessage(), type(error).__name__, _first_line(error))
            record.exc_info, record.exc_text = None, None
        return True


def _is_echo(unraisable) -> bool:
    """(2) or (3): a closed-loop callback, or an exception raised in Orbax/TensorStore code."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    if isinstance(code, types.CodeType) and any(s in code.co_filename for s in _ECHO_SOURCES):
        return True
    return _is_orbax_failure(error, unraisable.exc_traceback)


def _unraisable_hook(unraisable) -> None:
    if _debugging() or not _is_echo(unraisable):
        _state["previous_hook"](unraisable)
        return
    try:  # may run at interpreter exit, when logging itself can fail
        absl_logging.vlog(1, "Orbax background echo of an earlier failure: %s: %s",
                          type(unraisable.exc_value).__name__,
                          _first_line(unraisable.exc_value))
    except Exception:  # noqa: BLE001 - nothing left to report it to
        pass


def install() -> None:
    """Installs the log filter and the unraisable hook, once per process (idempotent)."""
    with _installed:
        if _state["previous_hook"] is not None:
            return
        _state["previous_hook"] = sys.unraisablehook
        sys.unraisablehook = _unraisable_hook
        for name in ("absl", "asyncio"):
            logging.getLogger(name).addFilter(_OneLineOrbaxErrors())
