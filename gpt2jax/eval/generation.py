"""The GPT-2 paper's zero-shot generation tasks, reading user jsonl files.

- `summarize`: lines `{"article": ..., "highlights": ...}` (CNN/Daily Mail names; "summary"
  is accepted for the reference). Prompt = article + "\\nTL;DR:", top-k 2 sampling of 100
  tokens (config.generate), keep the first 3 sentences, ROUGE-1/2/L F (rouge-score).
- `translate`: lines `{"en": ..., "fr": ...}`; prompt = `num_shots` example pairs from the
  shots file as "english sentence = french sentence" lines, then "source =" ; greedy
  decoding, the first generated line is the hypothesis; corpus BLEU (sacrebleu).

Scoring (`score_summaries`, `score_translations`) takes text lists, so it is testable
without a model. Each task also records every example in `ctx.examples`: the prompt as the
model read it (truncated to fit), the reference, the generated text (`output`), the part that
was scored (`hypothesis`) and its own ROUGE / sentence BLEU; `--mode=eval` writes them as
jsonl beside its JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gpt2jax.errors import DataError
from gpt2jax.eval import text_metrics
from gpt2jax.eval.files import data_file
from gpt2jax.generation.args import suppress_past_tokenizer
from gpt2jax.generation.generate import generate
from gpt2jax.nn.positions import context_limit
from gpt2jax.data.bpe import EOT_ID


def read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """Rows of a UTF-8 jsonl file, each a JSON object holding `fields` (blank lines skipped);
    anything else is a one-line DataError naming the file and line."""
    try:
        lines = Path(path).read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it, "
                        "e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`.") from None
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i + 1} is not JSON ({e}); each line must be a JSON "
                            f"object with {list(fields)}.") from None
        missing = [k for k in fields if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"{path}:{i + 1} lacks the fields {missing}; each line must be a "
                            f"JSON object with {list(fields)}.")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no examples; each line must be a JSON object with "
                        f"{list(fields)}.")
    return rows


def summary_examples(generated: list[str], references: list[str],
                     sentences: int = 3) -> list[dict]:
    """Per example: the scored hypothesis (the first `sentences` sentences) and its ROUGE."""
    hyps = [text_metrics.first_sentences(g, sentences) for g in generated]
    per = text_metrics.rouge_per_example(hyps, references)
    return [dict(hypothesis=h, **s) for h, s in zip(hyps, per)]


def score_summaries(generated: list[str], references: list[str], sentences: int = 3) -> dict:
    """ROUGE of the first `sentences` sentences of each generated text (mean over examples)."""
    return _mean_rouge(summary_examples(generated, references, sentences))


def _mean_rouge(examples: list[dict]) -> dict:
    scores = {t: float(np.mean([e[t] for e in examples])) for t in text_metrics.ROUGE_TYPES}
    scores["rouge_avg"] = float(np.mean([scores[t] for t in text_metrics.ROUGE_TYPES]))
    return scores


def score_translations(generated: list[str], references: list[str]) -> dict:
    """Corpus BLEU of the first line of each generated text."""
    return text_metrics.bleu([text_metrics.first_line(g) for g in generated], references)


def _left_pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), EOT_ID, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return ids, mask


def generate_texts(ctx, prompts: list[list[int]]) -> list[str]:
    """Generates from token prompts in batches with `config.generate`; returns new text."""

    kwargs = suppress_past_tokenizer(dict(ctx.generate_config.items()), ctx.cfg.vocab_size,
                                     ctx.enc.vocab_size)
    texts = []
    size = ctx.ecfg.batch_size
    for start in tqdm(range(0, len(prompts), size), desc=ctx.task, disable=not ctx.progress):
        ids, mask = _left_pad(prompts[start:start + size])
        kwargs["seed"] = int(ctx.generate_config.seed) + start
        # No mesh: generate's mesh path sets a global mesh, under which flax constrains
        # DenseGeneral's flat init-time kernel with its 4-d spec and fails (reported).
        out = np.asarray(generate(ctx.cfg, ctx.params, ids, mask, **kwargs))
        for row in out[:, ids.shape[1]:]:
            row = row.tolist()
            row = row[: row.index(EOT_ID)] if EOT_ID in row else row
            texts.append(ctx.enc.decode(row))
    return texts


def _budget(ctx) -> int:
    """Prompt tokens that fit with the new tokens in the context."""
    new = ctx.generate_config.max_new_tokens or ctx.generate_config.max_length
    limit = context_limit(ctx.cfg) or ctx.ecfg.context_length  # None: any length
    return min(limit, ctx.ecfg.context_length) - int(new)


def _summarize(ctx, path: Path) -> list[dict]:
    rows = read_jsonl(path, ("article",))
    rows = rows[: ctx.ecfg.max_examples] if ctx.ecfg.max_examples else rows
    refs = [r.get("highlights", r.get("summary")) for r in rows]
    if any(r is None for r in refs):
        raise DataError(f"{path}: every line needs a reference 'highlights' or 'summary'.")
    tldr = ctx.enc.encode(text_metrics.TLDR)
    keep = _budget(ctx) - len(tldr)
    prompts = [ctx.enc.encode(r["article"].rstrip())[:keep] + tldr for r in rows]
    outputs = generate_texts(ctx, prompts)
    examples = summary_examples(outputs, refs, ctx.ecfg.summary_sentences)
    scores = _mean_rouge(examples)
    ctx.examples.extend(
        {"index": i, "prompt": ctx.enc.decode(p), "reference": ref, "output": out, **e}
        for i, (p, ref, out, e) in enumerate(zip(prompts, refs, outputs, examples)))
    base = {"task": ctx.task, "protocol": "tldr_zero_shot", "examples": len(rows)}
    return [dict(base, metric=k, value=v) for k, v in scores.items()]


def _translate(ctx, path: Path, shots_path: Path) -> list[dict]:
    src, tgt = ctx.ecfg.source_lang, ctx.ecfg.target_lang
    rows = read_jsonl(path, (src, tgt))
    rows = rows[: ctx.ecfg.max_examples] if ctx.ecfg.max_examples else rows
    shots = [(s[src], s[tgt]) for s in read_jsonl(shots_path, (src, tgt))[: ctx.ecfg.num_shots]]
    budget = _budget(ctx)
    prompts = []
    for r in rows:
        ids = ctx.enc.encode(text_metrics.translation_prompt(shots, r[src]))
        prompts.append(ids[-budget:])  # drop the oldest shots if too long
    outputs, refs = generate_texts(ctx, prompts), [r[tgt] for r in rows]
    scores = score_translations(outputs, refs)
    for i, (r, p, out) in enumerate(zip(rows, prompts, outputs)):
        hyp = text_metrics.first_line(out)
        ctx.examples.append({"index": i, "source": r[src], "prompt": ctx.enc.decode(p),
                             "reference": r[tgt], "output": out, "hypothesis": hyp,
                             "sentence_bleu": text_metrics.sentence_bleu(hyp, r[tgt])})
    return [{"task": ctx.task, "protocol": f"{src}-{tgt}_{len(shots)}_shot",
             "examples": len(rows), "metric": "bleu", "value": scores["bleu"],
             "signature": scores["signature"]}]


def run(ctx) -> list[dict]:
    """Runs the `summarize` or `translate` task of a `tasks.TaskContext`."""
    files = ctx.ecfg.files
    jsonl = data_file(ctx.data_dir, files.jsonl, ctx.task, "eval.files.jsonl")
    if ctx.task == "summarize":
        return _summarize(ctx, jsonl)
    return _translate(ctx, jsonl, data_file(ctx.data_dir, files.shots, ctx.task,
                                            "eval.files.shots"))
