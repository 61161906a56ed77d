"""The Hugging Face datasets source (`config.data.source="hf"`) on files the tests write.

Parquet (a glob of several files, streamed or converted to Arrow), jsonl (another text
column), a hub name through HF's own offline cache (`HF_HUB_OFFLINE=1`, a named validation
split), the errors a user meets, and the resume of a streamed source. The reference for the
tokens is tiktoken's `encode_ordinary` of each document, EOT between documents.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import common
from gpt2jax import data
from gpt2jax.data import documents, shards
from gpt2jax.errors import ConfigError, DataError
from helpers import REPO, corpus_documents, write_parquet

EOT = 50256


def hf_config(files: str, out: Path | str = "", **overrides):
    fields = dict(source="hf", hf_path="parquet", hf_data_files=files, shards_dir=str(out),
                  tokens_per_shard=20_000, val_fraction=0.1, prefetch=0)
    return common.data_config(**{**fields, **overrides})


def expected_splits(docs: list[str], tokenizer, fraction=0.1, seed=2357):
    """(train ids, val ids): tiktoken of each document, EOT between, split by document."""
    held = documents.holdout_mask(0, len(docs), fraction, seed)
    out = []
    for want in (False, True):
        ids: list[int] = []
        for doc, h in zip(docs, held):
            if h == want and doc:
                ids += ([EOT] if ids else []) + tokenizer.encode_ordinary(doc)
        out.append(np.asarray(ids))
    return out, held


@pytest.fixture(scope="module")
def parquet_corpus(data_dir, tmp_path_factory):
    """Three parquet files (360 documents of real text; one null and one empty text)."""
    folder = tmp_path_factory.mktemp("parquet")
    docs = [corpus_documents(data_dir, 120, seed=i) for i in range(3)]
    docs[1][7], docs[1][8] = None, ""
    for i, part in enumerate(docs):
        write_parquet(folder / f"part-{i:02d}.parquet", part, row_group_size=50)
    return folder, [d or "" for part in docs for d in part]


def test_parquet_glob_shards_equal_tiktoken_per_document(parquet_corpus, tokenizer, tmp_path):
    folder, docs = parquet_corpus
    meta = data.prepare_shards(hf_config(str(folder / "*.parquet"), tmp_path / "s"),
                               progress=False)
    (train_ids, val_ids), held = expected_splits(docs, tokenizer)
    text = np.array([bool(d) for d in docs])  # a null and an empty text: no document
    assert 0.05 < held.mean() < 0.15 and text.sum() == len(docs) - 2
    assert meta["splits"]["val"]["num_documents"] == (held & text).sum()
    assert meta["splits"]["train"]["num_documents"] == (~held & text).sum()
    _, train, val, _ = shards.open_shards(str(tmp_path / "s"))
    np.testing.assert_array_equal(train.to_numpy(), train_ids)
    np.testing.assert_array_equal(val.to_numpy(), val_ids)
    assert len(meta["splits"]["train"]["files"]) >= 3  # several 20,000-token shards
    # not streamed (Arrow on disk first): the same bytes
    data.prepare_shards(hf_config(str(folder / "*.parquet"), tmp_path / "a", streaming=False),
                        progress=False)
    for f in meta["splits"]["train"]["files"] + meta["splits"]["val"]["files"]:
        name = f["name"]
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "s" / name).read_bytes()
    # training straight from the source reads the same tokens
    ds = data.build_datasets(hf_config(str(folder / "*.parquet")), 64, 4, seed=0,
                             process_index=0, process_count=1)
    np.testing.assert_array_equal(ds.train_stream.to_numpy(), train_ids)


def test_jsonl_with_another_text_column(data_dir, tokenizer, tmp_path):
    docs = corpus_documents(data_dir, 40, seed=5)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"content": d, "n": i}) + "\n" for i, d in enumerate(docs)))
    cfg = hf_config(str(path), tmp_path / "s", hf_path="json", text_column="content",
                    val_fraction=0.25)
    data.prepare_shards(cfg, progress=False)
    (train_ids, val_ids), _ = expected_splits(docs, tokenizer, fraction=0.25)
    _, train, val, _ = shards.open_shards(str(tmp_path / "s"))
    np.testing.assert_array_equal(train.to_numpy(), train_ids)
    np.testing.assert_array_equal(val.to_numpy(), val_ids)


def test_streamed_source_resumes_byte_identical(parquet_corpus, tmp_path, monkeypatch):
    """Killed after each of its first shards (simulated), the rerun skips the rows already
    read (`IterableDataset.skip`) and ends with the bytes of an uninterrupted run."""
    folder, _ = parquet_corpus
    pattern = str(folder / "*.parquet")
    monkeypatch.setattr(documents, "BATCH_DOCS", 32)  # several checkpoints on 360 documents
    data.prepare_shards(hf_config(pattern, tmp_path / "ref", tokens_per_shard=8000),
                        progress=False)
    want = {p.name: p.read_bytes() for p in (tmp_path / "ref").iterdir()}
    real_replace = os.replace

    class Killed(BaseException):
        pass

    for kill_at in (3, 6, 9):  # the n-th rename: of a finished shard or of a state.json
        calls = {"n": 0}

        def replace(*args):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise Killed()
            return real_replace(*args)
        out = tmp_path / f"out{kill_at}"
        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            data.prepare_shards(hf_config(pattern, out, tokens_per_shard=8000), progress=False)
        monkeypatch.setattr(os, "replace", real_replace)
        state = json.loads((out / shards.PARTIAL / "state.json").read_text())
        data.prepare_shards(hf_config(pattern, out, tokens_per_shard=8000), progress=False)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == want, kill_at
        assert state["position"] > 0


def _hub_cache(cache: Path, files: dict[str, Path]) -> None:
    """What `load_dataset("HuggingFaceFW/fineweb-edu", "sample-10BT")` leaves in HF's cache
    (Arrow files + dataset_info.json under `HuggingFaceFW___fineweb-edu/sample-10BT/...`),
    built offline with the parquet builder from local `files` ({split: file})."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    builder = Parquet(cache_dir=str(cache), dataset_name="fineweb-edu", config_name="sample-10BT",
                      data_files={k: [str(v)] for k, v in files.items()}, hash="0" * 16)
    builder.download_and_prepare()
    name_dir = cache / "fineweb-edu"
    (config_dir,) = list(name_dir.iterdir())
    config_dir.rename(name_dir / "sample-10BT")  # a hub config's folder has the plain name
    name_dir.rename(cache / "HuggingFaceFW___fineweb-edu")


