"""Scan over layers (`GPT2Config.scan_layers`): the scanned model equals the unrolled one.

Same weights (the unrolled params stacked by `stack_layers`): logits, loss and gradients of
a left-padded batch, greedy and beam tokens through `generate` (the stacked KV cache), for
every attention variant; remat runs inside the scan; the HF layout loads into and exports
from the scanned form; an Orbax checkpoint of one form is refused by the other, naming the
switch, and loads for inference in either form. HF parity in both forms: tests/test_weights.py.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transformers
from safetensors.numpy import load_file

from gpt2jax import generate, load_pretrained, save_pretrained
from gpt2jax.nn.model import GPT2, GPT2Config, init_cache, init_params, logical_axes
from gpt2jax.nn.scan import stack_layers, to_layout, unstack_layers
from gpt2jax.training import checkpoint

TINY = dict(vocab_size=96, n_positions=32, n_embd=32, n_layer=3, n_head=4,
            embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
# Every attention variant appears at least once (as in tests/test_attention.py).
VARIANTS = {
    "gpt2": {},
    "mqa_rope_window": dict(n_kv_heads=1, position="rope", sliding_window=3),
    "gqa_alibi_qknorm": dict(n_kv_heads=2, position="alibi", qk_norm=True),
    "postln_nope_remat": dict(norm_position="post", position="none", remat="full"),
}


def _init(cfg: GPT2Config, seed: int):
    """Random params, jitted (eager flax init compiles op by op: slow on CPU)."""
    return jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(seed))


def _pair(**kw) -> tuple[GPT2Config, GPT2Config]:
    cfg = GPT2Config(**{**TINY, **kw})
    return cfg, cfg.replace(scan_layers=True)


def _batch(cfg, batch=3, length=10):
    """Random ids, a left-padded mask (row r has r pads) and HF-style positions, [B, T]."""
    ids = jax.random.randint(jax.random.key(1), (batch, length), 0, cfg.vocab_size)
    mask = (jnp.arange(length)[None, :] >= jnp.arange(batch)[:, None]).astype(jnp.int32)
    return ids, mask, jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)


def _loss_and_grads(cfg, params, ids, mask, positions):
    """((loss, logits [B, T, V]), grads) of the token-mean cross-entropy over real tokens."""

    def loss(p):
        logits = GPT2(cfg).apply({"params": p}, ids, attention_mask=mask,
                                 position_ids=positions)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:])
        return (ce * mask[:, 1:]).sum() / mask[:, 1:].sum(), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_scanned_equals_unrolled(variant):
    cfg, scan_cfg = _pair(**VARIANTS[variant])
    params = _init(cfg, 0)
    stacked = stack_layers(params)
    # the stacked pytree is exactly what the scanned model itself creates
    own = jax.eval_shape(functools.partial(init_params, scan_cfg), jax.random.key(0))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), own) == jax.tree.map(
        lambda x: (x.shape, x.dtype), stacked)
    assert stacked["h"]["ln_1"]["scale"].shape == (cfg.n_layer, cfg.n_embd)
    assert not any(k.startswith("h_") for k in stacked)
    batch = _batch(cfg)
    (loss, logits), grads = _loss_and_grads(cfg, params, *batch)
    (s_loss, s_logits), s_grads = _loss_and_grads(scan_cfg, stacked, *batch)
    _close(s_logits, logits)
    _close(s_loss, loss)
    _close(s_grads, stack_layers(grads))
    assert float(jnp.abs(grads["h_2"]["mlp"]["c_fc"]["kernel"]).max()) > 0  # reached layer 3
    jax.tree.map(np.testing.assert_array_equal, unstack_layers(stacked), params)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_generate_greedy_and_beams_through_the_stacked_cache(variant):
    cfg, scan_cfg = _pair(**VARIANTS[variant])
    params = _init(cfg, 2)
    stacked = stack_layers(params)
    cache = init_cache(scan_cfg, 2, 8)
    want_shape = (cfg.n_layer, 2, cfg.kv_heads, 8, cfg.head_dim)  # [L, B, K, S, D]
    assert cache["h"]["attn"]["cached_key"].shape == want_shape
    prompts = np.asarray(jax.random.randint(jax.random.key(3), (2, 5), 0, cfg.vocab_size))
    mask = np.ones_like(prompts)
    mask[1, :2] = 0  # one left-padded row
    kinds = [dict()]
    if variant == "gqa_alibi_qknorm":  # beams (the cache reorder is variant-blind): one
        kinds.append(dict(num_beams=3, num_return_sequences=2))
    for kw in kinds:  # beam search reorders the cache rows (batch axis 1 when stacked)
        want = generate(cfg, params, prompts, mask, max_new_tokens=6, **kw)
        got = generate(scan_cfg, stacked, prompts, mask, max_new_tokens=6, **kw)
        np.testing.assert_array_equal(got, want)
        assert want.shape[1] == 11


def test_remat_runs_inside_the_scan():
    _, scan_cfg = _pair(remat="full")
    params = stack_layers(_init(scan_cfg.replace(scan_layers=False), 0))
    ids = jnp.zeros((2, 8), jnp.int32)
    jaxpr = str(jax.make_jaxpr(lambda p: GPT2(scan_cfg).apply({"params": p}, ids))(params))
    remat = [m.start() for m in re.finditer(r"\b(remat2|checkpoint)\[", jaxpr)]  # jax.checkpoint
    assert len(remat) == 1 and remat[0] > jaxpr.index("scan[")  # once, in the scan body


def test_layers_logical_axis_is_unsharded():
    _, scan_cfg = _pair(n_kv_heads=2)
    axes = logical_axes(scan_cfg)
    assert tuple(axes["h"]["mlp"]["c_fc"]["kernel"]) == ("layers", "embed", "mlp")
    assert tuple(axes["wte"]["embedding"]) == ("vocab", "embed")


def test_hf_layout_loads_scanned_and_exports_the_same_file(tmp_path):
    torch_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=3, n_head=4, n_embd=32, vocab_size=96, n_positions=32)).eval()
    torch_model.save_pretrained(tmp_path / "hf")
    cfg, params = load_pretrained(tmp_path / "hf")
    scan_cfg, stacked = load_pretrained(tmp_path / "hf", scan_layers=True)
    assert scan_cfg == cfg.replace(scan_layers=True) and "h" in stacked
    jax.tree.map(np.testing.assert_array_equal, stacked, stack_layers(params))
    save_pretrained(scan_cfg, stacked, tmp_path / "from_scanned")
    save_pretrained(cfg, params, tmp_path / "from_unrolled")
    a = load_file(str(tmp_path / "from_scanned" / "model.safetensors"))
    b = load_file(str(tmp_path / "from_unrolled" / "model.safetensors"))
    assert sorted(a) == sorted(b) and len(a) == 4 + 12 * 3
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert (tmp_path / "from_scanned" / "config.json").read_text() == (
        tmp_path / "from_unrolled" / "config.json").read_text()


def test_to_layout_converts_either_way_and_keeps_a_matching_tree():
    cfg, _ = _pair()
    params = _init(cfg, 0)
    assert to_layout(params, False) is params
    stacked = to_layout(params, True)
    assert to_layout(stacked, True) is stacked
    jax.tree.map(np.testing.assert_array_equal, to_layout(stacked, False), params)


def _train_config(text: str, scan_layers: bool):
    from configs import shakespeare_char

    c = shakespeare_char.get_config("cpu")
    c.model.update(n_layer=2, n_head=2, n_embd=32, n_positions=32, scan_layers=scan_layers)
    c.data.update(train_file=text, prefetch=0)
    c.train.update(batch_size=8, block_size=32, num_steps=2, lr_decay_steps=2, warmup_steps=1,
                   log_every=1, eval_every=0, sample_tokens=0, export_hf=False,
                   progress_bar=False, peak_flops=1e9)
    c.checkpoint.update(save_every=2, keep=1, keep_best=0)
    return c


def test_orbax_checkpoint_of_the_other_form_is_refused_and_loads_for_inference(
        tmp_path, data_dir):
    from gpt2jax.training.loop import train_and_evaluate

    text = tmp_path / "train.txt"
    text.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:5000])
    workdir = tmp_path / "run"
    train_and_evaluate(_train_config(str(text), scan_layers=True), workdir)
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    with pytest.raises(checkpoint.CheckpointMismatchError,
                       match=r"--config.model.scan_layers=True"):
        train_and_evaluate(_train_config(str(text), scan_layers=False), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before

    scan_cfg, stacked, _ = checkpoint.load_params_for_inference(workdir)
    assert scan_cfg.scan_layers and stacked["h"]["ln_1"]["scale"].shape == (2, 32)
    cfg, params, _ = checkpoint.load_params_for_inference(workdir, scan_layers=False)
    assert not cfg.scan_layers and "h_1" in params
    ids = jnp.arange(16).reshape(2, 8)
    _close(GPT2(scan_cfg).apply({"params": stacked}, ids),
           GPT2(cfg).apply({"params": params}, ids))


def test_checkpoint_meta_without_the_switch_is_the_unrolled_form():
    cfg, scan_cfg = _pair()
    saved = {k: v for k, v in cfg.to_dict().items() if k != "scan_layers"}  # older runs
    checkpoint.check_same_model(saved, cfg, where="w")
    with pytest.raises(checkpoint.CheckpointMismatchError, match="scan_layers=False"):
        checkpoint.check_same_model(saved, scan_cfg, where="w")
