"""A TFDS builder for tests: tiny_shakespeare's splits, built from a local input.txt.

TFDS's own `tiny_shakespeare` downloads its text (no network here) and reads it with
`tf.io.gfile`; this builder is the same dataset (one example per split, 90/5/5 of the
characters, feature `text`) from the shared file, in either file format. Defined once:
TFDS refuses to register a builder name twice.
"""

from __future__ import annotations

import importlib.util

import tensorflow_datasets as tfds
from etils import epath


def splits(text: str) -> dict[str, str]:
    """tiny_shakespeare's split of the characters: train 90 %, validation 5 %, test 5 %."""
    i = int(len(text) * 0.9)
    j = i + int((len(text) - i) * 0.5)
    return {"train": text[:i], "validation": text[i:j], "test": text[j:]}


class LocalTinyShakespeare(tfds.core.GeneratorBasedBuilder):
    """`local_tiny_shakespeare`: tiny_shakespeare read from `SOURCE` (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    SOURCE = ""  # set before download_and_prepare

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        parts = splits(epath.Path(self.SOURCE).read_text())
        return {name: self._generate_examples(text) for name, text in parts.items()}

    def _generate_examples(self, text):
        yield 0, {"text": text}


def build(source: str, data_dir: str, file_format: str | None = None) -> epath.Path:
    """Prepares `local_tiny_shakespeare` from `source` under `data_dir`; its version folder.

    `file_format=None` is TFDS's default, TFRecord, which TensorFlow writes: a test that needs
    it fails (never skips) without the `tfrecord` extra.
    """
    if file_format in (None, "tfrecord"):
        assert importlib.util.find_spec("tensorflow"), (
            "TFRecord datasets need TensorFlow: pip install -e '.[tfrecord]' (tensorflow-cpu)")
    LocalTinyShakespeare.SOURCE = source
    kwargs = {"file_format": file_format} if file_format else {}
    builder = LocalTinyShakespeare(data_dir=data_dir, **kwargs)
    builder.download_and_prepare()
    return epath.Path(builder.data_dir)
