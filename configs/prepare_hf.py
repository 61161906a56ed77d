"""A Hugging Face dataset -> GPT-2 token shards: `--config=configs/prepare_hf.py:NAME`.

    python run.py --mode=prepare --config=configs/prepare_hf.py:fineweb10b      # llm.c's data
    python run.py --mode=prepare --config=configs/prepare_hf.py:owt             # nanoGPT's data
    python run.py --mode=prepare --config=configs/prepare_hf.py:parquet \
        --config.data.hf_data_files='corpus/*.parquet' --config.data.shards_dir=data/mine

NAME is one of fineweb10b (HuggingFaceFW/fineweb, sample-10BT: ~10B GPT-2 tokens, llm.c's
`dev/data/fineweb.py`), fineweb_edu10b (its -edu sibling), owt (Skylion007/openwebtext:
~9B tokens, nanoGPT's `data/openwebtext/prepare.py`), parquet / jsonl (local files). The
documents are streamed from the hub (`streaming=True`: no full download first, memory
independent of the corpus), tokenized on all cores and written as 100M-token shards to
data/NAME/; validation is a seeded fraction of whole documents (llm.c holds out its first
100M tokens, ~1%; nanoGPT 0.05% of the documents with seed 2357). Killed, the same command
resumes. Needs `pip install -e ".[hf]"`. Train on the result with
`--config=configs/gpt2.py:fineweb10b` (or `:owt`) `--config.data.shards_dir=data/NAME`.
"""

from __future__ import annotations

import ml_collections

from configs import common

# NAME -> the config.data fields that differ from common.data_config's defaults
RECIPES = {
    "fineweb10b": dict(hf_path="HuggingFaceFW/fineweb", hf_name="sample-10BT", val_fraction=0.01),
    "fineweb_edu10b": dict(hf_path="HuggingFaceFW/fineweb-edu", hf_name="sample-10BT",
                           val_fraction=0.01),
    "owt": dict(hf_path="Skylion007/openwebtext", val_fraction=0.0005, val_seed=2357),
    "parquet": dict(hf_path="parquet", val_fraction=0.01),   # + hf_data_files=PATH_OR_GLOB
    "jsonl": dict(hf_path="json", val_fraction=0.01),        # + hf_data_files=PATH_OR_GLOB
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "fineweb10b"
    if name not in RECIPES:
        raise ValueError(f"Unknown dataset {name!r}; use prepare_hf.py:{'|'.join(RECIPES)}.")
    c = ml_collections.ConfigDict()
    c.data = common.data_config(
        source="hf",
        tokenizer="gpt2",
        streaming=True,                      # read as it downloads; nothing cached twice
        tokens_per_shard=100_000_000,        # llm.c's shard size (200 MB of uint16)
        shards_dir=f"data/{name}",
        **RECIPES[name],
    )
    return c
