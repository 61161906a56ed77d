"""The tokenizing pipeline of a prepare: read ahead, tokenize on all cores, keep the order.

A reader thread pulls document batches from the source (pyarrow and file reads release the
GIL), cuts them into jobs of ~256K characters (long documents at exact GPT-2 cut points,
`sources.parallel_chunks`) and submits the jobs to a pool of `threads` tokenizer threads
(tiktoken's Rust encoder releases the GIL). At most `PREFETCH` batches are in flight, so
memory is a few batches whatever the corpus size. The consumer gets each batch's token
arrays in document order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from gpt2jax.data import sources
from gpt2jax.data.documents import Batch
from gpt2jax.data.tokenizers import CharTokenizer, Tokenizer

PREFETCH = 3             # batches read and submitted ahead of the writer
JOB_CHARS = 1 << 18      # characters per tokenizer job
LONG_DOC = 1 << 17       # GPT-2 documents longer than this are cut at exact points
_DONE = object()


def _pieces(tok: Tokenizer, docs: list[str]) -> tuple[list[str], list[int]]:
    """(pieces, owner document of each): long GPT-2 documents cut where BPE is unaffected."""
    if isinstance(tok, CharTokenizer):
        return docs, list(range(len(docs)))
    pieces, owners = [], []
    for i, doc in enumerate(docs):
        parts = sources.parallel_chunks(doc) if len(doc) > LONG_DOC else [doc]
        pieces.extend(parts)
        owners.extend([i] * len(parts))
    return pieces, owners


def _encode(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> list[np.ndarray]:
    if isinstance(tok, CharTokenizer):
        return [tok.encode_array(t).astype(dtype) for t in texts]
    return [np.asarray(tok.encode(t), dtype) for t in texts]


def _submit(pool: ThreadPoolExecutor, tok: Tokenizer, pieces: list[str],
            dtype: np.dtype) -> list[Future]:
    jobs, job, size = [], [], 0
    for p in pieces:
        job.append(p)
        size += len(p)
        if size >= JOB_CHARS:
            jobs.append(job)
            job, size = [], 0
    if job:
        jobs.append(job)
    return [pool.submit(_encode, tok, j, dtype) for j in jobs]


def _join(arrays: list[np.ndarray], owners: list[int], n: int,
          dtype: np.dtype) -> list[np.ndarray]:
    if len(arrays) == n:  # no document was cut
        return arrays
    per_doc: list[list[np.ndarray]] = [[] for _ in range(n)]
    for owner, a in zip(owners, arrays):
        per_doc[owner].append(a)
    return [np.concatenate(p) if p else np.zeros(0, dtype) for p in per_doc]


def encoded_batches(tok: Tokenizer, batches: Iterator[Batch], threads: int,
                    dtype: np.dtype) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """(split of each document, token array of each document) per batch, in order.

    Errors of the reader (the source) or of a tokenizer job are raised here, in the caller.
    """
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="tokenize")
    ready: queue.Queue = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for splits, docs in batches:
                pieces, owners = _pieces(tok, docs)
                if not put((splits, len(docs), owners, _submit(pool, tok, pieces, dtype))):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, raised there)
            put(e)

    thread = threading.Thread(target=reader, name="prepare-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            splits, n, owners, futures = item
            arrays = [a for f in futures for a in f.result()]
            yield splits, _join(arrays, owners, n, dtype)
    finally:
        stop.set()
        thread.join()
        pool.shutdown(wait=True, cancel_futures=True)


def tokenize_source(tok: Tokenizer, batches: Iterator[Batch], threads: int,
                    dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """All tokens of the train (0) and val (1) documents of `batches`, in memory, EOT between
    documents: what a prepare writes, as two arrays (for training straight from a source)."""
    parts: tuple[list, list] = ([], [])
    eot = None if tok.eot_id is None else np.asarray([tok.eot_id], dtype)
    for splits, arrays in encoded_batches(tok, batches, threads, dtype):
        for split, a in zip(splits, arrays):
            if len(a):
                if eot is not None and parts[split]:
                    parts[split].append(eot)
                parts[split].append(a)
    return tuple(np.concatenate(p) if p else np.zeros(0, dtype) for p in parts)


class Progress:
    """A tqdm bar of documents (ETA when their number is known) with tokens and tokens/s."""

    def __init__(self, enabled: bool, total: int | None, docs: int, tokens: int):
        self.enabled, self.total, self.docs, self.bar = enabled, total, docs, None
        self.tokens, self.new_tokens, self.start = tokens, 0, time.perf_counter()

    def advance(self, docs: int, tokens: int) -> None:
        if self.bar is None:  # shown from the first batch on: a source that fails at once
            self.bar = tqdm(total=self.total, initial=self.docs, unit="doc", desc="prepare",
                            disable=not self.enabled, mininterval=0.5, smoothing=0.1)
        self.tokens += tokens
        self.new_tokens += tokens
        rate = self.new_tokens / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens:,} tokens, {rate / 1e6:.2f}M tokens/s",
                                 refresh=False)
        self.bar.update(docs)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def make_progress(enabled: bool, total: int | None, docs: int, tokens: int) -> Progress:
    """The progress bar of a prepare that starts at `docs` documents and `tokens` tokens."""
    return Progress(enabled, total, docs, tokens)
