"""`--mode=sweep`: train every (variant, seed) of a sweep config; write `results.json`.

A sweep config (e.g. `experiments/attention_ablation/sweep.py`) holds `base` (a full
`--mode=train` config), `variants` (name -> nested override of `base`), `seeds`,
`baseline`, `only`, `results_dir`, and what to measure besides the val loss: `measure`
(perplexity at several lengths, decode speed) and `kv_conversion` (a multi-head variant
converted to fewer kv heads, then uptrained), see `sweep_measure.py`. Each run calls
`gpt2jax.training.loop.train_and_evaluate` in `<workdir>/<variant>/seed_<s>`; a finished
run leaves `sweep_result.json` there and is not trained again (an interrupted sweep resumes
where it stopped), unless its recorded config differs from the current one: then the sweep
stops with an error instead of reusing it. Output: `results.json` in `results_dir` (relative
to the workdir; "" = the workdir itself, an absolute path as it is): every run's curves and
numbers, and a per-variant summary.
Presentation (the markdown table, the plots) is not the library's: it lives in
`experiments/sweep_report.py`, which reads that file.
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

from gpt2jax.cli import sweep_measure
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


def run_one(name: str, seed: int, config, workdir: Path, measure=None) -> dict:
    """Trains one (variant, seed) in `workdir` unless it finished before; returns its record
    (with `sweep_measure.measure_run`'s numbers when `measure` is given)."""

    done = workdir / RESULT_FILE
    wanted = json.loads(config.to_json_best_effort())
    if done.is_file():
        record = json.loads(done.read_text())
        _check_same_run(record.get("config"), wanted, workdir)
        return record
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
        "config": wanted,
    }
    if measure is not None:
        record.update(sweep_measure.measure_run(config, workdir, measure))
    done.write_text(json.dumps(record, indent=1))
    return record


def _check_same_run(saved: dict | None, wanted: dict, workdir: Path) -> None:
    """A finished run is reused only if it was trained with the same config."""
    if saved == wanted:
        return
    diff = "no recorded config" if saved is None else ", ".join(
        f"{k}: {a!r} there, {b!r} now" for k, a, b in _differences(saved, wanted)[:3])
    raise ConfigError(
        f"{workdir} holds a finished run of another config ({diff}); it is not reused. Use a "
        "new --workdir for this sweep, or move that run away to train it again.")


def _differences(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, a's value, b's value) where two nested dicts differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [(prefix or "config", a, b)]
    out = []
    for key in sorted(set(a) | set(b)):
        out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
    return out


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


def run_sweep(sweep, workdir: str | Path) -> dict:
    """Runs (or resumes) every run of `sweep` under `workdir`; writes and returns the results
    (`results.json` in `sweep.results_dir`, or in `workdir` if that is "")."""
    workdir = Path(workdir).expanduser().resolve()
    out_dir = workdir / Path(sweep.results_dir).expanduser()  # an absolute path stays
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records, configs = [], {}
    for name, seed, config in plan(sweep):
        print(f"sweep: {name} seed {seed}", flush=True)
        records.append(run_one(name, seed, config, workdir / name / f"seed_{seed}",
                               sweep.measure))
        configs[name, seed] = config
    kv_records = sweep_measure.kv_conversion_table(sweep, workdir, configs)
    rows = summarize(records, sweep.variants, sweep.baseline)
    results = {
        "sweep": sweep.to_dict(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "backend": jax.default_backend(), "jax": jax.__version__,
                    "devices": len(jax.devices())},
        "sweep_wall_s": time.perf_counter() - start,
        "summary": rows,
        "runs": records,
        "kv_conversion": kv_records,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    for r in rows:
        print(f"sweep: {r['variant']}: val loss {r['val_loss_mean']:.3f}", flush=True)
    print(f"sweep: wrote {out_dir / 'results.json'}; table and plots: "
          f"python experiments/sweep_report.py {out_dir}", flush=True)
    return results


def main(config, args) -> None:
    """`python run.py --mode=sweep --config=SWEEP.py[:arg] --workdir=DIR`."""
    if not args.workdir:
        raise ConfigError("--mode=sweep needs --workdir=DIR (one sub-folder per run).")
    for key in ("base", "variants", "seeds", "baseline", "only", "results_dir", "measure",
                "kv_conversion"):
        if key not in config:
            raise ConfigError(f"The sweep config has no '{key}'; --mode=sweep needs a sweep "
                              "config such as experiments/attention_ablation/sweep.py.")
    if jax.config.jax_compilation_cache_dir is None:
        # Seeds of one variant compile identical programs: a persistent cache compiles once.
        cache = Path(args.workdir).expanduser().resolve() / "jax_cache"
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    run_sweep(config, args.workdir)
