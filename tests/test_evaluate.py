"""Perplexity and LAMBADA against Hugging Face transformers on the same random weights.

What is compared (see gpt2jax/eval/perplexity.py):
- ours: `nll_sum / token_count`, the exact token-weighted NLL over the tokens each window
  scores;
- HF: the guide's loop (transformers docs "Perplexity of fixed-length models") run with
  `GPT2LMHeadModel`, accumulating the summed per-token cross entropy of the valid shifted
  labels and their count (the same token-weighted quantity), and, separately, the guide's
  own `loss * (num_valid - 1)` formula, compared with our `guide_perplexity`.

To fit the CI budget, the tiny model (2 layers, 64 wide, 1024 positions) has a compact
vocabulary: the GPT-2 ids occurring in the 20,000-token WikiText-2 slice and the 50 LAMBADA
examples, renumbered 0..K-1 (K = 4806) by `CompactEncoding`. The text, its GPT-2
tokenization, the windows and the LAMBADA splitting are the real ones; only the id space
(and so the LM head) is smaller, for HF and for us alike.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import gpt2jax
from configs import common
from gpt2jax import sharding
from gpt2jax.eval import lambada as lambada_lib
from gpt2jax.eval import perplexity as ppl_lib
from gpt2jax.eval import tasks
from gpt2jax.model import GPT2Config, init_params

N_SLICE = 20_000
N_LAMBADA = 50


def hf_to_params(model: transformers.GPT2LMHeadModel, cfg: GPT2Config) -> dict:
    """HF GPT-2 state dict -> our param tree (c_attn [E,3E] -> [E,3,H,D], c_proj -> [H,D,E])."""
    sd = {k: v.detach().numpy() for k, v in model.transformer.state_dict().items()}
    H, D, E = cfg.n_head, cfg.head_dim, cfg.n_embd
    ln = lambda p: {"scale": jnp.asarray(sd[p + ".weight"]), "bias": jnp.asarray(sd[p + ".bias"])}
    params = {"wte": {"embedding": jnp.asarray(sd["wte.weight"])},
              "wpe": {"embedding": jnp.asarray(sd["wpe.weight"])}, "ln_f": ln("ln_f")}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        params[f"h_{i}"] = {
            "ln_1": ln(p + "ln_1"), "ln_2": ln(p + "ln_2"),
            "attn": {
                "c_attn": {"kernel": jnp.asarray(sd[p + "attn.c_attn.weight"].reshape(E, 3, H, D)),
                           "bias": jnp.asarray(sd[p + "attn.c_attn.bias"].reshape(3, H, D))},
                "c_proj": {"kernel": jnp.asarray(sd[p + "attn.c_proj.weight"].reshape(H, D, E)),
                           "bias": jnp.asarray(sd[p + "attn.c_proj.bias"])},
            },
            "mlp": {"c_fc": {"kernel": jnp.asarray(sd[p + "mlp.c_fc.weight"]),
                             "bias": jnp.asarray(sd[p + "mlp.c_fc.bias"])},
                    "c_proj": {"kernel": jnp.asarray(sd[p + "mlp.c_proj.weight"]),
                               "bias": jnp.asarray(sd[p + "mlp.c_proj.bias"])}},
        }
    return params


class CompactEncoding:
    """The GPT-2 tokenizer with ids renumbered onto `ids` and those of `texts` (0..K-1)."""

    def __init__(self, enc, ids, texts: list[str]):
        self.enc = enc
        seen = sorted(set(ids) | {t for text in texts for t in enc.encode_ordinary(text)})
        self.to_compact = {t: i for i, t in enumerate(seen)}
        self.n_vocab = len(seen)

    def encode_ordinary(self, text: str) -> list[int]:
        return [self.to_compact[t] for t in self.enc.encode_ordinary(text)]


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
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=1024,
                                     vocab_size=compact.n_vocab, bos_token_id=0, eos_token_id=0,
                                     attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=1024,
                     vocab_size=compact.n_vocab, embd_pdrop=0.0, attn_pdrop=0.0,
                     resid_pdrop=0.0)
    params = hf_to_params(model, cfg)
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


class _CachedForward:
    """HF forward returning per-token CE of shifted labels, memoised on the window bounds."""

    def __init__(self, model, ids):
        self.model, self.ids, self.cache = model, torch.as_tensor(ids)[None], {}

    def token_ce(self, begin: int, end: int) -> torch.Tensor:
        if (begin, end) not in self.cache:
            with torch.no_grad():
                logits = self.model(self.ids[:, begin:end]).logits[0, :-1]
            target = self.ids[0, begin + 1:end]
            self.cache[begin, end] = torch.nn.functional.cross_entropy(
                logits, target, reduction="none")
        return self.cache[begin, end]


def hf_guide_loop(forward: _CachedForward, max_length: int, stride: int):
    """The guide's loop; returns (exact nll sum, exact count, guide nll sum, guide count)."""
    seq_len = forward.ids.size(1)
    nll, count, guide_nll, guide_n = 0.0, 0, 0.0, 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        target_ids = forward.ids[:, begin_loc:end_loc].clone()
        target_ids[:, :-trg_len] = -100
        ce = forward.token_ce(begin_loc, end_loc)
        valid = target_ids[0, 1:] != -100  # the model's internal shift
        nll += float(ce[valid].sum())
        count += int(valid.sum())
        loss = ce[valid].mean()  # what outputs.loss is
        num_loss_tokens = int((target_ids != -100).sum()) - 1
        guide_nll += float(loss) * num_loss_tokens
        guide_n += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll, count, guide_nll, guide_n


def test_strided_perplexity_matches_hf_guide_loop(tiny, slice_ids, data_mesh):
    """Batches of 8 windows sharded over 8 simulated devices (last batch padded)."""
    model, cfg, params = tiny
    ids = slice_ids
    forward = _CachedForward(model, ids)
    mesh, rules = data_mesh
    for stride in (1024, 512, 256):
        nll, count, guide_nll, guide_n = hf_guide_loop(forward, 1024, stride)
        ours = ppl_lib.perplexity(cfg, params, ids, context_length=1024, stride=stride,
                                  batch_size=8, mesh=mesh, axis_rules=rules)
        assert ours.token_count == count
        assert ours.token_count == (N_SLICE - ours.windows if stride == 1024 else N_SLICE - 1)
        np.testing.assert_allclose(ours.nll_per_token, nll / count, rtol=1e-4)
        np.testing.assert_allclose(ours.perplexity, math.exp(nll / count), rtol=1e-4)
        np.testing.assert_allclose(ours.guide_perplexity, math.exp(guide_nll / guide_n),
                                   rtol=1e-4)
        if stride == 1024:  # the guide's weighting is exact without overlap
            np.testing.assert_allclose(ours.guide_perplexity, ours.perplexity, rtol=1e-12)


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
        whole = enc.encode_ordinary(context + " " + word)
        ctx = enc.encode_ordinary(context)
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
