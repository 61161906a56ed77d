"""A TFDS text dataset -> token shards: `--config=configs/prepare_tfds.py:NAME`.

    python run.py --mode=prepare --config=configs/prepare_tfds.py:lm1b \
        --config.data.data_dir=gs://my-bucket/tensorflow_datasets

Reads `NAME` (default tiny_shakespeare) splits train/validation, feature `text`, from
`data_dir` (prepared in ArrayRecord format: no TensorFlow needed; TFRecord needs it) and
writes GPT-2 token shards to data/NAME/. For tiny_shakespeare: 338,025 tokens in total
(TFDS splits it 90/5/5, so train + validation hold 95 % of them).
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
