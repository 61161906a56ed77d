"""`--mode=eval` on the user's own files: the `file` task (perplexity and bits per byte of any
text file, equal to the HF guide's loop in `transformers`), paths read from the working
directory (`dataset:NAME` from the data folder), the generation tasks' per-example records,
and a result table whose columns never run together."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from configs import eval as eval_configs
from gpt2jax.cli import CliArgs
from gpt2jax.cli import eval as eval_cli
from gpt2jax.data.tokenizers import CharTokenizer
from gpt2jax.errors import ConfigError, DataError
from gpt2jax.eval import files, tasks, text_metrics
from gpt2jax.eval.perplexity import perplexity
from helpers import REPO, cli_env, hf_model, run_cli, tiny_config, tiny_params

# Tiny Shakespeare's opening plus non-ASCII text, so that bytes != characters != tokens.
EXTRA = "\nNaïve café owners say “œuvre” — 東京 — and ⅓ of them mean it.\n"


def _hf_guide(model, ids: list[int], context: int, stride: int) -> tuple[float, int]:
    """The HF perplexity guide's loop: (summed NLL, scored tokens) of `ids` in `model`."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        inputs = torch.tensor([ids[begin:end]])
        labels = inputs.clone()
        labels[:, :-(end - prev_end)] = -100
        with torch.no_grad():
            loss = model(inputs, labels=labels).loss
        scored = int((labels[:, 1:] != -100).sum())
        nll, count, prev_end = nll + float(loss) * scored, count + scored, end
        if end == len(ids):
            break
    return nll, count


