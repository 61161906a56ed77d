"""The table and plots of a sweep, from the `results.json` that `--mode=sweep` wrote.

    python experiments/sweep_report.py DIR    # DIR holds results.json (the sweep's results_dir)

Writes, next to it: `results.md` (val loss mean ± std over seeds per variant, Δ vs the
baseline, tokens/s, params, KV-cache bytes per token), `val_loss.png` (mean validation curve
per variant, band = min..max over seeds) and `loss_vs_throughput.png`; prints the table.
Presentation only: it reads the results file and imports nothing from the library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def flat_overrides(overrides: dict, prefix: str = "") -> str:
    """A nested override as `a.b=1, c=2` ("(base)" when empty)."""
    items = []
    for k, v in overrides.items():
        if isinstance(v, dict):
            items.append(flat_overrides(v, f"{prefix}{k}."))
        else:
            items.append(f"{prefix}{k}={v}")
    return ", ".join(i for i in items if i and i != "(base)") or "(base)"


def markdown_table(rows: list[dict], baseline: str) -> str:
    """The summary rows of results.json as a markdown table (val loss mean ± std over seeds)."""
    lines = [
        f"| variant | overrides | val loss (mean ± std) | Δ vs {baseline} | tokens/s | params "
        "| KV cache B/token |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = "" if r["delta_vs_baseline"] is None else f"{r['delta_vs_baseline']:+.3f}"
        std = "n/a (1 seed)" if r["val_loss_std"] is None else f"{r['val_loss_std']:.3f}"
        lines.append(
            f"| {r['variant']} | {flat_overrides(r['overrides'])} | {r['val_loss_mean']:.3f} ± "
            f"{std} | {delta} | {r['tokens_per_sec']:,.0f} | "
            f"{r['params']:,} | {r['kv_cache_bytes_per_token']:,} |")
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[dict], rows: list[dict], path: Path) -> None:
    """Mean validation curve per variant, band = min..max over seeds (curves cut to the
    shortest seed)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        curves = [r["val_curve"] for r in runs if r["variant"] == row["variant"]]
        n = min(len(c) for c in curves)
        steps = [p[0] for p in curves[0][:n]]
        vals = np.array([[p[1] for p in c[:n]] for c in curves])
        line, = ax.plot(steps, vals.mean(0), label=row["variant"])
        ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.15, color=line.get_color())
    ax.set(xlabel="step", ylabel="validation loss (nats/token)",
           title="Validation loss (mean over seeds, band = min..max)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_tradeoff(rows: list[dict], path: Path) -> None:
    """Final validation loss (± std over seeds) against training tokens/s."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        ax.errorbar(row["tokens_per_sec"], row["val_loss_mean"], yerr=row["val_loss_std"] or 0.0,
                    fmt="o", capsize=3)
        ax.annotate(row["variant"], (row["tokens_per_sec"], row["val_loss_mean"]),
                    textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel="training throughput (tokens/s)", ylabel="final validation loss",
           title="Final validation loss against throughput (± std over seeds)")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(results_dir: str) -> str:
    """Writes results.md and the two PNGs next to `results_dir/results.json`; returns the
    table."""
    out = Path(results_dir)
    path = out / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; pass the results_dir of a finished "
                         "`python run.py --mode=sweep` (the --workdir if results_dir is \"\").")
    results = json.loads(path.read_text())
    rows, runs = results["summary"], results["runs"]
    table = markdown_table(rows, results["sweep"]["baseline"])
    (out / "results.md").write_text(table)
    plot_curves(runs, rows, out / "val_loss.png")
    plot_tradeoff(rows, out / "loss_vs_throughput.png")
    return table


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python experiments/sweep_report.py RESULTS_DIR")
    print(main(sys.argv[1]), end="")
