"""Evaluation: strided perplexity, dataset protocols (WikiText, PTB, LAMBADA, enwik8/text8),
invertible detokenizers, and BLEU/ROUGE generation tasks.

Modules: `perplexity` (the HF guide's sliding window), `lambada` (lm-eval `lambada_openai`),
`detokenize` (WikiText / PTB), `text_metrics` (sacrebleu / rouge-score), `tasks` (named tasks
reading data files), `generation` (TL;DR summarisation and few-shot translation).
`harness` is the lm-evaluation-harness backend (optional `eval` extra; import it explicitly).
The public entry points are re-exported here (`from gpt2jax.eval import perplexity`) and
`gpt2jax.perplexity` at the top.

    from gpt2jax.eval import perplexity
    res = perplexity(cfg, params, token_ids, context_length=1024, stride=512)
    res.perplexity, res.nll_sum, res.token_count, res.guide_perplexity
"""

from gpt2jax.eval.detokenize import claims_invertible, detokenize, retokenize
from gpt2jax.eval.lambada import evaluate_lambada, read_lambada
from gpt2jax.eval.perplexity import PerplexityResult, perplexity, plan_windows
from gpt2jax.eval.tasks import TASKS, TaskContext, run_task
from gpt2jax.eval.text_metrics import bleu, rouge

__all__ = [
    "TASKS", "PerplexityResult", "TaskContext", "bleu", "claims_invertible", "detokenize",
    "evaluate_lambada", "perplexity", "plan_windows", "read_lambada", "retokenize", "rouge",
    "run_task",
]
