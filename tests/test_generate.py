"""gpt2jax.generate == HF transformers `generate` on identical random GPT-2 weights.

Greedy, beam search (num_beams x length_penalty x early_stopping x num_return_sequences),
no_repeat_ngram_size, repetition_penalty, frequent EOS with padding, sampling determinism,
compile-once bucketing and sharded (8 simulated devices) == single-device decoding.
"""

import jax
import numpy as np
import pytest
import torch
import transformers

import gpt2jax
from gpt2jax.generation.generate import DECODERS, generate
from gpt2jax.parallel.sharding import make_mesh, rules
from configs import common
from helpers import hf_model, to_gpt2jax

PAD = 50256
LENGTHS = (3, 7, 1, 5, 8, 2)


def hf_tiny(seed: int = 0, **overrides) -> transformers.GPT2LMHeadModel:
    """A random HF GPT-2 (2 layers, 4 heads, 64 dims, real vocabulary), eval mode."""
    return hf_model(seed, **{"vocab_size": 50257, "n_positions": 128, **overrides})


def left_padded(lengths, vocab: int = 50000, seed: int = 0, width: int | None = None):
    """Random prompts of the given lengths, left-padded with PAD: (ids, mask) [B, width or max]."""
    rng = np.random.default_rng(seed)
    width = width or max(lengths)
    ids = np.full((len(lengths), width), PAD, np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = rng.integers(0, vocab, n)
        mask[row, width - n:] = 1
    return ids, mask


def hf_generate(hf, ids, mask, **kwargs):
    """HF generate with return_dict: (sequences [N, T] numpy, sequences_scores or None)."""
    kwargs.setdefault("pad_token_id", PAD)
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                          return_dict_in_generate=True, output_scores=True, **kwargs)
    scores = getattr(out, "sequences_scores", None)
    return out.sequences.numpy(), None if scores is None else scores.numpy()


