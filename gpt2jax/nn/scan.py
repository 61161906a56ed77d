"""Scan over layers: the blocks under `nn.scan`, and the maps between the two param layouts.

With `GPT2Config.scan_layers` (as MaxText's `scan_layers`) the n_layer blocks are one `Block`
under `nn.scan`: XLA compiles the block body once instead of n_layer times, so lowering and
compiling no longer grow with depth. Everything per layer is then stacked on a leading axis
of length L = n_layer, under the name `h` instead of `h_0` .. `h_{L-1}`:

- parameters: `h/attn/c_attn/kernel` [L, E, 3, H, D] (logical axis "layers", unsharded);
- the KV cache: `cache/h/attn/cached_key` [L, B, K, S, D] (the batch axis is then axis 1);
- sown intermediates (hooks): `intermediates/h/...` [L, ...].

`stack_layers` / `unstack_layers` convert params (or grads, or any pytree laid out like them)
between the forms; weights/ and checkpoint loading use them, so HF files and inference
loading work from either form.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from gpt2jax.nn import hooks

LAYERS_AXIS = "layers"  # the logical axis name of the stacked dimension (mesh rules: None)
STACKED = "h"  # the name of the scanned block (params, cache, intermediates)
_PREFIX = "h_"  # unrolled blocks are h_0 .. h_{L-1}
# Collections stacked per layer; "intermediates" carries values sown inside Block (hooks).
_SCANNED_COLLECTIONS = {"params": 0, "cache": 0, "intermediates": 0}


def scan_blocks(block: type[nn.Module], cfg, x: jax.Array, key_mask, positions,
                deterministic: bool, decode: bool, cache_index) -> jax.Array:
    """Applies cfg.n_layer blocks to x [B, T, E] as one scanned `block(cfg, name="h")`.

    `block` is the Block class (remat-wrapped already if the config asks: remat then sits
    inside the scan body, one layer's activations saved per step). Arrays shared by every
    layer (key_mask [B, S], positions [B, T], cache_index []) are broadcast; the Python
    flags are closed over (static). Called inside `GPT2.__call__` (a compact method).
    Returns x [B, T, E].
    """

    def body(layer, carry, key_mask, positions, cache_index, *index):
        return layer(carry, key_mask, positions, deterministic, decode, cache_index, *index), None

    # Hooks (hooks.py) need the traced layer number; scanned in only while they are traced,
    # so that the program without hooks is unchanged.
    index = (jnp.arange(cfg.n_layer),) if hooks.is_active() else ()
    scanned = nn.scan(
        body,
        variable_axes=_SCANNED_COLLECTIONS,
        split_rngs={"params": True, "dropout": True},  # each layer its own init and dropout
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast) + (0,) * len(index),
        length=cfg.n_layer,
        metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
    )
    x, _ = scanned(block(cfg, name=STACKED), x, key_mask, positions, cache_index, *index)
    return x


# ----------------------------------------------------------------------------- layouts


def is_stacked(params) -> bool:
    """True if `params` (or a pytree laid out like them) is in the scanned form."""
    return STACKED in params


def _layer_names(params) -> list[str]:
    names = [k for k in params if k.startswith(_PREFIX) and k[len(_PREFIX):].isdigit()]
    return sorted(names, key=lambda k: int(k[len(_PREFIX):]))


def _stack(*leaves):
    xp = np if all(isinstance(x, np.ndarray) for x in leaves) else jnp
    return xp.stack(leaves)


def stack_layers(params: dict) -> dict:
    """Unrolled -> scanned: `h_0` .. `h_{L-1}` (each leaf [...]) become `h` (leaf [L, ...]).

    Other entries (`wte`, `wpe`, `ln_f`) are kept. numpy leaves stay numpy.
    """
    names = _layer_names(params)
    if not names or is_stacked(params):
        raise ValueError("stack_layers needs the unrolled form (h_0, h_1, ...); got keys "
                         f"{sorted(params)[:6]}.")
    out = {k: v for k, v in params.items() if k not in names}
    out[STACKED] = jax.tree.map(_stack, *(params[n] for n in names))
    return out


def unstack_layers(params: dict) -> dict:
    """Scanned -> unrolled: `h` (leaf [L, ...]) becomes `h_0` .. `h_{L-1}` (leaf [...])."""
    if not is_stacked(params):
        raise ValueError("unstack_layers needs the scanned form (h with a leading layers "
                         f"axis); got keys {sorted(params)[:6]}.")
    stacked = params[STACKED]
    length = jax.tree.leaves(stacked)[0].shape[0]
    out = {k: v for k, v in params.items() if k != STACKED}
    for i in range(length):
        out[f"{_PREFIX}{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return out


def to_layout(params: dict, scan_layers: bool) -> dict:
    """`params` in the form `scan_layers` asks for (the same object if it already is)."""
    if is_stacked(params) == scan_layers:
        return params
    return stack_layers(params) if scan_layers else unstack_layers(params)


# ----------------------------------------------------------------------------- KV cache


def cache_batch_axis(path: tuple) -> int:
    """The batch axis of a cache leaf at `path` (a `tree_map_with_path` key path):
    1 under the stacked `h` ([L, B, ...]), else 0 (`h_i/...` [B, ...])."""
    first = path[0]
    return 1 if getattr(first, "key", first) == STACKED else 0


def map_cache_rows(fn: Callable[[jax.Array, int], jax.Array], cache: Any) -> Any:
    """Applies fn(leaf, batch_axis) to every batched leaf of a KV cache in either form
    (beam repeat and reorder); scalars (`cache_index`) are kept."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: fn(x, cache_batch_axis(p)) if x.ndim else x, cache)
