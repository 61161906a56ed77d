"""The model side of the lm-eval backend, without lm-eval: score (context, continuation)
token pairs and generate continuations on our compiled, length-bucketed, sharded forward.

`Scorer.score(pairs)` answers what lm-eval's `_loglikelihood_tokens` answers, exactly as its
`hf` backend computes it (`lm_eval/models/huggingface.py`):
- the model reads `(context + continuation)[-(max_length + 1):][:-1]` (left-truncated);
- the log-likelihood is the sum of `log_softmax(logits)[token]` (float32) over the last
  `len(continuation)` positions, and is-greedy says the argmax equals the continuation token
  at every one of them.

Rows: pairs whose model input is equal (the endings of a multiple-choice question), or a
prefix of another pair's input, are read from ONE forward row (`share_rows`): attention is
causal, so the logits at a position depend only on the tokens up to it. lm-eval's hf backend
shares equal inputs of one-token continuations the same way (`Collator(group_by="contexts")`).

Shapes: every batch is `[rows, length]`: rows are right-padded to a length bucket
(`bucket_length`: 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, ... capped at max_length) and
the batch to batch_size rows (the last batch to a power of two), so the forward compiles once
per bucket. Right padding needs no mask: attention is causal, and padding is never scored.
Each row carries its pairs' scored positions and targets, `[rows, k]` (k bucketed too).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.parallel.placement import Placement
from gpt2jax.errors import ConfigError
from gpt2jax.generation.generate import generate
from gpt2jax.nn import loss as loss_lib
from gpt2jax.nn.model import GPT2, GPT2Config, logical_axes
from gpt2jax.nn.positions import check_length
from gpt2jax.parallel import sharding

MIN_BUCKET = 16
MIN_SCORED = 4  # the smallest k: continuations are mostly 1-3 tokens
# (cfg, rows, length, k) of every compiled scoring function, in order (tests count compiles).
COMPILED: list[tuple[GPT2Config, int, int, int]] = []

LENGTH_STEPS = 4  # buckets per octave: at most 25% padding


def bucket_length(n: int, cap: int | None, minimum: int = MIN_BUCKET,
                  steps: int = LENGTH_STEPS) -> int:
    """The padded size of n: the first of minimum, then `steps` equal steps per octave (16,
    20, 24, 28, 32, 40, ... for steps=4; 16, 24, 32, 48, ... for 2) that is >= n, at most
    `cap` (None: no cap): `steps` compiles per octave, at most 1/steps padding."""
    size = minimum
    while size < n:
        size += max((1 << (size.bit_length() - 1)) // steps, 1)
    return size if cap is None else min(size, cap)


def model_input(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple:
    """The tokens the model reads for a pair (the hf backend's left truncation): the last
    max_length tokens of context + continuation[:-1]."""
    return tuple((list(context) + list(continuation))[-(max_length + 1):][:-1])


def share_rows(inputs: Sequence[tuple]) -> tuple[list[tuple], list[int]]:
    """The forward rows that serve `inputs` (token tuples), and the row of each input.

    An input that equals another, or is a prefix of a longer one, is read from the longest
    row that starts with it. In lexicographic order a prefix sorts just before the inputs
    that extend it, so one backward pass finds every input's row.
    Returns (rows, longest first, then by tokens; the row index of each input).
    """
    ordered = sorted(set(inputs))
    host: dict[tuple, tuple] = {}
    for i in range(len(ordered) - 1, -1, -1):
        x = ordered[i]
        nxt = ordered[i + 1] if i + 1 < len(ordered) else ()
        host[x] = host[nxt] if nxt[:len(x)] == x and len(nxt) > len(x) else x
    rows = sorted(set(host.values()), key=lambda r: (-len(r), r))
    index = {r: j for j, r in enumerate(rows)}
    return rows, [index[host[x]] for x in inputs]


def pack(rows: Sequence[tuple], entries: Sequence[list], n_rows: int, length: int, k: int):
    """Host arrays of one batch.

    Args:
      rows: the model inputs (token tuples), at most n_rows, each at most `length` long.
      entries: for each row, its scored (position, target) pairs (at most k).
      n_rows, length, k: the static shapes B, L, K.
    Returns:
      inputs [B, L] int32 (right-padded with 0), positions [B, K] int32, targets [B, K]
      int32 (padding slots score position 0 against token 0 and are never read).
    """
    inputs = np.zeros((n_rows, length), np.int32)
    positions = np.zeros((n_rows, k), np.int32)
    targets = np.zeros((n_rows, k), np.int32)
    for i, (row, scored) in enumerate(zip(rows, entries)):
        inputs[i, :len(row)] = row
        if scored:
            positions[i, :len(scored)], targets[i, :len(scored)] = zip(*scored)
    return inputs, positions, targets


@functools.lru_cache(maxsize=16)
def _score_fn(cfg: GPT2Config):
    """A jitted `(params, inputs [B, L], positions, targets [B, K]) -> (log p(target) [B, K]
    float32, target is the argmax [B, K] bool)`: the head only at the K scored positions."""
    model = GPT2(cfg)

    def score(params, inputs, positions, targets):
        COMPILED.append((cfg,) + inputs.shape + positions.shape[1:])  # once per trace
        hidden = model.apply({"params": params}, inputs, return_hidden=True)
        h = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        logits = loss_lib.head_logits(h, loss_lib.head_embedding(params), cfg.compute_dtype)
        logits = sharding.constrain(logits, ("batch", "length", "vocab"))
        target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        greedy = jnp.argmax(logits, axis=-1) == targets
        return target - jax.nn.logsumexp(logits, axis=-1), greedy

    return jax.jit(score)


class Scorer:
    """Scores (context, continuation) token pairs in fixed-shape, bucketed batches.

    Args:
      cfg, params: the model (params are placed on `mesh` once, by their logical axes).
      batch_size: rows per forward pass (rounded up to the data-parallel size).
      max_length: the context the model reads (<= cfg.n_positions for learned positions).
      mesh, axis_rules: shard rows on the data axes and params as the rules say; None = the
        default device.
    `rows_run` counts the forward rows run (padding rows left out).
    """

    def __init__(self, cfg: GPT2Config, params, batch_size: int, max_length: int,
                 mesh=None, axis_rules=(), min_bucket: int = MIN_BUCKET):
        check_length(cfg, max_length, "max_length", f"use max_length <= {cfg.n_positions}")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be a positive integer.")
        self.cfg, self.max_length, self.min_bucket = cfg, max_length, min_bucket
        self.mesh, self.axis_rules = mesh, tuple(axis_rules)
        self.placement = Placement(mesh, self.axis_rules)
        self.dp = self.placement.data_parallel_size
        self.batch_size = -(-batch_size // self.dp) * self.dp
        self.params = self.placement.put_params(params, logical_axes(cfg))
        self.rows_run = 0

    def score(self, pairs, on_batch: Callable[[int], None] | None = None
              ) -> list[tuple[float, bool]]:
        """(log-likelihood, is-greedy) of each (context, continuation) pair; every
        continuation is non-empty and at most max_length, every context non-empty.

        Pairs are read from shared rows (`share_rows`), batch_size rows per forward pass,
        longest first; `on_batch(n)` is called after each batch with its number of pairs.
        """
        inputs = [model_input(ctx, cont, self.max_length) for ctx, cont in pairs]
        rows, row_of = share_rows(inputs)
        members: list[list[int]] = [[] for _ in rows]
        for i, r in enumerate(row_of):
            members[r].append(i)
        results: list = [None] * len(pairs)
        for start in range(0, len(rows), self.batch_size):
            batch = range(start, min(start + self.batch_size, len(rows)))
            # a pair scores its last len(cont) input positions; a row's pairs one after another
            entries = [[(len(inputs[i]) - len(pairs[i][1]) + j, t) for i in members[r]
                        for j, t in enumerate(pairs[i][1])] for r in batch]
            logprob, greedy = self._run([rows[r] for r in batch], entries)
            for b, r in enumerate(batch):
                at = 0
                for i in members[r]:
                    end = at + len(pairs[i][1])
                    results[i] = (float(logprob[b, at:end].sum(dtype=np.float32)),
                                  bool(greedy[b, at:end].all()))
                    at = end
            if on_batch is not None:
                on_batch(sum(len(members[r]) for r in batch))
        return results

    def _run(self, rows: list[tuple], entries: list[list]) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass of `rows` (their scored (position, target) `entries`): log p and
        is-argmax [len(rows), k] on the host."""
        n_rows = self.batch_size
        if len(rows) < n_rows:  # the last batch: a power of two (x the data-parallel size)
            n_rows = min(n_rows, self.dp * (1 << (-(-len(rows) // self.dp) - 1).bit_length()))
        length = bucket_length(max(map(len, rows)), self.max_length, self.min_bucket)
        k = bucket_length(max(map(len, entries)), None, MIN_SCORED, steps=2)
        arrays = self.placement.put_batch(pack(rows, entries, n_rows, length, k), local=False)
        with self.placement.context():
            out = jax.device_get(_score_fn(self.cfg)(self.params, *arrays))
        self.rows_run += len(rows)
        return out

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
