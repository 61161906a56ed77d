"""Token shards: `prepare` writes them, `TokenStream` reads them by memory map.

Layout of a shards folder (nanoGPT's `train.bin`/`val.bin`, split into pieces):

    meta.json              format, tokenizer (with the char vocabulary), dtype, token counts,
                           source and origin of each split
    train_00000.bin ...    raw little-endian uint16 (vocab <= 65,536) or uint32 token ids
    val_00000.bin ...

Each split is one token stream (documents joined by EOT) cut into files of at most
`tokens_per_shard` tokens; readers see the concatenation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gpt2jax.data import corpus
from gpt2jax.data.sources import expand_path
from gpt2jax.data.tokenizers import Tokenizer, tokenizer_from_json
from gpt2jax.errors import ConfigError, DataError

FORMAT = "gpt2jax-shards-v1"
SPLITS = ("train", "val")


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


def _write_split(out_dir: Path, split: str, parts: Iterable[np.ndarray], dtype: np.dtype,
                 tokens_per_shard: int) -> dict:
    files, total, shard_fill, handle = [], 0, 0, None
    for part in parts:
        part = part.astype(dtype)
        while len(part):
            if handle is None or shard_fill == tokens_per_shard:
                if handle is not None:
                    handle.close()
                files.append(f"{split}_{len(files):05d}.bin")
                handle = open(out_dir / (files[-1] + ".tmp"), "wb")
                shard_fill = 0
            take = part[: tokens_per_shard - shard_fill]
            handle.write(take.tobytes())
            shard_fill += len(take)
            total += len(take)
            part = part[len(take):]
    if handle is not None:
        handle.close()
    for f in files:  # only complete shards get their final name
        os.replace(out_dir / (f + ".tmp"), out_dir / f)
    return {"files": files, "num_tokens": total}


def prepare_shards(cfg, out_dir: str | None = None, progress: bool = True) -> dict:
    """Tokenizes the text/TFDS source of `config.data` on all cores into a shards folder.

    Args:
      cfg: `config.data` (source `text` or `tfds`; see configs/common.py:data_config).
      out_dir: destination; default `cfg.shards_dir`.
      progress: show a tqdm bar of characters tokenized.
    Returns:
      the metadata dict also written to `out_dir/meta.json`.
    """
    from tqdm import tqdm

    if not (out_dir or cfg.shards_dir):
        raise ConfigError("config.data.shards_dir is empty; set the output folder.")
    out = Path(expand_path(out_dir or cfg.shards_dir, "shards_dir"))
    if cfg.tokens_per_shard <= 0:
        raise ConfigError(f"config.data.tokens_per_shard={cfg.tokens_per_shard} must be > 0.")
    texts = corpus.split_texts(cfg)
    tok, texts = corpus.make_tokenizer(cfg, texts)
    out.mkdir(parents=True, exist_ok=True)  # only after the input was read (bad input: no trace)
    dtype = corpus.token_dtype(tok.vocab_size)
    start = time.perf_counter()
    meta = {"format": FORMAT, "tokenizer": tok.to_json(), "dtype": dtype.name,
            "source": cfg.source, "splits": {}}
    for split, docs in (("train", texts.train), ("val", texts.val)):
        with tqdm(desc=f"tokenizing {split}", unit="char", unit_scale=True,
                  disable=not progress) as bar:
            parts = corpus.tokenize(tok, docs, cfg.num_threads, progress=bar)
            info = _write_split(out, split, parts, dtype, cfg.tokens_per_shard)
        info["origin"] = texts.origin[split]
        meta["splits"][split] = info
    meta["num_tokens"] = sum(info["num_tokens"] for info in meta["splits"].values())
    meta["data_config"] = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    meta["seconds"] = round(time.perf_counter() - start, 3)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def read_meta(shards_dir: str) -> dict:
    """The `meta.json` of a shards folder; errors say how to create it."""
    path = Path(expand_path(shards_dir, "shards_dir")) / "meta.json"
    if not path.is_file():
        raise DataError(f"Shards metadata {str(path)!r} does not exist; write the shards with "
                        "`python run.py --mode=prepare --config=configs/prepare_*.py` or fix "
                        "config.data.shards_dir.")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"{str(path)!r} is not a {FORMAT} metadata file; re-run prepare.")
    return meta


def open_split(shards_dir: str, split: str, meta: dict | None = None) -> TokenStream:
    """Memory-maps the shard files of `split` ('train' | 'val') as one TokenStream."""
    meta = meta or read_meta(shards_dir)
    folder = Path(expand_path(shards_dir, "shards_dir"))
    info = meta["splits"].get(split)
    if info is None:
        raise DataError(f"Shards in {str(folder)!r} have no {split!r} split; re-run prepare.")
    arrays = []
    for name in info["files"]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"Shard {str(path)!r} listed in meta.json is missing; re-run "
                            "prepare into this folder.")
        arrays.append(np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r"))
    stream = TokenStream(arrays, origin=f"{folder / (split + '_*.bin')} "
                                        f"(from {info.get('origin', '?')})")
    if len(stream) != info["num_tokens"]:
        raise DataError(f"Shards of {split!r} in {str(folder)!r} hold {len(stream)} tokens but "
                        f"meta.json says {info['num_tokens']}; re-run prepare (truncated copy?).")
    return stream


def open_shards(shards_dir: str, ranks_path: str = "") -> tuple[Tokenizer, TokenStream,
                                                                TokenStream, dict]:
    """(tokenizer, train stream, val stream, meta) of a shards folder."""
    meta = read_meta(shards_dir)
    tok = tokenizer_from_json(meta["tokenizer"], ranks_path)
    return tok, open_split(shards_dir, "train", meta), open_split(shards_dir, "val", meta), meta
