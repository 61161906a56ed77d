"""Where the training loop loses time: the loop's step vs a plain jit step, one process.

    GPT2JAX_DATA_DIR=../shared/data python bench/finetune_overhead.py
    python bench/finetune_overhead.py --steps=40 --repeats=2   # quicker

The model of issue 15.4: `configs/finetune.py` on a 2-layer, 128-wide GPT-2 with the full
50,257-token vocabulary (random weights saved as an HF directory, `init_from` it), batch
16 x 128 tokens of Tiny Shakespeare. Three ways to run the same steps, timed in turns in
this process (the machine is shared: compare the ratios, not the absolute numbers):

  loop     `train_and_evaluate` (data, metrics, logging), steady state between two flushes
  trainer  `Trainer.train_step` on one placed batch in a Python loop (the compiled step)
  plain    `jax.jit(value_and_grad + optax.adamw)` of `GPT2.apply`, the step a user writes

Prints tokens/s of each and the ratios plain/loop and plain/trainer: a ratio near 1 means
the loop adds nothing of its own; what a ratio above 1 is made of, the parts below say
(each timed alone: the step's own metrics, the dataset's next batch, placing it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo

from bench import hardware  # noqa: E402
from configs import finetune  # noqa: E402
from gpt2jax.nn.model import GPT2, GPT2Config, init_params  # noqa: E402
from gpt2jax.training.loop import train_and_evaluate  # noqa: E402
from gpt2jax.weights.pretrained import save_pretrained  # noqa: E402

B, T = 16, 128


def tiny_model_dir(root: Path, dropout: float) -> Path:
    """A random 2-layer, 128-wide GPT-2 with the full vocabulary, saved in HF layout."""
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=128, n_positions=T, embd_pdrop=dropout,
                     attn_pdrop=dropout, resid_pdrop=dropout)
    return save_pretrained(cfg, init_params(cfg, jax.random.PRNGKey(0)), root / "model")


def loop_config(model_dir: Path, steps: int, dropout: float):
    c = finetune.get_config()
    c.init_from = str(model_dir)
    c.data.train_file = "dataset:tinyshakespeare/input.txt"
    c.data.mode = "random"
    c.train.num_steps = steps
    c.train.eval_every = 0
    c.train.export_hf = False
    c.train.progress_bar = False
    c.train.peak_flops = 1e11  # skip the start-up matmul measurement
    c.checkpoint.save_every = 0
    c.checkpoint.keep_best = 0
    for k in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
        c.model[k] = dropout
    return c


def time_loop(model_dir: Path, steps: int, dropout: float, workdir: Path) -> tuple[float, dict]:
    """Seconds per step of the loop between the first and the last flush before the end."""
    config = loop_config(model_dir, steps, dropout)
    every = config.train.log_every
    stamps, held = {}, {}

    def hook(step, run):
        if step % every == 0:  # right after a flush, which waited for the device
            stamps[step] = time.perf_counter()
        held["run"] = run

    train_and_evaluate(config, workdir, hooks=[hook])
    first, last = every, (steps - 1) // every * every
    return (stamps[last] - stamps[first]) / (last - first), held["run"]


def time_trainer(run, steps: int) -> float:
    """Seconds per step of `Trainer.train_step` alone, on one placed batch."""
    trainer, state = run.trainer, run.state
    batch = trainer.put_batch(next(run.ds.train))
    state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = trainer.train_step(state, batch)
    jax.block_until_ready((state, m))
    run.state = state
    return (time.perf_counter() - t) / steps


def plain_step(cfg: GPT2Config):
    """The step a user writes: mean cross-entropy, value_and_grad, optax.adamw."""
    model = GPT2(cfg)
    tx = optax.adamw(5e-5, b2=0.999, weight_decay=0.0)
    dropout = max(cfg.embd_pdrop, cfg.attn_pdrop, cfg.resid_pdrop) > 0

    def loss_fn(params, x, y, rng):
        logits = model.apply({"params": params}, x, deterministic=not dropout,
                             rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state, x, y, i):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, jax.random.PRNGKey(i))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, step


def time_plain(cfg: GPT2Config, params, steps: int) -> float:
    tx, step = plain_step(cfg)
    opt_state = tx.init(params)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T)), jnp.int32)
    y = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T)), jnp.int32)
    params, opt_state, loss = step(params, opt_state, x, y, 0)
    loss.block_until_ready()
    t = time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, x, y, i)
    jax.block_until_ready((params, loss))
    return (time.perf_counter() - t) / steps


def time_parts(run, steps: int) -> dict:
    """Host-side parts of one loop step, each timed alone (seconds per step)."""
    out = {}
    t = time.perf_counter()
    batches = [next(run.ds.train) for _ in range(steps)]
    out["next(dataset)"] = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    placed = [run.trainer.put_batch(b) for b in batches]
    jax.block_until_ready(placed)
    out["put_batch"] = (time.perf_counter() - t) / steps
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100, help="steps per timed run (loop: total)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of loop/trainer/plain")
    p.add_argument("--dropout", type=float, default=0.0)
    a = p.parse_args()
    print(hardware.describe(), flush=True)
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} device(s), "
          f"{os.cpu_count()} cores, batch {B} x {T}, dropout {a.dropout}", flush=True)
    rates = {"loop": [], "trainer": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model_dir(Path(tmp), a.dropout)
        for r in range(a.repeats):
            s_loop, run = time_loop(model_dir, a.steps, a.dropout, Path(tmp) / f"run{r}")
            s_trainer = time_trainer(run, a.steps)
            params = jax.device_get(run.state.params)
            s_plain = time_plain(run.cfg, params, a.steps)
            for name, s in (("loop", s_loop), ("trainer", s_trainer), ("plain", s_plain)):
                rates[name].append(B * T / s)
            print(f"round {r}: tokens/s loop {B * T / s_loop:,.0f}, trainer "
                  f"{B * T / s_trainer:,.0f}, plain jit {B * T / s_plain:,.0f}", flush=True)
        parts = time_parts(run, 20)
    best = {k: max(v) for k, v in rates.items()}
    print("best of rounds, tokens/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in best.items()))
    print(f"ratio plain/loop {best['plain'] / best['loop']:.2f}x, plain/trainer "
          f"{best['plain'] / best['trainer']:.2f}x, trainer/loop "
          f"{best['trainer'] / best['loop']:.2f}x")
    print("host parts per step: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in parts.items())
          + f" (a step takes {B * T / best['loop'] * 1e3:.0f} ms in the loop)")


if __name__ == "__main__":
    main()
