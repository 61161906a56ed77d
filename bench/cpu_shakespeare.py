"""The main job side by side with nanoGPT's CPU recipe: tokens/s and val loss, one script.

    python bench/cpu_shakespeare.py --nanogpt=/path/to/nanoGPT        # 2,000 steps each
    python bench/cpu_shakespeare.py --nanogpt=/path/to/nanoGPT --steps=100   # smoke run

nanoGPT (a checkout, not vendored; only read: its train.py, model.py, configurator.py,
config/ and data/shakespeare_char/prepare.py are copied to a temporary folder, with Tiny
Shakespeare from this package, so no download) runs its README's CPU recipe:

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
      --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
      --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

gpt2jax runs the README's main command, `python run.py --mode=train
--config=configs/shakespeare_char.py:cpu` (its defaults: one CPU device per core, a sample at
each evaluation), plus `--ours_flags`. Both run one after the other, alone on the machine.

Prints for each: steady tokens/s (median over the logged steps after the first 50, whose
window holds no evaluation, sample or checkpoint), wall time of the whole run (start-up,
compilation, evaluations, samples, checkpoints), the final val loss; then the ratios
gpt2jax / nanoGPT. Targets of issue 15.4: steady tokens/s >= 2x nanoGPT, val loss <= 1.89.

Also a roofline, in the same run: the machine's best float32 matmul rate (numpy and torch on
1024..4096 squares, all cores, best of 5, measured before and after the two runs), the
recipe's FLOPs per token by nanoGPT's own formula (`GPT.estimate_mfu`: 6N + 12 L H Q T), the
tokens/s that rate would give if every FLOP of the step ran at it, and each run's fraction of
that bound. A target above the bound cannot be met on the machine in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo

from bench import hardware  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "gpt2jax" / "data" / "assets" / "tinyshakespeare" / "input.txt"
TOKENS_PER_STEP = 12 * 64
RECIPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "vocab_size": 65}
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                 "data/shakespeare_char/prepare.py")


def flops_per_token(n_layer: int, n_head: int, n_embd: int, block_size: int,
                    vocab_size: int) -> int:
    """Training FLOPs per token as nanoGPT's `GPT.estimate_mfu` counts them: 6N + 12 L H Q T.

    N is nanoGPT's `get_num_params()` (every parameter but the position embedding; the head is
    tied to the token embedding): per block 12 d^2 + 13 d, plus the final LayerNorm and wte.
    """
    d = n_embd
    params = n_layer * (12 * d * d + 13 * d) + 2 * d + vocab_size * d
    return 6 * params + 12 * n_layer * n_head * (d // n_head) * block_size


def matmul_peak_flops(sizes=(1024, 2048, 4096), repeats: int = 5) -> float:
    """The best float32 FLOP/s of a square matmul here (numpy, and torch if installed)."""
    import numpy as np
    try:
        import torch
    except ImportError:  # the core install has no torch; numpy alone then
        torch = None

    best = 0.0
    for n in sizes:
        a = np.random.default_rng(0).random((n, n), dtype=np.float32)
        t = torch.from_numpy(a) if torch is not None else None
        for matmul in (lambda: a @ a, lambda: t @ t)[:1 if t is None else 2]:
            matmul()
            for _ in range(repeats):
                start = time.perf_counter()
                matmul()
                best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def nanogpt_command(steps: int) -> list[str]:
    """nanoGPT README's CPU recipe, `steps` iterations."""
    return [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
            "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
            "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
            f"--max_iters={steps}", f"--lr_decay_iters={steps}", "--dropout=0.0"]


