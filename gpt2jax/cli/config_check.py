"""Config checks at the edge: unknown keys get the closest known key, wrong types get the type.

Two users:

- `run.py` passes `parse_flags` to `absl.app.run`. It loads the `--config` file once itself and
  checks every `--config.a.b=v` override against it *before* absl parses the flags, because
  ml_collections raises a raw `KeyError`/`AttributeError` (a stack trace) for an unknown key and
  absl prints a two-line "FATAL Flags parsing error" for a bad value. Problems become one line
  on stderr and exit status 2, like every other user error of run.py.
- Library code and notebooks call `check_config(config, reference)` to compare a config
  (possibly edited by hand) with the one its config file produces.

Config files are Python: loading one runs its code. They must be trusted like code.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Sequence

import ml_collections
from absl import flags

from gpt2jax.errors import ConfigError

CONFIG_FLAG = "config"
USER_ERROR_EXIT = 2  # run.py's exit status for user errors


def closest(name: str, choices: Sequence[str]) -> str | None:
    """The choice most similar to `name` (difflib ratio >= 0.6), None if none is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    best = closest(name, choices)
    if best is not None:
        return f"did you mean {best!r}?"
    return f"known keys: {sorted(choices)}."


def lookup(config: ml_collections.ConfigDict, path: str) -> tuple[Any, type | None]:
    """Value and declared type of the dotted `path` in `config`.

    Raises:
        ConfigError: naming the first unknown component and the closest known key.
    """
    node, parts = config, path.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the top level"
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(
                f"Config key {path!r}: {where} is a {type(node).__name__}, not a section; "
                f"override {'.'.join(parts[:i])} itself."
            )
        if part not in node:
            known = list(node.keys())
            hint = _did_you_mean(part, known)
            best = closest(part, known)
            if best is not None:
                hint = f"did you mean {'.'.join(parts[:i] + [best])!r}?"
            raise ConfigError(f"Unknown config key {path!r} (no {part!r} in {where}); {hint}")
        parent, node = node, node[part]
    return node, parent.get_type(parts[-1])


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_value(path: str, raw: str, current: Any, field_type: type | None) -> Any:
    """Converts the command-line string `raw` to the type of the field at `path`.

    Raises:
        ConfigError: naming the expected type, the current value and an example.
    """
    kind = field_type or type(current)

    def bad(example: str) -> ConfigError:
        return ConfigError(
            f"--{CONFIG_FLAG}.{path}={raw!r} is not a valid {kind.__name__} (current value "
            f"{current!r}); pass e.g. --{CONFIG_FLAG}.{path}={example}."
        )

    if kind is bool:
        if raw.lower() not in _BOOL_WORDS:
            raise bad("true")
        return _BOOL_WORDS[raw.lower()]
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise bad(str(current if isinstance(current, int) else 1)) from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise bad(repr(float(current)) if current is not None else "0.1") from None
    if kind in (tuple, list):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise bad('"(1, 2)"') from None
        if not isinstance(value, (tuple, list)):
            raise bad('"(1, 2)"')
        return value
    return raw


def check_config(
    config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = ""
) -> None:
    """Checks that every key of `config` exists in `reference` with a compatible type.

    Ints are accepted where floats are expected; None matches anything. Raises ConfigError
    for the first unknown key (with the closest known one) or wrongly typed value.
    """
    for key in config.keys():
        path = f"{prefix}{key}"
        if key not in reference:
            raise ConfigError(
                f"Unknown config key {path!r}; {_did_you_mean(key, list(reference.keys()))}"
            )
        value, expected = config[key], reference[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"Config key {path!r} must be a section (ConfigDict), got "
                                  f"{type(value).__name__}; keep the structure of the config file.")
            check_config(value, expected, prefix=f"{path}.")
        elif not _compatible(value, expected):
            raise ConfigError(
                f"Config key {path!r} must be a {type(expected).__name__} like {expected!r}, "
                f"got {type(value).__name__} {value!r}; fix the value."
            )


def _compatible(value: Any, expected: Any) -> bool:
    if value is None or expected is None:
        return True
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float))
    if isinstance(expected, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(expected))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Runs `get_config(arg)` of a config file given as `path.py[:arg]` (runs its code!)."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"Config file {path!r} does not exist; pass e.g. "
                          f"--{CONFIG_FLAG}=configs/gpt2.py:small.")
    module_spec = importlib.util.spec_from_file_location("_gpt2jax_checked_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except (ValueError, KeyError, TypeError, AttributeError, SyntaxError, ImportError) as e:
        raise ConfigError(f"Config file {spec!r} failed: {type(e).__name__}: {e}") from e


def _overrides(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str | None]]]:
    """`--config` spec and [(path, raw value or None)] from the command line."""
    spec, out = None, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, raw = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == CONFIG_FLAG:
            spec = raw if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        elif arg.startswith("-") and name.startswith(f"{CONFIG_FLAG}."):
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                raw, eq = argv[i + 1], "="
                i += 1
            out.append((name[len(CONFIG_FLAG) + 1:], raw if eq else None))
        elif arg.startswith("-") and name.startswith(f"no{CONFIG_FLAG}."):
            out.append((name[len(CONFIG_FLAG) + 3:], None))
        i += 1
    return spec, out


def check_argv(argv: Sequence[str]) -> None:
    """Checks `--config` and every `--config.x.y=v` of `argv` (ConfigError on the first bad)."""
    spec, overrides = _overrides(argv)
    if spec is None:
        return  # run.py itself says that --config is required
    config = load_config_file(spec)
    for path, raw in overrides:
        current, field_type = lookup(config, path)
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"--{CONFIG_FLAG}.{path} is a section; override one of its keys "
                              f"({sorted(current.keys())}).")
        if raw is None:
            if (field_type or type(current)) is not bool:
                raise ConfigError(f"--{CONFIG_FLAG}.{path} needs a value; pass "
                                  f"--{CONFIG_FLAG}.{path}=VALUE (current value {current!r}).")
            continue
        parse_value(path, raw, current, field_type)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


def parse_flags(argv: list[str]) -> list[str]:
    """`flags_parser` for `absl.app.run`: checks the config first, then parses the flags.

    Every problem is printed as one line `error: ...` on stderr and exits with status 2.
    """
    try:
        check_argv(argv[1:])
    except ConfigError as e:
        _fail(str(e))
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{' '.join(str(e).split())}; run `python run.py --helpshort` to list the flags.")
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        _fail(f"bad --{CONFIG_FLAG} override: {' '.join(str(e).split())}")
    return []  # unreachable
