"""The model side of the lm-eval backend, without lm-eval: score (context, continuation)
token pairs and generate continuations on our compiled, length-bucketed, sharded forward.

`Scorer.score(pairs)` answers what lm-eval's `_loglikelihood_tokens` answers, exactly as its
`hf` backend computes it (`lm_eval/models/huggingface.py`):
- the model reads `(context + continuation)[-(max_length + 1):][:-1]` (left-truncated);
- the log-likelihood is the sum of `log_softmax(logits)[token]` (float32) over the last
  `len(continuation)` positions, and is-greedy says the argmax equals the continuation token
  at every one of them.

Shapes: every batch is `[batch_size, bucket]`: rows are right-padded to a length bucket
(`bucket_length`, half-octave steps 16, 24, 32, 48, ... capped at max_length) and the batch is
padded with empty rows, so the forward compiles once per bucket. Right padding needs no mask:
attention is causal, and the padded positions are not scored.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.parallel.placement import Placement
from gpt2jax.errors import ConfigError
from gpt2jax.generation.generate import generate
from gpt2jax.nn import loss as loss_lib
from gpt2jax.nn.model import GPT2, GPT2Config, logical_axes

MIN_BUCKET = 16
# (cfg, batch, length) of every compiled scoring function, in order (tests count compiles).
COMPILED: list[tuple[GPT2Config, int, int]] = []


def bucket_length(n: int, cap: int, minimum: int = MIN_BUCKET) -> int:
    """The padded length of n tokens: the first of minimum, then 1.5x / 2x steps (16, 24, 32,
    48, 64, ...) that is >= n, at most `cap`: two compiles per octave, at most 50% padding."""
    size = minimum
    while size < n:
        pow2 = 1 << (size.bit_length() - 1)  # the largest power of two <= size
        size = pow2 * 3 // 2 if size == pow2 else pow2 * 2
    return min(size, cap)


def pack(pairs, length: int, max_length: int, rows: int):
    """Right-padded model inputs of (context, continuation) token pairs.

    Args:
      pairs: list of (context tokens, continuation tokens), at most `rows` of them.
      length: the padded width L (>= every row's input length).
      max_length: the model context; longer inputs keep their last max_length tokens.
      rows: the batch size B (rows past len(pairs) are empty).
    Returns:
      inputs [B, L] int32, targets [B, L] int32 (the token after each input position),
      weights [B, L] float32 (1 on the continuation's positions).
    """
    inputs = np.zeros((rows, length), np.int32)
    targets = np.zeros((rows, length), np.int32)
    weights = np.zeros((rows, length), np.float32)
    for i, (ctx, cont) in enumerate(pairs):
        seq = (list(ctx) + list(cont))[-(max_length + 1):]
        n = len(seq) - 1
        inputs[i, :n] = seq[:-1]
        targets[i, :n] = seq[1:]
        weights[i, n - len(cont):n] = 1.0
    return inputs, targets, weights


@functools.lru_cache(maxsize=16)
def _score_fn(cfg: GPT2Config):
    """A jitted `(params, inputs [B, L], positions, targets, weights [B, K]) -> (logprob sums
    [B] f32, all-greedy [B] bool)`: the head only at the K continuation positions."""
    model = GPT2(cfg)

    def score(params, inputs, positions, targets, weights):
        COMPILED.append((cfg,) + inputs.shape)  # runs once per trace (= per compile)
        hidden = model.apply({"params": params}, inputs, return_hidden=True)
        nll, greedy = loss_lib.head_at(hidden, loss_lib.head_embedding(params), positions,
                                       targets, weights, cfg.compute_dtype)
        return -nll, jnp.all((greedy == targets) | (weights == 0), axis=-1)

    return jax.jit(score)


class Scorer:
    """Scores (context, continuation) token pairs in fixed-shape, bucketed batches.

    Args:
      cfg, params: the model (params are placed on `mesh` once, by their logical axes).
      batch_size: rows per forward pass (rounded up to the data-parallel size).
      max_length: the context the model reads (<= cfg.n_positions).
      mesh, axis_rules: shard rows on the data axes and params as the rules say; None = the
        default device.
    """

    def __init__(self, cfg: GPT2Config, params, batch_size: int, max_length: int,
                 mesh=None, axis_rules=(), min_bucket: int = MIN_BUCKET):
        if max_length > cfg.n_positions:
            raise ConfigError(f"max_length={max_length} exceeds the model's n_positions="
                              f"{cfg.n_positions}; use max_length <= {cfg.n_positions}.")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be a positive integer.")
        self.cfg, self.max_length, self.min_bucket = cfg, max_length, min_bucket
        self.mesh, self.axis_rules = mesh, tuple(axis_rules)
        self.placement = Placement(mesh, self.axis_rules)
        dp = self.placement.data_parallel_size
        self.batch_size = -(-batch_size // dp) * dp
        self.params = self.placement.put_params(params, logical_axes(cfg))

    def score(self, pairs) -> list[tuple[float, bool]]:
        """(log-likelihood, is-greedy) of up to `batch_size` (context, continuation) pairs;
        every continuation is non-empty and every context holds at least one token."""
        if not 0 < len(pairs) <= self.batch_size:
            raise ValueError(f"score() takes 1..{self.batch_size} pairs, got {len(pairs)}.")
        longest = max(min(len(c) + len(t), self.max_length + 1) - 1 for c, t in pairs)
        length = bucket_length(longest, self.max_length, self.min_bucket)
        inputs, targets, weights = pack(pairs, length, self.max_length, self.batch_size)
        # the head runs at the continuation positions only, k of them per row (bucketed)
        k = bucket_length(int(np.count_nonzero(weights, axis=1).max()), length, self.min_bucket)
        positions = loss_lib.scored_positions(weights, k)
        arrays = (inputs, positions) + loss_lib.gather_scored(positions, targets, weights)
        arrays = self.placement.put_batch(arrays, local=False)
        with self.placement.context():
            logprob, greedy = jax.device_get(_score_fn(self.cfg)(self.params, *arrays))
        return [(float(logprob[i]), bool(greedy[i])) for i in range(len(pairs))]

    def generate(self, contexts, max_new_tokens: int, eos_id: int, **kwargs) -> list[list[int]]:
        """Continuations of token lists (left-padded together) by `gpt2jax.generate`.

        Returns the new tokens of each row, cut before its first `eos_id` (the hf backend
        pads finished rows with EOS and decodes with `skip_special_tokens=True`).
        `kwargs` are HF generate arguments (do_sample, temperature, top_k, top_p, seed).
        """
        width = max(len(c) for c in contexts)
        ids = np.full((len(contexts), width), eos_id, np.int32)
        mask = np.zeros((len(contexts), width), np.int32)
        for i, c in enumerate(contexts):
            ids[i, width - len(c):], mask[i, width - len(c):] = c, 1
        out = generate(self.cfg, self.params, ids, mask, mesh=self.mesh,
                       axis_rules=self.axis_rules if self.mesh is not None else None,
                       max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                       pad_token_id=eos_id, **kwargs)
        rows = []
        for row in np.asarray(out)[:, width:].tolist():
            rows.append(row[:row.index(eos_id)] if eos_id in row else row)
        return rows
