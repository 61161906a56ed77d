"""Named hook points inside the GPT-2 modules, with TransformerLens's names and shapes.

The modules call `hook(module, name, value)` at each point of the table below. With no hooks
active (every ordinary forward) it returns `value` itself: no operation is added, so the
compiled program is exactly the one without hooks. Inside `active(...)` (entered by
`gpt2jax.run_with_cache` / `run_with_hooks` / `GPT2.apply(output_hidden_states=...)`) it
applies the intervention functions registered for the point, then sows the value into the
"intermediates" collection when the point is captured.

Names (TransformerLens, `blocks.{i}.` prefix for the per-layer ones) and where they sit:

| name                          | shape                      | value (linen module path)          |
|-------------------------------|----------------------------|------------------------------------|
| hook_embed                    | [batch, pos, d_model]      | wte(input_ids)                     |
| hook_pos_embed                | [batch, pos, d_model]      | wpe / sinusoid of position_ids     |
| blocks.i.hook_resid_pre       | [batch, pos, d_model]      | input of h_i                       |
| blocks.i.ln1.hook_normalized  | [batch, pos, d_model]      | h_i/ln_1 output                    |
| blocks.i.attn.hook_q          | [batch, pos, head, d_head] | h_i/attn/c_attn (or c_q) queries   |
| blocks.i.attn.hook_k / hook_v | [batch, pos, kv_head, d_head] | keys / values (kv_head = head   |
|                               |                            | unless n_kv_heads)                 |
| blocks.i.attn.hook_rot_q / _k | as hook_q / hook_k         | after RoPE (position='rope' only)  |
| blocks.i.attn.hook_attn_scores| [batch, head, query, key]  | scaled q.k (+ ALiBi), masked -inf  |
| blocks.i.attn.hook_pattern    | [batch, head, query, key]  | softmax of the scores              |
| blocks.i.attn.hook_z          | [batch, pos, head, d_head] | pattern @ v, before attn/c_proj    |
| blocks.i.hook_attn_out        | [batch, pos, d_model]      | h_i/attn output (c_proj + bias)    |
| blocks.i.hook_resid_mid       | [batch, pos, d_model]      | resid_pre + attn_out               |
| blocks.i.ln2.hook_normalized  | [batch, pos, d_model]      | h_i/ln_2 output                    |
| blocks.i.mlp.hook_pre         | [batch, pos, d_mlp]        | h_i/mlp/c_fc output                |
| blocks.i.mlp.hook_post        | [batch, pos, d_mlp]        | GELU of it                         |
| blocks.i.hook_mlp_out         | [batch, pos, d_model]      | h_i/mlp output (c_proj + bias)     |
| blocks.i.hook_resid_post      | [batch, pos, d_model]      | output of h_i                      |
| ln_final.hook_normalized      | [batch, pos, d_model]      | ln_f output (pre-LN models only)   |

Definitions follow TransformerLens (`components/abstract_attention.py`, `layer_norm.py`):
q/k/v are taken before RoPE (and after QK-norm, which TransformerLens's GPT-2 lacks); the
scores are scaled by 1/sqrt(d_head), ALiBi is added, masked entries are -inf; the pattern is
their softmax with fully masked rows (left-padding queries) set to 0; `hook_normalized` is
the output of an unfolded LayerNorm, after its scale and bias (TransformerLens's `LayerNorm`
hooks `x * w + b`). Post-LN blocks (norm_position='post'): resid_mid is resid_pre +
attn_out before ln_1; ln1 / ln2 hook the LayerNorm outputs; resid_post = ln2's output.

Under `scan_layers` the block body is traced once with a traced layer index: interventions
for layer i then run as `where(layer == i, fn(value), value)` and captured values are sown
stacked on a leading layer axis (key `blocks.*.<name>`), which `collect` splits per layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct, traverse_util

from gpt2jax.errors import ConfigError

HookFn = Callable[[jax.Array, str], "jax.Array | None"]

GLOBAL_HOOKS = ("hook_embed", "hook_pos_embed")
FINAL_HOOKS = ("ln_final.hook_normalized",)
LAYER_HOOKS = (
    "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern",
    "attn.hook_z", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_pre",
    "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
)
SCORE_HOOKS = ("attn.hook_attn_scores", "attn.hook_pattern")
STACKED_PREFIX = "blocks.*."
_LAYER_NAME = re.compile(r"blocks\.(\d+)\.(.+)")


def missing_reason(cfg, local: str) -> str | None:
    """Why the model variant `cfg` has no hook point `local` (a name without `blocks.i.`),
    or None when it has it."""
    if local == "hook_pos_embed" and cfg.position not in ("learned", "sinusoidal"):
        return f"position={cfg.position!r} adds no position embedding (learned or sinusoidal)"
    if local in ("attn.hook_rot_q", "attn.hook_rot_k") and cfg.position != "rope":
        return f"position={cfg.position!r} has no rotary embedding (only position='rope')"
    if local in SCORE_HOOKS and cfg.attention_impl != "einsum":
        return (f"attention_impl={cfg.attention_impl!r} computes attention in a fused kernel "
                "that never forms the scores/pattern; use attention_impl='einsum'")
    if local in FINAL_HOOKS and cfg.norm_position != "pre":
        return f"norm_position={cfg.norm_position!r} has no final LayerNorm (ln_f)"
    return None


def hook_names(cfg) -> list[str]:
    """Every hook point of the model `cfg`, in forward order (full TransformerLens names)."""
    names = [n for n in GLOBAL_HOOKS if missing_reason(cfg, n) is None]
    local = [n for n in LAYER_HOOKS if missing_reason(cfg, n) is None]
    names += [f"blocks.{i}.{n}" for i in range(cfg.n_layer) for n in local]
    return names + [n for n in FINAL_HOOKS if missing_reason(cfg, n) is None]


def split_name(name: str) -> tuple[int | None, str]:
    """'blocks.3.attn.hook_z' -> (3, 'attn.hook_z'); 'hook_embed' -> (None, 'hook_embed')."""
    match = _LAYER_NAME.fullmatch(name)
    return (int(match.group(1)), match.group(2)) if match else (None, name)


def check_names(cfg, names: Iterable[str]) -> tuple[str, ...]:
    """Validates requested hook names for `cfg`; returns them as a tuple.

    Raises ConfigError naming an unknown name, a layer out of range, or the variant that
    lacks the point."""
    names = tuple(names)
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"Hook names are strings like 'blocks.0.attn.hook_z', got {name!r}.")
        layer, local = split_name(name)
        known = LAYER_HOOKS if layer is not None else GLOBAL_HOOKS + FINAL_HOOKS
        if local not in known:
            raise ConfigError(f"Unknown hook point {name!r}; see gpt2jax.hook_names(cfg) for the "
                              f"{len(hook_names(cfg))} names of this model.")
        if layer is not None and layer >= cfg.n_layer:
            raise ConfigError(f"Hook point {name!r}: layer {layer} does not exist (n_layer="
                              f"{cfg.n_layer}); use blocks.0 .. blocks.{cfg.n_layer - 1}.")
        reason = missing_reason(cfg, local)
        if reason:
            raise ConfigError(f"Hook point {name!r} does not exist in this model: {reason}.")
    return names


# ------------------------------------------------------------------ the active context


@dataclasses.dataclass
class _Active:
    n_layer: int
    capture: frozenset[str]             # full names sown into "intermediates"
    fns: Mapping[str, tuple[HookFn, ...]]  # full name -> intervention functions, in order
    layer: Any = None                   # current block: None outside, int, or traced int32


# Set only while a hooked forward is traced (a context variable, as parallel/sharding.py's
# tracing mesh: per thread and per async task, restored on exit).
_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar(
    "gpt2jax_hooks", default=None)


@contextlib.contextmanager
def active(cfg, capture: Iterable[str] = (), fwd_hooks: Iterable[tuple[str, HookFn]] = ()):
    """`with active(cfg, capture, fwd_hooks): model.apply(...)` traces the model with hooks.

    Args:
      capture: full hook names to sow into the "intermediates" collection.
      fwd_hooks: (name, fn) pairs; fn(value, name) returns the replacement or None.
    """
    fns: dict[str, tuple[HookFn, ...]] = {}
    for name, fn in fwd_hooks:
        if not callable(fn):
            raise ConfigError(f"The hook for {name!r} must be a function fn(value, name), "
                              f"got {fn!r}.")
        fns[name] = fns.get(name, ()) + (fn,)
    check_names(cfg, list(capture) + list(fns))
    token = _ACTIVE.set(_Active(cfg.n_layer, frozenset(capture), fns))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def is_active() -> bool:
    """True while a hooked forward is being traced."""
    return _ACTIVE.get() is not None


@contextlib.contextmanager
def in_layer(layer):
    """Marks the block being traced (used by `Block`); free when no hooks are active.

    `layer`: the block index (its `Block.layer` field, or a traced int32 scalar under
    `nn.scan`)."""
    ctx = _ACTIVE.get()
    if ctx is None:
        yield
        return
    if layer is None:
        raise ConfigError("A Block traced with hooks has no layer index: construct it with "
                          "layer=i (the unrolled model does), or pass it (the scanned one).")
    previous, ctx.layer = ctx.layer, layer
    try:
        yield
    finally:
        ctx.layer = previous


def _full_names(ctx: _Active, local: str) -> list[tuple[int | None, str]]:
    """(layer, full name) pairs a call at `local` stands for in the current block."""
    if ctx.layer is None:
        return [(None, local)]
    if isinstance(ctx.layer, int):
        return [(ctx.layer, f"blocks.{ctx.layer}.{local}")]
    return [(i, f"blocks.{i}.{local}") for i in range(ctx.n_layer)]


def wants(*locals_: str) -> bool:
    """True if any of the points `locals_` is captured or intervened on here (trace time)."""
    ctx = _ACTIVE.get()
    if ctx is None:
        return False
    return any(name in ctx.capture or name in ctx.fns
               for local in locals_ for _, name in _full_names(ctx, local))


def _call(fn: HookFn, value: jax.Array, name: str) -> jax.Array:
    out = fn(value, name)
    if out is None:
        return value
    out = jnp.asarray(out)
    if out.shape != value.shape:
        raise ConfigError(f"The hook on {name!r} returned shape {out.shape}; it must keep the "
                          f"shape {value.shape} (return None to keep the value).")
    return out.astype(value.dtype)


def hook(module, local: str, value: jax.Array) -> jax.Array:
    """The hook point `local` (e.g. 'attn.hook_z') of `module` on `value`.

    Identity when no hooks are active. Otherwise applies the registered functions (under a
    traced layer index: each selected by `where(layer == i, ...)`) and sows the result into
    "intermediates" under its full name (stacked ones as 'blocks.*.<local>')."""
    ctx = _ACTIVE.get()
    if ctx is None:
        return value
    pairs = _full_names(ctx, local)
    traced = ctx.layer is not None and not isinstance(ctx.layer, int)
    for layer, name in pairs:
        for fn in ctx.fns.get(name, ()):
            new = _call(fn, value, name)
            value = jnp.where(ctx.layer == layer, new, value) if traced else new
    if any(name in ctx.capture for _, name in pairs):
        module.sow("intermediates", STACKED_PREFIX + local if traced else pairs[0][1], value)
    return value


# ------------------------------------------------------------------ reading the captures


def collect(intermediates: Mapping, names: Iterable[str]) -> dict[str, jax.Array]:
    """The captured values, by full name, in the order of `names`.

    Args:
      intermediates: the "intermediates" collection returned by a hooked apply.
      names: the full names that were captured.
    Returns:
      {name: array}; stacked (scan) captures are split per layer.
    """
    # sow keeps a tuple of the values sown under each point's name: the last path element
    flat = {path[-1]: value[0]
            for path, value in traverse_util.flatten_dict(dict(intermediates)).items()}
    out = {}
    for name in names:
        if name in flat:
            out[name] = flat[name]
            continue
        layer, local = split_name(name)
        out[name] = flat[STACKED_PREFIX + local][layer]
    return out


# ------------------------------------------------------------------ HF-style outputs


@struct.dataclass
class ModelOutput:
    """HF's `CausalLMOutput` fields (a pytree: returnable from `jax.jit`).

    logits: [B, T, V] float32.
    hidden_states: n_layer + 1 arrays [B, T, E] (embeddings, each block's input, and the last
      block's output after ln_f, as HF returns them), or None.
    attentions: n_layer arrays [B, H, T, S] (softmax weights), or None.
    """

    logits: jax.Array
    hidden_states: tuple | None = None
    attentions: tuple | None = None


def hf_output_names(cfg, hidden_states: bool, attentions: bool) -> tuple[list[str], list[str]]:
    """The hook names that give HF's hidden_states and attentions for `cfg`."""
    hidden, attn = [], []
    if hidden_states:
        hidden = [f"blocks.{i}.hook_resid_pre" for i in range(cfg.n_layer)]
        hidden.append("ln_final.hook_normalized" if cfg.norm_position == "pre"
                      else f"blocks.{cfg.n_layer - 1}.hook_resid_post")
    if attentions:
        reason = missing_reason(cfg, "attn.hook_pattern")
        if reason:
            raise ConfigError(f"output_attentions=True needs the attention weights, but {reason}.")
        attn = [f"blocks.{i}.attn.hook_pattern" for i in range(cfg.n_layer)]
    return hidden, attn


def hf_outputs(cfg, run: Callable[..., tuple], hidden_states: bool, attentions: bool,
               mutable: Any = False):
    """Runs `run(mutable=...)` (an apply returning (logits, state)) with the hooks HF's outputs
    need; returns a `ModelOutput` (and the other mutable collections if `mutable` asked)."""
    hidden, attn = hf_output_names(cfg, hidden_states, attentions)
    asked = [] if mutable is False else [mutable] if isinstance(mutable, str) else list(mutable)
    with active(cfg, capture=hidden + attn):
        logits, state = run(mutable=asked + ["intermediates"])
    state = dict(state)
    got = collect(state.pop("intermediates", {}), hidden + attn)
    out = ModelOutput(
        logits=logits,
        hidden_states=tuple(got[n] for n in hidden) if hidden_states else None,
        attentions=tuple(got[n] for n in attn) if attentions else None,
    )
    return (out, state) if asked else out
