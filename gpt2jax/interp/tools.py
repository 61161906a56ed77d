"""The interpretability tools people reach for first, built on `run_with_cache` / `run_with_hooks`.

    import gpt2jax
    lens = gpt2jax.logit_lens(cfg, params, ids)                  # [n_layer + 1, B, T, V]
    effect = gpt2jax.head_ablation(cfg, params, ids)             # [n_layer, n_head] d(loss)
    metric = gpt2jax.logit_difference(correct_id, wrong_id)      # logits -> scalar
    patch = gpt2jax.activation_patching(cfg, params, clean_ids, corrupted_ids, metric)
    # patch[layer, pos]: the metric of the corrupted run with blocks.{layer}.hook_resid_pre
    # at `pos` taken from the clean run (TransformerLens's get_act_patch_resid_pre)

Each sweep is one compiled forward mapped over its grid (`jax.lax.map`): the layer, head or
position being changed is a traced index selected with `where`, so a grid of n runs
compiles once. The tools are jitted here (the config, mode and hook names static), so a
second call with the same shapes compiles nothing, eagerly or inside the caller's `jax.jit`;
a `logit_difference` metric is a pytree whose token ids are traced (a new pair does not
recompile). Shapes: L layers, H heads, B batch, T positions, V vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import struct

from gpt2jax.errors import ConfigError
from gpt2jax.interp.cache import run_with_cache, run_with_hooks
from gpt2jax.nn.model import GPT2Config, layer_norm

__all__ = ["LogitDifference", "activation_patching", "head_ablation", "logit_difference",
           "logit_lens"]

PATCHABLE = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
             "hook_mlp_out")


def logit_lens(cfg: GPT2Config, params, input_ids: jax.Array, attention_mask=None,
               position_ids=None) -> jax.Array:
    """Each layer's residual stream read out through ln_f and the tied unembedding.

    Entry i < L is the input of block i (entry 0: the embeddings); entry L is the last
    block's output, i.e. the model's own logits. Post-LN models have no ln_f: their stream is
    unembedded as it is.

    Returns:
      [L + 1, B, T, V] float32 logits.
    """
    return _logit_lens(cfg, params, input_ids, attention_mask, position_ids)


@functools.partial(jax.jit, static_argnums=0)
def _logit_lens(cfg: GPT2Config, params, input_ids, attention_mask, position_ids) -> jax.Array:
    last = f"blocks.{cfg.n_layer - 1}.hook_resid_post"
    names = [f"blocks.{i}.hook_resid_pre" for i in range(cfg.n_layer)] + [last]
    _, cache = run_with_cache(cfg, params, input_ids, names, attention_mask=attention_mask,
                              position_ids=position_ids)
    stream = jnp.stack([cache[n] for n in names])  # [L + 1, B, T, E]
    if cfg.norm_position == "pre":
        stream = layer_norm(cfg, "ln_f").apply({"params": params["ln_f"]}, stream)
    wte = params["wte"]["embedding"].astype(cfg.compute_dtype)
    logits = jnp.einsum("lbte,ve->lbtv", stream.astype(cfg.compute_dtype), wte)
    return logits.astype(jnp.float32)


def next_token_loss(logits: jax.Array, input_ids: jax.Array, attention_mask=None) -> jax.Array:
    """Mean next-token cross-entropy of logits [B, T, V] on ids [B, T] (targets whose token
    and predecessor are real under attention_mask [B, T])."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], input_ids[:, 1:])
    valid = jnp.ones_like(ce) if attention_mask is None else (
        attention_mask[:, 1:] * attention_mask[:, :-1]).astype(ce.dtype)
    return jnp.sum(ce * valid) / jnp.sum(valid)


def head_ablation(cfg: GPT2Config, params, input_ids: jax.Array, attention_mask=None,
                  position_ids=None, mode: str = "zero") -> jax.Array:
    """The change of next-token loss when one attention head is ablated, for every head.

    Ablation replaces the head's `attn.hook_z` [B, T, H, D] slice (its output before the
    output projection): "zero" with 0, "mean" with its mean over the batch's real tokens.

    Returns:
      [L, H] float32: loss(ablated) - loss(clean) (positive = the head helps).
    """
    if mode not in ("zero", "mean"):
        raise ConfigError(f"head_ablation mode={mode!r}; choose 'zero' or 'mean'.")
    return _head_ablation(cfg, params, input_ids, attention_mask, position_ids, mode)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _head_ablation(cfg: GPT2Config, params, input_ids, attention_mask, position_ids,
                   mode: str) -> jax.Array:
    names = [f"blocks.{i}.attn.hook_z" for i in range(cfg.n_layer)]
    kwargs = dict(attention_mask=attention_mask, position_ids=position_ids)
    clean_logits, cache = run_with_cache(cfg, params, input_ids, names, **kwargs)
    weight = (jnp.ones(input_ids.shape) if attention_mask is None
              else attention_mask.astype(jnp.float32))[:, :, None, None]
    means = [jnp.sum(cache[n] * weight, (0, 1)) / jnp.sum(weight) for n in names]  # [H, D]
    clean = next_token_loss(clean_logits, input_ids, attention_mask)
    heads = jnp.arange(cfg.n_head)[None, None, :, None]

    def ablated_loss(pair):
        layer, head = pair[0], pair[1]

        def ablate(i):
            def fn(z, name):
                new = jnp.zeros_like(z) if mode == "zero" else jnp.broadcast_to(means[i], z.shape)
                return jnp.where((layer == i) & (heads == head), new, z)
            return fn

        logits = run_with_hooks(cfg, params, input_ids, [(n, ablate(i)) for i, n in
                                                         enumerate(names)], **kwargs)
        return next_token_loss(logits, input_ids, attention_mask)

    grid = jnp.stack(jnp.meshgrid(jnp.arange(cfg.n_layer), jnp.arange(cfg.n_head),
                                  indexing="ij"), -1).reshape(-1, 2)
    losses = jax.lax.map(ablated_loss, grid)
    return (losses - clean).reshape(cfg.n_layer, cfg.n_head)


