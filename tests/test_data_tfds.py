"""TFDS source offline: `tfds.testing.mock_data`, and a dataset built locally from input.txt.

The local builder writes ArrayRecord files and reads them with `tfds.data_source`, so
neither step needs TensorFlow or network.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from configs import common
from gpt2jax import data
from gpt2jax.data import shards
from gpt2jax.errors import DataError


class LocalTinyShakespeare(tfds.core.GeneratorBasedBuilder):
    """tiny_shakespeare's 90/5/5 character split, read from a local input.txt (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    SOURCE = ""  # set before download_and_prepare

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        text = epath.Path(self.SOURCE).read_text()
        i = int(len(text) * 0.9)
        j = i + int((len(text) - i) * 0.5)
        return {"train": self._generate_examples(text[:i]),
                "validation": self._generate_examples(text[i:j]),
                "test": self._generate_examples(text[j:])}

    def _generate_examples(self, text):
        yield 0, {"text": text}


@pytest.fixture(scope="module")
def local_tfds(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    LocalTinyShakespeare.SOURCE = str(data_dir / "tinyshakespeare" / "input.txt")
    builder = LocalTinyShakespeare(data_dir=str(root), file_format="array_record")
    builder.download_and_prepare()
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
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()
    i = int(len(text) * 0.9)
    j = i + int((len(text) - i) * 0.5)
    cfg = _tfds_config(tfds_name="local_tiny_shakespeare", data_dir=str(local_tfds),
                       shards_dir=str(tmp_path))
    ds = data.build_datasets(cfg, 64, 4, seed=0, process_index=0, process_count=1)
    np.testing.assert_array_equal(ds.train_stream.to_numpy(), tokenizer.encode_ordinary(text[:i]))
    np.testing.assert_array_equal(ds.val_stream.to_numpy(), tokenizer.encode_ordinary(text[i:j]))
    meta = shards.prepare_shards(cfg, progress=False)  # TFDS -> shards, as --mode=prepare
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
