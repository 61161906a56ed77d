"""`gpt2jax.convert_kv_heads`: a trained multi-head model -> GQA / MQA (Ainslie et al. 2023),
from our checkpoints and the released GPT-2 layout, and its uptraining in the training loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shakespeare_char
from gpt2jax import GPT2, ConfigError, convert_kv_heads, init_cache, run_with_cache
from gpt2jax.nn.model import kv_cache_bytes_per_token
from gpt2jax.nn.scan import stack_layers
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.weights.loader import load_model
from helpers import hf_model, tiny_config, tiny_params, to_gpt2jax

H = 8  # query heads: g = H/2, H/4 and 1 are all GQA/MQA


def _logits(cfg, params, ids):
    return jax.jit(lambda p, x: GPT2(cfg).apply({"params": p}, x))(params, ids)


def _ids(cfg, length=12):
    return jax.random.randint(jax.random.key(7), (2, length), 0, cfg.vocab_size)


def test_all_heads_kept_is_the_identity_on_released_gpt2_weights():
    """The HF GPT-2 layout (fused c_attn), unrolled and scanned: g = n_head is the identity
    (exactly equal logits); fewer heads convert in either layout alike."""
    cfg, params = to_gpt2jax(hf_model(seed=1, n_head=H, n_embd=64))
    ids = _ids(cfg)
    ref = _logits(cfg, params, ids)
    same_cfg, same = convert_kv_heads(cfg, params, H)
    assert same_cfg == cfg
    np.testing.assert_array_equal(_logits(same_cfg, same, ids), ref)
    scan_cfg, scan_params = cfg.replace(scan_layers=True), stack_layers(params)
    same_cfg, same = convert_kv_heads(scan_cfg, scan_params, H)
    np.testing.assert_array_equal(_logits(same_cfg, same, ids),
                                  _logits(scan_cfg, scan_params, ids))
    gqa_cfg, gqa = convert_kv_heads(scan_cfg, scan_params, H // 2)
    assert gqa["h"]["attn"]["c_kv"]["kernel"].shape == (cfg.n_layer, 64, 2, H // 2, 8)
    unrolled_cfg, unrolled = convert_kv_heads(cfg, params, H // 2)
    assert gqa_cfg == unrolled_cfg.replace(scan_layers=True)
    jax.tree.map(np.testing.assert_array_equal, gqa, stack_layers(unrolled))


@pytest.mark.parametrize("groups", [H // 2, H // 4, 1])
def test_shapes_and_cache_shrink_by_n_head_over_g(groups):
    cfg = tiny_config(n_head=H)
    new_cfg, new = convert_kv_heads(cfg, tiny_params(cfg), groups)
    e, d = cfg.n_embd, cfg.head_dim
    attn = new["h_1"]["attn"]
    assert attn["c_kv"]["kernel"].shape == (e, 2, groups, d)
    assert attn["c_kv"]["bias"].shape == (2, groups, d)
    assert attn["c_q"]["kernel"].shape == (e, H, d)
    assert kv_cache_bytes_per_token(new_cfg) * (H // groups) == kv_cache_bytes_per_token(cfg)
    assert init_cache(new_cfg, 1, 8)["h_0"]["attn"]["cached_key"].shape == (1, groups, 8, d)
    assert _logits(new_cfg, new, _ids(cfg)).shape == (2, 12, cfg.vocab_size)


def test_mean_pool_and_first_head_are_what_the_paper_says():
    """Keys are linear in the projection: mean-pooled weights give each group's mean key,
    the first head's weights its first key (layer 0, whose input is unchanged)."""
    cfg = tiny_config(n_head=H)
    params, ids = tiny_params(cfg), _ids(cfg)
    _, acts = run_with_cache(cfg, params, ids, ["blocks.0.attn.hook_k", "blocks.0.attn.hook_v"])
    groups = 2
    for method in ("mean", "first"):
        new_cfg, new = convert_kv_heads(cfg, params, groups, method)
        _, got = run_with_cache(new_cfg, new, ids, list(acts))
        for name, full in acts.items():
            split = full.reshape(*full.shape[:2], groups, H // groups, cfg.head_dim)
            want = split.mean(3) if method == "mean" else split[:, :, :, 0]
            np.testing.assert_allclose(got[name], want, atol=1e-6, err_msg=f"{method} {name}")
    a = convert_kv_heads(cfg, params, 1, "random", jax.random.key(0))[1]
    b = convert_kv_heads(cfg, params, 1, "random", jax.random.key(0))[1]
    mean = convert_kv_heads(cfg, params, 1)[1]
    kernel = lambda p: np.asarray(p["h_0"]["attn"]["c_kv"]["kernel"])
    np.testing.assert_array_equal(kernel(a), kernel(b))  # reproducible from its key
    assert not np.allclose(kernel(a), kernel(mean))
    assert kernel(a).std() == pytest.approx(cfg.initializer_range, rel=0.2)
    # the query heads and everything outside c_kv are the model's
    np.testing.assert_array_equal(a["h_0"]["attn"]["c_q"]["kernel"],
                                  params["h_0"]["attn"]["c_attn"]["kernel"][:, 0])


def test_bad_conversions_name_the_fix():
    cfg = tiny_config(n_head=H)
    params = tiny_params(cfg)
    with pytest.raises(ConfigError, match=r"n_kv_heads=3 must divide .* \[1, 2, 4, 8\]"):
        convert_kv_heads(cfg, params, 3)
    with pytest.raises(ConfigError, match="method='median' is not one of"):
        convert_kv_heads(cfg, params, 2, "median")
    with pytest.raises(ConfigError, match=r"rng=jax.random.key\(seed\)"):
        convert_kv_heads(cfg, params, 2, "random")
    gqa_cfg, gqa = convert_kv_heads(cfg, params, 2)
    with pytest.raises(ConfigError, match=r"the model's 2 key/value heads"):
        convert_kv_heads(gqa_cfg, gqa, 4)  # heads cannot be split again
    mqa_cfg, _ = convert_kv_heads(gqa_cfg, gqa, 1)  # but grouped further
    assert mqa_cfg.n_kv_heads == 1


# ----------------------------------------------------------------------------- uptraining


def _char_config(text_file, **train):
    c = shakespeare_char.get_config("cpu")
    c.model.update(n_layer=1, n_head=4, n_embd=32, n_positions=32)
    c.data.train_file, c.data.prefetch = str(text_file), 0
    c.train.update(batch_size=8, block_size=32, num_steps=1, warmup_steps=0, lr_decay_steps=1,
                   eval_every=0, sample_tokens=0, progress_bar=False, peak_flops=1e9,
                   steps_per_call=1, export_hf=False, **train)
    c.checkpoint.update(save_every=0, keep_best=0, async_save=False)
    return c


def test_uptraining_converts_in_the_loop_and_the_model_saves_and_reloads(tmp_path, data_dir):
    text = tmp_path / "train.txt"
    text.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    train_and_evaluate(_char_config(text), tmp_path / "mha")
    src_cfg, src, _ = load_model(tmp_path / "mha")
    # learning rate 0: the saved model is exactly the converted one
    c = _char_config(text, convert_kv_heads=2, convert_kv_method="first", learning_rate=0.0,
                     min_learning_rate=0.0)
    c.init_from = str(tmp_path / "mha")
    train_and_evaluate(c, tmp_path / "gqa")
    cfg, params, _ = load_model(tmp_path / "gqa")
    want_cfg, want = convert_kv_heads(src_cfg, src, 2, "first")
    assert cfg == want_cfg and cfg.n_kv_heads == 2
    jax.tree.map(np.testing.assert_array_equal, params, want)
    ids = jnp.asarray(np.arange(24).reshape(2, 12) % cfg.vocab_size)
    np.testing.assert_array_equal(_logits(cfg, params, ids), _logits(want_cfg, want, ids))
    c.train.convert_kv_method = "median"
    with pytest.raises(ConfigError, match="train.convert_kv_method='median': method='median'"):
        train_and_evaluate(c, tmp_path / "median")
    c.init_from, c.train.learning_rate = "", 1e-3
    with pytest.raises(ConfigError, match="convert_kv_heads=2 converts a loaded model"):
        train_and_evaluate(c, tmp_path / "none")
    assert not (tmp_path / "median").exists() and not (tmp_path / "none").exists()
