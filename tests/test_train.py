"""Training step: learning, jit-once + donation, exact gradient accumulation, mesh equivalence,
the optimizer's schedule and decay mask, the finite-update flag, and the loop's out-of-memory
message and padded vocabulary. (Bad batch and mesh sizes are catalogue cases in
test_bad_inputs_*.py; the NaN guard is test_nan_guard.py.)"""

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from configs import common
from gpt2jax.parallel import sharding
from gpt2jax.training import step as train
from gpt2jax.nn.model import GPT2Config
from helpers import char_config

CFG = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                 embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
RULES = sharding.rules(common.mesh_config())


def train_cfg(**kw) -> train.TrainConfig:
    base = dict(batch_size=8, grad_accum_steps=1, block_size=16, num_steps=10,
                learning_rate=3e-3, min_learning_rate=3e-4, warmup_steps=0, lr_decay_steps=10,
                schedule="cosine", weight_decay=0.1, decay_embeddings=False, beta1=0.9,
                beta2=0.95, eps=1e-8, grad_clip=1.0)
    return train.TrainConfig(**dict(base, **kw))


def make_batch(b: int, t: int = 16, seed: int = 0, ragged: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, CFG.vocab_size, (b, t + 1)).astype(np.int32)
    w = np.ones((b, t), np.float32)
    if ragged:  # different token counts per row: accumulation must weight by tokens
        for i in range(b):
            w[i, t - 2 * i % t:] = 0.0
    return {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": w}


def mesh_of(data: int, fsdp: int, tensor: int):
    n = data * fsdp * tensor
    return sharding.make_mesh(ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor)),
                              devices=jax.devices()[:n])


def test_loss_falls_jits_once_and_donates():
    tc = train_cfg(learning_rate=1e-2, schedule="constant")
    trainer = train.Trainer(CFG, tc, mesh_of(1, 1, 1), RULES)
    state = trainer.init(0)
    batch = trainer.put_batch(make_batch(8))
    losses = []
    for _ in range(10):
        old = state
        state, m = trainer.train_step(state, batch)
        losses.append(float(m["loss_sum"] / m["weight_sum"]))
    assert losses[0] == pytest.approx(math.log(64), abs=0.3)  # ~uniform at init
    assert losses[-1] < losses[0] - 1.5, losses
    assert trainer.compile_count() == 1
    assert all(x.is_deleted() for x in jax.tree.leaves(old.params))  # donated
    assert int(state.step) == 10


def test_lowered_train_step_compiles_to_the_same_update():
    """`lower_train_step().compile()` (the bench's compile timing and memory analysis) runs
    the same update as `train_step`, on a 2-device mesh."""
    trainer = train.Trainer(CFG, train_cfg(), mesh_of(2, 1, 1), RULES)
    batch = trainer.put_batch(make_batch(8))
    compiled = trainer.lower_train_step(trainer.init(0), batch).compile()
    assert sharding.memory_analysis(compiled)["temp"] > 0
    got_state, got = compiled(trainer.init(0), batch)
    want_state, want = trainer.train_step(trainer.init(0), batch)
    assert float(got["loss_sum"]) == float(want["loss_sum"])
    for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
        np.testing.assert_array_equal(a, b)


def _capture_grads() -> optax.GradientTransformation:
    """An 'optimizer' whose state after one update is the gradient it was given."""
    return optax.GradientTransformation(
        lambda p: jax.tree.map(jnp.zeros_like, p),
        lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))


def _rel(a, b) -> float:
    diff = optax.tree.norm(jax.tree.map(jnp.subtract, a, b))
    return float(diff / optax.tree.norm(b))


