"""BLEU and ROUGE through the libraries everyone reports with (sacrebleu, rouge-score), and the
prompt / post-processing of the GPT-2 paper's zero-shot generation tasks.

We call the libraries; we never reimplement the metrics.
- BLEU: `sacrebleu.corpus_bleu(hypotheses, [references])` (13a tokenisation, the default).
- ROUGE: `rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"],
  use_stemmer=True)`, F-measure averaged over examples, times 100 (as the paper's table).
"""

from __future__ import annotations

import re

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

from gpt2jax.errors import DataError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TLDR = "\nTL;DR:"
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def _check_pairs(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references) or not hypotheses:
        raise DataError(f"Need as many hypotheses as references (> 0), got {len(hypotheses)} "
                        f"and {len(references)}.")


def bleu(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU of one reference per hypothesis: {"bleu": score 0..100, "signature": str}."""
    _check_pairs(hypotheses, references)
    metric = sacrebleu.metrics.BLEU()
    result = metric.corpus_score(hypotheses, [references])
    return {"bleu": float(result.score), "signature": str(metric.get_signature())}


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (0..100, `effective_order=True` as sacrebleu recommends for
    single sentences): a per-example view; the task's score is the corpus BLEU."""
    return float(sacrebleu.metrics.BLEU(effective_order=True)
                 .sentence_score(hypothesis, [reference]).score)


def rouge_per_example(hypotheses: list[str], references: list[str]) -> list[dict]:
    """ROUGE-1/2/L F-measure x 100 of each example: [{"rouge1", "rouge2", "rougeL"}]."""
    _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(ref, hyp) for hyp, ref in zip(hypotheses, references)]
    return [{t: 100.0 * float(s[t].fmeasure) for t in ROUGE_TYPES} for s in scores]


def rouge(hypotheses: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F-measure x 100 over examples: {"rouge1", "rouge2", "rougeL"}."""
    scores = rouge_per_example(hypotheses, references)
    return {t: float(np.mean([s[t] for s in scores])) for t in ROUGE_TYPES}


def first_sentences(text: str, n: int = 3) -> str:
    """The first `n` sentences of generated text (the paper keeps 3 for TL;DR summaries)."""
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]
    return " ".join(parts[:n])


def summary_prompt(article: str) -> str:
    """The GPT-2 paper's zero-shot summarisation prompt: the article, then "TL;DR:"."""
    return article.rstrip() + TLDR


def translation_prompt(shots: list[tuple[str, str]], source: str) -> str:
    """The paper's few-shot prompt: `src = tgt` lines, then `source =` to be continued."""
    lines = [f"{s} = {t}" for s, t in shots]
    return "\n".join(lines + [f"{source} ="])


def first_line(text: str) -> str:
    """A generated translation ends at the first newline (the next `src = tgt` line)."""
    return text.strip().split("\n", 1)[0].strip()
