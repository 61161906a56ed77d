"""Reading GPT-2 weight files and hub downloads into HF PyTorch-layout numpy state dicts.

The formats behind `gpt2jax.weights.pretrained.load_pretrained`: safetensors (single or sharded), HF
Flax msgpack, PyTorch `.bin` (opt-in pickle), OpenAI's TF checkpoint, and hub names. Every
reader returns `{name: np.ndarray}` with HF `GPT2LMHeadModel` names (Conv1D weights [in, out]);
checking them against a config is `weights.py`'s job.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from gpt2jax.weights import hub
from gpt2jax.weights.hf_config import check_hf_config, json_type
from gpt2jax.errors import WeightsError

StateDict = dict[str, np.ndarray]
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def flax_msgpack_to_state_dict(tree: Mapping[str, Any]) -> StateDict:
    """HF Flax (`FlaxGPT2LMHeadModel`) params -> HF PyTorch-layout tensors.

    HF's Flax Conv1D stores `kernel` as [out, in] (the PyTorch Conv1D weight transposed, see
    transformers' `FlaxConv1D` and its PyTorch->Flax conversion) and an untied `lm_head`
    Dense kernel as [in, out] = [E, V]: both become the PyTorch weight by a transpose.
    """
    from flax.traverse_util import flatten_dict

    state = {}
    for path, value in flatten_dict(dict(tree)).items():
        path = [str(p) for p in path]
        if path[0] == "transformer":
            path = path[1:]
        leaf = path[-1]
        value = np.asarray(value)
        if leaf == "kernel":
            value = value.T
        path[-1] = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
        state[".".join(path)] = value
    return state


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(
            f"{str(path)!r} is not a readable safetensors file (truncated or corrupt: {e}); "
            "download or save it again."
        ) from e


def _read_sharded_safetensors(index: Path) -> StateDict:
    """The tensors of the shards a `model.safetensors.index.json` maps them to: an object whose
    `weight_map` maps tensor names to file names in the index's folder."""
    raw = _read_json(index)
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        got = (f"a JSON {json_type(raw)}" if not isinstance(raw, dict) else
               f"weight_map is the JSON {json_type(weight_map)} {json.dumps(weight_map)[:40]}")
        raise WeightsError(f"{str(index)!r} is not a safetensors index ({got}; expected an "
                           "object with a non-empty \"weight_map\": {tensor name: shard file "
                           "name}); re-download it.")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise WeightsError(f"{str(index)!r}: weight_map[{name!r}] = {shard!r} is not the "
                               "name of a file beside the index; re-download it.")
    state: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        state.update(_read_safetensors(index.parent / shard))
    return state


def _read_flax_msgpack(path: Path) -> StateDict:
    from flax import serialization

    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on bad bytes
        raise WeightsError(f"{str(path)!r} is not a readable Flax msgpack file ({e}).") from e
    return flax_msgpack_to_state_dict(tree)


def _read_torch_bin(path: Path, allow_pickle: bool) -> StateDict:
    if not allow_pickle:
        raise WeightsError(
            f"{str(path)!r} is a pickle-based PyTorch file; gpt2jax never unpickles unless asked. "
            "Prefer model.safetensors, or pass allow_pickle=True (read with "
            "torch.load(weights_only=True)) if you trust the file."
        )
    try:
        import torch
    except ImportError as e:
        raise WeightsError(f"Reading {str(path)!r} needs torch: pip install torch (CPU).") from e
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle/zip/runtime errors alike
        raise WeightsError(f"{str(path)!r} could not be read by torch.load ({e}).") from e
    return {k: v.float().numpy() if v.dtype.is_floating_point else v.numpy()
            for k, v in state.items()}


