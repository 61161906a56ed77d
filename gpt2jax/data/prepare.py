"""`--mode=prepare` at corpus scale: documents -> token shards, streamed, resumable, committed
as a whole.

    meta = prepare_shards(config.data)          # text | tfds | hf source -> config.data.shards_dir

How (llm.c's `dev/data/fineweb.py` and nanoGPT's `data/openwebtext/prepare.py` as one tested
path):

- Streams: a reader thread pulls batches of documents (`documents.DocSource`), hands pieces
  of ~1 MB to a pool of tokenizer threads (tiktoken releases the GIL) and queues them, so
  memory holds a few batches whatever the corpus size.
- Shards: each split is cut into `tokens_per_shard` token files written into
  `<shards_dir>/prepare.partial/`, each finished one fsynced and renamed from `.tmp` to its
  name (temp + rename); its token count, byte size, sha256 and largest id are recorded.
- Resumable: after every batch that finished a shard, `prepare.partial/state.json` (written
  atomically) records the source position (documents read) and the length of each split's
  open shard. Killed at any point and run again, a prepare keeps the finished shards, cuts
  the open ones back to that length and reads on from that position: the output is
  byte-identical to an uninterrupted run's.
- Committed whole: at the end the shards move into `shards_dir` and `meta.json` (the
  manifest that `shards.open_shards` checks) is written last, atomically. Until then the
  folder's previous dataset, if any, stays readable; while the commit itself runs, readers
  are told a prepare was interrupted. A full disk, or any write error, ends in one line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from gpt2jax.data import corpus, documents, hf_source
from gpt2jax.data.prepare_io import SplitWriter, atomic_write, fsync_dir, read_state
from gpt2jax.data.prepare_pipeline import encoded_batches, make_progress
from gpt2jax.data.shards import FORMAT, META, PARTIAL, SHARD_NAME, SPLITS
from gpt2jax.data.sources import expand_path
from gpt2jax.data.tokenizers import CharTokenizer, Gpt2Tokenizer, Tokenizer, tokenizer_from_json
from gpt2jax.data.tokenizers import check_tokenizer_name
from gpt2jax.errors import ConfigError, DataError, GPT2JaxError

STATE = "state.json"
LOCK = "lock"


def doc_source(cfg) -> documents.DocSource:
    """The documents of `config.data` (source text | tfds | hf), checked and opened."""
    source = corpus.check_source(cfg.source)
    if source == "shards":
        raise ConfigError("--mode=prepare reads documents: set config.data.source to 'text', "
                          "'tfds' or 'hf' (source 'shards' is what training reads afterwards).")
    return hf_source.hf_source(cfg) if source == "hf" else documents.text_source(cfg)


def source_tokenizer(cfg, source: documents.DocSource, state: dict | None = None) -> Tokenizer:
    """The tokenizer of `config.data.tokenizer`; a char vocabulary is read from `source`."""
    if state is not None:  # a resumed prepare keeps the vocabulary it started with
        return tokenizer_from_json(state["meta"]["tokenizer"], cfg.tiktoken_ranks)
    if check_tokenizer_name(cfg.tokenizer) == "gpt2":
        return Gpt2Tokenizer(cfg.tiktoken_ranks)
    # nanoGPT builds the vocabulary from the whole corpus (one extra pass over the text)
    return CharTokenizer.from_texts(d for _, docs in source.read(0) for d in docs)


def _recipe(cfg, source: documents.DocSource, tok: Tokenizer) -> dict:
    """What the output depends on; a resumed prepare must match it field for field."""
    recipe = {"source": cfg.source, "documents": source.identity, "tokenizer": tok.name,
              "tokens_per_shard": cfg.tokens_per_shard}
    return json.loads(json.dumps(recipe))  # tuples -> lists, as read back from state.json


def _check_same_recipe(state: dict, recipe: dict, staging: Path) -> None:
    saved = state["meta"]["recipe"]
    for key in sorted(set(saved) | set(recipe)):
        if saved.get(key) != recipe.get(key):
            raise DataError(
                f"{str(staging)!r} holds an interrupted prepare of another config ({key}: "
                f"{str(saved.get(key))[:80]} then, {str(recipe.get(key))[:80]} now); rerun "
                f"with the config it was started with, or delete {str(staging)!r} to start "
                "over.")


def _new_state(cfg, source: documents.DocSource, tok: Tokenizer, recipe: dict) -> dict:
    meta = {"format": FORMAT, "tokenizer": tok.to_json(),
            "dtype": corpus.token_dtype(tok.vocab_size).name, "source": cfg.source,
            "recipe": recipe, "splits": {}}
    return {"phase": "tokenize", "position": 0, "writers": {}, "meta": meta,
            "origin": source.origin}


def _lock(staging: Path):
    """An exclusive lock on the staging folder: one prepare per shards folder at a time."""
    fd = os.open(staging / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataError(f"Another prepare is writing into {str(staging.parent)!r}; wait for it "
                        "to finish, or write to another config.data.shards_dir.") from None
    return fd


def _clean_staging(staging: Path, keep: set[str]) -> None:
    """Removes shard files (finished or .tmp) of an earlier attempt that `keep` lacks."""
    for f in staging.iterdir():
        base = f.name[:-4] if f.name.endswith(".tmp") else f.name
        if SHARD_NAME.match(base) and f.name not in keep:
            f.unlink()


def _tokenize(staging: Path, state: dict, source, tok: Tokenizer, cfg, progress: bool) -> None:
    """Runs the pipeline from state["position"], checkpointing after every finished shard."""
    dtype = np.dtype(state["meta"]["dtype"])
    writers = {s: SplitWriter(staging, s, dtype, cfg.tokens_per_shard, state["writers"].get(s))
               for s in SPLITS}
    keep = {n for w in writers.values() for n in w.file_names()} | {STATE, LOCK}
    _clean_staging(staging, keep)
    eot = None if tok.eot_id is None else np.asarray([tok.eot_id], dtype)
    position = state["position"]
    bar = make_progress(progress, source.num_docs, position,
                        sum(w.num_tokens for w in writers.values()))
    threads = cfg.num_threads or os.cpu_count() or 1
    batches = encoded_batches(tok, source.read(position), threads, dtype)
    try:
        for splits, arrays in batches:
            finished = 0
            for code, split in enumerate(SPLITS):
                picked = [a for a, s in zip(arrays, splits) if s == code and len(a)]
                finished += writers[split].add_documents(picked, eot)
            position += len(arrays)
            bar.advance(len(arrays), sum(len(a) for a in arrays))
            if finished:
                _checkpoint(staging, state, writers, position)
    finally:
        batches.close()  # stops the reader and tokenizer threads, also on an error
        bar.close()
    for w in writers.values():
        w.finish()
    _checkpoint(staging, state, writers, position)


def _checkpoint(staging: Path, state: dict, writers: dict, position: int) -> None:
    state["writers"] = {s: w.snapshot() for s, w in writers.items()}  # fsyncs open shards
    state["position"] = position
    atomic_write(staging / STATE, json.dumps(state, indent=1))


def _final_meta(state: dict, staging: Path) -> dict:
    meta = dict(state["meta"])
    meta["splits"] = {}
    for split in SPLITS:
        w = state["writers"][split]
        meta["splits"][split] = {"files": w["files"], "num_tokens": w["num_tokens"],
                                 "num_documents": w["num_documents"],
                                 "origin": state["origin"][split]}
        if not w["num_tokens"]:
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"The {split} split of this prepare has no tokens (no document went "
                            "to it); give more text, raise config.data.val_fraction or name a "
                            "validation split, then run prepare again.")
    meta["num_tokens"] = sum(meta["splits"][s]["num_tokens"] for s in SPLITS)
    meta["num_documents"] = sum(meta["splits"][s]["num_documents"] for s in SPLITS)
    return meta


def _listed_files(out: Path) -> list[str]:
    """Shard names listed by the folder's current meta.json (read leniently), else []."""
    try:
        meta = json.loads((out / META).read_text())
        return [e["name"] for s in SPLITS for e in meta["splits"][s]["files"]
                if SHARD_NAME.match(e["name"])]
    except Exception:  # noqa: BLE001  (absent or damaged: nothing known to remove)
        return []


