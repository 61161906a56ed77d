"""Plots train/val loss of a run's metrics.jsonl and prints its tokens/s.

    python experiments/shakespeare_char_cpu/plot.py /tmp/sc experiments/shakespeare_char_cpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(workdir: str, out_dir: str) -> None:
    records = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in records if "loss" in r}
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(list(train), list(train.values()), lw=0.6, alpha=0.6, label="train (per step)")
    ax.plot(list(val), list(val.values()), "o-", label="val (20 fixed batches)")
    ax.axhline(1.88, ls="--", c="gray", lw=0.8, label="nanoGPT CPU ~1.88")
    ax.set(xlabel="step", ylabel="loss (nats/char)", ylim=(1.0, 4.5),
           title="shakespeare_char:cpu (4L/4H/128, block 64, batch 12)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "loss_curve.png", dpi=120)
    print("final val", val[max(val)], "at step", max(val), "best", min(val.values()))
    speeds = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r]
    speeds = speeds or tensorboard_values(Path(workdir), "perf/tokens_per_sec")
    speeds.sort()
    print(f"tokens/s: median {speeds[len(speeds) // 2]:,.0f}, best {speeds[-1]:,.0f} "
          f"over {len(speeds)} log intervals")


def tensorboard_values(workdir: Path, tag: str) -> list:
    """Scalar values of `tag` in the run's TensorBoard event file(s)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            out += [v.simple_value for v in event.summary.value if v.tag == tag]
    return out


if __name__ == "__main__":
    main(*sys.argv[1:3])
