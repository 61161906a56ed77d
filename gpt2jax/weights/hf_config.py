"""HF `config.json` <-> `GPT2Config`: what a released GPT-2 config may say, and what we write."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from gpt2jax.errors import ConfigError, WeightsError
from gpt2jax.nn.model import GPT2Config

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(GPT2Config)}


def config_from_hf(hf: Mapping[str, Any], **overrides) -> GPT2Config:
    """An HF GPT-2 `config.json` dict (+ GPT2Config field overrides) -> `GPT2Config`."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise WeightsError(f"config.json has model_type={hf['model_type']!r}; only 'gpt2' loads.")
    act = hf.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise WeightsError(
            f"activation_function={act!r} is not supported; GPT-2 uses the tanh GELU "
            f"({' or '.join(_TANH_GELUS)})."
        )
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise WeightsError(f"n_inner={hf['n_inner']} is not 4*n_embd; unsupported MLP width.")
    for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False),
                    ("scale_attn_weights", True), ("tie_word_embeddings", True)):
        if hf.get(key, ok) != ok:
            raise WeightsError(f"config.json sets {key}={hf[key]!r}; gpt2jax supports {ok}.")
    fields = dict(
        vocab_size=hf.get("vocab_size", 50257), n_positions=hf.get("n_positions", 1024),
        n_embd=n_embd, n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        embd_pdrop=hf.get("embd_pdrop", 0.1), attn_pdrop=hf.get("attn_pdrop", 0.1),
        resid_pdrop=hf.get("resid_pdrop", 0.1),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    return make_config(fields, overrides)


def make_config(fields: dict, overrides: Mapping[str, Any]) -> GPT2Config:
    """`GPT2Config(**fields)` with `overrides` (GPT2Config field names) applied on top."""
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise ConfigError(
            f"Unknown GPT2Config override(s) {unknown}; known: {sorted(_CONFIG_FIELDS)}."
        )
    return GPT2Config(**{**fields, **overrides})


GPT2_EOT = 50256  # <|endoftext|>, GPT-2's BOS and EOS


def config_to_hf(cfg: GPT2Config) -> dict[str, Any]:
    """`GPT2Config` -> an HF `config.json` dict for `GPT2LMHeadModel`."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "embd_pdrop": cfg.embd_pdrop,
        "attn_pdrop": cfg.attn_pdrop,
        "resid_pdrop": cfg.resid_pdrop,
        "summary_first_dropout": 0.1,
        "initializer_range": cfg.initializer_range,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        # GPT-2's <|endoftext|>, where the vocabulary has it (a char model has no such id)
        "bos_token_id": GPT2_EOT if cfg.vocab_size > GPT2_EOT else None,
        "eos_token_id": GPT2_EOT if cfg.vocab_size > GPT2_EOT else None,
        "use_cache": True,
        "torch_dtype": "float32",
    }
