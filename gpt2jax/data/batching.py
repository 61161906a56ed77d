"""Packing a token stream into `[batch, block_size + 1]` windows: resumable, per-process.

Every batch is a pure function of (seed, epoch, index), so the iterator state is three
integers and a resumed run continues with exactly the next batch. Each process computes
the same global batch of window starts and reads only its own rows
`[process_index * local_b, (process_index + 1) * local_b)`, so processes never overlap and
the global batch does not depend on how many processes there are.

Modes (`config.data.mode`):
  random  nanoGPT pretraining: `global_batch` window starts drawn uniformly from
          `[0, N - T - 1]` with a generator seeded by (seed, step). Never ends.
  epochs  HF `TextDataset`: the stream is cut into `ceil((N - 1) / T)` consecutive windows
          (window i predicts tokens `i*T+1 .. i*T+T`), shuffled per epoch when `shuffle`;
          the last window and the last batch are padded with weight-0 positions, so every
          token is a target exactly once per epoch. Ends after `num_epochs` (0 = never).
"""

from __future__ import annotations

import math
import queue
import threading
import weakref

import numpy as np

from gpt2jax.data.shards import TokenStream
from gpt2jax.errors import ConfigError, DataError

MODES = ("random", "epochs")
Batch = dict[str, np.ndarray]


def check_mode(mode: str) -> str:
    """Validates `config.data.mode` once."""
    if mode not in MODES:
        raise ConfigError(f"config.data.mode={mode!r} is unknown; use one of {MODES}.")
    return mode


def check_length(stream: TokenStream, block_size: int, what: str) -> None:
    """A stream must hold at least one window of `block_size + 1` tokens."""
    if len(stream) < block_size + 1:
        raise DataError(
            f"{what} from {stream.origin} has {len(stream)} tokens, fewer than one block "
            f"(block_size + 1 = {block_size + 1}); use a smaller block_size or more text."
        )


def windows_batch(stream: TokenStream, starts: np.ndarray, block_size: int,
                  pad_id: int) -> Batch:
    """Batch of windows beginning at `starts` `[b]`; positions past the stream get weight 0.

    Returns:
      inputs int32 `[b, T]`, targets int32 `[b, T]` (inputs shifted by one),
      weights float32 `[b, T]` (1 where the target is a real token).
    """
    idx = starts[:, None].astype(np.int64) + np.arange(block_size + 1)
    if len(starts) and starts.min() >= 0 and starts.max() + block_size < len(stream):
        tokens = stream.gather(idx)  # fast path: every window lies inside the stream
        return {"inputs": np.ascontiguousarray(tokens[:, :-1]),
                "targets": np.ascontiguousarray(tokens[:, 1:]),
                "weights": np.ones((len(starts), block_size), np.float32)}
    valid = (idx < len(stream)) & (starts[:, None] >= 0)
    tokens = stream.gather(np.where(valid, idx, 0))
    tokens[~valid] = pad_id
    return {"inputs": np.ascontiguousarray(tokens[:, :-1]),
            "targets": np.ascontiguousarray(tokens[:, 1:]),
            "weights": valid[:, 1:].astype(np.float32)}


