"""Attention variants: training, cached decode, sharding, kernels, RoPE, ALiBi, GQA mapping.

Every variant is a `GPT2Config` override; the defaults must stay exact GPT-2 (HF parity).
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from configs import common
from gpt2jax.nn import attention as attn_lib
from gpt2jax.nn import blocked_attention as blocked_lib
from gpt2jax.nn import positions as pos_lib
from gpt2jax.parallel import sharding
from gpt2jax.parallel.placement import Placement
from gpt2jax.errors import ConfigError
from gpt2jax.nn.model import GPT2, GPT2Config, init_params, kv_cache_bytes_per_token
from gpt2jax.nn.model import logical_axes
from helpers import decode_step_by_step

TINY = dict(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4,
            embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)

# Every variant appears in at least one configuration below; combining them keeps CI short
# and also exercises their interactions (e.g. RoPE + sliding window in the cache).
VARIANTS = {
    "gpt2": {},
    "mqa_rope_window": dict(n_kv_heads=1, position="rope", sliding_window=3),
    "gqa_alibi_qknorm": dict(n_kv_heads=2, position="alibi", qk_norm=True),
    "postln_nope": dict(norm_position="post", position="none"),
}


def tiny(**kw) -> GPT2Config:
    return GPT2Config(**{**TINY, **kw})


def _batch(cfg, batch=4, length=12, seed=1):
    """Random ids and a left-padded mask (row r has r pad tokens), HF-style positions."""
    ids = jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)
    mask = (jnp.arange(length)[None, :] >= jnp.arange(batch)[:, None]).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    return ids, mask, positions


def _loss(cfg, params, ids, mask, positions):
    """Mean next-token cross-entropy where input and target are real tokens (a pad slot's
    output, which kernels may compute differently, is never scored); returns (loss, logits
    [B, T, V])."""
    logits = GPT2(cfg).apply({"params": params}, ids, attention_mask=mask,
                             position_ids=positions)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
    weights = jnp.ones_like(ce) if mask is None else mask[:, :-1] * mask[:, 1:]
    return (ce * weights).sum() / weights.sum(), logits


def _sharded_loss(cfg, params, batch):
    """The loss on a (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices (as training.step does:
    Auto axes, shardings on jit's inputs, logical rules active while tracing)."""
    mesh_cfg = common.mesh_config()
    mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor = 2, 2, 2
    mesh = sharding.make_mesh(mesh_cfg)  # Auto axes
    rules = sharding.rules(mesh_cfg)
    place = Placement(mesh, rules)
    param_sh = place.shardings(logical_axes(cfg), params)
    batch_sh = place.batch_sharding()
    assert tuple(param_sh["h_0"]["mlp"]["c_fc"]["kernel"].spec) == ("fsdp", "tensor")
    with nn.logical_axis_rules(rules):
        fn = jax.jit(lambda p, i, m, q: _loss(cfg, p, i, m, q)[0],
                     in_shardings=(param_sh, batch_sh, batch_sh, batch_sh))
        return fn(place.put_params(params, logical_axes(cfg)), *batch)


def _train(cfg, params, batch, steps=5):
    """A few AdamW steps on one repeated batch; returns (losses, logits of the initial params)."""
    opt = optax.adamw(3e-3)

    @jax.jit
    def step(p, state):
        (loss, logits), grads = jax.value_and_grad(
            lambda p: _loss(cfg, p, *batch), has_aux=True)(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss, logits

    state, losses, first_logits = opt.init(params), [], None
    for _ in range(steps):
        params, state, loss, logits = step(params, state)
        losses.append(float(loss))
        first_logits = logits if first_logits is None else first_logits
    return losses, first_logits


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_trains_decodes_and_shards(name):
    cfg = tiny(**VARIANTS[name])
    params = jax.jit(lambda key: init_params(cfg, key))(jax.random.key(0))
    batch = _batch(cfg)

    # 1) trains: a few AdamW steps on a repeated batch lower the loss.
    losses, full = _train(cfg, params, batch)
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.05, losses

    # 2) cached decode (prefill 5, then 1 by 1, left padded) == full forward on real tokens.
    ids, mask, positions = batch
    cached, cache = decode_step_by_step(cfg, params, ids, mask, positions, prefill=5)
    real = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(cached)[real], np.asarray(full)[real], atol=1e-5)
    assert cache["h_0"]["attn"]["cached_key"].shape == (4, cfg.kv_heads, 12, cfg.head_dim)

    # 3) sharded on 8 simulated devices == one device (the initial params' loss).
    sharded = _sharded_loss(cfg, params, batch)
    np.testing.assert_allclose(float(sharded), losses[0], atol=1e-5)


def test_xla_kernel_matches_einsum():
    cfg = tiny(n_kv_heads=2, position="alibi", sliding_window=4)  # GQA, bias and window
    params = jax.jit(lambda key: init_params(cfg, key))(jax.random.key(0))
    ids, mask, positions = _batch(cfg)
    run = lambda c: jax.jit(GPT2(c).apply)({"params": params}, ids, mask, positions)
    real = np.asarray(mask).astype(bool)
    ref, xla = run(cfg), run(cfg.replace(attention_impl="xla"))
    np.testing.assert_allclose(np.asarray(xla)[real], np.asarray(ref)[real], atol=1e-5)


def test_unpadded_batches_pass_the_causal_flag_to_the_xla_kernel(monkeypatch):
    """Without an attention mask or window (training) the xla/cudnn kernels get `is_causal`
    and no mask array; logits and gradients still equal the reference (ALiBi bias kept)."""
    seen = []
    kernel = jax.nn.dot_product_attention

    def spy(*args, **kwargs):
        seen.append((kwargs["is_causal"], kwargs["mask"] is None))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(attn_lib.jax.nn, "dot_product_attention", spy)
    cfg = tiny(n_kv_heads=2, position="alibi")
    params = jax.jit(lambda key: init_params(cfg, key))(jax.random.key(0))
    ids, _, _ = _batch(cfg)

    def run(c):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            GPT2(c).apply({"params": p}, ids)[:, :-1], ids[:, 1:]).mean()
        return jax.jit(jax.value_and_grad(loss))(params)

    (ref, ref_g), (got, got_g) = run(cfg), run(cfg.replace(attention_impl="xla"))
    assert seen and all(flag and no_mask for flag, no_mask in seen), seen
    np.testing.assert_allclose(got, ref, atol=1e-6)
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(ref_g)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    seen.clear()  # a padded batch or a window keeps the explicit mask
    mask = _batch(cfg)[1]
    jax.jit(GPT2(cfg.replace(attention_impl="xla")).apply)({"params": params}, ids, mask)
    jax.jit(GPT2(cfg.replace(attention_impl="xla", sliding_window=4)).apply)(
        {"params": params}, ids)
    assert seen == [(False, False)] * (2 * cfg.n_layer), seen


def test_with_own_slot_changes_only_queries_that_see_no_key():
    """The cuDNN guard: in a prefill (slots 0..7) the two left-padding queries of row 0 see
    no key and get their own slot; every other row is unchanged, also in a decode step."""
    key_mask = jnp.array([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    positions = jnp.zeros((2, 8), jnp.int32)
    slots = jnp.arange(8)
    mask = np.asarray(attn_lib.attention_mask(slots, 8, key_mask, positions, positions, 0))
    fixed = np.asarray(attn_lib.with_own_slot(jnp.asarray(mask), slots))
    dead = ~mask.any(-1)  # [B, 1, T]
    assert dead.sum() == 2 and dead[0, 0, :2].all()
    np.testing.assert_array_equal(fixed[~dead], mask[~dead])
    np.testing.assert_array_equal(fixed[dead], np.eye(8, dtype=bool)[:2])
    step = attn_lib.attention_mask(jnp.array([5]), 8, key_mask, positions[:, :1], positions, 0)
    np.testing.assert_array_equal(attn_lib.with_own_slot(step, jnp.array([5])), step)


@pytest.mark.parametrize("block", [3, 5, 12])
def test_blocked_kernel_matches_einsum(block):
    """Query blocks of 3 and 5 over 12 positions (a partial last block; 12 = one block), GQA,
    ALiBi, a sliding window and left padding: values and gradients of every real query."""
    b, t, h, kv, d = 3, 12, 4, 2, 8
    kq, kk, kvv, kg = jax.random.split(jax.random.key(4), 4)
    q = jax.random.normal(kq, (b, t, h, d))
    k = jax.random.normal(kk, (b, t, kv, d))
    v = jax.random.normal(kvv, (b, t, kv, d))
    key_mask = (jnp.arange(t)[None, :] >= jnp.array([[0], [2], [7]])).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(key_mask, axis=1) - 1, 0)
    mask = attn_lib.attention_mask(jnp.arange(t), t, key_mask, positions, positions, 4)
    bias = pos_lib.alibi_bias(h, positions, positions)
    real = key_mask[:, :, None, None]  # pad queries see no key: never read
    cotangent = jax.random.normal(kg, (b, t, h, d)) * real

    def f(kernel, q, k, v):
        return (kernel(q, k, v) * cotangent).sum()

    ref = lambda q, k, v: attn_lib.einsum_attention(q, k, v, mask, bias)
    got = lambda q, k, v: blocked_lib.blocked_attention(q, k, v, mask, bias, block=block)
    np.testing.assert_allclose(jax.jit(got)(q, k, v) * real, jax.jit(ref)(q, k, v) * real,
                               atol=1e-5)
    grad = jax.jit(jax.grad(f, argnums=(1, 2, 3)), static_argnums=0)
    grads = [grad(fn, q, k, v) for fn in (got, ref)]
    for a, r in zip(*grads):
        np.testing.assert_allclose(a, r, atol=1e-5)


def test_blocked_impl_matches_einsum_in_the_model():
    """A length of 300 runs three blocks of 128 (the last partial) through the model:
    logits and loss gradients equal the reference; a cached decode step uses the xla kernel."""
    cfg = tiny(n_positions=300, n_kv_heads=2, position="rope")
    params = jax.jit(lambda key: init_params(cfg, key))(jax.random.key(0))
    assert 300 > 2 * blocked_lib.BLOCK
    ids, mask, positions = _batch(cfg, batch=2, length=300)
    real = np.asarray(mask).astype(bool)

    def loss(c, p):  # real queries only: a pad query sees no key, its output is never read
        logits = GPT2(c).apply({"params": p}, ids, attention_mask=mask, position_ids=positions)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
        return (ce * mask[:, :-1] * mask[:, 1:]).sum(), logits

    def run(c):
        (_, logits), grads = jax.jit(jax.value_and_grad(lambda p: loss(c, p), has_aux=True))(
            params)
        return np.asarray(logits)[real], grads

    (ref, ref_g), (got, got_g) = run(cfg), run(cfg.replace(attention_impl="blocked"))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    for a, r in zip(jax.tree.leaves(got_g), jax.tree.leaves(ref_g)):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)  # summed loss: |g| up to ~50
    blocked = cfg.replace(attention_impl="blocked")
    cached, _ = decode_step_by_step(blocked, params, ids[:, :16], mask[:, :16],
                                    positions[:, :16], 5)
    full = GPT2(cfg).apply({"params": params}, ids[:, :16], attention_mask=mask[:, :16],
                           position_ids=positions[:, :16])
    np.testing.assert_allclose(np.asarray(cached)[real[:, :16]],
                               np.asarray(full)[real[:, :16]], atol=1e-5)


def test_pallas_kernel_matches_einsum_in_interpret_mode():
    """The GPU Pallas flash-attention kernel, interpreted on CPU (values; gradients on GPU)."""
    b, t, h, kv, d = 2, 8, 2, 1, 8
    kq, kk, kvv = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(kq, (b, t, h, d))
    k = jax.random.normal(kk, (b, t, kv, d))
    v = jax.random.normal(kvv, (b, t, kv, d))
    key_mask = (jnp.arange(t)[None, :] >= jnp.array([[0], [3]])).astype(jnp.int32)
    positions = jnp.zeros((b, t), jnp.int32)
    mask = attn_lib.attention_mask(jnp.arange(t), t, key_mask, positions, positions, 0)

    def f(impl, q, k, v):
        out = attn_lib.dot_product_attention(q, k, v, mask, impl=impl, key_mask=key_mask)
        return out * key_mask[:, :, None, None]  # pad queries differ by design

    np.testing.assert_allclose(f("pallas", q, k, v), f("einsum", q, k, v), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "causal_flag"])
