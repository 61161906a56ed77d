"""HF-style outputs (issue 16 point 1): `GPT2.apply(..., output_hidden_states=True,
output_attentions=True)` against transformers' `hidden_states` / `attentions` on the same
random weights, loaded through `load_pretrained`, with a left-padded batch, with and without
scan_layers; and `generate(..., return_dict=True, output_scores=True)` against HF's `scores`."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from gpt2jax import GPT2, ModelOutput
from gpt2jax.errors import ConfigError
from hf_tiny import converted, hf_forward, hf_model, left_padded_batch


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    model = hf_model(0)
    return model, converted(model, tmp_path_factory.mktemp("hf"))


def _outputs(cfg, params, ids, mask, positions):
    fn = jax.jit(lambda p, x, m, q: GPT2(cfg).apply(
        {"params": p}, x, attention_mask=m, position_ids=q, output_hidden_states=True,
        output_attentions=True))
    return fn(params, ids, mask, positions)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_hidden_states_and_attentions_equal_hf(hf, tmp_path, scan_layers):
    model, _ = hf
    cfg, params = converted(model, tmp_path, scan_layers=scan_layers)
    ids, mask, positions = left_padded_batch()
    ref = hf_forward(model, ids, mask, positions, output_hidden_states=True,
                     output_attentions=True)
    out = _outputs(cfg, params, ids, mask, positions)
    assert isinstance(out, ModelOutput)
    assert len(out.hidden_states) == cfg.n_layer + 1 == len(ref.hidden_states)
    assert len(out.attentions) == cfg.n_layer == len(ref.attentions)
    real = mask == 1  # padded query rows are meaningless (HF: uniform, ours: zero)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert ours.shape == tuple(theirs.shape)
        np.testing.assert_allclose(np.asarray(ours)[real], theirs.numpy()[real], atol=1e-5)
    for ours, theirs in zip(out.attentions, ref.attentions):
        assert ours.shape == tuple(theirs.shape) == (2, cfg.n_head, ids.shape[1], ids.shape[1])
        ours, theirs = np.asarray(ours).transpose(0, 2, 1, 3), theirs.numpy().transpose(0, 2, 1, 3)
        np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.logits)[real], ref.logits.numpy()[real], atol=1e-5)
    # the last hidden state is after ln_f: it differs from the last block's raw output
    assert np.abs(np.asarray(out.hidden_states[-1]) - np.asarray(out.hidden_states[-2])).max() > 0.1


def test_plain_apply_unchanged_and_flags_alone(hf):
    _, (cfg, params) = hf
    ids, mask, positions = left_padded_batch()
    plain = GPT2(cfg).apply({"params": params}, ids, attention_mask=mask, position_ids=positions)
    assert not isinstance(plain, ModelOutput) and plain.shape == (2, ids.shape[1], cfg.vocab_size)
    only_hidden = GPT2(cfg).apply({"params": params}, ids, attention_mask=mask,
                                  position_ids=positions, output_hidden_states=True)
    assert only_hidden.attentions is None and len(only_hidden.hidden_states) == cfg.n_layer + 1
    np.testing.assert_array_equal(np.asarray(only_hidden.logits), np.asarray(plain))


def test_output_attentions_needs_the_einsum_kernel(hf):
    _, (cfg, params) = hf
    ids, _, _ = left_padded_batch()
    with pytest.raises(ConfigError, match="attention_impl='xla'"):
        GPT2(cfg.replace(attention_impl="xla")).apply({"params": params}, ids,
                                                      output_attentions=True)
