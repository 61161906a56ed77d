"""Token shards: the folder `--mode=prepare` commits, read back by memory map and checked.

Layout of a shards folder (nanoGPT's `train.bin`/`val.bin`, split into pieces):

    meta.json              the manifest: format, tokenizer (with the char vocabulary), dtype,
                           and per split its files, each with its token count, byte size,
                           sha256 and largest token id; written last, atomically
    train_00000.bin ...    raw little-endian uint16 (vocab <= 65,536) or uint32 token ids
    val_00000.bin ...
    prepare.partial/       only while a prepare is unfinished (gpt2jax.data.prepare)

Each split is one token stream (documents joined by EOT) cut into files of at most
`tokens_per_shard` tokens; readers see the concatenation. `open_shards` refuses, in one line
naming the file and `--mode=prepare`, a folder whose manifest is missing, unreadable or
incomplete, or whose files disagree with it (size, sha256, ids past the vocabulary).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gpt2jax.data.downloads import sha256_of
from gpt2jax.data.sources import expand_path
from gpt2jax.data.tokenizers import TOKENIZERS, Tokenizer, tokenizer_from_json
from gpt2jax.errors import DataError

FORMAT = "gpt2jax-shards-v2"
META = "meta.json"
PARTIAL = "prepare.partial"   # a prepare's work in progress (see gpt2jax.data.prepare)
SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")
SHARD_NAME = re.compile(r"^(train|val)_\d{5,}\.bin$")
FIX = "re-run `python run.py --mode=prepare` with the config that wrote this folder"


class TokenStream:
    """A read-only token sequence over one array or several shard memmaps.

    `len(stream)` is the number of tokens; `gather(idx)` returns the tokens at any integer
    index array (same shape) as int32.
    """

    def __init__(self, arrays: list[np.ndarray], origin: str = ""):
        self.arrays = [a for a in arrays if len(a)]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.origin = origin

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Tokens at positions `idx` (any shape, values in [0, len)) as int32, same shape."""
        if len(self.arrays) == 1:
            return self.arrays[0][idx].astype(np.int32)
        flat = idx.reshape(-1)
        shard = np.searchsorted(self.offsets, flat, side="right") - 1
        out = np.empty(flat.shape, np.int32)
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self.arrays[s][flat[mask] - self.offsets[s]]
        return out.reshape(idx.shape)

    def to_numpy(self) -> np.ndarray:
        """All tokens as one int32 array `[len]` (reads everything; for tests and eval)."""
        return self.gather(np.arange(len(self)))


# ----------------------------------------------------------------------------- the manifest


def _get(obj, key: str, kind, where: str, path: Path):
    """obj[key] checked to be a `kind`; errors name the file, the field and the fix."""
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"Shards metadata {str(path)!r}: field {where + key!r} is missing; "
                        f"{FIX}.")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"Shards metadata {str(path)!r}: field {where + key!r} is "
                        f"{type(value).__name__} {str(value)[:40]!r}, expected "
                        f"{getattr(kind, '__name__', 'another type')}; {FIX}.")
    return value


def _check_file_entry(entry, split: str, itemsize: int, vocab: int, where: str,
                      path: Path) -> None:
    name = _get(entry, "name", str, where, path)
    if not SHARD_NAME.match(name) or not name.startswith(split + "_"):
        raise DataError(f"Shards metadata {str(path)!r}: {where}name={name!r} is not a "
                        f"{split}_NNNNN.bin file name; {FIX}.")
    tokens = _get(entry, "num_tokens", int, where, path)
    size = _get(entry, "bytes", int, where, path)
    digest = _get(entry, "sha256", str, where, path)
    max_id = _get(entry, "max_id", int, where, path)
    if tokens < 1 or size != tokens * itemsize or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise DataError(f"Shards metadata {str(path)!r}: the entry of {name} is inconsistent "
                        f"({tokens} tokens, {size} bytes, sha256 {digest[:16]!r}); {FIX}.")
    if not 0 <= max_id < vocab:
        raise DataError(f"Shards metadata {str(path)!r}: {name} holds token ids up to {max_id} "
                        f"but the tokenizer's vocabulary has {vocab} ids (another tokenizer's "
                        f"shards, or an edited meta.json); {FIX}.")


