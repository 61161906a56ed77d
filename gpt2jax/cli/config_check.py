"""Config errors at the edge: one line with the fix (closest key, expected type), exit 2.

- `run.py` passes `parse_flags` to `absl.app.run`. The flags (and with them the `--config`
  file and its `--config.a.b=v` overrides) are parsed once, by absl and
  `ml_collections.config_flags`; what they raise (a `KeyError` with "Did you mean", an
  `IllegalFlagValueError`, a traceback inside a message) is rewritten here as one line.
- Library code and notebooks call `check_config(config, reference)` to compare a config
  (possibly edited by hand) with the one its config file produces.

Config files are Python: loading one runs its code. They must be trusted like code.
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any, Sequence

import ml_collections
from absl import flags

from gpt2jax.errors import ConfigError, GPT2JaxError

CONFIG_FLAG = "config"
USER_ERROR_EXIT = 2  # run.py's exit status for user errors
_EXAMPLE = {"int": "1", "float": "0.1", "bool": "true", "tuple": '"(1, 2)"'}  # --config.x=...


def closest(name: str, choices: Sequence[str]) -> str | None:
    """The choice most similar to `name` (difflib ratio >= 0.6), None if none is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_config(
    config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = ""
) -> None:
    """Checks that every key of `config` exists in `reference` with a compatible type.

    Ints are accepted where floats are expected; None matches anything. Raises ConfigError
    for the first unknown key (with the closest known one) or wrongly typed value.
    """
    for key in config.keys():
        path, value, expected = f"{prefix}{key}", config[key], reference.get(key)
        if key not in reference:
            best = closest(key, list(reference.keys()))
            hint = f"did you mean {best!r}?" if best else f"known keys: {sorted(reference)}."
            raise ConfigError(f"Unknown config key {path!r}; {hint}")
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


# ----------------------------------------------------------------------------- run.py's flags


def _overrides(argv: Sequence[str]) -> list[str]:
    """The dotted paths of every `--config.a.b[=v]` / `--noconfig.a.b` in `argv`."""
    pattern = re.compile(rf"^--?(?:no)?{CONFIG_FLAG}\.([^=]+)")
    return [m.group(1) for m in map(pattern.match, argv) if m]


def _unknown_key(text: str, argv: Sequence[str]) -> str:
    """ml_collections' KeyError/AttributeError text for a bad override path, as one line.

    It names the missing key (quoted) and, when one is close, adds `Did you mean "x" instead
    of "y"?`; the override it came from is the one with that key among its parts.
    """
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    missing = suggestion.group(2) if suggestion else text.split("\n")[0].strip("'\"")
    for path in _overrides(argv):
        parts = path.split(".")
        if missing in parts:
            i = parts.index(missing)
            fix = (f"did you mean {'.'.join(parts[:i] + [suggestion.group(1)])!r}?" if suggestion
                   else "see the config file for its keys.")
            return (f"Unknown config key {path!r} (no {missing!r} in "
                    f"{'.'.join(parts[:i]) or 'the top level'}); {fix}")
    return f"bad --{CONFIG_FLAG} override {_overrides(argv)}: {' '.join(text.split())}"


def _bad_value(text: str) -> str:
    """absl's `flag --NAME=VALUE: reason` as one line naming the expected type and an example."""
    config_file = re.match(rf"flag --{CONFIG_FLAG}=(.*?): ", text)
    if config_file:  # get_config raised: the last line of the traceback in the message
        return f"Config file {config_file.group(1)!r} failed: {text.strip().splitlines()[-1]}"
    field = re.match(rf"flag --{CONFIG_FLAG}\.([\w.]+)=(.*?): ", text, re.S)
    if not field:
        return " ".join(text.split())
    path, raw = field.groups()
    current = flags.FLAGS[CONFIG_FLAG].value  # parsed, overrides so far applied
    for part in path.split("."):
        current = current[part]
    if isinstance(current, ml_collections.ConfigDict):
        return (f"--{CONFIG_FLAG}.{path} is a section; override one of its keys "
                f"({sorted(current.keys())}).")
    kind = flags.FLAGS[f"{CONFIG_FLAG}.{path}"].parser.flag_type()
    example = repr(current) if kind in ("int", "float") and current is not None else None
    return (f"--{CONFIG_FLAG}.{path}={raw!r} is not a valid {kind} (current value "
            f"{current!r}); pass e.g. --{CONFIG_FLAG}.{path}={example or _EXAMPLE.get(kind)}.")


def explain(e: Exception, argv: Sequence[str]) -> str:
    """One line naming the problem and the fix, for an error of parsing run.py's `argv`."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    order = re.match(rf"Flag --{CONFIG_FLAG}\.(\S+) is provided after --{CONFIG_FLAG}\.(\S+) ",
                     text)
    missing = re.search(r"No such file or directory: '([^']*)'", text)
    if isinstance(e, flags.IllegalFlagValueError):
        return _bad_value(text)
    if order:  # ml_collections' FlagOrderError: a section given after one of its keys
        return (f"--{CONFIG_FLAG}.{order[1]} is a section and would overwrite "
                f"--{CONFIG_FLAG}.{order[2]}; override one of its keys instead.")
    if isinstance(e, flags.Error):
        return f"{' '.join(text.split())}; run `python run.py --helpshort` to list the flags."
    if isinstance(e, (KeyError, AttributeError)):
        return _unknown_key(text, argv)
    if isinstance(e, OSError) and missing:
        return (f"Config file {missing.group(1)!r} does not exist; pass e.g. "
                f"--{CONFIG_FLAG}=configs/gpt2.py:small.")
    if isinstance(e, GPT2JaxError):
        return text
    return f"bad --{CONFIG_FLAG} (overrides {_overrides(argv)}): {' '.join(text.split())}"


def _check_tuples() -> None:
    """config_flags reads `--config.x=3` for a tuple field as (3,): each element must be of
    the kind of the config file's elements (e.g. mesh.rules' (name, axes) pairs)."""
    for path, value in flags.FLAGS[CONFIG_FLAG].override_values.items():
        default = flags.FLAGS[f"{CONFIG_FLAG}.{path}"].default  # a list for tuple fields
        if isinstance(value, tuple) and default and not all(
                _compatible(v, default[0]) for v in value):
            raise ConfigError(f"--{CONFIG_FLAG}.{path}={value!r} is not a valid tuple of "
                              f"elements like {default[0]!r}; pass e.g. "
                              f"--{CONFIG_FLAG}.{path}=\"{tuple(default[:2])!r}\".")


def parse_flags(argv: list[str]) -> list[str]:
    """`flags_parser` for `absl.app.run`: parses the flags once; errors become one line.

    Every problem is printed as `error: ...` on stderr and exits with status 2.
    """
    try:
        rest = flags.FLAGS(argv)
        if flags.FLAGS[CONFIG_FLAG].value is not None:
            # a config file that failed to load raises its OSError on first use
            flags.FLAGS[CONFIG_FLAG].value.keys()
            _check_tuples()
        return rest
    except (flags.Error, LookupError, AttributeError, OSError, TypeError, ValueError,
            SyntaxError, ImportError, GPT2JaxError) as e:  # flags, config file, overrides
        print(f"error: {explain(e, argv)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
