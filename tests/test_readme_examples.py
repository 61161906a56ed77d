"""The README says what the code does: its Python blocks run as written (interpretability, the
lm-eval backend with its TaskManager, loading a training run) on tiny saved models, and its
statements about the tokenizer's sources, `init_from` and `log_every` match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpt2jax.data import bpe
from gpt2jax.data.tokenizers import Tokenizer, get_tokenizer
from gpt2jax.nn.model import GPT2Config
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.weights.pretrained import save_pretrained
from helpers import REPO, tiny_params

# the README and the documentation site's pages (docs/), where the sections now live; a
# page's title (its first line, "# Title") is read as a section heading like README's "## X"
README = "\n".join("#" + p.read_text(encoding="utf-8") for p in
                   [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
TINY = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128, attention_impl="xla")


def _section(heading: str) -> str:
    """The text of the docs section `heading` (#, ## or ###), up to the next heading (a
    `# comment` line inside a code block is not one)."""
    found = re.search(rf"^##+ {re.escape(heading)}\n(.*?)(?=^##+ |\Z)", README, re.M | re.S)
    assert found, f"README.md and docs/ have no section {heading!r}"
    return found.group(1)


def _python_block(heading: str, containing: str = "") -> str:
    blocks = re.findall(r"```python\n(.*?)```", _section(heading), re.S)
    blocks = [b for b in blocks if containing in b]
    assert blocks, f"the README section {heading!r} has no ```python block with {containing!r}"
    return blocks[0]


def _run(code: str, name: str, **variables) -> dict:
    scope = {"__name__": "readme", **variables}
    exec(compile(code, f"README.md:{name}", "exec"), scope)
    return scope


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 (the real 50,257-token vocabulary) in the HF layout."""
    path = tmp_path_factory.mktemp("readme_model") / "model"
    save_pretrained(TINY, tiny_params(TINY), path)
    return path


def test_interpretability_block_runs(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("GPT2JAX_MODEL", str(tiny_model_dir))
    scope = _run(_python_block("Interpretability"), "interpretability")
    out = capsys.readouterr().out
    assert "attention rows sum to 1: True" in out
    assert "its last entry is the model's logits: True" in out
    assert len(re.findall(r"^after \d blocks the next token would be ", out, re.M)) == 3
    assert scope["lens"].shape == (TINY.n_layer + 1, 1, scope["ids"].shape[1], 50257)
    moved = float(re.search(r"moves the last logits by up to (\S+)", out).group(1))
    assert moved > 0  # the hook reached the model: head 1.0's output really was zeroed


def test_lm_eval_python_example_runs_as_written(tiny_model_dir, monkeypatch, capsys):
    """Offline, from the repo root, on the local LAMBADA task ($GPT2JAX_DATA_DIR)."""
    monkeypatch.setenv("GPT2JAX_MODEL", str(tiny_model_dir))
    monkeypatch.chdir(REPO)
    code = _python_block("lm-evaluation-harness", "TaskManager(include_path=")
    scope = _run(code, "lm-eval")
    results = scope["res"]["results"]["lambada_openai_local"]
    assert set(results) >= {"acc,none", "perplexity,none"}
    assert scope["res"]["n-samples"]["lambada_openai_local"]["effective"] == 32
    assert "'acc,none'" in capsys.readouterr().out


def _tiny_workdir(root: Path, tokenizer_meta: dict) -> Path:
    cfg = GPT2Config(vocab_size=65, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    ckpt = Checkpointer(root / "run", keep=1, keep_best=0, async_save=False)
    ckpt.save(3, {"params": tiny_params(cfg)}, {}, {"model": cfg.to_dict(),
                                                    "tokenizer": tokenizer_meta})
    ckpt.manager.wait_until_finished()
    return root / "run"


def test_loading_a_training_run_block_runs(tmp_path):
    """`load_params_for_inference` returns the tokenizer as the saved dict (the README said a
    tokenizer); `load_model` returns the tokenizer itself."""
    chars = "".join(chr(32 + i) for i in range(65))
    meta = {"name": "char", "vocab_size": 65, "eot_id": None, "chars": chars}
    workdir = _tiny_workdir(tmp_path, meta)
    # nowhere a tokenizer object from load_params_for_inference (README once had `tok = ...`)
    assert not re.search(r"params, tok(enizer)? = [\w.]*load_params_for_inference", README)
    scope = _run(_python_block("Loading weights", "load_params_for_inference"),
                 "loading a training run", workdir=workdir)
    assert scope["tokenizer_meta"] == meta
    assert isinstance(scope["tokenizer"], Tokenizer) and scope["tokenizer"].name == "char"
    assert scope["tokenizer"].decode(scope["tokenizer"].encode("HI!")) == "HI!"
    assert scope["cfg"].vocab_size == 65


def test_tokenizer_offline_sources_are_the_codes(data_dir, tmp_path, monkeypatch):
    """The quickstart's comment names $GPT2JAX_DATA_DIR, and that alone is enough offline:
    no ranks variable, empty caches, downloads pointed at a closed port."""
    quickstart = _section("Quickstart (Python)")
    for source in ("$GPT2JAX_TIKTOKEN_RANKS", "$GPT2JAX_DATA_DIR/gpt2/gpt2.tiktoken",
                   "tiktoken's cache", "checksummed download"):
        assert source in quickstart, source
    monkeypatch.delenv(bpe.RANKS_ENV, raising=False)
    monkeypatch.setenv("GPT2JAX_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("GPT2JAX_DOWNLOAD_BASE_URL", "http://127.0.0.1:9")
    enc = get_tokenizer()
    assert enc.encode("Hello world") == [15496, 995]
    assert not (tmp_path / "cache").exists()  # nothing was downloaded


def test_init_from_is_documented_with_training_workdirs():
    """Generate, eval, the lm-eval backend and training's init_from load a training workdir
    (gpt2jax.weights.loader, run by test_loading_a_training_run_block_runs; training from a
    workdir: tests/test_loader.py)."""
    assert "a hub name or a training workdir" in _section("Generation")
    for name in ("gpt2.py", "eval.py", "shakespeare_char.py", "finetune.py"):
        text = (REPO / "configs" / name).read_text(encoding="utf-8")
        comment = re.search(r"c\.init_from = .*#(.*\n(\s+#.*\n)*)", text).group(1)
        assert "workdir" in comment, (name, comment)


def test_log_every_comment_says_what_the_loop_does():
    """The loop fetches the metrics every log_every steps and writes one metrics.jsonl record
    per step (tests/test_steps_per_call.py checks every step's record at log_every=3)."""
    text = (REPO / "configs" / "common.py").read_text(encoding="utf-8")
    comment = " ".join(line.split("#", 1)[1].strip() for line in re.search(
        r"c\.log_every = .*\n(\s+#.*\n)*", text).group(0).splitlines())
    assert "fetches of the train metrics" in comment and "one console line each" in comment
    assert "metrics.jsonl still records every step" in comment
