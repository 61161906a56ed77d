"""Causal attention in query blocks, in plain JAX: `attention_impl="blocked"`.

The queries are cut into blocks of `BLOCK` rows. Queries `[s, e)` can only see keys `< e`
(causality by slot), so each block reads keys `[0, s)` (the part before it, where only the
padding and window masks apply) and `[s, e)` (its diagonal block, masked causally), and never
the keys after it. The two parts share one running maximum, so the softmax is exact:

    m = max(max_j a_j, max_j b_j)
    out = (exp(a - m) @ v_before + exp(b - m) @ v_diag) / (sum exp(a - m) + sum exp(b - m))

Why: at length 1024 the reference kernels form [B, H, T, T] float32 scores (50 MB per
layer at batch 1) and compute the masked upper half too. Here the largest score block is
[B, H, BLOCK, T], about half the exponentials and dot FLOPs are skipped, and the division
runs over [.., D] instead of [.., S]. On a 2-core CPU this takes the 124M forward at length
1024 from 2.6 s to 2.0 s (bench/README.md).

Exact for every query that sees at least one key, which every real token does (it sees
itself). A query that sees none (a left-padding slot) gets an average of the values of the
keys up to its block, where the other kernels average all keys: such rows are never read.
Needs S == T (no KV cache); `dot_product_attention` sends cached decode steps elsewhere.
"""

from __future__ import annotations

import jax.numpy as jnp

# Query rows per block: 128 was fastest for GPT-2 124M at length 1024 on a CPU
# (64: 2.25 s, 128: 1.97 s, 256: 1.98 s for the whole trunk).
BLOCK = 128


def _grouped(x, kv: int):
    """[B, T, H, D] -> [B, K, H/K, T, D] (query head h in kv group h // (H/K))."""
    b, t, h, d = x.shape
    return x.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)


def _scores(q, k, mask, bias, low: int, high: int, start: int, end: int):
    """Masked scores of queries [start, end) against keys [low, high): [B, K, G, T', S']."""
    s = jnp.einsum("bkgtd,bksd->bkgts", q[:, :, :, start:end], k[:, :, low:high])
    s = s.astype(jnp.float32)
    if bias is not None:
        s = s + bias[:, :, :, start:end, low:high]
    return jnp.where(mask[:, :, :, start:end, low:high], s, jnp.finfo(jnp.float32).min)


def blocked_attention(q, k, v, mask, bias=None, dtype=jnp.float32, block: int = BLOCK):
    """Causal attention, query block by query block.

    Args:
      q: [B, T, H, D]; k, v: [B, T, K, D] with K dividing H.
      mask: [B, 1, T, T] bool (True = attend), causal by slot (as `attention_mask` builds).
      bias: additive [B, H, T, T] float (ALiBi) or None.
      block: query rows per block.
    Returns:
      [B, T, H, D] in `dtype`.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = _grouped(q * d ** -0.5, kv).astype(dtype)  # [B, K, G, T, D]
    k, v = (x.transpose(0, 2, 1, 3).astype(dtype) for x in (k, v))  # [B, K, T, D]
    mask = mask[:, :, None]  # [B, 1, 1, T, T]
    if bias is not None:
        bias = bias.reshape(b, kv, h // kv, t, t)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        parts = [(start, end)] + ([(0, start)] if start else [])
        scores = [_scores(q, k, mask, bias, lo, hi, start, end) for lo, hi in parts]
        top = jnp.max(jnp.stack([s.max(-1) for s in scores]), axis=0)[..., None]
        weights = [jnp.exp(s - top) for s in scores]
        num = sum(jnp.einsum("bkgts,bksd->bkgtd", w.astype(dtype), v[:, :, lo:hi])
                  .astype(jnp.float32) for w, (lo, hi) in zip(weights, parts))
        den = sum(w.sum(-1, keepdims=True) for w in weights)
        outs.append(num / den)
    out = jnp.concatenate(outs, axis=3)  # [B, K, G, T, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(dtype)
