"""Inside the model: TransformerLens-style hook points and the first interpretability tools.

`cache` runs the model with hook points captured (`run_with_cache`) or replaced
(`run_with_hooks`); `tools` builds the usual experiments on them (logit lens, head ablation,
activation patching). The hook points themselves live in `gpt2jax.nn.hooks`.
"""
