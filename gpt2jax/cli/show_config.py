"""`python run.py --mode=config --config=configs/FILE.py[:ARG] [--config.x=v]`: every key.

Prints the resolved config (the file's values with the command line's overrides applied),
one `key = value  # comment` line per field, so the keys that `--config.a.b=v` can set are
found without reading the config files. Comments are the one-line comments the config file
and `configs/common.py` give each field; `(set)` marks a value overridden on the command line.
`--output_json=PATH` also writes the resolved config as JSON (what a training run keeps in
`<workdir>/config.json`).
"""

from __future__ import annotations

import inspect
import io
import json
import re
import sys
import tokenize
from pathlib import Path
from typing import Any

import ml_collections

from gpt2jax.errors import ConfigError

# configs/common.py's section builders -> the key their fields live under.
SECTION_BUILDERS = {"model_config": "model", "data_config": "data", "train_config": "train",
                    "checkpoint_config": "checkpoint", "mesh_config": "mesh",
                    "generate_config": "generate", "eval_config": "eval",
                    "lm_eval_config": "eval", "sweep_config": ""}
_ASSIGN = re.compile(r"^\s*c\.([\w.]+)\s*=")           # c.key = ... / c.lm_eval.key = ...
_KWARG = re.compile(r"^\s*(\w+)\s*=")                  # key=value,  (inside a builder call)
_BUILDER = re.compile(r"(?:c\.(\w+)\s*=\s*)?(?:common\.)?(\w+_config)\(")  # ... = x_config(
_DEF = re.compile(r"^def (\w+)\(")


def field_comments(source: str) -> dict[str, str]:
    """{dotted key: comment} of the fields a config source assigns with a trailing comment.

    Understands `c.key = v  # comment` (inside `def get_config`, or inside a section builder
    `def train_config` under its section), keyword arguments of a builder call
    `c.train = common.train_config(batch_size=12,  # comment`, and `#` continuation lines.
    """
    comments: dict[str, str] = {}
    prefix = section = ""
    last = None
    lines = source.splitlines()
    rows = dict(_line_comments(source))
    for row, line in enumerate(lines, start=1):
        code = line.split("#", 1)[0] if row in rows else line
        if _DEF.match(code):
            prefix = section = SECTION_BUILDERS.get(_DEF.match(code).group(1), "")
        builder = _BUILDER.search(code)
        if builder and builder.group(2) in SECTION_BUILDERS:
            section = builder.group(1) or SECTION_BUILDERS[builder.group(2)]
        assign, kwarg = _ASSIGN.match(code), _KWARG.match(code)
        if row not in rows:
            last = _join(prefix, assign.group(1)) if assign else None
            continue
        if not code.strip():  # an indented comment line continues the previous field's
            if last in comments and rows[row].startswith("  "):
                comments[last] += " " + rows[row].strip()
            else:
                last = None
            continue
        last = (_join(prefix, assign.group(1)) if assign
                else _join(section, kwarg.group(1)) if kwarg and not builder else None)
        if last is not None:
            comments.setdefault(last, rows[row].strip())
    return comments


def _line_comments(source: str) -> list[tuple[int, str]]:
    """(line number, text after `#`) of every comment in `source` (strings ignored)."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string[1:]  # leading spaces kept: they mark a continuation line
            if text.strip() and not text.strip().startswith(("noqa", "type:")):
                out.append((tok.start[0], text))
    return out


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every leaf of `config`, in the config's order."""
    out = {}
    for key, value in config.items():
        path = _join(prefix, key)
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def describe(config: ml_collections.ConfigDict, comments: dict[str, str],
             overridden: frozenset[str] = frozenset()) -> str:
    """The `key = value  # comment` listing of `config` (module docstring)."""
    rows = [(f"{k} = {v!r}", ("(set) " if k in overridden else "") + _comment(comments, k))
            for k, v in flatten(config).items()]
    width = min(max(len(left) for left, _ in rows), 56)
    return "\n".join(f"{left:<{width}}  # {note}".rstrip(" #") if note else left
                     for left, note in rows)


def _comment(comments: dict[str, str], key: str) -> str:
    """The comment of `key`, else of its shortest known suffix (a sweep's `base.train.x` is
    `train.x`)."""
    parts = key.split(".")
    for i in range(len(parts)):
        if ".".join(parts[i:]) in comments:
            return comments[".".join(parts[i:])]
    return ""


def main(config, args) -> None:
    """Prints the resolved config (and writes it as JSON to `--output_json`)."""
    print(f"# {args.config_file or 'config'}: every key (override with --config.KEY=VALUE)")
    print(describe(config, config_comments(args.config_file),
                   frozenset(args.config_overrides)))
    if args.output_json:
        out = Path(args.output_json)
        try:
            out.write_text(json.dumps(json.loads(config.to_json_best_effort()), indent=2) + "\n",
                           encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"Cannot write --output_json={out} ({e.strerror}); pass a "
                              "writable file path.") from e
        print(f"wrote {out}")


def config_comments(config_file: str | None) -> dict[str, str]:
    """The comments of the config file's fields, over those of the shared sections it built
    on (`configs/common.py`, as the config file imported it)."""
    comments = {}
    common = sys.modules.get("configs.common")
    if common is not None:
        comments.update(field_comments(inspect.getsource(common)))
    path = Path((config_file or "").split(":", 1)[0])
    if config_file and path.is_file():
        comments.update(field_comments(path.read_text(encoding="utf-8")))
    return comments
