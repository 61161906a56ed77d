"""`--mode=sweep`: train every (variant, seed) of a sweep config, then a table and plots.

A sweep config (e.g. `experiments/attention_ablation/sweep.py`) holds `base` (a full
`--mode=train` config), `variants` (name -> nested override of `base`), `seeds`,
`baseline`, `only` and `results_dir`. Each run calls `gpt2jax.training.loop.train_and_evaluate`
in `<workdir>/<variant>/seed_<s>`; a finished run leaves `sweep_result.json` there and is
not trained again (an interrupted sweep resumes where it stopped). Outputs in
`results_dir` ("" = the workdir): `results.json`, `results.md`, `val_loss.png`,
`loss_vs_throughput.png`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import jax
import ml_collections

from gpt2jax.errors import ConfigError
from gpt2jax.nn.model import GPT2Config, kv_cache_bytes_per_token, param_count
from gpt2jax.training.loop import train_and_evaluate

RESULT_FILE = "sweep_result.json"


def apply_overrides(base: ml_collections.ConfigDict, overrides, where: str = ""):
    """A copy of `base` with the nested `overrides` applied; unknown keys are errors."""
    out = ml_collections.ConfigDict(base.to_dict())
    for key, value in dict(overrides).items():
        if key not in out:
            raise ConfigError(f"Override {where}{key} is not a key of the base config; known "
                              f"keys: {sorted(out.keys())}.")
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out[key] = apply_overrides(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def plan(sweep) -> list[tuple[str, int, ml_collections.ConfigDict]]:
    """The runs of a sweep: (variant name, seed, full training config), seed-major order
    with the baseline first."""
    names = list(sweep.variants.keys())
    if sweep.only:
        wanted = [n.strip() for n in sweep.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ConfigError(f"config.only names unknown variants {unknown}; choose from "
                              f"{names}.")
        names = [n for n in names if n in wanted]
    names.sort(key=lambda n: (n != sweep.baseline, n))
    if len(sweep.seeds) < 1:
        raise ConfigError("config.seeds is empty; give at least one seed, e.g. (0, 1).")
    configs = {}
    for name in names:
        configs[name] = apply_overrides(sweep.base, sweep.variants[name], f"variants.{name}.")
        GPT2Config.from_config(configs[name].model)  # a bad variant fails before training
    runs = []
    for seed in sweep.seeds:  # seed-major: a sweep stopped early still covers every variant
        for name in names:
            run_config = ml_collections.ConfigDict(configs[name].to_dict())
            run_config.seed = int(seed)
            runs.append((name, int(seed), run_config))
    return runs


class _StepTimer:
    """A loop hook recording when each step finished (the sweep config syncs every step)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, step: int, run) -> None:
        self.times.append(time.perf_counter())

    def tokens_per_sec(self, tokens_per_step: int) -> float:
        """Median step time over the steady state (first two steps hold compilation)."""
        gaps = [b - a for a, b in zip(self.times[2:], self.times[3:])]
        if not gaps:
            return float("nan")
        return tokens_per_step / statistics.median(gaps)


