"""The README's Python quickstart runs, and `run.py --mode=generate` works end to end, both on a
tiny model saved with `save_pretrained`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from gpt2jax import GPT2, GPT2Config, init_params, load_pretrained, save_pretrained
from helpers import REPO, run_cli

TINY = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128)


def _quickstart_code() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Quickstart \(Python\)\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, "README.md has no '## Quickstart (Python)' section"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block, "the quickstart section has no ```python block"
    return block.group(1)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(TINY, jax.jit(init_params, static_argnums=0)(TINY, jax.random.key(0)), path)
    return path


def test_readme_quickstart_runs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPT2JAX_MODEL", str(tiny_model_dir))
    monkeypatch.chdir(tmp_path)
    exec(compile(_quickstart_code(), "README.md:quickstart", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert out.startswith("next token: ")
    assert "The quick brown fox jumps over the" in out
    cfg, params = load_pretrained(tmp_path / "my-gpt2")  # what the quickstart saved
    assert cfg == TINY


def _greedy(cfg, params, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding by full forward passes (no cache), the reference for the CLI."""
    apply = jax.jit(lambda p, x: GPT2(cfg).apply({"params": p}, x))
    for _ in range(steps):
        logits = apply(params, np.asarray([ids]))
        ids = ids + [int(np.argmax(logits[0, -1]))]
    return ids


def test_cli_generate_end_to_end(tiny_model_dir, tmp_path, tokenizer):
    prompt = "ROMEO: But soft, what light"
    out_json = tmp_path / "out.json"
    proc = run_cli(["--mode=generate", "--config=configs/gpt2.py:small",
                    f"--config.init_from={tiny_model_dir}", f"--prompt={prompt}",
                    "--config.generate.max_new_tokens=6", "--config.generate.eos_token_id=-1",
                    f"--output_json={out_json}"],
                   env={**os.environ, "PYTHONPATH": str(REPO)})  # asserts exit status 0
    assert proc.stdout.startswith(prompt)
    result = json.loads(out_json.read_text())
    cfg, params = load_pretrained(tiny_model_dir)
    expected = _greedy(cfg, params, tokenizer.encode_ordinary(prompt), steps=6)
    assert result[0]["tokens"][0] == expected
