"""Scan over layers vs unrolled blocks: lower + compile time and step time of the train step.

    python bench/scan_layers.py                       # 124M, batch 4 x 256, fp32, 1 CPU device
    python bench/scan_layers.py --steps=3 --repeats=1 # quicker

The model is configs/gpt2.py:small (124M, dropout off) with `model.scan_layers` False and
True, the same weights (`nn/scan.stack_layers`), the train step of `training/step.py`
(forward, backward, AdamW) jitted on one device. For each form it times `jit(...).lower`
and `.compile()` (a fresh trace each, no compilation cache), then the steps of both forms
in turns (ABAB...) so that a shared machine's load drifts over both alike; it prints the
median step time of each and the ratio scanned / unrolled, plus the loss of step 1 of both
(equal weights and batch: they must agree). For the 1.5B 64-device lowering see
`python run.py --mode=plan` (gpt2jax/cli/plan.py) with --config.model.scan_layers=True.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo

from configs import common, gpt2  # noqa: E402
from bench import hardware  # noqa: E402
from gpt2jax.nn.model import GPT2Config, init_params  # noqa: E402
from gpt2jax.nn.scan import stack_layers  # noqa: E402
from gpt2jax.training import step as train  # noqa: E402


def _compiled_step(cfg: GPT2Config, tc, tx, state, batch) -> tuple:
    """(compiled step, lower seconds, compile seconds) of the train step for `cfg`."""
    fn = jax.jit(train.make_train_step(cfg, tc, tx), donate_argnums=(0,))
    t0 = time.perf_counter()
    lowered = fn.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", help="configs/gpt2.py size")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per form and repeat")
    p.add_argument("--repeats", type=int, default=2, help="ABAB rounds")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    args = p.parse_args()
    print(hardware.describe(), flush=True)

    config = gpt2.get_config(args.size)
    config.model.update(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    cfg = GPT2Config.from_config(config.model)
    tc = train.TrainConfig.from_config(common.train_config(
        batch_size=args.batch, grad_accum_steps=1, block_size=args.block))
    tx = train.make_optimizer(tc)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
    x = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.block + 1))
    batch = {"inputs": x[:, :-1].astype(np.int32), "targets": x[:, 1:].astype(np.int32),
             "weights": np.ones((args.batch, args.block), np.float32)}
    forms = {"unrolled": (cfg, params),
             "scanned": (cfg.replace(scan_layers=True), stack_layers(params))}
    runs, result = {}, {"devices": jax.device_count(), "backend": jax.default_backend(),
                        "model": args.size, "batch": args.batch, "block": args.block}
    for name, (c, p_) in forms.items():
        state = train.TrainState(step=np.int32(0), params=p_, opt_state=tx.init(p_),
                                 rng=jax.random.PRNGKey(0))
        state = jax.tree.map(np.asarray, state)  # a host copy, so donation cannot take it
        compiled, t_lower, t_compile = _compiled_step(c, tc, tx, state, batch)
        new_state, metrics = compiled(jax.device_put(state), batch)
        result[name] = {"lower_s": round(t_lower, 2), "compile_s": round(t_compile, 2),
                        "first_loss": float(metrics["loss_sum"] / metrics["weight_sum"]),
                        "step_s": []}
        runs[name] = [compiled, new_state]
        print(name, result[name], flush=True)
    for _ in range(args.repeats):
        for name, run in runs.items():
            for _ in range(args.steps):
                t = time.perf_counter()
                run[1], metrics = run[0](run[1], batch)
                jax.block_until_ready(metrics)
                result[name]["step_s"].append(time.perf_counter() - t)
    for name in runs:
        result[name]["median_step_s"] = round(statistics.median(result[name]["step_s"]), 3)
        result[name]["step_s"] = [round(s, 3) for s in result[name]["step_s"]]
    result["step_ratio_scanned_over_unrolled"] = round(
        result["scanned"]["median_step_s"] / result["unrolled"]["median_step_s"], 3)
    result["compile_ratio_scanned_over_unrolled"] = round(
        (result["scanned"]["lower_s"] + result["scanned"]["compile_s"])
        / (result["unrolled"]["lower_s"] + result["unrolled"]["compile_s"]), 3)
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
