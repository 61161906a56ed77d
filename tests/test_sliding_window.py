"""Sliding-window attention against an independent brute-force reference.

The model's full forward and its cached decode share `attention.attention_mask`, so checking
one against the other cannot catch a wrong window. Here the reference is a plain numpy GPT-2
written from the definition: for every query position p an explicit Python loop collects the
keys at positions (p - W, p] (all keys <= p when W = 0) and softmaxes over exactly those. It
runs in float64 on each row's real tokens only (no padding, positions 0..n-1), so it also
checks that left padding does not shift the window.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt2jax
from gpt2jax.nn.model import GPT2, GPT2Config, init_cache, init_params

T = 10  # the padded batch width; rows hold 10, 9, 8 real tokens
TINY = dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
            embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
WINDOWS = (1, 2, 5, T, T + 4)  # W = 1 (only itself), small, mid, W = T and W > T (= causal)
# (the cached decode compiles twice per window, so it takes 1, a mid one and W = T)


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _layer_norm(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _brute_force_attention(q, k, v, window: int):
    """q, k, v [n, H, D] -> [n, H, D]; query p attends keys j with p - window < j <= p."""
    n, _, d = q.shape
    out = np.zeros_like(q)
    for p in range(n):
        keys = [j for j in range(n) if j <= p and (window == 0 or j > p - window)]
        scores = np.einsum("hd,khd->hk", q[p], k[keys]) / math.sqrt(d)  # [H, len(keys)]
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out[p] = np.einsum("hk,khd->hd", probs, v[keys])
    return out


def reference_logits(params, cfg: GPT2Config, ids, window: int):
    """A numpy GPT-2 (pre-LN, learned positions, tied head) on one row: ids [n] -> [n, V]."""
    p = _np(params)
    n, e = len(ids), cfg.n_embd
    x = p["wte"]["embedding"][ids] + p["wpe"]["embedding"][np.arange(n)]
    for i in range(cfg.n_layer):
        blk = p[f"h_{i}"]
        h = _layer_norm(x, blk["ln_1"])
        c_attn = blk["attn"]["c_attn"]  # kernel [E, 3, H, D], bias [3, H, D]
        qkv = np.einsum("ne,ethd->nthd", h, c_attn["kernel"]) + c_attn["bias"]
        att = _brute_force_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], window)
        c_proj = blk["attn"]["c_proj"]  # kernel [H, D, E]
        x = x + np.einsum("nhd,hde->ne", att, c_proj["kernel"]) + c_proj["bias"]
        h = _layer_norm(x, blk["ln_2"])
        mlp = blk["mlp"]
        h = _gelu_tanh(h @ mlp["c_fc"]["kernel"] + mlp["c_fc"]["bias"])
        x = x + h @ mlp["c_proj"]["kernel"] + mlp["c_proj"]["bias"]
    x = _layer_norm(x, p["ln_f"])
    assert x.shape == (n, e)
    return x @ p["wte"]["embedding"].T


@pytest.fixture(scope="module")
def model():
    cfg = GPT2Config(**TINY)
    params = jax.jit(lambda key: init_params(cfg, key))(jax.random.key(0))
    # Larger attention weights than GPT-2's init make the softmax far from uniform, so which
    # keys are in the window changes the logits clearly.
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a * 8.0 if "c_attn" in jax.tree_util.keystr(path) else a, params)
    return cfg, params


def _batch():
    """ids [3, T] and a left-padded mask (row r has r pads), HF-style position ids."""
    ids = np.asarray(jax.random.randint(jax.random.key(1), (3, T), 0, TINY["vocab_size"]))
    mask = (np.arange(T)[None, :] >= np.arange(3)[:, None]).astype(np.int32)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, positions


def _references(cfg, params, ids, mask, window):
    """The reference logits of each row's real tokens: list of [n_r, V]."""
    return [reference_logits(params, cfg, row[m.astype(bool)], window)
            for row, m in zip(ids, mask)]


def _compare(got, mask, refs, atol=2e-5):
    for r, ref in enumerate(refs):
        np.testing.assert_allclose(np.asarray(got[r])[mask[r].astype(bool)], ref, atol=atol)


def test_reference_window_reaches_the_logits(model):
    """The reference itself: a window shorter than the row changes the logits (so a model
    ignoring the window fails the tests below), a window >= the row length is plain causal."""
    cfg, params = model
    ids = _batch()[0][0]
    causal = reference_logits(params, cfg, ids, 0)
    for window in (1, 2, 5):
        diff = np.abs(reference_logits(params, cfg, ids, window) - causal)
        assert diff[:window].max() < 1e-9  # the first W queries see every earlier key anyway
        assert diff[window:].max() > 1e-2, (window, diff[window:].max())
    for window in (T, T + 4):
        np.testing.assert_array_equal(reference_logits(params, cfg, ids, window), causal)


@pytest.mark.parametrize("window", WINDOWS)
def test_full_forward_matches_brute_force(model, window):
    cfg, params = model
    cfg = cfg.replace(sliding_window=window)
    ids, mask, positions = _batch()
    got = jax.jit(GPT2(cfg).apply)({"params": params}, ids, mask, positions)
    _compare(got, mask, _references(cfg, params, ids, mask, window))


@pytest.mark.parametrize("window", (1, 3, T))
def test_cached_decode_matches_brute_force(model, window):
    """Prefill 4 slots, then one token per step through the KV cache (left padded)."""
    cfg, params = model
    cfg = cfg.replace(sliding_window=window)
    ids, mask, positions = _batch()
    step = jax.jit(lambda c, i, p: GPT2(cfg).apply(
        {"params": params, "cache": c}, i, attention_mask=mask, position_ids=p, decode=True,
        mutable=["cache"]))
    out, cache = step(init_cache(cfg, 3, T), ids[:, :4], positions[:, :4])
    outs = [out]
    for t in range(4, T):
        out, cache = step(cache["cache"], ids[:, t:t + 1], positions[:, t:t + 1])
        outs.append(out)
    assert int(cache["cache"]["cache_index"]) == T
    _compare(jnp.concatenate(outs, axis=1), mask, _references(cfg, params, ids, mask, window))


def test_generate_greedy_matches_brute_force(model, window=3):
    """`gpt2jax.generate` (bucketed prompt, compiled loop, cache) against a greedy loop over
    the reference: 8 new tokens after left-padded prompts of 6, 4 and 3 tokens."""
    cfg, params = model
    cfg = cfg.replace(sliding_window=window)
    ids, _, _ = _batch()
    mask = (np.arange(6)[None, :] >= np.array([[0], [2], [3]])).astype(np.int32)
    prompts = ids[:, :6] * mask
    got = np.asarray(gpt2jax.generate(cfg, params, prompts, mask, max_new_tokens=8,
                                      pad_token_id=0))
    assert got.shape == (3, 14)
    for r in range(3):
        seq = list(prompts[r][mask[r].astype(bool)])
        for _ in range(8):
            seq.append(int(np.argmax(reference_logits(params, cfg, np.array(seq), window)[-1])))
        assert got[r, 6:].tolist() == seq[-8:], (window, r)
