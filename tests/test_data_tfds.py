"""TFDS source offline: `tfds.testing.mock_data`, and a dataset built locally from input.txt.

The local builder writes ArrayRecord files (read by `tfds.data_source`: no TensorFlow) and
TFRecord files, the `tfds build` default, which need TensorFlow both to write and to read
(`tfds.load`): those tests need the `tfrecord` extra (`pip install -e ".[tfrecord]"`).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_local

from configs import common, shakespeare_char
from gpt2jax import data
from gpt2jax.data import shards
from gpt2jax.errors import DataError
from gpt2jax.training.loop import train_and_evaluate


@pytest.fixture(scope="module")
def local_tfds(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    tfds_local.build(str(data_dir / "tinyshakespeare" / "input.txt"), str(root), "array_record")
    return root


@pytest.fixture(scope="module")
def tfrecord_tfds(data_dir, tmp_path_factory):
    """The same dataset prepared as TFRecord (TFDS's default format), written by TensorFlow."""
    root = tmp_path_factory.mktemp("tfds_tfrecord")
    version = tfds_local.build(str(data_dir / "tinyshakespeare" / "input.txt"), str(root))
    files = sorted(p.name for p in version.iterdir())
    assert [f for f in files if "tfrecord" in f] == [
        f"local_tiny_shakespeare-{s}.tfrecord-00000-of-00001"
        for s in ("test", "train", "validation")], files
    return root


def _tfds_config(**kw):
    return common.data_config(source="tfds", **kw)


def test_mock_data_texts_joined_with_eot():
    cfg = _tfds_config(tfds_name="lm1b", tfds_split_train="train", tfds_split_val="test")
    with tfds.testing.mock_data(num_examples=40):
        texts = [r["text"] for r in tfds.data_source("lm1b", split="train")]
        ds = data.build_datasets(cfg, 8, 4, seed=0, process_index=0, process_count=1)
    tok = ds.tokenizer
    expect = []
    for i, t in enumerate(texts):
        expect += ([tok.eot_id] if i else []) + tok.encode(t)
    np.testing.assert_array_equal(ds.train_stream.to_numpy(), expect)
    b = next(ds.train)
    assert b["inputs"].shape == (4, 8)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])


def test_local_tfds_matches_the_text_file(local_tfds, data_dir, tokenizer, tmp_path):
    parts = tfds_local.splits((data_dir / "tinyshakespeare" / "input.txt").read_text())
    cfg = _tfds_config(tfds_name="local_tiny_shakespeare", data_dir=str(local_tfds),
                       shards_dir=str(tmp_path))
    ds = data.build_datasets(cfg, 64, 4, seed=0, process_index=0, process_count=1)
    for stream, split in ((ds.train_stream, "train"), (ds.val_stream, "validation")):
        np.testing.assert_array_equal(stream.to_numpy(), tokenizer.encode_ordinary(parts[split]))
    meta = data.prepare_shards(cfg, progress=False)  # TFDS -> shards, as --mode=prepare
    assert meta["splits"]["val"]["origin"] == "tfds:local_tiny_shakespeare/validation"
    _, train, _, _ = shards.open_shards(str(tmp_path))
    np.testing.assert_array_equal(train.to_numpy(), ds.train_stream.to_numpy())


def test_tfds_errors_name_dataset_and_split(local_tfds, tmp_path):
    def build(**kw):
        return data.build_datasets(_tfds_config(**kw), 8, 2, 0, process_index=0,
                                   process_count=1)

    with pytest.raises(DataError, match="'no_such_dataset'.*no such TFDS dataset"):
        build(tfds_name="no_such_dataset", data_dir=str(local_tfds))
    with pytest.raises(DataError, match="split 'nope'.*Unknown split.*tfds_split_train"):
        build(tfds_name="local_tiny_shakespeare", tfds_split_train="nope",
              data_dir=str(local_tfds))
    with pytest.raises(DataError, match="'tiny_shakespeare'.*not prepared.*array_record"):
        build(tfds_name="tiny_shakespeare", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="no feature 'content'"):
        build(tfds_name="local_tiny_shakespeare", tfds_feature="content",
              data_dir=str(local_tfds))


def test_tfrecord_dataset_reads_through_tensorflow_and_trains(tfrecord_tfds, data_dir, tmp_path):
    parts = tfds_local.splits((data_dir / "tinyshakespeare" / "input.txt").read_text())
    c = shakespeare_char.get_config("cpu")  # char vocabulary: exact text back, a tiny model
    c.data.update(source="tfds", tfds_name="local_tiny_shakespeare", data_dir=str(tfrecord_tfds),
                  prefetch=0)
    ds = data.build_datasets(c.data, 32, 8, seed=0, process_index=0, process_count=1)
    assert "tensorflow" in sys.modules  # read by tfds.load, not the TF-free data source
    assert ds.tokenizer.decode(ds.train_stream.to_numpy()) == parts["train"]
    assert ds.tokenizer.decode(ds.val_stream.to_numpy()) == parts["validation"]

    c.model.update(n_layer=1, n_head=2, n_embd=32, n_positions=32)
    c.train.update(batch_size=8, block_size=32, num_steps=3, lr_decay_steps=3, warmup_steps=1,
                   log_every=1, eval_every=3, eval_batches=1, sample_tokens=0,
                   export_hf=False, progress_bar=False)
    c.checkpoint.update(save_every=3, keep=1, keep_best=0)
    result = train_and_evaluate(c, tmp_path / "run")
    assert result["step"] == 3 and math.isfinite(result["val_loss"])
    assert data.load_tokenizer(tmp_path / "run" / "tokenizer.json").chars == ds.tokenizer.chars


def test_tfrecord_without_tensorflow_says_how_to_read_it(tfrecord_tfds, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as on a machine without TF
    cfg = _tfds_config(tfds_name="local_tiny_shakespeare", data_dir=str(tfrecord_tfds))
    with pytest.raises(DataError, match="stored as TFRecord.*tensorflow-cpu.*array_record"):
        data.build_datasets(cfg, 8, 2, seed=0, process_index=0, process_count=1)
