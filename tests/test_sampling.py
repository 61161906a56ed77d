"""generation.sampling == HF logits processors/warpers; sampled frequencies == filtered softmax;
the support of `generate`'s samples == HF's top-k/top-p warpers on logits with ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats
from transformers.generation import logits_process as hf_lp

from gpt2jax.generation import sampling
from gpt2jax.generation.generate import generate
from gpt2jax.generation.sampling import ScoreParams, ScoreSettings
from helpers import hf_model, to_gpt2jax


def params(temperature=1.0, top_p=1.0, repetition_penalty=1.0, min_new_tokens=0, ngram=1,
           eos=(7,)):
    return ScoreParams(jnp.float32(temperature), jnp.float32(top_p),
                       jnp.float32(repetition_penalty), jnp.int32(min_new_tokens),
                       jnp.asarray(np.array(eos, np.int32)), jnp.int32(ngram))


def hf_warped(logits: np.ndarray, temperature: float, top_k: int, top_p: float, keep: int = 1):
    """HF's warpers (temperature -> top_k -> top_p) on [R, V] logits, as numpy."""
    scores = torch.tensor(logits)
    ids = torch.zeros((logits.shape[0], 1), dtype=torch.long)
    if temperature != 1.0:
        scores = hf_lp.TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = hf_lp.TopKLogitsWarper(top_k, min_tokens_to_keep=keep)(ids, scores)
    if top_p < 1.0:
        scores = hf_lp.TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(ids, scores)
    return scores.numpy()


def test_repetition_penalty_matches_hf_ignoring_left_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 30)).astype(np.float32)
    tokens = rng.integers(0, 30, (3, 10))
    pads = np.array([0, 2, 5])
    hf = hf_lp.RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=torch.tensor(pads))
    ref = hf(torch.tensor(tokens), torch.tensor(logits)).numpy()
    valid = np.arange(10)[None, :] >= pads[:, None]
    out = sampling.repetition_penalty(jnp.asarray(logits), jnp.asarray(tokens),
                                      jnp.asarray(valid), jnp.float32(1.3))
    # XLA's float32 division can differ from torch's by one ulp
    np.testing.assert_allclose(np.asarray(out), ref, rtol=3e-7, atol=0)
    np.testing.assert_array_equal(np.asarray(out) == logits, ref == logits)  # same tokens hit


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_hf(n):
    rng = np.random.default_rng(n)
    tokens = rng.integers(0, 4, (4, 24))  # tiny vocabulary: many repeated n-grams
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    for cur_len in (n - 1, n, 9, 24):
        ref = hf_lp.NoRepeatNGramLogitsProcessor(n)(torch.tensor(tokens[:, :cur_len]),
                                                    torch.tensor(logits)).numpy()
        # the buffer holds 3 bucket-padding columns on the left and junk past cur_len
        buffer = np.concatenate([np.full((4, 3), 5), tokens[:, :cur_len],
                                 np.full((4, 30 - cur_len), 1)], axis=1)
        out = sampling.no_repeat_ngram(jnp.asarray(logits), jnp.asarray(buffer),
                                       jnp.int32(cur_len + 3), jnp.int32(3), jnp.int32(n),
                                       max(n, 3))
        np.testing.assert_array_equal(np.asarray(out), ref)


def test_min_new_tokens_suppresses_eos():
    logits = jnp.zeros((2, 10))
    on = sampling.suppress_eos(logits, jnp.array([7, 3]), jnp.bool_(True))
    assert np.isneginf(np.asarray(on)[:, [3, 7]]).all() and np.isfinite(np.asarray(on)).sum() == 16
    np.testing.assert_array_equal(sampling.suppress_eos(logits, jnp.array([7]), jnp.bool_(False)),
                                  logits)


@pytest.mark.parametrize("temperature, top_k, top_p, keep", [
    (0.7, 0, 1.0, 1), (1.0, 5, 1.0, 1), (1.0, 0, 0.8, 1), (0.6, 8, 0.9, 1), (1.3, 0, 0.5, 2),
])
def test_warpers_match_hf(temperature, top_k, top_p, keep):
    logits = np.random.default_rng(1).normal(size=(3, 40)).astype(np.float32) * 2
    settings = ScoreSettings(do_sample=True, top_k=top_k, use_top_p=top_p < 1.0,
                             min_tokens_to_keep=keep)
    out = sampling.apply_warpers(jnp.asarray(logits), settings, params(temperature, top_p))
    np.testing.assert_allclose(np.asarray(out), hf_warped(logits, temperature, top_k, top_p, keep),
                               rtol=1e-6)


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (0.7, 0, 1.0), (1.0, 6, 1.0), (1.0, 0, 0.8), (0.8, 10, 0.9), (1.5, 12, 0.7),
])
def test_sample_frequencies_match_filtered_softmax(temperature, top_k, top_p):
    """Chi-square goodness of fit over 20,000 draws (fixed seed) against HF's warped softmax."""
    logits = np.random.default_rng(2).normal(size=(1, 24)).astype(np.float32) * 1.5
    expected = torch.softmax(torch.tensor(hf_warped(logits, temperature, top_k, top_p)), -1)
    expected = expected.numpy()[0].astype(np.float64)
    settings = ScoreSettings(do_sample=True, top_k=top_k, use_top_p=top_p < 1.0)
    keys = jax.random.split(jax.random.key(0), 20_000)
    draw = jax.jit(jax.vmap(lambda k: sampling.select_tokens(
        k, jnp.asarray(logits), settings, params(temperature, top_p))[0]))
    counts = np.bincount(np.asarray(draw(keys)), minlength=24)
    allowed = expected > 0
    assert counts[~allowed].sum() == 0, "sampled a token the warpers filter out"
    assert allowed.sum() < 24 or top_k == 0 and top_p == 1.0
    probs = expected[allowed] / expected[allowed].sum()
    _, p_value = stats.chisquare(counts[allowed], probs * counts.sum())
    assert p_value > 1e-3, (counts, expected)


