"""Attention ablation on Tiny Shakespeare (GPT-2 tokens): one base config, named overrides.

    python run.py --mode=sweep --config=experiments/attention_ablation/sweep.py \
        --workdir=/tmp/attention_ablation
    python experiments/sweep_report.py experiments/attention_ablation   # table + plots
    python run.py --mode=sweep --config=experiments/attention_ablation/sweep.py:smoke \
        --workdir=/tmp/attention_smoke        # CI: 2 variants x 2 seeds, a few steps

Every variant trains with the same data, budget (steps x batch x block) and seeds; the
runner (`gpt2jax/cli/sweep.py`) calls `gpt2jax.training.loop.train_and_evaluate` once per
(variant, seed) in `<workdir>/<variant>/seed_<s>` and writes `results.json` to `results_dir`
(default sweep: this folder; smoke: the workdir); `experiments/sweep_report.py` turns it into
`results.md` and two PNGs. Expected
(default, idle 2-core CPU: ~26 min, 18 runs of ~85 s): see README.md in this folder.

Add a variant: `c.variants.<name> = ml_collections.ConfigDict({"model": {...}})`, a nested
override of the base config. Run a subset with `--config.only=gpt2,rope`.
"""

from __future__ import annotations

import ml_collections

from configs import common


def base_config(smoke: bool) -> ml_collections.ConfigDict:
    """The training config every variant starts from (a `--mode=train` config)."""
    c = ml_collections.ConfigDict()
    c.seed = 0                     # replaced by each entry of `seeds`
    c.init_from = ""               # random init
    c.model = common.model_config(
        n_positions=32 if smoke else 64,   # context (>= block_size)
        n_embd=32 if smoke else 64,        # small width: the 50,257-token head dominates cost
        n_layer=2,
        n_head=4,                  # 4 heads allow MQA (1 kv head) and GQA (2 kv heads)
        embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,  # no dropout: short runs
    )
    c.data = common.data_config(
        train_file="$GPT2JAX_DATA_DIR/tinyshakespeare/input.txt",
        tokenizer="gpt2",          # GPT-2 BPE tokens (338,025 for the whole file)
        val_fraction=0.1,          # last 10% of the text is validation (nanoGPT split)
        prefetch=0,                # no background thread: timings measure the step only
    )
    c.train = common.train_config(
        batch_size=4 if smoke else 8,
        grad_accum_steps=1,
        block_size=32 if smoke else 64,
        num_steps=6 if smoke else 100,   # 51,200 tokens: the whole sweep fits 30 min
        learning_rate=2e-3,
        min_learning_rate=2e-4,
        warmup_steps=2 if smoke else 20,
        lr_decay_steps=0,          # cosine to min_learning_rate at num_steps
        beta2=0.99,
        log_every=1,               # sync every step: the sweep times steps from a hook
        eval_every=3 if smoke else 20,
        eval_batches=2 if smoke else 8,
        peak_flops=1e11,           # fixed (no matmul measurement per run); MFU is not compared
        export_hf=False,
        progress_bar=False,
    )
    c.checkpoint = common.checkpoint_config(save_every=0, keep=1, keep_best=0, async_save=False)
    c.mesh = common.mesh_config()
    return c


def _variant(**model) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"model": model})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"Unknown attention_ablation variant {arg!r}; use '' or 'smoke'.")
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.base = base_config(smoke)
    c.seeds = (0, 1)               # every variant runs with each seed (init + batch order)
    c.baseline = "gpt2"            # the row the others are compared with
    c.only = ""                    # comma-separated subset of variant names; "" = all
    c.results_dir = ""             # under the --workdir ("" = itself); absolute: as it is
    c.variants = ml_collections.ConfigDict()  # name -> nested override of `base`
    c.variants.gpt2 = _variant()                              # learned positions, MHA, pre-LN
    c.variants.mqa = _variant(n_kv_heads=1)                   # multi-query: one kv head
    if not smoke:
        c.variants.gqa = _variant(n_kv_heads=2)               # grouped-query: 2 kv heads
        c.variants.rope = _variant(position="rope")           # rotary, no wpe
        c.variants.alibi = _variant(position="alibi")         # linear biases, no wpe
        c.variants.nope = _variant(position="none")           # no positional signal at all
        c.variants.window16 = _variant(sliding_window=16)     # local attention, 16 tokens
        c.variants.post_ln = _variant(norm_position="post")   # original-Transformer blocks
        c.variants.qk_norm = _variant(qk_norm=True)           # LayerNorm on q and k
    return c
