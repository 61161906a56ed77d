"""Positional schemes: RoPE rotations and ALiBi biases (inside attention), the fixed
sinusoidal embedding (added to the token embeddings), and how far each scheme reaches.

Learned absolute embeddings (GPT-2's `wpe`) live in `model.py`; "none" (NoPE) needs no code.
Every scheme here takes explicit integer position ids, so left padding (HF's
`position_ids = cumsum(mask) - 1`) and cached decoding see the same positions as a full
forward pass.

Reach: learned positions define `n_positions` positions, no more. RoPE, ALiBi, sinusoidal
and none define every position, so such a model reads sequences longer than the
`n_positions` it was trained at (length extrapolation, Press et al. 2022); `n_positions`
stays its default length. `check_length` is the one place that decides.

Shapes: B batch, T query length, S key length, H heads, D head_dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gpt2jax.errors import ConfigError

# The position schemes defined at every position: their models read past n_positions.
UNBOUNDED = ("rope", "alibi", "sinusoidal", "none")
SINUSOID_BASE = 10000.0  # Vaswani et al. 2017's wavelength base


def check_config(cfg) -> None:
    """Raises ConfigError when `cfg` (a GPT2Config) has shapes its position scheme cannot use."""
    if cfg.position == "rope" and (cfg.head_dim % 2 or cfg.rope_theta <= 0):
        raise ConfigError(
            f"position='rope' needs an even head_dim (got {cfg.head_dim}) and rope_theta > 0 "
            f"(got {cfg.rope_theta}); change n_embd/n_head or use position='learned'."
        )
    if cfg.position == "sinusoidal" and cfg.n_embd % 2:
        raise ConfigError(f"position='sinusoidal' needs an even n_embd (sin/cos pairs), got "
                          f"{cfg.n_embd}; change n_embd or use position='learned'.")


def context_limit(cfg) -> int | None:
    """The most positions `cfg` (a GPT2Config) defines: n_positions for learned positions,
    None (no limit) for the UNBOUNDED schemes."""
    return None if cfg.position in UNBOUNDED else cfg.n_positions


def check_length(cfg, length: int, what: str, fix: str) -> None:
    """Raises ConfigError when `length` positions exceed what `cfg`'s position scheme defines.

    `what` names the length (e.g. "context_length"), `fix` says how to shorten it."""
    limit = context_limit(cfg)
    if limit is not None and length > limit:
        raise ConfigError(
            f"{what}={length} exceeds the model's n_positions={limit} (the context its learned "
            f"positions define); {fix}, or use a model with position in {list(UNBOUNDED)}, "
            "which reads past n_positions.")


def rope_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """Inverse frequencies theta ** (-2i / D) for i in [0, D/2): shape [D // 2], float64."""
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding (Su et al. 2021), "rotate half" layout (GPT-NeoX, Llama).

    Channel i of the first half is paired with channel i + D/2 and rotated by the angle
    `position * theta ** (-2i / D)`, so that <rope(q, m), rope(k, n)> depends on m - n only.

    Args:
      x: [B, T, H, D] queries or keys (D even).
      positions: [B, T] int position ids.
      theta: the RoPE base (10,000 in the paper).
    Returns:
      [B, T, H, D], same dtype as `x` (rotation computed in float32).
    """
    half = x.shape[-1] // 2
    inv_freq = jnp.asarray(rope_frequencies(x.shape[-1], theta), jnp.float32)
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq  # [B, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def _power_of_two_slopes(n: int) -> list[float]:
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))  # = 2 ** (-8 / n)
    return [start ** (i + 1) for i in range(n)]


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al. 2022, and the authors' reference code).

    For n a power of two: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8).
    Otherwise: the slopes of the closest smaller power of two m, followed by every other
    slope of 2m (the first n - m of them), so that slopes stay in (0, 1) and interleave.

    Returns:
      [n_heads] float64.
    """
    if n_heads <= 0:
        raise ValueError(f"n_heads must be positive, got {n_heads}.")
    m = 2 ** math.floor(math.log2(n_heads))
    slopes = _power_of_two_slopes(m)
    if m < n_heads:
        slopes += _power_of_two_slopes(2 * m)[0::2][: n_heads - m]
    return np.asarray(slopes, np.float64)


def alibi_bias(n_heads: int, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """Additive ALiBi attention bias -slope_h * (q_pos - k_pos).

    Args:
      n_heads: H (query heads; each has its own slope).
      q_positions: [B, T] int position ids of the queries.
      k_positions: [B, S] int position ids of the keys.
    Returns:
      [B, H, T, S] float32 (<= 0 wherever the key is not in the future; future keys are masked).
    """
    slopes = jnp.asarray(alibi_slopes(n_heads), jnp.float32)
    distance = (q_positions[:, :, None] - k_positions[:, None, :]).astype(jnp.float32)
    return -slopes[None, :, None, None] * distance[:, None, :, :]


def sinusoidal_embedding(positions: jax.Array, dim: int) -> jax.Array:
    """The original Transformer's fixed position embedding (Vaswani et al. 2017, 3.5):
    PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim)).

    Args:
      positions: [B, T] int position ids (any value: defined at every position).
      dim: the embedding width E (even).
    Returns:
      [B, T, E] float32, added to the token embeddings (no parameters).
    """
    inv_freq = jnp.asarray(SINUSOID_BASE ** (-np.arange(0, dim, 2) / dim), jnp.float32)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, E/2]
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1],
                                                                          dim)
