"""The lm-eval backend's plumbing: `run.py --mode=eval --config=configs/eval.py:lm_eval`
(sharded over 2 CPU devices) equals the in-process backend on one device; a training
workdir loads the same model as its HF export; one compile per bucket; shared rows; the page
split of WikiText; bad input is one clear error. Parity with lm-eval's hf backend is
tests/test_harness.py."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import jax
import numpy as np
import pytest
from lm_eval.api.registry import get_model

from gpt2jax.training.checkpoint import Checkpointer, load_params_for_inference
from gpt2jax.errors import ConfigError
from gpt2jax.eval import harness, harness_core
from gpt2jax.eval.harness_data import wikitext_pages
from gpt2jax.nn.model import GPT2Config, init_params
from gpt2jax.weights.pretrained import save_pretrained

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "configs" / "lm_eval_tasks"
CFG = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, attention_impl="xla")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(cfg, params, HF dir, training workdir) of one tiny random GPT-2."""
    params = init_params(CFG, jax.random.key(1))
    root = tmp_path_factory.mktemp("harness_model")
    save_pretrained(CFG, params, root / "hf")
    ckpt = Checkpointer(root / "run", keep=1, keep_best=0, async_save=False)
    meta = {"model": CFG.to_dict(), "tokenizer": {"name": "gpt2"}}
    ckpt.save(5, {"params": params}, {}, meta)
    ckpt.manager.wait_until_finished()
    return CFG, params, root / "hf", root / "run"


def test_registered_as_gpt2jax_next_to_lm_evals_own_backends():
    assert get_model("gpt2jax") is harness.GPT2JaxLM
    assert get_model("hf").__name__ == "HFLM"


def test_bucket_lengths():
    assert [harness_core.bucket_length(n, 1024) for n in (1, 16, 17, 25, 33, 49, 700, 2000)] \
        == [16, 16, 20, 28, 40, 56, 768, 1024]  # 4 steps per octave: at most 25% padding
    assert [harness_core.bucket_length(n, None, 4, steps=2) for n in (1, 5, 7, 9, 13, 100)] \
        == [4, 6, 8, 12, 16, 128]


def test_one_compile_per_bucket_and_padding_changes_nothing(model):
    cfg, params, _, _ = model
    scorer = harness_core.Scorer(cfg, params, batch_size=4, max_length=64)
    rng = np.random.default_rng(0)
    pair = lambda n: (rng.integers(0, 50257, n - 2).tolist(), rng.integers(0, 50257, 3).tolist())
    short, mid, long_ = pair(10), pair(30), pair(100)  # inputs 10, 30, 64 -> buckets 16, 32, 64
    harness_core._score_fn.cache_clear()  # a fresh jit: other tests may have compiled CFG
    before = len(harness_core.COMPILED)
    alone = [scorer.score([p])[0] for p in (short, mid, long_)]  # [1 row, length, k=4]
    assert harness_core.COMPILED[before:] == [(cfg, 1, 16, 4), (cfg, 1, 32, 4), (cfg, 1, 64, 4)]
    together = scorer.score([long_, mid, short])  # 3 rows -> 4, all padded to the 64 bucket
    again = scorer.score([short, short])  # one shared row scoring 2 x 3 positions
    assert harness_core.COMPILED[before:][3:] == [(cfg, 4, 64, 4), (cfg, 1, 16, 6)]
    for a, b in zip(alone, together[::-1]):
        assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == b[1]
    assert again[0] == again[1] == alone[0]


def test_shared_model_inputs_run_one_row_and_score_as_alone(model):
    """Multiple choice: requests whose model input is equal, or a prefix of another's, read
    one forward row (lm-eval's hf backend shares equal inputs of one-token continuations)."""
    cfg, params, hf_dir, _ = model
    lm = harness.GPT2JaxLM(pretrained=str(hf_dir), batch_size=4, progress=False)
    rng = np.random.default_rng(3)
    ctx_a, ctx_b, ctx_c = (rng.integers(0, 50257, n).tolist() for n in (12, 20, 70))
    requests = ([(None, ctx_a, [w]) for w in (5, 6, 7, 8)]  # input ctx_a ...
                + [(None, ctx_a, [9, 10])]                  # ... a prefix of ctx_a + [9]
                + [(None, ctx_b, [w]) for w in (5, 6, 7, 8)]
                + [(None, ctx_c, [1, 2]), (None, ctx_c, [3, 4])])  # left-truncated to 64
    before = lm.scorer.rows_run
    together = lm._loglikelihood_tokens(requests)
    assert lm.scorer.rows_run - before == 4  # 11 requests: rows ctx_a+[9], ctx_b, 2 of ctx_c
    alone = [lm.scorer.score([(ctx, cont)])[0] for _, ctx, cont in requests]
    assert lm.scorer.rows_run - before == 4 + 11
    for a, b in zip(together, alone):
        assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == b[1]
    assert len({a[0] for a in together[:4]}) == 4  # each ending scored at its own target


def test_training_workdir_loads_the_model_of_its_hf_export(model):
    _, _, hf_dir, workdir = model
    assert load_params_for_inference(workdir)[0].n_embd == 32
    pairs = [([1, 2, 3], [4, 5]), ([50256], [7])]
    a = harness.GPT2JaxLM(pretrained=str(hf_dir), progress=False).scorer.score(pairs)
    b = harness.GPT2JaxLM(pretrained=str(workdir), progress=False).scorer.score(pairs)
    assert a == b


