"""Perplexity and LAMBADA against Hugging Face transformers on the same random weights.

What is compared (see gpt2jax/eval/perplexity.py):
- ours: `nll_sum / token_count`, the exact token-weighted NLL over the tokens each window
  scores;
- HF: the guide's loop (transformers docs "Perplexity of fixed-length models") run with
  `GPT2LMHeadModel(input_ids, labels=...)` (context-only labels -100): each window's
  `outputs.loss * n_scored` (n_scored = labels left after HF's internal shift) and
  n_scored against our per-window NLL sum and count, then the totals; and, separately, the
  guide's own `loss * (num_valid - 1)` formula, compared with our `guide_perplexity`.

The HF model's random weights reach ours through gpt2jax's converter (`helpers.to_gpt2jax`).

To fit the CI budget, the tiny model (2 layers, 64 wide, 1024 positions) has a compact
vocabulary: the GPT-2 ids occurring in the 20,000-token WikiText-2 slice and the 50 LAMBADA
examples, renumbered 0..K-1 (K = 4806) by `CompactEncoding`. The text, its GPT-2
tokenization, the windows and the LAMBADA splitting are the real ones; only the id space
(and so the LM head) is smaller, for HF and for us alike.
"""

from __future__ import annotations

import math
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import gpt2jax
from configs import common
from gpt2jax.parallel import sharding
from gpt2jax.eval import lambada as lambada_lib
from gpt2jax.eval import perplexity as ppl_lib
from gpt2jax.eval import stopwords
from gpt2jax.eval import tasks
from gpt2jax.nn.model import GPT2Config, init_params
from helpers import hf_tiny_model

N_SLICE = 20_000
N_LAMBADA = 50


class CompactEncoding:
    """The GPT-2 tokenizer with ids renumbered onto `ids` and those of `texts` (0..K-1)."""

    def __init__(self, enc, ids, texts: list[str]):
        self.enc = enc
        seen = sorted(set(ids) | {t for text in texts for t in enc.encode_ordinary(text)})
        self.to_compact = {t: i for i, t in enumerate(seen)}
        self.from_compact = seen
        self.vocab_size = len(seen)

    def encode(self, text: str) -> list[int]:
        return [self.to_compact[t] for t in self.enc.encode_ordinary(text)]

    def decode(self, ids) -> str:
        return self.enc.decode([self.from_compact[i] for i in ids])


@pytest.fixture(scope="module")
def wiki_ids(data_dir, tokenizer):
    text = tasks.wikitext_hf_join(data_dir / "wikitext-2-raw" / "wiki.test.raw")
    return np.asarray(tokenizer.encode_ordinary(text), np.int64)


@pytest.fixture(scope="module")
def lambada_texts(data_dir):
    return lambada_lib.read_lambada(data_dir / "lambada" / "lambada_test.jsonl")[:N_LAMBADA]


@pytest.fixture(scope="module")
def compact(tokenizer, wiki_ids, lambada_texts):
    return CompactEncoding(tokenizer, wiki_ids[:N_SLICE].tolist(), lambada_texts)