def _commit(out: Path, staging: Path, state: dict) -> dict:
    """Moves the shards into `out`, removes the old dataset's other files, writes meta.json
    last (atomically). Idempotent: an interrupted commit is finished by running it again."""
    meta = state["meta"]
    names = [e["name"] for s in SPLITS for e in meta["splits"][s]["files"]]
    if state["phase"] != "commit":
        state.update(phase="commit", stale=sorted(set(_listed_files(out)) - set(names)))
        atomic_write(staging / STATE, json.dumps(state, indent=1))
    (out / META).unlink(missing_ok=True)  # from here on readers see "interrupted prepare"
    fsync_dir(out)
    for name in names:
        if (staging / name).is_file():
            os.replace(staging / name, out / name)
        elif not (out / name).is_file():
            raise DataError(f"Finished shard {name} of the interrupted prepare is in neither "
                            f"{str(staging)!r} nor {str(out)!r}; delete {str(staging)!r} and "
                            "run prepare again.")
    for name in state["stale"]:
        (out / name).unlink(missing_ok=True)
    fsync_dir(out)
    atomic_write(out / META, json.dumps(meta, indent=1))  # the commit point
    shutil.rmtree(staging)
    return meta


def _no_trace(staging: Path, new_dirs: list[Path]) -> None:
    """After an error before the first checkpoint (e.g. a bad column in the first batch):
    removes the staging folder and the folders this call created, so bad input leaves no
    trace. Once state.json exists the work done is kept for the rerun."""
    if (staging / STATE).is_file():
        return
    shutil.rmtree(staging, ignore_errors=True)
    for d in reversed(new_dirs):
        try:
            d.rmdir()
        except OSError:  # not empty, or already gone
            pass


