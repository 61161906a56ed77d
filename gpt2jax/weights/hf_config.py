"""HF `config.json` <-> `GPT2Config`: what a released GPT-2 config may say, and what we write."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from gpt2jax.errors import ConfigError, WeightsError
from gpt2jax.nn.model import GPT2Config

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(GPT2Config)}

# What each field of config.json that we read must hold: (check, what the fix should write).
_POSITIVE_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                 "a positive integer")
_NUMBER = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
_PROBABILITY = (lambda v: _NUMBER[0](v) and 0 <= v < 1, "a number in [0, 1)")
_BOOL = (lambda v: isinstance(v, bool), "true or false")
_FIELD_TYPES = {
    "vocab_size": _POSITIVE_INT, "n_positions": _POSITIVE_INT, "n_embd": _POSITIVE_INT,
    "n_layer": _POSITIVE_INT, "n_head": _POSITIVE_INT,
    "n_inner": (lambda v: v is None or _POSITIVE_INT[0](v), "null or a positive integer"),
    "layer_norm_epsilon": (lambda v: _NUMBER[0](v) and v > 0, "a number > 0"),
    "embd_pdrop": _PROBABILITY, "attn_pdrop": _PROBABILITY, "resid_pdrop": _PROBABILITY,
    "initializer_range": (lambda v: _NUMBER[0](v) and v >= 0, "a number >= 0"),
    "model_type": (lambda v: isinstance(v, str), "a string like \"gpt2\""),
    "activation_function": (lambda v: isinstance(v, str), "a string like \"gelu_new\""),
    "scale_attn_by_inverse_layer_idx": _BOOL, "add_cross_attention": _BOOL,
    "scale_attn_weights": _BOOL, "tie_word_embeddings": _BOOL,
}


def check_hf_config(hf: Any, source: str) -> dict:
    """`hf` (the parsed `config.json` at `source`) if it is a JSON object whose fields that we
    read hold the right types; else WeightsError naming the file, the field and the type."""
    if not isinstance(hf, dict):
        raise WeightsError(f"{source!r} holds a JSON {json_type(hf)}, not an object of GPT-2 "
                           "settings ({\"n_layer\": 12, ...}); fix or re-download it.")
    for key, (ok, expected) in _FIELD_TYPES.items():
        if key in hf and not ok(hf[key]):
            raise WeightsError(f"{source!r}: {key} must be {expected}, got the JSON "
                               f"{json_type(hf[key])} {json.dumps(hf[key])[:40]}; fix that "
                               "field or re-download the file.")
    return hf


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (object, array, string, number, boolean, null)."""
    for kind, name in ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string"),
                       ((int, float), "number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


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
