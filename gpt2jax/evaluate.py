"""Evaluation API (the modules live in `gpt2jax/eval/`): perplexity with strided windows,
dataset protocols, LAMBADA, BLEU/ROUGE.

    from gpt2jax.evaluate import perplexity
    res = perplexity(cfg, params, token_ids, context_length=1024, stride=512)
    res.perplexity, res.nll_sum, res.token_count, res.guide_perplexity
"""

from gpt2jax.eval.detokenize import claims_invertible, detokenize, retokenize
from gpt2jax.eval.lambada import evaluate_lambada, read_lambada
from gpt2jax.eval.perplexity import PerplexityResult, perplexity, plan_windows
from gpt2jax.eval.tasks import TASKS, TaskContext, run_task
from gpt2jax.eval.text_metrics import bleu, rouge

__all__ = [
    "TASKS",
    "PerplexityResult",
    "TaskContext",
    "bleu",
    "claims_invertible",
    "detokenize",
    "evaluate_lambada",
    "perplexity",
    "plan_windows",
    "read_lambada",
    "retokenize",
    "rouge",
    "run_task",
]
