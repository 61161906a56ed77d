"""The optimisation settings and the optimizer: `TrainConfig`, nanoGPT's learning-rate
schedule, the weight-decay mask and `make_optimizer` (pure; no I/O, no mesh).

- AdamW with no weight decay on biases, LayerNorm and (unless `train.decay_embeddings`)
  embeddings; learning rate warmed up linearly, then cosine decayed to a minimum (nanoGPT's
  `get_lr`, exactly); global-norm gradient clipping (GPT-2 / nanoGPT practice).
- `TrainConfig`: the fields of `config.train` that define the optimisation (the loop's own
  fields are `training.setup.LoopOptions`).

`training.step` re-exports these names (the train step uses them).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import optax
from flax import linen as nn

from gpt2jax.errors import ConfigError

Schedule = Literal["cosine", "constant"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation fields of `config.train` (see configs/common.py: train_config)."""

    batch_size: int
    grad_accum_steps: int
    block_size: int
    num_steps: int
    learning_rate: float
    min_learning_rate: float
    warmup_steps: int
    lr_decay_steps: int
    schedule: Schedule
    weight_decay: float
    decay_embeddings: bool
    beta1: float
    beta2: float
    eps: float
    grad_clip: float
    loss_chunk_size: int = 0  # tokens per logits chunk (nn/loss.py); 0 = full logits

    def __post_init__(self):
        if self.batch_size <= 0 or self.grad_accum_steps <= 0:
            raise ConfigError("train.batch_size and train.grad_accum_steps must be positive.")
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by train.grad_accum_steps="
                f"{self.grad_accum_steps}; the global batch is split into that many micro-batches."
            )
        if self.schedule not in Schedule.__args__:
            raise ConfigError(
                f"train.schedule={self.schedule!r}; choose one of {Schedule.__args__}.")
        if not isinstance(self.loss_chunk_size, int) or self.loss_chunk_size < 0:
            raise ConfigError(f"train.loss_chunk_size={self.loss_chunk_size!r} must be an int >= "
                              "0 (tokens per logits chunk; 0 = full logits).")

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum_steps

    @classmethod
    def from_config(cls, train_config) -> TrainConfig:
        """Reads the fields of this dataclass from `config.train` (extra keys are loop options)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in train_config]
        if missing:
            raise ConfigError(f"config.train is missing {missing}; add them to the config file.")
        return cls(**{n: train_config[n] for n in names})


def learning_rate_schedule(tc: TrainConfig) -> optax.Schedule:
    """nanoGPT's `get_lr` from optax's schedules: `lr * (s+1)/(warmup+1)` while s < warmup
    (a linear schedule from lr/(warmup+1) to lr over `warmup_steps`), then cosine to min_lr
    at `lr_decay_steps` (`optax.cosine_decay_schedule`), then min_lr; `schedule="constant"`
    holds lr after the warmup. `s` is the 0-based update count."""
    lr, warmup = tc.learning_rate, tc.warmup_steps
    if tc.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        after = optax.cosine_decay_schedule(
            lr, decay_steps=max(tc.lr_decay_steps - warmup, 1),
            alpha=tc.min_learning_rate / lr if lr else 0.0)
    if warmup <= 0:
        return after
    warm = optax.linear_schedule(lr / (warmup + 1), lr, transition_steps=warmup)
    return optax.join_schedules([warm, after], boundaries=[warmup])


def weight_decay_mask(params, decay_embeddings: bool = False):
    """True for leaves that get weight decay: every `kernel`, plus `embedding`s if asked.

    Biases, LayerNorm scales/biases (and embeddings by default) are not decayed. Works on
    boxed (`nn.Partitioned`) and plain params alike.
    """

    def decide(path, _):
        name = getattr(path[-1], "key", str(path[-1]))
        return name == "kernel" or (decay_embeddings and name == "embedding")

    return jax.tree_util.tree_map_with_path(
        decide, params, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (if grad_clip > 0), then AdamW with the schedule and decay mask."""
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(tc),
        b1=tc.beta1,
        b2=tc.beta2,
        eps=tc.eps,
        weight_decay=tc.weight_decay,
        mask=functools.partial(weight_decay_mask, decay_embeddings=tc.decay_embeddings),
    )
    if tc.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adamw)
    return adamw
