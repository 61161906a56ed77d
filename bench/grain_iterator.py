"""Grain's MapDataset against our batch iterator: throughput and exact resume, side by side.

    GPT2JAX_DATA_DIR=../shared/data python bench/grain_iterator.py [--batches 300]

The same job both ways: Tiny Shakespeare x20 as GPT-2 tokens in one array, every window of
`block + 1` tokens once per epoch in a seeded shuffled order, batches [batch, block + 1]
gathered from the array. Ours is `gpt2jax.data.batching.BatchIterator` (epochs mode, its
prefetch thread); Grain's is `MapDataset.range(windows).shuffle(seed).map(gather)
.batch(batch).to_iter_dataset()` (its read thread pool and prefetch buffer). Then both are
checkpointed after a few batches and restored in a fresh iterator: the next batch must equal
the uninterrupted one. Needs `pip install -e ".[bench]"` (grain).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import grain
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hardware  # noqa: E402
from gpt2jax.data.batching import BatchIterator  # noqa: E402
from gpt2jax.data.shards import TokenStream  # noqa: E402
from gpt2jax.data.tokenizers import Gpt2Tokenizer  # noqa: E402


def grain_batches(tokens: np.ndarray, block: int, batch: int, seed: int, batched: bool):
    """An iterator of [batch, block + 1] windows: every window once per epoch, shuffled.
    `batched`: gather a whole batch of window indices in one numpy call (map after batch)
    instead of one window per element (the usual map-then-batch)."""
    windows = (len(tokens) - 1) // block
    offsets = np.arange(block + 1)
    ds = grain.MapDataset.range(windows).shuffle(seed=seed)
    if batched:
        ds = ds.batch(batch, drop_remainder=True).map(
            lambda idx: tokens[np.asarray(idx)[:, None] * block + offsets])
    else:
        ds = ds.map(lambda i: tokens[i * block: i * block + block + 1]).batch(
            batch, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))


def rate(it, batches: int, tokens_per_batch: int) -> float:
    next(it)  # warm up: threads started, pages touched
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return tokens_per_batch * batches / (time.perf_counter() - start)


def _tokens(batch) -> np.ndarray:
    """Our batch dict ({"inputs", "targets", ...}) or Grain's array -> [batch, block + 1]."""
    if isinstance(batch, dict):
        return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    return np.asarray(batch)


def resumes_exactly(make, state_of, restore) -> bool:
    """k batches, save, next batch (reference); a fresh iterator restored: the same batch."""
    it = make()
    for _ in range(5):
        next(it)
    state = state_of(it)
    reference = _tokens(next(it))
    fresh = make()
    restore(fresh, state)
    return bool(np.array_equal(_tokens(next(fresh)), reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=90)  # within one epoch (103)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = Path(os.environ.get("GPT2JAX_DATA_DIR", "../shared/data"))
    text = (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8") * 20
    tokens = np.asarray(Gpt2Tokenizer().encoding.encode_ordinary(text), np.uint16)
    stream = TokenStream([tokens], origin="tiny shakespeare x20")
    b, t = args.batch, args.block

    def ours():
        return BatchIterator(stream, t, b, seed=0, mode="epochs", prefetch=2)

    def theirs(batched: bool = True):
        return iter(grain_batches(tokens, t, b, seed=0, batched=batched))

    print(hardware.describe(), flush=True)
    print(f"# {len(tokens):,} tokens, batches [{b}, {t}]")
    for r in range(args.rounds):  # alternate, so load drifts over both alike
        a = rate(ours(), args.batches, b * t)
        g = rate(theirs(True), args.batches, b * t)
        e = rate(theirs(False), args.batches, b * t)
        print(f"round {r}: ours {a / 1e6:.1f} M tokens/s; grain, batched gather "
              f"{g / 1e6:.1f} ({a / g:.2f}x), per-window map {e / 1e6:.1f} ({a / e:.2f}x)")
    print("exact resume: ours",
          resumes_exactly(ours, lambda it: it.state(), lambda it, s: it.restore(s)),
          "grain", resumes_exactly(theirs, lambda it: it.get_state(),
                                   lambda it, s: it.set_state(s)))


if __name__ == "__main__":
    main()
