"""nanoGPT's character-level Shakespeare: `--config=configs/shakespeare_char.py[:cpu]`.

Default: the "baby GPT" of nanoGPT's config/train_shakespeare_char.py (6 layers, 6 heads,
384 dims, block 256, batch 64, lr 1e-3 -> 1e-4 over 5,000 iters, warmup 100, beta2 0.99,
dropout 0.2). nanoGPT reports val 1.4697 after 5,000 iters on one A100:

    python run.py --mode=train --config=configs/shakespeare_char.py --workdir=/tmp/shakespeare

`:cpu`: nanoGPT's README CPU recipe (4 layers, 4 heads, 128 dims, block 64, batch 12,
2,000 iters, lr decay over 2,000, dropout 0, eval 20 batches). nanoGPT reports val ~1.88;
here it reaches val <= 1.89 in a few minutes on a laptop CPU (see
experiments/shakespeare_char_cpu/README.md for the measured curve and tokens/s):

    python run.py --mode=train --config=configs/shakespeare_char.py:cpu --workdir=/tmp/sc
    python run.py --mode=generate --config=configs/shakespeare_char.py:cpu \
        --config.init_from=/tmp/sc --prompt="ROMEO:"

Needs nothing but the install: Tiny Shakespeare ships inside the package
(`dataset:tinyshakespeare/input.txt`, see docs/data.md). The vocabulary is the corpus's
65 characters (model.vocab_size = 65, checked against the tokenizer at start).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "cpu"):
        raise ValueError(f"Unknown shakespeare_char variant {arg!r}; use '' or 'cpu'.")
    cpu = arg == "cpu"
    c = ml_collections.ConfigDict()
    c.seed = 1337                  # PRNG seed: init, dropout, batch order (nanoGPT's seed)
    c.init_from = ""               # "" = random init; an HF dir / "gpt2" / a training
    #                                workdir (e.g. runs/sc) to start from or generate with
    dropout = 0.0 if cpu else 0.2
    c.model = common.model_config(
        vocab_size=65,             # characters of Tiny Shakespeare
        n_positions=64 if cpu else 256,
        n_layer=4 if cpu else 6,
        n_head=4 if cpu else 6,
        n_embd=128 if cpu else 384,
        embd_pdrop=dropout, attn_pdrop=dropout, resid_pdrop=dropout,
    )
    c.data = common.data_config(
        # ships with the package; $GPT2JAX_DATA_DIR / the cache win when they hold it
        train_file="dataset:tinyshakespeare/input.txt",
        tokenizer="char",          # nanoGPT's prepare.py: sorted set of characters
        val_fraction=0.1,          # last 10% of the characters (nanoGPT)
    )
    c.train = common.train_config(
        batch_size=12 if cpu else 64,
        grad_accum_steps=1,
        block_size=64 if cpu else 256,
        num_steps=2000 if cpu else 5000,
        learning_rate=1e-3,
        min_learning_rate=1e-4,
        warmup_steps=100,
        lr_decay_steps=2000 if cpu else 5000,
        beta2=0.99,                # small batches: nanoGPT raises beta2
        log_every=10,
        eval_every=250,
        eval_batches=20 if cpu else 200,
        sample_tokens=200,         # show a sample at each eval
        steps_per_call=10 if cpu else 1,  # CPU: 10 steps per jitted call (same updates, faster)
    )
    c.checkpoint = common.checkpoint_config(save_every=250, keep=2, keep_best=1)
    c.mesh = common.mesh_config()
    c.generate = common.generate_config()
    c.generate.eos_token_id = ml_collections.FieldReference(None, field_type=int)  # no EOS
    c.generate.pad_token_id = 0
    c.generate.max_new_tokens = 50 if cpu else 240  # prompt + new <= n_positions (64 / 256)
    c.generate.do_sample = True
    c.generate.temperature = 0.8
    c.generate.top_k = 200
    return c
