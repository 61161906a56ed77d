"""The tables and plots of a sweep, from the `results.json` that `--mode=sweep` wrote.

    python experiments/sweep_report.py DIR    # DIR holds results.json (the sweep's results_dir)

Writes, next to it, and prints `results.md`:
- per variant: val loss at the trained length (mean ± 95 % interval over seeds, Student t),
  Δ vs the baseline, perplexity at each measured length (when the sweep measured them),
  training tokens/s, params, KV-cache bytes per token, decode tokens/s;
- the KV-head conversion table (when the sweep converted): per kv heads g and method, the
  NLL at the trained length before and after uptraining, cache bytes, decode tokens/s;
and the plots `val_loss.png` (mean validation curve per variant, band = min..max over
seeds), `loss_vs_throughput.png`, `extrapolation.png` (perplexity against evaluation
length, Press et al. 2022's Figure 1) and `kv_conversion.png`.
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


# Student t quantiles t(0.975, df) for df = 1..10; wider samples use 1.96.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def mean_ci(values) -> tuple[float, float | None]:
    """(mean, half-width of the 95 % t interval; None for one value)."""
    x = np.asarray([v for v in values if v is not None], np.float64)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else float("nan")), None
    t = _T975[len(x) - 2] if len(x) - 1 <= len(_T975) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / np.sqrt(len(x)))


def fmt_ci(values, digits: int = 3) -> str:
    mean, half = mean_ci(values)
    if mean != mean:
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if half is None else f" ± {half:.{digits}f}")


def _lengths(runs: list[dict]) -> list[str]:
    return list(runs[0].get("eval_nll", {}))


def markdown_table(rows: list[dict], baseline: str, runs: list[dict]) -> str:
    """One row per variant: val loss (mean ± 95 % interval over seeds), Δ vs the baseline,
    perplexity at each measured length, speed and memory."""
    lengths = _lengths(runs)
    ppl_head = "".join(f" ppl @ {n} |" for n in lengths)
    lines = [
        f"| variant | overrides | val loss | Δ vs {baseline} |{ppl_head} train tokens/s "
        "| params | KV cache B/token | decode tokens/s |",
        "|---|---|---:|---:|" + "---:|" * len(lengths) + "---:|---:|---:|---:|",
    ]
    for r in rows:
        rs = [x for x in runs if x["variant"] == r["variant"]]
        delta = "" if r["delta_vs_baseline"] is None else f"{r['delta_vs_baseline']:+.3f}"
        ppl = ""
        for n in lengths:
            nll = [x["eval_nll"][n] for x in rs]
            ppl += " n/a |" if None in nll else f" {fmt_ci(np.exp(nll))} |"
        decode = [x.get("decode_tokens_per_sec") for x in rs]
        decode = "" if None in decode else f"{np.mean(decode):,.0f}"
        lines.append(
            f"| {r['variant']} | {flat_overrides(r['overrides'])} | "
            f"{fmt_ci(x['final_val_loss'] for x in rs)} | {delta} |{ppl} "
            f"{r['tokens_per_sec']:,.0f} | {r['params']:,} | {r['kv_cache_bytes_per_token']:,} "
            f"| {decode} |")
    return "\n".join(lines) + "\n"


def kv_table(kv: list[dict], runs: list[dict], source: str, trained: str) -> str:
    """Per (kv heads g, method): NLL at the trained length before/after uptraining."""
    src = [x for x in runs if x["variant"] == source]
    lines = ["| kv heads | method | NLL before uptraining | NLL after | KV cache B/token "
             "| decode tokens/s |", "|---:|---|---:|---:|---:|---:|"]
    if src and "eval_nll" in src[0]:
        lines.append(f"| {src[0]['model']['n_head']} (MHA, {source}) | trained | "
                     f"{fmt_ci(x['eval_nll'][trained] for x in src)} | | "
                     f"{src[0]['kv_cache_bytes_per_token']:,} | "
                     f"{np.mean([x['decode_tokens_per_sec'] for x in src]):,.0f} |")
    keys = list(dict.fromkeys((r["groups"], r["method"]) for r in kv))
    for g, m in keys:
        rs = [r for r in kv if (r["groups"], r["method"]) == (g, m)]
        after = fmt_ci(r.get("nll_after") for r in rs)
        lines.append(f"| {g} | {m} | {fmt_ci(r['nll_before'] for r in rs)} | {after} | "
                     f"{rs[0]['kv_cache_bytes_per_token']:,} | "
                     f"{np.mean([r['decode_tokens_per_sec'] for r in rs]):,.0f} |")
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


def plot_extrapolation(runs: list[dict], rows: list[dict], path: Path) -> None:
    """Perplexity (mean, 95 % interval) against evaluation length, one line per variant."""
    lengths = _lengths(runs)
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        rs = [x for x in runs if x["variant"] == row["variant"]]
        xs, ys, es = [], [], []
        for n in lengths:
            nll = [x["eval_nll"][n] for x in rs]
            if None not in nll:
                mean, half = mean_ci(np.exp(nll))
                xs.append(int(n)), ys.append(mean), es.append(half or 0.0)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=row["variant"])
    ax.set_xscale("log", base=2)
    ax.set_xticks([int(n) for n in lengths], [str(n) for n in lengths])
    ax.set(xlabel=f"evaluation length (trained at {lengths[0]})", ylabel="perplexity",
           title="Extrapolation: validation perplexity, disjoint windows (95 % interval)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_kv(kv: list[dict], path: Path) -> None:
    """NLL before and after uptraining per (kv heads, method), mean ± 95 % interval."""
    keys = list(dict.fromkeys((r["groups"], r["method"]) for r in kv))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(keys))
    for i, (field, label) in enumerate((("nll_before", "converted"),
                                        ("nll_after", "after uptraining"))):
        stats = [mean_ci(r.get(field) for r in kv if (r["groups"], r["method"]) == k)
                 for k in keys]
        ax.bar(x + (i - 0.5) * 0.4, [m for m, _ in stats], 0.4,
               yerr=[h or 0.0 for _, h in stats], capsize=3, label=label)
    ax.set_xticks(x, [f"g={g}\n{m}" for g, m in keys])
    ax.set(ylabel="validation NLL at the trained length",
           title="KV-head conversion of the multi-head baseline (95 % interval)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(results_dir: str) -> str:
    """Writes results.md and the PNGs next to `results_dir/results.json`; returns the
    tables."""
    out = Path(results_dir)
    path = out / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; pass the results_dir of a finished "
                         "`python run.py --mode=sweep` (the --workdir if results_dir is \"\").")
    results = json.loads(path.read_text())
    rows, runs, sweep = results["summary"], results["runs"], results["sweep"]
    table = markdown_table(rows, sweep["baseline"], runs)
    plot_curves(runs, rows, out / "val_loss.png")
    plot_tradeoff(rows, out / "loss_vs_throughput.png")
    if _lengths(runs):
        plot_extrapolation(runs, rows, out / "extrapolation.png")
    kv = results.get("kv_conversion") or []
    if kv:
        trained = _lengths(runs)[0]
        table += "\n" + kv_table(kv, runs, sweep["kv_conversion"]["source"], trained)
        plot_kv(kv, out / "kv_conversion.png")
    (out / "results.md").write_text(table)
    return table


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python experiments/sweep_report.py RESULTS_DIR")
    print(main(sys.argv[1]), end="")
