"""Import and export of released GPT-2 checkpoints.

Reads, into `(GPT2Config, params)`:
- a Hugging Face model directory: `config.json` + `model.safetensors` (or a sharded
  `model.safetensors.index.json`), else `flax_model.msgpack`, else `pytorch_model.bin`
  (only with `allow_pickle=True`, through `torch.load(weights_only=True)`);
- a bare `.safetensors` / `.msgpack` / `.bin` file (config from a sibling `config.json`, or
  inferred from the tensor shapes plus an explicit `n_head=`);
- OpenAI's original TensorFlow checkpoint (`hparams.json` + `model.ckpt.*`, needs tensorflow);
- a hub name (`gpt2`, `gpt2-medium`, `openai-community/gpt2`, ...), downloaded with
  `huggingface_hub` (the `hub` extra).

Writes, with `save_pretrained`, the HF layout (`config.json` + `model.safetensors`) that
`transformers.GPT2LMHeadModel.from_pretrained` loads.

File formats and downloads live in `weights_formats.py`. Tensor names in between are HF
PyTorch `GPT2LMHeadModel` names without the `transformer.` prefix (`h.0.attn.c_attn.weight`,
Conv1D layout [in, out]); see `hf_state_dict_to_params`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gpt2jax.errors import WeightsError
from gpt2jax.nn.model import GPT2Config
from gpt2jax.nn.scan import to_layout
from gpt2jax.weights.hf_config import config_from_hf, config_to_hf, make_config  # noqa: F401
from gpt2jax.weights.formats import (  # noqa: F401  (flax_msgpack_to_state_dict: public)
    flax_msgpack_to_state_dict, read_config_json, read_directory, read_weights_file, resolve,
)

Params = dict[str, Any]
StateDict = dict[str, np.ndarray]

HF_PREFIX = "transformer."
# Buffers (causal mask) that old HF checkpoints store; they are not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# HF activation names that are exactly the tanh-approximate GELU this model computes.


# ----------------------------------------------------------------------------- conversion


def _layer_shapes(cfg: GPT2Config) -> dict[str, tuple]:
    e = cfg.n_embd
    return {
        "ln_1.weight": (e,), "ln_1.bias": (e,),
        "attn.c_attn.weight": (e, 3 * e), "attn.c_attn.bias": (3 * e,),
        "attn.c_proj.weight": (e, e), "attn.c_proj.bias": (e,),
        "ln_2.weight": (e,), "ln_2.bias": (e,),
        "mlp.c_fc.weight": (e, 4 * e), "mlp.c_fc.bias": (4 * e,),
        "mlp.c_proj.weight": (4 * e, e), "mlp.c_proj.bias": (e,),
    }


# HF tensor name (no prefix) -> path in the gpt2jax params pytree; `h.{i}.` names per layer.
_TOP = {"wte.weight": ("wte", "embedding"), "wpe.weight": ("wpe", "embedding"),
        "ln_f.weight": ("ln_f", "scale"), "ln_f.bias": ("ln_f", "bias")}
_LAYER = {
    "ln_1.weight": ("ln_1", "scale"), "ln_1.bias": ("ln_1", "bias"),
    "ln_2.weight": ("ln_2", "scale"), "ln_2.bias": ("ln_2", "bias"),
    "attn.c_attn.weight": ("attn", "c_attn", "kernel"),
    "attn.c_attn.bias": ("attn", "c_attn", "bias"),
    "attn.c_proj.weight": ("attn", "c_proj", "kernel"),
    "attn.c_proj.bias": ("attn", "c_proj", "bias"),
    "mlp.c_fc.weight": ("mlp", "c_fc", "kernel"), "mlp.c_fc.bias": ("mlp", "c_fc", "bias"),
    "mlp.c_proj.weight": ("mlp", "c_proj", "kernel"), "mlp.c_proj.bias": ("mlp", "c_proj", "bias"),
}
# Our attention params split heads: c_attn [E, 3E] -> [E, 3, H, D], c_proj [E, E] -> [H, D, E].
_HEAD_SHAPES = {
    "attn.c_attn.weight": lambda c: (c.n_embd, 3, c.n_head, c.head_dim),
    "attn.c_attn.bias": lambda c: (3, c.n_head, c.head_dim),
    "attn.c_proj.weight": lambda c: (c.n_head, c.head_dim, c.n_embd),
}


def _name_map(cfg: GPT2Config) -> dict[str, tuple]:
    names = dict(_TOP)
    for i in range(cfg.n_layer):
        names.update({f"h.{i}.{k}": (f"h_{i}",) + v for k, v in _LAYER.items()})
    return names


def _our_shape(cfg: GPT2Config, name: str, hf_shape: tuple) -> tuple:
    suffix = name.split(".", 2)[2] if name.startswith("h.") else name
    return _HEAD_SHAPES[suffix](cfg) if suffix in _HEAD_SHAPES else hf_shape


def _gpt2_fields(exact: bool) -> dict:
    fields = {"n_kv_heads": 0, "position": "learned", "qk_norm": False}
    if exact:
        fields.update(sliding_window=0, norm_position="pre")
    return fields


def gpt2_layout_mismatch(cfg: GPT2Config, exact: bool = False) -> dict:
    """The fields of `cfg` that the HF GPT-2 layout cannot hold ({} = none); see below."""
    return {k: getattr(cfg, k) for k, v in _gpt2_fields(exact).items() if getattr(cfg, k, v) != v}


def check_gpt2_layout(cfg: GPT2Config, exact: bool = False) -> None:
    """Raises WeightsError if `cfg` has parameters the HF GPT-2 layout cannot hold.

    With `exact=True` also rejects variants that keep GPT-2's parameters but compute
    differently (sliding window, post-LN): HF would then give other logits.
    """
    bad = gpt2_layout_mismatch(cfg, exact)
    if bad:
        raise WeightsError(
            f"The HF GPT-2 layout cannot represent {bad}; only plain GPT-2 "
            f"({_gpt2_fields(exact)}) imports/exports. Save such models with the Orbax "
            "checkpointer instead."
        )


def expected_hf_shapes(cfg: GPT2Config) -> dict[str, tuple]:
    """Every tensor name of an HF GPT-2 state dict (no prefix) -> its shape for `cfg`."""
    shapes = {
        "wte.weight": (cfg.vocab_size, cfg.n_embd),
        "wpe.weight": (cfg.n_positions, cfg.n_embd),
        "ln_f.weight": (cfg.n_embd,),
        "ln_f.bias": (cfg.n_embd,),
    }
    for i in range(cfg.n_layer):
        shapes.update({f"h.{i}.{k}": s for k, s in _layer_shapes(cfg).items()})
    return shapes


def _normalise_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Strips the `transformer.` prefix, drops mask buffers and a tied `lm_head.weight`."""
    out = {}
    for key, value in state.items():
        key = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        out[key] = value
    head = out.pop("lm_head.weight", None)
    if head is not None and "wte.weight" in out:
        if head.shape != out["wte.weight"].shape or not np.array_equal(head, out["wte.weight"]):
            raise WeightsError(
                "lm_head.weight differs from wte.weight (an untied LM head); gpt2jax ties the "
                "head to wte like GPT-2. Use a checkpoint with tied embeddings."
            )
    return out


