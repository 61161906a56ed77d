"""Where a run's metrics go: one small writer interface, one sink per destination.

The loop and the lm-eval hook write each record once, `writer.write_scalars(step, {...})`;
`create_writer` fans it out to `metrics.jsonl`, TensorBoard and the log. The interface is
`clu.metric_writers`' (write_scalars / write_texts / flush / close, a MultiWriter), without
its dependency: clu's TensorBoard sink needs TensorFlow (a 1.4 GB install and a multi-second
import); ours writes the event file with tensorboardX, already a dependency, without letting it
import PyTorch (2-4 s per process, for a type check we never use).

Record names are metrics.jsonl's (`loss`, `val_loss`, `tokens_per_sec`, ...); TensorBoard
files them under `train/`, `val/`, `perf/` (`TENSORBOARD_TAGS`), other names as they are
(`lm_eval/<task>/<metric>`).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from absl import logging

TENSORBOARD_TAGS = {
    "loss": "train/loss", "accuracy": "train/accuracy", "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm", "param_norm": "train/param_norm",
    "tokens_per_sec": "perf/tokens_per_sec", "mfu": "perf/mfu",
    "val_loss": "val/loss", "val_accuracy": "val/accuracy", "val_perplexity": "val/perplexity",
}


class MetricWriter(Protocol):
    """What the loop writes to (process 0: files; other processes: nothing)."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One record of named numbers at `step`."""

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """Named texts (e.g. a sample) at `step`."""

    def flush(self) -> None:
        """Makes everything written so far readable by others (files, TensorBoard)."""

    def close(self) -> None:
        """Flushes and releases the files."""


class JsonlWriter:
    """`metrics.jsonl`: one JSON line `{"step": step, **scalars}` per record (appends, so a
    resumed run continues the file). Texts are not written (they go to the console).

    `start_step`: the step the run starts after (the checkpoint it resumed or rolled back to;
    0 for a new run). Records of later steps are dropped first: those steps run again, and each
    step's record must appear once. A line cut short by a kill is dropped too. None: keep all.
    """

    def __init__(self, path: Path, start_step: int | None = None):
        if start_step is not None:
            keep_records_up_to(path, start_step)
        self._file = open(path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **scalars}) + "\n")

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        pass

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardWriter:
    """A TensorBoard event file in `directory` (tensorboardX), tags from `TENSORBOARD_TAGS`.
    Events after `start_step` from an earlier run are purged (tensorboardX `purge_step`)."""

    def __init__(self, directory: Path, start_step: int | None = None):
        purge = None if start_step is None else start_step + 1
        self._writer = _tensorboardx_summary_writer()(str(directory), purge_step=purge)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(TENSORBOARD_TAGS.get(name, name), value, step)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for name, text in texts.items():
            self._writer.add_text(name, text, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class LoggingWriter:
    """One INFO line per record in the absl log (`[step] name=value, ...`)."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for name, text in texts.items():
            logging.info("[%d] %s: %s", step, name, text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiWriter:
    """Writes every call to each of `writers` (none: a writer that writes nothing)."""

    def __init__(self, writers: Sequence[MetricWriter] = ()):
        self.writers = tuple(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        for w in self.writers:
            w.write_texts(step, texts)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


def create_writer(workdir: Path, main_process: bool, tensorboard: bool = True,
                  start_step: int | None = None) -> MultiWriter:
    """The run's writer: on the main process `<workdir>/metrics.jsonl`, `<workdir>/tensorboard/`
    (unless `tensorboard=False`) and the log; elsewhere nothing (files are process 0's).
    `start_step`: the checkpoint step a run starts from (0: new); the files forget later steps
    (they run again). None: keep everything."""
    if not main_process:
        return MultiWriter()
    sinks = [JsonlWriter(Path(workdir) / "metrics.jsonl", start_step), LoggingWriter()]
    if tensorboard:
        sinks.append(TensorBoardWriter(Path(workdir) / "tensorboard", start_step))
    return MultiWriter(sinks)


def keep_records_up_to(path: Path, step: int) -> None:
    """Rewrites the JSON-lines file `path` (if any) without its records of steps after `step`
    and without lines that are not whole JSON records; atomically (a temporary file renamed
    over it), and only if something is dropped."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = [ln for ln in lines if _record_step(ln) is not None and _record_step(ln) <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)
    logging.info("%s: dropped %d record(s) after step %d (those steps run again).", path,
                 len(lines) - len(kept), step)


def _record_step(line: str) -> int | None:
    """The step of one whole metrics.jsonl line, None for a torn or foreign line."""
    if not line.endswith("\n"):
        return None
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _tensorboardx_summary_writer():
    """tensorboardX's SummaryWriter class, imported without PyTorch when torch is not loaded.

    tensorboardX's writer module runs `import torch` only to recognise torch tensors in
    `add_*` (we pass Python floats and str); a `None` in `sys.modules` makes that import fail
    fast, and tensorboardX falls back to numpy. The entry is removed right after, so a later
    `import torch` works as usual.
    """
    with contextlib.ExitStack() as stack:
        if "torch" not in sys.modules and "tensorboardX" not in sys.modules:
            sys.modules["torch"] = None
            stack.callback(sys.modules.pop, "torch", None)
        from tensorboardX import SummaryWriter  # noqa: PLC0415 (lazy: process 0 only)
    return SummaryWriter