@pytest.mark.parametrize("impl", ["cudnn", "pallas", "xla", "blocked"])
def test_gpu_kernels_match_einsum(impl, padded):
    """Logits and loss gradients of each kernel against the einsum reference on a GPU, with
    left padding (a mask array) and without (training: xla/cudnn get `is_causal`).

    cuDNN flash attention runs in bfloat16 only, so it is compared in bfloat16."""
    assert jax.default_backend() == "gpu", "run with JAX_PLATFORMS=cuda (bench/gpu.sh)"
    dtype = "bfloat16" if impl == "cudnn" else "float32"
    cfg = tiny(n_embd=128, n_head=4, n_kv_heads=2, n_positions=128, dtype=dtype)
    params = init_params(cfg, jax.random.key(0))
    ids, mask, positions = _batch(cfg, length=64)
    if not padded:
        mask, positions = None, None
    real = np.ones(ids.shape, bool) if mask is None else np.asarray(mask).astype(bool)

    def run(c):
        fn = jax.jit(jax.value_and_grad(lambda p: _loss(c, p, ids, mask, positions),
                                        has_aux=True))
        (loss, logits), grads = fn(params)
        return np.asarray(logits)[real], grads

    (ref, ref_g), (got, got_g) = run(cfg), run(cfg.replace(attention_impl=impl))
    tol = 5e-2 if impl == "cudnn" else 1e-4
    np.testing.assert_allclose(got, ref, atol=tol)
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(ref_g)):
        np.testing.assert_allclose(a, b, atol=tol)


