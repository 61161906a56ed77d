"""Documents of both splits as one ordered stream, read in batches from any position.

`--mode=prepare` tokenizes a `DocSource`: documents in a fixed order, each tagged train (0)
or val (1). A position is a count of documents from the start, so a prepare that was killed
resumes by reading from the position its last finished shard recorded. Sources:

- `text` / `tfds` (`text_source`): the train documents, then the val documents, exactly as
  `corpus.split_texts` gives them (nanoGPT's character cut for a held-out fraction);
- `hf` (gpt2jax.data.hf_source): one split, each document sent to val with probability
  `val_fraction` by a seeded hash of its index (`holdout_mask`: whole documents, the same
  for any batch size, streaming or not), or a named train split followed by a named val split.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from gpt2jax.data import corpus, sources

TRAIN, VAL = 0, 1
BATCH_CHARS = 1 << 22      # characters per batch read (4 MB: bounded memory, fine progress)
BATCH_DOCS = 4096          # documents per batch at most

Batch = tuple[np.ndarray, list[str]]  # (split of each document: int8 [n], the documents)


@dataclasses.dataclass
class DocSource:
    """Documents of both splits in one fixed order.

    read(start): batches of the documents from position `start` (documents from the
      beginning) to the end; the same documents, tags and order on every call.
    origin: per split, where its documents come from (for meta.json and messages).
    identity: what the documents depend on (names, files and sizes, split rule): a resumed
      prepare must see the same.
    num_docs: documents in all when known (the progress bar's ETA), else None.
    """

    read: Callable[[int], Iterator[Batch]]
    origin: dict[str, str]
    identity: dict
    num_docs: int | None = None


def batches(tagged: Iterable[tuple[int, str]]) -> Iterator[Batch]:
    """Groups (split, document) pairs into batches of <= BATCH_CHARS chars / BATCH_DOCS docs."""
    splits: list[int] = []
    docs: list[str] = []
    size = 0
    for split, doc in tagged:
        splits.append(split)
        docs.append(doc)
        size += len(doc)
        if size >= BATCH_CHARS or len(docs) >= BATCH_DOCS:
            yield np.asarray(splits, np.int8), docs
            splits, docs, size = [], [], 0
    if docs:
        yield np.asarray(splits, np.int8), docs


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014): a fixed, well-mixed uint64 hash."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def holdout_mask(start: int, count: int, fraction: float, seed: int) -> np.ndarray:
    """bool [count]: whether documents start..start+count-1 go to validation.

    Document i is held out when hash(seed, i) / 2**64 < fraction: whole documents, about
    `fraction` of them, independent of batching, and the same on every machine.
    """
    idx = np.arange(start, start + count, dtype=np.uint64)
    key = _splitmix64(np.asarray([seed], np.uint64))[0]
    u = (_splitmix64(idx ^ key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return u < fraction


def skip(tagged: Iterator, start: int) -> Iterator:
    """`tagged` without its first `start` items."""
    return itertools.islice(tagged, start, None)


def file_identity(files: list[str]) -> list[list]:
    """[[path, size in bytes], ...]: the cheap fingerprint a resumed prepare compares."""
    return [[os.path.abspath(f), os.path.getsize(f)] for f in files]


def text_source(cfg) -> DocSource:
    """The `text` or `tfds` source of `config.data` as a DocSource (train, then val)."""
    texts = corpus.split_texts(cfg)
    if cfg.source == "text":
        files = sources.resolve_files(cfg.train_file, "train_file")
        if cfg.val_file:
            files += sources.resolve_files(cfg.val_file, "val_file")
        identity = {"files": file_identity(files)}
    else:
        identity = {"tfds": [cfg.tfds_name, cfg.tfds_split_train, cfg.tfds_split_val,
                             cfg.tfds_feature, cfg.data_dir]}
    identity["val_fraction"] = cfg.val_fraction
    kept = [texts] if isinstance(texts.train, list) else []  # TFDS: fresh generators per read

    def read(start: int) -> Iterator[Batch]:
        t = kept[0] if kept else corpus.split_texts(cfg)
        tagged = itertools.chain(((TRAIN, d) for d in t.train), ((VAL, d) for d in t.val))
        return batches(skip(tagged, start))

    num_docs = len(texts.train) + len(texts.val) if kept else None
    return DocSource(read, texts.origin, identity, num_docs)
