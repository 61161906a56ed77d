"""Attention study: position schemes and length extrapolation, KV-head variants and the
conversion of a trained multi-head model to GQA/MQA. One base config, named overrides.

    python run.py --mode=sweep --config=experiments/attention_ablation/sweep.py \
        --workdir=/tmp/attention_study --config.results_dir=$PWD/experiments/attention_ablation
    python experiments/sweep_report.py experiments/attention_ablation   # tables + plots
    python run.py --mode=sweep --config=experiments/attention_ablation/sweep.py:smoke \
        --workdir=/tmp/attention_smoke            # CI: seconds
    python run.py --mode=sweep --config=experiments/attention_ablation/sweep.py:gpt2_small \
        --config.base.data.shards_dir=/data/owt --workdir=/ckpt/study   # 124M, accelerators

The first command takes ~1 h on an idle 2-core CPU and is resumable; `results_dir` is
relative to the workdir unless absolute. Default: character-level Tiny Shakespeare (65
characters, the last 10 % is validation), a 4-layer, 128-wide, 8-head model trained at 128
characters for 600 steps of 16 x 128 (1.23M characters, 1.2 epochs of the training text), 3
seeds per variant. Each run reports its val loss at the trained length, its perplexity on
the validation text at 1x, 2x, 4x and 8x that length (disjoint windows, as Press et al. 2022
evaluate; learned positions stop at 1x), training tokens/s, KV-cache bytes per token and
decode tokens/s. Then the multi-head baseline of each seed is converted to 4, 2 and 1
key/value heads by mean-pooling, first head and random init (Ainslie et al. 2023), measured
before and after 30 steps (5 %) of uptraining. The runner is `gpt2jax/cli/sweep.py` (+
`sweep_measure.py`); the report `experiments/sweep_report.py`. Results: README.md in this
folder.

`:gpt2_small` is the same study at GPT-2 124M on token shards (`--mode=prepare` output),
trained at 512 tokens and evaluated at 512 / 1024 / 2048 / 4096, on every device of the
mesh (tests/test_sweep.py lowers its train steps on 8 simulated devices).

Add a variant: `c.variants.<name> = ml_collections.ConfigDict({"model": {...}})`, a nested
override of the base config. Run a subset with `--config.only=gpt2,rope`.
"""

from __future__ import annotations

import ml_collections

from configs import common

SCALES = ("", "smoke", "gpt2_small")


def _cpu_base(smoke: bool) -> ml_collections.ConfigDict:
    """The training config every variant starts from (a `--mode=train` config)."""
    c = ml_collections.ConfigDict()
    c.seed = 0                     # replaced by each entry of `seeds`
    c.init_from = ""               # random init
    c.model = common.model_config(
        vocab_size=65,             # Tiny Shakespeare's characters
        n_positions=32 if smoke else 128,  # the trained context (= block_size)
        n_embd=32 if smoke else 128,
        n_layer=1 if smoke else 4,
        n_head=8,                  # 8 heads: GQA at 4 and 2 kv heads, MQA at 1
        embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,  # no dropout: ~2 epochs
        attention_impl="blocked",  # exact; the fastest causal kernel on a CPU (bench/)
    )
    c.data = common.data_config(
        train_file="dataset:tinyshakespeare/input.txt",  # ships with the package
        tokenizer="char",          # nanoGPT's shakespeare_char: one token per character
        val_fraction=0.1,          # last 10 % of the text is validation (111,540 chars)
        prefetch=0,                # no background thread: timings measure the step only
    )
    c.train = common.train_config(
        batch_size=8 if smoke else 16,
        grad_accum_steps=1,
        block_size=32 if smoke else 128,
        num_steps=4 if smoke else 600,
        learning_rate=2e-3,
        min_learning_rate=2e-4,
        warmup_steps=1 if smoke else 30,
        lr_decay_steps=0,          # cosine to min_learning_rate at num_steps
        beta2=0.99,                # small batches (nanoGPT's shakespeare_char)
        log_every=1,               # sync every step: the sweep times steps from a hook
        eval_every=2 if smoke else 150,
        eval_batches=2 if smoke else 8,  # 8 x 16 x 128 = 16,384 fixed val tokens
        peak_flops=1e11,           # fixed (no matmul measurement per run); MFU is not compared
        export_hf=False,
        progress_bar=False,
    )
    c.checkpoint = common.checkpoint_config(save_every=0, keep=1, keep_best=0, async_save=False)
    c.mesh = common.mesh_config()
    return c