def test_rope_scores_depend_only_on_relative_position():
    kq, kk = jax.random.split(jax.random.key(0))
    q = jax.random.normal(kq, (1, 6, 2, 16))
    k = jax.random.normal(kk, (1, 6, 2, 16))
    pos = jnp.arange(6)[None]

    def scores(shift):
        qr = pos_lib.apply_rope(q, pos + shift, 10000.0)
        kr = pos_lib.apply_rope(k, pos + shift, 10000.0)
        return jnp.einsum("bthd,bshd->bhts", qr, kr)

    base = scores(0)
    for shift in (7, 300):
        np.testing.assert_allclose(scores(shift), base, atol=1e-4)
    # not trivially invariant: rotating q alone changes the scores
    moved = jnp.einsum("bthd,bshd->bhts", pos_lib.apply_rope(q, pos + 3, 1e4),
                       pos_lib.apply_rope(k, pos, 1e4))
    assert np.abs(np.asarray(moved - base)).max() > 1e-2


def test_relative_schemes_make_the_model_shift_invariant():
    """With RoPE or ALiBi (no absolute embedding), shifting every position id changes
    nothing (the RoPE score test above shows the shift is not a no-op)."""
    ids, _, _ = _batch(tiny(), batch=2, length=8)
    pos = jnp.broadcast_to(jnp.arange(8), ids.shape)
    for position in ("rope", "alibi"):
        cfg = tiny(position=position)
        params = jax.jit(lambda key: init_params(cfg, key))(jax.random.key(0))
        run = jax.jit(lambda p: GPT2(cfg).apply({"params": params}, ids, position_ids=p))
        diff = np.abs(np.asarray(run(pos + 11) - run(pos))).max()
        assert diff < 1e-5, (position, diff)


