"""Local data for lm-eval task YAMLs (configs/lm_eval_tasks/): offline datasets read from the
gpt2jax data folder, named in a YAML as

    dataset_path: json
    dataset_kwargs:
      data_files: {test: lambada/lambada_test.jsonl}   # relative to the data folder
    custom_dataset: !function gpt2jax.eval.harness_data.load_json

lm-eval calls `custom_dataset(**metadata, **dataset_kwargs)`; the data folder is
`metadata["data_dir"]` (pass `TaskManager(metadata={"data_dir": ...})`), else the usual search
of `gpt2jax.data.resolve` ($GPT2JAX_DATA_DIR, the cache, a checksummed download). Absolute
paths are used as they are. `datasets` comes with lm-eval (the optional `eval` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

from gpt2jax.data import resolve
from gpt2jax.errors import DataError


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a jsonl file, one a line (blank lines skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i + 1} is not a JSON object: {e}.") from None
    if not rows:
        raise DataError(f"{path} holds no examples; each line must be a JSON object.")
    return rows


def wikitext_pages(text: str) -> list[str]:
    """A raw WikiText file split into articles as `EleutherAI/wikitext_document_level` does
    (lm-eval's `wikitext` documents): a page starts at each level-1 heading line
    (` = Title = `); lines keep their text and are joined with "\\n". WikiText-2 test: 62."""
    pages, lines = [], []
    for line in text.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    page = "\n".join(lines)
    if page.strip():
        pages.append(page)
    return pages


def _resolve(data_files, data_dir: str) -> dict[str, Path]:
    """{split: path} of `data_files` ({split: name} or one name for the test split)."""
    if isinstance(data_files, str):
        data_files = {"test": data_files}
    return {split: resolve.data_file(name, data_dir or "") for split, name in data_files.items()}


def _dataset_dict(splits: dict[str, list[dict]]):
    import datasets  # the optional `eval` extra (lm-eval depends on it)

    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def load_json(data_files, data_dir: str = "", **_metadata):
    """A `datasets.DatasetDict` of jsonl files ({split: name}), offline."""
    return _dataset_dict({k: read_jsonl(p) for k, p in _resolve(data_files, data_dir).items()})


def load_wikitext(data_files, data_dir: str = "", **_metadata):
    """A `datasets.DatasetDict` of raw WikiText files ({split: name}), one `{"page": text}`
    row per article (see `wikitext_pages`)."""
    splits = {}
    for split, path in _resolve(data_files, data_dir).items():
        text = Path(path).read_text(encoding="utf-8")
        splits[split] = [{"page": p} for p in wikitext_pages(text)]
    return _dataset_dict(splits)