@pytest.mark.parametrize("ties", [3, 40])
@pytest.mark.parametrize("cut_ties", [False, True])
def test_top_k_ties_sampled_like_hf(ties, cut_ties):
    """2 top tokens, then `ties` tokens tied at the k-th score (k=4): HF keeps them all. 3 ties
    fit the short candidate list, 40 run past it (the whole-vocabulary path)."""
    k, vocab = 4, 100
    logits = np.random.default_rng(3).normal(size=(1, vocab)).astype(np.float32) - 4
    logits[0, [7, 50]] = 3.0
    logits[0, 10:10 + ties] = 1.0
    assert (ties + 2 > 2 * k + sampling.TIE_ROOM) == (ties == 40)  # which path runs
    top_p = 1.0
    if cut_ties:  # 1 - top_p between the tied mass and it plus half a top token
        probs = torch.softmax(torch.tensor(hf_warped(logits, 1.0, k, 1.0)), -1).numpy()[0]
        top_p = float(1 - (probs[10] * ties + probs[7] / 2))
    expected = np.isfinite(hf_warped(logits, 1.0, k, top_p)[0])
    assert expected.sum() == (2 if cut_ties else 2 + ties)
    settings = ScoreSettings(do_sample=True, top_k=k, use_top_p=cut_ties)
    keys = jax.random.split(jax.random.key(1), 4000)
    draw = jax.jit(jax.vmap(lambda key: sampling.select_tokens(
        key, jnp.asarray(logits), settings, params(1.0, top_p))[0]))
    counts = np.bincount(np.asarray(draw(keys)), minlength=vocab)
    np.testing.assert_array_equal(counts > 0, expected)


def test_greedy_is_first_argmax():
    scores = jnp.array([[0.0, 2.0, 2.0, 1.0]])
    assert int(sampling.select_tokens(jax.random.key(0), scores, ScoreSettings(), params())[0]) == 1


@pytest.fixture(scope="module")
def tied_model():
    """A tiny HF GPT-2 whose 64 tokens come in 16 groups of 4 identical embeddings (the LM head
    is tied), so every logit is tied with 3 others: (HF model, cfg, params, prompt [1, 5])."""
    hf = hf_model(seed=4, vocab_size=64, n_positions=32)
    with torch.no_grad():
        wte = hf.transformer.wte.weight
        wte.copy_(wte[::4].repeat_interleave(4, dim=0))
    cfg, params = to_gpt2jax(hf)
    return hf, cfg, params, np.array([[3, 17, 42, 8, 60]])


def hf_support(hf, prompt, top_k: int, top_p: float) -> set:
    """Tokens HF's TopK (then TopP) warpers leave finite on the model's next-token logits."""
    with torch.no_grad():
        logits = hf(torch.tensor(prompt)).logits[:, -1].numpy()
    return set(np.flatnonzero(np.isfinite(hf_warped(logits, 1.0, top_k, top_p)[0])).tolist())


def sampled_support(cfg, params, prompt, draws: int = 256, **kwargs) -> set:
    """Distinct first tokens of `draws` samples through `generate`."""
    out = generate(cfg, params, prompt, max_new_tokens=1, do_sample=True,
                   num_return_sequences=draws, eos_token_id=None, pad_token_id=0, **kwargs)
    return set(out[:, -1].tolist())


def test_top_k_keeps_ties_like_hf_through_generate(tied_model):
    hf, cfg, params, prompt = tied_model
    support = hf_support(hf, prompt, 6, 1.0)
    assert len(support) == 8  # the 6th best logit is tied with 2 more: HF keeps all 8
    assert sampled_support(cfg, params, prompt, top_k=6) == support


def test_top_k_then_top_p_matches_hf_order_through_generate(tied_model):
    hf, cfg, params, prompt = tied_model
    with torch.no_grad():
        logits = hf(torch.tensor(prompt)).logits[:, -1].numpy()
    probs = torch.softmax(torch.tensor(hf_warped(logits, 1.0, 6, 1.0)), -1).numpy()[0]
    low, high = np.unique(probs[probs > 0])  # the two tied groups that top_k=6 keeps
    # 1 - top_p between the lower group's mass and it plus half a higher token (no tie cut):
    # HF drops exactly the lower group; top_p on the whole vocabulary first would keep it
    for top_p in (1 - (4 * low + high / 2), 1 - low / 2):
        support = hf_support(hf, prompt, 6, top_p)
        assert len(support) == (4 if top_p < 1 - low else 8)
        assert sampled_support(cfg, params, prompt, top_k=6, top_p=top_p) == support
