"""Data: text files, TFDS, HF datasets and token shards -> packed, resumable, per-process
batches.

    from gpt2jax import data
    ds = data.build_datasets(config.data, block_size=1024, global_batch_size=8, seed=0)
    batch = next(ds.train)            # {"inputs", "targets": int32 [local_b, T], "weights"}
    state = ds.train.state()          # JSON dict; ds.train.restore(state) resumes exactly
    val = ds.val_batches(20)          # fixed validation batches, same layout
    arrays = Placement(mesh, rules).put_batch(batch)  # parallel.placement: on the mesh

Sources (`config.data.source`): `text` (UTF-8 files), `tfds` (TensorFlow Datasets), `hf`
(Hugging Face datasets: hub names, local parquet / jsonl / arrow), `shards` (token files
written and checksummed by `python run.py --mode=prepare`, gpt2jax.data.prepare). See README
`## Data`.
Public data files by name (`dataset:NAME`): `resolve.data_file` (data dir, caches, the
package, a checksummed download; `registry` pins the sources, `downloads` fetches).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from gpt2jax.data import corpus, hf_source
from gpt2jax.data.batching import (BatchIterator, check_length, check_mode, val_starts,
                                   windows_batch)
from gpt2jax.data.prepare import prepare_shards, source_tokenizer
from gpt2jax.data.prepare_pipeline import tokenize_source
from gpt2jax.data.shards import TokenStream, open_shards
from gpt2jax.data.tokenizers import (CharTokenizer, Gpt2Tokenizer, Tokenizer, load_tokenizer,
                                     save_tokenizer)
from gpt2jax.errors import ConfigError

__all__ = [
    "BatchIterator", "CharTokenizer", "Datasets", "Gpt2Tokenizer", "TokenStream", "Tokenizer",
    "build_datasets", "datasets_from_streams", "load_streams", "load_tokenizer",
    "prepare_shards", "save_tokenizer",
]


@dataclasses.dataclass
class Datasets:
    """What training and evaluation consume; built by `build_datasets`."""

    tokenizer: Tokenizer
    train: BatchIterator          # this process's share of each global batch
    train_stream: TokenStream     # all training tokens (documents joined by EOT)
    val_stream: TokenStream       # all validation tokens
    block_size: int
    global_batch_size: int
    process_index: int
    process_count: int

    def val_batches(self, num_batches: int) -> list[dict[str, np.ndarray]]:
        """`num_batches` fixed validation batches (this process's rows), same layout as train.

        Window starts are evenly spaced over the val stream (see `batching.val_starts`); the
        result is the same for every call, step and run.
        """
        g, local = self.global_batch_size, self.global_batch_size // self.process_count
        starts = val_starts(len(self.val_stream), self.block_size, num_batches * g)
        row0 = self.process_index * local
        pad = self.tokenizer.eot_id or 0
        return [windows_batch(self.val_stream, starts[b * g + row0: b * g + row0 + local],
                              self.block_size, pad) for b in range(num_batches)]


def load_streams(cfg) -> tuple[Tokenizer, TokenStream, TokenStream]:
    """(tokenizer, train tokens, val tokens) of `config.data`; text/TFDS/HF are tokenized now."""
    source = corpus.check_source(cfg.source)
    if source == "shards":
        tok, train, val, _ = open_shards(cfg.shards_dir, cfg.tiktoken_ranks, cfg.verify_shards)
        return tok, train, val
    if source == "hf":
        docs = hf_source.hf_source(cfg)
        tok = source_tokenizer(cfg, docs)
        train, val = tokenize_source(tok, docs.read(0), cfg.num_threads or os.cpu_count() or 1,
                                     corpus.token_dtype(tok.vocab_size))
        return (tok, TokenStream([train], origin=docs.origin["train"]),
                TokenStream([val], origin=docs.origin["val"]))
    texts = corpus.split_texts(cfg)
    tok, texts = corpus.make_tokenizer(cfg, texts)
    train = TokenStream([corpus.tokenize_all(tok, texts.train, cfg.num_threads)],
                        origin=texts.origin["train"])
    val = TokenStream([corpus.tokenize_all(tok, texts.val, cfg.num_threads)],
                      origin=texts.origin["val"])
    return tok, train, val


def build_datasets(data_config, block_size: int, global_batch_size: int, seed: int,
                   process_index: int | None = None,
                   process_count: int | None = None) -> Datasets:
    """Train iterator, validation batches and tokenizer for `config.data`.

    Args:
      data_config: `config.data` (configs/common.py:data_config).
      block_size: T, tokens per example (windows hold T + 1 tokens).
      global_batch_size: examples per step over all processes.
      seed: fixes the window order; the same seed gives the same batches.
      process_index, process_count: this process's slice; default jax.process_index/count().
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if block_size < 1 or global_batch_size < 1:
        raise ConfigError(f"block_size={block_size} and global_batch_size={global_batch_size} "
                          "must be positive.")
    check_mode(data_config.mode)  # fail before the (possibly long) tokenization
    return datasets_from_streams(data_config, load_streams(data_config), block_size,
                                 global_batch_size, seed, process_index, process_count)


def datasets_from_streams(data_config, streams: tuple[Tokenizer, TokenStream, TokenStream],
                          block_size: int, global_batch_size: int, seed: int,
                          process_index: int, process_count: int) -> Datasets:
    """`build_datasets` on streams already loaded by `load_streams(data_config)`."""
    check_mode(data_config.mode)
    tok, train, val = streams
    check_length(train, block_size, "Training data")
    check_length(val, block_size, "Validation data")
    it = BatchIterator(train, block_size, global_batch_size, seed, process_index,
                       process_count, mode=data_config.mode, num_epochs=data_config.num_epochs,
                       shuffle=data_config.shuffle, prefetch=data_config.prefetch,
                       pad_id=tok.eot_id or 0)
    return Datasets(tok, it, train, val, block_size, global_batch_size, process_index,
                    process_count)
