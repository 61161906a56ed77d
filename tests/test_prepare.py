"""--mode=prepare is resumable and commits a shards folder as a whole.

- Killed at any point (every write, fsync, rename and delete of a re-prepare, one after the
  other, simulated by raising there) the folder reads as its previous dataset (before the
  commit point) or the new one (after it), or says that a prepare was interrupted (during
  the commit), never as a mix; run again, the prepare finishes with files
  byte-identical to an uninterrupted run's.
- A full disk (ENOSPC raised by a wrapper at the n-th os.write, for every n) is one line that
  names the disk and the fix; the previous dataset stays readable; the rerun is identical.
- SIGKILL of a real process mid-shard (1,200 documents, GPT-2 BPE, small batches so that
  a small corpus has many checkpoints): the rerun keeps the finished shards (same inodes)
  and ends byte-identical to an uninterrupted run. (The hf source's resume, which skips
  rows of a streamed dataset, is tested in test_data_hf.py.)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs import common
from gpt2jax import data
from gpt2jax.cli import CliArgs, run_mode
from gpt2jax.data import prepare, shards
from gpt2jax.errors import DataError
from gpt2jax.data.sources import EOT_TEXT as EOT
from helpers import REPO, corpus_documents

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 30
# Same length and layout, other characters: a re-prepare whose shards have the same sizes as
# the old ones (so only the manifest can tell them apart).
OTHER_TEXT = TEXT.replace("e", "E").replace("a", "@")


class Killed(BaseException):
    """Raised where the process is 'killed' (not an Exception: nothing may catch it)."""


def char_config(text_file: Path, out: Path):
    return common.data_config(train_file=str(text_file), tokenizer="char", shards_dir=str(out),
                              tokens_per_shard=500)


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


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
    data.prepare_shards(char_config(old, folder), progress=False)
    data.prepare_shards(char_config(new, ref), progress=False)
    assert len(list(folder.glob("train_*.bin"))) == 4  # 1,800 train tokens in 500-token files
    return old, new, folder, ref


def _sweep(monkeypatch, corpora, tmp_path, names, error, check_error) -> int:
    """Re-prepares `new` over the old dataset with the n-th call of `names` failing, for
    n = 1, 2, ... until a prepare completes; returns the number of failed runs."""
    _, new, folder, ref = corpora
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    old_text, new_text, want = read_back(folder), read_back(ref), tree_digest(ref)
    n = 0
    while True:
        n += 1
        shutil.rmtree(folder)
        shutil.copytree(saved, folder)
        with monkeypatch.context() as m:
            inject(m, names, n, error)
            try:
                data.prepare_shards(char_config(new, folder), progress=False)
                break
            except (Killed, DataError) as e:
                check_error(e)
        try:  # the old or the new dataset exactly, or an "interrupted" refusal: never a mix
            assert read_back(folder) in (old_text, new_text), f"call {n}: reads mixed data"
        except DataError as e:
            assert "interrupted" in str(e) and "--mode=prepare" in str(e), (n, str(e))
        data.prepare_shards(char_config(new, folder), progress=False)  # the rerun
        assert tree_digest(folder) == want, f"call {n}: the rerun differs from a clean run"
    assert tree_digest(folder) == want
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
            data.prepare_shards(char_config(new, folder), progress=False)
    other = char_config(new, folder)
    other.tokens_per_shard = 700
    with pytest.raises(DataError, match="interrupted prepare of another config.*"
                                        "tokens_per_shard.*delete"):
        data.prepare_shards(other, progress=False)
    data.prepare_shards(char_config(new, folder), progress=False)  # the same config resumes


# ----------------------------------------------------------------------------- SIGKILL

# Forks one child per prepare (imports paid once); kills children mid-shard at seeded random
# moments once their first shard is finished; reports what was on disk at each kill.
_ZYGOTE = r"""
import json, os, random, signal, sys, time
from pathlib import Path
from configs import common
from gpt2jax.data import documents
from gpt2jax.data.prepare import prepare_shards
documents.BATCH_DOCS = 16  # a checkpoint every ~2 batches on this small corpus
spec = json.loads(sys.argv[1])
rng = random.Random(spec["seed"])

def inode(path):
    return path.stat().st_ino if path.exists() else None

def run(out, kill):
    before = inode(Path(out) / "prepare.partial" / "state.json")
    pid = os.fork()
    if pid == 0:
        cfg = common.data_config(train_file=spec["file"], val_fraction=0.05,
                                 tokens_per_shard=spec["tokens_per_shard"], shards_dir=out,
                                 num_threads=2)
        prepare_shards(cfg, progress=False)
        os._exit(0)
    staging = Path(out) / "prepare.partial"
    if kill:  # once this child wrote a checkpoint (a new state.json), at a random moment
        while inode(staging / "state.json") == before and not os.waitpid(pid, os.WNOHANG)[0]:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    seen = {f.name: [f.stat().st_size, f.stat().st_ino] for f in staging.iterdir()} \
        if staging.is_dir() else {}
    state = json.loads((staging / "state.json").read_text()) \
        if (staging / "state.json").exists() else None
    kept = [e["name"] for w in state["writers"].values() for e in w["files"]] if state else []
    return {"status": status, "files": seen, "position": state and state["position"],
            "kept": kept}

report = {"reference": run(spec["ref"], False), "kills": []}
for _ in range(spec["kills"]):
    report["kills"].append(run(spec["out"], True))
report["final"] = run(spec["out"], False)
print(json.dumps(report))
"""


def test_sigkill_mid_shard_resumes_byte_identical(data_dir, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(EOT.join(corpus_documents(data_dir, 1200)))
    out, ref = tmp_path / "shards", tmp_path / "ref"
    spec = {"file": str(text), "tokens_per_shard": 8_000,
            "out": str(out), "ref": str(ref), "kills": 3, "seed": 20261206}
    proc = subprocess.run([sys.executable, "-c", _ZYGOTE, json.dumps(spec)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["reference"]["status"] == 0 and report["final"]["status"] == 0
    killed = [k for k in report["kills"] if os.WIFSIGNALED(k["status"])]
    assert len(killed) >= 2, report["kills"]
    mid_shard = [k for k in killed
                 if any(n.endswith(".bin.tmp") and 0 < s < 16_000 for n, (s, _) in
                        k["files"].items())]
    assert mid_shard, report["kills"]
    assert all(k["position"] for k in killed), "a kill came before the first checkpoint"
    assert tree_digest(out) == tree_digest(ref)  # byte-identical, meta.json included
    # the finished shards of the last kill were kept (moved, not rewritten): same inodes
    last = report["kills"][-1]
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
    before = tree_digest(folder)
    try:
        with pytest.raises(DataError, match="Another prepare is writing into.*shards_dir"):
            data.prepare_shards(char_config(new, folder), progress=False)
    finally:
        os.close(held)
    assert (staging / "lock").exists() and tree_digest(folder) == before  # nothing touched


def test_ctrl_c_is_one_line_and_the_rerun_resumes(corpora, monkeypatch):
    _, new, folder, ref = corpora
    config = ml_collections.ConfigDict({"data": char_config(new, folder)})
    with monkeypatch.context() as m:
        inject(m, ("unlink",), 1, KeyboardInterrupt)  # Ctrl-C as the commit starts
        with pytest.raises(DataError, match=r"Interrupted: .*prepare.partial/ keeps the finished "
                                            r"shards; rerun the same `--mode=prepare`"):
            run_mode("prepare", config, CliArgs())
    assert (folder / shards.PARTIAL / "state.json").is_file()
    run_mode("prepare", config, CliArgs())
    assert tree_digest(folder) == tree_digest(ref)