def _output_dir(cfg, out_dir: str | None) -> Path:
    if not (out_dir or cfg.shards_dir):
        raise ConfigError("config.data.shards_dir is empty; set the output folder.")
    if cfg.tokens_per_shard <= 0:
        raise ConfigError(f"config.data.tokens_per_shard={cfg.tokens_per_shard} must be > 0.")
    return Path(expand_path(out_dir or cfg.shards_dir, "shards_dir"))


def _write_error(e: OSError, out: Path, state: dict | None) -> DataError:
    done = sum(len(w["files"]) for w in (state or {}).get("writers", {}).values())
    where = f"{e.filename!r}" if e.filename else repr(str(out))
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DataError(f"No space left on the device of {str(out)!r} while writing {where}; "
                         "free space and rerun the same `--mode=prepare` command: it keeps the "
                         f"{done} finished shard(s) and resumes.")
    return DataError(f"Cannot write {where} ({e.strerror}); give a writable "
                     "config.data.shards_dir, then rerun `--mode=prepare` (it resumes).")


def prepare_shards(cfg, out_dir: str | None = None, progress: bool = True) -> dict:
    """Tokenizes the documents of `config.data` into a committed shards folder (see above).

    Args:
      cfg: `config.data` (source text | tfds | hf; see configs/common.py:data_config).
      out_dir: destination; default `cfg.shards_dir`.
      progress: a tqdm bar (documents, tokens, tokens/s, ETA) on stderr.
    Returns:
      the manifest also written to `out_dir/meta.json`.
    """
    out = _output_dir(cfg, out_dir)
    staging = out / PARTIAL
    source = doc_source(cfg)  # bad input is refused here, before anything is written
    start = time.perf_counter()
    new_dirs = [d for d in (*reversed(out.parents), out, staging) if not d.exists()]
    lock, state = None, None
    try:
        staging.mkdir(parents=True, exist_ok=True)
        lock = _lock(staging)  # a second prepare stops here, touching nothing
        state = read_state(staging / STATE)  # read under the lock: no other writer now
        tok = source_tokenizer(cfg, source, state)
        recipe = _recipe(cfg, source, tok)
        if state is not None:
            _check_same_recipe(state, recipe, staging)
        else:
            state = _new_state(cfg, source, tok, recipe)
        if state["phase"] == "tokenize":
            _tokenize(staging, state, source, tok, cfg, progress)
            state["meta"] = _final_meta(state, staging)
        meta = _commit(out, staging, state)
    except (OSError, GPT2JaxError) as e:
        if lock is not None:
            _no_trace(staging, new_dirs)
        if isinstance(e, OSError):
            raise _write_error(e, out, state) from None
        raise
    finally:
        if lock is not None:
            os.close(lock)
    meta = dict(meta, seconds=round(time.perf_counter() - start, 3))  # not written: meta.json
    return meta                                                      # is byte-reproducible
