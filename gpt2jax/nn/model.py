"""GPT-2 in Flax linen: the frozen model config, the modules and the KV cache.

Parameter names follow OpenAI/Hugging Face GPT-2 (`wte`, `wpe`, `h_0`..., `ln_1`,
`attn/c_attn`, `attn/c_proj`, `ln_2`, `mlp/c_fc`, `mlp/c_proj`, `ln_f`) so that released
weights map one to one (see `weights.py`). Every parameter carries logical axis names
(`sharding.py` maps them onto the mesh).

Shapes use: B batch, T query length, S key length (cache length while decoding),
E = n_embd, H = n_head, D = head_dim, V = vocab_size.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from gpt2jax.nn import attention as attn_lib
from gpt2jax.nn import decode_kernels
from gpt2jax.nn import hooks
from gpt2jax.nn import initializers as init
from gpt2jax.nn import positions as pos_lib
from gpt2jax.nn import scan as scan_lib
from gpt2jax.parallel import sharding
from gpt2jax.errors import ConfigError

Dtype = Any
AttentionImpl = attn_lib.AttentionImpl
Position = attn_lib.Position
NormPosition = attn_lib.NormPosition
Attention = attn_lib.Attention
RematPolicy = Literal["none", "full", "dots_saveable"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Hyper-parameters of a GPT-2 model (frozen, hashable: usable as a jit static arg).

    Defaults are the 124M GPT-2 ("small"). `dtype` is the compute dtype, `param_dtype`
    the storage dtype of parameters (keep float32 for training).
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: AttentionImpl = "einsum"
    remat: RematPolicy = "none"
    # Attention variants (see attention.py); the defaults are GPT-2.
    n_kv_heads: int = 0
    position: Position = "learned"
    rope_theta: float = 10000.0
    sliding_window: int = 0
    norm_position: NormPosition = "pre"
    qk_norm: bool = False
    # Blocks under nn.scan with stacked params `h` [n_layer, ...] (nn/scan.py): compiles once.
    scan_layers: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"GPT2Config.{name} must be a positive int, got {value!r}.")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; choose n_embd "
                f"a multiple of n_head (e.g. n_embd={self.n_head * (self.n_embd // self.n_head)})."
            )
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}.")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r}; choose one of {sorted(_DTYPES)}.")
        _check_choice("attention_impl", self.attention_impl, AttentionImpl)
        _check_choice("remat", self.remat, RematPolicy)
        self._check_attention_variant()

    def _check_attention_variant(self) -> None:
        _check_choice("position", self.position, Position)
        _check_choice("norm_position", self.norm_position, NormPosition)
        for name in ("qk_norm", "scan_layers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        for name in ("n_kv_heads", "sliding_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0 (0 = off), got {value!r}.")
        if self.n_kv_heads and self.n_head % self.n_kv_heads:
            divisors = [d for d in range(1, self.n_head + 1) if self.n_head % d == 0]
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} does not divide n_head={self.n_head}; choose one "
                f"of {divisors} (1 = multi-query), or 0 for GPT-2's fused multi-head layout."
            )
        pos_lib.check_config(self)
        attn_lib.check_supported(self)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """K: key/value heads (n_kv_heads, or n_head for the fused GPT-2 layout)."""
        return self.n_kv_heads or self.n_head

    @property
    def compute_dtype(self) -> Dtype:
        return _DTYPES[self.dtype]

    @property
    def storage_dtype(self) -> Dtype:
        return _DTYPES[self.param_dtype]

    def replace(self, **changes) -> GPT2Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, model_config) -> GPT2Config:
        """The one translation point from an ml_collections `config.model` to the dataclass.

        Every field of the dataclass must be present in `model_config` (a missing key is an
        error, so that defaults live in configs/ and nowhere else); unknown keys are errors.
        """
        given = dict(model_config)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - fields)
        if unknown:
            raise ConfigError(f"Unknown model config keys {unknown}; known keys: {sorted(fields)}.")
        missing = sorted(fields - set(given))
        if missing:
            raise ConfigError(f"config.model is missing {missing}; add them to the config file.")
        return cls(**given)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_choice(name: str, value, literal) -> None:
    choices = literal.__args__
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}.")


def layer_norm(cfg: GPT2Config, name: str) -> nn.LayerNorm:
    """GPT-2 LayerNorm (eps 1e-5), computed in float32 whatever the compute dtype."""
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_epsilon,
        dtype=jnp.float32,
        param_dtype=cfg.storage_dtype,
        scale_init=init.ones(("embed",)),
        bias_init=init.zeros(("embed",)),
        name=name,
    )


class MLP(nn.Module):
    """GPT-2 feed-forward: c_fc [E, 4E] -> tanh GELU -> c_proj [4E, E]."""

    cfg: GPT2Config

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.cfg
        h = nn.Dense(
            4 * cfg.n_embd,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.storage_dtype,
            kernel_init=init.normal(cfg, ("embed", "mlp")),
            bias_init=init.zeros(("mlp",)),
            name="c_fc",
        )(x)
        h = hooks.hook(self, "mlp.hook_pre", sharding.constrain(h, ("batch", "length", "mlp")))
        h = hooks.hook(self, "mlp.hook_post", nn.gelu(h, approximate=True))
        h = nn.Dense(
            cfg.n_embd,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.storage_dtype,
            kernel_init=init.normal(cfg, ("mlp", "embed"), init.residual_std(cfg)),
            bias_init=init.zeros(("embed",)),
            name="c_proj",
        )(h)
        return nn.Dropout(cfg.resid_pdrop)(h, deterministic=deterministic)


class Block(nn.Module):
    """Transformer block. Pre-LN (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x)).
    Post-LN (original Transformer, GPT-1): ln_1(x + attn(x)), then ln_2(x + mlp(x))."""

    cfg: GPT2Config
    layer: int | None = None  # this block's index (hook names); the scanned block has none

    @nn.compact
    def __call__(self, x, key_mask, positions, deterministic: bool, decode: bool, cache_index,
                 layer=None):
        """`layer`: the traced index of the scanned block (hooks only); default `self.layer`."""
        cfg = self.cfg
        ln_1, ln_2 = layer_norm(cfg, "ln_1"), layer_norm(cfg, "ln_2")
        attn, mlp = Attention(cfg, name="attn"), MLP(cfg, name="mlp")
        hook = functools.partial(hooks.hook, self)  # identity unless hooks are active
        with hooks.in_layer(self.layer if layer is None else layer):
            x = hook("hook_resid_pre", x)
            if cfg.norm_position == "pre":
                h = hook("ln1.hook_normalized", ln_1(x)).astype(cfg.compute_dtype)
                a = hook("hook_attn_out", attn(h, key_mask, positions, deterministic, decode,
                                               cache_index))
                x = hook("hook_resid_mid", x + a)
                h = hook("ln2.hook_normalized", ln_2(x)).astype(cfg.compute_dtype)
                x = hook("hook_resid_post", x + hook("hook_mlp_out", mlp(h, deterministic)))
            else:
                a = hook("hook_attn_out", attn(x, key_mask, positions, deterministic, decode,
                                               cache_index))
                x = hook("ln1.hook_normalized", ln_1(hook("hook_resid_mid", x + a)))
                x = x.astype(cfg.compute_dtype)
                m = hook("hook_mlp_out", mlp(x, deterministic))
                x = hook("ln2.hook_normalized", ln_2(x + m)).astype(cfg.compute_dtype)
                x = hook("hook_resid_post", x)
        return sharding.constrain(x, ("batch", "length", "embed"))


_REMAT_POLICIES = {"full": None,
                   "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class GPT2(nn.Module):
    """GPT-2 language model with the LM head tied to `wte`.

    Call: `GPT2(cfg).apply({"params": params}, input_ids)` -> logits [B, T, V] float32.
    """

    cfg: GPT2Config

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None, deterministic: bool = True,
                 decode: bool = False, return_hidden: bool = False) -> jax.Array:
        """Args:
          input_ids: [B, T] int token ids.
          attention_mask: key mask, 1 for real tokens and 0 for padding: [B, T] for a full
            forward, [B, S] over cache slots when decoding (S = cache length). None = all real.
          position_ids: [B, T] positions (HF: `cumsum(mask) - 1` for left padding). Default:
            0..T-1, or the cache index onward while decoding.
          deterministic: disable dropout (pass rngs={"dropout": key} when False).
          decode: use and update the KV cache (`mutable=["cache"]`, created by `init_cache`).
          return_hidden: return the final hidden states [B, T, E] (after ln_f, compute dtype)
            instead of the logits, so that a loss can apply the tied head `wte` itself, a
            chunk at a time or at the scored positions only (`nn/loss.py`).
        Returns:
          logits [B, T, V] in float32 (or hidden states [B, T, E] with return_hidden).
        """
        cfg = self.cfg
        batch, length = input_ids.shape
        if not decode:  # learned positions stop at n_positions; the other schemes go on
            pos_lib.check_length(cfg, length, "input length", f"keep the last {cfg.n_positions}"
                                 " tokens or use strided windows (perplexity)")
        cache_index = None
        if decode:
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            cache_index = index.value
            if not self.is_initializing():
                index.value = cache_index + length
        if position_ids is None:
            start = 0 if cache_index is None else cache_index
            position_ids = jnp.broadcast_to(start + jnp.arange(length), (batch, length))
        wte = nn.Embed(
            cfg.vocab_size, cfg.n_embd,
            dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
            embedding_init=init.normal(cfg, ("vocab", "embed")), name="wte",
        )
        x = hooks.hook(self, "hook_embed", wte(input_ids))
        if cfg.position == "learned":
            x = x + hooks.hook(self, "hook_pos_embed", nn.Embed(
                cfg.n_positions, cfg.n_embd,
                dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
                embedding_init=init.normal(cfg, (None, "embed"), 0.01), name="wpe",
            )(position_ids))
        elif cfg.position == "sinusoidal":  # Vaswani et al. 3.4: token embeddings x sqrt(E)
            pe = pos_lib.sinusoidal_embedding(position_ids, cfg.n_embd).astype(cfg.compute_dtype)
            x = x * cfg.n_embd ** 0.5 + hooks.hook(self, "hook_pos_embed", pe)
        x = nn.Dropout(cfg.embd_pdrop)(x, deterministic=deterministic)
        x = sharding.constrain(x, ("batch", "length", "embed"))
        block = Block
        if cfg.remat != "none":  # inside a scan no CSE can undo remat: no barriers needed
            block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], static_argnums=(4, 5),
                             prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            x = scan_lib.scan_blocks(block, cfg, x, attention_mask, position_ids, deterministic,
                                     decode, cache_index)
        else:
            for i in range(cfg.n_layer):
                x = block(cfg, layer=i, name=f"h_{i}")(x, attention_mask, position_ids,
                                                       deterministic, decode, cache_index)
        if cfg.norm_position == "pre":  # post-LN blocks end normalised: no ln_f
            x = hooks.hook(self, "ln_final.hook_normalized", layer_norm(cfg, "ln_f")(x))
            x = x.astype(cfg.compute_dtype)
        if return_hidden:
            return sharding.constrain(x, ("batch", "length", "embed"))
        if decode and length == 1 and batch > 1:  # a decode step of several rows
            logits = decode_kernels.few_rows_logits(x, wte.embedding, cfg.compute_dtype)
        else:
            logits = wte.attend(x)
        return sharding.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))



def model_outputs(cfg: GPT2Config, params, *args, output_hidden_states: bool = False,
                  output_attentions: bool = False, **kwargs) -> hooks.ModelOutput:
    """HF's `CausalLMOutput` fields of one forward pass: `GPT2(cfg).apply({"params": params},
    *args, **kwargs)` with the hook points that give them captured.

    Returns a `hooks.ModelOutput`: logits [B, T, V] float32; hidden_states (n_layer + 1 arrays
    [B, T, E]: the embeddings, each block's input and the output after ln_f, as HF) when
    asked; attentions (n_layer arrays [B, H, T, S] of softmax weights, einsum kernel only)
    when asked. With `mutable=` it returns (output, the other mutable collections).
    """
    mutable = kwargs.pop("mutable", False)
    run = functools.partial(GPT2(cfg).apply, {"params": params}, *args, **kwargs)
    return hooks.hf_outputs(cfg, run, output_hidden_states, output_attentions, mutable)


def init_params(cfg: GPT2Config, rng: jax.Array, boxed: bool = False):
    """Fresh GPT-2-initialised parameters (std 0.02, residual projections scaled).

    Returns the params pytree; with `boxed=True` leaves are `nn.Partitioned` carrying their
    logical axis names (for `sharding.py`).
    """
    dummy = jnp.zeros((1, 1), jnp.int32)
    params = GPT2(cfg).init(rng, dummy)["params"]
    return params if boxed else nn.unbox(params)


def logical_axes(cfg: GPT2Config):
    """The logical axis names of every parameter, a pytree of `PartitionSpec`s (no allocation;
    the model is traced once per config, and each call gets its own containers)."""
    return nn.get_partition_spec(_abstract_params(cfg, boxed=True))


def param_count(cfg: GPT2Config) -> int:
    """Number of parameters (LM head tied, so counted once), from abstract shapes."""
    return sum(x.size for x in jax.tree.leaves(_abstract_params(cfg, boxed=False)))


@functools.lru_cache(maxsize=32)
def _abstract_params(cfg: GPT2Config, boxed: bool):
    """`init_params`' ShapeDtypeStructs, traced once per config (`generate` asks every call)."""
    return jax.eval_shape(functools.partial(init_params, cfg, boxed=boxed), jax.random.key(0))


def init_cache(cfg: GPT2Config, batch_size: int, max_length: int):
    """An empty KV cache for `max_length` slots (past n_positions for a model whose position
    scheme defines every position, `positions.UNBOUNDED`).

    Returns the pytree {"cache_index": int32 scalar, "h_i": {"attn": {"cached_key",
    "cached_value": [B, K, S, D]}}} with K = cfg.kv_heads; with ALiBi or a sliding window each
    layer also caches "cached_positions" [B, S] int32 (key position ids). With scan_layers
    the layers are stacked instead: "h": {"attn": {"cached_key": [L, B, K, S, D], ...}}.
    """
    pos_lib.check_length(cfg, max_length, "max_length", "shorten the prompt or new tokens")
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                        _cache_shapes(cfg, batch_size, max_length))


@functools.lru_cache(maxsize=32)
def _cache_shapes(cfg: GPT2Config, batch_size: int, max_length: int):
    """The cache's ShapeDtypeStructs, traced once per (config, batch, length)."""
    ids = jax.ShapeDtypeStruct((batch_size, max_length), jnp.int32)
    return jax.eval_shape(
        lambda ids: GPT2(cfg).init(jax.random.key(0), ids, decode=True)["cache"], ids)


def kv_cache_bytes_per_token(cfg: GPT2Config) -> int:
    """Bytes the KV cache holds per token of one sequence (all layers), from its shapes."""
    shapes = _cache_shapes(cfg, 1, 1)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes) if x.ndim >= 2)
