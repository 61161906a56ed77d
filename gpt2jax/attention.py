"""Attention kernels: one function, several implementations chosen by `GPT2Config.attention_impl`.

- "einsum": the reference (explicit scores, float32 softmax, supports attention dropout).
- "xla": `jax.nn.dot_product_attention(implementation="xla")`.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPU only).
- "pallas": a Pallas flash-attention kernel (GPU/TPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gpt2jax.errors import ConfigError


class UnsupportedAttention(ConfigError):
    """An attention implementation that cannot run with the requested options or backend."""


def _mask_value(dtype) -> float:
    return float(jnp.finfo(dtype).min)


def einsum_attention(q, k, v, mask, dropout_rate=0.0, dropout_rng=None, dtype=jnp.float32):
    """Reference attention.

    Args:
      q: [B, T, H, D]; k, v: [B, S, H, D]; mask: [B, 1, T, S] bool (True = attend).
    Returns:
      [B, T, H, D] in `dtype`.
    """
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * scale
    scores = jnp.where(mask, scores, _mask_value(jnp.float32))
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhts,bshd->bthd", probs.astype(dtype), v.astype(dtype))


def dot_product_attention(q, k, v, mask, impl="einsum", dropout_rate=0.0, dropout_rng=None,
                          dtype=jnp.float32):
    """Dispatches to the implementation `impl`. Shapes as in `einsum_attention`."""
    if impl == "einsum":
        return einsum_attention(q, k, v, mask, dropout_rate, dropout_rng, dtype)
    if dropout_rate > 0.0:
        raise UnsupportedAttention(
            f"attention_impl={impl!r} has no attention dropout; set model.attn_pdrop=0.0 "
            "or use attention_impl='einsum'."
        )
    if impl in ("xla", "cudnn"):
        if impl == "cudnn" and jax.default_backend() != "gpu":
            raise UnsupportedAttention(
                "attention_impl='cudnn' needs an NVIDIA GPU; use 'xla' or 'einsum' on "
                f"{jax.default_backend()}."
            )
        out = jax.nn.dot_product_attention(
            q.astype(dtype), k.astype(dtype), v.astype(dtype), mask=mask, implementation=impl
        )
        return out.astype(dtype)
    raise UnsupportedAttention(
        f"attention_impl={impl!r} is not available; use 'einsum', 'xla' or 'cudnn' (GPU)."
    )
