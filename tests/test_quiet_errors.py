"""After a clean one-line error, nothing else on the console: Orbax and TensorStore's echoes of
a failure (weights/orbax_quiet.py) go to the log as one line or, below -v=1, nowhere.

Each check runs in a fresh `python` (the hook is process-wide, and pytest swaps
`sys.unraisablehook` per test) that sets the scene as the failure leaves it:
- a TensorStore operation that was in flight when Orbax closed its asyncio loop finishes
  afterwards: TensorStore calls back into the closed loop and prints `RuntimeError: Event loop
  is closed` through `sys.unraisablehook` (the 2-in-3 traceback after "cannot be read");
- a failed TensorStore write that nobody awaits any more is collected: asyncio logs "Future
  exception was never retrieved" (one per array of a failed checkpoint, seen after the
  error line of a full disk in some runs);
- Orbax logs the failure from its threads with the whole traceback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers import REPO, cli_env

LATE_CALLBACK = textwrap.dedent("""
    import asyncio, gc, sys, time
    import tensorstore as ts
    from absl import logging
    from gpt2jax.training.checkpoint import Checkpointer

    Checkpointer(sys.argv[1]).close()         # what a run creates first
    promise, future = ts.Promise.new()
    loop = asyncio.new_event_loop()
    # what awaiting a TensorStore future in Orbax's loop registers: wake the loop when done
    future.add_done_callback(lambda f: loop.call_soon_threadsafe(lambda: None))
    loop.close()                                  # the restore failed: Orbax closed its loop
    promise.set_result(1)                         # the read finishes later
    time.sleep(0.2)
    lost = asyncio.new_event_loop().create_future()  # a failed write nobody awaited any more
    lost.set_exception(ValueError('RESOURCE_EXHAUSTED: Error writing "wte/0" in OCDBT '
                                  "database [os_error_code='28']"))
    del lost
    gc.collect()                                  # asyncio: "exception was never retrieved"
    try:
        raise ValueError("RESOURCE_EXHAUSTED: Error writing ... [os_error_code='28']")
    except ValueError:                            # as Orbax logs it from a thread, by its path
        record = logging.get_absl_logger().makeRecord(
            "absl", logging.converter.STANDARD_ERROR, sys.modules["orbax.checkpoint"].__file__,
            1, "Save failed: %s", ("step 8",), sys.exc_info())
        logging.get_absl_logger().handle(record)
    print("error: the one line", file=sys.stderr, flush=True)
""")


def test_orbax_echoes_after_an_error_print_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LATE_CALLBACK, str(tmp_path)], cwd=REPO,
                          env=cli_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    for echo in ("Traceback", "Event loop is closed", "never retrieved", "future: <"):
        assert echo not in proc.stderr, (echo, lines)
    assert lines[-1] == "error: the one line", lines
    logged = [ln for ln in lines if "Save failed: step 8" in ln]
    assert len(logged) == 1 and "[ValueError: RESOURCE_EXHAUSTED" in logged[0], lines
