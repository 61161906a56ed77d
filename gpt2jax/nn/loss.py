"""Cross-entropy through the tied LM head without materialising `[batch, length, vocab]` logits.

`chunked_token_sums` computes, chunk by chunk of sequence positions, the logits of the tied head
(`hidden @ wte.T`, float32), their log-sum-exp, the target logit and the argmax, and keeps only
per-row sums. The chunk function is `jax.checkpoint`ed inside a `lax.scan`, so the backward pass
recomputes each chunk's logits instead of storing them: the largest logits buffer alive is one
chunk, `[B, c, V]`, in the forward and the backward pass alike.

The numbers equal the plain path (`GPT2.__call__` logits, then log-softmax) within float32
rounding: the head is the same `promote_dtype` + `jnp.dot` as `nn.Embed.attend` (compute dtype,
then float32), and the log-sum-exp is `jax.nn.logsumexp` of the same float32 logits.

Shapes: B batch rows, T positions, E = n_embd, V = vocab, c positions per chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.parallel import sharding


def head_embedding(params) -> jax.Array:
    """The tied LM head `[V, E]`: the token embedding `wte` of a GPT2 params pytree."""
    return params["wte"]["embedding"]


def head_logits(hidden: jax.Array, embedding: jax.Array, dtype) -> jax.Array:
    """Logits of the tied head, as `GPT2` computes them: `[..., E] x [V, E] -> [..., V]` float32.

    Both operands are cast to the compute `dtype` first (flax `Embed.attend`), so a bfloat16
    model rounds its logits to bfloat16 before they are widened, exactly like the plain path.
    """
    logits = jnp.dot(hidden.astype(dtype), embedding.astype(dtype).T)
    return logits.astype(jnp.float32)


def positions_per_chunk(batch: int, length: int, chunk_tokens: int) -> int:
    """Positions per chunk so that a chunk holds about `chunk_tokens` tokens (rows x positions);
    at least 1, at most `length` (0 = one chunk of everything)."""
    if chunk_tokens <= 0:
        return length
    return max(1, min(length, chunk_tokens // max(batch, 1)))


def _chunk_sums(hidden, embedding, targets, weights, dtype, with_correct: bool = True):
    """Per-row sums of one chunk: hidden [B, c, E], targets [B, c] int, weights [B, c] float.

    Returns (nll [B], correct [B]) float32: sum of weight * (lse - target logit) and of
    weight * (argmax == target) (zeros without `with_correct`: one pass less over the logits).
    """
    logits = head_logits(hidden, embedding, dtype)
    logits = sharding.constrain(logits, ("batch", "length", "vocab"))
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = jnp.sum((jax.nn.logsumexp(logits, axis=-1) - target_logit) * weights, axis=-1)
    if not with_correct:
        return nll, jnp.zeros_like(nll)
    # the argmax is not differentiable: no gradient flows through `correct`
    correct = jax.lax.stop_gradient((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32))
    return nll, jnp.sum(correct * weights, axis=-1)


def _to_chunks(x: jax.Array, n: int, c: int) -> jax.Array:
    """[B, n*c, ...] -> [n, B, c, ...] (the scan axis first; each chunk keeps the batch axis,
    so a batch-sharded input stays sharded the same way inside the loop)."""
    return jnp.swapaxes(x.reshape((x.shape[0], n, c) + x.shape[2:]), 0, 1)


def chunked_token_sums(hidden: jax.Array, embedding: jax.Array, targets: jax.Array,
                       weights: jax.Array, chunk_tokens: int, dtype=jnp.float32,
                       with_correct: bool = True):
    """Per-row cross-entropy sums through the tied head, a chunk of positions at a time.

    Args:
      hidden: [B, T, E] final hidden states (after ln_f), `GPT2(..., return_hidden=True)`.
      embedding: [V, E] the tied head (`head_embedding(params)`).
      targets: [B, T] int, the token each position predicts.
      weights: [B, T] float, how much each position counts (0 = padding / not scored).
      chunk_tokens: about how many tokens' logits exist at once (rows x positions); 0 = all
        positions in one chunk (no loop). A chunk size that does not divide T is fine: the
        last chunk is padded with weight-0 positions.
      dtype: the model's compute dtype (the head's matmul dtype).
      with_correct: also count `argmax == target` (else `correct` is zeros).
    Returns:
      (nll [B], correct [B]) float32: per row, the weighted sum of `-log p(target)` and of
      `argmax == target`. Differentiable in `hidden` and `embedding` (the backward pass
      recomputes each chunk's logits).
    """
    batch, length = targets.shape
    weights = weights.astype(jnp.float32)
    c = positions_per_chunk(batch, length, chunk_tokens)
    if c >= length:
        return _chunk_sums(hidden, embedding, targets, weights, dtype, with_correct)
    n = -(-length // c)
    pad = n * c - length
    if pad:  # padded positions: zero hidden (finite logits), target 0, weight 0
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
    chunk_fn = jax.checkpoint(lambda h, e, t, w: _chunk_sums(h, e, t, w, dtype, with_correct),
                              prevent_cse=False)

    def body(carry, xs):
        h, t, w = xs
        nll, correct = chunk_fn(h, embedding, t, w)
        return (carry[0] + nll, carry[1] + correct), None

    zeros = jnp.zeros((batch,), jnp.float32)
    xs = (_to_chunks(hidden, n, c), _to_chunks(targets, n, c), _to_chunks(weights, n, c))
    (nll, correct), _ = jax.lax.scan(body, (zeros, zeros), xs)
    return nll, correct


def token_metrics(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> dict:
    """Sums over tokens. logits [b, T, V] float32, targets [b, T] int, weights [b, T] float.

    Returns dict of float32 scalars: loss_sum (weighted NLL), weight_sum, correct_sum.
    """
    # log-sum-exp minus the target logit, not a gathered log_softmax: the same numbers, but
    # no [b, T, V] log-probabilities to write and differentiate (bench/finetune_overhead.py
    # measures the difference)
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
    weights = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(nll * weights),
        "weight_sum": jnp.sum(weights),
        "correct_sum": jnp.sum(correct * weights),
    }


def chunked_metrics(hidden: jax.Array, embedding: jax.Array, targets: jax.Array,
                    weights: jax.Array, chunk_tokens: int, dtype=jnp.float32) -> dict:
    """The train/eval step's metric sums (`training.step.token_metrics`) without full logits.

    Shapes as `chunked_token_sums`. Returns dict of float32 scalars: loss_sum (weighted NLL),
    weight_sum, correct_sum.
    """
    nll, correct = chunked_token_sums(hidden, embedding, targets, weights, chunk_tokens, dtype)
    return {
        "loss_sum": jnp.sum(nll),
        "weight_sum": jnp.sum(weights.astype(jnp.float32)),
        "correct_sum": jnp.sum(correct),
    }


def model_metrics(model, params, batch: dict, chunk_tokens: int, **apply_kwargs) -> dict:
    """Metric sums of a `GPT2` module on a batch: plain (full logits) when `chunk_tokens` is 0,
    else through `chunked_metrics` on the hidden states (no `[B, T, V]` logits).

    Args:
      model: a `GPT2` module; params: its parameters.
      batch: {"inputs", "targets" int [B, T], "weights" float [B, T]}.
      chunk_tokens: tokens per logits chunk (rows x positions); 0 = plain.
      apply_kwargs: passed to `model.apply` (deterministic, rngs).
    Returns:
      dict of float32 scalars: loss_sum, weight_sum, correct_sum.
    """
    variables = {"params": params}
    if chunk_tokens <= 0:
        logits = model.apply(variables, batch["inputs"], **apply_kwargs)
        return token_metrics(logits, batch["targets"], batch["weights"])
    hidden = model.apply(variables, batch["inputs"], return_hidden=True, **apply_kwargs)
    return chunked_metrics(hidden, head_embedding(params), batch["targets"], batch["weights"],
                           chunk_tokens, model.cfg.compute_dtype)


def empty_batch(rows: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero inputs, targets (int32) and weights (float32), each [rows, length]: a host batch
    whose rows score nothing until filled (padding rows stay so)."""
    return (np.zeros((rows, length), np.int32), np.zeros((rows, length), np.int32),
            np.zeros((rows, length), np.float32))


def scored_positions(weights: np.ndarray, k: int) -> np.ndarray:
    """Host side: the positions of each row whose weight is non-zero, in order, padded to `k`.

    Args:
      weights: [B, T] the per-position weights (0 = not scored); at most k non-zero per row.
      k: the number of positions kept per row (a static shape: bucket it to limit compiles).
    Returns:
      positions [B, k] int32; the slots past a row's count point at position 0 (their weight
      must be zeroed: `gather_scored` does).
    """
    weights = np.asarray(weights)
    out = np.zeros((weights.shape[0], k), np.int32)
    for i, row in enumerate(weights):
        idx = np.flatnonzero(row)
        if len(idx) > k:
            raise ValueError(f"row {i} scores {len(idx)} positions, more than k={k}.")
        out[i, :len(idx)] = idx
    return out


def gather_scored(positions: np.ndarray, *arrays: np.ndarray) -> tuple:
    """Host side: `arrays` [B, T] at `positions` [B, k]; a weights array (the last) is zeroed on
    the padding slots (those past each row's count of scored positions)."""
    counts = np.count_nonzero(np.asarray(arrays[-1]), axis=1)
    out = [np.take_along_axis(np.asarray(a), positions, axis=1) for a in arrays]
    out[-1] = out[-1] * (np.arange(positions.shape[1])[None] < counts[:, None])
    return tuple(out)


def head_at(hidden: jax.Array, embedding: jax.Array, positions: jax.Array, targets: jax.Array,
            weights: jax.Array, dtype=jnp.float32):
    """The head at a few chosen positions only (continuation tokens of a scored pair).

    Args:
      hidden: [B, T, E] final hidden states; embedding: [V, E] the tied head.
      positions: [B, K] int, the positions to score (`scored_positions`).
      targets, weights: [B, K], the target token and weight at each of them.
    Returns:
      (nll [B] float32: the weighted sum of -log p(target), greedy [B, K] int32: the argmax).
    """
    h = jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)
    logits = sharding.constrain(head_logits(h, embedding, dtype), ("batch", "length", "vocab"))
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = (jax.nn.logsumexp(logits, axis=-1) - target_logit) * weights.astype(jnp.float32)
    return jnp.sum(nll, axis=-1), jnp.argmax(logits, axis=-1).astype(jnp.int32)
