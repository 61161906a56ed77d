"""A training workdir's weights for inference: which checkpoint, its model, its params.

The read-only side of `training/checkpoint.py` (which writes and resumes runs), kept here so
that loading a model (`weights/loader.py`) needs nothing from `training/`. A checkpoint is
`<workdir>/checkpoints/<step>/` with the items `state` (params, optimizer state), `data` and
`meta` (the model's GPT2Config fields, the tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from gpt2jax.errors import ConfigError, WeightsError
from gpt2jax.nn.model import GPT2Config, init_params
from gpt2jax.nn.scan import to_layout

ITEMS = ("state", "data", "meta")
# GPT2Config fields that may change between a run and its resume (no effect on shapes).
RESUMABLE_CHANGES = frozenset(
    {"embd_pdrop", "attn_pdrop", "resid_pdrop", "dtype", "attention_impl", "remat"}
)
# The parameter layout (nn/scan.py): inference loading converts it, but a resumed run keeps
# the saved one (its optimizer state is laid out alike), so check_same_model refuses a change.
LAYOUT_FIELDS = frozenset({"scan_layers"})
# What a run takes from its config when it loads a pretrained or saved model.
LOAD_OVERRIDES = RESUMABLE_CHANGES | LAYOUT_FIELDS
# GPT2Config fields that older checkpoints do not record, and the value they had then.
UNRECORDED = {"scan_layers": False}


class CheckpointUnreadableError(WeightsError):
    """A finalized checkpoint cannot be read (damaged files); it was left as it is."""


def checkpoint_dir(workdir: str | Path) -> Path:
    """Where a run keeps its checkpoints: `<workdir>/checkpoints`."""
    return Path(workdir).expanduser().resolve() / "checkpoints"


def load_params_for_inference(workdir: str | Path, step: int | None = None,
                              **config_overrides) -> tuple[GPT2Config, Any, dict]:
    """Loads the params of a training run for generation/evaluation (no optimizer state).

    Args:
      workdir: a training workdir (holding `checkpoints/`).
      step: which checkpoint; None = the latest.
      **config_overrides: GPT2Config fields to change, e.g. `dtype="bfloat16"`;
        `scan_layers` converts the params to that layout (default: as saved).
    Returns:
      (cfg, params, tokenizer_meta): params as host-local jax arrays (e.g. `wte/embedding`
      [V, E]); tokenizer_meta is the dict the run saved (e.g. {"name": "char", ...}).
    """
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        raise WeightsError(
            f"No checkpoints in {directory}; pass the --workdir of a training run "
            "(python run.py --mode=train ...)."
        )
    manager = ocp.CheckpointManager(directory, item_names=ITEMS)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise WeightsError(f"{directory} holds no finished checkpoint; train longer or check it.")
    meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    saved = {**UNRECORDED, **meta["model"]}
    check_context(saved, config_overrides, directory / str(step), manager)
    scan_layers = config_overrides.pop("scan_layers", saved["scan_layers"])
    cfg = GPT2Config(**dict(saved, **config_overrides))  # restored in the saved layout
    shapes = jax.eval_shape(_abstract_params(cfg))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)}
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        )))
    manager.close()
    params = to_layout(restored["state"]["params"], scan_layers)
    return cfg.replace(scan_layers=scan_layers), params, dict(meta.get("tokenizer", {}))


def check_context(saved: dict, overrides: dict, where, manager=None) -> None:
    """Refuses (ConfigError) overrides a saved model cannot take: any field but
    `LOAD_OVERRIDES`, and `n_positions` unless its positions are defined at every position
    (rope / alibi / none / sinusoidal); `manager` is closed first."""
    bad = sorted(set(overrides) - LOAD_OVERRIDES - {"n_positions"})
    error = None
    if bad:
        error = ConfigError(f"A loaded model keeps its saved {bad}; only "
                            f"{sorted(LOAD_OVERRIDES)} may be changed.")
    elif ("n_positions" in overrides and saved.get("position", "learned") == "learned"
          and overrides["n_positions"] != saved["n_positions"]):
        error = learned_positions_error(where, saved["n_positions"], overrides["n_positions"])
    if error is not None:
        if manager is not None:
            manager.close()
        raise error


def learned_positions_error(where, saved: int | None, asked: int) -> ConfigError:
    """The one-line error for a longer context asked of a model with learned positions."""
    table = f"wpe [{saved}, n_embd]" if saved else "wpe, [n_positions, n_embd]"
    return ConfigError(
        f"The model in {where} has learned positions ({table}): it cannot run at "
        f"n_positions={asked}. Keep its own context (evaluate long texts in strided windows), "
        "or train with --config.model.position=rope|alibi|none|sinusoidal, which define every "
        "position.")


def _abstract_params(cfg: GPT2Config):

    def fn():
        return init_params(cfg, jax.random.PRNGKey(0))

    return fn
