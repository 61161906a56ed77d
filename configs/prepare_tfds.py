"""A TFDS text dataset -> token shards: `--config=configs/prepare_tfds.py:NAME`.

    tfds build tiny_shakespeare --data_dir=$HOME/tensorflow_datasets
    python run.py --mode=prepare --config=configs/prepare_tfds.py:tiny_shakespeare \
        --config.data.data_dir=$HOME/tensorflow_datasets

Reads `NAME` (default tiny_shakespeare) splits train/validation, feature `text`, from
`data_dir` and writes GPT-2 token shards to data/NAME/ ('/' in NAME becomes '_'). A dataset
prepared as ArrayRecord (`tfds build --file_format=array_record`) is read without
TensorFlow, from a local data_dir only (ArrayRecord cannot open gs://); one prepared as
TFRecord (the `tfds build` default), local or gs://, is read by tfds.load and needs
TensorFlow: `pip install -e ".[tfrecord]"`. For tiny_shakespeare: train 301,966 + val 18,066
tokens (TFDS splits the text 90/5/5; the test split is not written).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "tiny_shakespeare"
    c = ml_collections.ConfigDict()
    c.data = common.data_config(
        source="tfds",
        tfds_name=name,
        tfds_split_train="train",
        tfds_split_val="validation",
        tokenizer="gpt2",
        shards_dir=f"data/{name.replace('/', '_')}",
    )
    return c
