"""Data pipeline speed: prepare throughput (MB/s) and batch iterator throughput (tokens/s).

    GPT2JAX_DATA_DIR=../shared/data python bench/data.py [--repeat 20] [--batches 300]

1. Prepare: Tiny Shakespeare x`repeat` (one 22 MB document at x20) tokenized by
   single-threaded tiktoken (`encode_ordinary` of the whole text, the peer) against
   gpt2jax's parallel path (exact cut points + `encode_ordinary_batch` on all cores), and
   the whole `prepare_shards` (tokenize + write uint16 shards). Tokens are checked equal.
2. Iterator: batches `[batch, block]` of the shards through `BatchIterator` (random and
   epochs modes, with the prefetch thread as training uses it), in tokens/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import common  # noqa: E402
from bench import hardware  # noqa: E402
from gpt2jax.data import corpus, prepare, shards  # noqa: E402
from gpt2jax.data.batching import BatchIterator  # noqa: E402
from gpt2jax.data.tokenizers import Gpt2Tokenizer  # noqa: E402


CPU = {"s": 0.0}  # process CPU seconds of the last _timed call


def _timed(fn, *args):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    CPU["s"] = time.process_time() - cpu
    return out, time.perf_counter() - start


def _speed(mb: float, wall: float) -> str:
    return f"{mb / wall:.2f} MB/s ({mb / CPU['s']:.2f} MB per CPU-s)"


def bench_prepare(text_path: Path, repeat: int, tmp: Path) -> list[str]:
    """Rows comparing single-threaded tiktoken with the parallel prepare path."""
    text = text_path.read_text() * repeat
    big = tmp / "corpus.txt"
    big.write_text(text)
    mb = len(text.encode()) / 1e6
    tok = Gpt2Tokenizer()
    single, t_single = _timed(tok.encoding.encode_ordinary, text)
    s_single = _speed(mb, t_single)
    parallel, t_par = _timed(corpus.tokenize_all, tok, [text], 0)
    s_par = _speed(mb, t_par)
    assert np.array_equal(parallel, single), "parallel tokens differ from tiktoken"
    cfg = common.data_config(train_file=str(big), shards_dir=str(tmp / "shards"),
                             val_fraction=0.1)
    meta, t_prep = _timed(prepare.prepare_shards, cfg, None, False)
    s_prep = _speed(mb, t_prep)
    assert meta["num_tokens"] >= len(single) - 1
    return [
        f"| prepare input | Tiny Shakespeare x{repeat}: {mb:.1f} MB, {len(single):,} tokens, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} | |",
        f"| tiktoken encode_ordinary, 1 thread (peer) | {s_single} | 1.00x |",
        f"| gpt2jax tokenize (exact chunks, all cores) | {s_par} | {t_single / t_par:.2f}x |",
        f"| gpt2jax prepare_shards (tokenize + write) | {s_prep} | {t_single / t_prep:.2f}x |",
    ]


def bench_iterator(shards_dir: Path, batch: int, block: int, batches: int) -> list[str]:
    """Rows of tokens/s of the batch iterator reading memory-mapped shards."""
    rows = []
    _, train, _, _ = shards.open_shards(str(shards_dir))
    for mode, prefetch in (("random", 0), ("random", 2), ("epochs", 2)):
        it = BatchIterator(train, block, batch, seed=0, mode=mode, prefetch=prefetch)
        next(it)  # start the thread, touch the pages
        start = time.perf_counter()
        for _ in range(batches):
            b = next(it)
        dt = time.perf_counter() - start
        it.close()
        assert b["inputs"].shape == (batch, block)
        rows.append(f"| iterator {mode}, prefetch={prefetch}, [{batch}, {block}] | "
                    f"{batch * block * batches / dt / 1e6:.1f} M tokens/s | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--block", type=int, default=1024)
    args = parser.parse_args()
    print(hardware.describe(), flush=True)
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    data_dir = Path(os.environ.setdefault("GPT2JAX_DATA_DIR", str(default)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = ["| what | speed | vs peer |", "|---|---|---|"]
        rows += bench_prepare(data_dir / "tinyshakespeare" / "input.txt", args.repeat, tmp)
        rows += bench_iterator(tmp / "shards", args.batch, args.block, args.batches)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