class BatchIterator:
    """Iterator over this process's share of the global batches; see the module docstring.

    `next(it)` -> {"inputs", "targets": int32 [local_b, T], "weights": float32 [local_b, T]}.
    `state()` / `restore(state)` save and resume the position (a small JSON dict).
    """

    def __init__(self, stream: TokenStream, block_size: int, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, mode: str = "random",
                 num_epochs: int = 0, shuffle: bool = True, prefetch: int = 2,
                 pad_id: int = 0):
        if global_batch_size % process_count:
            raise ConfigError(f"global_batch_size={global_batch_size} does not divide by "
                              f"process_count={process_count}; make it a multiple.")
        if not 0 <= process_index < process_count:
            raise ConfigError(f"process_index={process_index} not in [0, {process_count}).")
        self.stream, self.block_size, self.seed = stream, block_size, int(seed)
        self.global_batch_size, self.mode = global_batch_size, check_mode(mode)
        self.local_batch_size = global_batch_size // process_count
        self.row0 = process_index * self.local_batch_size
        self.num_epochs, self.shuffle, self.pad_id = num_epochs, shuffle, pad_id
        self.prefetch = prefetch
        self.num_windows = math.ceil((len(stream) - 1) / block_size)
        self.steps_per_epoch = math.ceil(self.num_windows / global_batch_size)
        self._position = (0, 0)  # (epoch, index of the next batch within the epoch)
        self._thread = None

    # -- pure batch computation -------------------------------------------------------
    def _starts(self, epoch: int, index: int) -> np.ndarray:
        rows = slice(self.row0, self.row0 + self.local_batch_size)
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, index])
            high = len(self.stream) - self.block_size
            return rng.integers(0, high, size=self.global_batch_size)[rows]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
        else:
            order = np.arange(self.num_windows)
        window = np.arange(index * self.global_batch_size,
                           (index + 1) * self.global_batch_size)[rows]
        padded = np.full(window.shape, -1, np.int64)  # -1 = padding row (weight 0)
        real = window < self.num_windows
        padded[real] = order[window[real]] * self.block_size
        return padded

    def _next_position(self, epoch: int, index: int) -> tuple[int, int]:
        if self.mode == "epochs" and index + 1 >= self.steps_per_epoch:
            return epoch + 1, 0
        return epoch, index + 1

    def _finished(self, epoch: int) -> bool:
        return self.mode == "epochs" and 0 < self.num_epochs <= epoch

    def batch_at(self, epoch: int, index: int) -> Batch:
        """The local batch at (epoch, index), independent of the iterator's position."""
        return windows_batch(self.stream, self._starts(epoch, index), self.block_size,
                             self.pad_id)

    # -- iteration with a background prefetch thread ---------------------------------
    @staticmethod
    def _produce(ref: weakref.ref, position, out: queue.Queue, stop: threading.Event) -> None:
        # Holds only a weak reference, so an abandoned iterator is collected and its thread
        # ends instead of polling forever.
        try:
            while not stop.is_set():
                it = ref()
                if it is None:
                    return
                if it._finished(position[0]):
                    out.put(("end", None, position))
                    return
                batch = it.batch_at(*position)
                position = it._next_position(*position)
                del it
                while not stop.is_set() and ref() is not None:
                    try:
                        out.put(("batch", batch, position), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except Exception as e:  # surfaced in the consumer thread
            out.put(("error", e, position))

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, daemon=True,
            args=(weakref.ref(self), self._position, self._queue, self._stop))
        self._thread.start()

    def __del__(self):
        if getattr(self, "_thread", None) is not None:
            self._stop.set()

    def close(self) -> None:
        """Stops the prefetch thread (the position is kept)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> Batch:
        if self.prefetch <= 0:
            if self._finished(self._position[0]):
                raise StopIteration
            batch = self.batch_at(*self._position)
            self._position = self._next_position(*self._position)
            return batch
        if self._thread is None:
            self._start()
        kind, value, position = self._queue.get()
        if kind == "batch":
            self._position = position
            return value
        self.close()
        if kind == "end":
            raise StopIteration
        raise value

    # -- checkpointable state ---------------------------------------------------------
    def state(self) -> dict:
        """JSON-serialisable position: the next `next()` returns batch (epoch, index)."""
        epoch, index = self._position
        return {"mode": self.mode, "seed": self.seed, "epoch": int(epoch), "index": int(index),
                "block_size": self.block_size, "global_batch_size": self.global_batch_size,
                "num_tokens": len(self.stream)}

    def restore(self, state: dict) -> None:
        """Continues from `state()` of an iterator over the same data and settings."""
        expect = self.state()
        for key in ("mode", "seed", "block_size", "global_batch_size", "num_tokens"):
            if state.get(key) != expect[key]:
                raise DataError(
                    f"Cannot resume the data iterator: saved {key}={state[key]!r} but this run "
                    f"has {expect[key]!r}; resume with the same data, seed and batch settings."
                )
        self.close()
        self._position = (int(state["epoch"]), int(state["index"]))


def val_starts(num_tokens: int, block_size: int, count: int) -> np.ndarray:
    """`count` window starts evenly spaced over `[0, num_tokens - block_size - 1]`.

    They do not overlap while the stream holds `count` windows; a fixed set, so the
    validation loss of two runs or two steps is measured on the same tokens.
    """
    return np.linspace(0, num_tokens - block_size - 1, count).round().astype(np.int64)