def test_wikitext_pages_are_the_62_articles_and_lose_nothing(data_dir):
    text = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    pages = wikitext_pages(text)
    assert len(pages) == 62
    assert all(p.split("\n")[0].startswith(" = ") for p in pages)
    assert "\n".join(pages) == text[text.index(" = "):]  # only the blank first line is dropped


def _rows(path) -> dict:
    return {(r["task"], r["metric"]): r["value"] for r in json.loads(path.read_text())["rows"]}


def test_run_py_lm_eval_sharded_equals_one_device(model, data_dir, tmp_path):
    _, _, hf_dir, _ = model
    out = tmp_path / "rows.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    cmd = [sys.executable, "run.py", "--mode=eval", "--config=configs/eval.py:lm_eval",
           f"--config.init_from={hf_dir}", "--config.eval.tasks=lambada_openai_local",
           "--config.eval.limit=6", "--config.eval.include_defaults=False",
           "--config.eval.batch_size=3", "--config.eval.progress=False",
           f"--config.data_dir={data_dir}", f"--output_json={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lambada_openai_local" in proc.stdout
    rows = _rows(out)
    manager = harness.task_manager(str(TASKS_DIR), data_dir, include_defaults=False)
    lm = harness.GPT2JaxLM(pretrained=str(hf_dir), batch_size=3, progress=False)
    assert lm.batch_size == 3  # no mesh: one device; the CLI's 2-device batch is 4
    ref = harness.result_rows(harness.evaluate(lm, ["lambada_openai_local"], manager, limit=6))
    assert set(rows) == {(r["task"], r["metric"]) for r in ref} \
        == {("lambada_openai_local", "acc"), ("lambada_openai_local", "perplexity")}
    for r in ref:
        assert rows[(r["task"], r["metric"])] == pytest.approx(r["value"], rel=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size="auto"), "no automatic search"),
    (dict(revision="main"), "Unknown gpt2jax model_args"),
    (dict(max_length=65), "exceeds the model's n_positions"),
])
def test_bad_model_args_are_one_clear_error(model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        harness.GPT2JaxLM(pretrained=str(model[2]), **kwargs)


def test_unknown_task_and_oversized_generation_are_clear_errors(model):
    manager = harness.task_manager(str(TASKS_DIR), include_defaults=False)
    with pytest.raises(ConfigError, match="Unknown lm-eval tasks.*lambada_openai_local"):
        harness.task_names("lambada_openai_locl", manager)
    lm = harness.GPT2JaxLM(pretrained=str(model[2]), max_gen_toks=64, progress=False)
    with pytest.raises(ConfigError, match="max_gen_toks=64 leaves no room"):
        lm._generate(["Hello"], {"max_gen_toks": 64})


def test_without_lm_eval_the_import_error_names_the_extra():
    code = "import sys; sys.modules['lm_eval'] = None; import gpt2jax.eval.harness"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0
    assert 'pip install -e ".[eval]"' in proc.stderr.strip().splitlines()[-1]


def test_python_m_harness_is_lm_evals_cli_with_the_gpt2jax_backend(model, data_dir, tmp_path):
    """`python -m gpt2jax.eval.harness` takes lm-eval's own arguments (`lm_eval --model
    gpt2jax ...` cannot: lm-eval 0.4.13 has no hook for installed backends) and gives the
    in-process backend's numbers; run from another folder, with lm-eval's --metadata."""
    _, _, hf_dir, _ = model
    cmd = [sys.executable, "-m", "gpt2jax.eval.harness", "--model", "gpt2jax",
           "--model_args", f"pretrained={hf_dir}", "--tasks", "lambada_openai_local",
           "--include_path", str(TASKS_DIR), "--limit", "6", "--batch_size", "3",
           "--metadata", json.dumps({"data_dir": str(data_dir)}),
           "--output_path", str(tmp_path / "out")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lambada_openai_local" in proc.stdout and "gpt2jax (" in proc.stdout
    [saved] = (tmp_path / "out").rglob("results_*.json")
    got = json.loads(saved.read_text())["results"]["lambada_openai_local"]
    manager = harness.task_manager(str(TASKS_DIR), data_dir, include_defaults=False)
    lm = harness.GPT2JaxLM(pretrained=str(hf_dir), batch_size=3, progress=False)
    ref = harness.evaluate(lm, ["lambada_openai_local"], manager, limit=6)
    for key in ("acc,none", "perplexity,none"):
        assert got[key] == pytest.approx(ref["results"]["lambada_openai_local"][key], rel=1e-6)


def test_harness_main_prints_a_gpt2jax_error_as_one_line(monkeypatch, capsys):
    """What `main` adds to lm-eval's CLI: lm-eval's argv, and a gpt2jax user error (raised
    where lm-eval builds the model) as one `error:` line with exit status 2."""
    seen = []

    def lm_eval_cli():
        seen.append(list(sys.argv))
        harness.GPT2JaxLM(pretrained="x", revision="main")  # an unknown model_arg

    monkeypatch.setattr(harness, "cli_evaluate", lm_eval_cli)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert harness.main(["--model", "gpt2jax", "--model_args", "pretrained=x,revision=main"]) == 2
    assert seen == [["lm-eval", "--model", "gpt2jax", "--model_args",
                     "pretrained=x,revision=main"]]
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Unknown gpt2jax model_args ['revision']") and "\n" not in err


def test_console_script_is_the_harness_cli():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["gpt2jax-lm-eval"].partition(":")
    assert getattr(importlib.import_module(module), name) is harness.main
