"""Every config file in configs/ loads with each documented argument, and its model builds.

Generic on purpose: files are found by glob and their arguments read from their docstrings
(`configs/NAME.py:ARG`, `a|b|c` alternatives, `# or :ARG`), so new config files are covered
without editing this test. Building uses `jax.eval_shape` (no allocation).
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

import jax
import ml_collections
import pytest
from flax import linen as nn

from gpt2jax import GPT2Config, init_params
from gpt2jax.weights.pretrained import WeightsError, check_gpt2_layout

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
HELPERS = {"__init__", "common"}  # modules of configs/ that are not config files
GPT2_COUNTS = {"small": 124_439_808, "medium": 354_823_168, "large": 774_030_080,
               "xl": 1_557_611_200,
               # the 124M recipes pad the vocabulary to 50,304 rows: + 47 x 768
               "owt": 124_475_904, "fineweb10b": 124_475_904}


def _documented_args(name: str, doc: str) -> list[str | None]:
    """None (the default) plus every argument the docstring shows for configs/NAME.py."""
    args: list[str | None] = [None]
    for spec in re.findall(rf"configs/{re.escape(name)}\.py:([\w|/.-]+)", doc):
        args += spec.split("|")
    args += re.findall(r"#\s*or\s*:([\w/.-]+)", doc)
    # Upper-case words (NAME, ARG) are placeholders, not arguments.
    return list(dict.fromkeys(a for a in args if a is None or not a.isupper()))


def _cases() -> list[tuple[str, str | None]]:
    cases = []
    for path in sorted(CONFIG_DIR.glob("*.py")):
        if path.stem in HELPERS:
            continue
        module = importlib.import_module(f"configs.{path.stem}")
        cases += [(path.stem, arg) for arg in _documented_args(path.stem, module.__doc__ or "")]
    return cases


def test_config_files_are_found_and_documented():
    stems = {p.stem for p in CONFIG_DIR.glob("*.py")} - HELPERS
    assert "gpt2" in stems
    for stem in stems:
        module = importlib.import_module(f"configs.{stem}")
        assert callable(getattr(module, "get_config", None)), f"configs/{stem}.py: no get_config"
        assert module.__doc__ and f"configs/{stem}.py" in module.__doc__, (
            f"configs/{stem}.py: the docstring must show the command that runs it")
    args = dict.fromkeys(a for s, a in _cases() if s == "gpt2")
    assert list(args) == [None, "small", "medium", "large", "xl", "owt", "fineweb10b"]


@functools.lru_cache(maxsize=None)
def _abstract_params(cfg: GPT2Config):
    return jax.eval_shape(functools.partial(init_params, cfg, boxed=True), jax.random.key(0))


def _formula_count(cfg: GPT2Config) -> int:
    """Parameters of plain GPT-2 with a tied head, counted by hand."""
    e = cfg.n_embd
    block = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e)
    return (cfg.vocab_size + cfg.n_positions) * e + cfg.n_layer * block + 2 * e


@pytest.mark.parametrize("name,arg", _cases())
def test_config_loads_and_builds(name, arg):
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    assert isinstance(config, ml_collections.ConfigDict)
    if "model" not in config:
        return  # e.g. a data-preparation config: loading it is all there is to build
    cfg = GPT2Config.from_config(config.model)
    boxed = _abstract_params(cfg)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for leaf in leaves:  # every parameter carries one logical axis name (or None) per dim
        assert isinstance(leaf, nn.Partitioned), leaf
        assert len(leaf.names) == leaf.value.ndim and any(leaf.names), leaf
    count = sum(leaf.value.size for leaf in leaves)
    if name == "gpt2":
        assert count == GPT2_COUNTS[arg or "small"]
    try:
        check_gpt2_layout(cfg)
    except WeightsError:
        return  # an attention variant: no closed-form GPT-2 count
    assert count == _formula_count(cfg)


def _read_keys() -> set[str]:
    """Top-level config keys the library reads: `config.KEY` / `config["KEY"]` in gpt2jax/."""
    package = CONFIG_DIR.parent / "gpt2jax"
    text = "\n".join(p.read_text(encoding="utf-8") for p in package.rglob("*.py"))
    return set(re.findall(r"\bconfig\.(\w+)", text)) | set(
        re.findall(r"\bconfig\[\"(\w+)\"\]", text))


@pytest.mark.parametrize("name,arg", _cases())
def test_config_has_no_dead_keys(name, arg):
    """Every top-level key of a config file is read somewhere (a dead key misleads users:
    overriding it changes nothing)."""
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    dead = sorted(set(config.keys()) - _read_keys())
    assert not dead, f"configs/{name}.py:{arg or ''} sets keys nothing reads: {dead}"


def test_mode_config_lists_every_key_with_its_value_and_comment(tmp_path):
    # `run.py --help` / `--helpfull` listed no config.* keys: max_new_tokens, top_k, num_beams
    # were found only by reading configs/common.py.
    import json
    import subprocess
    import sys

    from configs import finetune
    from gpt2jax.cli import show_config

    repo = CONFIG_DIR.parent
    proc = subprocess.run(
        [sys.executable, "run.py", "--mode=config", "--config=configs/finetune.py",
         "--config.generate.num_beams=4", f"--output_json={tmp_path / 'c.json'}"],
        cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    config = finetune.get_config()
    keys = show_config.flatten(config)
    listed = {ln.split(" = ", 1)[0] for ln in lines[1:-1]}  # header, "wrote PATH"
    assert listed == set(keys)  # every leaf key, once
    comments = show_config.config_comments(str(repo / "configs/finetune.py"))
    uncommented = sorted(k for k in keys if not show_config._comment(comments, k))
    assert uncommented == ["mesh.rules"], uncommented  # a multi-line tuple, commented inside
    row = next(ln for ln in lines if ln.startswith("generate.num_beams = 4"))
    assert "# (set) beam search width" in row
    assert any(ln.startswith("generate.max_new_tokens = None") and "# overrides max_length"
               in ln for ln in lines)
    assert any(ln.startswith("train.learning_rate = 5e-05") and "peak learning rate" in ln
               for ln in lines)  # the file's value, common.py's comment
    assert json.loads((tmp_path / "c.json").read_text())["generate"]["num_beams"] == 4


def test_model_config_defaults_are_gpt2config_defaults():
    """configs/common.py:model_config() and GPT2Config's defaults are one source of truth:
    the same fields with the same values (the 124M GPT-2), so neither can drift alone."""
    import dataclasses

    from configs import common

    section = common.model_config()
    fields = {f.name: f.default for f in dataclasses.fields(GPT2Config)}
    assert set(section.keys()) == set(fields)
    assert {k: section[k] for k in fields} == fields
    assert GPT2Config.from_config(section) == GPT2Config()
