"""Training speed: gpt2jax vs an eager PyTorch peer (HF GPT2LMHeadModel + torch AdamW), CPU fp32.

    python bench/train.py                 # both shapes
    python bench/train.py --shapes=a --steps=20

Shapes: (a) nanoGPT's CPU recipe (4L/4H/128, vocab 65, T=64, B=12); (b) GPT-2 124M at
B=4 x T=256. Prints tokens/s of both, the ratio, and MFU = tokens/s * (6N + 12 L E T) over
the machine's fp32 matmul peak measured here (best of numpy and XLA on a 2048^2 matmul).
Targets: (a) >= 2x the peer; (b) >= 1.5x and >= 75% of the measured peak.

gpt2jax runs twice: on one CPU device, and data-parallel over `--cpu_devices` CPU devices
(default: one per core; what `run.py --cpu_devices=N` does), since XLA:CPU's per-op
threading uses small matrices poorly. The peer uses all cores as intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo

from bench import hardware  # noqa: E402

SHAPES = {
    "a": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=65, block=64, batch=12),
    "b": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block=256, batch=4),
}


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict:
    """Best fp32 matmul FLOP/s of numpy (BLAS) and of XLA on this machine."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = {}
    for name, f in (("numpy", lambda: a @ a),
                    ("xla", lambda: jax.block_until_ready(_jmm(ja, ja)))):
        if name == "xla":
            ja = jnp.asarray(a)
            _jmm(ja, ja).block_until_ready()
        f()
        best = min(_timed(f) for _ in range(repeats))
        out[name] = 2 * n ** 3 / best
    out["peak"] = max(out.values())
    return out


_jmm = jax.jit(lambda x, y: x @ y)


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def bench_torch(s: dict, steps: int) -> float:
    """tokens/s of HF GPT2LMHeadModel + torch.optim.AdamW (fp32, eager)."""
    import torch
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    cfg = HFConfig(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"],
                   vocab_size=s["vocab_size"], n_positions=max(s["block"], 64),
                   embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,
                   bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, s["vocab_size"], (s["batch"], s["block"] + 1))

    def step():
        loss = model(ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * s["batch"] * s["block"] / (time.perf_counter() - t)


def bench_jax(s: dict, steps: int, devices: int = 1) -> tuple[float, int]:
    """(tokens/s, compile count) of gpt2jax's jitted train_step, data-parallel over the first
    `devices` CPU devices (1 = plain single-device training)."""
    from ml_collections import ConfigDict

    from configs import common
    from gpt2jax.parallel import sharding
    from gpt2jax.training import step as train
    from gpt2jax.nn.model import GPT2Config

    cfg = GPT2Config(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"],
                     vocab_size=s["vocab_size"], n_positions=max(s["block"], 64),
                     embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    tc = train.TrainConfig.from_config(common.train_config(
        batch_size=s["batch"], grad_accum_steps=1, block_size=s["block"], warmup_steps=10))
    mesh = sharding.make_mesh(ConfigDict(dict(data=devices, fsdp=1, tensor=1)),
                              devices=jax.devices()[:devices])
    trainer = train.Trainer(cfg, tc, mesh, sharding.rules(common.mesh_config()))
    state = trainer.init(0)
    x = np.random.default_rng(0).integers(0, s["vocab_size"], (s["batch"], s["block"] + 1))
    batch = trainer.put_batch({"inputs": x[:, :-1].astype(np.int32),
                               "targets": x[:, 1:].astype(np.int32),
                               "weights": np.ones((s["batch"], s["block"]), np.float32)})
    for _ in range(2):
        state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)
    return steps * s["batch"] * s["block"] / (time.perf_counter() - t), trainer.compile_count()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="a,b")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="", help="also write the results as JSON here")
    p.add_argument("--cpu_devices", type=int, default=os.cpu_count(),
                   help="also time gpt2jax data-parallel over this many CPU devices (run.py "
                        "--cpu_devices); <= 1 skips that row")
    args = p.parse_args()
    print(hardware.describe(), flush=True)
    from gpt2jax.parallel import distributed

    distributed.set_cpu_devices(max(args.cpu_devices, 1))
    from gpt2jax.nn.model import GPT2Config
    from gpt2jax.training.step import model_flops_per_token

    peak = matmul_peak()
    print(f"matmul fp32 peak: numpy {peak['numpy'] / 1e9:.1f} GFLOP/s, "
          f"XLA {peak['xla'] / 1e9:.1f} GFLOP/s; cores {os.cpu_count()}; "
          f"load avg {os.getloadavg()[0]:.1f}")
    results = {"peak_flops": peak}
    for name in args.shapes.split(","):
        s = SHAPES[name]
        steps = args.steps if name == "a" else max(args.steps // 2, 3)
        fpt = model_flops_per_token(GPT2Config(
            n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"],
            vocab_size=s["vocab_size"], n_positions=max(s["block"], 64)), s["block"])
        torch_tps = bench_torch(s, steps)
        row = {"torch_tok_s": torch_tps, "torch_mfu": torch_tps * fpt / peak["peak"]}
        print(f"({name}) {s['n_layer']}L/{s['n_head']}H/{s['n_embd']} B={s['batch']} "
              f"T={s['block']}: torch {torch_tps:,.0f} tok/s (MFU {row['torch_mfu']:.0%})",
              flush=True)
        for devices in sorted({1, max(args.cpu_devices, 1)}):
            if s["batch"] % devices:
                continue
            jax_tps, compiles = bench_jax(s, steps, devices)
            key = "" if devices == 1 else f"_dp{devices}"
            row.update({f"jax{key}_tok_s": jax_tps, f"ratio{key}": jax_tps / torch_tps,
                        f"jax{key}_mfu": jax_tps * fpt / peak["peak"], f"compiles{key}": compiles})
            print(f"    gpt2jax on {devices} CPU device(s): {jax_tps:,.0f} tok/s "
                  f"(MFU {jax_tps * fpt / peak['peak']:.0%}), ratio {jax_tps / torch_tps:.2f}x, "
                  f"train_step compiled {compiles}x", flush=True)
        results[name] = row
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
