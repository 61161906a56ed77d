"""--mode=prepare is resumable and commits a shards folder as a whole.

- Killed at any point (every write, fsync, rename and delete of a re-prepare, one after the
  other, simulated by raising there) the folder reads as its previous dataset (before the
  commit point) or the new one (after it), or says that a prepare was interrupted (during
  the commit), never as a mix; run again, the prepare finishes with files
  byte-identical to an uninterrupted run's.
- A full disk (ENOSPC raised by a wrapper at the n-th os.write, for every n) is one line that
  names the disk and the fix; the previous dataset stays readable; the rerun is identical.
- SIGKILL of a real process (a child of the session's zygote) mid-shard (1,200 documents,
  GPT-2 BPE, small batches so that a small corpus has many checkpoints): the rerun keeps the
  finished shards (same inodes) and ends byte-identical to an uninterrupted run. (The hf
  source's resume, which skips rows of a streamed dataset, is tested in test_data_hf.py.)
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs import common
from gpt2jax import data
from gpt2jax.cli import CliArgs, run_mode
from gpt2jax.data import documents, prepare, shards
from gpt2jax.errors import DataError
from gpt2jax.data.sources import EOT_TEXT as EOT
from helpers import corpus_documents, file_digests

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 30
# Same length and layout, other characters: a re-prepare whose shards have the same sizes as
# the old ones (so only the manifest can tell them apart).
OTHER_TEXT = TEXT.replace("e", "E").replace("a", "@")


class Killed(BaseException):
    """Raised where the process is 'killed' (not an Exception: nothing may catch it)."""


def shards_config(text_file: Path, out: Path):
    return common.data_config(train_file=str(text_file), tokenizer="char", shards_dir=str(out),
                              tokens_per_shard=500)


def read_back(folder: Path) -> tuple[str, str]:
    tok, train, val, _ = shards.open_shards(str(folder))
    return tok.decode(train.to_numpy()), tok.decode(val.to_numpy())


def inject(monkeypatch, names: tuple[str, ...], at: int, error) -> dict:
    """Makes the `at`-th call (counted over `names` of `os`, main thread only) raise `error()`;
    returns the counter."""
    count = {"n": 0}
    main = threading.main_thread()
    for name in names:
        real = getattr(os, name)

        def wrapper(*args, _real=real, **kwargs):
            if threading.current_thread() is main:
                count["n"] += 1
                if count["n"] == at:
                    raise error()
            return _real(*args, **kwargs)
        monkeypatch.setattr(os, name, wrapper)
    return count


@pytest.fixture
def corpora(tmp_path):
    """(old text file, new text file, old folder prepared, reference folder of the new)."""
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text(TEXT)
    new.write_text(OTHER_TEXT)
    folder, ref = tmp_path / "shards", tmp_path / "ref"
    data.prepare_shards(shards_config(old, folder), progress=False)
    data.prepare_shards(shards_config(new, ref), progress=False)
    assert len(list(folder.glob("train_*.bin"))) == 4  # 1,800 train tokens in 500-token files
    return old, new, folder, ref


def _sweep(monkeypatch, corpora, tmp_path, names, error, check_error) -> int:
    """Re-prepares `new` over the old dataset with the n-th call of `names` failing, for
    n = 1, 2, ... until a prepare completes; returns the number of failed runs."""
    _, new, folder, ref = corpora
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    old_text, new_text, want = read_back(folder), read_back(ref), file_digests(ref)
    n = 0
    while True:
        n += 1
        shutil.rmtree(folder)
        shutil.copytree(saved, folder)
        with monkeypatch.context() as m:
            inject(m, names, n, error)
            try:
                data.prepare_shards(shards_config(new, folder), progress=False)
                break
            except (Killed, DataError) as e:
                check_error(e)
        try:  # the old or the new dataset exactly, or an "interrupted" refusal: never a mix
            assert read_back(folder) in (old_text, new_text), f"call {n}: reads mixed data"
        except DataError as e:
            assert "interrupted" in str(e) and "--mode=prepare" in str(e), (n, str(e))
        data.prepare_shards(shards_config(new, folder), progress=False)  # the rerun
        assert file_digests(folder) == want, f"call {n}: the rerun differs from a clean run"
    assert file_digests(folder) == want
    return n - 1


def test_killed_reprepare_never_reads_mixed_and_resumes_identically(corpora, tmp_path,
                                                                    monkeypatch):
    kills = _sweep(monkeypatch, corpora, tmp_path, ("write", "fsync", "replace", "unlink"),
                   Killed, lambda e: None)
    assert kills >= 20, kills  # every write, fsync, rename and delete of the run was hit


def test_full_disk_is_one_line_keeps_the_old_dataset_and_resumes(corpora, tmp_path,
                                                                 monkeypatch):
    def check(e):
        assert isinstance(e, DataError), repr(e)
        assert "No space left" in str(e) and "--mode=prepare" in str(e), str(e)
        assert "\n" not in str(e)

    enospc = lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # noqa: E731
    failures = _sweep(monkeypatch, corpora, tmp_path, ("write",), enospc, check)
    assert failures >= 5, failures


def test_changed_config_does_not_resume_someone_elses_prepare(corpora, tmp_path, monkeypatch):
    _, new, folder, _ = corpora
    with monkeypatch.context() as m:
        inject(m, ("unlink",), 1, Killed)  # the commit's first step (state.json is written)
        with pytest.raises(Killed):
            data.prepare_shards(shards_config(new, folder), progress=False)
    other = shards_config(new, folder)
    other.tokens_per_shard = 700
    with pytest.raises(DataError, match="interrupted prepare of another config.*"
                                        "tokens_per_shard.*delete"):
        data.prepare_shards(other, progress=False)
    data.prepare_shards(shards_config(new, folder), progress=False)  # the same config resumes


# ----------------------------------------------------------------------------- SIGKILL

def prepare_job(text_file: str, out: str, tokens_per_shard: int) -> None:
    """A zygote child: --mode=prepare's work on `text_file` into `out`, in small batches (a
    checkpoint every ~2 batches on this small corpus)."""
    documents.BATCH_DOCS = 16
    cfg = common.data_config(train_file=text_file, val_fraction=0.05,
                             tokens_per_shard=tokens_per_shard, shards_dir=out, num_threads=2)
    data.prepare_shards(cfg, progress=False)


def _inode(path: Path) -> int | None:
    return path.stat().st_ino if path.exists() else None


def _prepare(zygote, text: Path, out: Path, kill_delay: float | None = None) -> dict:
    """`prepare_job` in a zygote child; with `kill_delay`, SIGKILLed that many seconds after it
    wrote a checkpoint (a new state.json). Returns its exit code and what its staging folder
    held: {exit, files: {name: [size, inode]}, position, kept (the finished shards)}."""
    staging = out / "prepare.partial"
    before = _inode(staging / "state.json")
    zygote.start("test_prepare:prepare_job", [str(text), str(out), 8_000],
                 log=out.parent / f"{out.name}.log", timeout=300)
    result = None
    if kill_delay is not None:
        while _inode(staging / "state.json") == before and result is None:
            result = zygote.poll()
            time.sleep(0.002)
        if result is None:
            time.sleep(kill_delay)
            zygote.signal("SIGKILL")
    result = result or zygote.wait(300)
    seen = ({f.name: [f.stat().st_size, f.stat().st_ino] for f in staging.iterdir()}
            if staging.is_dir() else {})
    state = (json.loads((staging / "state.json").read_text())
             if (staging / "state.json").exists() else None)
    kept = [e["name"] for w in state["writers"].values() for e in w["files"]] if state else []
    return {"exit": result["exit"], "files": seen, "position": state and state["position"],
            "kept": kept}


def test_sigkill_mid_shard_resumes_byte_identical(zygote, data_dir, tmp_path):
    """Three prepares of one corpus, each SIGKILLed (a zygote child) at a seeded random moment
    once it has written a checkpoint, then one to the end: byte-identical to a clean run."""
    text = tmp_path / "corpus.txt"
    text.write_text(EOT.join(corpus_documents(data_dir, 1200)))
    out, ref = tmp_path / "shards", tmp_path / "ref"
    rng = random.Random(20261206)
    assert _prepare(zygote, text, ref)["exit"] == 0
    kills = [_prepare(zygote, text, out, rng.uniform(0.0, 0.05)) for _ in range(3)]
    final = _prepare(zygote, text, out)
    assert final["exit"] == 0, (out.parent / "shards.log").read_text()[-3000:]
    killed = [k for k in kills if k["exit"] == -signal.SIGKILL]
    assert len(killed) >= 2, kills
    mid_shard = [k for k in killed
                 if any(n.endswith(".bin.tmp") and 0 < s < 16_000 for n, (s, _) in
                        k["files"].items())]
    assert mid_shard, kills
    assert all(k["position"] for k in killed), "a kill came before the first checkpoint"
    assert file_digests(out) == file_digests(ref)  # byte-identical, meta.json included
    # the finished shards of the last kill were kept (moved, not rewritten): same inodes
    last = kills[-1]
    kept = {n: last["files"][n][1] for n in last["kept"]}
    assert kept and all((out / n).stat().st_ino == ino for n, ino in kept.items())
    meta = shards.read_meta(str(out))
    assert meta["num_tokens"] == sum(np.fromfile(out / e["name"], np.uint16).size
                                     for s in shards.SPLITS for e in meta["splits"][s]["files"])


def test_a_second_prepare_into_the_same_folder_is_refused(corpora, tmp_path):
    _, new, folder, _ = corpora
    staging = folder / shards.PARTIAL
    staging.mkdir()
    held = prepare._lock(staging)  # what a running prepare holds
    before = file_digests(folder)
    try:
        with pytest.raises(DataError, match="Another prepare is writing into.*shards_dir"):
            data.prepare_shards(shards_config(new, folder), progress=False)
    finally:
        os.close(held)
    assert (staging / "lock").exists() and file_digests(folder) == before  # nothing touched


def test_ctrl_c_is_one_line_and_the_rerun_resumes(corpora, monkeypatch):
    _, new, folder, ref = corpora
    config = ml_collections.ConfigDict({"data": shards_config(new, folder)})
    with monkeypatch.context() as m:
        inject(m, ("unlink",), 1, KeyboardInterrupt)  # Ctrl-C as the commit starts
        with pytest.raises(DataError, match=r"Interrupted: .*prepare.partial/ keeps the finished "
                                            r"shards; rerun the same `--mode=prepare`"):
            run_mode("prepare", config, CliArgs())
    assert (folder / shards.PARTIAL / "state.json").is_file()
    run_mode("prepare", config, CliArgs())
    assert file_digests(folder) == file_digests(ref)
