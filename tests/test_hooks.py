"""Named hook points (issue 16 point 2): TransformerLens names and shapes, every value against
an independent computation (HF's modules, read with torch forward hooks, on the same random
weights), interventions against equivalent weight/input edits, every attention variant,
scan_layers on and off, jit, and the unchanged program when no hook is requested."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gpt2jax import GPT2, GPT2Config, hook_names, init_params, run_with_cache, run_with_hooks
from gpt2jax.errors import ConfigError
from gpt2jax.nn import scan as scan_lib
from hf_tiny import TINY, converted, hf_forward, hf_model, left_padded_batch

TL_SHAPES = {  # TransformerLens's shapes, B=2, T=12, E=64, H=4, D=16, d_mlp=256
    "hook_embed": (2, 12, 64), "hook_pos_embed": (2, 12, 64), "hook_resid_pre": (2, 12, 64),
    "ln1.hook_normalized": (2, 12, 64), "attn.hook_q": (2, 12, 4, 16),
    "attn.hook_k": (2, 12, 4, 16), "attn.hook_v": (2, 12, 4, 16),
    "attn.hook_attn_scores": (2, 4, 12, 12), "attn.hook_pattern": (2, 4, 12, 12),
    "attn.hook_z": (2, 12, 4, 16), "hook_attn_out": (2, 12, 64), "hook_resid_mid": (2, 12, 64),
    "ln2.hook_normalized": (2, 12, 64), "mlp.hook_pre": (2, 12, 256),
    "mlp.hook_post": (2, 12, 256), "hook_mlp_out": (2, 12, 64), "hook_resid_post": (2, 12, 64),
    "ln_final.hook_normalized": (2, 12, 64),
}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    model = hf_model(1)
    return model, converted(model, tmp_path_factory.mktemp("hf"))


def _hf_activations(model, ids, mask, positions) -> dict[str, np.ndarray]:
    """TransformerLens-named activations read from HF's own modules with torch hooks."""
    got, handles = {}, []
    b, t = ids.shape
    h, d = model.config.n_head, model.config.n_embd // model.config.n_head

    def out(name, fn=lambda o: o):
        return lambda mod, args, output: got.__setitem__(name, fn(output).numpy().copy())

    def inp(name, fn=lambda x: x):
        return lambda mod, args: got.__setitem__(name, fn(args[0]).numpy().copy())

    tr = model.transformer
    handles += [tr.wte.register_forward_hook(out("hook_embed")),
                tr.wpe.register_forward_hook(out("hook_pos_embed")),
                tr.ln_f.register_forward_hook(out("ln_final.hook_normalized"))]
    for i, blk in enumerate(tr.h):
        p = f"blocks.{i}."
        heads = lambda x: x.reshape(b, t, h, d)  # noqa: E731
        handles += [
            blk.register_forward_pre_hook(inp(p + "hook_resid_pre")),
            blk.register_forward_hook(out(p + "hook_resid_post")),
            blk.ln_1.register_forward_hook(out(p + "ln1.hook_normalized")),
            blk.ln_2.register_forward_hook(out(p + "ln2.hook_normalized")),
            blk.attn.c_attn.register_forward_hook(out(p + "qkv")),
            blk.attn.c_proj.register_forward_pre_hook(inp(p + "attn.hook_z", heads)),
            blk.attn.register_forward_hook(out(p + "hook_attn_out", lambda o: o[0])),
            blk.mlp.c_fc.register_forward_hook(out(p + "mlp.hook_pre")),
            blk.mlp.act.register_forward_hook(out(p + "mlp.hook_post")),
            blk.mlp.register_forward_hook(out(p + "hook_mlp_out")),
        ]
    try:
        ref = hf_forward(model, ids, mask, positions, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    allowed = np.tril(np.ones((t, t), bool))[None, None] & (mask[:, None, None, :] == 1)
    for i in range(len(tr.h)):
        p = f"blocks.{i}."
        q, k, v = np.split(got.pop(p + "qkv"), 3, axis=-1)
        got[p + "attn.hook_q"], got[p + "attn.hook_k"], got[p + "attn.hook_v"] = (
            x.reshape(b, t, h, d) for x in (q, k, v))
        scores = np.einsum("bqhd,bkhd->bhqk", got[p + "attn.hook_q"], got[p + "attn.hook_k"])
        got[p + "attn.hook_attn_scores"] = np.where(allowed, scores / np.sqrt(d), -np.inf)
        got[p + "attn.hook_pattern"] = ref.attentions[i].numpy()
        got[p + "hook_resid_mid"] = got[p + "hook_resid_pre"] + got[p + "hook_attn_out"]
    return got


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_hook_point_equals_hf(hf, tmp_path, scan_layers):
    model, _ = hf
    cfg, params = converted(model, tmp_path, scan_layers=scan_layers)
    ids, mask, positions = left_padded_batch()
    logits, cache = jax.jit(lambda p, x, m, q: run_with_cache(
        cfg, p, x, attention_mask=m, position_ids=q))(params, ids, mask, positions)
    ref = _hf_activations(model, ids, mask, positions)
    assert list(cache) == sorted(hook_names(cfg)) and set(ref) == set(cache)
    real = mask == 1  # padding queries: HF attends uniformly, TransformerLens zeroes them
    for name, ours in cache.items():
        ours = np.asarray(ours)
        assert ours.shape == TL_SHAPES[name.split(".", 2)[-1] if name.startswith("blocks")
                                       else name], name
        theirs = ref[name]
        if ours.ndim == 4 and ours.shape[1] == cfg.n_head:  # [B, H, T, S] -> [B, T, H, S]
            ours, theirs = ours.transpose(0, 2, 1, 3), theirs.transpose(0, 2, 1, 3)
        np.testing.assert_allclose(ours[real], theirs[real], atol=2e-5, err_msg=name)
    assert np.isneginf(np.asarray(cache["blocks.0.attn.hook_attn_scores"])).any()


def test_no_hook_is_the_same_program(hf):
    """Nothing requested = the lowered program of plain GPT2.apply, text for text."""
    _, (cfg, params) = hf
    ids, mask, _ = left_padded_batch()

    def lowered(fn):
        return jax.jit(fn).lower(params, ids, mask).as_text()

    plain = lowered(lambda p, x, m: GPT2(cfg).apply({"params": p}, x, attention_mask=m))
    assert lowered(lambda p, x, m: run_with_hooks(cfg, p, x, [], attention_mask=m)) == plain
    assert lowered(lambda p, x, m: GPT2(cfg).apply({"params": p}, x, attention_mask=m,
                                                   output_hidden_states=False)) == plain
    hooked = lowered(lambda p, x, m: run_with_hooks(
        cfg, p, x, [("blocks.1.hook_resid_pre", lambda v, n: v * 2)], attention_mask=m))
    assert hooked != plain  # the comparison can see a hook


def _tiny_params(cfg):
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(3))
    # random biases so that mean-ablation differs from zero-ablation
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.05 * jax.random.normal(jax.random.key(len(str(path))), x.shape)
        if "bias" in str(path[-1]) else x, params)


