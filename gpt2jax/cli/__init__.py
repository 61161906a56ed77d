"""Command-line modes of `run.py`, one module per mode, each exposing `main(config, args)`.

`args` is a `CliArgs` holding the non-config flags; `config` is the ml_collections
ConfigDict given by `--config`. Library code is called from here; nothing here is needed
by notebook users.
"""

from __future__ import annotations

import dataclasses
import importlib

from gpt2jax.errors import ConfigError

# mode -> module under gpt2jax.cli that implements it
MODES = {
    "generate": "gpt2jax.cli.generate",
    "train": "gpt2jax.cli.train",
    "eval": "gpt2jax.cli.eval",
    "prepare": "gpt2jax.cli.prepare",
    "sweep": "gpt2jax.cli.sweep",
    "config": "gpt2jax.cli.show_config",
    "plan": "gpt2jax.cli.plan",
}


@dataclasses.dataclass(frozen=True)
class CliArgs:
    """Flags of run.py that are not part of the config."""

    workdir: str | None = None
    prompt: str | None = None
    prompt_file: str | None = None
    output_json: str | None = None
    config_file: str | None = None  # --config's value, e.g. "configs/gpt2.py:small"
    config_overrides: tuple[str, ...] = ()  # the dotted keys set by --config.KEY=VALUE
    compile_n_layer: int = 0  # --mode=plan: compile a copy with this many layers (0 = all)


def run_mode(mode: str, config, args: CliArgs) -> None:
    """Imports the module of `mode` and calls its `main(config, args)`."""
    if mode not in MODES:
        raise ConfigError(f"Unknown --mode={mode!r}; choose one of {sorted(MODES)}.")
    try:
        module = importlib.import_module(MODES[mode])
    except ModuleNotFoundError as e:
        if e.name == MODES[mode]:
            raise ConfigError(f"--mode={mode} is not implemented yet.") from e
        raise
    module.main(config, args)
