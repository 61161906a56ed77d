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


@pytest.mark.slow
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
        ("alibi", 0), ("alibi", 1), ("gpt2", 0), ("gpt2", 1)]
    for r in runs:
        assert r["val_curve"][-1][0] == 4 and r["final_val_loss"] == r["val_curve"][-1][1]
        assert r["tokens_per_sec"] > 0 and r["decode_tokens_per_sec"] > 0
        assert r["eval_tokens"] == 4096 and list(r["eval_nll"]) == ["32", "64"]
        assert (r["eval_nll"]["64"] is None) == (r["variant"] == "gpt2")  # learned stops at 1x
    rows = {r["variant"]: r for r in results["summary"]}
    gpt2_losses = [r["final_val_loss"] for r in runs if r["variant"] == "gpt2"]
    assert gpt2_losses[0] != gpt2_losses[1]  # seeds differ
    assert rows["gpt2"]["val_loss_mean"] == pytest.approx(sum(gpt2_losses) / 2)
    kv = results["kv_conversion"]
    assert [(k["seed"], k["groups"], k["method"]) for k in kv] == [(0, 2, "mean"), (1, 2, "mean")]
    for k in kv:
        assert k["kv_cache_bytes_per_token"] * 4 == rows["gpt2"]["kv_cache_bytes_per_token"]
        assert k["nll_after"] > 0 and k["uptrain_steps"] == 2
    table = (tmp_path / "results.md").read_text()
    assert "| alibi | model.position=alibi |" in table and "±" in table and table in report.stdout
    assert "| 2 | mean |" in table
    for png in ("val_loss.png", "loss_vs_throughput.png", "extrapolation.png",
                "kv_conversion.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a finished sweep is not trained again: the second call only rewrites results.json
    again = sweep.run_sweep(ablation.get_config("smoke"), tmp_path)
    walls = lambda rs: {(r["variant"], r["seed"]): r["wall_s"] for r in rs}
    assert walls(again["runs"]) == walls(runs)
    assert again["kv_conversion"] == kv
    # a relative results_dir lands under the workdir, never in the current directory (it
    # overwrote the committed study's results.json when the sweep ran from the repo root)
    relative = ablation.get_config("smoke")
    relative.results_dir = "report"
    sweep.run_sweep(relative, tmp_path)
    assert (tmp_path / "report" / "results.json").is_file() and not Path("report").exists()
    # a finished run of another config is refused, not reused (it was reused silently, and
    # results.json said 8 steps while its curves ended at 4)
    longer = ablation.get_config("smoke")
    longer.base.train.num_steps = 8
    with pytest.raises(ConfigError, match=r"train\.num_steps: 4 there, 8 now.*new --workdir"):
        sweep.run_sweep(longer, tmp_path)


def test_default_sweep_plan_same_budget_and_seeds():
    config = ablation.get_config()
    runs = sweep.plan(config)
    names = list(dict.fromkeys(n for n, _, _ in runs))
    assert names[0] == "gpt2" and {"alibi", "rope", "sinusoidal", "nope", "mqa"} <= set(names)
    assert all(len([1 for n, _, _ in runs if n == name]) >= 3 for name in names)
    budgets = {(c.train.num_steps, c.train.batch_size, c.train.block_size) for _, _, c in runs}
    assert len(budgets) == 1
    rope = next(c for n, _, c in runs if n == "rope")
    assert rope.model.position == "rope" and config.base.model.position == "learned"
    assert config.measure.eval_lengths == (128, 256, 512, 1024)  # 1x, 2x, 4x, 8x trained


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


def test_gpt2_small_study_lowers_on_8_simulated_devices():
    """`sweep.py:gpt2_small`, the same study at GPT-2 124M: every variant's train step, and
    the uptraining of each converted kv-head count, lower for an 8-device mesh (abstract
    shapes: nothing allocated, nothing compiled). The 12-layer baseline lowers whole; the
    others with 2 of its layers (the same widths; 12 layers x 9 models took 95 s)."""
    import jax
    import numpy as np

    from gpt2jax.nn.model import GPT2Config
    from gpt2jax.parallel import sharding
    from gpt2jax.training.step import BATCH_KEYS, Trainer, TrainConfig

    config = ablation.get_config("gpt2_small")
    config.base.data.shards_dir = "/data/owt"  # what the command line passes
    runs = sweep.plan(config)
    assert {s for _, s, _ in runs} == {0, 1, 2}
    variants = {name: c for name, seed, c in runs if seed == 0}
    cfgs = {name: GPT2Config.from_config(c.model) for name, c in variants.items()}
    base = cfgs[config.baseline]
    assert (base.n_layer, base.n_embd, base.n_head) == (12, 768, 12)
    assert config.measure.eval_lengths == (512, 1024, 2048, 4096)
    assert config.kv_conversion.groups == (6, 3, 1)
    for g in config.kv_conversion.groups:  # the converted models' shapes
        cfgs[f"uptrain_g{g}"] = base.replace(n_kv_heads=g)
    c = variants[config.baseline]
    mesh, rules = sharding.make_mesh(c.mesh), sharding.rules(c.mesh)
    assert mesh.size == 8
    tc = TrainConfig.from_config(c.train)
    for name, cfg in cfgs.items():
        cfg = cfg if name == config.baseline else cfg.replace(n_layer=2)
        trainer = Trainer(cfg, tc, mesh, rules)
        batch = {k: jax.ShapeDtypeStruct((tc.batch_size, tc.block_size),
                                         np.float32 if k == "weights" else np.int32,
                                         sharding=trainer.batch_sharding) for k in BATCH_KEYS}
        hlo = trainer.lower_train_step(trainer.abstract_state(), batch).as_text()
        assert "mhlo.num_partitions = 8" in hlo and "xbf16>" in hlo, name  # 8 devices, bf16