def test_alibi_slopes_follow_the_paper():
    # Press et al. 2022: n = 2^k -> 2^(-8i/n), i = 1..n; otherwise the closest power of two
    # m, then every other slope of 2m.
    np.testing.assert_allclose(pos_lib.alibi_slopes(8), [2.0 ** -i for i in range(1, 9)])
    twelve = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -(i - 0.5) for i in (1, 2, 3, 4)]
    np.testing.assert_allclose(pos_lib.alibi_slopes(12), twelve)
    six = [2.0 ** -(2 * i) for i in range(1, 5)] + [2.0 ** -1, 2.0 ** -3]
    np.testing.assert_allclose(pos_lib.alibi_slopes(6), six)
    bias = pos_lib.alibi_bias(6, jnp.array([[5]]), jnp.array([[2, 5]]))
    np.testing.assert_allclose(bias[0, :, 0], np.stack([-3 * np.array(six), 0 * np.ones(6)], 1))


def test_grouped_layout_with_all_heads_equals_fused_multi_head():
    mha = tiny()
    params = jax.jit(lambda key: init_params(mha, key))(jax.random.key(0))
    grouped = {k: ({**v, "attn": attn_lib.fused_to_grouped(v["attn"])} if k.startswith("h_")
                   else v) for k, v in params.items()}
    gqa = tiny(n_kv_heads=mha.n_head)
    abstract = jax.eval_shape(lambda: init_params(gqa, jax.random.key(0)))
    assert jax.tree.map(jnp.shape, grouped) == jax.tree.map(jnp.shape, abstract)
    ids, mask, positions = _batch(mha)
    a = jax.jit(GPT2(mha).apply)({"params": params}, ids, mask, positions)
    b = jax.jit(GPT2(gqa).apply)({"params": grouped}, ids, mask, positions)
    np.testing.assert_array_equal(a, b)