def hf_state_dict_to_params(state: Mapping[str, Any], cfg: GPT2Config) -> Params:
    """HF PyTorch-layout GPT-2 tensors -> the gpt2jax params pytree (numpy, `cfg.param_dtype`).

    Args:
      state: name -> array, names with or without `transformer.`; Conv1D weights [in, out],
        e.g. `h.0.attn.c_attn.weight` [E, 3E], `wte.weight` [V, E].
      cfg: the model config the tensors must fit.
    Returns:
      params: `wte/embedding` [V, E], `h_i/attn/c_attn/kernel` [E, 3, H, D], ... (model.py);
        with `cfg.scan_layers` stacked instead: `h/attn/c_attn/kernel` [L, E, 3, H, D].
    Raises:
      WeightsError: a tensor is missing, unexpected or has the wrong shape.
    """
    check_gpt2_layout(cfg)
    state = _normalise_keys(state)
    expected = expected_hf_shapes(cfg)
    missing = [k for k in expected if k not in state]
    if missing:
        raise WeightsError(
            f"Checkpoint is missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
            f"({len(missing)} in all) needed by n_layer={cfg.n_layer}; use a complete GPT-2 "
            "checkpoint or a config.json that matches it."
        )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise WeightsError(
            f"Checkpoint has unexpected tensor(s) {unexpected[:5]} ({len(unexpected)} in all); "
            "it is not a GPT-2 LM checkpoint matching its config (check n_layer in config.json)."
        )
    for name, shape in expected.items():
        got = tuple(state[name].shape)
        if got != shape:
            raise WeightsError(
                f"Tensor {name!r} has shape {got}, expected {shape} for n_embd={cfg.n_embd}, "
                f"vocab_size={cfg.vocab_size}, n_positions={cfg.n_positions}; the config does "
                "not match the weights: fix config.json (or the n_* overrides)."
            )
    params = traverse_util.unflatten_dict({
        path: np.asarray(state[name]).astype(cfg.storage_dtype).reshape(
            _our_shape(cfg, name, expected[name]))
        for name, path in _name_map(cfg).items()})
    return to_layout(params, cfg.scan_layers)


