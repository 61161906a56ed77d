"""`python run.py --mode=train --config=configs/FILE.py[:ARG] --workdir=DIR`: train or fine-tune.

Resumes automatically when DIR holds a checkpoint; see gpt2jax/training/loop.py for the
workdir layout.
"""

from __future__ import annotations

from gpt2jax.errors import ConfigError
from gpt2jax.training.loop import train_and_evaluate


def main(config, args) -> None:
    """Runs `training.loop.train_and_evaluate(config, args.workdir)` and prints the result."""
    if not args.workdir:
        raise ConfigError("--mode=train needs --workdir=DIR (checkpoints, logs, the HF export).")
    if "://" in args.workdir:  # pathlib would turn gs://b/x into a local folder gs:/b/x
        raise ConfigError(f"--workdir={args.workdir} is not a local folder; the workdir is "
                          "written with local paths: use a local disk (one host) or a folder "
                          "every host mounts (e.g. the bucket through Cloud Storage FUSE).")

    result = train_and_evaluate(config, args.workdir, explicit=args.config_overrides)
    val, train = result["val_loss"], result["train_loss"]
    val_text = "n/a" if val is None else f"{val:.4f}"
    train_text = "n/a" if train != train else f"{train:.4f}"  # NaN: no step ran now
    print(f"done: step {result['step']}, train loss {train_text}, "
          f"val loss {val_text}; workdir {args.workdir}", flush=True)