def _read_metrics(path: Path) -> tuple[list, list]:
    train, val = [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "val_loss" in rec:
            val.append([rec["step"], rec["val_loss"]])
        elif "loss" in rec:
            train.append([rec["step"], rec["loss"]])
    return train, val


def run_one(name: str, seed: int, config, workdir: Path) -> dict:
    """Trains one (variant, seed) in `workdir` unless it finished before; returns its record."""

    done = workdir / RESULT_FILE
    if done.is_file():
        return json.loads(done.read_text())
    if workdir.exists():  # an interrupted run: start it again from scratch
        shutil.rmtree(workdir)
    cfg = GPT2Config.from_config(config.model)
    timer, load0, start = _StepTimer(), os.getloadavg()[0], time.perf_counter()
    out = train_and_evaluate(config, workdir, hooks=[timer])
    wall = time.perf_counter() - start
    train, val = _read_metrics(workdir / "metrics.jsonl")
    record = {
        "variant": name, "seed": seed, "model": cfg.to_dict(),
        "final_val_loss": out["val_loss"], "final_train_loss": out["train_loss"],
        "val_curve": val, "train_curve": train,
        "tokens_per_sec": timer.tokens_per_sec(config.train.batch_size * config.train.block_size),
        "params": param_count(cfg), "kv_cache_bytes_per_token": kv_cache_bytes_per_token(cfg),
        "wall_s": wall, "load_average": [load0, os.getloadavg()[0]],
    }
    done.write_text(json.dumps(record, indent=1))
    return record


def summarize(records: list[dict], variants, baseline: str) -> list[dict]:
    """One row per variant: mean/std over seeds of the final val loss, and its other numbers."""
    rows, names = [], list(dict.fromkeys(r["variant"] for r in records))
    for name in names:
        rs = [r for r in records if r["variant"] == name]
        losses = [r["final_val_loss"] for r in rs]
        rows.append({
            "variant": name,
            "overrides": ml_collections.ConfigDict(variants[name]).to_dict(),
            "seeds": [r["seed"] for r in rs],
            "val_loss_mean": statistics.mean(losses),
            "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else None,
            "tokens_per_sec": statistics.mean(r["tokens_per_sec"] for r in rs),
            "params": rs[0]["params"],
            "kv_cache_bytes_per_token": rs[0]["kv_cache_bytes_per_token"],
        })
    base = next((r for r in rows if r["variant"] == baseline), None)
    for r in rows:
        r["delta_vs_baseline"] = None if base is None else r["val_loss_mean"] - base[
            "val_loss_mean"]
    return rows


def _flat(overrides: dict, prefix: str = "") -> str:
    items = []
    for k, v in overrides.items():
        if isinstance(v, dict):
            items.append(_flat(v, f"{prefix}{k}."))
        else:
            items.append(f"{prefix}{k}={v}")
    return ", ".join(i for i in items if i) or "(base)"


def markdown_table(rows: list[dict], baseline: str) -> str:
    """The results as a markdown table (val loss mean ± std over seeds)."""
    lines = [
        f"| variant | overrides | val loss (mean ± std) | Δ vs {baseline} | tokens/s | params "
        "| KV cache B/token |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = "" if r["delta_vs_baseline"] is None else f"{r['delta_vs_baseline']:+.3f}"
        std = "n/a (1 seed)" if r["val_loss_std"] is None else f"{r['val_loss_std']:.3f}"
        lines.append(
            f"| {r['variant']} | {_flat(r['overrides'])} | {r['val_loss_mean']:.3f} ± "
            f"{std} | {delta} | {r['tokens_per_sec']:,.0f} | "
            f"{r['params']:,} | {r['kv_cache_bytes_per_token']:,} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], rows: list[dict], out_dir: Path) -> list[Path]:
    """val_loss.png (mean curve per variant, band = min..max over seeds) and
    loss_vs_throughput.png (final val loss ± std against tokens/s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        curves = [r["val_curve"] for r in records if r["variant"] == row["variant"]]
        n = min(len(c) for c in curves)
        steps = [p[0] for p in curves[0][:n]]
        vals = np.array([[p[1] for p in c[:n]] for c in curves])
        line, = ax.plot(steps, vals.mean(0), label=row["variant"])
        ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.15, color=line.get_color())
    ax.set(xlabel="step", ylabel="validation loss (nats/token)",
           title="Attention variants: validation loss (mean over seeds, band = min..max)")
    ax.legend()
    ax.grid(alpha=0.3)
    curves_png = out_dir / "val_loss.png"
    fig.savefig(curves_png, dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        ax.errorbar(row["tokens_per_sec"], row["val_loss_mean"], yerr=row["val_loss_std"] or 0.0,
                    fmt="o", capsize=3)
        ax.annotate(row["variant"], (row["tokens_per_sec"], row["val_loss_mean"]),
                    textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel="training throughput (tokens/s)", ylabel="final validation loss",
           title="Final validation loss against throughput (± std over seeds)")
    ax.grid(alpha=0.3)
    tradeoff_png = out_dir / "loss_vs_throughput.png"
    fig.savefig(tradeoff_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [curves_png, tradeoff_png]


def run_sweep(sweep, workdir: str | Path) -> dict:
    """Runs (or resumes) every run of `sweep` under `workdir`; writes and returns the results."""
    workdir = Path(workdir).expanduser().resolve()
    out_dir = Path(sweep.results_dir).expanduser() if sweep.results_dir else workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records = []
    for name, seed, config in plan(sweep):
        print(f"sweep: {name} seed {seed}", flush=True)
        records.append(run_one(name, seed, config, workdir / name / f"seed_{seed}"))
    rows = summarize(records, sweep.variants, sweep.baseline)
    results = {
        "sweep": sweep.to_dict(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "backend": jax.default_backend(), "jax": jax.__version__,
                    "devices": len(jax.devices())},
        "sweep_wall_s": time.perf_counter() - start,
        "summary": rows,
        "runs": records,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "results.md").write_text(markdown_table(rows, sweep.baseline))
    plot(records, rows, out_dir)
    print(markdown_table(rows, sweep.baseline), flush=True)
    return results


def main(config, args) -> None:
    """`python run.py --mode=sweep --config=SWEEP.py[:arg] --workdir=DIR`."""
    if not args.workdir:
        raise ConfigError("--mode=sweep needs --workdir=DIR (one sub-folder per run).")
    for key in ("base", "variants", "seeds", "baseline", "only", "results_dir"):
        if key not in config:
            raise ConfigError(f"The sweep config has no '{key}'; --mode=sweep needs a sweep "
                              "config such as experiments/attention_ablation/sweep.py.")
    if jax.config.jax_compilation_cache_dir is None:
        # Seeds of one variant compile identical programs: a persistent cache compiles once.
        cache = Path(args.workdir).expanduser().resolve() / "jax_cache"
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    run_sweep(config, args.workdir)