def _apply(cfg, params, ids, fwd_hooks=()):
    return np.asarray(jax.jit(lambda p, x: run_with_hooks(cfg, p, x, fwd_hooks))(params, ids))


VARIANTS = {
    "gpt2": {}, "gqa": dict(n_kv_heads=2), "mqa_rope": dict(n_kv_heads=1, position="rope"),
    "alibi": dict(position="alibi"), "window": dict(sliding_window=4),
    "post_ln": dict(norm_position="post"), "qk_norm": dict(qk_norm=True),
    "xla": dict(attention_impl="xla"), "remat": dict(remat="full"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_head_ablation_equals_zeroed_output_weights(variant):
    """Zero- and mean-ablating head h of layer 1 on hook_z == zeroing its rows of c_proj (and
    moving its mean contribution into the bias): an independent edit of the weights."""
    cfg = GPT2Config(**TINY, **VARIANTS[variant])
    params = _tiny_params(cfg)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)).astype(np.int32)
    zero = _apply(cfg, params, ids, [("blocks.1.attn.hook_z", lambda z, n: z.at[:, :, 2].set(0))])
    edited = jax.tree.map(lambda x: x, params)
    kernel = edited["h_1"]["attn"]["c_proj"]["kernel"]  # [H, D, E]
    edited["h_1"]["attn"]["c_proj"]["kernel"] = kernel.at[2].set(0)
    np.testing.assert_allclose(zero, _apply(cfg, edited, ids), atol=1e-5)
    assert np.abs(zero - _apply(cfg, params, ids)).max() > 1e-3  # the hook did something
    _, cache = run_with_cache(cfg, params, ids, "blocks.1.attn.hook_z")
    mean_z = cache["blocks.1.attn.hook_z"][:, :, 2].mean((0, 1))  # [D]
    mean = _apply(cfg, params, ids, [("blocks.1.attn.hook_z",
                                      lambda z, n: z.at[:, :, 2].set(mean_z))])
    bias = edited["h_1"]["attn"]["c_proj"]["bias"]
    edited["h_1"]["attn"]["c_proj"]["bias"] = bias + mean_z @ kernel[2]
    np.testing.assert_allclose(mean, _apply(cfg, edited, ids), atol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_capture_scan_and_missing_hooks(variant):
    """Every variant: all its hook points, equal with scan_layers on and off, consistent with
    each other; the points it lacks are clear errors naming the variant."""
    cfg = GPT2Config(**TINY, **VARIANTS[variant])
    params = _tiny_params(cfg)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)).astype(np.int32)
    logits, cache = jax.jit(lambda p, x: run_with_cache(cfg, p, x))(params, ids)
    np.testing.assert_allclose(logits, _apply(cfg, params, ids), atol=1e-5)
    scan_cfg = cfg.replace(scan_layers=True)
    s_logits, s_cache = jax.jit(lambda p, x: run_with_cache(scan_cfg, p, x))(
        scan_lib.stack_layers(params), ids)
    np.testing.assert_allclose(s_logits, logits, atol=1e-5)
    assert list(s_cache) == list(cache) == sorted(hook_names(cfg))
    for name in cache:
        np.testing.assert_allclose(s_cache[name], cache[name], atol=1e-5, err_msg=name)
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        attn_part = cache[p + "hook_resid_mid"] - cache[p + "hook_resid_pre"]
        np.testing.assert_allclose(attn_part, cache[p + "hook_attn_out"], atol=1e-5)
        if p + "attn.hook_pattern" in cache:
            np.testing.assert_allclose(cache[p + "attn.hook_pattern"],
                                       jax.nn.softmax(cache[p + "attn.hook_attn_scores"]),
                                       atol=1e-6)
    for local, fragment in (("hook_pos_embed", f"position={cfg.position!r}"),
                            ("blocks.0.attn.hook_rot_q", f"position={cfg.position!r}"),
                            ("blocks.0.attn.hook_pattern", "attention_impl='xla'"),
                            ("ln_final.hook_normalized", "norm_position='post'")):
        if local not in cache:
            with pytest.raises(ConfigError, match=fragment):
                run_with_cache(cfg, params, ids, local)


