"""`--mode=sweep`: the smoke attention ablation end to end (the runner's results.json, then
`experiments/sweep_report.py`'s table and plots from it), and the sweep config plumbing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from experiments.attention_ablation import sweep as ablation
from gpt2jax.cli import sweep
from gpt2jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_smoke_sweep_writes_table_plots_and_results(tmp_path, tmp_path_factory, data_dir):
    # A fresh XLA compilation cache for this sweep: seed 1 of a variant compiles the programs
    # seed 0 just compiled (as tests/test_crash_safety.py's zygote does).
    cache = tmp_path_factory.mktemp("xla_cache")
    env = dict(os.environ, GPT2JAX_DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("XLA_FLAGS", None)  # one CPU device, like a user's run
    proc = subprocess.run(
        [sys.executable, "run.py", "--mode=sweep",
         "--config=experiments/attention_ablation/sweep.py:smoke", f"--workdir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "results.md").exists()  # presentation is the report's, not the runner's
    report = subprocess.run(
        [sys.executable, "experiments/sweep_report.py", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    runs = results["runs"]
    assert sorted((r["variant"], r["seed"]) for r in runs) == [
        ("gpt2", 0), ("gpt2", 1), ("mqa", 0), ("mqa", 1)]
    for r in runs:
        assert r["val_curve"][-1][0] == 6 and r["final_val_loss"] == r["val_curve"][-1][1]
        assert r["tokens_per_sec"] > 0
    rows = {r["variant"]: r for r in results["summary"]}
    gpt2_losses = [r["final_val_loss"] for r in runs if r["variant"] == "gpt2"]
    assert gpt2_losses[0] != gpt2_losses[1]  # seeds differ
    assert rows["gpt2"]["val_loss_mean"] == pytest.approx(sum(gpt2_losses) / 2)
    assert rows["mqa"]["kv_cache_bytes_per_token"] * 4 == rows["gpt2"]["kv_cache_bytes_per_token"]
    assert rows["mqa"]["params"] < rows["gpt2"]["params"]
    table = (tmp_path / "results.md").read_text()
    assert "| mqa | model.n_kv_heads=1 |" in table and "±" in table and table in report.stdout
    for png in ("val_loss.png", "loss_vs_throughput.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a finished sweep is not trained again: the second call only rewrites results.json
    again = sweep.run_sweep(ablation.get_config("smoke"), tmp_path)
    walls = lambda rs: {(r["variant"], r["seed"]): r["wall_s"] for r in rs}
    assert walls(again["runs"]) == walls(runs)


def test_default_sweep_plan_same_budget_and_seeds():
    config = ablation.get_config()
    runs = sweep.plan(config)
    names = list(dict.fromkeys(n for n, _, _ in runs))
    assert names[0] == "gpt2" and len(names) >= 8
    assert all(len([1 for n, _, _ in runs if n == name]) >= 2 for name in names)
    budgets = {(c.train.num_steps, c.train.batch_size, c.train.block_size) for _, _, c in runs}
    assert len(budgets) == 1
    rope = next(c for n, _, c in runs if n == "rope")
    assert rope.model.position == "rope" and config.base.model.position == "learned"


def test_bad_sweeps_name_the_problem():
    config = ablation.get_config("smoke")
    config.only = "gpt2,rope_typo"
    with pytest.raises(ConfigError, match="rope_typo"):
        sweep.plan(config)
    config = ablation.get_config("smoke")
    config.variants.bad = ml_collections.ConfigDict({"model": {"n_kv_head": 2}})
    with pytest.raises(ConfigError, match="n_kv_head"):
        sweep.plan(config)
    config = ablation.get_config("smoke")
    config.variants.bad = ml_collections.ConfigDict({"model": {"position": "absolute"}})
    with pytest.raises(ConfigError, match="rope"):
        sweep.plan(config)


def test_report_without_results_names_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "experiments/sweep_report.py", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"{tmp_path / 'results.json'} does not exist" in proc.stderr
    assert "--mode=sweep" in proc.stderr and not (tmp_path / "results.md").exists()