def run_nanogpt(checkout: Path, steps: int, tmp: Path) -> dict:
    """Runs nanoGPT from a copy of `checkout`; parses its per-iteration times and val loss."""
    work = tmp / "nanogpt"
    for name in NANOGPT_FILES:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(checkout / name, work / name)
    data = work / "data" / "shakespeare_char"
    shutil.copy(TEXT, data / "input.txt")  # prepare.py downloads only when it is missing
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    start = time.perf_counter()
    out = subprocess.run(nanogpt_command(steps), cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"nanoGPT failed:\n{out.stderr[-3000:]}")
    times = {int(i): float(ms) / 1e3 for i, ms in
             re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", out.stdout, re.M)}
    vals = re.findall(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)", out.stdout, re.M)
    steady = [t for i, t in times.items() if i > 50]
    return {"steady_tokens_per_sec": TOKENS_PER_STEP / statistics.median(steady),
            "wall_s": wall, "val_loss": float(vals[-1][1]), "val_step": int(vals[-1][0])}


def run_ours(steps: int, tmp: Path, flags: list[str]) -> dict:
    """Runs the README's main command; reads metrics.jsonl."""
    workdir = tmp / "ours"
    cmd = [sys.executable, "run.py", "--mode=train", "--config=configs/shakespeare_char.py:cpu",
           f"--workdir={workdir}", f"--config.train.num_steps={steps}",
           f"--config.train.lr_decay_steps={steps}", "--config.train.progress_bar=False", *flags]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode:
        fatal = [ln for ln in out.stderr.splitlines() if "Fatal" in ln or "Error" in ln]
        raise SystemExit(f"gpt2jax failed ({out.returncode}): {fatal[:3]}\n{out.stderr[-3000:]}")
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val_loss" in r]
    evals = {r["step"] for r in vals}
    log_every = 10
    steady = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r
              and r["step"] > 50 and not any(r["step"] - log_every <= e < r["step"]
                                             for e in evals)]  # evals run after a log
    split = re.search(r"CPU host split into (\d+) JAX devices", out.stderr)
    return {"steady_tokens_per_sec": statistics.median(steady), "wall_s": wall,
            "val_loss": vals[-1]["val_loss"] if vals else float("nan"),
            "val_step": vals[-1]["step"] if vals else None,
            "devices": int(split.group(1)) if split else 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (omit: gpt2jax only)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--ours_flags", default="", help="extra run.py flags, space separated")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    a = p.parse_args()
    print(hardware.describe(), flush=True)
    load = os.getloadavg()[0]
    res = {"steps": a.steps, "cores": os.cpu_count(), "load_average_start": load,
           "flops_per_token": flops_per_token(**RECIPE)}
    peaks = [matmul_peak_flops()]
    with tempfile.TemporaryDirectory() as tmp:
        if a.nanogpt:
            res["nanogpt"] = run_nanogpt(a.nanogpt.expanduser().resolve(), a.steps, Path(tmp))
            print("nanoGPT:", json.dumps(res["nanogpt"]), flush=True)
        res["gpt2jax"] = run_ours(a.steps, Path(tmp), a.ours_flags.split())
        print("gpt2jax:", json.dumps(res["gpt2jax"]), flush=True)
    res["load_average_end"] = os.getloadavg()[0]
    peaks.append(matmul_peak_flops())
    res["matmul_peak_flops"] = max(peaks)
    bound = res["matmul_peak_flops"] / res["flops_per_token"]
    res["tokens_per_sec_at_peak"] = bound
    for name in ("gpt2jax", "nanogpt"):
        if name in res:
            res[name]["fraction_of_peak"] = res[name]["steady_tokens_per_sec"] / bound
    if a.nanogpt:
        ours, peer = res["gpt2jax"], res["nanogpt"]
        res["ratio_steady"] = ours["steady_tokens_per_sec"] / peer["steady_tokens_per_sec"]
        res["ratio_wall"] = peer["wall_s"] / ours["wall_s"]
        print(f"steady tokens/s: gpt2jax {ours['steady_tokens_per_sec']:,.0f} "
              f"({ours['devices']} device(s)), nanoGPT {peer['steady_tokens_per_sec']:,.0f}: "
              f"{res['ratio_steady']:.2f}x (target >= 2x)")
        print(f"wall: gpt2jax {ours['wall_s']:.0f} s, nanoGPT {peer['wall_s']:.0f} s: "
              f"{res['ratio_wall']:.2f}x; val loss gpt2jax {ours['val_loss']:.4f}, nanoGPT "
              f"{peer['val_loss']:.4f} (target <= 1.89 at 2,000 steps)")
    print(f"roofline: best float32 matmul {res['matmul_peak_flops'] / 1e9:.1f} GFLOP/s "
          f"(before / after: {peaks[0] / 1e9:.1f} / {peaks[1] / 1e9:.1f}), "
          f"{res['flops_per_token'] / 1e6:.2f} MFLOP per token (nanoGPT's formula), so at most "
          f"{bound:,.0f} tokens/s; gpt2jax runs at {res['gpt2jax']['fraction_of_peak']:.0%} of it"
          + (f", nanoGPT at {res['nanogpt']['fraction_of_peak']:.0%}; 2x nanoGPT would need "
             f"{2 * res['nanogpt']['fraction_of_peak']:.0%}" if a.nanogpt else ""))
    print(f"load average {load:.1f} -> {res['load_average_end']:.1f} on {os.cpu_count()} cores"
          " (ratios mean something only on an idle machine)")
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
