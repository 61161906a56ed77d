"""KV-head conversion of a trained model: multi-head -> grouped-query / multi-query attention.

Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from
Multi-Head Checkpoints": the key and value heads of each group of H / g query heads become
one head, by mean-pooling their projection matrices (the paper's choice), by keeping the
group's first head, or by a fresh random init (the paper's Figure 4/5 alternatives); then a
short "uptraining" (a few % of the pretraining steps) recovers most of the quality.

`convert_kv_heads` maps any of our layouts: GPT-2's fused `c_attn` [E, 3, H, D] (released
weights, our default) or grouped `c_q` [E, H, D] + `c_kv` [E, 2, K, D] with K a multiple of
g, unrolled (`h_i`) or scanned (`h`, a leading layers axis). The query heads, the output
projection and everything else are kept. g = K returns the model as it is (the identity):
rewriting a fused layer as c_q + c_kv would compute the same logits only up to float
rounding (one fused [E, 3HD] matmul and two split ones sum in different orders on XLA:CPU).
Groups are contiguous, as the attention reads them: query head h uses kv head h // (H / g).
Uptraining runs in the usual loop: `--config.init_from=SOURCE --config.train.convert_kv_heads=g
[--config.train.convert_kv_method=mean]` (training/setup.py).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from gpt2jax.errors import ConfigError
from gpt2jax.nn.attention import fused_to_grouped
from gpt2jax.nn.model import GPT2Config
from gpt2jax.nn.scan import is_stacked, to_layout

Method = Literal["mean", "first", "random"]
Params = dict[str, Any]


def _check(cfg: GPT2Config, n_kv_heads: int, method: str, rng) -> None:
    if method not in Method.__args__:
        raise ConfigError(f"method={method!r} is not one of {list(Method.__args__)} (mean-pool, "
                          "first head of each group, random init; Ainslie et al. 2023).")
    have = cfg.kv_heads
    valid = [g for g in range(1, have + 1) if have % g == 0]
    if isinstance(n_kv_heads, bool) or n_kv_heads not in valid:
        raise ConfigError(f"n_kv_heads={n_kv_heads!r} must divide the model's {have} key/value "
                          f"heads (n_head={cfg.n_head}); choose one of {valid} (1 = "
                          "multi-query).")
    if method == "random" and rng is None:
        raise ConfigError("method='random' initialises new key/value heads: pass "
                          "rng=jax.random.key(seed).")


def _pool(x: jax.Array, axis: int, groups: int, method: str) -> jax.Array:
    """Axis `axis` of `x` (K heads) -> `groups` heads: group j holds heads j*K/g .. (j+1)*K/g-1."""
    shape = x.shape[:axis] + (groups, x.shape[axis] // groups) + x.shape[axis + 1:]
    grouped = x.reshape(shape)
    if method == "mean":
        return grouped.mean(axis=axis + 1, dtype=jnp.float32).astype(x.dtype)
    return jnp.take(grouped, 0, axis=axis + 1)  # "first" (and the shape for "random")


def _convert_attn(attn: Params, cfg: GPT2Config, groups: int, method: str, rng) -> Params:
    """One layer's `attn` params (fused or grouped; a leading layers axis allowed) -> grouped
    with `groups` kv heads. c_kv kernel [..., E, 2, K, D] -> [..., E, 2, g, D]."""
    attn = fused_to_grouped(attn) if "c_attn" in attn else dict(attn)
    kernel, bias = attn["c_kv"]["kernel"], attn["c_kv"]["bias"]
    kernel = _pool(kernel, kernel.ndim - 2, groups, method)
    bias = _pool(bias, bias.ndim - 2, groups, method)
    if method == "random":  # the model's own init: normal(initializer_range), zero bias
        noise = jax.random.normal(rng, kernel.shape, jnp.float32) * cfg.initializer_range
        kernel, bias = noise.astype(kernel.dtype), jnp.zeros_like(bias)
    attn["c_kv"] = {"kernel": kernel, "bias": bias}
    return attn


def convert_kv_heads(cfg: GPT2Config, params: Params, n_kv_heads: int, method: Method = "mean",
                     rng: jax.Array | None = None) -> tuple[GPT2Config, Params]:
    """A trained model with `n_kv_heads` = g key/value heads (Ainslie et al. 2023).

    Args:
      cfg: the model's config (fused multi-head, n_kv_heads=0, or grouped with K heads).
      params: its params (unboxed; unrolled `h_i` or scanned `h`), e.g. from
        `load_pretrained` or `gpt2jax.weights.loader.load_model` (a training workdir).
      n_kv_heads: g, dividing the model's K key/value heads (K = n_head for multi-head);
        g = n_head / 2, n_head / 4 ... is GQA, 1 is MQA; g = K returns (cfg, params).
      method: "mean" (mean-pool each group's heads, the paper's), "first" (each group's
        first head) or "random" (new heads drawn from the model's init).
      rng: a PRNG key, needed by "random" only (one key per layer is folded from it).
    Returns:
      (cfg with n_kv_heads=g, params with `c_q` [E, H, D] and `c_kv` [E, 2, g, D] per
      layer). The KV cache shrinks by K / g: `kv_cache_bytes_per_token` says how much.
    """
    _check(cfg, n_kv_heads, method, rng)
    if n_kv_heads == cfg.kv_heads:  # every head kept: nothing to pool
        return cfg, params
    stacked = is_stacked(params)
    layers = to_layout(params, False)
    out = dict(layers)
    for i in range(cfg.n_layer):
        key = None if rng is None else jax.random.fold_in(rng, i)
        layer = dict(layers[f"h_{i}"])
        layer["attn"] = _convert_attn(layer["attn"], cfg, n_kv_heads, method, key)
        out[f"h_{i}"] = layer
    return cfg.replace(n_kv_heads=n_kv_heads), to_layout(out, stacked)
