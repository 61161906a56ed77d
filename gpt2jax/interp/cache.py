"""Running the model with its hook points captured or replaced (TransformerLens's API).

    import gpt2jax
    cfg, params = gpt2jax.load_pretrained("gpt2")
    logits, cache = gpt2jax.run_with_cache(cfg, params, ids)            # every hook point
    cache["blocks.3.attn.hook_pattern"]                                  # [batch, head, q, k]
    logits, cache = gpt2jax.run_with_cache(cfg, params, ids, names=["blocks.0.hook_resid_pre"])

    def zero_head_7(z, name):                                            # z [batch, pos, head, d]
        return z.at[:, :, 7].set(0.0)
    logits = gpt2jax.run_with_hooks(cfg, params, ids,
                                    fwd_hooks=[("blocks.9.attn.hook_z", zero_head_7)])
    gpt2jax.hook_names(cfg)                                              # the names of this model

Both are pure functions of arrays: wrap them in `jax.jit` (hook functions are traced, so a
hook may close over arrays, e.g. a cache from another prompt, or a steering vector). With no
names and no hooks they trace exactly the program of `GPT2(cfg).apply` (tests/test_hooks.py
compares the lowered text). Names, shapes and definitions: `gpt2jax.nn.hooks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import jax

from gpt2jax.nn import hooks
from gpt2jax.nn.hooks import HookFn, hook_names
from gpt2jax.nn.model import GPT2, GPT2Config

__all__ = ["hook_names", "run_with_cache", "run_with_hooks"]

Names = None | str | Iterable[str] | Callable[[str], bool]


def _resolve(cfg: GPT2Config, names: Names) -> tuple[str, ...]:
    """None = all; a name; a list of names; or a filter fn(name) -> bool (as TransformerLens)."""
    if names is None:
        return tuple(hook_names(cfg))
    if isinstance(names, str):
        names = [names]
    elif callable(names):
        names = [n for n in hook_names(cfg) if names(n)]
    return hooks.check_names(cfg, names)


def run_with_cache(cfg: GPT2Config, params, input_ids: jax.Array, names: Names = None, *,
                   attention_mask: jax.Array | None = None,
                   position_ids: jax.Array | None = None,
                   fwd_hooks: Sequence[tuple[str, HookFn]] = ()):
    """The logits and the activations at the hook points `names`.

    Args:
      cfg, params: the model (params stacked when cfg.scan_layers).
      input_ids: [batch, pos] int.
      names: None (every point of `hook_names(cfg)`), a name, a list, or a filter fn(name).
      attention_mask, position_ids: as `GPT2.__call__` ([batch, pos]; left padding).
      fwd_hooks: interventions applied first (`run_with_hooks`); the cache holds the values
        after them.
    Returns:
      (logits [batch, pos, vocab] float32, {name: array}) (in `names` order; a dict coming
      out of `jax.jit` is sorted by key).
    """
    names = _resolve(cfg, names)
    with hooks.active(cfg, capture=names, fwd_hooks=fwd_hooks):
        logits, state = GPT2(cfg).apply({"params": params}, input_ids,
                                        attention_mask=attention_mask,
                                        position_ids=position_ids, mutable=["intermediates"])
    return logits, hooks.collect(state.get("intermediates", {}), names)


def run_with_hooks(cfg: GPT2Config, params, input_ids: jax.Array,
                   fwd_hooks: Sequence[tuple[str, HookFn]] = (), *,
                   attention_mask: jax.Array | None = None,
                   position_ids: jax.Array | None = None) -> jax.Array:
    """The logits with interventions: each `fn(value, name)` returns the replacement (same
    shape) or None to keep the value; several hooks on one name run in order.

    Args:
      fwd_hooks: [(name, fn), ...], names from `hook_names(cfg)`.
    Returns:
      logits [batch, pos, vocab] float32.
    """
    with hooks.active(cfg, fwd_hooks=fwd_hooks):
        return GPT2(cfg).apply({"params": params}, input_ids, attention_mask=attention_mask,
                               position_ids=position_ids)