def test_hub_name_reads_hf_offline_cache_with_named_val_split(data_dir, tokenizer, tmp_path):
    train_docs, val_docs = corpus_documents(data_dir, 60, seed=1), corpus_documents(data_dir, 8)
    cache = tmp_path / "hf_cache"
    _hub_cache(cache, {"train": write_parquet(tmp_path / "train.parquet", train_docs),
                       "validation": write_parquet(tmp_path / "val.parquet", val_docs)})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache),
           "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "shards"
    # one interpreter (datasets reads HF_HUB_OFFLINE / HF_DATASETS_CACHE at import) runs
    # --mode=prepare of configs/prepare_hf.py:fineweb_edu10b, then of :owt (not cached)
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_PREPARE, str(out), str(tmp_path / "owt")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hf:HuggingFaceFW/fineweb-edu/sample-10BT/validation" in proc.stdout
    _, train, val, meta = shards.open_shards(str(out))
    for stream, docs in ((train, train_docs), (val, val_docs)):
        want = []
        for d in docs:
            want += ([EOT] if want else []) + tokenizer.encode_ordinary(d)
        np.testing.assert_array_equal(stream.to_numpy(), want)
    # offline, a name that is not cached is one line naming the dataset and the way out
    error = proc.stdout.strip().splitlines()[-1]
    assert error.startswith("DataError: ") and "Skylion007/openwebtext" in error, error
    assert "hf_data_files" in error and "HF_HUB_OFFLINE" in error
    assert not (tmp_path / "owt").exists()


_OFFLINE_PREPARE = """
import sys
from configs import prepare_hf
from gpt2jax.cli import CliArgs, run_mode
from gpt2jax.errors import DataError
config = prepare_hf.get_config("fineweb_edu10b")
config.data.update(shards_dir=sys.argv[1], hf_val_split="validation")
run_mode("prepare", config, CliArgs())
config = prepare_hf.get_config("owt")
config.data.shards_dir = sys.argv[2]
try:
    run_mode("prepare", config, CliArgs())
except DataError as e:
    print(f"DataError: {e}")
"""


def test_errors_name_the_field_and_the_fix(parquet_corpus, tmp_path, monkeypatch):
    folder, _ = parquet_corpus
    pattern = str(folder / "*.parquet")

    def prepare(**kw):
        data.prepare_shards(hf_config(pattern, tmp_path / "out", **kw), progress=False)

    with pytest.raises(DataError, match="no column 'body'.*'text'.*config.data.text_column"):
        prepare(text_column="body")
    with pytest.raises(DataError, match="column 'id' holds int values.*text_column"):
        prepare(text_column="id")
    with pytest.raises(DataError, match="No file matches config.data.hf_data_files"):
        prepare(hf_data_files=str(tmp_path / "*.parquet"))
    with pytest.raises(ConfigError, match="hf_data_files"):
        prepare(hf_data_files="")
    with pytest.raises(DataError, match="split 'validation'.*hf_split"):
        prepare(hf_val_split="validation")
    with pytest.raises(ConfigError, match="val_fraction=0.0"):
        prepare(val_fraction=0.0)
    assert not (tmp_path / "out").exists()  # bad input leaves no trace
    monkeypatch.setitem(sys.modules, "datasets", None)  # as without the extra
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[hf\]"'):
        prepare()


def test_damaged_parquet_is_one_line(parquet_corpus, tmp_path):
    folder, _ = parquet_corpus
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    f = bad / "part-01.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(DataError, match="part-01.parquet is not a readable parquet file"):
        data.prepare_shards(hf_config(str(bad / "*.parquet"), tmp_path / "out"), progress=False)
