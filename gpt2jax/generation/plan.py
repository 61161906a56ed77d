"""Shared pieces of the compiled decode loops: static plan, traced runtime values, shape buckets.

`generate.py` (greedy / sampling) and `beam_search.py` both build on these; neither imports the
other's loop. Shapes: B batch (bucketed), P prompt columns, N new-token columns, L = P + N.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gpt2jax.generation.sampling import ScoreParams, ScoreSettings
from gpt2jax.nn.model import GPT2, GPT2Config


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static shapes and switches of one compiled decode (hashable jit key)."""

    batch: int                 # bucketed batch rows (before beams)
    prompt_len: int            # P: bucketed prompt columns
    new_len: int               # N: token columns reserved for generation (>= max_new_tokens)
    num_beams: int
    score: ScoreSettings
    stream: bool = False       # call the streaming sink from inside the loop
    mesh: jax.sharding.Mesh | None = None
    axis_rules: tuple | None = None
    output_scores: bool = False  # beam search: record HF's per-step scores in the loop

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.new_len


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Runtime:
    """Traced per-call values: changing them never recompiles."""

    max_new_tokens: jax.Array   # i32 [], tokens to generate at most (HF: max_length - prompt)
    offset: jax.Array           # i32 [], bucket padding columns added left of HF's prompt
    pad_id: jax.Array           # i32 [], fills finished rows
    length_penalty: jax.Array   # f32 [] (beam search)
    early_stopping: jax.Array   # i32 [] 0=False, 1=True, 2="never" (beam search)
    key: jax.Array              # PRNG key for sampling
    score: ScoreParams
    stream_id: jax.Array        # i32 [], the call's streamer in `StreamSinks` (0 = none)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """Loop state of greedy/sampling decoding."""

    tokens: jax.Array           # [B, L] prompt + generated tokens
    cache: dict                 # the model's KV cache
    unfinished: jax.Array       # [B] bool, rows that have not emitted EOS
    step: jax.Array             # i32 [], tokens generated so far


def bucket(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= n (at least `minimum`): the compile bucket of a length."""
    size = minimum
    while size < n:
        size *= 2
    return size


def batch_bucket(n: int, multiple: int = 1) -> int:
    """Batch rows rounded up to a power of two, then to a multiple of the data-parallel size."""
    size = bucket(n, 1)
    return -(-size // multiple) * multiple


# ----------------------------------------------------------------------------- model calls

def prompt_positions(mask: jax.Array) -> jax.Array:
    """HF positions for a left-padded prompt: cumsum(mask) - 1, 0 on padding. [B, P]."""
    positions = jnp.cumsum(mask, axis=-1) - 1
    return jnp.where(mask == 0, 0, positions).astype(jnp.int32)


def key_mask(mask: jax.Array, new_len: int) -> jax.Array:
    """Attention mask over the L cache slots: the prompt mask, then ones. [B, P] -> [B, L]."""
    return jnp.concatenate([mask, jnp.ones((mask.shape[0], new_len), mask.dtype)], axis=1)


def model_step(cfg: GPT2Config, params, cache, ids: jax.Array, slot_mask: jax.Array,
               positions: jax.Array):
    """Runs the cached model on ids [B, T]; returns (last-position logits [B, V], new cache)."""
    logits, updates = GPT2(cfg).apply(
        {"params": params, "cache": cache}, ids, attention_mask=slot_mask,
        position_ids=positions, decode=True, mutable=["cache"],
    )
    return logits[:, -1], updates["cache"]


def repeat_rows(tree, times: int):
    """Repeats every batched leaf of a pytree `times` along axis 0 (beams / return sequences)."""
    return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0) if x.ndim else x, tree)


def valid_positions(mask: jax.Array, length: int, cur_len: jax.Array) -> jax.Array:
    """Buffer positions seen by the repetition penalty: [first real token, cur_len). [B, L].

    HF (v5) ignores the left padding (`argmax(mask != 0)` leading positions).
    """
    first = jnp.argmax(mask != 0, axis=-1)[:, None]
    cols = jnp.arange(length)[None, :]
    return (cols >= first) & (cols < cur_len)


def fill_value(pad_id: int | None, eos_ids: tuple[int, ...]) -> int:
    """HF's filler of not-yet-generated beam slots: `pad or eos[0]` (0 counts as unset)."""
    if not eos_ids:
        return -1
    return pad_id if pad_id else eos_ids[0]
