"""The `gpt2jax` lm-eval backend against lm-eval's own `hf` backend (the reference), through
lm-eval's real `simple_evaluate`, offline, on identical random weights saved in HF format.

A tiny GPT-2 (2 layers, 32 wide, 64 positions, the real 50257-token vocabulary) is made by
`transformers` and saved with `save_pretrained`, next to an offline GPT-2 tokenizer folder
(encoder.json -> vocab.json, vocab.bpe -> merges.txt). The four YAML tasks of
configs/lm_eval_tasks read a data folder this module writes from the shared data:
- lambada_openai_local: 8 real LAMBADA texts plus 8 whose last word is the reference model's
  greedy token after the context (so `acc` is neither 0 nor 1);
- wikitext_local: the first two WikiText-2 test articles, each cut to its first lines (a few
  hundred tokens: the rolling windows of 64 roll);
- multiple_choice_local: 8 LAMBADA contexts with 4 candidate last words (acc, acc_norm;
  one-token endings share a model input, so both backends read them from one row);
- hellaswag_local: lm-eval's own `hellaswag` processing on 6 rows in the hub's HellaSwag
  format (activity label, ctx_a, ctx_b, 4 endings, a string label; "[title]" artifacts that
  its preprocess rewrites), built from Tiny Shakespeare lines (acc, acc_norm);
- completion_local: 4 contexts (one longer than 64 - max_gen_toks, so it is left-truncated),
  stop strings taken from the middle of the reference's own greedy continuations, and half
  of the targets equal to the reference's cut output (exact_match neither 0 nor 1).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from lm_eval.models.utils import postprocess_generated_text

from gpt2jax.eval import harness, lambada as lambada_lib
from gpt2jax.eval.harness_data import wikitext_pages
from gpt2jax.data.bpe import EOT_ID, EOT_TOKEN
from helpers import hellaswag_rows
TASKS_DIR = Path(__file__).resolve().parents[1] / "configs" / "lm_eval_tasks"
TASKS = ["lambada_openai_local", "wikitext_local", "multiple_choice_local", "completion_local",
         "hellaswag_local"]
N_POS, MAX_GEN, BATCH = 64, 12, 4
REL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    """(HF model dir with an offline tokenizer, the torch model, its tokenizer)."""
    out = tmp_path_factory.mktemp("tiny_hf")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=N_POS)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(out)
    shutil.copy(data_dir / "gpt2" / "encoder.json", out / "vocab.json")
    shutil.copy(data_dir / "gpt2" / "vocab.bpe", out / "merges.txt")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    return out, model, transformers.AutoTokenizer.from_pretrained(out)


def _greedy_token(model, ids: list[int]) -> int:
    with torch.no_grad():
        return int(model(torch.tensor([ids[-N_POS:]])).logits[0, -1].argmax())


def _greedy_lambada(model, tok, texts: list[str], want: int) -> list[str]:
    """LAMBADA texts whose last word is replaced by the model's greedy next token (a word)."""
    out = []
    for text in texts:
        context = text.rsplit(" ", 1)[0]
        ctx = tok.encode(context)
        greedy = _greedy_token(model, ctx)
        word = tok.decode([greedy])
        one_token = tok.encode(context + word) == ctx + [greedy]
        if word.startswith(" ") and word[1:].isalpha() and one_token:
            out.append(context + word)
        if len(out) == want:
            return out
    raise AssertionError(f"only {len(out)} LAMBADA contexts have a one-word greedy token")


