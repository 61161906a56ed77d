"""Hugging Face `datasets` source (`config.data.source="hf"`): hub datasets and local files.

The fields are `datasets.load_dataset`'s own arguments:

    hf_path        a hub name (`HuggingFaceFW/fineweb-edu`, `Skylion007/openwebtext`) or one
                   of HF's generic builders for local files: parquet | json | arrow | csv | text
    hf_name        the dataset configuration (`sample-10BT`), "" = its default
    hf_data_files  a path or glob of local files (generic builders; `$VARS` expanded)
    hf_split       the split to read (`train`)
    hf_val_split   a named validation split; "" = hold out `val_fraction` of the documents
                   of `hf_split` by a seeded hash of their index (`val_seed`)
    text_column    the column holding each document's text
    streaming      read as an `IterableDataset` (no Arrow copy on disk, memory independent
                   of the corpus size); False = download and convert to Arrow first

`datasets` is an optional dependency: `pip install -e ".[hf]"`. Offline, a hub name is
read from HF's own cache (`HF_HUB_OFFLINE=1`), as `datasets` does.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import numpy as np

from gpt2jax.data import documents, sources
from gpt2jax.data.documents import TRAIN, VAL, DocSource
from gpt2jax.errors import ConfigError, DataError

LOCAL_BUILDERS = ("parquet", "json", "arrow", "csv", "text")
READ_BATCH = 1024  # rows per datasets batch


def import_datasets():
    """The `datasets` module, or a ConfigError naming the extra that installs it."""
    try:
        import datasets
    except ImportError:
        raise ConfigError('config.data.source="hf" needs the Hugging Face `datasets` package; '
                          'install it with `pip install -e ".[hf]"`.') from None
    return datasets


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 240 else text[:239] + "…"


def _describe(cfg, split: str) -> str:
    name = f" config {cfg.hf_name!r}" if cfg.hf_name else ""
    files = f" files {cfg.hf_data_files!r}" if cfg.hf_data_files else ""
    return f"Hugging Face dataset {cfg.hf_path!r}{name}{files} split {split!r}"


def data_files(cfg) -> list[str] | str | None:
    """The files of a generic builder (resolved and sorted here, so errors name the field),
    a hub dataset's own pattern as given, or None."""
    if not cfg.hf_path:
        raise ConfigError("config.data.hf_path is empty; set a hub dataset name (e.g. "
                          "'HuggingFaceFW/fineweb-edu') or one of "
                          f"{LOCAL_BUILDERS} with config.data.hf_data_files=PATH_OR_GLOB.")
    if cfg.hf_path in LOCAL_BUILDERS:
        if not cfg.hf_data_files:
            raise ConfigError(f"config.data.hf_path={cfg.hf_path!r} reads local files; set "
                              "config.data.hf_data_files to a path or glob.")
        return sources.resolve_files(cfg.hf_data_files, "hf_data_files")
    return cfg.hf_data_files or None


def load_split(cfg, split: str, files):
    """`datasets.load_dataset` of one split as an IterableDataset of the text column, and its
    number of rows when known (else None)."""
    datasets = import_datasets()
    what = _describe(cfg, split)
    kwargs = dict(name=cfg.hf_name or None, split=split, streaming=cfg.streaming)
    if files:
        kwargs["data_files"] = files
    try:
        ds = datasets.load_dataset(cfg.hf_path, **kwargs)
    except ValueError as e:
        if "split" in str(e).lower():
            raise DataError(f"{what}: {_first_line(e)} Set config.data.hf_split / "
                            "hf_val_split to one of its splits.") from None
        raise DataError(f"{what} cannot be loaded: {_first_line(e)} Check config.data.hf_path "
                        "and hf_name.") from None
    except (datasets.exceptions.DatasetNotFoundError, ConnectionError, FileNotFoundError) as e:
        raise DataError(
            f"{what} cannot be loaded: {_first_line(e)} Check config.data.hf_path and hf_name; "
            "offline, point hf_path=parquet|json|arrow and hf_data_files at a local copy, or "
            "set HF_HUB_OFFLINE=1 to read HF's cache.") from None
    rows = _known_rows(ds, split, files, cfg)
    if not cfg.streaming:
        ds = ds.to_iterable_dataset()  # one reading path; the Arrow file stays memory-mapped
    columns = ds.column_names
    if columns is not None and cfg.text_column not in columns:
        raise DataError(f"{what} has no column {cfg.text_column!r} (it has {columns}); set "
                        "config.data.text_column.")
    return (ds.select_columns([cfg.text_column]) if columns is not None else ds), rows


