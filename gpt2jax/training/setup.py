"""A training run's setup, read from the ConfigDict once, at the edge of the loop.

`open_run(config, workdir)` turns `config` into typed, frozen values before anything runs
(`GPT2Config`, `TrainConfig`, `LoopOptions`), then claims the workdir, builds the mesh, the
data and the checkpointer, picks the model to start from (this workdir's latest checkpoint,
`init_from`, or a random init), compiles the `Trainer`, writes the run files and yields a
`Run`: the frozen `RunSetup` plus what changes while training (the state, the val loss).
The loop reads only these typed fields, never `config` again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging

from gpt2jax import data as data_lib
from gpt2jax.errors import ConfigError, GPT2JaxError
from gpt2jax.nn.model import GPT2Config
from gpt2jax.parallel import sharding as sharding_lib
from gpt2jax.parallel.placement import Placement
from gpt2jax.training import checkpoint as ckpt_lib
from gpt2jax.training import fit as fit_lib
from gpt2jax.training import metric_writers
from gpt2jax.training.step import Trainer, TrainConfig, TrainState
from gpt2jax.training.workdir_lock import workdir_lock
from gpt2jax.nn.kv_heads import convert_kv_heads
from gpt2jax.weights.loader import check_explicit, explicit_overrides, load_model


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """The loop's fields of `config.train` and `config.checkpoint` (configs/common.py)."""

    log_every: int
    eval_every: int
    eval_batches: int
    eval_at_start: bool  # a validation pass before the first step of a new run
    sample_tokens: int
    sample_prompt: str
    peak_flops: float
    export_hf: bool
    progress_bar: bool
    lm_eval: Any  # config.train.lm_eval, handed as it is to eval.harness_train
    save_every: int  # config.checkpoint.save_every
    keep_best: int  # config.checkpoint.keep_best
    steps_per_call: int  # config.train.steps_per_call (Trainer.train_steps)

    def __post_init__(self):
        if not isinstance(self.steps_per_call, int) or self.steps_per_call < 1:
            raise ConfigError(f"train.steps_per_call={self.steps_per_call!r} must be an int >= 1 "
                              "(optimizer steps per jitted call; 1 = one call per step).")

    @classmethod
    def from_config(cls, config) -> LoopOptions:
        t, ck = config.train, config.checkpoint
        return cls(t.log_every, t.eval_every, t.eval_batches, t.eval_at_start, t.sample_tokens,
                   t.sample_prompt, t.peak_flops, t.export_hf, t.progress_bar, t.lm_eval,
                   ck.save_every, ck.keep_best, t.steps_per_call)


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What a run is, fixed before its first step.

    `cfg` is the model trained (a resumed or pretrained model's shapes, with the config's
    runtime fields); `tc.lr_decay_steps` is resolved (0 in the config = `num_steps`).
    """

    config: Any  # the ConfigDict as given; only written to <workdir>/config.json
    workdir: Path
    cfg: GPT2Config
    tc: TrainConfig
    options: LoopOptions
    num_steps: int
    start_step: int  # the checkpoint step resumed from; 0 for a new run
    seed: int
    ds: data_lib.Datasets
    checkpointer: ckpt_lib.Checkpointer
    trainer: Trainer


@dataclasses.dataclass
class Run:
    """What the loop holds: the frozen `setup`, and what changes while training. Hooks
    `hook(step, run)` may read it and replace `state` (tests inject a NaN that way)."""

    setup: RunSetup
    state: TrainState
    writer: Any  # metric_writers.MultiWriter (metrics.jsonl, TensorBoard, log)
    val_loss: float | None = None
    val_step: int | None = None  # the step whose params gave val_loss

    # The setup fields that hooks and the meter read, under their short names.
    workdir = property(lambda self: self.setup.workdir)
    cfg = property(lambda self: self.setup.cfg)
    tc = property(lambda self: self.setup.tc)
    ds = property(lambda self: self.setup.ds)
    trainer = property(lambda self: self.setup.trainer)
    checkpointer = property(lambda self: self.setup.checkpointer)


Hook = Callable[[int, Run], None]  # called after each step as hook(step, run)


@contextlib.contextmanager
def open_run(config, workdir: str | Path, explicit: Collection[str] = ()) -> Iterator[Run]:
    """The `Run` of `config` in `workdir` (created, locked); closes what it opened after.

    `explicit`: the config keys set on the command line (run.py); a `model.X` among them
    that the loaded model fixes to another value is an error, not silently ignored.

    Config errors are raised before the workdir is touched; on any user error
    (GPT2JaxError) the directories this call created are removed while still empty.
    """
    tc, cfg = TrainConfig.from_config(config.train), GPT2Config.from_config(config.model)
    options = LoopOptions.from_config(config)
    workdir = Path(workdir).expanduser().resolve()
    with _no_new_dirs_on_user_error(workdir):
        _make_workdir(workdir)
        with workdir_lock(workdir):  # a second run on this workdir stops here
            _check_block_size(tc, cfg, config.init_from)
            mesh, rules = sharding_lib.make_mesh(config.mesh), sharding_lib.rules(config.mesh)
            config, tc, options, streams = _fitted_streams(config, tc, options,
                                                           Placement(mesh, rules))
            ds = data_lib.datasets_from_streams(config.data, streams, tc.block_size,
                                                tc.batch_size, config.seed,
                                                jax.process_index(), jax.process_count())
            ck = config.checkpoint
            checkpointer = ckpt_lib.Checkpointer(workdir, ck.keep, ck.keep_best, ck.async_save)
            writer = None
            try:
                num_steps = _num_steps(tc, ds.train)
                if tc.lr_decay_steps <= 0:
                    tc = dataclasses.replace(tc, lr_decay_steps=num_steps)
                latest = _resume_step(ck, checkpointer)
                cfg, pretrained, init_tok = _model(config, cfg, tc, checkpointer, latest,
                                                   explicit)
                _check_init_tokenizer(config.init_from, init_tok, ds.tokenizer)
                _check_vocab(cfg, ds.tokenizer)
                setup = RunSetup(config, workdir, cfg, tc, options, num_steps, latest or 0,
                                 config.seed, ds, checkpointer, Trainer(cfg, tc, mesh, rules))
                state = _first_state(setup, latest, pretrained)
                _log_shardings(setup, state)
                writer = _open_writer(setup)
                yield Run(setup, state, writer)
            finally:
                checkpointer.close()
                ds.train.close()
                if writer is not None:
                    writer.close()


def _fitted_streams(config, tc: TrainConfig, options: LoopOptions, placement: Placement):
    """(config, tc, options, the data's streams), with block / batch / eval batches (and a
    held-out fraction) fitted to a small text when `train.fit_to_data` (training/fit.py):
    a line says what changed, and the config copy returned (written to the workdir's
    config.json) holds the values trained with."""
    streams = data_lib.load_streams(config.data)
    if not config.train.fit_to_data:
        return config, tc, options, streams
    config = ml_collections.ConfigDict(config.to_dict())
    changes = ()
    if config.data.source == "text" and not config.data.val_file:  # a held-out split
        fraction = fit_lib.held_out_fraction(len(streams[1]) + len(streams[2]),
                                             config.data.val_fraction)
        if fraction != config.data.val_fraction and len(streams[2]) <= fit_lib.MIN_BLOCK:
            changes = (f"data.val_fraction {config.data.val_fraction:g} -> {fraction:g}",)
            config.data.val_fraction = fraction
            streams = data_lib.load_streams(config.data)
    _, train, val = streams
    fit = fit_lib.fit_to_data(len(train), len(val), tc.block_size, tc.batch_size,
                              options.eval_batches,
                              tc.grad_accum_steps * placement.data_parallel_size, changes)
    line = fit.describe(config.data.train_file or train.origin, len(train) + len(val))
    if line and jax.process_index() == 0:
        print(line, flush=True)
    config.train.update(block_size=fit.block_size, batch_size=fit.batch_size,
                        eval_batches=fit.eval_batches)
    return (config, dataclasses.replace(tc, block_size=fit.block_size, batch_size=fit.batch_size),
            dataclasses.replace(options, eval_batches=fit.eval_batches), streams)


def _make_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create the workdir {str(workdir)!r} ({e.strerror}); pass a "
                          "writable --workdir (a directory, not a path below a file).") from e


@contextlib.contextmanager
def _no_new_dirs_on_user_error(workdir: Path):
    """On a user error (GPT2JaxError), removes the directories this call created while they
    are still empty (workdir/checkpoints, the workdir, its parents): a bad input leaves no
    trace. Directories that hold anything (a checkpoint, metrics) are kept."""
    candidates = [ckpt_lib.checkpoint_dir(workdir), workdir, *workdir.parents]
    new = [d for d in candidates if not d.exists()]
    try:
        yield
    except GPT2JaxError:
        for d in new:  # deepest first
            try:
                if d.exists():
                    d.rmdir()
            except OSError:  # not empty: something was written, keep it and its parents
                break
        raise


def _check_block_size(tc: TrainConfig, cfg: GPT2Config, init_from: str) -> None:
    if tc.block_size > cfg.n_positions and not init_from:
        raise ConfigError(
            f"train.block_size={tc.block_size} exceeds model.n_positions="
            f"{cfg.n_positions}; lower the block size or raise n_positions."
        )


def _check_vocab(cfg: GPT2Config, tokenizer) -> None:
    if cfg.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.vocab_size} is smaller than the {tokenizer.name!r} tokenizer's "
            f"{tokenizer.vocab_size} tokens; set --config.model.vocab_size="
            f"{tokenizer.vocab_size}."
        )
    if tokenizer.name == "char" and cfg.vocab_size != tokenizer.vocab_size:
        logging.warning("model.vocab_size=%d > %d characters; extra rows stay unused.",
                        cfg.vocab_size, tokenizer.vocab_size)


def _num_steps(tc: TrainConfig, train_iter) -> int:
    if tc.num_steps > 0:
        return tc.num_steps
    if train_iter.mode == "epochs" and train_iter.num_epochs > 0:
        return train_iter.steps_per_epoch * train_iter.num_epochs
    raise ConfigError("train.num_steps=0 needs data.mode='epochs' with data.num_epochs > 0; "
                      "set one of them.")


def _resume_step(ck, checkpointer: ckpt_lib.Checkpointer) -> int | None:
    """The checkpoint step to resume from (`config.checkpoint` = `ck`), None for a new run."""
    if ck.restore_step and ck.resume:
        checkpointer.roll_back_to(ck.restore_step)  # newer ones moved aside, not deleted
    latest = checkpointer.latest_step() if ck.resume else None
    if latest is None and checkpointer.latest_step() is not None:
        raise ConfigError(f"{checkpointer.directory} holds checkpoints but checkpoint.resume="
                          "False; use a new --workdir (checkpoints are never overwritten).")
    return latest


def _model(config, cfg: GPT2Config, tc: TrainConfig, checkpointer, latest: int | None,
           explicit: Collection[str]):
    """(the GPT2Config trained, pretrained params or None, their tokenizer or None): the
    checkpoint's model when resuming, else `init_from`'s (`weights.loader.load_model`: an HF
    directory, a weights file, a hub name or another run's workdir; its kv heads converted
    when `train.convert_kv_heads` > 0), else `cfg` itself. An explicit `model.X` override
    that the loaded model fixes is refused (`check_explicit`)."""
    overrides = explicit_overrides(config.model, explicit)
    if latest is not None:
        if config.init_from:  # fine-tuning: the model is the saved one
            saved = checkpointer.read_meta(latest)["model"]
            cfg = GPT2Config(**dict(saved, **overrides))
            check_explicit(cfg, config.model, explicit, str(checkpointer.directory))
        checkpointer.check_model(latest, cfg)
        return cfg, None, None
    groups = config.train.convert_kv_heads
    if not config.init_from:
        if groups:
            raise ConfigError(f"train.convert_kv_heads={groups} converts a loaded model: set "
                              "--config.init_from=WORKDIR_OR_HF_DIR, or train a new model with "
                              f"--config.model.n_kv_heads={groups} instead.")
        return cfg, None, None
    cfg, pretrained, tokenizer = load_model(config.init_from, **overrides)
    check_explicit(cfg, config.model, explicit, config.init_from)
    if groups:  # GQA/MQA "uptraining" (Ainslie et al. 2023) from a multi-head model
        cfg, pretrained = convert_kv_heads(cfg, pretrained, groups,
                                           config.train.convert_kv_method,
                                           jax.random.key(config.seed))
    if tc.block_size > cfg.n_positions:
        raise ConfigError(f"train.block_size={tc.block_size} exceeds the pretrained "
                          f"model's n_positions={cfg.n_positions}.")
    return cfg, pretrained, tokenizer


def _check_init_tokenizer(init_from: str, saved, data) -> None:
    """The data must be tokenized as the model of `init_from` was trained (same vocabulary)."""
    if saved is None or saved.to_json() == data.to_json():
        return
    raise ConfigError(
        f"init_from={init_from} was trained with the {saved.name!r} tokenizer of "
        f"{saved.vocab_size} tokens, but config.data gives a {data.name!r} tokenizer of "
        f"{data.vocab_size}; its ids would mean other tokens. Set --config.data.tokenizer="
        f"{saved.name} (a char model needs text with the same character set).")


def _first_state(setup: RunSetup, latest: int | None, pretrained) -> TrainState:
    """The restored checkpoint `latest` (and the data position), else an initial state."""
    trainer = setup.trainer
    if latest is not None:
        state, data_state, _ = setup.checkpointer.restore(latest, trainer.abstract_state())
        setup.ds.train.restore(data_state)
        logging.info("Resumed from %s at step %d.", setup.checkpointer.directory, latest)
        return state
    if pretrained is not None:
        return trainer.state_from_params(pretrained, setup.seed)
    return trainer.init(setup.seed)


def _log_shardings(setup: RunSetup, state: TrainState) -> None:
    """Logs (process 0) every parameter's mesh sharding, and writes it to the workdir."""
    if jax.process_index() != 0:
        return
    table = sharding_lib.format_sharding_table(setup.trainer.state_sharding.params,
                                               state.params)
    logging.info("mesh %s; parameter shardings:\n%s", dict(setup.trainer.mesh.shape), table)
    (setup.workdir / "shardings.txt").write_text(table + "\n", encoding="utf-8")


def _open_writer(setup: RunSetup) -> metric_writers.MultiWriter:
    """Writes config.json and tokenizer.json; the run's metric writer (metrics.jsonl,
    TensorBoard, log on process 0; nothing elsewhere)."""
    if jax.process_index() != 0:
        return metric_writers.create_writer(setup.workdir, main_process=False)
    config_json = json.loads(setup.config.to_json_best_effort())
    ckpt_lib.save_json(setup.workdir / "config.json", config_json)
    data_lib.save_tokenizer(setup.ds.tokenizer, setup.workdir / "tokenizer.json")
    return metric_writers.create_writer(setup.workdir, main_process=True)