def params_to_hf_state_dict(params: Params, cfg: GPT2Config, prefix: str = HF_PREFIX) -> StateDict:
    """The gpt2jax params pytree -> HF PyTorch-layout numpy tensors (inverse of the above).

    Args:
      params: as produced by `init_params` / `load_pretrained` (jax or numpy leaves), in
        either form (unrolled `h_i` or scan_layers' stacked `h`).
      cfg: its config.
      prefix: prepended to every name; `transformer.` is what `GPT2LMHeadModel` saves.
    Returns:
      name -> numpy array in the parameters' dtype, Conv1D weights [in, out].
    """
    check_gpt2_layout(cfg, exact=True)
    params = to_layout(params, False)  # HF names one tensor per layer
    out, names = {}, _name_map(cfg)
    flat = traverse_util.flatten_dict(dict(params))
    for name, shape in expected_hf_shapes(cfg).items():
        path = names[name]
        if path not in flat:
            raise WeightsError(
                f"params has no {'/'.join(path)!r}; pass the pytree made by "
                "gpt2jax.init_params or load_pretrained (unboxed).")
        value = np.asarray(jax.device_get(flat[path]))
        if value.size != np.prod(shape):
            raise WeightsError(
                f"params {'/'.join(path)} has shape {value.shape}, which does not fit {name} "
                f"{shape} of the config; pass the config the params were made with."
            )
        out[prefix + name] = np.ascontiguousarray(value.reshape(shape))
    return out


# ----------------------------------------------------------------------------- configs


def infer_config(state: Mapping[str, Any], **overrides) -> GPT2Config:
    """A config from tensor shapes alone; `n_head` cannot be inferred and must be given."""
    state = _normalise_keys(state)
    if "wte.weight" not in state or "wpe.weight" not in state:
        raise WeightsError("Checkpoint has no wte.weight / wpe.weight; is it a GPT-2 checkpoint?")
    if "n_head" not in overrides:
        raise WeightsError(
            "Cannot infer n_head from the tensors of a bare weights file: put the model's "
            "config.json next to it, or pass n_head=... (e.g. load_pretrained(path, n_head=12))."
        )
    layers = {int(m.group(1)) for k in state if (m := re.match(r"h\.(\d+)\.", k))}
    vocab, n_embd = state["wte.weight"].shape
    fields = dict(vocab_size=int(vocab), n_embd=int(n_embd),
                  n_positions=int(state["wpe.weight"].shape[0]), n_layer=len(layers))
    return make_config(fields, overrides)


# ----------------------------------------------------------------------------- public API


def load_pretrained(path_or_name: str | os.PathLike, *, allow_pickle: bool = False,
                    **config_overrides) -> tuple[GPT2Config, Params]:
    """Loads GPT-2 weights into `(GPT2Config, params)`.

    Args:
      path_or_name: an HF model directory, a weights file, an OpenAI TF checkpoint directory,
        or a hub name (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `openai-community/gpt2`).
      allow_pickle: permit `pytorch_model.bin` (pickle; read with `weights_only=True`).
      **config_overrides: GPT2Config fields to set, e.g. `dtype="bfloat16"`, `attn_pdrop=0.0`,
        or `n_head=12` for a bare weights file without config.json.
    Returns:
      (cfg, params): params as jax arrays in `cfg.param_dtype`, e.g. `wte/embedding` [V, E].
    Raises:
      WeightsError: missing/corrupt file, missing tensor, wrong shape, config mismatch.
    """
    path = resolve(path_or_name)
    if path.is_dir():
        hf, state = read_directory(path, allow_pickle)
    else:
        state = read_weights_file(path, allow_pickle)
        hf = None if "n_head" in config_overrides else read_config_json(path.parent)
    if hf is None:
        cfg = infer_config(state, **config_overrides)
    else:
        cfg = config_from_hf(hf, **config_overrides)
    _check_vocab(state, cfg)
    params = hf_state_dict_to_params(state, cfg)
    return cfg, jax.tree.map(jnp.asarray, params)


def _check_vocab(state: Mapping[str, Any], cfg: GPT2Config) -> None:
    wte = state.get("wte.weight", state.get(HF_PREFIX + "wte.weight"))
    if wte is not None and wte.shape[0] != cfg.vocab_size:
        raise WeightsError(
            f"Vocabulary mismatch: wte.weight has {wte.shape[0]} rows but vocab_size="
            f"{cfg.vocab_size}; set vocab_size={wte.shape[0]} in config.json (or the override)."
        )


def save_pretrained(cfg: GPT2Config, params: Params, directory: str | os.PathLike, *,
                    overwrite: bool = False) -> Path:
    """Writes `config.json` + `model.safetensors` (HF `GPT2LMHeadModel` layout) atomically.

    Everything is written to a temporary sibling directory that is renamed into place, so an
    interrupted save never leaves a half-written model. An existing non-empty `directory` is
    only replaced with `overwrite=True`.

    Args:
      cfg: the model config.
      params: the params pytree (any float dtype; saved as is).
      directory: target directory.
    Returns:
      the directory path.
    """
    from safetensors.numpy import save_file

    target = Path(directory).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise WeightsError(
            f"{str(target)!r} exists and is not empty; choose a new directory or pass "
            "overwrite=True to replace it."
        )
    state = params_to_hf_state_dict(params, cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        hf = config_to_hf(cfg)
        hf["torch_dtype"] = str(next(iter(state.values())).dtype)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace_dir(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()
