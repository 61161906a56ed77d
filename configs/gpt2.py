"""GPT-2 at the four released sizes: `--config=configs/gpt2.py:small|medium|large|xl`.

Generate from released weights (downloads on a machine with internet, or a local path):

    python run.py --mode=generate --config=configs/gpt2.py:small \
        --config.init_from=gpt2 --prompt="The quick brown fox jumps over the"

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
    c.init_from = ""               # HF dir / .safetensors / name like "gpt2"; "" = random init
    c.seed = 0                     # PRNG seed for parameter init
    c.tokenizer = "gpt2"           # tokenizer name (see gpt2jax.tokenizer)
    c.generate = common.generate_config()
    c.mesh = common.mesh_config()
    return c