def _texts(ds, cfg, what: str, start: int) -> Iterator[str]:
    """The documents of a loaded split from row `start`; a null text is an empty document.

    A read error becomes one DataError; `datasets`' own ERROR log of it is silenced while
    reading (it would print the same failure a second time, as a log line)."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        for batch in ds.skip(start).iter(batch_size=READ_BATCH):
            if cfg.text_column not in batch:
                raise DataError(f"{what} has no column {cfg.text_column!r} (it has "
                                f"{sorted(batch)}); set config.data.text_column.")
            for text in batch[cfg.text_column]:
                if text is not None and not isinstance(text, str):
                    raise DataError(f"{what}: column {cfg.text_column!r} holds "
                                    f"{type(text).__name__} values, not text; set "
                                    "config.data.text_column to the text column.")
                yield text or ""
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001  (pyarrow / datasets / json errors while reading)
        raise DataError(f"{what} could not be read: {type(e).__name__}: {_first_line(e)} "
                        "Check the files (a damaged or truncated parquet/jsonl?).") from None
    finally:
        logger.setLevel(level)


def hf_source(cfg) -> DocSource:
    """The `hf` source of `config.data` as a DocSource (see the module docstring)."""
    files = data_files(cfg)
    train_ds, rows = load_split(cfg, cfg.hf_split, files)
    val_ds, val_rows = load_split(cfg, cfg.hf_val_split, files) if cfg.hf_val_split else (None, 0)
    identity = {"hf": [cfg.hf_path, cfg.hf_name, cfg.hf_split, cfg.hf_val_split,
                       cfg.text_column],
                "files": documents.file_identity(files) if isinstance(files, list) else files}
    where = f"hf:{cfg.hf_path}" + (f"/{cfg.hf_name}" if cfg.hf_name else "")
    if val_ds is not None:
        origin = {"train": f"{where}/{cfg.hf_split}", "val": f"{where}/{cfg.hf_val_split}"}
    else:
        if not 0.0 < cfg.val_fraction < 1.0:
            raise ConfigError(f"config.data.val_fraction={cfg.val_fraction} must lie in (0, 1) "
                              "when no hf_val_split is given; set it (e.g. 0.0005).")
        identity["holdout"] = [cfg.val_fraction, cfg.val_seed]
        origin = {"train": f"{1 - cfg.val_fraction:g} of the documents of {where}/"
                           f"{cfg.hf_split} (seed {cfg.val_seed})",
                  "val": f"{cfg.val_fraction:g} of the documents of {where}/{cfg.hf_split} "
                         f"(seed {cfg.val_seed})"}
    train_what = _describe(cfg, cfg.hf_split)

    def read(start: int) -> Iterator[documents.Batch]:
        if val_ds is not None:  # the named train split, then the named val split
            tagged = itertools.chain(((TRAIN, t) for t in _texts(train_ds, cfg, train_what, 0)),
                                     ((VAL, t) for t in _texts(
                                         val_ds, cfg, _describe(cfg, cfg.hf_val_split), 0)))
            return documents.batches(documents.skip(tagged, start))
        return _held_out(_texts(train_ds, cfg, train_what, start), start, cfg)

    return DocSource(read, origin, identity,
                     None if rows is None or val_rows is None else rows + val_rows)


def _held_out(texts: Iterator[str], start: int, cfg) -> Iterator[documents.Batch]:
    """Batches of `texts` (documents start, start+1, ...) tagged by `holdout_mask`."""
    position = start
    for _, docs in documents.batches((TRAIN, t) for t in texts):
        mask = documents.holdout_mask(position, len(docs), cfg.val_fraction, cfg.val_seed)
        yield np.where(mask, VAL, TRAIN).astype(np.int8), docs
        position += len(docs)


def _known_rows(ds, split: str, files, cfg) -> int | None:
    """Rows of a loaded split for the progress bar's ETA: an Arrow dataset's length, the
    footers of local parquet files, or the dataset card's count; None when unknown."""
    if hasattr(ds, "num_rows"):
        return ds.num_rows
    if cfg.hf_path == "parquet" and isinstance(files, list):
        import pyarrow.parquet as pq  # installed with datasets

        rows = 0
        for f in files:
            try:
                rows += pq.ParquetFile(f).metadata.num_rows
            except Exception as e:  # noqa: BLE001  (pyarrow's errors: a damaged footer)
                raise DataError(f"{f} is not a readable parquet file ({type(e).__name__}: "
                                f"{_first_line(e)}); check or re-download it.") from None
        return rows
    splits = getattr(getattr(ds, "info", None), "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    return info.num_examples if info is not None and info.num_examples else None
