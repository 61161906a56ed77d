"""Memory of the train step, full logits vs the chunked loss (`train.loss_chunk_size`), from
XLA's `compiled.memory_analysis()`: no device memory is used, the step is only compiled.

    python bench/loss_memory.py                          # 124M at 16 x 1024, chunk 0 vs 1024
    python bench/loss_memory.py --size=xl --batches=1,2  # 1.5B
    python bench/loss_memory.py --chunks=0,1024,4096
    python bench/loss_memory.py --remat=full             # blocks rematerialised

For each loss chunk size it compiles the real `Trainer` train step (AdamW, one micro-batch,
block 1024, the config's default dropout) at two batch sizes on the default backend and
prints argument / output / temp bytes. Temp bytes are affine in the batch (activations and
logits scale with it, workspace does not), so two batch sizes give `temp(B) = a + b * B`;
the largest batch that fits a budget is then `floor((budget - state - a) / b)` where state is
the argument bytes (params + optimizer state + the batch; the donated state is aliased by the
outputs, so only un-aliased outputs add to it).
Budgets are GiB (16 and 80). Compiled on CPU the numbers are XLA:CPU's buffer assignment;
a GPU compile fuses differently but holds the same logits and activations.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo

from configs import common  # noqa: E402
from bench import hardware  # noqa: E402
from gpt2jax.nn.model import GPT2Config  # noqa: E402
from gpt2jax.parallel import sharding  # noqa: E402
from gpt2jax.training import step as train  # noqa: E402

GIB = 1 << 30


def analysis(cfg: GPT2Config, batch: int, block: int, chunk: int) -> dict:
    """memory_analysis() of the compiled train step: bytes of arguments, outputs, aliases,
    temps, and the compile seconds."""
    tc = train.TrainConfig.from_config(common.train_config(
        batch_size=batch, grad_accum_steps=1, block_size=block, loss_chunk_size=chunk))
    mesh = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              devices=jax.devices()[:1])
    trainer = train.Trainer(cfg, tc, mesh, sharding.rules(common.mesh_config()))
    spec = jax.ShapeDtypeStruct((batch, block), jnp.int32, sharding=trainer.batch_sharding)
    fspec = jax.ShapeDtypeStruct((batch, block), jnp.float32, sharding=trainer.batch_sharding)
    start = time.perf_counter()
    with trainer.context():
        compiled = trainer._train_step.lower(
            trainer.abstract_state(), {"inputs": spec, "targets": spec, "weights": fspec}
        ).compile()
    m = compiled.memory_analysis()
    return dict(args=m.argument_size_in_bytes, out=m.output_size_in_bytes,
                alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
                seconds=time.perf_counter() - start)


def max_batch(points: dict, budget: float) -> int:
    """Largest batch with state + temp(B) <= budget, temp affine in B through two points."""
    (b1, m1), (b2, m2) = sorted(points.items())[:2]
    slope = (m2["temp"] - m1["temp"]) / (b2 - b1)
    base = m1["temp"] - slope * b1
    # arguments (state + the batch, whose few KB per row are ignored) plus outputs that do not
    # alias a donated argument (the metrics)
    state = m1["args"] + m1["out"] - m1["alias"]
    room = budget - state - base
    return max(int(room // slope), 0) if slope > 0 else -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="small", choices=sorted(common.GPT2_SIZES))
    p.add_argument("--batches", default="8,16", help="two batch sizes (the first ... second)")
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--chunks", default="0,1024", help="loss_chunk_size values (0 = full)")
    p.add_argument("--scan_layers", action="store_true",
                   help="compile the blocks as one nn.scan (faster compile of big models)")
    p.add_argument("--remat", default="", help="model.remat override (full, dots_saveable)")
    args = p.parse_args()
    print(hardware.describe(), flush=True)
    model = common.model_config(**common.GPT2_SIZES[args.size])
    if args.remat:
        model.remat = args.remat
    if args.scan_layers:
        model.scan_layers = True
    cfg = GPT2Config.from_config(model)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"backend {jax.devices()[0].platform}, GPT-2 {args.size}, block {args.block}, "
          f"AdamW fp32, dropout {cfg.embd_pdrop}, remat {cfg.remat}")
    print(f"{'chunk':>6} {'batch':>6} {'args GiB':>9} {'out GiB':>8} {'alias GiB':>9} "
          f"{'temp GiB':>9} {'compile s':>9}")
    results = {}
    for chunk in (int(c) for c in args.chunks.split(",")):
        results[chunk] = {}
        for b in batches:
            m = analysis(cfg, b, args.block, chunk)
            results[chunk][b] = m
            print(f"{chunk:>6} {b:>6} {m['args'] / GIB:>9.3f} {m['out'] / GIB:>8.3f} "
                  f"{m['alias'] / GIB:>9.3f} {m['temp'] / GIB:>9.3f} {m['seconds']:>9.1f}",
                  flush=True)
    for chunk, points in results.items():
        fits = {gib: max_batch(points, gib * GIB) for gib in (16, 80)}
        print(f"chunk {chunk}: largest batch x {args.block} (from temp = a + b * batch): "
              + ", ".join(f"{gib} GiB -> {n}" for gib, n in fits.items()))


if __name__ == "__main__":
    main()