def test_grad_accumulation_equals_large_batch():
    batch = jax.tree.map(jnp.asarray, make_batch(8, ragged=True))
    tx = _capture_grads()
    # init and the direct gradient jitted: eager flax compiles op by op (slow on CPU)
    params = jax.jit(train.init_params, static_argnums=0)(CFG, jax.random.key(1))
    state = train.TrainState(jnp.zeros((), jnp.int32), params, None, jax.random.PRNGKey(0))
    state = state.replace(opt_state=tx.init(state.params))
    grads = {}
    for k in (1, 4):
        step = jax.jit(train.make_train_step(CFG, train_cfg(grad_accum_steps=k), tx))
        new, metrics = step(state, batch)
        grads[k] = new.opt_state
        assert float(metrics["weight_sum"]) == float(batch["weights"].sum())
    direct = jax.jit(train.grads_of, static_argnums=0)(CFG, state.params, batch)
    assert _rel(grads[4], grads[1]) <= 1e-6
    assert _rel(grads[1], direct) <= 1e-6


def test_meshes_match_one_device():
    """Data, FSDP and tensor parallelism (with gradient accumulation) on 8 CPU devices: the
    losses and the parameters after 3 steps are those of one device."""
    tc = train_cfg(batch_size=16, grad_accum_steps=2)
    batches = [make_batch(16, seed=s) for s in range(3)]

    cfg = CFG.replace(n_layer=1)  # one block is enough to shard every kind of parameter

    def run(shape):
        trainer = train.Trainer(cfg, tc, mesh_of(*shape), RULES)
        state, out = trainer.init(0), []
        for b in batches:
            state, m = trainer.train_step(state, trainer.put_batch(b))
            out.append(float(m["loss_sum"] / m["weight_sum"]))
        return np.array(out), jax.device_get(state.params)

    losses, params = run((1, 1, 1))
    for shape in [(8, 1, 1), (2, 2, 2), (1, 2, 4)]:
        got_losses, got_params = run(shape)
        np.testing.assert_allclose(got_losses, losses, atol=1e-5, rtol=0, err_msg=str(shape))
        # Adam divides by sqrt(v): near-zero gradients amplify float rounding, so parameters
        # are compared well below what 3 steps at lr 3e-3 move them
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-3,
                                                             err_msg=str(shape)),
                     got_params, params)


def test_schedule_matches_nanogpt_and_decay_mask():
    tc = train_cfg(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100,
                   lr_decay_steps=2000)
    sched = jax.jit(train.learning_rate_schedule(tc))

    def nanogpt_lr(it):  # nanoGPT train.py get_lr
        if it < 100:
            return 1e-3 * (it + 1) / 101
        if it > 2000:
            return 1e-4
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - 100) / 1900))
        return 1e-4 + coeff * 9e-4

    for it in (0, 50, 99, 100, 1000, 1999, 2000, 2500):
        assert float(sched(it)) == pytest.approx(nanogpt_lr(it), rel=1e-5)
    no_warmup = train.learning_rate_schedule(dataclasses.replace(tc, warmup_steps=0))
    for it in (0, 950, 2000, 2500):  # get_lr with warmup_iters=0: cosine from the start
        coeff = 0.5 * (1.0 + math.cos(math.pi * min(it, 2000) / 2000))
        assert float(no_warmup(it)) == pytest.approx(1e-4 + coeff * 9e-4, rel=1e-5)
    constant = train.learning_rate_schedule(dataclasses.replace(tc, schedule="constant"))
    assert [float(constant(it)) for it in (0, 99, 100, 5000)] == pytest.approx(
        [1e-3 / 101, 1e-3 * 100 / 101, 1e-3, 1e-3], rel=1e-5)
    shapes = jax.eval_shape(functools.partial(train.init_params, CFG), jax.random.key(0))
    mask = train.weight_decay_mask(shapes)
    assert mask["h_0"]["attn"]["c_attn"]["kernel"] and mask["h_1"]["mlp"]["c_fc"]["kernel"]
    assert not mask["h_0"]["attn"]["c_attn"]["bias"] and not mask["ln_f"]["scale"]
    assert not mask["wte"]["embedding"] and not mask["h_0"]["ln_1"]["bias"]