def _read_tf_checkpoint(directory: Path) -> tuple[dict, StateDict]:
    """OpenAI's released TF checkpoint: `hparams.json` + `model.ckpt.*` -> (hf config, state)."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise WeightsError(
            f"{str(directory)!r} holds an OpenAI TensorFlow checkpoint, which needs tensorflow "
            "to read: pip install tensorflow, or use the HF safetensors weights (e.g. 'gpt2')."
        ) from e
    hparams = _read_json(directory / "hparams.json")
    keys = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
    if not isinstance(hparams, dict) or not all(
            isinstance(hparams.get(k), int) and hparams[k] > 0 for k in keys):
        raise WeightsError(f"{str(directory / 'hparams.json')!r} must be an object with the "
                           f"positive integers {list(keys)}; re-download the checkpoint.")
    reader = tf.train.load_checkpoint(str(directory / "model.ckpt"))
    state = {}
    for name in reader.get_variable_to_shape_map():
        if not name.startswith("model/"):
            continue
        key = name[len("model/"):]
        key = re.sub(r"^h(\d+)/", r"h.\1/", key).replace("/", ".")
        key = re.sub(r"\.w$", ".weight", re.sub(r"\.g$", ".weight", re.sub(r"\.b$", ".bias", key)))
        key = {"wte": "wte.weight", "wpe": "wpe.weight"}.get(key, key)
        value = np.asarray(reader.get_tensor(name))
        state[key] = value[0] if key.endswith("weight") and value.ndim == 3 else value
    hf = {"vocab_size": hparams["n_vocab"], "n_positions": hparams["n_ctx"],
          "n_embd": hparams["n_embd"], "n_head": hparams["n_head"], "n_layer": hparams["n_layer"]}
    return hf, state


def read_weights_file(path: Path, allow_pickle: bool) -> StateDict:
    """One weights file (.safetensors, .safetensors.index.json, .msgpack, .bin) -> tensors."""
    if path.name.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.name.endswith(".safetensors.index.json"):
        return _read_sharded_safetensors(path)
    if path.suffix == ".msgpack":
        return _read_flax_msgpack(path)
    if path.suffix in (".bin", ".pt", ".pth"):
        return _read_torch_bin(path, allow_pickle)
    raise WeightsError(
        f"{str(path)!r}: unknown weights format; use .safetensors, .msgpack (HF Flax) or "
        ".bin (with allow_pickle=True)."
    )


_DIR_FILES = ("model.safetensors", "model.safetensors.index.json", "flax_model.msgpack",
              "pytorch_model.bin")


def read_directory(directory: Path, allow_pickle: bool) -> tuple[dict | None, StateDict]:
    """A model directory -> (HF config dict or None, tensors), formats in `_DIR_FILES` order."""
    if (directory / "hparams.json").is_file() and (directory / "model.ckpt.index").is_file():
        return _read_tf_checkpoint(directory)
    for name in _DIR_FILES:
        if (directory / name).is_file():
            return read_config_json(directory), read_weights_file(directory / name, allow_pickle)
    found = sorted(p.name for p in directory.iterdir())[:10]
    raise WeightsError(
        f"No GPT-2 weights in {str(directory)!r} (found {found}); expected one of "
        f"{list(_DIR_FILES)} with config.json, or OpenAI's hparams.json + model.ckpt.*."
    )


def read_config_json(directory: Path) -> dict | None:
    """`directory/config.json` as a dict, None if absent."""
    path = directory / "config.json"
    if not path.is_file():
        return None
    return check_hf_config(_read_json(path), str(path))


def _read_json(path: Path) -> Any:
    """The parsed JSON of `path`; WeightsError naming the file if it is not JSON (or UTF-8)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise WeightsError(f"{str(path)!r} is not valid JSON ({e}); fix or re-download it.")


def check_finite(tensors: Mapping[str, Any], what: str, fix: str) -> None:
    """Raises WeightsError if a floating tensor of `tensors` (name -> array) holds NaN or inf:
    such weights load and generate garbage. `what` names the source, `fix` the way on.

    One float64 sum per tensor is exact for this (float32/16 values cannot overflow it; NaN
    and inf propagate), and streams once over the weights; counts only for the message."""
    bad = []
    for name, value in tensors.items():
        a = np.asarray(value)
        if a.dtype.kind in "iub" or np.isfinite(np.sum(a, dtype=np.float64)):
            continue
        bad.append(f"{name} ({int(a.size - np.isfinite(a.astype(np.float32)).sum())} of "
                   f"{a.size} values)")
    if bad:
        more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
        raise WeightsError(f"{what} holds non-finite weights (NaN or inf) in {bad[0]}{more}; "
                           f"{fix}.")


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A local path as is; a hub name via the HF cache (`hub.download`); else a WeightsError."""
    path = Path(path_or_name).expanduser()
    if path.exists():
        return path
    text = str(path_or_name)
    if _HUB_NAME.match(text) and not text.startswith((".", "~")):
        return hub.download(text)
    raise WeightsError(f"{text!r} does not exist; pass a model directory, a weights file "
                       "or a hub name like 'gpt2'.")