@pytest.fixture(scope="module")
def tiny(compact):
    """A 2-layer, 64-wide GPT-2 with 1024 positions, in HF and ours, same random weights."""
    model, cfg, params = hf_tiny_model(
        0, eager=True, n_layer=2, n_embd=64, n_head=2, n_positions=1024,
        vocab_size=compact.vocab_size, bos_token_id=0, eos_token_id=0, embd_pdrop=0.0,
        attn_pdrop=0.0, resid_pdrop=0.0)
    assert cfg == GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=1024,
                             vocab_size=compact.vocab_size, embd_pdrop=0.0, attn_pdrop=0.0,
                             resid_pdrop=0.0)
    params = jax.tree.map(jnp.asarray, params)
    ref = jax.eval_shape(lambda key: init_params(cfg, key), jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(ref)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: intra-op threads only spin on a shared machine
    yield model, cfg, params
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def slice_ids(compact, wiki_ids):
    ids = np.asarray([compact.to_compact[t] for t in wiki_ids[:N_SLICE].tolist()], np.int64)
    assert len(ids) == N_SLICE
    return ids


@pytest.fixture(scope="module")
def data_mesh():
    mesh = sharding.make_mesh(common.mesh_config())  # 8 simulated devices on `data`
    assert mesh.shape["data"] == 8
    return mesh, sharding.rules(common.mesh_config())


def test_wikitext2_raw_hf_join_is_287644_tokens(wiki_ids):
    assert len(wiki_ids) == 287_644


def hf_guide_loop(model, ids: np.ndarray, max_length: int, stride: int) -> list[dict]:
    """The guide's loop, one record per window, HF computing the loss itself.

    Each window is `model(input_ids, labels=target_ids)` with the context-only targets set
    to -100, as the guide does; `outputs.loss` is HF's mean over the labels that survive its
    internal shift, so `loss * n_scored` (n_scored = labels != -100 after the shift) is HF's
    summed NLL of the window. Returns [{begin, end, nll, n_scored, guide_n}] where guide_n
    is the guide's own `num_valid_tokens - batch_size`.
    """
    ids = torch.as_tensor(ids)[None]
    seq_len = ids.size(1)
    out, prev_end_loc = [], 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = float(model(input_ids, labels=target_ids).loss)
        n_scored = int((target_ids[:, 1:] != -100).sum())
        guide_n = int((target_ids != -100).sum()) - target_ids.size(0)
        out.append(dict(begin=begin_loc, end=end_loc, nll=loss * n_scored, n_scored=n_scored,
                        guide_n=guide_n))
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return out


def test_strided_perplexity_matches_hf_loss_window_by_window(tiny, slice_ids, data_mesh):
    """Each window's NLL sum and scored-token count against HF's own `labels=` loss, for
    strides 1024/512/256 over 20,000 tokens (so the last window is short for each);
    batches of 8 windows sharded over 8 simulated devices (last batch padded)."""
    model, cfg, params = tiny
    ids = slice_ids
    mesh, rules = data_mesh
    for stride in (1024, 512, 256):
        hf = hf_guide_loop(model, ids, 1024, stride)
        ours = ppl_lib.perplexity(cfg, params, ids, context_length=1024, stride=stride,
                                  batch_size=8, mesh=mesh, axis_rules=rules)
        assert hf[-1]["end"] - hf[-1]["begin"] < 1024 and hf[-1]["end"] == N_SLICE
        assert ours.windows == len(hf) == len(ours.window_nll_sums)
        assert list(ours.window_token_counts) == [w["n_scored"] for w in hf]
        np.testing.assert_allclose(ours.window_nll_sums, [w["nll"] for w in hf], rtol=1e-4)
        nll, count = sum(w["nll"] for w in hf), sum(w["n_scored"] for w in hf)
        assert ours.token_count == count == sum(ours.window_token_counts)
        assert ours.token_count == (N_SLICE - ours.windows if stride == 1024 else N_SLICE - 1)
        np.testing.assert_allclose(ours.nll_sum, nll, rtol=1e-4)
        np.testing.assert_allclose(ours.perplexity, math.exp(nll / count), rtol=1e-4)
        guide_nll = sum(w["nll"] / w["n_scored"] * w["guide_n"] for w in hf)
        guide_n = sum(w["guide_n"] for w in hf)
        np.testing.assert_allclose(ours.guide_perplexity, math.exp(guide_nll / guide_n),
                                   rtol=1e-4)
        if stride == 1024:  # the guide's weighting is exact without overlap
            np.testing.assert_allclose(ours.guide_perplexity, ours.perplexity, rtol=1e-12)
        else:  # ... and not with it: the comparison above can tell the two apart
            assert guide_n < count


def test_padded_batch_equals_unpadded(tiny, slice_ids, data_mesh):
    """5 windows, the last one shorter than the context: one window per forward (no padded
    rows, unsharded) == batches of 8 (3 empty rows) sharded over 8 devices; and a short text
    right-padded to the context == the model's own forward on the unpadded text."""
    _, cfg, params = tiny
    ids = slice_ids[:4200]
    one = ppl_lib.perplexity(cfg, params, ids, context_length=1024, stride=800, batch_size=1)
    assert one.windows == 5 and 4200 - 4 * 800 < 1024
    mesh, rules = data_mesh
    padded = ppl_lib.perplexity(cfg, params, ids, context_length=1024, stride=800,
                                batch_size=8, mesh=mesh, axis_rules=rules)
    assert padded.token_count == one.token_count == 4199
    np.testing.assert_allclose(padded.nll_sum, one.nll_sum, rtol=1e-6)
    short = ids[:300]
    res = ppl_lib.perplexity(cfg, params, short, context_length=1024, batch_size=1)
    logits = gpt2jax.GPT2(cfg).apply({"params": params}, jnp.asarray(short[None, :-1]))
    direct = float(jnp.sum(ppl_lib.token_nll(logits[0], jnp.asarray(short[1:]))))
    np.testing.assert_allclose(res.nll_sum, direct, rtol=1e-6)
    assert res.token_count == 299


def test_uniform_logits_give_vocab_size(tiny, slice_ids, data_mesh):
    _, cfg, params = tiny
    zero_wte = dict(params, wte={"embedding": jnp.zeros_like(params["wte"]["embedding"])})
    mesh, rules = data_mesh
    res = ppl_lib.perplexity(cfg, zero_wte, slice_ids[:1500], context_length=1024, stride=512,
                             batch_size=8, byte_count=6000, mesh=mesh, axis_rules=rules)
    np.testing.assert_allclose(res.perplexity, cfg.vocab_size, rtol=1e-5)
    np.testing.assert_allclose(res.guide_perplexity, cfg.vocab_size, rtol=1e-5)
    np.testing.assert_allclose(res.bits_per_byte, 1499 * math.log2(cfg.vocab_size) / 6000,
                               rtol=1e-5)


def _hf_lambada(model, enc, texts):
    """Independent lm-eval-style LAMBADA with transformers: (accuracy, ppl, argmax tokens)."""
    correct, lls, greedy = [], [], []
    for text in texts:
        context, word = text.rsplit(" ", 1)
        whole = enc.encode(context + " " + word)
        ctx = enc.encode(context)
        cont = whole[len(ctx):]
        inp = torch.tensor([(ctx + cont)[-1025:][:-1]])
        with torch.no_grad():
            logp = torch.log_softmax(model(inp).logits[0, -len(cont):], -1)
        tgt = torch.tensor(cont)
        correct.append(bool((logp.argmax(-1) == tgt).all()))
        greedy.append(logp.argmax(-1).tolist())
        lls.append(float(logp.gather(1, tgt[:, None]).sum()))
    return float(np.mean(correct)), math.exp(-float(np.mean(lls))), greedy


def test_lambada_matches_transformers(tiny, compact, lambada_texts):
    model, cfg, params = tiny
    ours = lambada_lib.evaluate_lambada(cfg, params, compact, lambada_texts, batch_size=16,
                                        min_bucket=128)
    acc, ppl, greedy = _hf_lambada(model, compact, lambada_texts)
    assert ours["examples"] == N_LAMBADA
    assert ours["greedy_tokens"] == greedy  # every argmax at every target position
    assert ours["accuracy"] == acc
    np.testing.assert_allclose(ours["perplexity"], ppl, rtol=1e-4)


def _word(text: str) -> str:
    """The paper-style word of a continuation: first whitespace token if it starts a new
    word, stripped of punctuation and curly quotes; "" otherwise."""
    parts = text.split() if text[:1].isspace() else []
    return parts[0].strip(string.punctuation + "\u201c\u201d\u2018\u2019") if parts else ""


def _hf_last_words(model, enc, contexts, stop_words, top_k=10, new_tokens=6):
    """With transformers: the greedy last word and the stop-word-filtered one per context
    (candidates = HF's top-k first tokens, each completed by HF greedy `generate`)."""
    gen = transformers.GenerationConfig(max_new_tokens=new_tokens - 1, do_sample=False,
                                        eos_token_id=None, pad_token_id=0)
    plain, filtered = [], []
    for ctx in contexts:
        with torch.no_grad():
            ranked = torch.topk(model(torch.tensor([ctx])).logits[0, -1], top_k).indices
        chosen = ""
        for rank, tok in enumerate(ranked.tolist()):
            seq = torch.tensor([ctx + [tok]])
            out = model.generate(seq, attention_mask=torch.ones_like(seq), generation_config=gen)
            assert out.shape[1] == len(ctx) + new_tokens  # no early stop
            word = _word(enc.decode(out[0, len(ctx):].tolist()))
            if rank == 0:
                plain.append(word)
            if word and word.lower() not in stop_words:
                chosen = word
                break
        filtered.append(chosen)
    return plain, filtered


def test_stopword_filtered_last_word_matches_transformers(tiny, compact, lambada_texts):
    """The stop-word-filtered LAMBADA protocol, word by word against HF greedy decoding, with
    NLTK's list and with a list made of the greedy words themselves (so the filter must fall
    back to lower-ranked candidates for every example); then its accuracy on texts whose
    last word is HF's filtered prediction."""
    model, cfg, params = tiny
    texts = lambada_texts[:12]
    contexts = [lambada_lib.encode_example(compact, t)[0] for t in texts]
    plain, _ = _hf_last_words(model, compact, contexts, stopwords.NLTK_ENGLISH, top_k=1)
    assert lambada_lib.greedy_words(cfg, params, compact, contexts) == plain
    own_words = frozenset(w.lower() for w in plain if w)
    for stop_words in (stopwords.NLTK_ENGLISH, own_words):
        hf_plain, hf_filtered = _hf_last_words(model, compact, contexts, stop_words)
        ours = lambada_lib.stopword_filtered_words(cfg, params, compact, contexts, stop_words)
        assert ours == hf_filtered and hf_plain == plain
    assert all(not lambada_lib.admissible(w, own_words) for w in plain)
    assert sum(f != p for f, p in zip(hf_filtered, plain)) >= len(texts) // 2
    assert sum(bool(w) for w in hf_filtered) >= 3  # the filter found words to predict
    # Targets: HF's filtered word ("zzz" where it found none), and for the first example a
    # stop word, which the filtered protocol can never predict.
    words = [w or "zzz" for w in hf_filtered]
    words[0] = sorted(own_words)[0]
    retargeted = [t.rsplit(" ", 1)[0] + " " + w for t, w in zip(texts, words)]
    scores = lambada_lib.last_word_scores(cfg, params, compact, retargeted, contexts, 1024, 16,
                                          own_words, 10)
    assert scores["stopword_filtered_predictions"] == hf_filtered
    assert scores["last_word_predictions"] == plain
    assert scores["stopword_targets"] == 1
    assert scores["stopword_filtered_accuracy"] == np.mean(
        [i > 0 and bool(w) for i, w in enumerate(hf_filtered)]) > 0
    assert scores["last_word_accuracy"] == np.mean([p == w for p, w in zip(plain, words)])
