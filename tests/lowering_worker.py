"""Ahead-of-time check: a config's train step lowers and compiles for N devices, nothing allocated.

    python tests/lowering_worker.py --config=configs/gpt2.py:xl --devices=64 --fsdp=16 \
        --batch=64 --remat=full [--scan_layers=1]

Runs in its own process (tests/test_lowering.py launches it) because the simulated device
count (`--xla_force_host_platform_device_count`) must be set before JAX starts. The state
(params + AdamW moments) and the batch are `jax.ShapeDtypeStruct`s with shardings, so the
1.5B model is never materialised. Prints one JSON line with XLA's per-device bytes
(`compiled.memory_analysis()`) and the size of the state per device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/gpt2.py:xl")
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--data", type=int, default=-1)
    p.add_argument("--fsdp", type=int, default=16)
    p.add_argument("--tensor", type=int, default=1)
    p.add_argument("--batch", type=int, default=64, help="global batch (sequences)")
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--compile_n_layer", type=int, default=0,
                   help="compile a copy with this many layers (0 = the config's); the full "
                        "config is always lowered")
    p.add_argument("--remat", default="full", help="none | full | dots_saveable")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype")
    p.add_argument("--scan_layers", type=int, default=0,
                   help="1 = the blocks under nn.scan (model.scan_layers): one block compiled")
    p.add_argument("--fast_compile", type=int, default=1,
                   help="skip LLVM optimisations (bytes are decided before codegen)")
    return p.parse_args()


def setup_env(args: argparse.Namespace) -> None:
    flags = [f"--xla_force_host_platform_device_count={args.devices}"]
    if args.fast_compile:
        flags += ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(REPO))


def load_config(spec: str):
    from ml_collections import config_flags  # noqa: F401  (same loader as run.py)
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("cfg", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def main() -> None:
    args = parse()
    setup_env(args)
    import jax

    from gpt2jax.parallel import sharding
    from gpt2jax.nn.model import GPT2Config

    t0 = time.perf_counter()
    config = load_config(args.config)
    config.model.remat, config.model.dtype = args.remat, args.dtype
    config.model.scan_layers = bool(args.scan_layers)
    cfg = GPT2Config.from_config(config.model)
    full = lower_step(cfg, args)
    t_lower = time.perf_counter() - t0
    if args.compile_n_layer and args.compile_n_layer != cfg.n_layer:
        cfg = cfg.replace(n_layer=args.compile_n_layer)
        lowered, state, mesh = lower_step(cfg, args)
    else:
        lowered, state, mesh = full
    compiled = lowered.compile()
    t_compile = time.perf_counter() - t0 - t_lower
    leaves = jax.tree.leaves(state)
    state_per_device = sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
    print(sharding.format_memory_analysis(compiled), file=sys.stderr)
    print(json.dumps({
        "config": args.config, "lowered_params": _count(full[1].params),
        "compiled_n_layer": cfg.n_layer, "compiled_params": _count(state.params),
        "mesh": dict(mesh.shape), "devices": jax.device_count(), "remat": args.remat,
        "scan_layers": cfg.scan_layers,
        "state_bytes": sum(x.size * x.dtype.itemsize for x in leaves),
        "state_bytes_per_device": state_per_device,
        "memory": sharding.memory_analysis(compiled),
        "lower_s": round(t_lower, 1), "compile_s": round(t_compile, 1),
        "cpu_s": round(time.process_time(), 1),
    }))


def _count(params) -> int:
    import jax

    return sum(x.size for x in jax.tree.leaves(params))


def lower_step(cfg, args: argparse.Namespace):
    """(lowered train step, abstract sharded state, mesh) for `cfg` on the requested mesh."""
    import jax
    import jax.numpy as jnp

    from configs import common
    from gpt2jax.parallel import sharding
    from gpt2jax.parallel.placement import Placement
    from gpt2jax.nn.model import init_params
    from gpt2jax.training.step import TrainConfig, TrainState, make_optimizer, make_train_step

    tc = TrainConfig.from_config(common.train_config(
        batch_size=args.batch, grad_accum_steps=1, block_size=args.block))
    mesh_cfg = common.mesh_config()
    mesh_cfg.update(data=args.data, fsdp=args.fsdp, tensor=args.tensor)
    mesh, axis_rules = sharding.make_mesh(mesh_cfg), sharding.rules(mesh_cfg)
    tx = make_optimizer(tc)

    def init_fn(rng):
        params = init_params(cfg, rng, boxed=True)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.PRNGKey(0))

    place = Placement(mesh, axis_rules)
    state, state_sh = place.abstract(init_fn, jax.random.PRNGKey(0))
    batch_sh = place.batch_sharding()
    batch = {n: jax.ShapeDtypeStruct((args.batch, args.block), d, sharding=batch_sh)
             for n, d in (("inputs", jnp.int32), ("targets", jnp.int32), ("weights", jnp.float32))}
    step = jax.jit(make_train_step(cfg, tc, tx), in_shardings=(state_sh, batch_sh),
                   out_shardings=(state_sh, place.replicated()), donate_argnums=(0,))
    with sharding.mesh_rules(mesh, axis_rules):
        lowered = step.lower(state, batch)
    return lowered, state, mesh


if __name__ == "__main__":
    main()
