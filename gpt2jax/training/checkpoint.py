"""Orbax checkpoints of a training run: save, keep-K + best, resume (reading one for
inference: weights/workdir.py).

A checkpoint at step s is `<workdir>/checkpoints/<s>/` with three items:
- `state`: the `TrainState` (params, optimizer state, step, rng), sharded arrays;
- `data`: the training data iterator state (JSON), so that a resumed run sees the same batches;
- `meta`: JSON with the model config (`GPT2Config` fields), the tokenizer metadata and the step.

Saves are asynchronous (`wait_until_finished` before exit). Kept: the last `keep` checkpoints
plus the `keep_best` with the lowest validation loss. A workdir whose checkpoint holds another
model shape, or was trained on another vocabulary, is refused with an error before anything is
restored or overwritten.

A save that fails (a full disk, a read-only or broken filesystem) is reported once, as
`CheckpointSaveError` naming the disk and the last good checkpoint: an asynchronous save's
failure surfaces at the next `wait_if_failed()` (the loop polls after every step, so a run never
goes on unsaved for long); the failed step's temporary folder is removed and the checkpoints
saved before it are untouched (Orbax deletes old ones only after a save is finalized).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from gpt2jax.errors import ConfigError, StorageError, describe_write_error, is_disk_full
from gpt2jax.nn.model import GPT2Config
from gpt2jax.weights import orbax_quiet
from gpt2jax.weights.workdir import (  # noqa: F401 (re-exported: the run-side names)
    UNRECORDED, ITEMS, LAYOUT_FIELDS, LOAD_OVERRIDES, RESUMABLE_CHANGES,
    CheckpointUnreadableError, checkpoint_dir, load_params_for_inference)

SET_ASIDE = "checkpoints_set_aside"  # <workdir>/<this>/<step>: checkpoints rolled back over


class CheckpointMismatchError(ConfigError):
    """The workdir holds a checkpoint of a different model; nothing was restored or written."""


class CheckpointSaveError(StorageError):
    """A checkpoint could not be written; training stopped, earlier checkpoints are intact."""


def _val_loss(metrics: dict) -> float:
    return metrics["val_loss"]


def _policy(keep: int, keep_best: int):
    cm = ocp.checkpoint_managers
    policies = [cm.LatestN(n=keep)]
    if keep_best > 0:
        policies.append(cm.BestN(get_metric_fn=_val_loss, reverse=True,
                                 n=keep_best, keep_checkpoints_without_metrics=False))
    return cm.AnyPreservationPolicy(policies)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """`config.checkpoint` as a frozen, typed value (configs/common.py:checkpoint_config)."""

    save_every: int
    keep: int
    keep_best: int
    async_save: bool
    resume: bool
    restore_step: int

    def __post_init__(self):
        for name in ("save_every", "keep_best", "restore_step"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"config.checkpoint.{name}={getattr(self, name)!r} must be an "
                                  "int >= 0.")
        if not isinstance(self.keep, int) or self.keep < 1:
            raise ConfigError(f"config.checkpoint.keep={self.keep!r} must be an int >= 1 (the "
                              "newest checkpoint is always kept).")

    @classmethod
    def from_config(cls, checkpoint_config) -> CheckpointConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in checkpoint_config]
        if missing:
            raise ConfigError(f"config.checkpoint is missing {missing}; build it with "
                              "configs/common.py:checkpoint_config().")
        return cls(**{n: checkpoint_config[n] for n in names})


class Checkpointer:
    """An Orbax `CheckpointManager` for one workdir.

    Args:
      workdir: the run directory.
      keep: how many of the most recent checkpoints to keep.
      keep_best: how many best-by-val-loss checkpoints to keep in addition (0 = none).
      async_save: write in a background thread (the device->host copy stays synchronous).
    """

    def __init__(self, workdir: str | Path, keep: int = 3, keep_best: int = 1,
                 async_save: bool = True):
        if keep < 1:
            raise ConfigError(f"checkpoint.keep={keep}; keep at least 1 checkpoint.")
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_policy(keep, keep_best),
            # best_fn makes Orbax write each save's metrics to disk (without it BestN ranks
            # from memory only, and a resumed run forgets which checkpoint was best)
            best_fn=_val_loss if keep_best > 0 else None,
            best_mode="min",
            enable_async_checkpointing=async_save,
            create=True,
            # What saves killed mid-write left behind is removed below, before the manager
            # exists and synchronously (Orbax's own cleanup runs in a background thread that
            # only a private method awaits).
            cleanup_tmp_directories=False,
        )
        orbax_quiet.install()  # a failed save is our one error line, not Orbax's tracebacks
        if self.directory.is_dir():
            self._remove_temporary_folders()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self._async = async_save
        self._pending: int | None = None  # the step of a save not yet known to have finished
        self._failed = False  # a save failed: its temporary folder is removed again at close

    def latest_step(self) -> int | None:
        """The newest finalized checkpoint step, None if there is none."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def read_meta(self, step: int) -> dict:
        """The `meta` JSON of checkpoint `step`."""
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - TensorStore/JSON errors have no common type
            raise self._unreadable(step, e) from e
        return dict(restored["meta"])

    def _unreadable(self, step: int, error: Exception) -> CheckpointUnreadableError:
        """The one-line error for a finalized checkpoint that cannot be read, with the way on."""
        first = (str(error).strip().splitlines() or [""])[0]
        first = first.split(" See full TensorStore details")[0]  # then a multi-line repr
        reason = f"{type(error).__name__}: {first[:200]}"
        older = [s for s in self.all_steps() if s < step]
        path = self.directory / str(step)
        way = (f"resume from the previous checkpoint with --config.checkpoint.restore_step="
               f"{older[-1]} (the newer ones are then moved to {self.directory.parent / SET_ASIDE}"
               "/, never deleted)" if older else
               f"there is no older checkpoint: move {path} elsewhere to start afresh")
        return CheckpointUnreadableError(
            f"Checkpoint {path} cannot be read ({reason}); it was left as it is. To go on, "
            f"{way}.")

    def roll_back_to(self, step: int) -> list[int]:
        """Makes checkpoint `step` the latest: every newer finalized checkpoint is moved, whole,
        to `<workdir>/checkpoints_set_aside/<step>` (`.1`, `.2`... if taken), out of reach of
        later saves and garbage collection; nothing is deleted. Returns the moved steps.

        Raises ConfigError if there is no checkpoint `step`.
        """
        steps = self.all_steps()
        if step not in steps:
            raise ConfigError(f"checkpoint.restore_step={step}: no such checkpoint in "
                              f"{self.directory} (finalized steps: {steps}).")
        newer = [s for s in steps if s > step]
        if newer and jax.process_index() == 0:  # one process moves, the others wait below
            aside = self.directory.parent / SET_ASIDE
            aside.mkdir(exist_ok=True)
            for s in newer:
                target, n = aside / str(s), 0
                while target.exists():
                    n += 1
                    target = aside / f"{s}.{n}"
                shutil.move(str(self.directory / str(s)), str(target))
                logging.warning("checkpoint.restore_step=%d: moved checkpoint %d to %s.",
                                step, s, target)
        if newer:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("gpt2jax_roll_back")
            self.manager.reload()
        return newer

    def check_model(self, step: int, cfg: GPT2Config) -> dict:
        """Raises CheckpointMismatchError if checkpoint `step` holds another model; returns meta."""
        meta = self.read_meta(step)
        check_same_model(meta["model"], cfg, where=str(self.directory / str(step)))
        return meta

    def save(self, step: int, state, data_state: dict, meta: dict,
             val_loss: float | None = None) -> None:
        """Starts an (async) save of `state`, the data iterator state and `meta` at `step`.

        val_loss: the validation loss of this step's own params (ranks it for keep_best);
        None leaves the checkpoint out of the best ranking.
        """
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        self.wait_until_finished()  # (Orbax waits too) a previous failure is reported as its own
        self._pending = step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    meta=ocp.args.JsonSave(dict(meta, step=int(step))),
                ),
                metrics=metrics,
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - TensorStore/OS errors have no common type
            raise self._save_failed(e) from e
        if not self._async:  # a synchronous save that returned is finalized
            self._pending = None

    def wait_if_failed(self) -> None:
        """Raises CheckpointSaveError if the asynchronous save in flight has failed; returns
        at once otherwise (no waiting for a save still being written). Cheap: the loop calls
        it after every step."""
        if self._pending is not None and not self.manager.is_saving_in_progress():
            self.wait_until_finished()

    def _save_failed(self, error: Exception) -> CheckpointSaveError:
        """The one-line error of the failed save of step `self._pending`, after removing its
        temporary folder and re-reading which checkpoints are finalized."""
        step, self._pending, self._failed = self._pending, None, True
        self._remove_temporary_folders()
        self.manager.reload()
        return CheckpointSaveError(self.stopped(
            f"Checkpoint {step} could not be written to {self.directory}", error))

    def _remove_temporary_folders(self) -> None:
        """Removes the `<step>.orbax-checkpoint-tmp` folders of failed saves (process 0, the
        one that owns Orbax's directory operations; this run holds the workdir lock)."""
        if jax.process_index() == 0:
            for tmp in ocp.path.step.all_temporary_paths(self.directory):
                shutil.rmtree(str(tmp.get()), ignore_errors=True)

    def stopped(self, what: str, error: BaseException, where: Path | None = None) -> str:
        """'<what>: <reason and disk>; training stopped, <the last good checkpoint>. To go
        on, <fix> and run the same command again: it resumes from step <N>.' for a write
        under `where` (default: the checkpoints folder) that failed with `error`."""
        if self._pending is None:  # no save in flight: what is finalized on disk now
            self.manager.reload()
        last = self.latest_step()
        kept = (f"the last good checkpoint is step {last} ({self.directory / str(last)}), left "
                "as it was" if last is not None else "no checkpoint was saved before it")
        fix = ("free space on that disk (or keep fewer checkpoints: --config.checkpoint.keep=1 "
               "--config.checkpoint.keep_best=0)" if is_disk_full(error) else
               "make the workdir writable again (or fix its disk)")
        resume = f"resumes from step {last}" if last is not None else "starts afresh"
        reason = describe_write_error(error, where or self.directory)
        return (f"{what}: {reason}; training stopped, {kept}. To go on, {fix} and run the "
                f"same command again: it {resume}.")

    def restore(self, step: int, abstract_state) -> tuple[Any, dict, dict]:
        """Restores (state, data_state, meta) of `step` into the shardings of `abstract_state`.

        abstract_state: the TrainState pytree of `jax.ShapeDtypeStruct`s with shardings.
        Raises CheckpointUnreadableError (naming the previous step) if it cannot be read.
        """
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # noqa: BLE001 - TensorStore raises a bare Exception
            raise self._unreadable(step, e) from e
        return restored["state"], dict(restored["data"]), dict(restored["meta"])

    def wait_until_finished(self) -> None:
        """Waits for the save in flight; raises CheckpointSaveError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - TensorStore/OS errors have no common type
            if self._pending is None:
                raise
            raise self._save_failed(e) from e
        self._pending = None

    def close(self) -> None:
        """Waits for pending saves and releases the manager (also after a failed save: Orbax
        raises a save's failure once per thread, so closing after it is quiet). Raises
        CheckpointSaveError if the save in flight fails."""
        try:
            self.wait_until_finished()
        finally:
            self.manager.close()
            if self._failed:  # writes of the failed save still in flight at the failure
                self._remove_temporary_folders()  # may have re-created parts of its folder


def check_same_model(saved: dict, cfg: GPT2Config, where: str) -> None:
    """Compares a saved GPT2Config dict with `cfg`, ignoring fields in RESUMABLE_CHANGES."""
    current, saved = cfg.to_dict(), {**UNRECORDED, **saved}
    diffs = {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
             if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)}
    if diffs:
        shown = ", ".join(f"{k}: saved {a!r} vs config {b!r}" for k, (a, b) in diffs.items())
        layout = "scan_layers" in diffs and (
            " A run resumes in the parameter layout it was saved in: set "
            f"--config.model.scan_layers={saved['scan_layers']} (generation and evaluation "
            "load either form).")
        raise CheckpointMismatchError(
            f"The checkpoint in {where} is of a different model ({shown}); nothing was restored "
            "or overwritten. Use a new --workdir, or set the config to the saved model."
            + (layout or "")
        )


def check_same_tokenizer(saved: dict | None, tokenizer, where: str) -> None:
    """Raises CheckpointMismatchError if the checkpoint at `where` was trained with another
    tokenizer than `tokenizer` (the data's): another kind, or a character vocabulary with
    other characters (a text with curly quotes made straight shifts every id after them).
    A checkpoint that recorded no tokenizer passes."""
    current = tokenizer.to_json()
    if not saved or all(saved.get(k) == current.get(k) for k in ("name", "vocab_size", "chars")
                        if k in saved):
        return
    if saved.get("name") != current.get("name"):
        shown = f"tokenizer: saved {saved.get('name')!r} vs the data's {current.get('name')!r}"
    else:
        old, new = set(saved.get("chars", "")), set(current.get("chars", ""))
        shown = (f"{len(old)} characters saved vs {len(new)} in the data; only in the saved "
                 f"vocabulary: {''.join(sorted(old - new))[:20]!r}, only in the data: "
                 f"{''.join(sorted(new - old))[:20]!r}")
    raise CheckpointMismatchError(
        f"The checkpoint in {where} was trained on another vocabulary ({shown}); nothing was "
        "restored or overwritten. Resume on the data it was trained on (its vocabulary is "
        "saved in the workdir's tokenizer.json), or use a new --workdir.")


def save_json(path: Path, obj: Any) -> None:
    """Writes JSON atomically (tmp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
