"""Tiny Shakespeare -> token shards, nanoGPT's `data/shakespeare{_char}/prepare.py`.

    python run.py --mode=prepare \
        --config=configs/prepare_shakespeare.py:char      # or :gpt2

Expected: char -> vocabulary 65, train 1,003,854 + val 111,540 tokens (uint16), written to
data/shakespeare_char/; gpt2 -> train 301,966 + val 36,059 tokens, data/shakespeare_gpt2/.
The text is `dataset:tinyshakespeare/input.txt` (karpathy/char-rnn, the file nanoGPT
downloads; shipped inside the package), val = its last 10 %. The gpt2 tokenizer needs the
GPT-2 BPE ranks: $GPT2JAX_DATA_DIR, tiktoken's cache, ~/.cache/gpt2jax or a download.
Train on the result with
`--config.data.source=shards --config.data.shards_dir=data/shakespeare_char`.
Online alternative: `--config.data.source=tfds --config.data.tfds_name=tiny_shakespeare`.
"""

from __future__ import annotations

import ml_collections

from configs import common

SHAKESPEARE = "dataset:tinyshakespeare/input.txt"  # data dir, cache, else the packaged copy


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tokenizer = arg or "char"
    if tokenizer not in ("char", "gpt2"):
        raise ValueError(f"Unknown tokenizer {tokenizer!r}; use prepare_shakespeare.py:char|gpt2.")
    c = ml_collections.ConfigDict()
    c.data = common.data_config(
        source="text",
        train_file=SHAKESPEARE,
        val_fraction=0.1,                        # nanoGPT: last 10 % is validation
        tokenizer=tokenizer,
        shards_dir=f"data/shakespeare_{tokenizer}",
    )
    return c
