"""HF-style outputs: `gpt2jax.model_outputs(cfg, params, ids, output_hidden_states=True,
output_attentions=True)` against transformers' `hidden_states` / `attentions` on the same
random weights, loaded through `load_pretrained`, with a left-padded batch, with and without
scan_layers; and `generate(..., return_dict=True, output_scores=True)` against HF's `scores`."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers

from gpt2jax import GPT2, ModelOutput, generate, model_outputs
from gpt2jax.errors import ConfigError
from helpers import converted, hf_forward, hf_model, left_padded_batch


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    model = hf_model(0, random_norms=True, eager=True)
    return model, converted(model, tmp_path_factory.mktemp("hf"))


def _outputs(cfg, params, ids, mask, positions):
    fn = jax.jit(lambda p, x, m, q: model_outputs(
        cfg, p, x, attention_mask=m, position_ids=q, output_hidden_states=True,
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
    # GPT2.apply keeps nn.Module.apply's contract (logits); HF's fields come from one function
    _, (cfg, params) = hf
    ids, mask, positions = left_padded_batch()
    plain, only_hidden = jax.jit(lambda p, x, m, q: (
        GPT2(cfg).apply({"params": p}, x, attention_mask=m, position_ids=q),
        model_outputs(cfg, p, x, attention_mask=m, position_ids=q,
                      output_hidden_states=True)))(params, ids, mask, positions)
    assert not isinstance(plain, ModelOutput) and plain.shape == (2, ids.shape[1], cfg.vocab_size)
    assert only_hidden.attentions is None and len(only_hidden.hidden_states) == cfg.n_layer + 1
    np.testing.assert_array_equal(np.asarray(only_hidden.logits), np.asarray(plain))


def test_output_attentions_needs_the_einsum_kernel(hf):
    _, (cfg, params) = hf
    ids, _, _ = left_padded_batch()
    with pytest.raises(ConfigError, match="attention_impl='xla'"):
        model_outputs(cfg.replace(attention_impl="xla"), params, ids, output_attentions=True)


def test_generate_output_scores_equal_hf_greedy(hf):
    model, (cfg, params) = hf
    ids, mask, _ = left_padded_batch(seed=3, length=8, pads=3)
    kwargs = dict(max_new_tokens=5, repetition_penalty=1.3, no_repeat_ngram_size=2,
                  eos_token_id=5, pad_token_id=0, min_new_tokens=2)
    ours = generate(cfg, params, ids, mask, return_dict=True, output_scores=True, **kwargs)
    with torch.no_grad():
        ref = model.generate(torch.as_tensor(ids, dtype=torch.long),
                             attention_mask=torch.as_tensor(mask), do_sample=False,
                             return_dict_in_generate=True, output_scores=True, **kwargs)
    np.testing.assert_array_equal(ours.sequences, ref.sequences.numpy())
    assert len(ours.scores) == len(ref.scores) == ours.sequences.shape[1] - ids.shape[1]
    for t, (mine, theirs) in enumerate(zip(ours.scores, ref.scores)):
        assert mine.shape == tuple(theirs.shape)
        np.testing.assert_allclose(mine, theirs.numpy(), atol=1e-5, err_msg=f"step {t}")
    assert np.isneginf(ours.scores[0][:, 5]).all()  # EOS suppressed by min_new_tokens


def test_generate_output_scores_sampling_equal_hf_warpers(hf):
    """Sampling draws differ between torch and JAX, so HF's processors and warpers are run
    on HF's own logits for our sampled sequences, step by step."""
    model, (cfg, params) = hf
    ids, mask, _ = left_padded_batch(seed=4, length=8, pads=2)
    ours = generate(cfg, params, ids, mask, return_dict=True, output_scores=True,
                    do_sample=True, temperature=0.7, top_k=10, top_p=0.9, max_new_tokens=4,
                    eos_token_id=None, seed=1)
    warpers = transformers.LogitsProcessorList([
        transformers.TemperatureLogitsWarper(0.7), transformers.TopKLogitsWarper(10),
        transformers.TopPLogitsWarper(0.9)])
    seqs = torch.as_tensor(ours.sequences, dtype=torch.long)
    prompt = ids.shape[1]
    assert len(ours.scores) == 4
    for t, mine in enumerate(ours.scores):
        full_mask = np.concatenate([mask, np.ones((2, t), mask.dtype)], axis=1)
        positions = np.where(full_mask == 1, np.cumsum(full_mask, -1) - 1, 1)
        logits = hf_forward(model, seqs[:, :prompt + t].numpy(), full_mask, positions).logits
        theirs = warpers(seqs[:, :prompt + t], logits[:, -1]).numpy()
        np.testing.assert_allclose(mine, theirs, atol=1e-5, err_msg=f"step {t}")
        assert np.isneginf(mine).sum(-1).min() >= cfg.vocab_size - 10  # top-k applied


def test_output_scores_bad_requests(hf):
    _, (cfg, params) = hf
    ids = np.ones((1, 4), np.int32)
    with pytest.raises(ConfigError, match="return_dict=True"):
        generate(cfg, params, ids, output_scores=True, max_new_tokens=2)
