"""Host side of the per-step training metrics, and the NaN/Inf guard.

`Meter` buffers the device metrics of each step (no host sync per step) and, at a flush,
fetches them together, checks them (`check_finite`) and writes them to `metrics.jsonl`,
TensorBoard and the progress bar. The loop flushes before every evaluation and every save,
so a non-finite state is never evaluated or saved. Also the MFU denominator (`peak_flops`).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp

from gpt2jax.training.step import TrainingDivergedError


def check_finite(step: int, metrics: dict, checkpointer) -> None:
    """Raises TrainingDivergedError if step `step` diverged (its loss or its update).

    The loss is measured on the params *before* the step's update, so a finite loss does not
    make the new params finite (an inf learning rate or gradient): `update_finite` (the
    gradient norm and every new parameter, reduced on device) covers that.

    Args:
      step: the step just completed (1-based).
      metrics: host values of that step: loss_sum, weight_sum, grad_norm, learning_rate,
        update_finite.
      checkpointer: the run's `Checkpointer`; its latest step is the last good checkpoint
        (nothing non-finite is ever saved).
    """
    loss = float(metrics["loss_sum"] / max(metrics["weight_sum"], 1.0))
    if not math.isfinite(loss):
        what = f"Loss is {loss} at step {step}"
    elif not bool(metrics["update_finite"]):
        what = (f"The update of step {step} made the parameters non-finite (grad norm "
                f"{float(metrics['grad_norm'])}, learning rate "
                f"{float(metrics['learning_rate'])})")
    else:
        return
    good = checkpointer.latest_step()
    kept = ("no checkpoint was saved before it" if good is None else
            f"the last good checkpoint is step {good} in {checkpointer.directory}")
    raise TrainingDivergedError(
        f"{what}; stopped before saving it, {kept}. Lower train.learning_rate or raise "
        "train.warmup_steps, then run again (it resumes from the last good checkpoint).")


class Meter:
    """Buffers per-step device metrics; flushes them to jsonl/TensorBoard/console together.

    Args:
      run: the loop's `Run` (workdir, tc, writer, checkpointer).
      flops_per_token: model training FLOPs per token (MFU numerator).
      peak_flops: peak FLOP/s of the mesh (MFU denominator).
    """

    def __init__(self, run, flops_per_token: float, peak_flops: float):
        self.run, self.pending = run, []
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.tokens_per_step = run.tc.batch_size * run.tc.block_size
        self.t0: float | None = None
        main = jax.process_index() == 0
        self.jsonl = open(run.workdir / "metrics.jsonl" if main else os.devnull, "a")
        self.last_loss = float("nan")

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def flush(self, bar) -> None:
        """Fetches the pending metrics (one host transfer), checks them, writes them.

        Raises TrainingDivergedError at the first pending step that diverged.
        """
        if not self.pending:
            return
        host = jax.device_get([m for _, m in self.pending])
        now = time.perf_counter()
        for (step, _), m in zip(self.pending, host):
            check_finite(step, m, self.run.checkpointer)
            loss = float(m["loss_sum"] / max(m["weight_sum"], 1.0))
            record = {"step": step, "loss": loss,
                      "accuracy": float(m["correct_sum"] / max(m["weight_sum"], 1.0)),
                      "learning_rate": float(m["learning_rate"]),
                      "grad_norm": float(m["grad_norm"]), "param_norm": float(m["param_norm"])}
            if step == self.pending[-1][0]:
                record.update(self._speed(now))
            self.write(record)
            self.last_loss = loss
        self._tensorboard(self.pending[-1][0], record)
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['learning_rate']:.2e}")
        self.pending = []

    def _speed(self, now: float) -> dict:
        """tokens/s and MFU since the previous flush (the first flush includes compilation)."""
        previous, self.t0 = self.t0, now
        if previous is None:
            return {}
        tok_s = self.tokens_per_step * len(self.pending) / (now - previous)
        return {"tokens_per_sec": tok_s, "mfu": tok_s * self.flops_per_token / self.peak}

    def write(self, record: dict) -> None:
        """Appends one JSON line to metrics.jsonl (process 0; /dev/null elsewhere)."""
        self.jsonl.write(json.dumps(record) + "\n")

    def _tensorboard(self, step: int, m: dict) -> None:
        w = self.run.writer
        for name in ("loss", "accuracy", "learning_rate", "grad_norm", "param_norm"):
            w.add_scalar(f"train/{name}", m[name], step)
        if "tokens_per_sec" in m:
            w.add_scalar("perf/tokens_per_sec", m["tokens_per_sec"], step)
            w.add_scalar("perf/mfu", m["mfu"], step)
        self.jsonl.flush()

    def close(self) -> None:
        self.jsonl.close()


def peak_flops(run) -> float:
    """Peak FLOP/s of the whole mesh: configured per device, else a measured matmul."""
    per_device = run.setup.options.peak_flops or measure_matmul_peak()
    if jax.default_backend() == "cpu":  # simulated CPU devices share the same cores
        return per_device
    return per_device * len(run.trainer.mesh.devices.flat)


def measure_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s of one device (the MFU denominator when not configured)."""
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best