def _gpt2_small_base() -> ml_collections.ConfigDict:
    """GPT-2 124M trained at 512 tokens on shards, bfloat16 compute, the whole mesh."""
    c = _cpu_base(smoke=False)
    c.model = common.model_config(**common.GPT2_SIZES["small"], n_positions=512,
                                  vocab_size=50304,  # padded to a multiple of 64 (speed)
                                  embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,
                                  dtype="bfloat16", attention_impl="xla")
    c.data = common.data_config(source="shards", shards_dir="")  # --config.base.data.shards_dir
    c.train.update(batch_size=128, block_size=512, num_steps=5000, learning_rate=6e-4,
                   min_learning_rate=6e-5, warmup_steps=250, beta2=0.95, eval_every=500,
                   eval_batches=20, peak_flops=0.0, loss_chunk_size=1024)
    c.checkpoint.update(save_every=1000, async_save=True)
    return c


def _measure(scale: str) -> ml_collections.ConfigDict:
    """What each run reports besides its val loss (gpt2jax/cli/sweep_measure.py)."""
    trained = {"": 128, "smoke": 32, "gpt2_small": 512}[scale]
    c = ml_collections.ConfigDict()
    c.eval_lengths = tuple(trained * k for k in (1, 2, 4, 8))  # Press et al.'s 1x..8x
    c.eval_tokens = 4096 if scale == "smoke" else 0  # first N val tokens scored (0 = all)
    c.eval_batch_size = 8          # windows per forward pass
    c.decode_tokens = 16 if scale == "smoke" else trained - 1  # greedy, batch 1, timed
    return c


def _kv_conversion(scale: str, n_head: int, steps: int) -> ml_collections.ConfigDict:
    """The second table: the baseline's seeds converted to fewer kv heads, then uptrained."""
    c = ml_collections.ConfigDict()
    c.source = "gpt2"              # the multi-head variant converted ("" = no table)
    c.groups = (n_head // 2, n_head // 4, 1)  # GQA, GQA, MQA
    c.methods = ("mean", "first", "random")  # Ainslie et al. 2023, Figure 4
    if scale == "smoke":  # one conversion per seed: every code path, a few seconds
        c.groups, c.methods = (2,), ("mean",)
    c.uptrain_steps = max(2, steps // 20)  # 5 % of pretraining (the paper's alpha = 0.05)
    c.uptrain_learning_rate = 6e-5 if scale == "gpt2_small" else 3e-4  # then cosine to min
    return c


def _variant(**model) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"model": model})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    scale = arg or ""
    if scale not in SCALES:
        raise ValueError(f"Unknown attention_ablation scale {arg!r}; use one of {SCALES}.")
    c = ml_collections.ConfigDict()
    c.base = _gpt2_small_base() if scale == "gpt2_small" else _cpu_base(scale == "smoke")
    c.seeds = (0, 1) if scale == "smoke" else (0, 1, 2)  # init + batch order
    c.baseline = "gpt2"            # the row the others are compared with
    c.only = ""                    # comma-separated subset of variant names; "" = all
    c.results_dir = ""             # under the --workdir ("" = itself); absolute: as it is
    c.measure = _measure(scale)
    c.kv_conversion = _kv_conversion(scale, c.base.model.n_head, c.base.train.num_steps)
    c.variants = ml_collections.ConfigDict()  # name -> nested override of `base`
    c.variants.gpt2 = _variant()                              # learned positions, MHA, pre-LN
    c.variants.alibi = _variant(position="alibi")             # linear biases, no wpe
    if scale != "smoke":
        c.variants.sinusoidal = _variant(position="sinusoidal")  # Vaswani et al., fixed
        c.variants.rope = _variant(position="rope")           # rotary, no wpe
        c.variants.nope = _variant(position="none")           # no positional signal at all
        c.variants.mqa = _variant(n_kv_heads=1)               # multi-query, trained as such
    return c
