"""One tokenizer protocol, two implementations: GPT-2 BPE (tiktoken) and character level
(nanoGPT).

Every caller (data preparation, training's samples, the generate and eval CLIs, the lm-eval
backend) uses only `Tokenizer`: `.name`, `.vocab_size`, `.eot_id` (None for characters),
`.encode(text, special=False)`, `.encode_batch(texts)`, `.decode(ids)`, `.token_bytes(id)`
and `.to_json()`; `tokenizer_from_json` rebuilds either from that dict (it is written into
shard metadata and beside checkpoints so that generation and evaluation decode with the
vocabulary the model was trained on). `get_tokenizer()` is the GPT-2 one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

# `import ... as` (not `from gpt2jax.data.bpe import`): gpt2jax.data.bpe imports
# gpt2jax.data.resolve, so either package may be the one being initialised first.
from gpt2jax.data import bpe as bpe
from gpt2jax.errors import ConfigError, DataError

TOKENIZERS = ("gpt2", "char")


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer offers; ids are ints in `[0, vocab_size)`."""

    name: str                 # "gpt2" | "char": the key of `tokenizer_from_json`
    vocab_size: int           # 50257 for GPT-2, the corpus's characters for char
    eot_id: int | None        # the end-of-text / document separator id; None: there is none

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Ids of `text`; `special=True` reads `<|endoftext|>` as the EOT id (prompts, as HF
        tokenizers do), False as plain text (training data)."""

    def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
        """`encode` of each text (plain text), on `num_threads` threads (0 = all cores)."""

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids."""

    def token_bytes(self, token: int) -> bytes:
        """The UTF-8 bytes of one token (a BPE token may hold part of a character)."""

    def to_json(self) -> dict:
        """What `tokenizer_from_json` needs to rebuild this tokenizer."""


class Gpt2Tokenizer:
    """GPT-2 byte-level BPE through tiktoken; `<|endoftext|>` (50256) separates documents."""

    name = "gpt2"

    def __init__(self, ranks_path: str = ""):
        self.ranks_path = ranks_path
        self.encoding = bpe.get_encoding(ranks_path or None)  # tiktoken.Encoding
        self.vocab_size = self.encoding.n_vocab          # 50257
        self.eot_id = self.encoding.eot_token            # 50256

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text`; `<|endoftext|>` is the EOT id only with `special=True`."""
        if special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
        """Encodes `texts` on `num_threads` threads (0 = all cores); tiktoken drops the GIL."""
        threads = num_threads or os.cpu_count() or 1
        return self.encoding.encode_ordinary_batch(list(texts), num_threads=threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids (invalid UTF-8 byte sequences become U+FFFD)."""
        return self.encoding.decode([int(i) for i in ids])

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token (may end inside a UTF-8 character)."""
        return self.encoding.decode_single_token_bytes(int(token))

    def to_json(self) -> dict:
        """What `tokenizer_from_json` needs (the ranks path is looked up again on load)."""
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}


class CharTokenizer:
    """Character-level tokenizer; ids are the sorted characters of the corpus (nanoGPT)."""

    name = "char"
    eot_id = None

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        if not self.chars or sorted(set(self.chars)) != self.chars:
            raise ConfigError("A character vocabulary must be non-empty, sorted and unique.")
        self.vocab_size = len(self.chars)
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        """The vocabulary of every character occurring in `texts` (65 for Tiny Shakespeare)."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if not chars:
            raise DataError("Cannot build a character vocabulary from empty text; give a "
                            "non-empty training file.")
        return cls(sorted(chars))

    def encode_array(self, text: str, where: str = "text") -> np.ndarray:
        """Ids of `text` as int64 `[len(text)]`, vectorised over code points."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        pos = np.searchsorted(self._codepoints, codes)
        pos = np.minimum(pos, self.vocab_size - 1)
        bad = self._codepoints[pos] != codes
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(
                f"{where}: character {text[first]!r} at position {first} is not in the "
                f"{self.vocab_size}-symbol vocabulary; build the vocabulary from this text "
                "(prepare train and val together) or remove the character."
            )
        return pos.astype(np.int64)

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text` (there are no special tokens); unknown characters raise
        DataError."""
        del special
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
        """Encodes each text (vectorised; threads are not needed)."""
        del num_threads
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids."""
        return "".join(self.chars[int(i)] for i in ids)

    def token_bytes(self, token: int) -> bytes:
        """The UTF-8 bytes of one character."""
        return self.chars[int(token)].encode("utf-8")

    def to_json(self) -> dict:
        """The vocabulary as a JSON-serialisable dict."""
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": None,
                "chars": "".join(self.chars)}


def get_tokenizer(ranks_path: str | os.PathLike | None = None) -> Gpt2Tokenizer:
    """The GPT-2 BPE tokenizer (vocab_size 50257, `<|endoftext|>` = eot_id 50256), offline
    from `ranks_path`, $GPT2JAX_TIKTOKEN_RANKS, the data dir or tiktoken's cache (see
    `gpt2jax.data.bpe`); `.encoding` is the underlying `tiktoken.Encoding`."""
    return Gpt2Tokenizer(str(ranks_path) if ranks_path else "")


def tokenizer_from_json(meta: dict, ranks_path: str = "") -> Tokenizer:
    """Rebuilds a tokenizer from `to_json()` output (e.g. `meta["tokenizer"]` of shards)."""
    name = meta.get("name")
    if name == "gpt2":
        return Gpt2Tokenizer(ranks_path)
    if name == "char":
        return CharTokenizer(list(meta["chars"]))
    raise ConfigError(f"Unknown tokenizer {name!r} in metadata; expected one of {TOKENIZERS}.")


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike) -> None:
    """Writes `tokenizer.to_json()` to `path` (e.g. `workdir/tokenizer.json`)."""
    Path(path).write_text(json.dumps(tokenizer.to_json(), indent=1))


def load_tokenizer(path: str | os.PathLike, ranks_path: str = "") -> Tokenizer:
    """Reads a tokenizer saved by `save_tokenizer`, or the `meta.json` of a shards folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "meta.json"
    if not path.is_file():
        raise DataError(f"Tokenizer file {str(path)!r} does not exist; point to the "
                        "tokenizer.json of the run or the meta.json of the shards folder.")
    meta = json.loads(path.read_text())
    return tokenizer_from_json(meta.get("tokenizer", meta), ranks_path)


def check_tokenizer_name(name: str) -> str:
    """Validates `config.data.tokenizer` once."""
    if name not in TOKENIZERS:
        raise ConfigError(f"config.data.tokenizer={name!r} is unknown; use one of {TOKENIZERS}.")
    return name
