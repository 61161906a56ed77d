"""Training math: `TrainState` and the pure, sharded `train_step` / `train_steps` / `eval_step`.

The host loop (data, logging, checkpoints) lives in `loop.py`; nothing here does I/O. The
optimizer and `TrainConfig` live in `optimizer.py` (re-exported here).

- `train_step(state, batch) -> (state, metrics)`: gradient accumulation by a `lax.scan` over
  micro-batches inside the step (one optimizer update per step); dropout rng
  `fold_in(state.rng, step)`; metrics are sums and token counts so that losses are exactly
  token-weighted whatever the sharding or accumulation.
- `train_steps(state, batches) -> (state, metrics)`: n of those steps in one call (a
  `lax.scan` over n stacked batches), each metric stacked [n]; the same updates, bit for bit,
  with one dispatch and one host round-trip instead of n (`train.steps_per_call`).
- `Trainer`: builds the mesh-aware pieces once: sharded init from abstract shapes and the
  steps jitted once with in/out shardings and state donation.

Shapes: B global batch, T block size, V vocabulary, k = grad_accum_steps.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import AxisType, Mesh, NamedSharding

from gpt2jax.parallel.placement import Placement
from gpt2jax.parallel.sharding import MeshError
from gpt2jax.errors import ConfigError, GPT2JaxError
from gpt2jax.generation.compiled import TraceCounter
from gpt2jax.nn.loss import model_metrics, token_metrics  # noqa: F401 (token_metrics: API)
from gpt2jax.nn.model import GPT2, GPT2Config, init_params, logical_axes, param_count
from gpt2jax.training.optimizer import (  # noqa: F401 (re-exported: the step's API)
    Schedule, TrainConfig, learning_rate_schedule, make_optimizer, weight_decay_mask)

BATCH_KEYS = ("inputs", "targets", "weights")  # a training batch's arrays, each [B, T]


class TrainingDivergedError(GPT2JaxError, FloatingPointError):
    """The loss became NaN/inf: training stopped, the last good checkpoint is kept."""


@struct.dataclass
class TrainState:
    """Everything a step changes: `step` int32 [], `params`, `opt_state`, `rng` uint32 [2]."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


# ----------------------------------------------------------------------------- the steps


