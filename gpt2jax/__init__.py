"""gpt2jax: exact GPT-2 in JAX/Flax (linen).

The public API, what a notebook imports:

    import gpt2jax
    cfg, params = gpt2jax.load_pretrained("path/to/hf_dir")
    logits = gpt2jax.GPT2(cfg).apply({"params": params}, ids)   # [B, T, V]
    out = gpt2jax.generate(cfg, params, ids, max_new_tokens=20)
    gqa_cfg, gqa_params = gpt2jax.convert_kv_heads(cfg, params, n_kv_heads=4)  # mean-pooled

Packages, one concern each (arrows point down): `nn` the network, `weights` formats in and
out, `data` text to batches and tokenizers, `generation` HF-style decoding, `parallel` mesh and
placement, `training` step/loop/checkpoints, `eval` perplexity and benchmarks, `interp` hook
points (`run_with_cache`, `run_with_hooks`) and interpretability tools, `cli` the modes of
`run.py`.
"""

from gpt2jax.data.tokenizers import get_tokenizer
from gpt2jax.eval.perplexity import PerplexityResult, perplexity
from gpt2jax.generation.generate import GenerateOutput, generate
from gpt2jax.interp.cache import hook_names, run_with_cache, run_with_hooks
from gpt2jax.interp.tools import activation_patching, head_ablation, logit_difference, logit_lens
from gpt2jax.nn.hooks import ModelOutput
from gpt2jax.nn.kv_heads import convert_kv_heads
from gpt2jax.nn.model import (GPT2, ConfigError, GPT2Config, init_cache, init_params,
                              model_outputs, param_count)
from gpt2jax.weights.pretrained import load_pretrained, save_pretrained

__all__ = [
    "GPT2",
    "ConfigError",
    "GPT2Config",
    "GenerateOutput",
    "ModelOutput",
    "PerplexityResult",
    "activation_patching",
    "convert_kv_heads",
    "generate",
    "get_tokenizer",
    "head_ablation",
    "hook_names",
    "init_cache",
    "init_params",
    "load_pretrained",
    "logit_difference",
    "logit_lens",
    "model_outputs",
    "param_count",
    "perplexity",
    "run_with_cache",
    "run_with_hooks",
    "save_pretrained",
]