def test_step_reports_whether_its_update_is_finite():
    """The loss is measured before the update: only `update_finite` (the gradient norm and
    every new parameter, reduced on device) says whether the new params are usable."""
    batch = make_batch(8)
    flags = {}
    for lr in (3e-3, float("inf")):
        trainer = train.Trainer(CFG, train_cfg(learning_rate=lr, min_learning_rate=lr),
                                mesh_of(1, 1, 1), RULES)
        state, m = trainer.train_step(trainer.init(0), trainer.put_batch(batch))
        params_finite = all(bool(np.isfinite(np.asarray(x)).all())
                            for x in jax.tree.leaves(state.params))
        assert math.isfinite(float(m["loss_sum"]))  # the loss alone cannot tell
        assert m["update_finite"].shape == ()
        flags[lr] = (bool(m["update_finite"]), params_finite)
    assert flags == {3e-3: (True, True), float("inf"): (False, False)}


def test_out_of_memory_is_one_line_naming_the_fixes(tmp_path, shakespeare_20k):
    # XLA's RESOURCE_EXHAUSTED ended the run in a raw traceback (configs/gpt2.py:fineweb10b on a
    # CPU: "Out of memory allocating 89... bytes"); it is raised here from a hook at step 3, as
    # the real one surfaces when a step's metrics are fetched.
    from gpt2jax.errors import OutOfMemoryError
    from gpt2jax.training.loop import train_and_evaluate

    def exhaust(step, run):
        if step == 3:
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory allocating 1865022768000 bytes.")

    c = char_config(shakespeare_20k, 6)
    c.checkpoint.update(save_every=2, keep=2)
    with pytest.raises(OutOfMemoryError) as info:
        train_and_evaluate(c, tmp_path / "w", hooks=[exhaust])
    message = str(info.value)
    assert "\n" not in message and "ran out of memory (1,736.9 GiB at once)" in message
    for fix in ("last good checkpoint is step 2", "train.grad_accum_steps", "remat=full",
                "--mode=plan"):
        assert fix in message, message


def test_padded_vocabulary_trains_and_samples_only_decodable_tokens(tmp_path, shakespeare_20k,
                                                                    capsys):
    """A model vocabulary padded past the tokenizer's (96 rows for the text's characters, as
    50,304 for GPT-2 BPE): the samples at each eval never hold an id the tokenizer cannot
    decode (at init a third of the probability sits on those rows; decoding one crashed the
    run before `suppress_tokens`)."""
    from gpt2jax.training.loop import train_and_evaluate

    c = char_config(shakespeare_20k, 2)
    c.model.vocab_size = 96
    c.train.update(eval_every=2, eval_batches=1, sample_tokens=24)
    c.mesh.update(data=-1)
    train_and_evaluate(c, tmp_path / "w")
    out = capsys.readouterr().out
    assert "sample at step 2:" in out, out[-2000:]


def test_xla_out_of_memory_text_is_what_the_run_reads(tmp_path):
    """Pins the library text that `out_of_memory_message` parses: a real XLA:CPU allocation of
    1 TiB, in a child whose address space is capped at 8 GB (it can never touch real memory),
    fails with RESOURCE_EXHAUSTED and "allocating N bytes"; an upgrade that rewords it fails
    here instead of silently dropping the size from the one-line error."""
    import subprocess
    import sys

    from gpt2jax.training.loop import out_of_memory_message

    child = ("import resource\n"
             "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
             "import jax, jax.numpy as jnp\n"
             "try:\n    jax.jit(lambda: jnp.ones((1 << 38,), jnp.float32))().block_until_ready()\n"
             "except jax.errors.JaxRuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    text = out.stdout.strip()
    assert "RESOURCE_EXHAUSTED" in text and "allocating 1099511627776 bytes" in text, (
        text, out.stderr[-2000:])
    message = out_of_memory_message(RuntimeError(text), tmp_path)
    assert "(1,024.0 GiB at once)" in message and "no checkpoint was saved" in message, message