def check_meta(meta, path: Path) -> dict:
    """Validates a manifest (types, names, sizes, ids < vocabulary); returns it."""
    if not isinstance(meta, dict):
        raise DataError(f"Shards metadata {str(path)!r} holds a {type(meta).__name__}, not a "
                        f"JSON object; {FIX}.")
    fmt = _get(meta, "format", str, "", path)
    if fmt != FORMAT:
        old = fmt.startswith("gpt2jax-shards-")
        raise DataError(f"Shards metadata {str(path)!r} is {fmt!r}, not {FORMAT!r}"
                        f"{' (written before shards had checksums)' if old else ''}; {FIX}.")
    dtype = _get(meta, "dtype", str, "", path)
    if dtype not in DTYPES:
        raise DataError(f"Shards metadata {str(path)!r}: dtype {dtype!r} is not one of "
                        f"{DTYPES}; {FIX}.")
    tok = _get(meta, "tokenizer", dict, "", path)
    if _get(tok, "name", str, "tokenizer.", path) not in TOKENIZERS:
        raise DataError(f"Shards metadata {str(path)!r}: tokenizer {tok['name']!r} is not one "
                        f"of {TOKENIZERS}; {FIX}.")
    vocab = _get(tok, "vocab_size", int, "tokenizer.", path)
    if tok["name"] == "char" and len(_get(tok, "chars", str, "tokenizer.", path)) != vocab:
        raise DataError(f"Shards metadata {str(path)!r}: tokenizer.chars holds "
                        f"{len(tok['chars'])} characters, vocab_size says {vocab}; {FIX}.")
    if vocab > np.iinfo(dtype).max + 1:
        raise DataError(f"Shards metadata {str(path)!r}: a {vocab}-id vocabulary does not fit "
                        f"{dtype}; {FIX}.")
    splits = _get(meta, "splits", dict, "", path)
    for split in SPLITS:
        info = _get(splits, split, dict, "splits.", path)
        where = f"splits.{split}."
        files = _get(info, "files", list, where, path)
        for i, entry in enumerate(files):
            _check_file_entry(entry, split, np.dtype(dtype).itemsize, vocab,
                              f"{where}files[{i}].", path)
        total = _get(info, "num_tokens", int, where, path)
        if total != sum(e["num_tokens"] for e in files):
            raise DataError(f"Shards metadata {str(path)!r}: {where}num_tokens={total} is not "
                            f"the sum over its files; {FIX}.")
    return meta


def read_meta(shards_dir: str) -> dict:
    """The validated manifest (`meta.json`) of a shards folder; errors say how to fix it."""
    folder = Path(expand_path(shards_dir, "shards_dir"))
    path = folder / META
    if not path.is_file():
        if (folder / PARTIAL).is_dir():
            raise DataError(f"Shards metadata {str(path)!r} does not exist: a prepare into this "
                            f"folder was interrupted ({PARTIAL}/ holds its progress); rerun the "
                            "same `python run.py --mode=prepare` command to finish it.")
        raise DataError(f"Shards metadata {str(path)!r} does not exist; write the shards with "
                        "`python run.py --mode=prepare --config=configs/prepare_*.py` or fix "
                        "config.data.shards_dir.")
    raw = path.read_bytes()
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        what = "empty (0 bytes)" if not raw else f"cut short or damaged ({e})"
        raise DataError(f"Shards metadata {str(path)!r} is not valid JSON: {what}; "
                        f"{FIX}.") from None
    return check_meta(meta, path)


# ----------------------------------------------------------------------------- the shards


def _check_sizes(folder: Path, files: list[dict]) -> None:
    for entry in files:
        path = folder / entry["name"]
        if not path.is_file():
            raise DataError(f"Shard {str(path)!r} listed in {META} is missing; {FIX}.")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DataError(f"Shard {str(path)!r} is {size} bytes but {META} records "
                            f"{entry['bytes']} (truncated, emptied or half-written); {FIX}.")


def _check_checksums(folder: Path, files: list[dict], threads: int) -> None:
    """sha256 of every file against the manifest, several files at once (hashlib releases
    the GIL on large buffers, so threads use the cores)."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        digests = list(pool.map(lambda e: sha256_of(folder / e["name"]), files))
    for entry, digest in zip(files, digests):
        if digest != entry["sha256"]:
            raise DataError(f"Shard {str(folder / entry['name'])!r} does not match its sha256 in "
                            f"{META} (changed after prepare, or written by another prepare); "
                            f"{FIX}.")


def open_split(shards_dir: str, split: str, meta: dict | None = None, verify: bool = True,
               threads: int = 0) -> TokenStream:
    """Memory-maps the shard files of `split` ('train' | 'val') as one TokenStream.

    Args:
      verify: also check every file's sha256 against the manifest (reads the files once:
        ~20 GB for 10B tokens); sizes and recorded max ids are always checked.
      threads: files hashed at once; 0 = 8.
    """
    meta = meta or read_meta(shards_dir)
    folder = Path(expand_path(shards_dir, "shards_dir"))
    files = meta["splits"][split]["files"]
    _check_sizes(folder, files)
    if verify:
        _check_checksums(folder, files, threads or 8)
    arrays = [np.memmap(folder / e["name"], dtype=np.dtype(meta["dtype"]), mode="r")
              for e in files]
    origin = meta["splits"][split].get("origin", "?")
    return TokenStream(arrays, origin=f"{folder / (split + '_*.bin')} (from {origin})")


def open_shards(shards_dir: str, ranks_path: str = "", verify: bool = True
                ) -> tuple[Tokenizer, TokenStream, TokenStream, dict]:
    """(tokenizer, train stream, val stream, meta) of a checked shards folder."""
    meta = read_meta(shards_dir)
    tok = tokenizer_from_json(meta["tokenizer"], ranks_path)
    if tok.vocab_size != meta["tokenizer"]["vocab_size"]:
        raise DataError(f"Shards in {shards_dir!r} were written with a {tok.name} vocabulary "
                        f"of {meta['tokenizer']['vocab_size']} ids, this tokenizer has "
                        f"{tok.vocab_size}; {FIX}.")
    return (tok, open_split(shards_dir, "train", meta, verify),
            open_split(shards_dir, "val", meta, verify), meta)