def test_file_task_from_the_working_directory_equals_the_hf_guide(data_dir, tmp_path,
                                                                  tokenizer):
    """The README's command, run in a fresh folder with relative paths: a model saved by
    `transformers`, a ~3 KB UTF-8 file, the model's context (128) and half of it (64)."""
    model = hf_model(seed=3, vocab_size=50257, n_positions=128)
    model.save_pretrained(tmp_path / "model")
    shakespeare = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    text = shakespeare[:2800] + EXTRA
    (tmp_path / "heldout.txt").write_text(text, encoding="utf-8")
    proc = run_cli(["--mode=eval", f"--config={REPO / 'configs' / 'eval.py'}:file",
                    "--config.init_from=model", "--config.eval.file=heldout.txt",
                    "--config.eval.progress=false", "--config.mesh.data=1",
                    "--output_json=results/heldout.json"], cwd=tmp_path, env=cli_env())
    rows = json.loads((tmp_path / "results" / "heldout.json").read_text())["rows"]
    got = {r["metric"]: r for r in rows}
    assert set(got) == {"ppl", "bits_per_byte"}
    ids = tokenizer.encode_ordinary(text)
    nll, count = _hf_guide(model, [tokenizer.eot_token] + ids, context=128, stride=64)
    assert got["ppl"]["tokens"] == count == len(ids)  # every token of the file is scored
    assert got["ppl"]["bytes"] == len(text.encode("utf-8")) > len(text)
    assert (got["ppl"]["context_length"], got["ppl"]["stride"]) == (128, 64)
    assert got["ppl"]["protocol"] == "eot_prefix"
    assert got["ppl"]["file"] == str(tmp_path / "heldout.txt")
    assert got["ppl"]["value"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    expected_bpb = nll / (math.log(2) * len(text.encode("utf-8")))
    assert got["bits_per_byte"]["value"] == pytest.approx(expected_bpb, rel=1e-5)
    assert re.search(r"^file\s+eot_prefix\s+128\s+bits_per_byte\s+\d+\.\d{4}\s+%d$" % count,
                     proc.stdout, re.M), proc.stdout


def test_char_model_scores_every_character_but_the_first(tmp_path):
    """A tokenizer without an end-of-text token: the first character is context only, and the
    bytes are those of the scored characters (3 for 'é' + 'ü' + ...)."""
    text = "héllo wörld, hello world!\n" * 12
    enc = CharTokenizer(sorted(set(text)))
    cfg = tiny_config(vocab_size=enc.vocab_size, n_positions=64, attention_impl="xla")
    params = tiny_params(cfg)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    config = eval_configs.get_config("file")
    config.eval.update(file=str(tmp_path / "t.txt"), progress=False)
    rows = tasks.run_task(tasks.TaskContext("file", cfg, params, enc, config.eval, ""))
    got = {r["metric"]: r for r in rows}
    ids = np.array(enc.encode(text))
    ref = perplexity(cfg, params, ids, 64, 32, byte_count=len(text[1:].encode("utf-8")))
    assert got["ppl"]["protocol"] == "no_prefix"
    assert got["ppl"]["tokens"] == ref.token_count == len(text) - 1
    assert got["ppl"]["bytes"] == len(text.encode("utf-8")) - 1  # 'h' is not scored
    assert got["ppl"]["value"] == pytest.approx(ref.perplexity, rel=1e-6)
    assert got["bits_per_byte"]["value"] == pytest.approx(ref.bits_per_byte, rel=1e-6)


def _generation_config(task: str, data_dir, **eval_overrides):
    config = eval_configs.get_config(task)
    config.model.update(n_layer=1, n_embd=32, n_head=2, n_positions=128)
    config.data_dir = str(data_dir)  # the shared data folder: relative paths must not go there
    config.mesh.data = 1
    config.generate.max_new_tokens = 8
    config.eval.update(context_length=128, stride=64, batch_size=2, progress=False,
                       **eval_overrides)
    return config


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generation_tasks_write_each_example_and_read_paths_from_the_working_directory(
        data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    articles = [{"article": "The cat sat on the mat. It was happy there.", "highlights": "A cat."},
                {"article": "Rain fell on Paris all day. People stayed in.", "summary": "Rain."}]
    (tmp_path / "sum.jsonl").write_text("".join(json.dumps(a) + "\n" for a in articles))
    config = _generation_config("summarize", data_dir)
    config.eval.files.jsonl = "sum.jsonl"  # relative: the working directory, not data_dir
    rows = eval_cli.main(config, CliArgs(output_json="out/sum.json"))
    saved = json.loads((tmp_path / "out" / "sum.json").read_text())
    assert saved["examples_file"] == "out/sum.examples.jsonl"
    examples = _read_jsonl(tmp_path / "out" / "sum.examples.jsonl")
    assert [e["reference"] for e in examples] == ["A cat.", "Rain."]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for article, e in zip(articles, examples):
        assert e["prompt"] == article["article"] + "\nTL;DR:"  # short: not truncated
        assert e["hypothesis"] == text_metrics.first_sentences(e["output"], 3)
        ref = scorer.score(e["reference"], e["hypothesis"])
        assert {k: e[k] for k in ("rouge1", "rouge2", "rougeL")} == pytest.approx(
            {k: 100 * ref[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")}, rel=1e-12)
    for row in rows:  # the table's ROUGE is the mean of the examples'
        if row["metric"] != "rouge_avg":
            assert row["value"] == pytest.approx(np.mean([e[row["metric"]] for e in examples]))
    assert "wrote out/sum.examples.jsonl (2 examples" in capsys.readouterr().out

    pairs = [{"en": "the cat", "fr": "le chat"}, {"en": "the dog", "fr": "le chien"}]
    (tmp_path / "mt.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = _generation_config("translate", data_dir, num_shots=1)
    config.eval.files.update(jsonl="mt.jsonl", shots="mt.jsonl")
    rows = eval_cli.main(config, CliArgs(output_json="mt.json"))
    examples = _read_jsonl(tmp_path / "mt.examples.jsonl")
    assert [(e["source"], e["reference"]) for e in examples] == [
        ("the cat", "le chat"), ("the dog", "le chien")]
    assert examples[1]["prompt"] == "the cat = le chat\nthe dog ="
    for e in examples:
        assert e["sentence_bleu"] == sacrebleu.sentence_bleu(e["hypothesis"],
                                                             [e["reference"]]).score
    hyps, refs = [e["hypothesis"] for e in examples], [e["reference"] for e in examples]
    assert rows[0]["value"] == sacrebleu.corpus_bleu(hyps, [refs]).score


def test_generation_without_an_output_file_says_how_to_get_the_examples(data_dir, tmp_path,
                                                                        capsys):
    (tmp_path / "sum.jsonl").write_text(json.dumps({"article": "A b.", "highlights": "A."}))
    config = _generation_config("summarize", data_dir)
    config.eval.files.jsonl = str(tmp_path / "sum.jsonl")
    eval_cli.main(config, CliArgs())
    assert "written with --output_json=FILE" in capsys.readouterr().out


def test_result_table_columns_align():
    rows = [{"task": "summarize", "protocol": "tldr_zero_shot", "metric": "rouge1",
             "value": 12.5, "examples": 3},
            {"task": "lambada_openai_local", "protocol": "lm_eval", "metric": "perplexity",
             "value": 40.0634, "examples": 5153},
            {"task": "file", "protocol": "eot_prefix", "metric": "bits_per_byte",
             "value": 1.25, "tokens": 123456}]
    table = eval_cli.format_table(rows)
    lines = table.splitlines()
    assert "tldr_zero_shotrouge1" not in table and "lambada_openai_locallm_eval" not in table
    header = lines[0]
    starts = [header.index(name) for name in ("task", "protocol", "metric")]
    for line, row in zip(lines[2:], rows):
        assert line.split() == [row["task"], row["protocol"], row["metric"],
                                f"{row['value']:.4f}", str(row.get("tokens", row.get("examples")))]
        assert [line.index(row[k]) for k in ("task", "protocol", "metric")] == starts
        assert len(line) == len(header)  # numbers right-aligned under "value" and "count"


def test_dataset_names_come_from_the_data_folder_and_paths_from_the_working_directory(
        data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text("mine\n")
    shared = data_dir / "ptb" / "ptb.test.txt"
    assert files.data_file("", "dataset:ptb/ptb.test.txt", "ptb") == shared  # $GPT2JAX_DATA_DIR
    assert files.data_file(str(data_dir), "dataset:ptb/ptb.test.txt", "ptb") == shared
    assert files.data_file("", "$GPT2JAX_DATA_DIR/ptb/ptb.test.txt", "ptb") == shared
    assert files.data_file(str(data_dir), "ptb/ptb.test.txt", "ptb") == \
        tmp_path / "ptb" / "ptb.test.txt"  # a plain path: the working directory
    with pytest.raises(DataError) as info:
        files.data_file(str(data_dir), "nope.jsonl", "summarize", "eval.files.jsonl")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nope.jsonl") in message
    assert "--config.eval.files.jsonl='nope.jsonl'" in message and "dataset:NAME" in message
    defaults = eval_configs.get_config("wikitext2").eval.files
    assert all(name.startswith("dataset:") for name in defaults.values())


def test_eval_file_on_another_task_or_unset_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    config = eval_configs.get_config("wikitext2")
    config.eval.file = str(tmp_path / "a.txt")
    with pytest.raises(ConfigError, match="scored by the task 'file'.*configs/eval.py:file"):
        tasks.check_inputs("wikitext2", config.eval, "")
    config = eval_configs.get_config("file")
    with pytest.raises(ConfigError, match="--config.eval.file=PATH, which is not set"):
        tasks.check_inputs("file", config.eval, "")
    (tmp_path / "one.txt").write_text("x")
    config.eval.file = str(tmp_path / "one.txt")
    cfg = tiny_config(vocab_size=1, n_positions=16)
    with pytest.raises(DataError, match="one token long"):  # no EOT before the lone "x"
        tasks.run_task(tasks.TaskContext("file", cfg, None, CharTokenizer(["x"]),
                                         config.eval, ""))


def test_a_context_past_the_model_is_named_as_given_even_for_a_short_file(tmp_path):
    """The file task shrinks the window to a short file; a context longer than the model's
    is still refused with the number the user gave (it said 'context_length=7' here)."""
    (tmp_path / "t.txt").write_text("abcabca")
    enc = CharTokenizer(["a", "b", "c"])
    cfg = tiny_config(vocab_size=3, n_positions=4)
    config = eval_configs.get_config("file")
    config.eval.update(file=str(tmp_path / "t.txt"), context_length=4096, stride=2)
    with pytest.raises(ConfigError, match="context_length=4096 exceeds the model's n_positions"):
        tasks.run_task(tasks.TaskContext("file", cfg, None, enc, config.eval, ""))
