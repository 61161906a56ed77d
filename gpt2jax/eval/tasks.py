"""Named evaluation tasks: which file, which text protocol, which metric.

Every task returns result rows `{"task", "protocol", "metric", "value", ...}` (one metric
per row) so that the CLI table and the reproduction table read the same records.

Protocols:
- `wikitext2` / `wikitext103`:
  - `raw_hf`: the raw test file joined as the HF perplexity guide does
    (`"\\n\\n".join(lines)`, blank lines as ""; 287,644 GPT-2 tokens for WikiText-2);
  - `detok`: the tokenized release (`wiki.test.tokens`, with `<unk>`) through the invertible
    WikiText detokenizer (`detokenize.py`).
- `ptb`: Mikolov's PTB test file through the PTB detokenizer.
- `lambada_openai`: lm-eval's protocol plus the last-word variant, without and with a
  stop-word filter (`last_word`, `last_word_stopfilter`; `lambada.py`).
- `enwik8` / `text8`: the last 5,000,000 bytes / characters of the file (the standard test
  split: 90M train, 5M valid, 5M test); bits per byte / per character.
- `file`: any UTF-8 text file (`eval.file`), tokenized with the model's tokenizer; with
  GPT-2 BPE the text follows one `<|endoftext|>` (a document start, as lm-eval's rolling
  log-likelihood and GPT-2's training data), so every token of the file is scored
  (protocol `eot_prefix`); a tokenizer without one (characters) scores all but the first
  token (`no_prefix`). `bits_per_byte` = NLL / ln 2 over the UTF-8 bytes of the scored tokens.
Word-level datasets also report `word_perplexity = exp(nll_sum / words)` with words = the
whitespace tokens of the word-level release plus one `<eos>` per line (WikiText-2 test
245,569; PTB test 82,430), the count their published perplexities are normalised by.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from gpt2jax.errors import ConfigError, DataError
from gpt2jax.eval import detokenize as detok_lib
from gpt2jax.eval import generation
from gpt2jax.eval import lambada as lambada_lib
from gpt2jax.eval.files import data_file, read_text_file
from gpt2jax.eval.perplexity import PerplexityResult, perplexity, plan_windows

CHAR_SPLIT = 5_000_000  # enwik8 / text8 test split: the last 5M bytes / characters


def read_text(path: Path) -> str:
    """A UTF-8 text file as it is on disk (no newline translation)."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def wikitext_hf_join(path: str | os.PathLike) -> str:
    """The raw WikiText file as the HF guide builds it: `"\\n\\n".join(dataset["text"])`.

    The HF `wikitext` loader yields each line with its newline, and "" for blank lines.
    """
    lines = read_text(Path(path)).splitlines(keepends=True)
    return "\n\n".join(line if line.strip() else "" for line in lines)


def word_count(text: str) -> int:
    """Whitespace tokens plus one `<eos>` per line of a word-level release."""
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    return sum(len(line.split()) for line in lines) + len(lines)


def check_vocab(cfg, enc) -> None:
    """The model's vocabulary must hold the tokenizer's (GPT-2: 50257; `enc` a `Tokenizer`).

    A larger one (padded for speed, e.g. 50,304 rows) is evaluated as trained: its softmax
    runs over every row, as the training loss does, and generated ids past the tokenizer's
    are suppressed (generation tasks) or end a LAMBADA word."""
    if cfg.vocab_size < enc.vocab_size:
        raise ConfigError(
            f"The model has vocab_size={cfg.vocab_size} but the tokenizer has {enc.vocab_size} "
            f"tokens; evaluate with a model whose vocabulary holds the tokenizer's "
            f"(--config.model.vocab_size={enc.vocab_size}) or the matching tokenizer."
        )


def _ppl_rows(task: str, protocol: str, res: PerplexityResult) -> list[dict]:
    base = {"task": task, "protocol": protocol, "tokens": res.token_count,
            "stride": res.stride, "context_length": res.context_length}
    rows = [dict(base, metric="ppl", value=res.perplexity),
            dict(base, metric="guide_ppl", value=res.guide_perplexity)]
    if res.word_perplexity is not None:
        rows.append(dict(base, metric="word_ppl", value=res.word_perplexity,
                         words=res.word_count))
    if res.bits_per_byte is not None:
        rows.append(dict(base, metric="bits_per_byte", value=res.bits_per_byte,
                         bytes=res.byte_count))
    return rows


