"""From `config.data` to tokens: train/val documents of a text or TFDS source, tokenized.

Documents are joined with `<|endoftext|>` (GPT-2; nothing for characters, as nanoGPT's
`shakespeare_char`): the EOT goes *between* documents, so one document gives exactly the
tokens of encoding it alone (Tiny Shakespeare: 338,025 GPT-2 tokens).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator

import numpy as np

from gpt2jax.data import sources, tfds_source
from gpt2jax.data.tokenizers import (CharTokenizer, Gpt2Tokenizer, Tokenizer,
                                     check_tokenizer_name)
from gpt2jax.errors import ConfigError

SOURCES = ("text", "tfds", "hf", "shards")
_BATCH_CHARS = 1 << 24  # characters tokenized per parallel batch (~16 MB of text)


@dataclasses.dataclass
class SplitTexts:
    """Train and val documents plus a human-readable origin of each (file names, TFDS split)."""

    train: Iterable[str]
    val: Iterable[str]
    origin: dict[str, str]


def check_source(name: str) -> str:
    """Validates `config.data.source` once."""
    if name not in SOURCES:
        raise ConfigError(f"config.data.source={name!r} is unknown; use one of {SOURCES}.")
    return name


def _text_splits(cfg) -> SplitTexts:
    train, files = sources.read_documents(cfg.train_file, "train_file", cfg.encoding_errors)
    origin = {"train": ", ".join(files)}
    if cfg.val_file:
        val, vfiles = sources.read_documents(cfg.val_file, "val_file", cfg.encoding_errors)
        origin["val"] = ", ".join(vfiles)
    else:
        train, val = sources.holdout_split(train, cfg.val_fraction)
        origin["val"] = f"last {cfg.val_fraction:g} of {origin['train']}"
        origin["train"] = f"first {1 - cfg.val_fraction:g} of {origin['train']}"
    return SplitTexts(train, val, origin)


def _tfds_splits(cfg) -> SplitTexts:
    data_dir = sources.expand_path(cfg.data_dir, "data_dir") if cfg.data_dir else ""

    def texts(split):
        return tfds_source.tfds_texts(cfg.tfds_name, split, cfg.tfds_feature, data_dir,
                                      cfg.tfds_download)

    where = f"tfds:{cfg.tfds_name}"
    if cfg.tfds_split_val:
        return SplitTexts(texts(cfg.tfds_split_train), texts(cfg.tfds_split_val),
                          {"train": f"{where}/{cfg.tfds_split_train}",
                           "val": f"{where}/{cfg.tfds_split_val}"})
    train, val = sources.holdout_split(list(texts(cfg.tfds_split_train)), cfg.val_fraction)
    return SplitTexts(train, val, {
        "train": f"first {1 - cfg.val_fraction:g} of {where}/{cfg.tfds_split_train}",
        "val": f"last {cfg.val_fraction:g} of {where}/{cfg.tfds_split_train}"})


def split_texts(cfg) -> SplitTexts:
    """The train/val documents named by `config.data` (source `text` or `tfds`)."""
    source = check_source(cfg.source)
    if source == "text":
        return _text_splits(cfg)
    if source == "tfds":
        return _tfds_splits(cfg)
    raise ConfigError(f"config.data.source={source!r} is not read here; use "
                      "gpt2jax.data.hf_source or gpt2jax.data.shards.")


def make_tokenizer(cfg, texts: SplitTexts) -> tuple[Tokenizer, SplitTexts]:
    """The tokenizer of `config.data.tokenizer`; a char vocabulary is built from the texts.

    Returns the texts too: building a character vocabulary reads (and keeps) the documents.
    """
    if check_tokenizer_name(cfg.tokenizer) == "gpt2":
        return Gpt2Tokenizer(cfg.tiktoken_ranks), texts
    train, val = list(texts.train), list(texts.val)
    # nanoGPT builds the vocabulary from the whole corpus, so val never has unknown symbols.
    tok = CharTokenizer.from_texts(train + val)
    return tok, SplitTexts(train, val, texts.origin)


def _doc_batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= _BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode_docs(tok: Tokenizer, docs: list[str], num_threads: int) -> list[np.ndarray]:
    dtype = token_dtype(tok.vocab_size)
    if isinstance(tok, CharTokenizer):
        return [tok.encode_array(d).astype(dtype) for d in docs]
    pieces, owner = [], []
    for i, doc in enumerate(docs):
        chunks = sources.parallel_chunks(doc)
        pieces.extend(chunks)
        owner.extend([i] * len(chunks))
    encoded = tok.encode_batch(pieces, num_threads)
    per_doc: list[list[np.ndarray]] = [[] for _ in docs]
    for i, ids in zip(owner, encoded):
        per_doc[i].append(np.array(ids, dtype=dtype))
    return [np.concatenate(p) if p else np.zeros(0, dtype) for p in per_doc]


def tokenize(tok: Tokenizer, docs: Iterable[str], num_threads: int = 0,
             progress=None) -> Iterator[np.ndarray]:
    """Yields `token_dtype` arrays of `docs`' tokens, EOT between documents, in parallel.

    Args:
      tok: the tokenizer.
      docs: documents (strings), read lazily.
      num_threads: tokenizer threads; 0 = all cores.
      progress: optional tqdm-like object, advanced by the characters tokenized.
    """
    threads = num_threads or os.cpu_count() or 1
    first = True
    eot = None if tok.eot_id is None else np.array([tok.eot_id], token_dtype(tok.vocab_size))
    for batch in _doc_batches(docs):
        out = []
        for ids in _encode_docs(tok, batch, threads):
            if not first and eot is not None:
                out.append(eot)
            out.append(ids)
            first = False
        if progress is not None:
            progress.update(sum(len(d) for d in batch))
        yield np.concatenate(out)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50,257), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenize_all(tok: Tokenizer, docs: Iterable[str], num_threads: int = 0) -> np.ndarray:
    """All tokens of `docs` as one `[num_tokens]` array of `token_dtype(tok.vocab_size)`."""
    parts = list(tokenize(tok, docs, num_threads))
    dtype = token_dtype(tok.vocab_size)
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
