"""Decode-step kernels: attention against the KV cache in its layout, the head for a few rows.

**Attention.** The KV cache stores keys and values as [B, K, S, D] (kv heads before slots,
HF's layout too), so that a decode step's two products are batched matrix-vector products over
(batch, kv head) that read the cache where it lies:

    scores[b, k, g, s] = q[b, k, g, :] . key[b, k, s, :]       (contract D, the minor axis)
    out[b, k, g, :]    = sum_s p[b, k, g, s] value[b, k, s, :]  (contract S, rows of D)

Why: with the cache stored [B, S, K, D] the same products need (batch, head)-major operands,
and XLA:CPU copies (transposes) the whole cache of every layer twice per decoded token to
make them (`bench/decode_parts.py` times both layouts). The arithmetic is
`einsum_attention`'s (scores in float32 scaled after the dot, masked with finfo.min, float32
softmax, probabilities cast to the compute dtype); only the operand layout differs, so the
results agree to float32 rounding.

**Head.** For a decode step of several rows (batch > 1, or beams) the tied head is computed
as wte [V, E] @ h^T [E, B] and then transposed, not as h @ wte^T: XLA:CPU's matrix kernel
(YNNPACK) then streams wte once with the few rows as the small operand. Same products, same
sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cached_attention(q, k, v, mask, bias=None, dtype=jnp.float32):
    """Attention of T new queries against the whole cache.

    Args:
      q: [B, T, H, D] queries (T = 1 while decoding; any T works).
      k, v: [B, K, S, D] the cache after this step's write, K dividing H (query head h reads
        kv head h // (H / K)).
      mask: [B, 1, T, S] bool (True = attend).
      bias: additive [B, H, T, S] float (ALiBi) or None.
    Returns:
      [B, T, H, D] in `dtype`.
    """
    b, t, h, d = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bksd->bkgts", qg, k).astype(jnp.float32) * d ** -0.5
    if bias is not None:
        scores = scores + bias.reshape(b, kv, h // kv, t, -1)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v.astype(dtype))
    return out.reshape(b, t, h, d)


def few_rows_logits(x, embedding, dtype=jnp.float32):
    """The tied head of a decode step, vocabulary-major: x [B, 1, E] -> logits [B, 1, V].

    `embedding` is wte [V, E]. `optimization_barrier` keeps XLA from folding the transpose
    back into the dot (which would give the slower h @ wte^T again).
    """
    b, t, e = x.shape
    rows = x.reshape(b * t, e).astype(dtype)
    logits = jnp.dot(embedding.astype(dtype), rows.T)  # [V, B*T]
    return jax.lax.optimization_barrier(logits).T.reshape(b, t, -1)