def assert_same(hf, cfg, params, ids, mask, **kwargs):
    """Asserts gpt2jax == HF (tokens exactly, beam scores within 1e-4); returns the tokens."""
    ref, ref_scores = hf_generate(hf, ids, mask, **kwargs)
    kwargs.setdefault("pad_token_id", PAD)
    out = generate(cfg, params, ids, mask, return_dict=True, **kwargs)
    assert out.sequences.shape == ref.shape, (out.sequences.shape, ref.shape, kwargs)
    np.testing.assert_array_equal(out.sequences, ref, err_msg=str(kwargs))
    if ref_scores is not None:
        np.testing.assert_allclose(out.sequences_scores, ref_scores, atol=1e-4, rtol=0)
    return ref


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """HF's tiny-model steps are overhead-bound; one thread avoids spin-waits on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    hf = hf_tiny()
    cfg, params = to_gpt2jax(hf)
    ids, mask = left_padded(LENGTHS)
    return hf, cfg, params, ids, mask


def most_frequent_new_token(hf, ids, mask, **kwargs) -> int:
    """A token the random model emits often (so that choosing it as EOS really stops rows)."""
    seqs, _ = hf_generate(hf, ids, mask, max_new_tokens=12, **kwargs)
    tokens, counts = np.unique(seqs[:, ids.shape[1]:], return_counts=True)
    return int(tokens[np.argmax(counts)])


@pytest.fixture(scope="module")
def frequent_eos(tiny):
    """{num_beams: eos id} for greedy (all 6 prompts) and 4-beam search (first 3 prompts)."""
    hf, _, _, ids, mask = tiny
    return {1: most_frequent_new_token(hf, ids, mask),
            4: most_frequent_new_token(hf, ids[:3], mask[:3], num_beams=4)}


def test_greedy_matches_hf_left_padded(tiny):
    hf, cfg, params, ids, mask = tiny
    ref = assert_same(hf, cfg, params, ids, mask, max_new_tokens=40, do_sample=False)
    assert ref.shape == (6, 8 + 40)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_max_length_padding_near_the_context_matches_hf(num_beams):
    """A tokenizer's padding="max_length" batch (W = 58 on a 64-position model) + 12 new tokens:
    W + new > n_positions but every real prompt + new fits; HF returns [B, W + new]."""
    hf = hf_tiny(seed=2, n_positions=64)
    cfg, params = to_gpt2jax(hf)
    ids, mask = left_padded((40, 52, 30, 45), seed=2, width=58)
    ref = assert_same(hf, cfg, params, ids, mask, max_new_tokens=12, num_beams=num_beams,
                      num_return_sequences=num_beams, eos_token_id=None)
    assert ref.shape == (4 * num_beams, 58 + 12)
    np.testing.assert_array_equal(ref[::num_beams, :58], ids)


def test_max_length_padding_with_no_repeat_ngram_keeps_padding_ngrams():
    """HF's no_repeat_ngram also bans n-grams of the left padding: trimming keeps them."""
    hf = hf_tiny(seed=2, n_positions=64, vocab_size=8)
    cfg, params = to_gpt2jax(hf)
    ids, mask = left_padded((3, 5), vocab=8, seed=3, width=20)
    ids[ids == PAD] = 7
    assert_same(hf, cfg, params, ids, mask, max_new_tokens=40, no_repeat_ngram_size=2,
                pad_token_id=7, eos_token_id=None)
    junk = np.where(mask == 1, ids, np.arange(20) // 2 % 8)  # bigrams (1, 2), (2, 2): once
    with pytest.raises(gpt2jax.ConfigError, match="no_repeat_ngram"):
        generate(cfg, params, junk, mask, max_new_tokens=50, no_repeat_ngram_size=2)


def test_greedy_matches_hf_124m_shape():
    hf = hf_tiny(seed=1, n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    cfg, params = to_gpt2jax(hf)
    ids, mask = left_padded((4, 9, 2, 6, 11, 5), seed=1)
    assert_same(hf, cfg, params, ids, mask, max_new_tokens=40, do_sample=False)


EOS, PAD_SMALL = 5, 511  # ids of the 512-token model below


@pytest.fixture(scope="module")
def eos_model():
    """A tiny random GPT-2 (512 tokens) that really ends hypotheses: EOS's embedding (tied LM
    head) lies along ln_f's bias, so its logit is about 4 * (1.5 + N(0, 1)) per context,
    likely in some contexts only. (cfg, params, hf, ids, mask) with 4 left-padded prompts."""
    hf = hf_tiny(seed=5, vocab_size=512, n_positions=64, bos_token_id=EOS, eos_token_id=EOS)
    with torch.no_grad():
        direction = torch.randn(64, generator=torch.Generator().manual_seed(0))
        direction /= direction.norm()
        hf.transformer.ln_f.bias.copy_(1.5 * direction)
        hf.transformer.wte.weight[EOS] = 4 * direction
    ids, mask = left_padded((3, 7, 1, 5), vocab=500, seed=0)
    ids[mask == 0] = PAD_SMALL
    return (*to_gpt2jax(hf), hf, ids, mask)


def ended_early(seqs: np.ndarray, prompt_width: int, new: int) -> np.ndarray:
    """[N] bool: the hypothesis [N, T] emitted EOS before its `new`-th token."""
    return (seqs[:, prompt_width:prompt_width + new - 1] == EOS).any(axis=1)


@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_search_grid_matches_hf(eos_model, num_beams):
    """Sequences and scores == HF over early_stopping x length_penalty x num_return_sequences,
    with hypotheses that finish early in every setting (one compile per num_beams)."""
    cfg, params, hf, ids, mask = eos_model
    outputs = set()
    for early_stopping in (True, False, "never"):
        for length_penalty in (0.5, 1.0, 2.0):
            for num_return_sequences in (1, 2):
                out = assert_same(hf, cfg, params, ids, mask, max_new_tokens=12,
                                  num_beams=num_beams, eos_token_id=EOS, pad_token_id=PAD_SMALL,
                                  length_penalty=length_penalty, early_stopping=early_stopping,
                                  num_return_sequences=num_return_sequences)
                outputs.add(out.tobytes() + bytes(out.shape))
            # finished hypotheses compete with running ones in every setting
            assert ended_early(out, ids.shape[1], 12).any(), (early_stopping, length_penalty)
    assert len(outputs) > 6  # the switches change which hypotheses come back


def _batch(tiny, num_beams):
    """Greedy tests use all 6 prompts and 40 tokens, beam tests 3 prompts and 12 tokens (so
    that tests share compiled buckets)."""
    hf, cfg, params, ids, mask = tiny
    rows, new = (6, 40) if num_beams == 1 else (3, 12)
    return hf, cfg, params, ids[:rows], mask[:rows], new


@pytest.mark.parametrize("num_beams", [1, 4])
def test_no_repeat_ngram_and_repetition_penalty_match_hf(tiny, num_beams):
    hf, cfg, params, ids, mask, new = _batch(tiny, num_beams)
    for extra in (dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=3),
                  dict(repetition_penalty=1.3)):
        out = assert_same(hf, cfg, params, ids, mask, max_new_tokens=new, num_beams=num_beams,
                          do_sample=False, **extra)
        if extra.get("no_repeat_ngram_size") == 2:
            row = out[0, ids.shape[1]:]
            bigrams = list(zip(row[:-1], row[1:]))
            assert len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize("num_beams", [1, 4])
def test_suppress_tokens_match_hf(tiny, num_beams):
    """HF's suppress_tokens: the three most frequent new tokens of a plain run (so they really
    were chosen) are banned; the output equals HF's and never holds them. An id past the
    vocabulary is ignored, as HF ignores it."""
    hf, cfg, params, ids, mask, new = _batch(tiny, num_beams)
    plain, _ = hf_generate(hf, ids, mask, max_new_tokens=new, num_beams=num_beams,
                           do_sample=False)
    tokens, counts = np.unique(plain[:, ids.shape[1]:], return_counts=True)
    banned = [int(t) for t in tokens[np.argsort(-counts)[:3]]]
    out = assert_same(hf, cfg, params, ids, mask, max_new_tokens=new, num_beams=num_beams,
                      do_sample=False, suppress_tokens=banned + [cfg.vocab_size + 5])
    assert not np.isin(out[:, ids.shape[1]:], banned).any()


@pytest.mark.parametrize("num_beams", [1, 4])
def test_frequent_eos_stops_and_pads_like_hf(tiny, frequent_eos, num_beams):
    hf, cfg, params, ids, mask, new = _batch(tiny, num_beams)
    eos = frequent_eos[num_beams]
    # length_penalty=0 ranks by summed log-prob, so short (EOS-ended) hypotheses win
    for extra in ((dict(length_penalty=0.0, num_return_sequences=3), dict()) if num_beams > 1
                  else (dict(),)):
        out = assert_same(hf, cfg, params, ids, mask, max_new_tokens=new, num_beams=num_beams,
                          eos_token_id=eos, pad_token_id=PAD, **extra)
        if extra or num_beams == 1:
            generated = out[:, ids.shape[1]:]
            assert (generated == eos).any()
            assert (generated == PAD).any()  # rows/hypotheses that stopped early are padded
    if num_beams == 1:
        assert_same(hf, cfg, params, ids, mask, max_new_tokens=new, eos_token_id=eos,
                    min_new_tokens=6)


def test_sampling_deterministic_and_cold_limit_is_greedy(tiny):
    _, cfg, params, ids, mask = tiny
    # 40 new tokens on all 6 prompts: the greedy reference reuses the greedy tests' bucket
    kwargs = dict(max_new_tokens=40, do_sample=True, top_k=50, top_p=0.9, pad_token_id=PAD)
    first = generate(cfg, params, ids, mask, seed=3, **kwargs)
    np.testing.assert_array_equal(first, generate(cfg, params, ids, mask, seed=3, **kwargs))
    assert (first != generate(cfg, params, ids, mask, seed=4, **kwargs)).any()
    greedy = generate(cfg, params, ids, mask, max_new_tokens=40, pad_token_id=PAD)
    cold = generate(cfg, params, ids, mask, seed=5, temperature=1e-6, **kwargs)
    np.testing.assert_array_equal(cold, greedy)
    several = generate(cfg, params, ids[:2], mask[:2], seed=3, num_return_sequences=3, **kwargs)
    assert several.shape[0] == 6


def test_one_bucket_compiles_once(tiny):
    _, cfg, params, _, _ = tiny
    ids, mask = left_padded((2, 5, 9, 11, 14), seed=7)
    DECODERS.clear_caches()  # this test's buckets compile here, whichever tests ran before
    traces = [DECODERS.traces.count("greedy")]
    for row in range(5):  # prompts of 2..14 tokens: one bucket (16 columns)
        n = int(mask[row].sum())
        out = generate(cfg, params, ids[row:row + 1, -n:], max_new_tokens=9, pad_token_id=PAD)
        assert out.shape == (1, n + 9)
        traces.append(DECODERS.traces.count("greedy"))
    # prompts of 20 and 30 tokens: the next bucket (32 columns) compiles exactly once
    for n in (20, 30):
        generate(cfg, params, np.ones((1, n), np.int64), max_new_tokens=9, pad_token_id=PAD)
        traces.append(DECODERS.traces.count("greedy"))
    assert np.diff(traces).tolist() == [1, 0, 0, 0, 0, 1, 0]


def test_repeated_call_traces_nothing(tiny, monkeypatch):
    """A second call with the same shapes runs no Python trace of the model: the KV cache's
    shapes and the parameters' logical axes are computed once per config (they were each a
    `jax.eval_shape` of the whole model on every call: 0.8-1.5 s per call on 124M here)."""
    _, cfg, params, _, _ = tiny
    ids, mask = left_padded((4, 6), seed=3)
    kwargs = dict(max_new_tokens=5, pad_token_id=PAD)
    first = generate(cfg, params, ids, mask, **kwargs)
    traced = []
    real_eval_shape = jax.eval_shape

    def counting_eval_shape(fn, *args, **kwargs):
        traced.append(fn)
        return real_eval_shape(fn, *args, **kwargs)

    monkeypatch.setattr(jax, "eval_shape", counting_eval_shape)
    again = generate(cfg, params, ids, mask, **kwargs)
    np.testing.assert_array_equal(again, first)
    assert traced == []
    generate(cfg, params, ids, mask, max_new_tokens=40, pad_token_id=PAD)  # a longer cache
    assert traced, "new cache shapes are traced (so the counter does reach eval_shape)"


def test_sharded_decode_equals_single_device(tiny):
    assert len(jax.devices()) == 8
    _, cfg, params, ids, mask = tiny
    mesh_cfg = common.mesh_config()
    mesh_cfg.data, mesh_cfg.tensor = 4, 2
    mesh = make_mesh(mesh_cfg)
    kw = dict(max_new_tokens=10, pad_token_id=PAD)
    for extra in (dict(), dict(num_beams=4, num_return_sequences=2)):
        single = generate(cfg, params, ids, mask, **kw, **extra)
        sharded = generate(cfg, params, ids, mask, mesh=mesh, axis_rules=rules(mesh_cfg),
                           **kw, **extra)
        np.testing.assert_array_equal(sharded, single)


def test_seed_example_matches_hf(tiny, tokenizer):
    hf, cfg, params, _, _ = tiny
    ids = np.array([tokenizer.encode("The quick brown fox jumps over the")])
    kwargs = dict(max_length=50, num_beams=5, no_repeat_ngram_size=2, top_k=50, top_p=0.95,
                  temperature=0.7)
    ref = assert_same(hf, cfg, params, ids, np.ones_like(ids), **kwargs)
    np.testing.assert_array_equal(gpt2jax.generate(cfg, params, ids, **kwargs), ref)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_length=3), "max_length"),
    (dict(max_new_tokens=200), "context"),
    (dict(do_sample=True, top_p=0.0), "top_p"),  # top_p=1.5, num_beams=0, an unknown
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),  # name: catalogue
    (dict(suppress_tokens=7), "suppress_tokens"),
    (dict(suppress_tokens=[3, -1]), "suppress_tokens"),
])
def test_bad_inputs(tiny, kwargs, match):
    _, cfg, params, ids, mask = tiny
    with pytest.raises(gpt2jax.ConfigError, match=match):
        generate(cfg, params, ids, mask, **kwargs)


def test_fully_masked_prompt_is_rejected(tiny):
    """A row whose attention mask is all zeros is an empty prompt (an empty array: the
    catalogue's generate-empty-prompt)."""
    _, cfg, params, ids, mask = tiny
    bad = mask.copy()
    bad[1] = 0
    with pytest.raises(gpt2jax.ConfigError, match="empty"):
        generate(cfg, params, ids, bad, max_new_tokens=3)
