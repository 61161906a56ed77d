"""GPT-2 at the four released sizes, `--config=configs/gpt2.py:small|medium|large|xl`, and the
two 124M reproduction recipes, `--config=configs/gpt2.py:owt|fineweb10b`.

Generate from released weights (downloads on a machine with internet, or a local path):

    python run.py --mode=generate --config=configs/gpt2.py:small \
        --config.init_from=gpt2 --prompt="The quick brown fox jumps over the"

Parameter counts (LM head tied): small 124,439,808; medium 354,823,168;
large 774,030,080; xl 1,557,611,200; the recipes pad the vocabulary to 50,304 rows
(nanoGPT's and llm.c's choice: 1.20x faster on an H200): 124,475,904.

**fineweb10b**, llm.c's GPT-2 124M (scripts/run_gpt2_124M.sh): FineWeb's 10B-token sample,
524,288 tokens per step (512 x 1,024 in 8 micro-batches of 64), lr 6e-4 after 700 warmup
steps, cosine to 0 at step 18,865 (10B tokens), weight decay 0.1 (embeddings too), no dropout;
every 250 steps val loss (20 batches) and HellaSwag (lm-eval's `hellaswag`, all 10,042
validation items, through gpt2jax's lm-eval backend). llm.c reports val loss ~3.28 and
HellaSwag 29.9 (acc_norm of its own eval; OpenAI's GPT-2 124M: 29.4):

    python run.py --mode=prepare --config=configs/prepare_hf.py:fineweb10b
    python run.py --mode=train --config=configs/gpt2.py:fineweb10b --workdir=runs/fineweb10b

**owt**, nanoGPT's (config/train_gpt2.py): OpenWebText, 491,520 tokens per step (480 x 1,024),
lr 6e-4, warmup 2,000, cosine to 6e-5 at 600,000 steps (295B tokens), weight decay 0.1, no
dropout, val loss every 1,000 steps (200 batches). nanoGPT reports val ~2.85 at 600k steps:

    python run.py --mode=prepare --config=configs/prepare_hf.py:owt
    python run.py --mode=train --config=configs/gpt2.py:owt --workdir=runs/owt

Both use bf16 compute with fp32 parameters. On NVIDIA GPUs add
`--config.model.attention_impl=cudnn` (1.76x the step with `xla`, bench/README.md).
Projected wall time, from our measured 500,164 tokens/s (124M, bf16, cudnn, vocab 50,304,
64 x 1,024 tokens per micro-step, one H200: bench/README.md), evaluations not counted:
fineweb10b 5.5 h, owt 6.8 days on one H200. Cloud TPU (not measured: a projection that
assumes the H200's 44% MFU against each chip's data-sheet bf16 peak): v4-8 (4 x 275
TFLOP/s) fineweb10b 4.9 h, owt 6.1 days; v5e-8 (8 x 197 TFLOP/s) fineweb10b 3.4 h, owt 4.3
days. (`RECIPES`, `projected_hours` hold the numbers; tests/test_recipes.py checks this text.)
"""

from __future__ import annotations

import ml_collections

from configs import common

# The measured rate the projections start from (bench/README.md, H200 2026-11-30, call (2):
# cudnn, vocab 50,304, batch 64 x 1,024, the lowest of the three runs) and the bf16 data-sheet
# peaks (TFLOP/s) of one H200 and of the TPU slices.
H200_TOKENS_PER_S = 500_164
PEAK_TFLOPS = {"H200": 989.0, "TPU v4-8": 4 * 275.0, "TPU v5e-8": 8 * 197.0}

# name -> (config.train overrides, config.train.lm_eval overrides, published anchor)
RECIPES = {
    "fineweb10b": (
        dict(batch_size=512, grad_accum_steps=8, num_steps=18_865, lr_decay_steps=18_865,
             learning_rate=6e-4, min_learning_rate=0.0, warmup_steps=700, eval_every=250,
             eval_batches=20),
        dict(tasks="hellaswag", limit=0, batch_size=32),
        "llm.c: val loss ~3.28, HellaSwag 29.9 (OpenAI GPT-2 124M: 29.4)"),
    "owt": (
        dict(batch_size=480, grad_accum_steps=10, num_steps=600_000, lr_decay_steps=600_000,
             learning_rate=6e-4, min_learning_rate=6e-5, warmup_steps=2000, eval_every=1000,
             eval_batches=200),
        dict(tasks=""),
        "nanoGPT: val loss ~2.85 after 600k steps"),
}


def projected_hours(name: str, machine: str = "H200") -> float:
    """Hours of training steps of recipe `name` on `machine` at the measured H200 rate,
    scaled by the machine's bf16 peak (equal MFU assumed: a projection off the H200)."""
    train = RECIPES[name][0]
    tokens = train["num_steps"] * train["batch_size"] * 1024
    rate = H200_TOKENS_PER_S * PEAK_TFLOPS[machine] / PEAK_TFLOPS["H200"]
    return tokens / rate / 3600


def _recipe(c: ml_collections.ConfigDict, name: str) -> None:
    train, lm_eval, _ = RECIPES[name]
    c.model.update(vocab_size=50304, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,
                   dtype="bfloat16", attention_impl="xla")
    c.train.update(decay_embeddings=True, **train)  # nanoGPT and llm.c decay every 2-D tensor
    c.train.lm_eval.update(lm_eval)
    c.data.shards_dir = f"data/{name}"  # where configs/prepare_hf.py:NAME writes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "small"
    if name not in common.GPT2_SIZES and name not in RECIPES:
        raise ValueError(f"Unknown GPT-2 size {name!r}; choose one of "
                         f"{sorted(common.GPT2_SIZES)} or a recipe {sorted(RECIPES)}.")
    c = ml_collections.ConfigDict()
    c.model = common.model_config(**common.GPT2_SIZES.get(name, common.GPT2_SIZES["small"]))
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
    if name in RECIPES:
        _recipe(c, name)
    return c
