"""One process of the multi-host test (tests/test_multihost.py launches it; not a test itself).

    python tests/multihost_worker.py --num_processes=2 --process_id=0 --port=12345 \
        --workdir=/tmp/run --start=0 --stop=5 --out=/tmp/p0.json

Trains a tiny GPT-2 on a 4-device global mesh from step `start` to `stop` (restoring the
Orbax checkpoint at `start` when start > 0, saving one at `stop`), each process feeding only
its own rows of every global batch, and writes {"losses": {step: loss}} to `--out`.
The device count per process comes from XLA_FLAGS, set by the launcher.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

GLOBAL_BATCH, BLOCK, VOCAB = 8, 16, 96


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--workdir", required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, default=5)
    p.add_argument("--out", required=True)
    p.add_argument("--dump_after_s", type=int, default=200, help="print stacks if still alive")
    return p.parse_args()


def global_batch(step: int):
    """The whole batch of `step` [GLOBAL_BATCH, BLOCK + 1], identical on every process."""
    import numpy as np

    return np.random.default_rng(1000 + step).integers(0, VOCAB, (GLOBAL_BATCH, BLOCK + 1))


def build(num_processes: int, devices=None):
    """(model config, Trainer, mesh, rules) on a 4-device mesh of (data 2, fsdp 2)."""
    from configs import common
    from gpt2jax.parallel import sharding
    from gpt2jax.nn.model import GPT2Config
    from gpt2jax.training.step import TrainConfig, Trainer

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=32, n_layer=2, n_head=4,
                     embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    tc = TrainConfig.from_config(common.train_config(
        batch_size=GLOBAL_BATCH, grad_accum_steps=1, block_size=BLOCK, num_steps=10,
        learning_rate=3e-3, min_learning_rate=3e-3, warmup_steps=0, lr_decay_steps=10,
        schedule="constant"))
    mesh_cfg = common.mesh_config()
    if num_processes > 1:  # hosts as slices: data across hosts (DCN), fsdp inside (ICI)
        mesh_cfg.update(data=1, fsdp=2, tensor=1, dcn_data=num_processes)
    else:
        mesh_cfg.update(data=2, fsdp=2, tensor=1)
    mesh = sharding.make_mesh(mesh_cfg, devices)
    axis_rules = sharding.rules(mesh_cfg)
    return cfg, Trainer(cfg, tc, mesh, axis_rules), mesh, axis_rules


def host_batch(step: int, mesh, axis_rules) -> dict:
    """This process's rows of the global batch of `step`."""
    import numpy as np

    from gpt2jax.parallel.placement import Placement

    rows = global_batch(step)[Placement(mesh, axis_rules).host_batch_rows(GLOBAL_BATCH)]
    return {"inputs": rows[:, :-1].astype(np.int32), "targets": rows[:, 1:].astype(np.int32),
            "weights": np.ones((rows.shape[0], BLOCK), np.float32)}


def _log(msg: str) -> None:
    print(f"[worker] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    args = parse()
    faulthandler.dump_traceback_later(args.dump_after_s, exit=False)
    from gpt2jax.parallel import distributed

    distributed.initialize(distributed.ProcessFlags(
        f"127.0.0.1:{args.port}" if args.num_processes > 1 else None,
        args.num_processes if args.num_processes > 1 else None,
        args.process_id if args.num_processes > 1 else None), auto=False, timeout_s=60)
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    from gpt2jax.training import checkpoint
    from gpt2jax.parallel import sharding

    cfg, trainer, mesh, axis_rules = build(args.num_processes)
    assert jax.device_count() == 4, jax.device_count()
    ckpt = checkpoint.Checkpointer(args.workdir, keep=2, keep_best=0, async_save=True)
    if args.start:
        state, data_state, _ = ckpt.restore(args.start, trainer.abstract_state())
        assert data_state["next_step"] == args.start, data_state
    else:
        state = trainer.init(0)
    if args.start == 0 and distributed.is_main_process():
        print(sharding.format_sharding_table(trainer.state_sharding.params, state.params))
    losses = {}
    for step in range(args.start, args.stop):
        batch = trainer.placement.put_batch(host_batch(step, mesh, axis_rules))
        assert batch["inputs"].shape == (GLOBAL_BATCH, BLOCK)
        _log(f"step {step}")
        state, metrics = trainer.train_step(state, batch)
        losses[step] = float(metrics["loss_sum"]) / float(metrics["weight_sum"])
    _log("saving")
    ckpt.save(args.stop, state, {"next_step": args.stop}, {"model": cfg.to_dict()})
    ckpt.close()
    Path(args.out).write_text(json.dumps({
        "losses": losses, "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(), "mesh": dict(mesh.shape),
        "rows": str(trainer.placement.host_batch_rows(GLOBAL_BATCH))}))


if __name__ == "__main__":
    main()
