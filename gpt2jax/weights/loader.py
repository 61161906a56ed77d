"""The one way to load a model for generation or evaluation: (GPT2Config, params, tokenizer).

A source is one of
- a training workdir (holding `checkpoints/`): its latest (or `step`) Orbax checkpoint, the
  model config it saved, and the tokenizer it trained with (a char model comes back with its
  character vocabulary);
- anything `load_pretrained` reads: an HF directory (safetensors, msgpack, torch bin), a bare
  weights file, OpenAI's TF checkpoint directory, a hub name (`gpt2`); the tokenizer is GPT-2
  BPE, or the `gpt2jax_tokenizer.json` that a training run's HF export wrote beside it.

A loaded model keeps its shapes; the only fields a caller may change are
`saved_run.LOAD_OVERRIDES` (compute dtype, attention kernel, dropout, remat, layer layout),
the one list that training's `init_from` uses too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Collection, Mapping

import jax

from gpt2jax.data.tokenizers import Tokenizer, get_tokenizer, load_tokenizer, tokenizer_from_json
from gpt2jax.errors import ConfigError, GPT2JaxError
from gpt2jax.nn.model import GPT2Config, init_params
from gpt2jax.weights import workdir as saved_run
from gpt2jax.weights.pretrained import load_pretrained

Params = dict[str, Any]
# The file a training run's HF export (`<workdir>/hf`) writes beside the weights.
EXPORT_TOKENIZER = "gpt2jax_tokenizer.json"


def overrides_from(model_config: Mapping[str, Any]) -> dict:
    """The `LOAD_OVERRIDES` fields of `config.model` (those it has), to apply to a loaded
    model: e.g. {"dtype": "bfloat16", "attention_impl": "xla"}."""
    return {k: model_config[k] for k in sorted(saved_run.LOAD_OVERRIDES) if k in model_config}


def check_overrides(overrides: Mapping[str, Any]) -> None:
    """Raises ConfigError for a field a loaded model cannot change (its shapes are saved);
    `n_positions` is checked against the loaded model (`saved_run.check_context`)."""
    bad = sorted(set(overrides) - saved_run.LOAD_OVERRIDES - {"n_positions"})
    if bad:
        raise ConfigError(f"A loaded model keeps its saved {bad}; only "
                          f"{sorted(saved_run.LOAD_OVERRIDES)} may be changed (and "
                          "n_positions, for position schemes that define every position).")


def explicit_overrides(model_config: Mapping[str, Any], explicit: Collection[str]) -> dict:
    """`overrides_from(model_config)` plus `n_positions` when `model.n_positions` is among
    the `explicit` keys (set on the command line): a longer context for a model whose
    positions allow it, refused for learned positions."""
    out = overrides_from(model_config)
    if "model.n_positions" in explicit:
        out["n_positions"] = model_config["n_positions"]
    return out


def check_explicit(cfg: GPT2Config, model_config: Mapping[str, Any], explicit: Collection[str],
                   source: str) -> None:
    """Raises ConfigError for an explicitly set `model.X` (e.g. `--config.model.n_layer=2`)
    that the model loaded from `source` fixes to another value: it could not take effect.

    Args:
      cfg: the loaded model's config (with the overrides that did take effect).
      model_config: `config.model`.
      explicit: dotted config keys set explicitly (run.py: the `--config.KEY=V` overrides).
      source: where the model came from, for the message.
    """
    for key in sorted(explicit):
        field = key.removeprefix("model.")
        if field == key or not hasattr(cfg, field):
            continue
        if getattr(cfg, field) != model_config[field]:
            raise ConfigError(
                f"--config.model.{field}={model_config[field]!r} cannot take effect: the model "
                f"loaded from {source} has {field}={getattr(cfg, field)!r}. Drop the override; "
                f"a loaded model may change only {sorted(saved_run.LOAD_OVERRIDES)} (and "
                "n_positions, for rope / alibi / none / sinusoidal positions).")


def is_workdir(source: str | os.PathLike) -> bool:
    """Whether `source` is a training run directory (it holds `checkpoints/`)."""
    return bool(str(source)) and (Path(source) / "checkpoints").is_dir()


def load_model(source: str | os.PathLike, *, step: int | None = None, ranks_path: str = "",
               **overrides) -> tuple[GPT2Config, Params, Tokenizer]:
    """(cfg, params, tokenizer) of a training workdir or a pretrained source (module doc).

    Args:
      source: workdir, HF directory, weights file, TF checkpoint directory or hub name.
      step: the checkpoint of a workdir to load; None = the latest.
      ranks_path: the GPT-2 `gpt2.tiktoken` file for a BPE tokenizer ("" = searched).
      **overrides: `LOAD_OVERRIDES` fields, e.g. `dtype="bfloat16"`.
    Returns:
      cfg, params (`wte/embedding` [V, E], ...), and the model's `Tokenizer`.
    Raises:
      CheckpointUnreadableError: a workdir checkpoint cannot be read (it is left as it is).
    """
    check_overrides(overrides)
    if is_workdir(source):
        return _load_workdir(Path(source), step, ranks_path, overrides)
    if step is not None:
        raise ConfigError(f"step={step} applies to training workdirs only; {source} holds no "
                          "checkpoints/ folder.")
    context = overrides.pop("n_positions", None)
    cfg, params = load_pretrained(source, **overrides)
    if context is not None and context != cfg.n_positions:  # HF / OpenAI: learned wpe only
        raise saved_run.learned_positions_error(source, cfg.n_positions, context)
    return cfg, params, _export_tokenizer(Path(source), ranks_path)


def model_for_config(config, ranks_path: str = "", explicit: Collection[str] = ()
                     ) -> tuple[GPT2Config, Params, Tokenizer]:
    """The model of a CLI config: `config.init_from` with `overrides_from(config.model)`, or
    (init_from "") a random init of `config.model` with `config.seed` (smoke tests), GPT-2 BPE.

    `explicit`: the config keys set on the command line; an explicit `model.X` that the
    loaded model fixes to another value is refused (`check_explicit`).
    """
    if config.init_from:
        loaded = load_model(config.init_from, ranks_path=ranks_path,
                            **explicit_overrides(config.model, explicit))
        check_explicit(loaded[0], config.model, explicit, config.init_from)
        return loaded
    cfg = GPT2Config.from_config(config.model)
    return cfg, init_params(cfg, jax.random.key(config.seed)), get_tokenizer(ranks_path)


def _load_workdir(workdir: Path, step: int | None, ranks_path: str,
                  overrides: dict) -> tuple[GPT2Config, Params, Tokenizer]:
    try:
        cfg, params, meta = saved_run.load_params_for_inference(workdir, step, **overrides)
    except GPT2JaxError:
        raise
    except Exception as e:  # noqa: BLE001 - TensorStore / JSON errors have no common type
        raise _unreadable(workdir, step, e) from e
    if meta:
        return cfg, params, tokenizer_from_json(meta, ranks_path)
    saved = workdir / "tokenizer.json"  # older runs kept the tokenizer only here
    return cfg, params, (load_tokenizer(saved, ranks_path) if saved.is_file()
                         else get_tokenizer(ranks_path))


def _export_tokenizer(source: Path, ranks_path: str) -> Tokenizer:
    """The tokenizer a training run's HF export saved beside the weights, else GPT-2 BPE."""
    folder = source if source.is_dir() else source.parent
    saved = folder / EXPORT_TOKENIZER
    return load_tokenizer(saved, ranks_path) if saved.is_file() else get_tokenizer(ranks_path)


def _finalized_steps(workdir: Path) -> list[int]:
    """The steps of `<workdir>/checkpoints/<step>` folders (Orbax renames a finished save to
    its bare step number; unfinished ones carry a tmp suffix)."""
    directory = saved_run.checkpoint_dir(workdir)
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _unreadable(workdir: Path, step: int | None, error: Exception):
    """The one-line CheckpointUnreadableError of a checkpoint that loading failed on."""
    steps = _finalized_steps(workdir)
    step = steps[-1] if step is None and steps else step
    path = saved_run.checkpoint_dir(workdir) / str(step)
    first = (str(error).strip().splitlines() or [""])[0]
    first = first.split(" See full TensorStore details")[0]  # then a multi-line repr
    older = [s for s in steps if step is not None and s < step]
    way = (f"load step {older[-1]} instead (`load_model(workdir, step={older[-1]})`, or move "
           f"{path} out of {path.parent} for the command line)" if older else
           "there is no older checkpoint: train again, or move it elsewhere")
    return saved_run.CheckpointUnreadableError(
        f"Checkpoint {path} cannot be read ({type(error).__name__}: {first[:200]}); it was "
        f"left as it is. To go on, {way}.")
