"""`DataConfig`: `config.data` as a frozen, typed value, read once at the edge of a run.

The fields and their defaults are `configs/common.py:data_config()`'s (a test ties the two);
a config that lacks one is refused with its name. The choices (`source`, `tokenizer`, `mode`,
`encoding_errors`) are validated here, once. The data package reads a `DataConfig` (or the
`ConfigDict` it came from: both have the same attributes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gpt2jax.data.batching import check_mode
from gpt2jax.data.corpus import check_source
from gpt2jax.data.tokenizers import check_tokenizer_name
from gpt2jax.errors import ConfigError

ENCODING_ERRORS = ("strict", "replace")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where text comes from, how it is tokenized and packed (configs/common.py comments)."""

    source: str
    train_file: str
    val_file: str
    val_fraction: float
    encoding_errors: str
    tfds_name: str
    tfds_split_train: str
    tfds_split_val: str
    tfds_feature: str
    data_dir: str
    tfds_download: bool
    hf_path: str
    hf_name: str
    hf_data_files: str
    hf_split: str
    hf_val_split: str
    text_column: str
    streaming: bool
    val_seed: int
    shards_dir: str
    tokens_per_shard: int
    num_threads: int
    verify_shards: bool
    tokenizer: str
    tiktoken_ranks: str
    mode: str
    num_epochs: int
    shuffle: bool
    prefetch: int

    def __post_init__(self):
        check_source(self.source)
        check_tokenizer_name(self.tokenizer)
        check_mode(self.mode)
        if self.encoding_errors not in ENCODING_ERRORS:
            raise ConfigError(f"config.data.encoding_errors={self.encoding_errors!r} is unknown; "
                              f"use one of {ENCODING_ERRORS}.")

    @classmethod
    def from_config(cls, data_config: Any) -> DataConfig:
        """`config.data` (a ConfigDict, or a DataConfig as it is) as a DataConfig."""
        if isinstance(data_config, cls):
            return data_config
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data_config]
        if missing:
            raise ConfigError(f"config.data is missing {missing}; build it with "
                              "configs/common.py:data_config() (every field has a default).")
        unknown = sorted(set(data_config.keys()) - set(names))
        if unknown:
            raise ConfigError(f"config.data has unknown keys {unknown}; see "
                              "configs/common.py:data_config() for the fields.")
        return cls(**{n: data_config[n] for n in names})

    def replace(self, **changes) -> DataConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)