def test_interventions_equal_input_edits(hf):
    """Patching the residual stream from another prompt and steering with a vector, each equal
    to an edit of the inputs or weights that HF-free arithmetic makes obvious."""
    _, (cfg, params) = hf
    rng = np.random.default_rng(2)
    a, b = (rng.integers(0, cfg.vocab_size, (1, 10)).astype(np.int32) for _ in range(2))
    _, cache_b = run_with_cache(cfg, params, b, ["blocks.0.hook_resid_pre",
                                                 "blocks.1.hook_resid_post"])
    # patch position 4 of the embeddings from b == run a with b's token 4
    patch = [("blocks.0.hook_resid_pre",
              lambda v, n: v.at[:, 4].set(cache_b["blocks.0.hook_resid_pre"][:, 4]))]
    swapped = a.copy()
    swapped[:, 4] = b[:, 4]
    np.testing.assert_allclose(_apply(cfg, params, a, patch), _apply(cfg, params, swapped),
                               atol=1e-5)
    # the last block's whole output from b == b's logits
    patch = [("blocks.1.hook_resid_post", lambda v, n: cache_b["blocks.1.hook_resid_post"])]
    np.testing.assert_allclose(_apply(cfg, params, a, patch), _apply(cfg, params, b), atol=1e-5)
    # steering: a vector added to the stream entering block 0 == added to every wpe row
    vec = jnp.asarray(rng.normal(size=cfg.n_embd), jnp.float32)
    steer = [("blocks.0.hook_resid_pre", lambda v, n: v + vec)]
    shifted = jax.tree.map(lambda x: x, params)
    shifted["wpe"]["embedding"] = params["wpe"]["embedding"] + vec
    np.testing.assert_allclose(_apply(cfg, params, a, steer), _apply(cfg, shifted, a), atol=1e-5)
    # None keeps the value; two hooks on one name run in order
    np.testing.assert_array_equal(
        _apply(cfg, params, a, [("hook_embed", lambda v, n: None)]), _apply(cfg, params, a))
    twice = [("blocks.0.hook_resid_pre", lambda v, n: v + vec)] * 2
    shifted["wpe"]["embedding"] = params["wpe"]["embedding"] + 2 * vec
    np.testing.assert_allclose(_apply(cfg, params, a, twice), _apply(cfg, shifted, a), atol=1e-5)


def test_hook_under_scan_touches_only_its_layer(hf, tmp_path):
    model, (cfg, params) = hf
    scan_cfg, scan_params = converted(model, tmp_path, scan_layers=True)
    ids, mask, _ = left_padded_batch()
    hook = [("blocks.1.mlp.hook_post", lambda v, n: v * 0.5)]
    ours = _apply(scan_cfg, scan_params, ids, hook)
    np.testing.assert_allclose(ours, _apply(cfg, params, ids, hook), atol=1e-5)
    assert np.abs(ours - _apply(cfg, params, ids)).max() > 1e-3


def test_bad_hook_requests_are_clear_errors(hf):
    _, (cfg, params) = hf
    ids = np.zeros((1, 4), np.int32)
    with pytest.raises(ConfigError, match="Unknown hook point 'blocks.0.hook_nope'"):
        run_with_cache(cfg, params, ids, ["blocks.0.hook_nope"])
    with pytest.raises(ConfigError, match="layer 7 does not exist"):
        run_with_hooks(cfg, params, ids, [("blocks.7.hook_resid_pre", lambda v, n: v)])
    with pytest.raises(ConfigError, match="must keep the shape"):
        run_with_hooks(cfg, params, ids, [("hook_embed", lambda v, n: v[:, :1])])
    with pytest.raises(ConfigError, match="must be a function"):
        run_with_hooks(cfg, params, ids, [("hook_embed", 3.0)])
    names = run_with_cache(cfg, params, ids, lambda n: n.endswith("hook_z"))[1]
    assert list(names) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert torch is not None  # HF's torch is the reference of this module
