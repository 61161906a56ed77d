"""Named hook points (issue 16 point 2): TransformerLens names and shapes, every value against
an independent computation (HF's modules, read with torch forward hooks, on the same random
weights), interventions against equivalent weight/input edits, every attention variant,
scan_layers on and off, jit, and the unchanged program when no hook is requested."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2jax import (GPT2, GPT2Config, hook_names, init_params, model_outputs, run_with_cache,
                     run_with_hooks)
from gpt2jax.errors import ConfigError
from gpt2jax.nn import scan as scan_lib
from helpers import TINY, converted, hf_forward, hf_model, left_padded_batch

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
    model = hf_model(1, random_norms=True, eager=True)
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
    assert lowered(lambda p, x, m: model_outputs(cfg, p, x, attention_mask=m).logits) == plain
    hooked = lowered(lambda p, x, m: run_with_hooks(
        cfg, p, x, [("blocks.1.hook_resid_pre", lambda v, n: v * 2)], attention_mask=m))
    assert hooked != plain  # the comparison can see a hook


def _tiny_params(cfg):
    """Random params drawn with numpy from the abstract shapes (no init compile): every
    weight and bias random, LayerNorm scales around 1."""
    rng = np.random.default_rng(3)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))

    def draw(path, leaf):
        base = 1.0 if str(path[-1].key) == "scale" else 0.0
        return (base + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _apply(cfg, params, ids, fwd_hooks=()):
    return run_with_hooks(cfg, params, ids, fwd_hooks)


# Each variant once; together they cover every attention variant of GPT2Config.
VARIANTS = {
    "gpt2": {}, "gqa_post_ln": dict(n_kv_heads=2, norm_position="post"),
    "mqa_rope_qk_norm": dict(n_kv_heads=1, position="rope", qk_norm=True),
    "alibi_window": dict(position="alibi", sliding_window=4),
    "xla": dict(attention_impl="xla"), "remat_nope": dict(remat="full", position="none"),
}


def _variant_run(cfg, params, ids):
    """Everything a variant test compares, in one compiled program (one compile per variant)."""
    logits, cache = run_with_cache(cfg, params, ids)
    scan_cfg = cfg.replace(scan_layers=True)
    s_logits, s_cache = run_with_cache(scan_cfg, scan_lib.stack_layers(params), ids)
    # Head 2 of layer 1: zero- and mean-ablated on hook_z, and the same done to the weights.
    z = "blocks.1.attn.hook_z"
    mean_z = cache[z][:, :, 2].mean((0, 1))  # [D]
    kernel = params["h_1"]["attn"]["c_proj"]["kernel"]  # [H, D, E]
    zeroed = jax.tree.map(lambda x: x, params)
    zeroed["h_1"]["attn"]["c_proj"]["kernel"] = kernel.at[2].set(0)
    moved = jax.tree.map(lambda x: x, zeroed)
    moved["h_1"]["attn"]["c_proj"]["bias"] = (params["h_1"]["attn"]["c_proj"]["bias"]
                                              + mean_z @ kernel[2])
    return dict(
        logits=logits, cache=cache, s_logits=s_logits, s_cache=s_cache,
        plain=_apply(cfg, params, ids),
        zero=_apply(cfg, params, ids, [(z, lambda v, n: v.at[:, :, 2].set(0))]),
        zero_ref=_apply(cfg, zeroed, ids),
        mean=_apply(cfg, params, ids, [(z, lambda v, n: v.at[:, :, 2].set(mean_z))]),
        mean_ref=_apply(cfg, moved, ids),
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants(variant):
    """Every variant: all its hook points, equal with scan_layers on and off, consistent with
    each other; zero-/mean-ablating a head on hook_z equals zeroing its rows of c_proj (and
    moving its mean output into the bias), an independent edit of the weights; the points a
    variant lacks are clear errors naming it."""
    cfg = GPT2Config(**TINY, **VARIANTS[variant])
    params = _tiny_params(cfg)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)).astype(np.int32)
    out = jax.device_get(jax.jit(lambda p, x: _variant_run(cfg, p, x))(params, ids))
    cache = out["cache"]
    np.testing.assert_allclose(out["logits"], out["plain"], atol=1e-5)
    np.testing.assert_allclose(out["s_logits"], out["plain"], atol=1e-5)
    assert list(out["s_cache"]) == list(cache) == sorted(hook_names(cfg))
    for name in cache:
        np.testing.assert_allclose(out["s_cache"][name], cache[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(out["zero"], out["zero_ref"], atol=1e-5)
    np.testing.assert_allclose(out["mean"], out["mean_ref"], atol=1e-5)
    assert np.abs(out["zero"] - out["plain"]).max() > 1e-3  # the hook did something
    assert np.abs(out["zero"] - out["mean"]).max() > 1e-3
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        attn_part = cache[p + "hook_resid_mid"] - cache[p + "hook_resid_pre"]
        np.testing.assert_allclose(attn_part, cache[p + "hook_attn_out"], atol=1e-5)
        if p + "attn.hook_pattern" in cache:
            scores = cache[p + "attn.hook_attn_scores"]
            expect = np.exp(scores - scores.max(-1, keepdims=True))
            np.testing.assert_allclose(cache[p + "attn.hook_pattern"],
                                       expect / expect.sum(-1, keepdims=True), atol=1e-6)
    for name, fragment in (("hook_pos_embed", f"position={cfg.position!r}"),
                           ("blocks.0.attn.hook_rot_q", f"position={cfg.position!r}"),
                           ("blocks.0.attn.hook_pattern", "attention_impl='xla'"),
                           ("ln_final.hook_normalized", "norm_position='post'")):
        if name not in cache:
            with pytest.raises(ConfigError, match=fragment):
                jax.eval_shape(lambda p, x: run_with_cache(cfg, p, x, name), params, ids)


def _interventions(cfg, params, a, b, vec):
    """Pairs (hooked logits, logits of an equivalent input/weight edit), one program."""
    _, cache_b = run_with_cache(cfg, params, b, ["blocks.0.hook_resid_pre",
                                                 "blocks.1.hook_resid_post"])
    # patch position 4 of the embeddings from b == run a with b's token 4
    patch = [("blocks.0.hook_resid_pre",
              lambda v, n: v.at[:, 4].set(cache_b["blocks.0.hook_resid_pre"][:, 4]))]
    pairs = {"patch_pos": (_apply(cfg, params, a, patch),
                           _apply(cfg, params, a.at[:, 4].set(b[:, 4])))}
    # the last block's whole output from b == b's logits
    patch = [("blocks.1.hook_resid_post", lambda v, n: cache_b["blocks.1.hook_resid_post"])]
    pairs["patch_all"] = (_apply(cfg, params, a, patch), _apply(cfg, params, b))
    # steering: a vector added to the stream entering block 0 == added to every wpe row;
    # two hooks on one name run in order (2 * vec)
    for times in (1, 2):
        shifted = jax.tree.map(lambda x: x, params)
        shifted["wpe"]["embedding"] = params["wpe"]["embedding"] + times * vec
        steer = [("blocks.0.hook_resid_pre", lambda v, n: v + vec)] * times
        pairs[f"steer_{times}"] = (_apply(cfg, params, a, steer), _apply(cfg, shifted, a))
    # None keeps the value
    pairs["none"] = (_apply(cfg, params, a, [("hook_embed", lambda v, n: None)]),
                     _apply(cfg, params, a))
    return pairs


def test_interventions_equal_input_edits(hf):
    """Patching the residual stream from another prompt and steering with a vector, each equal
    to an edit of the inputs or of the weights."""
    _, (cfg, params) = hf
    rng = np.random.default_rng(2)
    a, b = (rng.integers(0, cfg.vocab_size, (1, 10)).astype(np.int32) for _ in range(2))
    vec = rng.normal(size=cfg.n_embd).astype(np.float32)
    pairs = jax.jit(lambda p, a, b, v: _interventions(cfg, p, a, b, v))(params, a, b, vec)
    for name, (hooked, edited) in pairs.items():
        np.testing.assert_allclose(hooked, edited, atol=1e-5, err_msg=name)
    assert np.abs(pairs["steer_1"][0] - pairs["none"][0]).max() > 1e-3


def test_hook_under_scan_touches_only_its_layer(hf, tmp_path):
    model, (cfg, params) = hf
    scan_cfg, scan_params = converted(model, tmp_path, scan_layers=True)
    ids, _, _ = left_padded_batch()
    hook = [("blocks.1.mlp.hook_post", lambda v, n: v * 0.5)]

    def run(p, sp, x):
        return (_apply(scan_cfg, sp, x, hook), _apply(cfg, p, x, hook), _apply(cfg, p, x))

    scanned, unrolled, plain = jax.jit(run)(params, scan_params, ids)
    np.testing.assert_allclose(scanned, unrolled, atol=1e-5)
    assert np.abs(scanned - plain).max() > 1e-3


def test_bad_hook_requests_are_clear_errors(hf):
    _, (cfg, params) = hf
    ids = np.zeros((1, 4), np.int32)

    def trace(fn):  # errors are raised while tracing: no need to run anything
        return jax.eval_shape(fn, params, ids)

    with pytest.raises(ConfigError, match="Unknown hook point 'blocks.0.hook_nope'"):
        trace(lambda p, x: run_with_cache(cfg, p, x, ["blocks.0.hook_nope"]))
    with pytest.raises(ConfigError, match="layer 7 does not exist"):
        trace(lambda p, x: run_with_hooks(cfg, p, x, [("blocks.7.hook_resid_pre",
                                                       lambda v, n: v)]))
    with pytest.raises(ConfigError, match="must keep the shape"):
        trace(lambda p, x: run_with_hooks(cfg, p, x, [("hook_embed", lambda v, n: v[:, :1])]))
    with pytest.raises(ConfigError, match="must be a function"):
        trace(lambda p, x: run_with_hooks(cfg, p, x, [("hook_embed", 3.0)]))
    names = trace(lambda p, x: run_with_cache(cfg, p, x, lambda n: n.endswith("hook_z")))[1]
    assert list(names) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]


def test_hook_state_belongs_to_its_thread_and_blocks_know_their_layer(hf):
    """A hooked forward being traced in one thread does not hook another thread's plain
    forward (the hook state was a module-global list, now a context variable); a block's
    layer index is its field, whatever its name."""
    import threading

    from gpt2jax.nn import hooks
    from gpt2jax.nn.model import Block

    _, (cfg, params) = hf
    ids, _, _ = left_padded_batch()
    inside, release = threading.Event(), threading.Event()

    def hooked():
        with hooks.active(cfg, capture=["blocks.0.hook_resid_pre"]):
            inside.set()
            release.wait(60)

    thread = threading.Thread(target=hooked)
    thread.start()
    try:
        assert inside.wait(60)
        assert not hooks.is_active()  # this thread traces without hooks
        plain = jax.jit(lambda p, x: GPT2(cfg).apply({"params": p}, x)).lower(params, ids)
        assert "blocks.0" not in plain.as_text()
    finally:
        release.set()
        thread.join()
    block = Block(cfg, layer=1, name="renamed")
    x = jnp.zeros((1, 3, cfg.n_embd))
    variables = block.init(jax.random.key(0), x, None, jnp.zeros((1, 3), jnp.int32), True,
                           False, None)
    with hooks.active(cfg, capture=["blocks.1.hook_resid_pre"]):
        _, state = block.apply(variables, x, None, jnp.zeros((1, 3), jnp.int32), True, False,
                               None, mutable=["intermediates"])
    assert "blocks.1.hook_resid_pre" in state["intermediates"]
