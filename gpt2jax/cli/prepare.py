"""`python run.py --mode=prepare --config=configs/prepare_*.py`: documents -> token shards.

Tokenizes `config.data` (source text, tfds or hf) on all cores with a progress bar and
commits `train_*.bin`, `val_*.bin` and `meta.json` (their manifest: sizes, sha256, largest
ids) into `config.data.shards_dir` (or `--workdir`). Killed, the same command resumes
(gpt2jax.data.prepare).
"""

from __future__ import annotations

from gpt2jax.data import prepare_shards
from gpt2jax.data.shards import PARTIAL
from gpt2jax.errors import ConfigError, DataError


def main(config, args) -> dict:
    """Writes the shards and prints one summary line per split; returns the metadata."""
    if config.data.source == "shards":
        raise ConfigError("--mode=prepare reads documents: set config.data.source to 'text', "
                          "'tfds' or 'hf' (source 'shards' is what training reads afterwards).")
    out_dir = config.data.shards_dir or args.workdir
    if not out_dir:
        raise ConfigError("--mode=prepare needs an output folder: set config.data.shards_dir "
                          "or --workdir.")
    if "://" in out_dir:  # np.memmap and pathlib read and write local files only
        raise ConfigError(f"Shards folder {out_dir} is not a local folder; write the shards to "
                          "local disk, then copy them (e.g. `gcloud storage cp -r DIR gs://...`).")
    try:
        meta = prepare_shards(config.data, out_dir)
    except KeyboardInterrupt:  # Ctrl-C: what is kept and how to go on, not a traceback
        raise DataError(f"Interrupted: {out_dir}/{PARTIAL}/ keeps the finished shards; rerun "
                        "the same `--mode=prepare` command to resume.") from None
    tok = meta["tokenizer"]
    for split, info in meta["splits"].items():
        print(f"{split}: {info['num_tokens']:,} tokens, {info['num_documents']:,} documents in "
              f"{len(info['files'])} file(s) ({meta['dtype']}, tokenizer {tok['name']} vocab "
              f"{tok['vocab_size']}) from {info['origin']}")
    print(f"wrote {out_dir}/meta.json in {meta['seconds']} s")
    return meta