def test_gqa_equals_multi_head_with_repeated_kv_heads():
    gqa = tiny(n_kv_heads=2)
    params = jax.jit(lambda key: init_params(gqa, key))(jax.random.key(0))
    mha = tiny(n_kv_heads=gqa.n_head)
    group = gqa.n_head // gqa.n_kv_heads
    repeated = jax.tree.map(lambda x: x, params)
    for i in range(gqa.n_layer):
        kv = params[f"h_{i}"]["attn"]["c_kv"]
        repeated[f"h_{i}"]["attn"]["c_kv"] = {
            "kernel": jnp.repeat(kv["kernel"], group, axis=2),
            "bias": jnp.repeat(kv["bias"], group, axis=1)}
    ids, mask, positions = _batch(gqa)
    a = jax.jit(GPT2(gqa).apply)({"params": params}, ids, mask, positions)
    b = jax.jit(GPT2(mha).apply)({"params": repeated}, ids, mask, positions)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_kv_cache_shrinks_with_kv_heads_and_axes_are_named():
    full = kv_cache_bytes_per_token(tiny())
    assert full == 2 * TINY["n_layer"] * TINY["n_embd"] * 4
    assert kv_cache_bytes_per_token(tiny(n_kv_heads=2)) == full // 2
    assert kv_cache_bytes_per_token(tiny(n_kv_heads=1)) == full // 4
    axes = logical_axes(tiny(n_kv_heads=2))["h_0"]["attn"]
    assert tuple(axes["c_kv"]["kernel"]) == ("embed", None, "kv_heads", "head_dim")
    assert tuple(axes["c_q"]["kernel"]) == ("embed", "heads", "head_dim")
    shapes = lambda cfg: jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    assert "wpe" not in shapes(tiny(position="rope")) and "wpe" in shapes(tiny())
    assert "ln_f" not in shapes(tiny(norm_position="post"))


@pytest.mark.parametrize("overrides, words", [
    (dict(position="alibi", attention_impl="pallas"), "'xla'"),
    (dict(sliding_window=4, attention_impl="pallas"), "'xla'"),
    (dict(n_kv_heads=3), "[1, 2, 4]"),
    (dict(position="absolute"), "'sinusoidal'"),
    (dict(norm_position="sandwich"), "'post'"),
    (dict(sliding_window=-1), ">= 0"),
    (dict(n_embd=36, n_head=4, position="rope"), "even head_dim"),
])
def test_bad_variants_raise_clear_config_errors(overrides, words):
    with pytest.raises(ConfigError) as err:
        tiny(**overrides)
    assert words in str(err.value)


def test_runtime_unsupported_combinations_name_the_alternative():
    q = jnp.ones((1, 4, 2, 8))
    mask = jnp.ones((1, 1, 4, 4), bool)
    with pytest.raises(attn_lib.UnsupportedAttention, match="einsum"):
        attn_lib.dot_product_attention(q, q, q, mask, impl="xla", dropout_rate=0.1,
                                       dropout_rng=jax.random.key(1))
    with pytest.raises(attn_lib.UnsupportedAttention, match="'xla'"):
        attn_lib.dot_product_attention(q, q, q, mask, impl="cudnn")
    with pytest.raises(attn_lib.UnsupportedAttention, match="'xla'"):
        attn_lib.pallas_attention(jnp.ones((1, 200, 2, 8)), jnp.ones((1, 200, 2, 8)),
                                  jnp.ones((1, 200, 2, 8)), None)
