"""Evaluation: strided perplexity, dataset protocols (WikiText, PTB, LAMBADA, enwik8/text8),
invertible detokenizers, and BLEU/ROUGE generation tasks.

Modules: `perplexity` (the HF guide's sliding window), `lambada` (lm-eval `lambada_openai`),
`detokenize` (WikiText / PTB), `text_metrics` (sacrebleu / rouge-score), `tasks` (named tasks
reading data files), `generation` (TL;DR summarisation and few-shot translation).
`harness` is the lm-evaluation-harness backend (optional `eval` extra; import it explicitly).
The package re-exports nothing (its module names, e.g. `perplexity`, `detokenize`, are also
function names): import from the modules, or use `gpt2jax.perplexity` at the top.

    from gpt2jax.eval.perplexity import perplexity
    res = perplexity(cfg, params, token_ids, context_length=1024, stride=512)
    res.perplexity, res.nll_sum, res.token_count, res.guide_perplexity
"""
