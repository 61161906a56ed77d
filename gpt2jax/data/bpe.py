"""The GPT-2 byte-level BPE encoding (tiktoken), usable offline from a ranks file.

`get_encoding` is the raw `tiktoken.Encoding` under `gpt2jax.data.tokenizers.Gpt2Tokenizer`;
callers use that tokenizer (`gpt2jax.get_tokenizer()`), which follows the one `Tokenizer`
protocol of `gpt2jax.data.tokenizers`.

Where the ranks come from, in order: an explicit path, the environment variable
`GPT2JAX_TIKTOKEN_RANKS`, then `gpt2/gpt2.tiktoken` as `gpt2jax.data.resolve.data_file`
finds it without network (`$GPT2JAX_DATA_DIR`, tiktoken's cache, `~/.cache/gpt2jax`), then
tiktoken's cached `gpt2` encoding (encoder.json + vocab.bpe), else a checksummed download
of OpenAI's r50k_base.tiktoken into `~/.cache/gpt2jax` (see `resolve`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from pathlib import Path

import tiktoken

from gpt2jax.data import resolve
from gpt2jax.errors import ConfigError, DataError

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
# tiktoken pins this sha256 for r50k_base.tiktoken, which holds the GPT-2 ranks.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
RANKS_ENV = "GPT2JAX_TIKTOKEN_RANKS"
DATA_ENV = resolve.DATA_ENV
RANKS_NAME = "gpt2/gpt2.tiktoken"
# tiktoken's own "gpt2" encoding is built from these two files (same ranks, verified).
DATA_GYM_NAMES = ("gpt2/encoder.json", "gpt2/vocab.bpe")


class TokenizerError(ConfigError):
    """A tokenizer ranks file that is missing or not the GPT-2 one."""


def _ranks_path(ranks_path: str | os.PathLike | None) -> Path | None:
    """The ranks file to read, if one is here; None = none without network."""
    if ranks_path:
        return Path(ranks_path)
    if os.environ.get(RANKS_ENV):
        return Path(os.environ[RANKS_ENV])
    try:
        return resolve.data_file(RANKS_NAME, download=False)
    except DataError:
        return None


def _tiktoken_has_gpt2() -> bool:
    """Whether tiktoken's cache holds (hash-checked) both files of its "gpt2" encoding."""
    return all(resolve.tiktoken_cache_file(name) is not None for name in DATA_GYM_NAMES)


def load_ranks(path: str | os.PathLike, verify: bool = True) -> dict[bytes, int]:
    """Reads a tiktoken ranks file (`base64(token) rank` per line), checking its sha256."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(
            f"Tokenizer ranks file {str(path)!r} does not exist; pass the path of gpt2.tiktoken "
            f"or set {RANKS_ENV}."
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if verify and digest != GPT2_RANKS_SHA256:
        raise TokenizerError(
            f"{str(path)!r} has sha256 {digest[:16]}..., not the GPT-2 ranks "
            f"({GPT2_RANKS_SHA256[:16]}...); use the original gpt2.tiktoken (r50k_base)."
        )
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=8)
def _encoding_from_file(path: str) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_ranks(path),
        special_tokens={EOT_TOKEN: EOT_ID},
    )


def get_encoding(ranks_path: str | os.PathLike | None = None) -> tiktoken.Encoding:
    """The GPT-2 `tiktoken.Encoding` (n_vocab 50257, `<|endoftext|>` = 50256).

    Use `enc.encode_ordinary_batch(texts, num_threads=os.cpu_count())` to encode on all cores.
    """
    path = _ranks_path(ranks_path)
    if path is None and _tiktoken_has_gpt2():
        return tiktoken.get_encoding("gpt2")   # reads tiktoken's cache, no network
    if path is None:
        path = resolve.data_file(RANKS_NAME)   # checksummed download into the cache
    return _encoding_from_file(str(path.resolve()))


def encode_batch(enc: tiktoken.Encoding, texts: list[str]) -> list[list[int]]:
    """Encodes texts in parallel on all cores (no special tokens are parsed)."""
    return enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)
