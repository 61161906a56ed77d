"""Explicit state of the compiled decode loops: trace counts and per-call stream sinks.

No module-level slots: a `Decoders` object owns its jitted functions, how often each was traced,
and the streamers of the calls in flight. Two threads may call `generate` at once: each call
registers its streamer under its own id, and the compiled loop passes that id (a traced value,
so no recompile) to the host callback, which hands the tokens to that call's streamer only.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np

Streamer = Callable[[int, np.ndarray], None]


class TraceCounter:
    """How many times each wrapped function was traced, thread-safe.

    `jax.jit` compiles once per trace (a new shape, dtype, sharding or static argument), so the
    count is the number of compiles; jax has no public compile-count of a jitted function.
    """

    def __init__(self):
        self._counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def counted(self, name: str, fn: Callable) -> Callable:
        """`fn`, counting its traces under `name` (wrap it before `jax.jit`)."""

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            with self._lock:
                self._counts[name] += 1
            return fn(*args, **kwargs)

        return traced

    def count(self, name: str) -> int:
        """Traces (== compiles) of `name` so far."""
        with self._lock:
            return self._counts[name]

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class StreamSinks:
    """The streamers of the calls in flight, by call id (0 = no streamer)."""

    def __init__(self):
        self._sinks: dict[int, Streamer] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def open(self, streamer: Streamer | None) -> Iterator[int]:
        """`with sinks.open(streamer) as call_id:` registers `streamer` while the call runs."""
        if streamer is None:
            yield 0
            return
        with self._lock:
            call_id = next(self._ids)
            self._sinks[call_id] = streamer
        try:
            yield call_id
        finally:
            with self._lock:
                del self._sinks[call_id]

    def deliver(self, call_id, step, tokens) -> None:
        """Host callback: tokens [rows] of decode `step` go to the streamer of `call_id`."""
        with self._lock:
            sink = self._sinks.get(int(call_id))
        if sink is not None:  # None: the call has returned (e.g. interrupted) or had none
            sink(int(step), np.asarray(tokens))


class Decoders:
    """The jitted greedy/sampling and beam-search loops, their trace counts and stream sinks.

    Args:
      greedy_impl: fn(cfg, plan, ..., rt, *, stream) with `stream` the host callback
        `StreamSinks.deliver`; beam_impl: fn(cfg, plan, ...). Both static in (cfg, plan).
    """

    def __init__(self, greedy_impl: Callable, beam_impl: Callable):
        self.traces = TraceCounter()
        self.streams = StreamSinks()
        self.greedy = jax.jit(functools.partial(self.traces.counted("greedy", greedy_impl),
                                                stream=self.streams.deliver),
                              static_argnums=(0, 1))
        self.beam = jax.jit(self.traces.counted("beam", beam_impl), static_argnums=(0, 1))

    def clear_caches(self) -> None:
        """Drops the compiled executables (the next call of each shape traces again)."""
        self.greedy.clear_cache()
        self.beam.clear_cache()
