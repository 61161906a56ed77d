"""Host side of the per-step training metrics: the NaN/Inf guard, speed, MFU.

`StepMetrics` keeps the device metrics of each step (no host sync per step) and fetches them
together, checking each step (`check_finite`); `Throughput` turns wall time into tokens/s and
MFU (`peak_flops` is the denominator); `log_steps` joins them and writes the records to a
`metric_writers.MetricWriter` (jsonl, TensorBoard, log). The loop logs before every
evaluation and every save, so a non-finite state is never evaluated or saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

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


class StepMetrics:
    """The device metrics of the steps since the last fetch (no host sync per step).

    Args:
      checkpointer: the run's `Checkpointer` (named in the divergence error).
    """

    def __init__(self, checkpointer):
        self.checkpointer, self.pending = checkpointer, []
        self.last_step = 0  # the newest step fetched

    def add(self, step: int, metrics: dict) -> None:
        """Keeps step `step`'s metrics (device arrays; nothing is fetched)."""
        self.pending.append(((step,), metrics, False))

    def add_steps(self, steps: Sequence[int], metrics: dict) -> None:
        """Keeps the metrics of `steps`, each array stacked [len(steps)] (`train_steps`)."""
        self.pending.append((tuple(steps), metrics, True))

    def fetch(self) -> list[tuple[int, dict]]:
        """The pending steps' records `(step, train_record(...))`, fetched in one transfer.

        Raises TrainingDivergedError at the first pending step that diverged.
        """
        pending, self.pending = self.pending, []
        host = jax.device_get([m for _, m, _ in pending])
        per_step = [(step, {k: v[i] for k, v in m.items()} if stacked else m)
                    for (steps, _, stacked), m in zip(pending, host)
                    for i, step in enumerate(steps)]
        for step, m in per_step:
            check_finite(step, m, self.checkpointer)
        if per_step:
            self.last_step = per_step[-1][0]
        return [(step, train_record(m)) for step, m in per_step]


def train_record(m: dict) -> dict:
    """metrics.jsonl's record of one step from its host metric sums (floats)."""
    w = max(float(m["weight_sum"]), 1.0)
    return {"loss": float(m["loss_sum"]) / w, "accuracy": float(m["correct_sum"]) / w,
            "learning_rate": float(m["learning_rate"]), "grad_norm": float(m["grad_norm"]),
            "param_norm": float(m["param_norm"])}


class Throughput:
    """tokens/s and MFU between two calls of `measure` (host wall clock).

    Args:
      tokens_per_step: global batch x block size.
      flops_per_token: model training FLOPs per token (MFU numerator).
      peak_flops: peak FLOP/s of the mesh (MFU denominator).
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak, self.t0 = peak_flops, None

    def measure(self, steps: int) -> dict:
        """{tokens_per_sec, mfu} of the `steps` steps since the previous call; {} at the first
        call (its interval would include compilation)."""
        now = time.perf_counter()
        previous, self.t0 = self.t0, now
        if previous is None or steps <= 0:
            return {}
        tok_s = self.tokens_per_step * steps / (now - previous)
        return {"tokens_per_sec": tok_s, "mfu": tok_s * self.flops_per_token / self.peak}


def log_steps(steps: StepMetrics, speed: Throughput, writer) -> dict | None:
    """Fetches and checks the pending steps, writes one record per step to `writer` (the last
    with tokens/s and MFU); returns that last record (None if nothing was pending).

    Raises TrainingDivergedError (before writing anything) if a pending step diverged.
    """
    records = steps.fetch()
    if not records:
        return None
    records[-1][1].update(speed.measure(len(records)))
    for step, record in records:
        writer.write_scalars(step, record)
    return records[-1][1]


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
