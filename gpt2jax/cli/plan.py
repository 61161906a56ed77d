"""`python run.py --mode=plan --config=... [--cpu_devices=N]`: a train step, compiled, no run.

Before paying for a TPU slice or a GPU node: lower and compile the config's train step for its
mesh from abstract shapes (nothing is allocated, no data is read) and print the parameter
sharding table, the state bytes per device, XLA's per-device memory (arguments, outputs,
temporaries, peak) and the lower / compile times. On a CPU host, `--cpu_devices=64`
simulates the slice's 64 devices (XLA:CPU's buffer assignment; run it on the target backend
for that backend's figures). `--compile_n_layer=2` compiles a 2-layer copy after lowering
the whole model (compiling 48 layers on a CPU takes minutes). `--output_json=PATH` also
writes the figures as JSON.

    python run.py --mode=plan --config=configs/gpt2.py:xl --cpu_devices=64 \
        --config.mesh.data=4 --config.mesh.fsdp=16 --config.train.batch_size=64 \
        --config.train.grad_accum_steps=1 --config.model.remat=full --config.model.scan_layers=True
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from gpt2jax.errors import ConfigError
from gpt2jax.nn.model import GPT2Config, param_count
from gpt2jax.parallel import sharding
from gpt2jax.training.step import BATCH_KEYS, Trainer, TrainConfig

_BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "weights": jnp.float32}


def lower(cfg: GPT2Config, tc: TrainConfig, config):
    """(lowered train step, abstract sharded state, trainer) of `cfg` on `config.mesh`."""
    mesh, rules = sharding.make_mesh(config.mesh), sharding.rules(config.mesh)
    trainer = Trainer(cfg, tc, mesh, rules)
    state = trainer.abstract_state()
    batch = {n: jax.ShapeDtypeStruct((tc.batch_size, tc.block_size), _BATCH_DTYPES[n],
                                     sharding=trainer.batch_sharding) for n in BATCH_KEYS}
    return trainer.lower_train_step(state, batch), state, trainer


def plan(config, compile_n_layer: int = 0) -> dict:
    """Lowers and compiles `config`'s train step for its mesh on the current devices.

    Args:
      config: a training config (model, train, mesh).
      compile_n_layer: compile a copy with this many layers (0 = the config's own); the
        full model is always lowered. A deep model's compile on CPU takes minutes.
    Returns:
      {"devices", "backend", "mesh", "params" (lowered), "compiled_n_layer", "state_bytes",
      "state_bytes_per_device" (of the compiled model), "memory" (XLA's per-device bytes;
      {} when the backend gives none), "lower_s", "compile_s", "sharding_table"}.
    """
    cfg, tc = GPT2Config.from_config(config.model), TrainConfig.from_config(config.train)
    if tc.block_size > cfg.n_positions:
        raise ConfigError(f"train.block_size={tc.block_size} exceeds model.n_positions="
                          f"{cfg.n_positions}; lower the block size or raise n_positions.")
    t0 = time.perf_counter()
    lowered, state, trainer = lower(cfg, tc, config)
    t1 = time.perf_counter()
    if compile_n_layer and compile_n_layer != cfg.n_layer:
        lowered, state, trainer = lower(cfg.replace(n_layer=compile_n_layer), tc, config)
    compiled = lowered.compile()
    t2 = time.perf_counter()
    leaves = jax.tree.leaves(state)
    return {
        "devices": jax.device_count(), "backend": jax.default_backend(),
        "mesh": dict(trainer.mesh.shape), "params": param_count(cfg),
        "compiled_n_layer": trainer.cfg.n_layer,
        "state_bytes": sum(x.size * x.dtype.itemsize for x in leaves),
        "state_bytes_per_device": sum(math.prod(x.sharding.shard_shape(x.shape))
                                      * x.dtype.itemsize for x in leaves),
        "memory": sharding.memory_analysis(compiled),
        "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
        "sharding_table": sharding.format_sharding_table(trainer.state_sharding.params,
                                                         state.params),
    }


# Nothing runs the step: skip LLVM's optimisations (the bytes are decided before codegen).
FAST_CODEGEN = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def main(config, args) -> dict:
    """Prints the plan of `config` (and writes it to `--output_json`)."""
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_CODEGEN}".strip()
    out = Path(args.output_json) if args.output_json else None
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--output_json={out}: the folder {out.parent} does not exist; "
                          "create it or pass another path.")
    result = plan(config, args.compile_n_layer)
    print(result["sharding_table"])
    gib = 2.0 ** 30
    print(f"{result['backend']}: {result['devices']} devices, mesh {result['mesh']}; "
          f"{result['params']:,} parameters lowered, {result['compiled_n_layer']} layers "
          f"compiled: state {result['state_bytes'] / gib:.2f} GiB, "
          f"{result['state_bytes_per_device'] / gib:.3f} GiB per device")
    memory = result["memory"]
    print("per-device memory (XLA): " + (", ".join(
        f"{k} {v / gib:.3f} GiB" for k, v in memory.items()) if memory else "not available"))
    print(f"lowered in {result['lower_s']} s, compiled in {result['compile_s']} s (LLVM "
          "optimisations off unless XLA_FLAGS sets xla_backend_optimization_level)")
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return result
