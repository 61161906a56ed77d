"""Evaluation: strided perplexity, dataset protocols (WikiText, PTB, LAMBADA, enwik8/text8),
invertible detokenizers, and BLEU/ROUGE generation tasks.

Modules: `perplexity` (the HF guide's sliding window), `lambada` (lm-eval `lambada_openai`),
`detokenize` (WikiText / PTB), `text_metrics` (sacrebleu / rouge-score), `tasks` (named tasks
reading data files), `generation` (TL;DR summarisation and few-shot translation).
The public entry points are re-exported by `gpt2jax.evaluate` and `gpt2jax.perplexity`.
"""