def _completions(model, tok, contexts: list[str]):
    """(docs, stop strings): stops from the reference's greedy continuations; even docs'
    targets are the reference's cut outputs."""
    full = []
    for context in contexts:
        ids = torch.tensor([tok.encode(context)[-(N_POS - MAX_GEN):]])
        with torch.no_grad():
            seq = model.generate(ids, max_new_tokens=MAX_GEN, do_sample=False,
                                 pad_token_id=EOT_ID)[0, ids.shape[1]:]
        full.append(tok.decode(seq, skip_special_tokens=True))
    until = [s for s in (f[len(f) // 2:len(f) // 2 + 3] for f in full[:3]) if s.strip()]
    docs = [{"context": c, "target": postprocess_generated_text(f, until + [EOT_TOKEN], None)
             if i % 2 == 0 else "(no match)", "full": f}
            for i, (c, f) in enumerate(zip(contexts, full))]
    return docs, until


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def task_data(tmp_path_factory, data_dir, tiny):
    """The data folder of the four tasks (see the module docstring) and the stop strings."""
    _, model, tok = tiny
    root = tmp_path_factory.mktemp("lm_eval_data")
    texts = lambada_lib.read_lambada(data_dir / "lambada" / "lambada_test.jsonl")
    lambada = texts[:8] + _greedy_lambada(model, tok, texts[8:80], 8)
    _write_jsonl(root / "lambada" / "lambada_test.jsonl", [{"text": t} for t in lambada])
    raw = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    pages = ["\n".join(p.split("\n")[:6]) for p in wikitext_pages(raw)[:2]]  # ~5 windows each
    (root / "wikitext-2-raw").mkdir()
    (root / "wikitext-2-raw" / "wiki.test.raw").write_text("\n".join(pages), encoding="utf-8")
    words = [t.rsplit(" ", 1)[1] for t in texts[100:112]]
    _write_jsonl(root / "multiple_choice" / "test.jsonl", [
        {"query": " ".join(texts[100 + i].rsplit(" ", 1)[0].split()[-30:]),
         "choices": words[i:i + 4], "gold": i % 4} for i in range(8)])
    contexts = [" ".join(t.split()[:n]) for t, n in zip(texts[200:204], (8, 16, 24, 90))]
    docs, until = _completions(model, tok, contexts)
    _write_jsonl(root / "completion" / "test.jsonl", docs)
    _write_jsonl(root / "hellaswag" / "hellaswag_val.jsonl", hellaswag_rows(data_dir, 6))
    return root, until, docs


@pytest.fixture(scope="module")
def results(tiny, task_data):
    """lm-eval's results of both backends: {"hf": ..., "gpt2jax": ...}."""
    hf_dir = tiny[0]
    root, until, _ = task_data
    manager = harness.task_manager(str(TASKS_DIR), root, include_defaults=False)
    gen = {"until": until, "max_gen_toks": MAX_GEN, "do_sample": False}
    return {name: harness.evaluate(name, TASKS, manager, gen_kwargs=gen, log_samples=True,
                                   model_args=f"pretrained={hf_dir},dtype=float32",
                                   batch_size=BATCH, device="cpu")
            for name in ("hf", "gpt2jax")}


def _metrics(res: dict, task: str) -> dict:
    return {k: v for k, v in res["results"][task].items()
            if "," in k and "stderr" not in k}


@pytest.mark.parametrize("task", TASKS)
def test_every_metric_equals_the_hf_backend(results, task):
    ours, ref = _metrics(results["gpt2jax"], task), _metrics(results["hf"], task)
    expected = {"lambada_openai_local": {"acc,none", "perplexity,none"},
                "wikitext_local": {"word_perplexity,none", "byte_perplexity,none",
                                   "bits_per_byte,none"},
                "multiple_choice_local": {"acc,none", "acc_norm,none"},
                "completion_local": {"exact_match,none"},
                "hellaswag_local": {"acc,none", "acc_norm,none"}}[task]
    assert set(ref) == expected and set(ours) == expected
    for key in expected:
        assert ours[key] == pytest.approx(ref[key], rel=REL, abs=0), key


@pytest.mark.parametrize("task", TASKS)
def test_every_response_equals_the_hf_backend(results, task):
    ours, ref = results["gpt2jax"]["samples"][task], results["hf"]["samples"][task]
    assert [s["doc_id"] for s in ours] == [s["doc_id"] for s in ref]
    for a, b in zip(ours, ref):
        for x, y in zip(a["resps"], b["resps"]):
            x, y = x[0], y[0]
            if isinstance(y, str):
                assert x == y, a["doc_id"]
            elif isinstance(y, tuple):  # (loglikelihood, is_greedy)
                assert x[0] == pytest.approx(y[0], rel=REL) and x[1] == y[1], a["doc_id"]
            else:  # rolling loglikelihood
                assert x == pytest.approx(y, rel=REL), a["doc_id"]


def test_tasks_reach_every_path(results, tiny, task_data):
    """Greedy hits and misses, windows that roll, generation cut at a stop string."""
    _, _, tok = tiny
    _, until, docs = task_data
    ref = results["hf"]
    acc = ref["results"]["lambada_openai_local"]["acc,none"]
    assert 0 < acc < 1
    pages = [s["doc"]["page"] for s in ref["samples"]["wikitext_local"]]
    assert len(pages) == 2 and min(len(tok.encode(p)) for p in pages) > 3 * N_POS
    outputs = [s["resps"][0][0] for s in ref["samples"]["completion_local"]]
    assert until and any(len(o) < len(d["full"]) and d["full"].startswith(o)
                         for o, d in zip(outputs, docs))
    assert 0 < ref["results"]["completion_local"]["exact_match,none"] < 1
    assert max(len(tok.encode(d["context"])) for d in docs) > N_POS - MAX_GEN
    # multiple choice: one-token endings of a question share a model input (one row)
    mc = ref["samples"]["multiple_choice_local"]
    assert max(sum(len(tok.encode(cont)) == 1 for _, cont in s["arguments"]) for s in mc) >= 2
    # hellaswag: lm-eval's process_docs ran (label prefix, "[title]" rewritten), 4 endings
    hs = ref["samples"]["hellaswag_local"]
    assert len(hs) == 6 and all(len(s["arguments"]) == 4 for s in hs)
    assert all(s["doc"]["query"].startswith("Shakespeare: ") and "[title]" not in
               s["doc"]["query"] for s in hs)


def test_our_lambada_protocol_equals_lm_eval(results, tiny, task_data):
    """eval/lambada.py (our own LAMBADA protocol) on the same weights and texts: the same
    accuracy and perplexity as lm-eval's hf backend on lambada_openai."""
    hf_dir = tiny[0]
    root = task_data[0]
    texts = lambada_lib.read_lambada(root / "lambada" / "lambada_test.jsonl")
    lm = harness.GPT2JaxLM(pretrained=str(hf_dir), progress=False)
    ours = lambada_lib.evaluate_lambada(lm.cfg, lm.scorer.params, lm.enc, texts,
                                        context_length=N_POS, batch_size=BATCH)
    ref = results["hf"]["results"]["lambada_openai_local"]
    assert ours["accuracy"] == ref["acc,none"]
    assert ours["perplexity"] == pytest.approx(ref["perplexity,none"], rel=REL)
    per_doc = [s["resps"][0][0][0] for s in results["hf"]["samples"]["lambada_openai_local"]]
    np.testing.assert_allclose(-np.array(ours["target_nll"]), per_doc, rtol=REL)
    assert math.isfinite(ours["perplexity"])


def test_padded_vocabulary_generates_decodable_text(data_dir):
    """A model with 100,000 rows (greedy picks ids past the tokenizer's 50,257 at most steps;
    decoding one raised KeyError before `suppress_tokens`): generate_until gives text."""
    import jax
    from lm_eval.api.instance import Instance

    from gpt2jax.data.tokenizers import get_tokenizer
    from gpt2jax.nn.model import GPT2Config, init_params

    cfg = GPT2Config(vocab_size=100_000, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    tokenizer = get_tokenizer(str(data_dir / "gpt2" / "gpt2.tiktoken"))
    lm = harness.GPT2JaxLM(cfg=cfg, params=init_params(cfg, jax.random.key(0)),
                           tokenizer=tokenizer, progress=False)
    request = Instance("generate_until", {}, ("Hello there", {"until": ["\n\n\n\n"],
                                                              "max_gen_toks": 12}), 0)
    [text] = lm.generate_until([request])
    assert len(tokenizer.encode(text)) >= 6, text
