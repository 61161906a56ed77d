"""Fitting a run to a small text: block size, batch size, held-out fraction, eval batches.

A fine-tuning file of a few hundred tokens holds no validation window of 128 tokens and
gives one optimizer step per epoch at batch 16. With `train.fit_to_data=True`
(configs/finetune.py) the run shrinks what does not fit, and says so in one line:

- `block_size`: the largest power of two (>= `MIN_BLOCK`) that both splits hold a window
  of; a held-out split (`data.val_file` unset) may grow up to `MAX_VAL_FRACTION` first when
  even `MIN_BLOCK` does not fit it;
- `batch_size`: at most the training windows / `MIN_STEPS_PER_EPOCH`, in multiples of
  `batch_unit` (grad_accum_steps x the data-parallel size), so an epoch is several steps;
- `eval_batches`: enough batches to cover the validation windows once.

Nothing grows: a text that fits the configured run is trained as configured. A text too
small for any fit is refused with the minimum size in the message.
"""

from __future__ import annotations

import dataclasses
import math

from gpt2jax.errors import DataError

MIN_BLOCK = 16               # the smallest block a fit will choose
MIN_STEPS_PER_EPOCH = 8      # a fit shrinks the batch until an epoch is this many steps
MAX_VAL_FRACTION = 0.25      # the largest held-out fraction a fit will choose


@dataclasses.dataclass(frozen=True)
class Fit:
    """A run's sizes after fitting; `changes` names each one that differs from the config."""

    block_size: int
    batch_size: int
    eval_batches: int
    changes: tuple[str, ...] = ()

    def describe(self, origin: str, num_tokens: int) -> str:
        """One line: what was fitted to which text (empty when nothing changed)."""
        if not self.changes:
            return ""
        return (f"fit_to_data: {origin} holds {num_tokens:,} tokens; "
                + ", ".join(self.changes) + " (train.fit_to_data=False keeps the config's).")


def windows(num_tokens: int, block_size: int) -> int:
    """Windows of `block_size` targets in a stream of `num_tokens` tokens (last one partial)."""
    return max(math.ceil((num_tokens - 1) / block_size), 0)


def held_out_fraction(num_tokens: int, val_fraction: float) -> float:
    """The held-out fraction whose split holds one `MIN_BLOCK` window of a `num_tokens` text
    (at most `MAX_VAL_FRACTION`); `val_fraction` itself when it already does."""
    needed = (MIN_BLOCK + 2) / max(num_tokens, 1)  # +1 window token, +1 for the cut
    return val_fraction if val_fraction >= needed else round(min(needed, MAX_VAL_FRACTION), 4)


def fit_to_data(num_train: int, num_val: int, block_size: int, batch_size: int,
                eval_batches: int, batch_unit: int, changes: tuple[str, ...] = ()) -> Fit:
    """The sizes of a run on `num_train` + `num_val` tokens (see the module docstring).

    Args:
      num_train, num_val: tokens of the training and validation streams.
      block_size, batch_size, eval_batches: the configured values (upper bounds).
      batch_unit: the batch stays a multiple of this (grad accumulation x data parallel).
      changes: changes made before (a grown held-out fraction), reported first.
    Raises:
      DataError: a split holds no window of `MIN_BLOCK` tokens.
    """
    for what, n in (("training", num_train), ("validation", num_val)):
        if n < MIN_BLOCK + 1:
            raise DataError(
                f"The {what} text has {n:,} tokens ({num_train + num_val:,} in all): too small "
                f"to fit a run. fit_to_data needs a {MIN_BLOCK}-token window in each split, at "
                f"least {math.ceil((MIN_BLOCK + 2) / MAX_VAL_FRACTION):,} tokens of text with "
                "a held-out split; add text.")
    limit = min(num_train, num_val) - 1
    block = block_size if block_size <= limit else max(2 ** (limit.bit_length() - 1), MIN_BLOCK)
    train_windows = windows(num_train, block)
    batch = batch_size
    if train_windows < MIN_STEPS_PER_EPOCH * batch_size:
        batch = max(train_windows // MIN_STEPS_PER_EPOCH // batch_unit, 1) * batch_unit
        batch = min(batch, batch_size)
    evals = min(eval_batches, max(math.ceil(windows(num_val, block) / batch), 1))
    return Fit(block, batch, evals, changes + tuple(
        f"{name} {old} -> {new}" for name, old, new in (
            ("block_size", block_size, block), ("batch_size", batch_size, batch),
            ("eval_batches", eval_batches, evals)) if old != new))
