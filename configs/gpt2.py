"""GPT-2 at the four released sizes: `--config=configs/gpt2.py:small|medium|large|xl`.

Generate from released weights (downloads on a machine with internet, or a local path):

    python run.py --mode=generate --config=configs/gpt2.py:small \
        --config.init_from=gpt2 --prompt="The quick brown fox jumps over the"

Train from scratch on token shards (nanoGPT's OpenWebText recipe, 8 x A100 class; nanoGPT
reaches val ~2.85 after 600k steps; set model dropout to 0 as nanoGPT does):

    python run.py --mode=train --config=configs/gpt2.py:small --workdir=/tmp/gpt2 \
        --config.data.shards_dir=/data/owt --config.model.embd_pdrop=0 \
        --config.model.attn_pdrop=0 --config.model.resid_pdrop=0

Parameter counts (LM head tied): small 124,439,808; medium 354,823,168;
large 774,030,080; xl 1,557,611,200.
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size = arg or "small"
    if size not in common.GPT2_SIZES:
        raise ValueError(f"Unknown GPT-2 size {size!r}; choose one of {sorted(common.GPT2_SIZES)}.")
    c = ml_collections.ConfigDict()
    c.model = common.model_config(**common.GPT2_SIZES[size])
    c.init_from = ""               # HF dir / weights file / hub name ("gpt2") / a training
    #                                workdir (its latest checkpoint); "" = random init
    c.seed = 0                     # PRNG seed for parameter init
    c.generate = common.generate_config()
    c.mesh = common.mesh_config()
    # Training (python run.py --mode=train): nanoGPT's 124M OpenWebText recipe on token
    # shards (~0.5M tokens per step: 480 x 1024 via 40 micro-batches, lr 6e-4, warmup 2,000,
    # cosine to 6e-5 over 600,000 steps, weight decay 0.1). The defaults of train_config().
    c.train = common.train_config()
    c.data = common.data_config(
        source="shards",           # folder written by --mode=prepare (e.g. OpenWebText)
        shards_dir="",             # required for training: --config.data.shards_dir=DIR
    )
    c.checkpoint = common.checkpoint_config()
    return c
