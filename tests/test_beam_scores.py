"""Beam search with `output_scores` (issue 16 point 1) == HF transformers `generate(...,
num_beams=3, output_scores=True, return_dict_in_generate=True)` on identical random weights:
per-step `scores` ([batch * num_beams, vocab] processed log-probs), `sequences_scores`,
`beam_indices` and the sequences, for a left-padded batch of 2, with EOS ids that really
finish beams before max_new_tokens (and HF stopping early), none finishing, length_penalty
!= 1, no_repeat_ngram_size + repetition_penalty, and scan_layers; and the program without
output_scores is compiled separately (the scores cost nothing when not asked for)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt2jax.generation.generate import DECODERS, generate
from helpers import converted, hf_model, left_padded_batch, to_gpt2jax

PAD = 255   # a real token of the tiny vocabulary, different from every EOS used here
MAX_NEW = 6


@pytest.fixture(scope="module")
def tiny():
    """(hf model, cfg, params, ids [2, 6], mask [2, 6] with row 1 left-padded by 2, eos ids).

    The EOS ids are the first token of each row's best beam when EOS cannot be chosen (HF,
    min_new_tokens = max_new_tokens), so with them beams really finish early."""
    model = hf_model(0, random_norms=True)
    ids, mask, _ = left_padded_batch(seed=5, length=6, pads=2)
    free = _hf(model, ids, mask, eos_token_id=PAD, min_new_tokens=MAX_NEW)
    eos = sorted({int(free.sequences[0, ids.shape[1]]), int(free.sequences[1, ids.shape[1]])})
    assert PAD not in eos
    return (model, *to_gpt2jax(model), ids, mask, eos)


def _hf(model, ids, mask, **kwargs):
    with torch.no_grad():
        return model.generate(torch.as_tensor(ids, dtype=torch.long),
                              attention_mask=torch.as_tensor(mask), do_sample=False,
                              num_beams=3, max_new_tokens=MAX_NEW, pad_token_id=PAD,
                              return_dict_in_generate=True, output_scores=True, **kwargs)


def _assert_equal_hf(model, cfg, params, ids, mask, **kwargs):
    """Ours == HF: sequences, sequences_scores, the number of steps, every step's scores
    (within 1e-5, -inf where HF has -inf) and beam_indices. Returns HF's output."""
    ref = _hf(model, ids, mask, **kwargs)
    ours = generate(cfg, params, ids, mask, return_dict=True, output_scores=True, num_beams=3,
                    max_new_tokens=MAX_NEW, pad_token_id=PAD, **kwargs)
    np.testing.assert_array_equal(ours.sequences, ref.sequences.numpy(), err_msg=str(kwargs))
    np.testing.assert_allclose(ours.sequences_scores, ref.sequences_scores.numpy(), atol=1e-5,
                               rtol=0)
    assert len(ours.scores) == len(ref.scores), (len(ours.scores), len(ref.scores), kwargs)
    for t, (mine, theirs) in enumerate(zip(ours.scores, ref.scores)):
        assert mine.shape == tuple(theirs.shape) == (2 * 3, cfg.vocab_size)
        np.testing.assert_allclose(mine, theirs.numpy(), atol=1e-5, rtol=0,
                                   err_msg=f"step {t} {kwargs}")
    np.testing.assert_array_equal(ours.beam_indices, ref.beam_indices.numpy())
    return ref


def _finished_early(ref, eos, prompt_len: int) -> bool:
    """Some returned sequence holds an EOS before its last column, or HF stopped early."""
    new = ref.sequences.numpy()[:, prompt_len:]
    return bool(np.isin(new[:, :-1], eos).any()) or len(ref.scores) < MAX_NEW


@pytest.mark.parametrize("num_return_sequences, length_penalty, early_stopping", [
    (1, 1.0, True), (2, 0.5, False), (2, 2.0, True)])
def test_beam_scores_equal_hf_when_beams_finish(tiny, num_return_sequences, length_penalty,
                                                early_stopping):
    model, cfg, params, ids, mask, eos = tiny
    ref = _assert_equal_hf(model, cfg, params, ids, mask, eos_token_id=eos,
                           num_return_sequences=num_return_sequences,
                           length_penalty=length_penalty, early_stopping=early_stopping)
    assert _finished_early(ref, eos, ids.shape[1])  # the case reaches finished beams
    if early_stopping:
        assert len(ref.scores) < MAX_NEW  # HF stopped before max_new_tokens: so did we


def test_beam_scores_equal_hf_when_no_beam_finishes(tiny):
    model, cfg, params, ids, mask, eos = tiny
    ref = _assert_equal_hf(model, cfg, params, ids, mask, eos_token_id=eos,
                           min_new_tokens=MAX_NEW, num_return_sequences=2, length_penalty=1.5,
                           repetition_penalty=1.3)
    assert not _finished_early(ref, eos, ids.shape[1])
    assert len(ref.scores) == MAX_NEW
    assert all(np.isneginf(s.numpy()[:, eos]).all() for s in ref.scores)  # EOS suppressed


def test_beam_scores_equal_hf_with_no_repeat_ngram(tiny):
    model, cfg, params, ids, mask, eos = tiny
    ref = _assert_equal_hf(model, cfg, params, ids, mask, eos_token_id=eos,
                           no_repeat_ngram_size=2, min_new_tokens=3, num_return_sequences=2)
    # past min_new_tokens nothing but the n-gram ban makes -inf: the case reaches it
    assert any(np.isneginf(s.numpy()).any() for s in ref.scores[3:])
    assert _finished_early(ref, eos, ids.shape[1])


def test_beam_scores_with_scan_layers(tiny, tmp_path):
    model, _, _, ids, mask, eos = tiny
    cfg, params = converted(model, tmp_path, scan_layers=True)
    assert cfg.scan_layers
    ref = _assert_equal_hf(model, cfg, params, ids, mask, eos_token_id=eos,
                           early_stopping=True)
    assert _finished_early(ref, eos, ids.shape[1])


def test_beam_without_scores_is_its_own_program(tiny):
    """output_scores compiles a separate beam program; calls without it keep reusing theirs
    (so the plain program has no score buffer), and their results do not depend on it."""
    _, cfg, params, ids, mask, eos = tiny
    kwargs = dict(num_beams=3, max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=eos,
                  return_dict=True)
    DECODERS.clear_caches()
    counts = [DECODERS.traces.count("beam")]
    plain = generate(cfg, params, ids, mask, **kwargs)
    counts.append(DECODERS.traces.count("beam"))
    scored = generate(cfg, params, ids, mask, output_scores=True, **kwargs)
    counts.append(DECODERS.traces.count("beam"))
    again = generate(cfg, params, ids, mask, length_penalty=0.5, **kwargs)
    counts.append(DECODERS.traces.count("beam"))
    generate(cfg, params, ids, mask, output_scores=True, length_penalty=0.5, **kwargs)
    counts.append(DECODERS.traces.count("beam"))
    assert np.diff(counts).tolist() == [1, 1, 0, 0]
    assert plain.scores is None and plain.beam_indices is None and again.scores is None
    np.testing.assert_array_equal(plain.sequences, scored.sequences)
    np.testing.assert_array_equal(plain.sequences_scores, scored.sequences_scores)