def _all_finite(grad_norm: jax.Array, params) -> jax.Array:
    """bool []: the gradient norm and every new parameter are finite (one on-device reduction;
    the loss, measured before the update, cannot tell that the update overflowed)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]
    return jnp.logical_and(jnp.isfinite(grad_norm), jnp.all(jnp.stack(leaves)))


def _split_micro(x: jax.Array, k: int, spec: NamedSharding | None) -> jax.Array:
    """[B, ...] -> [k, B/k, ...] with micro-batch i = rows i, i+k, ... (keeps each device's
    rows local when the batch is sharded in contiguous blocks)."""
    y = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
    if spec is not None:
        y = jax.lax.with_sharding_constraint(y, spec)
    return y


def make_train_step(cfg: GPT2Config, tc: TrainConfig, tx: optax.GradientTransformation,
                    micro_spec: NamedSharding | None = None):
    """The pure step `train_step(state, batch) -> (state, metrics)`.

    batch: {"inputs" int32 [B, T], "targets" int32 [B, T], "weights" float32 [B, T]}.
    metrics: loss_sum, weight_sum, correct_sum (over the whole batch), grad_norm, param_norm,
    learning_rate (of this update), update_finite (bool []: grad norm and new params finite).
    The gradient is d(loss_sum)/d(params) / weight_sum, i.e. the exact token-weighted mean over
    all micro-batches.
    """
    model = GPT2(cfg)
    k = tc.grad_accum_steps
    schedule = learning_rate_schedule(tc)
    use_dropout = max(cfg.embd_pdrop, cfg.attn_pdrop, cfg.resid_pdrop) > 0

    def loss_fn(params, micro, rng):
        sums = model_metrics(model, params, micro, tc.loss_chunk_size,
                             deterministic=not use_dropout, rngs={"dropout": rng})
        return sums["loss_sum"], sums

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        micro = jax.tree.map(lambda x: _split_micro(x, k, micro_spec), batch)

        def body(carry, xs):
            grads, sums = carry
            i, mb = xs
            g, s = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
            return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, s)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        zero_sums = {n: jnp.zeros((), jnp.float32)
                     for n in ("loss_sum", "weight_sum", "correct_sum")}
        (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums), (jnp.arange(k), micro))
        denom = jnp.maximum(sums["weight_sum"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        metrics = dict(sums, grad_norm=grad_norm, param_norm=optax.tree.norm(params),
                       learning_rate=schedule(state.step),
                       update_finite=_all_finite(grad_norm, params))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_train_steps(train_step):
    """`train_steps(state, batches) -> (state, metrics)`: `train_step` applied to n batches
    stacked on a leading axis ({"inputs": int32 [n, B, T], ...}), in order, in one program
    (a `lax.scan`); each metric stacked [n]. The same updates as n calls of `train_step`,
    bit for bit, with one dispatch instead of n (XLA:CPU spends a share of a small model's
    step on the call itself: bench/cpu_shakespeare.py)."""

    def train_steps(state: TrainState, batches: dict) -> tuple[TrainState, dict]:
        return jax.lax.scan(train_step, state, batches)

    return train_steps


def make_eval_step(cfg: GPT2Config, loss_chunk_size: int = 0):
    """The pure `eval_step(params, batch) -> metrics` (sums; no dropout; logits a chunk of
    `loss_chunk_size` tokens at a time, 0 = all at once)."""
    model = GPT2(cfg)

    def eval_step(params, batch: dict) -> dict:
        return model_metrics(model, params, batch, loss_chunk_size, deterministic=True)

    return eval_step


def grads_of(cfg: GPT2Config, params, batch: dict) -> Any:
    """Token-mean gradient of the loss on `batch` (deterministic), for tests and tools."""
    model = GPT2(cfg)

    def loss(p):
        logits = model.apply({"params": p}, batch["inputs"], deterministic=True)
        s = token_metrics(logits, batch["targets"], batch["weights"])
        return s["loss_sum"] / s["weight_sum"]

    return jax.grad(loss)(params)


# ----------------------------------------------------------------------------- on a mesh


def check_auto_axes(mesh: Mesh) -> Mesh:
    """`mesh` itself if its axes are all `Auto` (XLA propagates the shardings), else a
    MeshError: build it with `parallel.sharding.make_mesh`."""
    if any(t != AxisType.Auto for t in mesh.axis_types):
        raise MeshError(f"The mesh's axis types are {mesh.axis_types}; training propagates "
                        "shardings through XLA and needs Auto axes: build the mesh with "
                        "gpt2jax.parallel.sharding.make_mesh(config.mesh).")
    return mesh


class Trainer:
    """The model, optimizer and mesh, with init/train/eval compiled once on that mesh.

    Usage:
        trainer = Trainer(cfg, tc, mesh, rules)
        state = trainer.init(seed)                    # sharded from abstract shapes
        state, metrics = trainer.train_step(state, batch)  # batch: dict of global jax.Arrays
    """

    def __init__(self, cfg: GPT2Config, tc: TrainConfig, mesh: Mesh, rules: tuple):
        self.cfg, self.tc, self.rules = cfg, tc, rules
        self.mesh = check_auto_axes(mesh)
        self.placement = Placement(self.mesh, rules)
        self.tx = make_optimizer(tc)
        self._check_batch()
        self.batch_sharding = self.placement.batch_sharding()
        micro_spec = self.placement.batch_sharding(2, lead=1)  # [k, B/k, ...] micro-batches
        self.state_sharding = self._state_sharding()
        metric_sharding = self.placement.replicated()
        batch_shardings = {n: self.batch_sharding for n in BATCH_KEYS}
        # train_steps' batches [n, B, T]: the steps' axis whole on every device
        self.steps_sharding = self.placement.batch_sharding(3, lead=1)
        step = make_train_step(cfg, tc, self.tx, micro_spec)
        self._traces = TraceCounter()  # jit compiles once per trace
        self._train_step = jax.jit(
            self._traces.counted("train_step", step),
            in_shardings=(self.state_sharding, batch_shardings),
            out_shardings=(self.state_sharding, metric_sharding),
            donate_argnums=(0,),
        )
        self._train_steps = jax.jit(
            self._traces.counted("train_steps", make_train_steps(step)),
            in_shardings=(self.state_sharding, {n: self.steps_sharding for n in BATCH_KEYS}),
            out_shardings=(self.state_sharding, metric_sharding),
            donate_argnums=(0,),
        )
        self._eval_step = jax.jit(
            make_eval_step(cfg, tc.loss_chunk_size),
            in_shardings=(self.state_sharding.params, batch_shardings),
            out_shardings=metric_sharding,
        )

    @property
    def data_parallel_size(self) -> int:
        return self.placement.data_parallel_size

    def _check_batch(self) -> None:
        dp = self.data_parallel_size
        if self.tc.micro_batch_size % dp:
            raise ConfigError(
                f"The micro-batch of {self.tc.micro_batch_size} sequences (train.batch_size="
                f"{self.tc.batch_size} / grad_accum_steps={self.tc.grad_accum_steps}) is not "
                f"divisible by the data-parallel size {dp} (mesh data x fsdp); choose a batch "
                f"size that is a multiple of {dp * self.tc.grad_accum_steps}."
            )

    def _init_fn(self, rng: jax.Array, boxed: bool) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        params = init_params(self.cfg, init_rng, boxed=boxed)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), rng=state_rng)

    def abstract_state(self) -> TrainState:
        """Shapes/dtypes of the state (no allocation), with their shardings attached."""
        shapes = jax.eval_shape(functools.partial(self._init_fn, boxed=False),
                                jax.random.PRNGKey(0))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.state_sharding)

    def _state_sharding(self) -> TrainState:
        boxed = jax.eval_shape(functools.partial(self._init_fn, boxed=True), jax.random.PRNGKey(0))
        # logical specs -> NamedShardings; an uneven vocab dim is replicated (e.g. 65 chars)
        return self.placement.state_shardings(boxed)

    def init(self, seed: int) -> TrainState:
        """A fresh state, created directly in its sharding (no host copy of the params)."""
        state, _ = self.placement.init(functools.partial(self._init_fn, boxed=True),
                                       jax.random.PRNGKey(seed))
        return state

    def state_from_params(self, params, seed: int) -> TrainState:
        """A fresh optimizer state around given params (fine-tuning), placed on the mesh."""
        params = self.placement.put_params(params, logical_axes(self.cfg))
        _, state_rng = jax.random.split(jax.random.PRNGKey(seed))
        fn = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, self.tx.init(p),
                                          state_rng),
                     out_shardings=self.state_sharding)
        return fn(params)

    def context(self):
        """The logical-axis rules and the mesh, active while tracing (`sharding.mesh_rules`)."""
        return self.placement.context()

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One optimizer update (the input state is donated). Returns (state, metrics)."""
        with self.context():
            return self._train_step(state, batch)

    def lower_train_step(self, state: TrainState, batch: dict):
        """The lowered `train_step` for these shapes: `.compile()` it to time the compile or
        read `memory_analysis()`; the compiled step is called as `compiled(state, batch)`."""
        with self.context():
            return self._train_step.lower(state, batch)

    def train_steps(self, state: TrainState, batches: dict) -> tuple[TrainState, dict]:
        """n optimizer updates in one call, equal to n `train_step`s (the input state is
        donated). batches: global arrays [n, B, T] (`put_steps`). Returns (state, metrics
        stacked [n])."""
        with self.context():
            return self._train_steps(state, batches)

    def put_steps(self, batches: Sequence[dict]) -> dict:
        """n host batches of this process's rows ({"inputs": [b, T], ...}, as `put_batch`
        takes them) -> global arrays [n, B, T] for `train_steps`."""
        return self.placement.put_batch({n: np.stack([b[n] for b in batches])
                                         for n in BATCH_KEYS}, lead=1)

    def eval_step(self, params, batch: dict) -> dict:
        """Metric sums of `params` on one batch."""
        with self.context():
            return self._eval_step(params, batch)

    def put_batch(self, batch: dict) -> dict:
        """A host (numpy) global batch -> jax.Arrays sharded on the batch axis (the whole
        batch; with several processes each passes the same one)."""
        arrays = {n: batch[n] for n in BATCH_KEYS}
        return self.placement.put_batch(arrays, local=False)

    def compile_count(self) -> int:
        """How many times the train programs were compiled: 1 in a healthy loop, 2 when it
        uses both `train_step` and `train_steps` (`train.steps_per_call` > 1)."""
        return self._traces.count("train_step") + self._traces.count("train_steps")


def model_flops_per_token(cfg: GPT2Config, block_size: int) -> float:
    """Training FLOPs per token (PaLM/nanoGPT): 6 * N + 12 * n_layer * n_embd * T."""
    return 6.0 * param_count(cfg) + 12.0 * cfg.n_layer * cfg.n_embd * block_size