@struct.dataclass
class LogitDifference:
    """A patching metric: mean over the batch of logits[:, position, correct] - [..., wrong].

    A pytree: `correct` / `wrong` (token ids, int or int32 []) are its leaves, traced under
    jit, so a new pair reuses the compiled program; `position` is static.
    """

    correct: jax.Array | int
    wrong: jax.Array | int
    position: int = struct.field(pytree_node=False, default=-1)

    def __call__(self, logits: jax.Array) -> jax.Array:
        """logits [B, T, V] -> scalar."""
        return jnp.mean(logits[:, self.position, self.correct]
                        - logits[:, self.position, self.wrong])


def logit_difference(correct: int, wrong: int, position: int = -1) -> LogitDifference:
    """The metric `logits -> mean(logits[:, position, correct] - logits[:, position, wrong])`."""
    return LogitDifference(correct, wrong, position)


def activation_patching(cfg: GPT2Config, params, clean_ids: jax.Array,
                        corrupted_ids: jax.Array, metric: Callable[[jax.Array], jax.Array],
                        hook: str | Sequence[str] = "hook_resid_pre", attention_mask=None,
                        position_ids=None) -> jax.Array:
    """The patching map: run the corrupted prompt with one (layer, position) of the `hook`
    activation taken from the clean run, and score the logits with `metric`.

    Args:
      clean_ids, corrupted_ids: [B, T] int, same shape (same positions are patched).
      metric: fn(logits [B, T, V]) -> scalar, traceable (e.g. `logit_difference`). A plain
        function is static (the same function object reuses the compiled program).
      hook: a per-layer residual point, one of PATCHABLE (TransformerLens's names without
        the `blocks.i.` prefix), or a sequence of them: one program patches each in turn
        (as TransformerLens's `get_act_patch_block_every`).
    Returns:
      [L, T] float32 metric values for one hook, [len(hook), L, T] for a sequence (compare
      with metric(clean) and metric(corrupted)).
    """
    hooks = (hook,) if isinstance(hook, str) else tuple(hook)
    for h in hooks:
        if h not in PATCHABLE:
            raise ConfigError(
                f"activation_patching hook={h!r}; choose one of {list(PATCHABLE)}.")
    if clean_ids.shape != corrupted_ids.shape:
        raise ConfigError(f"Clean ids {clean_ids.shape} and corrupted ids {corrupted_ids.shape} "
                          "must have the same shape (pad them to the same length).")
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(metric)):
        metric = jax.tree_util.Partial(metric)  # a plain function: static, by identity
    maps = _patching(cfg, params, clean_ids, corrupted_ids, metric, hooks, attention_mask,
                     position_ids)
    return maps[0] if isinstance(hook, str) else maps


@functools.partial(jax.jit, static_argnums=(0, 5))
def _patching(cfg: GPT2Config, params, clean_ids, corrupted_ids, metric, hooks: tuple,
              attention_mask, position_ids) -> jax.Array:
    """[len(hooks), L, T] float32: the maps of `activation_patching`."""
    names = [[f"blocks.{i}.{h}" for i in range(cfg.n_layer)] for h in hooks]  # [K][L]
    kwargs = dict(attention_mask=attention_mask, position_ids=position_ids)
    _, clean = run_with_cache(cfg, params, clean_ids, sum(names, []), **kwargs)
    length = clean_ids.shape[1]

    def patched_metric(cell):
        k, layer, pos = cell[0], cell[1], cell[2]
        at = (jnp.arange(length) == pos)[None, :, None]

        def patch(j, i):
            name = names[j][i]
            return lambda value, _: jnp.where((k == j) & (layer == i) & at, clean[name], value)

        logits = run_with_hooks(cfg, params, corrupted_ids,
                                [(names[j][i], patch(j, i)) for j in range(len(hooks))
                                 for i in range(cfg.n_layer)], **kwargs)
        return metric(logits)

    grid = jnp.stack(jnp.meshgrid(jnp.arange(len(hooks)), jnp.arange(cfg.n_layer),
                                  jnp.arange(length), indexing="ij"), -1).reshape(-1, 3)
    maps = jax.lax.map(patched_metric, grid)
    return maps.reshape(len(hooks), cfg.n_layer, length).astype(jnp.float32)
