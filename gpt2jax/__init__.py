"""gpt2jax: exact GPT-2 in JAX/Flax (linen).

The public API, what a notebook imports:

    import gpt2jax
    cfg, params = gpt2jax.load_pretrained("path/to/hf_dir")
    logits = gpt2jax.GPT2(cfg).apply({"params": params}, ids)   # [B, T, V]
"""

from gpt2jax.model import GPT2, ConfigError, GPT2Config, init_cache, init_params, param_count
from gpt2jax.tokenizer import get_tokenizer

__all__ = [
    "GPT2",
    "ConfigError",
    "GPT2Config",
    "get_tokenizer",
    "init_cache",
    "init_params",
    "param_count",
]

try:  # modules that land issue by issue; the names above are always there
    from gpt2jax.weights import load_pretrained, save_pretrained  # noqa: F401

    __all__ += ["load_pretrained", "save_pretrained"]
except ImportError:  # pragma: no cover
    pass

try:  # generation (issue 3): `gpt2jax.generate(cfg, params, input_ids, **hf_kwargs)`
    from gpt2jax.generate import GenerateOutput, generate  # noqa: F401

    __all__ += ["GenerateOutput", "generate"]
except ImportError:  # pragma: no cover
    pass

try:  # evaluation (issue 6): `gpt2jax.perplexity(cfg, params, token_ids, stride=512)`
    from gpt2jax.eval.perplexity import PerplexityResult, perplexity  # noqa: F401

    __all__ += ["PerplexityResult", "perplexity"]
except ImportError:  # pragma: no cover
    pass
