"""TensorFlow Datasets source: the text feature of a split, read from a local or gs:// data_dir.

`tfds.data_source` reads datasets prepared in the ArrayRecord format by random access and
needs no TensorFlow. Datasets prepared as TFRecord (the default of `tfds build`, and most
public buckets) need `tfds.load`, hence TensorFlow; we fall back to it when it is installed
and otherwise say how to re-prepare with `--file_format=array_record`.
"""

from __future__ import annotations

from collections.abc import Iterator

from gpt2jax.errors import DataError


def _describe(name: str, split: str, data_dir: str) -> str:
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
    return f"TFDS dataset {name!r} split {split!r} in {where}"


def _as_text(value, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    if hasattr(value, "item"):  # numpy scalar of bytes
        return _as_text(value.item(), what)
    raise DataError(f"{what}: the feature is a {type(value).__name__}, not text; set "
                    "config.data.tfds_feature to a Text feature (e.g. 'text').")


def _has_array_record(info) -> bool:
    """Whether a prepared dataset's files include ArrayRecord (`tfds.data_source` reads only
    those; asking it for a TFRecord-only dataset fails with a file-format ValueError)."""
    import tensorflow_datasets as tfds

    return tfds.core.FileFormat.ARRAY_RECORD in info.available_file_formats()


def _open_source(name: str, split: str, data_dir: str, download: bool):
    """A random-access data source, or None when the data is prepared as TFRecord."""
    import tensorflow_datasets as tfds

    what = _describe(name, split, data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"{what}: no such TFDS dataset; check config.data.tfds_name against "
                        "`tfds.list_builders()` (e.g. tiny_shakespeare, lm1b, c4/en).") from None
    if builder.is_prepared() and not _has_array_record(builder.info):
        return None  # TFRecord (the `tfds build` default): random access needs ArrayRecord
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=download,
                                builder_kwargs={"file_format": "array_record"})
    except (NotImplementedError, KeyError):
        if builder.is_prepared():
            return None  # prepared, but not readable by random access: try tfds.load
        raise DataError(
            f"{what}: the dataset is not prepared there. Prepare it with `tfds build "
            f"{name} --file_format=array_record --data_dir=DIR` and set "
            "config.data.data_dir=DIR, or set config.data.tfds_download=True."
        ) from None
    except ValueError as e:
        raise DataError(f"{what}: {e} Set config.data.tfds_split_train / tfds_split_val to "
                        "one of the dataset's splits (slices like 'train[:90%]' work).") from None


def _tfrecord_texts(name: str, split: str, feature: str, data_dir: str) -> Iterator[str]:
    import tensorflow_datasets as tfds

    what = _describe(name, split, data_dir)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise DataError(
            f"{what} is stored as TFRecord, which needs TensorFlow (`pip install "
            "tensorflow-cpu`); or re-prepare it with `tfds build "
            f"{name} --file_format=array_record` and read it without TensorFlow."
        ) from None
    ds = tfds.load(name, split=split, data_dir=data_dir or None, download=False)
    for example in tfds.as_numpy(ds):
        yield _as_text(example[feature], what)


def tfds_texts(name: str, split: str, feature: str, data_dir: str = "",
               download: bool = False) -> Iterator[str]:
    """Yields the `feature` text of every example of `name`/`split`, in dataset order.

    Args:
      name: TFDS name, optionally with config/version (`c4/en:3.1.0`).
      split: split or slice (`train`, `validation`, `train[:90%]`).
      feature: name of a Text feature (`text`).
      data_dir: local path or `gs://bucket/path`; "" = TFDS default.
      download: let TFDS download and prepare a missing dataset (needs network).
    """
    if not name:
        raise DataError("config.data.tfds_name is empty; set it (e.g. 'tiny_shakespeare').")
    what = _describe(name, split, data_dir)
    source = _open_source(name, split, data_dir, download)
    if source is None:
        yield from _tfrecord_texts(name, split, feature, data_dir)
        return
    n = len(source)
    if n == 0:
        raise DataError(f"{what} has no examples; choose a non-empty split.")
    for i in range(n):
        record = source[i]
        if feature not in record:
            raise DataError(f"{what} has no feature {feature!r} (it has "
                            f"{sorted(record)}); set config.data.tfds_feature.")
        yield _as_text(record[feature], what)
