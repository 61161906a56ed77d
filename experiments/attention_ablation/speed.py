"""Side-by-side speed of the study's models in one process: training tokens/s and decode
tokens/s of every variant (and of the converted kv-head counts), interleaved round by round,
so that their ratios hold on a machine shared with other work.

    python experiments/attention_ablation/speed.py [--rounds 5] [--out DIR]

Each round times, for every model in turn, 10 train steps of the study's batch (16 x 128,
synced after the 10) and one greedy `generate` of 127 tokens at batch 1 (after a compiling
call each). Reports the median over rounds, and the ratio to the `gpt2` baseline. Writes
speed.json and speed.md to --out (default: this folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from experiments.attention_ablation import sweep as ablation  # noqa: E402
from gpt2jax.cli import sweep  # noqa: E402
from gpt2jax.cli.sweep_measure import decode_speed  # noqa: E402
from gpt2jax.nn.model import GPT2Config, kv_cache_bytes_per_token  # noqa: E402
from gpt2jax.parallel import sharding  # noqa: E402
from gpt2jax.training.step import Trainer, TrainConfig  # noqa: E402

STEPS = 10


def models(config) -> dict:
    """name -> (GPT2Config, TrainConfig): every variant, then the converted kv-head counts."""
    out = {}
    for name, seed, c in sweep.plan(config):
        if seed == config.seeds[0]:
            out[name] = (GPT2Config.from_config(c.model), TrainConfig.from_config(c.train))
    base_cfg, tc = out[config.baseline]
    for g in config.kv_conversion.groups:
        out.setdefault(f"{config.baseline}->g{g}", (base_cfg.replace(n_kv_heads=g), tc))
    return out


def _trainer(cfg, tc, mesh_config):
    trainer = Trainer(cfg, tc, sharding.make_mesh(mesh_config, jax.devices()[:1]),
                      sharding.rules(mesh_config))
    state = trainer.init(0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (tc.batch_size, tc.block_size + 1))
    batch = trainer.placement.put_batch({
        "inputs": ids[:, :-1].astype(np.int32), "targets": ids[:, 1:].astype(np.int32),
        "weights": np.ones((tc.batch_size, tc.block_size), np.float32)})
    return trainer, state, batch


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    config = ablation.get_config()
    mesh_config = config.base.mesh
    mesh_config.data = 1
    entries = {}
    for name, (cfg, tc) in models(config).items():
        trainer, state, batch = _trainer(cfg, tc, mesh_config)
        state, _ = trainer.train_step(state, batch)  # compile
        jax.block_until_ready(state)
        entries[name] = dict(cfg=cfg, tc=tc, trainer=trainer, state=state, batch=batch,
                             train=[], decode=[])
    load0 = os.getloadavg()
    for _ in range(args.rounds):
        for e in entries.values():
            start = time.perf_counter()
            state = e["state"]
            for _ in range(STEPS):
                state, _ = e["trainer"].train_step(state, e["batch"])
            jax.block_until_ready(state)
            e["state"] = state
            e["train"].append(STEPS * e["tc"].batch_size * e["tc"].block_size
                              / (time.perf_counter() - start))
            e["decode"].append(decode_speed(e["cfg"], state.params, config.measure.decode_tokens))
    rows = []
    for name, e in entries.items():
        rows.append({"model": name, "train_tokens_per_sec": statistics.median(e["train"]),
                     "decode_tokens_per_sec": statistics.median(e["decode"]),
                     "kv_cache_bytes_per_token": kv_cache_bytes_per_token(e["cfg"])})
    base = rows[0]
    lines = ["| model | train tokens/s | vs gpt2 | decode tokens/s | vs gpt2 | KV cache B/token |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['train_tokens_per_sec']:,.0f} | "
                     f"{r['train_tokens_per_sec'] / base['train_tokens_per_sec']:.2f}x | "
                     f"{r['decode_tokens_per_sec']:,.0f} | "
                     f"{r['decode_tokens_per_sec'] / base['decode_tokens_per_sec']:.2f}x | "
                     f"{r['kv_cache_bytes_per_token']:,} |")
    table = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"rounds": args.rounds, "load_average": [load0, os.getloadavg()],
            "cpus": os.cpu_count(), "backend": jax.default_backend()}
    (out / "speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "speed.md").write_text(table)
    print(table + f"load average at start / end: {load0} / {os.getloadavg()}")


if __name__ == "__main__":
    main()
