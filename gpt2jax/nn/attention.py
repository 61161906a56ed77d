"""Attention variants: the attention layer, its masks, and the kernels that compute it.

Variants are fields of `GPT2Config` (validated once there, see `check_supported`):

- heads: `n_kv_heads` = 0 keeps GPT-2's fused `c_attn` [E, 3, H, D]; any n_kv_heads = K > 0
  (K divides H; K = 1 is multi-query, 1 < K < H grouped-query, K = H multi-head) uses
  `c_q` [E, H, D] and `c_kv` [E, 2, K, D]; query head h reads key/value head h // (H / K).
  The KV cache holds [B, K, S, D] per layer; a decode step's one query per row attends to
  it in that layout (`decode_kernels.py`), any other step through the kernel below.
  `fused_to_grouped` maps a GPT-2 `c_attn` onto `c_q` / `c_kv` (exactly equal outputs with
  K = H).
- positions (`position`): "learned" (GPT-2 `wpe`, in model.py), "sinusoidal" (the original
  Transformer's fixed embedding, in model.py), "rope" (q and k rotated by their position ids
  before caching), "alibi" (a per-head linear bias on position distance), "none" (NoPE).
  See `positions.py`; all but "learned" read past n_positions.
- `sliding_window` W > 0: a query at position p sees keys at positions in (p - W, p].
- `qk_norm`: LayerNorm over head_dim on queries and keys (before RoPE), `q_norm` / `k_norm`.
- kernels (`attention_impl`):
  "einsum" the reference (explicit scores, float32 softmax, attention dropout);
  "xla" / "cudnn" `jax.nn.dot_product_attention(implementation=...)` (cudnn: NVIDIA GPU);
  "blocked" causal query blocks in plain JAX that skip the keys after each block (exact;
  `blocked_attention.py`; the fastest on a CPU at long lengths);
  "pallas" the flash-attention kernels of JAX's Pallas library
  (`jax.experimental.pallas.ops.gpu.attention.mha` on GPU, run in interpret mode on CPU;
  `...ops.tpu.flash_attention` on TPU). Pallas handles causal + padding masks only, so it
  rejects ALiBi and sliding windows; cached decode steps (T != S) use the einsum reference.

Shapes: B batch, T query length, S key length, E embed, H heads, K kv heads, D head_dim.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from gpt2jax.nn import hooks
from gpt2jax.nn import initializers as init
from gpt2jax.nn.blocked_attention import blocked_attention
from gpt2jax.nn.decode_kernels import cached_attention
from gpt2jax.nn import positions as pos_lib
from gpt2jax.parallel import sharding
from gpt2jax.errors import ConfigError

AttentionImpl = Literal["einsum", "xla", "cudnn", "pallas", "blocked"]
Position = Literal["learned", "sinusoidal", "rope", "alibi", "none"]
NormPosition = Literal["pre", "post"]


class UnsupportedAttention(ConfigError):
    """An attention implementation that cannot run with the requested options or backend."""


def check_supported(cfg) -> None:
    """Rejects variant combinations that no code path implements (called by GPT2Config)."""
    if cfg.attention_impl == "pallas" and cfg.position == "alibi":
        raise UnsupportedAttention(
            "attention_impl='pallas' has no attention bias, so it cannot run position='alibi'; "
            "use attention_impl='xla' or 'einsum' for ALiBi."
        )
    if cfg.attention_impl == "pallas" and cfg.sliding_window:
        raise UnsupportedAttention(
            "attention_impl='pallas' supports only causal + padding masks, not "
            f"sliding_window={cfg.sliding_window}; use attention_impl='xla' or 'einsum'."
        )


# ----------------------------------------------------------------------------- masks


def attention_mask(query_slots, num_keys: int, key_mask, q_positions, k_positions,
                   window: int) -> jax.Array:
    """The boolean attention mask (True = attend).

    Causality is by cache slot (query slot >= key slot); padding by `key_mask`; the sliding
    window by position ids (q_pos - k_pos < window), so left padding does not shift it.

    Args:
      query_slots: [T] int slots of the queries (0..T-1, or cache_index.. when decoding).
      num_keys: S.
      key_mask: [B, S] (1 = real token) or None.
      q_positions: [B, T] int; k_positions: [B, S] int (only read when window > 0).
      window: sliding window size, 0 = off.
    Returns:
      [B, 1, T, S] bool.
    """
    batch = q_positions.shape[0]
    mask = (query_slots[:, None] >= jnp.arange(num_keys)[None, :])[None, None]
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :].astype(bool)
    if window:
        distance = q_positions[:, :, None] - k_positions[:, None, :]
        mask = mask & (distance < window)[:, None]
    return jnp.broadcast_to(mask, (batch, 1, len(query_slots), num_keys))


def with_own_slot(mask: jax.Array, query_slots: jax.Array) -> jax.Array:
    """`mask` [B, 1, T, S] where each query also sees its own cache slot.

    Only a query that sees no key at all (a left-padding slot) changes: every real query
    already sees its own slot. cuDNN gives such a row NaN, and its backward pass spreads the
    NaN to every gradient even where the row's cotangent is zero; with its own slot the row
    stays finite and is still never read."""
    own = query_slots[:, None] == jnp.arange(mask.shape[-1])[None, :]
    return mask | own[None, None]


# ----------------------------------------------------------------------------- kernels


def _mask_value(dtype) -> float:
    return float(jnp.finfo(dtype).min)


def einsum_attention(q, k, v, mask, bias=None, dropout_rate=0.0, dropout_rng=None,
                     dtype=jnp.float32, hook=None):
    """Reference attention, grouped-query aware.

    Args:
      q: [B, T, H, D]; k, v: [B, S, K, D] with K dividing H (head h reads kv head h // (H/K)).
      mask: [B, 1, T, S] bool (True = attend).
      bias: additive [B, H, T, S] float (ALiBi) or None.
      hook: hook(name, value) applied to the scores and the pattern [B, H, T, S] (hooks.py),
        or None (no hooks: masked scores are finfo.min before the softmax).
    Returns:
      [B, T, H, D] in `dtype`.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k).astype(jnp.float32) * d ** -0.5
    scores = scores.reshape(b, h, t, k.shape[1])
    if bias is not None:
        scores = scores + bias
    if hook is None:
        scores = jnp.where(mask, scores, _mask_value(jnp.float32))
        probs = jax.nn.softmax(scores, axis=-1)
    else:
        probs = _hooked_softmax(scores, mask, hook)
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    probs = probs.reshape(b, kv, h // kv, t, k.shape[1]).astype(dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(dtype))
    return out.reshape(b, t, h, d)


def _hooked_softmax(scores, mask, hook):
    """TransformerLens's attention: scores masked with -inf (hook_attn_scores), softmax with
    fully masked rows set to 0 (hook_pattern). [B, H, T, S] -> [B, H, T, S] float32."""
    scores = hook("attn.hook_attn_scores", jnp.where(mask, scores, -jnp.inf))
    dead = jnp.isneginf(scores)
    # A fully masked row (a left-padding query) would be NaN: softmax a finite row instead,
    # so gradients stay finite, then zero what was masked.
    safe = jnp.where(dead.all(-1, keepdims=True), 0.0, scores)
    probs = jnp.where(dead, 0.0, jax.nn.softmax(safe, axis=-1))
    return hook("attn.hook_pattern", probs)


def _repeat_kv(x, num_heads: int):
    """[B, S, K, D] -> [B, S, H, D], kv head j serving query heads j*G .. j*G + G-1."""
    return jnp.repeat(x, num_heads // x.shape[2], axis=2)


def pallas_attention(q, k, v, key_mask, dtype=jnp.float32):
    """Causal flash attention with a padding mask, from JAX's Pallas kernel library.

    GPU: `pallas.ops.gpu.attention.mha` (Triton); CPU: the same kernel in interpret mode
    (slow, for tests); TPU: `pallas.ops.tpu.flash_attention`. Padding becomes segment ids
    (real = 1, pad = 0), which equals causal & key_mask for every real query.

    Args:
      q: [B, T, H, D]; k, v: [B, T, K, D] (self-attention without a cache: S == T).
      key_mask: [B, T] (1 = real token) or None.
    Returns:
      [B, T, H, D] in `dtype`.
    """
    b, t, h, d = q.shape
    if k.shape[1] != t:
        raise UnsupportedAttention("pallas_attention needs S == T (no cache); use 'einsum'.")
    k, v = _repeat_kv(k, h), _repeat_kv(v, h)
    seg = None if key_mask is None else key_mask.astype(jnp.int32)
    backend = jax.default_backend()
    if backend == "tpu":
        from jax.experimental.pallas.ops.tpu import flash_attention as tpu_fa

        segs = None if seg is None else tpu_fa.SegmentIds(q=seg, kv=seg)
        out = tpu_fa.flash_attention(
            *(x.transpose(0, 2, 1, 3) for x in (q, k, v)),
            segment_ids=segs, causal=True, sm_scale=d ** -0.5,
        )
        return out.transpose(0, 2, 1, 3).astype(dtype)
    from jax.experimental.pallas.ops.gpu import attention as gpu_fa

    if t > 128 and t % 128:
        raise UnsupportedAttention(
            f"attention_impl='pallas' on {backend} needs a length <= 128 or a multiple of 128 "
            f"(kernel block size), got {t}; pad the batch or use attention_impl='xla'."
        )
    out = gpu_fa.mha(q, k, v, seg, sm_scale=d ** -0.5, causal=True,
                     interpret=backend == "cpu")
    return out.astype(dtype)


def dot_product_attention(q, k, v, mask, bias=None, impl: str = "einsum", dropout_rate=0.0,
                          dropout_rng=None, dtype=jnp.float32, key_mask=None, is_causal=False):
    """Dispatches to the implementation `impl`. Shapes as in `einsum_attention`.

    `key_mask` [B, S] is what the Pallas kernel reads instead of `mask` (causal is implied).
    `is_causal`: `mask` is exactly the causal mask (T == S, no padding, window or cache); the
    xla and cudnn kernels then make it themselves instead of reading the [B, 1, T, S] array
    (cuDNN's causal mask type skips the masked tiles).
    """
    if impl == "einsum":
        return einsum_attention(q, k, v, mask, bias, dropout_rate, dropout_rng, dtype)
    if dropout_rate > 0.0:
        raise UnsupportedAttention(
            f"attention_impl={impl!r} has no attention dropout; set model.attn_pdrop=0.0 "
            "or use attention_impl='einsum'."
        )
    if impl == "pallas":
        return pallas_attention(q, k, v, key_mask, dtype)
    if impl == "blocked":
        if k.shape[1] == q.shape[1]:
            return blocked_attention(q, k, v, mask, bias, dtype)
        impl = "xla"  # a cached decode step: its query slots are not static
    if impl in ("xla", "cudnn"):
        if impl == "cudnn" and jax.default_backend() != "gpu":
            raise UnsupportedAttention(
                "attention_impl='cudnn' needs an NVIDIA GPU; use 'xla' or 'einsum' on "
                f"{jax.default_backend()}."
            )
        out = jax.nn.dot_product_attention(
            q.astype(dtype), k.astype(dtype), v.astype(dtype),
            bias=None if bias is None else bias.astype(dtype),
            mask=None if is_causal else mask, is_causal=is_causal, implementation=impl,
        )
        return out.astype(dtype)
    raise UnsupportedAttention(
        f"attention_impl={impl!r} is not available; use 'einsum', 'xla', 'cudnn', 'pallas' "
        "or 'blocked'."
    )


# ----------------------------------------------------------------------------- the layer


def _dense(cfg, features, axes: tuple, name: str, std=None, axis=-1) -> nn.DenseGeneral:
    """A projection whose kernel has logical `axes` (inputs first); the bias gets the rest."""
    n_in = len(axis) if isinstance(axis, tuple) else 1
    return nn.DenseGeneral(
        features=features, axis=axis, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
        kernel_init=init.normal(cfg, axes, std), bias_init=init.zeros(axes[n_in:]), name=name,
    )


def _head_norm(cfg, name: str) -> nn.LayerNorm:
    """QK-norm: LayerNorm over head_dim, parameters [D] shared by all heads, float32."""
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_epsilon, dtype=jnp.float32, param_dtype=cfg.storage_dtype,
        scale_init=init.ones(("head_dim",)), bias_init=init.zeros(("head_dim",)), name=name,
    )


def fused_to_grouped(attn_params: dict) -> dict:
    """Maps GPT-2's fused `c_attn` ({kernel [E, 3, H, D], bias [3, H, D]}) onto the
    grouped layout `c_q` ({kernel [E, H, D], bias [H, D]}) + `c_kv` ({kernel [E, 2, H, D],
    bias [2, H, D]}), i.e. n_kv_heads = n_head. Other entries are kept."""
    out = {k: v for k, v in attn_params.items() if k != "c_attn"}
    kernel, bias = attn_params["c_attn"]["kernel"], attn_params["c_attn"]["bias"]
    out["c_q"] = {"kernel": kernel[:, 0], "bias": bias[0]}
    out["c_kv"] = {"kernel": kernel[:, 1:], "bias": bias[1:]}
    return out


class Attention(nn.Module):
    """Causal self-attention with all variants and an optional KV cache (`cfg`: GPT2Config)."""

    cfg: Any

    @nn.compact
    def __call__(self, x, key_mask, positions, deterministic: bool, decode: bool, cache_index):
        """Args:
          x: [B, T, E] hidden states.
          key_mask: [B, S] (1 = attend; padding 0), or None.
          positions: [B, T] int position ids of the queries.
          deterministic: disable dropout.
          decode: read and append to the KV cache at slot `cache_index`.
          cache_index: int32 scalar, the first free cache slot (decode only).
        Returns:
          [B, T, E].
        """
        cfg = self.cfg
        q, k, v = self._project(x)
        if cfg.qk_norm:
            q = _head_norm(cfg, "q_norm")(q).astype(cfg.compute_dtype)
            k = _head_norm(cfg, "k_norm")(k).astype(cfg.compute_dtype)
        q, k, v = (hooks.hook(self, f"attn.hook_{n}", a) for n, a in zip("qkv", (q, k, v)))
        if cfg.position == "rope":
            q, k = (hooks.hook(self, f"attn.hook_rot_{n}",
                               pos_lib.apply_rope(a, positions, cfg.rope_theta))
                    for n, a in (("q", q), ("k", k)))
        q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))
        length = x.shape[1]
        k_positions = positions
        query_slots = jnp.arange(length)
        dropout_rate = 0.0 if deterministic else cfg.attn_pdrop
        one_query = False  # a decode step: one new query per row against the cache
        if decode:
            k, v, k_positions = self._update_cache(k, v, positions, cache_index)
            query_slots = cache_index + query_slots
            one_query = length == 1 and not dropout_rate and not hooks.wants(*hooks.SCORE_HOOKS)
            if not one_query:  # a prompt: the kernels below read [B, S, K, D]
                k, v = (a.transpose(0, 2, 1, 3) for a in (k, v))
        num_keys = k.shape[2] if one_query else k.shape[1]
        mask = attention_mask(query_slots, num_keys, key_mask, positions, k_positions,
                              cfg.sliding_window)
        bias = None
        if cfg.position == "alibi":
            bias = pos_lib.alibi_bias(cfg.n_head, positions, k_positions)
        impl = "einsum" if decode and cfg.attention_impl == "pallas" else cfg.attention_impl
        dropout_rng = self.make_rng("dropout") if dropout_rate > 0 else None
        if one_query:
            out = cached_attention(q, k, v, mask, bias, cfg.compute_dtype)
        elif hooks.wants(*hooks.SCORE_HOOKS):  # the reference path, which forms the scores
            out = einsum_attention(q, k, v, mask, bias, dropout_rate, dropout_rng,
                                   cfg.compute_dtype, functools.partial(hooks.hook, self))
        else:
            if impl == "cudnn" and key_mask is not None:
                mask = with_own_slot(mask, query_slots)
            is_causal = key_mask is None and not cfg.sliding_window and not decode
            out = dot_product_attention(q, k, v, mask, bias, impl, dropout_rate, dropout_rng,
                                        cfg.compute_dtype, key_mask, is_causal)  # [B, T, H, D]
        out = hooks.hook(self, "attn.hook_z", out)
        out = _dense(cfg, cfg.n_embd, ("heads", "head_dim", "embed"), "c_proj",
                     init.residual_std(cfg), axis=(-2, -1))(out)
        return nn.Dropout(cfg.resid_pdrop)(out, deterministic=deterministic)

    def _project(self, x):
        """x [B, T, E] -> q [B, T, H, D], k and v [B, T, K, D]."""
        cfg = self.cfg
        h, d = cfg.n_head, cfg.head_dim
        if cfg.n_kv_heads == 0:  # GPT-2's fused layout, parameter names as released
            qkv = _dense(cfg, (3, h, d), ("embed", None, "heads", "head_dim"), "c_attn")(x)
            return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        kvh = cfg.n_kv_heads
        kv_axis = "kv_heads" if kvh > 1 else None  # one kv head (MQA) is always replicated
        q = _dense(cfg, (h, d), ("embed", "heads", "head_dim"), "c_q")(x)
        kv = _dense(cfg, (2, kvh, d), ("embed", None, kv_axis, "head_dim"), "c_kv")(x)
        return q, kv[:, :, 0], kv[:, :, 1]

    def _update_cache(self, k, v, positions, cache_index):
        """Writes k, v [B, T, K, D] (and positions [B, T] when masks or biases need them)
        at slot `cache_index`; returns the whole cache: k, v [B, K, S, D], positions [B, S].

        S is the input length at `init_cache` time. Without ALiBi or a sliding window the
        key positions are never read, so they are not cached (the returned value is a dummy).
        """
        cfg = self.cfg
        keep_positions = cfg.position == "alibi" or cfg.sliding_window > 0
        k, v = (a.transpose(0, 2, 1, 3) for a in (k, v))  # [B, K, T, D]: kv heads first
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        cached_p = None
        if keep_positions:
            cached_p = self.variable("cache", "cached_positions", jnp.zeros, positions.shape,
                                     jnp.int32)
        if self.is_initializing():
            return k, v, positions
        start = (0, 0, cache_index, 0)
        cached_k.value = jax.lax.dynamic_update_slice(
            cached_k.value, k.astype(cached_k.value.dtype), start)
        cached_v.value = jax.lax.dynamic_update_slice(
            cached_v.value, v.astype(cached_v.value.dtype), start)
        batch, _, slots, _ = cached_k.value.shape
        key_positions = jnp.zeros((batch, slots), jnp.int32)
        if keep_positions:
            cached_p.value = jax.lax.dynamic_update_slice(
                cached_p.value, positions.astype(jnp.int32), (0, cache_index))
            key_positions = cached_p.value
        return cached_k.value, cached_v.value, key_positions
