"""Tasks, CLI, BLEU/ROUGE and bad input of the evaluation (tiny random models)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from configs import eval as eval_configs
from gpt2jax.cli import CliArgs
from gpt2jax.cli import eval as eval_cli
from gpt2jax.errors import ConfigError, DataError
from gpt2jax.eval import generation, tasks, text_metrics
from gpt2jax.eval.perplexity import plan_windows

HYPS = ["the cat sat on the mat .", "a quick brown dog jumps over the lazy fox",
        "he said that it was raining in paris today", "nothing matches here at all"]
REFS = ["the cat is on the mat .", "the quick brown fox jumps over the lazy dog",
        "he said it rained in paris today", "completely different reference sentence"]


def test_bleu_and_rouge_are_the_libraries_numbers():
    ours = text_metrics.bleu(HYPS, REFS)
    assert ours["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert 0 < ours["bleu"] < 100 and ours["signature"].startswith("nrefs:1")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, h) for h, r in zip(HYPS, REFS)]
    got = text_metrics.rouge(HYPS, REFS)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == pytest.approx(100 * np.mean([s[key].fmeasure for s in direct]),
                                         rel=1e-12)
    assert text_metrics.bleu(REFS, REFS)["bleu"] == pytest.approx(100.0)
    assert text_metrics.rouge(REFS, REFS)["rouge2"] == pytest.approx(100.0)


def test_summary_and_translation_postprocessing():
    text = " First one. Second! Third? Fourth sentence. Fifth."
    assert text_metrics.first_sentences(text, 3) == "First one. Second! Third?"
    scores = generation.score_summaries([text], ["First one. Second! Third?"], sentences=3)
    assert scores["rouge1"] == pytest.approx(100.0) and "rouge_avg" in scores
    assert text_metrics.first_line(" le chat\ncat = chat") == "le chat"
    assert text_metrics.translation_prompt([("cat", "chat")], "dog") == "cat = chat\ndog ="
    assert text_metrics.summary_prompt("An article. ") == "An article.\nTL;DR:"
    bleu = generation.score_translations([" le chat est noir\nx = y"], ["le chat est noir"])
    assert bleu["bleu"] == pytest.approx(100.0)


def _tiny_config(task: str, data_dir, **eval_overrides):
    config = eval_configs.get_config(task)
    config.model.update(n_layer=1, n_embd=32, n_head=2, n_positions=128)
    config.data_dir = str(data_dir)
    config.mesh.data = 1  # one device keeps the tiny smoke test fast
    config.eval.update(context_length=128, stride=64, batch_size=4, progress=False,
                       **eval_overrides)
    return config


def test_cli_wikitext2_end_to_end(data_dir, tmp_path, capsys):
    config = _tiny_config("wikitext2", data_dir, max_tokens=400)
    out = tmp_path / "wt2.json"
    rows = eval_cli.main(config, CliArgs(output_json=str(out)))
    printed = capsys.readouterr().out
    assert "raw_hf" in printed and "detok" in printed and str(out) in printed
    saved = json.loads(out.read_text())["rows"]
    assert saved == json.loads(json.dumps(rows))
    ppl = {(r["protocol"], r["metric"]): r for r in rows}
    n_scored = 400 - 1  # stride < context: every token but the first is scored
    assert ppl["raw_hf", "ppl"]["tokens"] == ppl["detok", "ppl"]["tokens"] == n_scored
    # random init: perplexity near the vocabulary size
    assert 0.5 * 50257 < ppl["raw_hf", "ppl"]["value"] < 2 * 50257


def test_generation_tasks_end_to_end(data_dir, tmp_path):
    (tmp_path / "sum.jsonl").write_text(
        json.dumps({"article": "The cat sat on the mat. It was happy.",
                    "highlights": "A cat sat."}) + "\n")
    pairs = [{"en": "the cat", "fr": "le chat"}, {"en": "the dog", "fr": "le chien"}]
    (tmp_path / "mt.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = _tiny_config("summarize", tmp_path)
    config.eval.files.jsonl = str(tmp_path / "sum.jsonl")
    config.generate.max_new_tokens = 8
    rows = eval_cli.evaluate_config(config)
    assert {r["metric"] for r in rows} == {"rouge1", "rouge2", "rougeL", "rouge_avg"}
    config = _tiny_config("translate", tmp_path, num_shots=1)
    config.eval.files.update(jsonl=str(tmp_path / "mt.jsonl"), shots=str(tmp_path / "mt.jsonl"))
    config.generate.max_new_tokens = 6
    rows = eval_cli.evaluate_config(config)
    assert rows[0]["metric"] == "bleu" and rows[0]["examples"] == 2
    assert rows[0]["protocol"] == "en-fr_1_shot"


def test_reproduce_gpt2_smoke(data_dir, tmp_path):
    import importlib.util

    from gpt2jax.cli.eval import REPO

    spec = importlib.util.spec_from_file_location(
        "reproduce_gpt2", REPO / "experiments" / "reproduce_gpt2" / "run.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    table = runner.main(["--data_dir", str(data_dir), "--smoke", "--sizes", "124M",
                         "--out", str(tmp_path)]).read_text()
    assert "SMOKE RUN" in table
    lines = {tuple(c.strip() for c in line.split("|")[1:6]): line.split("|")[7:9]
             for line in table.splitlines() if line.startswith("| 124M |")}
    # The paper's 45.99 / 35.13 stand only beside a row of (an approximation of) its protocol.
    paper, relation = lines[("124M", "lambada_openai", "lm_eval", "", "ppl")]
    assert paper.strip() == "" and "not comparable" in relation
    paper, relation = lines[("124M", "lambada_openai", "last_word_stopfilter", "", "acc")]
    assert paper.strip() == "45.99" and "approximate [a]" in relation
    assert "- [a] the paper's LAMBADA accuracy" in table and "NLTK's 179-word" in table
    assert ("124M", "lambada_openai", "last_word", "", "acc") in lines
    assert all(rel.strip() for paper, rel in lines.values() if paper.strip())
    assert "| 124M | wikitext2 | raw_hf | 128 | ppl |" in table
    assert "| 124M | ptb | detok | 64 | ppl |" in table
    assert "- enwik8: Task 'enwik8' needs the file 'enwik8/enwik8'" in table
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["task"] for r in rows} == {"lambada_openai", "wikitext2", "ptb"}


def test_padded_vocabulary_evaluates(data_dir):
    """A model with 100,000 rows (greedy LAMBADA words hit ids past the tokenizer's 50,257
    at most steps; decoding one raised KeyError before): perplexity over every row, as
    training's loss, and LAMBADA's words end at such an id."""
    from gpt2jax.data.tokenizers import get_tokenizer
    from gpt2jax.eval import lambada

    config = _tiny_config("lambada_openai", data_dir, max_examples=8)
    config.model.vocab_size = 100_000
    rows = eval_cli.evaluate_config(config)
    metrics = {(r["protocol"], r["metric"]): r["value"] for r in rows}
    assert ("last_word", "acc") in metrics and ("last_word_stopfilter", "acc") in metrics
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    enc = get_tokenizer(str(data_dir / "gpt2" / "gpt2.tiktoken"))
    assert lambada.first_word(enc, enc.encode(" Hello there") + [60000, 11]) == "Hello"
    assert lambada.first_word(enc, [60000] + enc.encode(" Hello")) == ""


# ---------------------------------------------------------------- bad input

def test_unknown_task_lists_known_ones():
    with pytest.raises(ConfigError, match="known tasks: .*lambada_openai.*wikitext2"):
        eval_configs.get_config("wikitext4")
    with pytest.raises(ConfigError, match="known tasks: .*ptb"):
        tasks.check_task("wikitext4")


def test_missing_data_file_says_which_and_where(data_dir, tmp_path):
    config = _tiny_config("wikitext103", data_dir)
    with pytest.raises(DataError, match=r"wikitext-103-raw/wiki.test.raw.*looked for at.*"
                                        + str(data_dir)):
        eval_cli.evaluate_config(config)
    config = _tiny_config("enwik8", tmp_path)
    with pytest.raises(DataError, match="enwik8/enwik8"):
        eval_cli.evaluate_config(config)


def test_stride_larger_than_context(data_dir):
    with pytest.raises(ConfigError, match="stride=2048"):
        plan_windows(5000, 1024, 2048)
    config = _tiny_config("ptb", data_dir)
    config.eval.stride = 256
    with pytest.raises(ConfigError, match="larger than eval.context_length=128"):
        eval_cli.evaluate_config(config)


def test_vocab_mismatch_model_vs_tokenizer(data_dir):
    config = _tiny_config("ptb", data_dir)
    config.model.vocab_size = 50000
    with pytest.raises(ConfigError, match="vocab_size=50000 but the tokenizer has 50257"):
        eval_cli.evaluate_config(config)
    from gpt2jax.eval.perplexity import check_tokens
    from gpt2jax.nn.model import GPT2Config

    with pytest.raises(ConfigError, match="does not match the model"):
        check_tokens(GPT2Config(vocab_size=100, n_layer=1, n_embd=8, n_head=2), [5, 100])
