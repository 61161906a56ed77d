"""Evaluate the four GPT-2 sizes on every available dataset; write a markdown table with the
paper's numbers and known re-measurements beside ours.

    python experiments/reproduce_gpt2/run.py --data_dir=../shared/data \
        [--weights=gpt2,gpt2-medium,gpt2-large,gpt2-xl] [--out=experiments/reproduce_gpt2]

`--weights` takes hub names (needs internet and `pip install huggingface_hub`) or local HF
folders, in the order small, medium, large, xl. `--smoke` evaluates random tiny models on a
prefix of each dataset (what CI runs; its numbers mean nothing).
Writes OUT/results.json (every row) and OUT/results.md (the table).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from configs import eval as eval_configs  # noqa: E402
from gpt2jax.cli.eval import evaluate_config  # noqa: E402
from gpt2jax.errors import DataError  # noqa: E402

SIZES = ("124M", "355M", "774M", "1558M")
DEFAULT_WEIGHTS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")

# (task, config overrides of config.eval) evaluated for every size, in table order.
RUNS = (
    ("lambada_openai", {}),
    ("wikitext2", {"stride": 1024}),
    ("wikitext2", {"stride": 512}),
    ("ptb", {"stride": 512}),
    ("wikitext103", {"stride": 512}),
    ("enwik8", {"stride": 512}),
    ("text8", {"stride": 512}),
)

# GPT-2 paper (Radford et al. 2019) Table 3, per size: the paper's protocol is word-level
# perplexity after invertible detokenization, which our `detok` / `word_ppl` rows follow.
PAPER = {
    "124M": {"lambada_ppl": 35.13, "lambada_acc": 45.99, "wt2": 29.41, "ptb": 65.85,
             "enwik8": 1.16, "text8": 1.17, "wt103": 37.50},
    "355M": {"lambada_ppl": 15.60, "lambada_acc": 55.48, "wt2": 22.76, "ptb": 47.33,
             "enwik8": 1.01, "text8": 1.06, "wt103": 26.37},
    "774M": {"lambada_ppl": 10.87, "lambada_acc": 60.12, "wt2": 19.93, "ptb": 40.31,
             "enwik8": 0.97, "text8": 1.02, "wt103": 22.05},
    "1558M": {"lambada_ppl": 8.63, "lambada_acc": 63.24, "wt2": 18.34, "ptb": 35.76,
              "enwik8": 0.93, "text8": 0.98, "wt103": 17.48},
}
# Known re-measurements: HF perplexity guide (gpt2-large, wikitext-2-raw, token-level),
# lm-evaluation-harness lambada_openai (gpt2).
REMEASURED = {
    ("774M", "wikitext2", "raw_hf", "guide_ppl", 1024): "19.44 (HF guide)",
    ("774M", "wikitext2", "raw_hf", "guide_ppl", 512): "16.44 (HF guide)",
    ("124M", "lambada_openai", "lm_eval", "acc", None): "32.56 (lm-eval)",
    ("124M", "lambada_openai", "lm_eval", "ppl", None): "40.06 (lm-eval)",
}
# (task, protocol, metric) -> key of PAPER
PAPER_KEY = {
    ("lambada_openai", "lm_eval", "ppl"): "lambada_ppl",
    ("lambada_openai", "last_word", "acc"): "lambada_acc",
    ("wikitext2", "detok", "word_ppl"): "wt2",
    ("ptb", "detok", "word_ppl"): "ptb",
    ("wikitext103", "detok", "word_ppl"): "wt103",
    ("enwik8", "test_last_5M", "bits_per_byte"): "enwik8",
    ("text8", "test_last_5M", "bits_per_byte"): "text8",
}
SHOWN = {"ppl", "word_ppl", "guide_ppl", "acc", "bits_per_byte"}


def task_config(task: str, overrides: dict, weights: str, data_dir: str, smoke: bool):
    config = eval_configs.get_config(task)
    config.init_from = "" if smoke else weights
    config.data_dir = data_dir
    config.eval.update(overrides)
    if smoke:  # random tiny model on a prefix of the data
        config.model.update(n_layer=1, n_embd=32, n_head=2, n_positions=128)
        config.mesh.data = 1
        config.eval.update(context_length=128, stride=config.eval.stride // 8,
                           max_tokens=300, max_examples=4, progress=False)
    return config


def evaluate_all(weights, data_dir: str, smoke: bool = False, sizes=SIZES) -> tuple[list, list]:
    """Returns (rows, skipped): rows carry `size`; skipped lists (task, reason)."""
    rows, skipped = [], []
    for size, source in zip(sizes, weights):
        for task, overrides in RUNS:
            try:
                result = evaluate_config(task_config(task, overrides, source, data_dir, smoke))
            except DataError as e:
                if size == sizes[0]:
                    skipped.append((task, str(e)))
                continue
            rows += [dict(r, size=size, weights=source) for r in result]
    return rows, skipped


def _reference(row: dict) -> tuple[str, str]:
    key = PAPER_KEY.get((row["task"], row["protocol"], row["metric"]))
    paper = PAPER[row["size"]][key] if key else None
    stride = row.get("stride")
    if key in ("wt2", "ptb", "wt103", "enwik8", "text8") and stride != 512:
        paper = None
    remeasured = REMEASURED.get((row["size"], row["task"], row["protocol"], row["metric"],
                                 stride), "")
    return ("" if paper is None else f"{paper:.2f}"), remeasured


def markdown(rows: list[dict], skipped: list, smoke: bool) -> str:
    lines = ["# GPT-2 reproduction" + (" (SMOKE RUN: random tiny weights)" if smoke else ""),
             "", "| model | task | protocol | stride | metric | ours | paper | re-measured |",
             "|---|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        if r["metric"] not in SHOWN:
            continue
        paper, again = _reference(r)
        stride = r.get("stride", "")
        lines.append(f"| {r['size']} | {r['task']} | {r['protocol']} | {stride} | "
                     f"{r['metric']} | {r['value']:.2f} | {paper} | {again} |")
    if skipped:
        lines += ["", "Not evaluated (data file missing):", ""]
        lines += [f"- {task}: {reason}" for task, reason in skipped]
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=",".join(DEFAULT_WEIGHTS))
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", default=str(Path(__file__).parent))
    p.add_argument("--sizes", default=",".join(SIZES), help="subset of " + ",".join(SIZES))
    p.add_argument("--smoke", action="store_true", help="random tiny models, data prefixes")
    args = p.parse_args(argv)
    sizes = tuple(s for s in SIZES if s in args.sizes.split(","))
    weights = dict(zip(SIZES, args.weights.split(",")))
    rows, skipped = evaluate_all([weights[s] for s in sizes], args.data_dir, args.smoke, sizes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"smoke": args.smoke, "rows": rows}, indent=2))
    (out / "results.md").write_text(markdown(rows, skipped, args.smoke))
    print(markdown(rows, skipped, args.smoke))
    return out / "results.md"


if __name__ == "__main__":
    main()