def windows_of(ecfg, cfg) -> tuple[int, int]:
    """(context_length, stride) of `config.eval`: 0 = from the model (its n_positions; a
    stride of half the context, the HF guide's 512 of 1024)."""
    context = ecfg.context_length or cfg.n_positions
    return context, ecfg.stride or max(context // 2, 1)


def _truncate(ids: list[int], ecfg) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    return ids[: ecfg.max_tokens] if ecfg.max_tokens else ids


def context_runs(ecfg, cfg) -> list[tuple[int, int]]:
    """(context length, stride) of each perplexity run: one per `eval.context_lengths`
    entry with stride = length (disjoint windows), else `windows_of(ecfg, cfg)`."""
    spec = str(ecfg.context_lengths).strip()
    if not spec:
        return [windows_of(ecfg, cfg)]
    try:
        lengths = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        lengths = []
    if not lengths or min(lengths) < 2:
        raise ConfigError(f"eval.context_lengths={spec!r} must be comma-separated lengths >= 2, "
                          "e.g. --config.eval.context_lengths=128,256,512,1024.")
    return [(n, n) for n in lengths]


def _run_ppl(ctx, protocol: str, text: str, words: int | None = None,
             byte_count: int | None = None) -> list[dict]:
    ecfg = ctx.ecfg
    ids = _truncate(ctx.enc.encode(text), ecfg)
    if ecfg.max_tokens and len(ids) == ecfg.max_tokens:  # a smoke run scores a prefix only
        words = byte_count = None
    rows = []
    for length, stride in context_runs(ecfg, ctx.cfg):
        res = perplexity(ctx.cfg, ctx.params, ids, length, stride, ecfg.batch_size,
                         byte_count, words, ctx.mesh, ctx.axis_rules, ctx.progress)
        rows += _ppl_rows(ctx.task, protocol, res)
    return rows


def _wikitext(ctx) -> list[dict]:
    files = ctx.ecfg.files
    raw = data_file(ctx.data_dir, files.raw, ctx.task, "eval.files.raw")
    tokens = data_file(ctx.data_dir, files.tokens, ctx.task, "eval.files.tokens")
    tokenized = read_text(tokens)
    words = word_count(tokenized)
    rows = _run_ppl(ctx, "raw_hf", wikitext_hf_join(raw), words=words)
    return rows + _run_ppl(ctx, "detok", detok_lib.detokenize(tokenized, "wikitext"),
                           words=words)


def _ptb(ctx) -> list[dict]:
    tokenized = read_text(data_file(ctx.data_dir, ctx.ecfg.files.tokens, ctx.task,
                                    "eval.files.tokens"))
    return _run_ppl(ctx, "detok", detok_lib.detokenize(tokenized, "ptb"),
                    words=word_count(tokenized))


def _characters(ctx) -> list[dict]:
    data = data_file(ctx.data_dir, ctx.ecfg.files.raw, ctx.task, "eval.files.raw").read_bytes()
    test = data[-CHAR_SPLIT:]
    # The split may cut a UTF-8 character in two; replace is exact for text8 (ASCII).
    text = test.decode("utf-8", errors="replace")
    return _run_ppl(ctx, "test_last_5M", text, byte_count=len(test))


def _lambada(ctx) -> list[dict]:
    texts = lambada_lib.read_lambada(data_file(ctx.data_dir, ctx.ecfg.files.jsonl, ctx.task,
                                               "eval.files.jsonl"))
    if ctx.ecfg.max_examples:
        texts = texts[: ctx.ecfg.max_examples]
    out = lambada_lib.evaluate_lambada(ctx.cfg, ctx.params, ctx.enc, texts,
                                       ctx.ecfg.context_length, ctx.ecfg.batch_size,
                                       ctx.ecfg.last_word, ctx.progress)
    base = {"task": ctx.task, "protocol": "lm_eval", "examples": out["examples"]}
    rows = [dict(base, metric="acc", value=100.0 * out["accuracy"]),
            dict(base, metric="ppl", value=out["perplexity"])]
    if "last_word_accuracy" in out:
        rows.append(dict(base, protocol="last_word", metric="acc",
                         value=100.0 * out["last_word_accuracy"]))
    if "stopword_filtered_accuracy" in out:  # NLTK English stop words, see lambada.py
        rows.append(dict(base, protocol="last_word_stopfilter", metric="acc",
                         value=100.0 * out["stopword_filtered_accuracy"],
                         stopword_targets=out["stopword_targets"]))
    return rows


def _generation(ctx) -> list[dict]:
    return generation.run(ctx)


def _file_text(ecfg, data_dir) -> tuple[Path, str]:
    """The `file` task's path and text (`eval.file`, checked: one-line errors)."""
    if not ecfg.file:
        raise ConfigError("Task 'file' scores the text of --config.eval.file=PATH, which is not "
                          "set; pass the file to score.")
    path = data_file(data_dir, ecfg.file, "file", "eval.file")
    return path, read_text_file(path, "eval.file")


def _file(ctx) -> list[dict]:
    """Perplexity and bits per byte of one text file (module docstring: `file`)."""
    path, text = _file_text(ctx.ecfg, ctx.data_dir)
    ids = _truncate(ctx.enc.encode(text), ctx.ecfg)
    if ctx.enc.eot_id is not None:
        ids = np.concatenate([[ctx.enc.eot_id], ids])
    if len(ids) < 2:
        raise DataError(f"--config.eval.file: {str(path)!r} is one token long; a perplexity "
                        "needs a second token to predict. Give a longer file.")
    context, stride = windows_of(ctx.ecfg, ctx.cfg)
    if len(ids) < context <= ctx.cfg.n_positions:  # (a longer context: perplexity's error)
        context = len(ids)  # one window either way: the same scores, less padding
    stride = min(stride, context)
    windows = plan_windows(len(ids), context, stride)
    scored = np.concatenate([ids[s:e] for s, e in zip(windows.score_start, windows.end)])
    sizes: dict[int, int] = {}  # bytes of each distinct token
    byte_count = sum(sizes.setdefault(t, len(ctx.enc.token_bytes(t))) for t in scored.tolist())
    res = perplexity(ctx.cfg, ctx.params, ids, context, stride,
                     min(ctx.ecfg.batch_size, len(windows)), byte_count, None, ctx.mesh,
                     ctx.axis_rules, ctx.progress)
    assert res.token_count == len(scored), (res.token_count, len(scored))
    base = {"task": ctx.task, "protocol": "no_prefix" if ctx.enc.eot_id is None else
            "eot_prefix", "tokens": res.token_count, "bytes": byte_count,
            "context_length": context, "stride": res.stride, "file": str(path)}
    return [dict(base, metric="ppl", value=res.perplexity),
            dict(base, metric="bits_per_byte", value=res.bits_per_byte)]


TASKS: dict[str, Callable] = {
    "wikitext2": _wikitext,
    "wikitext103": _wikitext,
    "ptb": _ptb,
    "lambada_openai": _lambada,
    "enwik8": _characters,
    "text8": _characters,
    "summarize": _generation,
    "translate": _generation,
    "file": _file,
}


def check_task(name: str) -> None:
    if name not in TASKS:
        raise ConfigError(f"Unknown eval task {name!r}; known tasks: {', '.join(sorted(TASKS))}.")


class TaskContext:
    """What a task needs: model, tokenizer, `config.eval`, data folder, mesh. A generation
    task also fills `examples`: one dict per example (prompt, reference, output, its scores)."""

    def __init__(self, task, cfg, params, enc, ecfg, data_dir, mesh=None, axis_rules=(),
                 progress=False, generate_config=None, seed=0):
        self.task, self.cfg, self.params, self.enc, self.ecfg = task, cfg, params, enc, ecfg
        self.data_dir, self.mesh, self.axis_rules = data_dir, mesh, axis_rules
        self.progress, self.generate_config, self.seed = progress, generate_config, seed
        self.examples: list[dict] = []


def check_inputs(task: str, ecfg, data_dir) -> None:
    """Finds the files of `task` (the `file` task also reads its text): run before a model is
    loaded, so that a wrong path fails at once, with one line naming it."""
    check_task(task)
    if ecfg.file and task != "file":
        raise ConfigError(f"--config.eval.file is scored by the task 'file', not {task!r}; run "
                          "--config=configs/eval.py:file (this task's own files are "
                          "--config.eval.files.*).")
    if task == "file":
        _file_text(ecfg, data_dir)
        return
    for key, name in ecfg.files.items():
        data_file(data_dir, name, task, f"eval.files.{key}")


def run_task(ctx: TaskContext) -> list[dict]:
    """Runs the named task of `ctx`; returns its result rows."""
    check_inputs(ctx.task, ctx.ecfg, ctx.data_dir)
    check_vocab(ctx.cfg, ctx.enc)
    context_runs(ctx.ecfg, ctx.cfg)  # a bad list of lengths fails before any data is read
    context, stride = windows_of(ctx.ecfg, ctx.cfg)
    if stride > context:
        raise ConfigError(
            f"eval.stride={stride} is larger than eval.context_length={context}, which would "
            "skip tokens; use a stride <= the context."
        )
    return TASKS[ctx.task](ctx)
