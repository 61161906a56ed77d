"""Decode-step kernels: attention against the [B, K, S, D] KV cache (exact, no cache copies)
and the vocabulary-major head of a few rows (exact, [V, B] product)."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2jax.generation.plan import model_step
from gpt2jax.nn import attention as attn_lib
from gpt2jax.nn import positions as pos_lib
from gpt2jax.nn.decode_kernels import cached_attention, few_rows_logits
from gpt2jax.nn.model import GPT2Config, init_cache, init_params

TINY = dict(vocab_size=96, n_positions=64, n_embd=64, n_layer=2, n_head=4,
            embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("queries", [1, 3])
def test_cached_kernel_matches_einsum_reference(kv_heads, queries):
    """Padding, a sliding window and an ALiBi bias, multi-/grouped-/multi-query heads."""
    b, h, d, s = 3, 4, 16, 24
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, queries, h, d))
    k = jax.random.normal(keys[1], (b, s, kv_heads, d))
    v = jax.random.normal(keys[2], (b, s, kv_heads, d))
    key_mask = (jnp.arange(s)[None] >= jnp.arange(b)[:, None] * 2).astype(jnp.int32)
    k_positions = jnp.maximum(jnp.cumsum(key_mask, axis=1) - 1, 0)
    slots = 10 + jnp.arange(queries)  # the queries sit at cache slots 10..
    q_positions = k_positions[:, 10:10 + queries]
    mask = attn_lib.attention_mask(slots, s, key_mask, q_positions, k_positions, window=6)
    bias = pos_lib.alibi_bias(h, q_positions, k_positions)
    want = attn_lib.einsum_attention(q, k, v, mask, bias)
    got = cached_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, bias)
    assert got.shape == want.shape == (b, queries, h, d)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _cache_sized_copies(hlo: str, elements: int) -> list[str]:
    """Lines of optimized HLO that transpose or copy an array of `elements` values."""
    out = []
    for line in hlo.splitlines():
        m = re.search(r"= f32\[([\d,]*)\]\{[\d,]*\} (transpose|copy)\(", line)
        if m and math.prod(int(x) for x in m.group(1).split(",") if x) == elements:
            out.append(line.strip())
    return out


@pytest.mark.parametrize("batch", [2, 4])
def test_decode_step_reads_the_cache_in_place(batch):
    """A compiled one-token step (model and cache write) neither transposes nor copies a
    layer's cache: with the cache stored [B, S, K, D] XLA transposed it twice per layer per
    token to form the attention's dots."""
    cfg = GPT2Config(**TINY)
    params = init_params(cfg, jax.random.key(0))
    slots = cfg.n_positions
    cache = init_cache(cfg, batch, slots)
    step = jax.jit(lambda p, c, i, m, pos: model_step(cfg, p, c, i, m, pos), donate_argnums=1)
    ids = jnp.zeros((batch, 1), jnp.int32)
    mask = jnp.ones((batch, slots), jnp.int32)
    hlo = step.lower(params, cache, ids, mask, ids).compile().as_text()
    assert "dot(" in hlo or "dot_general" in hlo or "fusion" in hlo  # the step was compiled
    elements = batch * slots * cfg.n_embd  # one layer's keys (or values): B * S * H * D
    assert not _cache_sized_copies(hlo, elements), _cache_sized_copies(hlo, elements)[:4]
    logits, new_cache = step(params, cache, ids, mask, ids)
    assert logits.shape == (batch, cfg.vocab_size)
    assert new_cache["h_0"]["attn"]["cached_key"].shape == (batch, cfg.n_head, slots,
                                                            cfg.head_dim)


def test_few_rows_head_is_the_tied_head_computed_vocabulary_major():
    """Equal to x @ wte^T, and compiled as one [V, B] product (the form that streams wte once
    with the rows as the small operand), not folded back into [B, V]."""
    keys = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(keys[0], (8, 1, 64))
    wte = jax.random.normal(keys[1], (1000, 64))
    got = few_rows_logits(x, wte)
    np.testing.assert_allclose(got, x @ wte.T, rtol=1e-5, atol=1e-5)
    hlo = jax.jit(few_rows_logits).lower(x, wte).compile().as_text()
    assert re.search(r"= f32\[1000,8\]\{1,0\} (dot|fusion)\(", hlo), hlo[-2000:]
