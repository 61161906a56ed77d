"""The first interpretability tools (issue 16 point 3) against HF computing the same thing
with its own modules and torch hooks, on the same random weights: the logit lens (HF's
hidden_states through HF's ln_f and lm_head), head ablation (HF's loss with the head's slice
of the c_proj input zeroed) and activation patching (HF's block input replaced at one
position by the clean run's)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from gpt2jax import activation_patching, head_ablation, logit_difference, logit_lens
from gpt2jax.errors import ConfigError
from helpers import converted, hf_forward, hf_model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    model = hf_model(2, random_norms=True, eager=True)
    return model, converted(model, tmp_path_factory.mktemp("hf"))


def _ids(seed, shape=(2, 8)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.int32)


def test_logit_lens_equals_hf(hf):
    model, (cfg, params) = hf
    ids = _ids(0)
    lens = np.asarray(jax.jit(lambda p, x: logit_lens(cfg, p, x))(params, ids))
    ref = hf_forward(model, ids, output_hidden_states=True)
    assert lens.shape == (cfg.n_layer + 1, 2, 8, cfg.vocab_size)
    with torch.no_grad():
        for i in range(cfg.n_layer):  # HF's last hidden state is already after ln_f
            theirs = model.lm_head(model.transformer.ln_f(ref.hidden_states[i])).numpy()
            np.testing.assert_allclose(lens[i], theirs, atol=1e-4)
    np.testing.assert_allclose(lens[-1], ref.logits.numpy(), atol=1e-4)
    assert np.abs(lens[0] - lens[-1]).max() > 0.1


def _hf_loss_without_head(model, ids, layer, head) -> float:
    d = model.config.n_embd // model.config.n_head

    def zero_head(module, args):
        z = args[0].clone()
        z[..., head * d:(head + 1) * d] = 0
        return (z,)

    handle = model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero_head)
    try:
        return float(hf_forward(model, ids, labels=torch.as_tensor(ids, dtype=torch.long)).loss)
    finally:
        handle.remove()


def test_head_ablation_equals_hf(hf):
    model, (cfg, params) = hf
    ids = _ids(1)
    effect = np.asarray(jax.jit(lambda p, x: head_ablation(cfg, p, x))(params, ids))
    clean = float(hf_forward(model, ids, labels=torch.as_tensor(ids, dtype=torch.long)).loss)
    expect = np.array([[_hf_loss_without_head(model, ids, i, h) - clean
                        for h in range(cfg.n_head)] for i in range(cfg.n_layer)])
    assert effect.shape == (cfg.n_layer, cfg.n_head)
    np.testing.assert_allclose(effect, expect, atol=1e-5)
    assert np.abs(expect).max() > 1e-3
    mean = np.asarray(jax.jit(lambda p, x: head_ablation(cfg, p, x, mode="mean"))(params, ids))
    assert mean.shape == effect.shape and np.abs(mean - effect).max() > 1e-5
    with pytest.raises(ConfigError, match="mode='max'"):
        head_ablation(cfg, params, ids, mode="max")


def _hf_patched_metric(model, clean_hidden, corrupted, layer, pos, metric) -> float:
    def patch(module, args, kwargs):
        hidden = args[0].clone()
        hidden[:, pos] = clean_hidden[layer][:, pos]
        return (hidden,) + tuple(args[1:]), kwargs

    handle = model.transformer.h[layer].register_forward_pre_hook(patch, with_kwargs=True)
    try:
        return metric(hf_forward(model, corrupted).logits.numpy())
    finally:
        handle.remove()


def test_activation_patching_equals_hf(hf):
    model, (cfg, params) = hf
    clean, corrupted = _ids(2, (1, 6)), _ids(3, (1, 6))
    metric = logit_difference(correct=int(clean[0, -1]), wrong=int(corrupted[0, -1]))
    patch = np.asarray(jax.jit(lambda p, a, b: activation_patching(cfg, p, a, b, metric))(
        params, clean, corrupted))
    clean_hidden = hf_forward(model, clean, output_hidden_states=True).hidden_states

    def np_metric(logits):
        return float(np.asarray(metric(logits)))

    expect = np.array([[_hf_patched_metric(model, clean_hidden, corrupted, i, t, np_metric)
                        for t in range(6)] for i in range(cfg.n_layer)])
    assert patch.shape == (cfg.n_layer, 6)
    np.testing.assert_allclose(patch, expect, atol=1e-4)
    assert np.abs(patch - patch.mean()).max() > 1e-3  # positions and layers differ
    with pytest.raises(ConfigError, match="same shape"):
        activation_patching(cfg, params, clean, corrupted[:, :5], metric)
    with pytest.raises(ConfigError, match="hook='attn.hook_z'"):
        activation_patching(cfg, params, clean, corrupted, metric, hook="attn.hook_z")
