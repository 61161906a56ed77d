"""The host training loop: `train_and_evaluate(config, workdir)`.

Data -> sharded `train_step` -> metrics (console + tqdm, TensorBoard, `metrics.jsonl`),
periodic evaluation on fixed validation batches (with an optional text sample), Orbax
checkpoints with automatic resume, NaN guard, and an HF export at the end.

Workdir: `config.json` (the run's config), `tokenizer.json`, `metrics.jsonl` (a line per step
/ eval), `tensorboard/`, `checkpoints/<step>/`, `hf/`, `train.<process>.lock` while running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gpt2jax import data as data_lib
from gpt2jax.errors import ConfigError, GPT2JaxError
from gpt2jax.generation.generate import generate
from gpt2jax.nn.model import GPT2Config
from gpt2jax.parallel import sharding as sharding_lib
from gpt2jax.training import checkpoint as ckpt_lib
from gpt2jax.training.meter import Meter, peak_flops
from gpt2jax.training.preemption import PreemptionGuard
from gpt2jax.training.step import Trainer, TrainConfig, TrainState, model_flops_per_token
from gpt2jax.training.workdir_lock import workdir_lock
from gpt2jax.weights.pretrained import load_pretrained, save_pretrained

Hook = Callable[[int, "Run"], None]  # called after each step as hook(step, run)


class Run:
    """What the loop holds; hooks may read it (e.g. `run.checkpointer`)."""

    def __init__(self, config, workdir: Path):
        self.config, self.workdir = config, workdir
        self.tc = TrainConfig.from_config(config.train)
        self.cfg = GPT2Config.from_config(config.model)
        self.trainer: Trainer | None = None
        self.ds = None
        self.checkpointer: ckpt_lib.Checkpointer | None = None
        self.state: TrainState | None = None
        self.writer = None
        self.val_loss: float | None = None
        self.val_step: int | None = None  # the step whose params gave val_loss
        self.num_steps = 0


def train_and_evaluate(config, workdir: str | Path, hooks: Sequence[Hook] = ()) -> dict:
    """Trains `config` in `workdir` (resuming from its latest checkpoint if any).

    Args:
      config: the ConfigDict (model, train, data, checkpoint, mesh, seed, init_from).
      workdir: run directory (created).
      hooks: callables `hook(step, run)` after each step (tests, custom actions).
    Returns:
      dict with the final step, last train loss and last val loss.
    Raises:
      TrainingDivergedError on a NaN/inf loss or update (nothing non-finite is saved).
    """
    run = Run(config, Path(workdir).expanduser().resolve())
    with _no_new_dirs_on_user_error(run.workdir):
        _make_workdir(run.workdir)
        with workdir_lock(run.workdir):  # a second run on this workdir stops here
            return _setup_and_train(run, config, hooks)


def _setup_and_train(run: Run, config, hooks: Sequence[Hook]) -> dict:
    _check_block_size(run)
    mesh = sharding_lib.make_mesh(config.mesh)
    rules = sharding_lib.rules(config.mesh)
    run.ds = data_lib.build_datasets(config.data, run.tc.block_size, run.tc.batch_size,
                                     config.seed)
    ck = config.checkpoint
    run.checkpointer = ckpt_lib.Checkpointer(run.workdir, ck.keep, ck.keep_best, ck.async_save)
    try:
        run.num_steps = _num_steps(run)
        if run.tc.lr_decay_steps <= 0:
            run.tc = dataclasses.replace(run.tc, lr_decay_steps=run.num_steps)
        start = _restore_or_init(run, mesh, rules)
        _log_shardings(run)
        _write_run_files(run)
        return _train(run, start, hooks)
    finally:
        run.checkpointer.close()
        run.ds.train.close()
        if run.writer is not None:
            run.writer.close()


# ----------------------------------------------------------------------------- setup


def _log_shardings(run: Run) -> None:
    """Logs (process 0) every parameter's mesh sharding, and writes it to the workdir."""
    if jax.process_index() != 0:
        return
    table = sharding_lib.format_sharding_table(run.trainer.state_sharding.params,
                                               run.state.params)
    logging.info("mesh %s; parameter shardings:\n%s", dict(run.trainer.mesh.shape), table)
    (run.workdir / "shardings.txt").write_text(table + "\n", encoding="utf-8")


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


def _check_block_size(run: Run) -> None:
    if run.tc.block_size > run.cfg.n_positions and not run.config.init_from:
        raise ConfigError(
            f"train.block_size={run.tc.block_size} exceeds model.n_positions="
            f"{run.cfg.n_positions}; lower the block size or raise n_positions."
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


def _runtime_overrides(config) -> dict:
    """config.model fields that may differ from a pretrained/saved model (not shapes)."""
    return {k: config.model[k] for k in ckpt_lib.LOAD_OVERRIDES if k in config.model}


def _restore_or_init(run: Run, mesh, rules) -> int:
    """Resumes from the workdir's latest checkpoint, else loads `init_from`, else random init."""
    config, ckpt = run.config, run.checkpointer
    if config.checkpoint.restore_step and config.checkpoint.resume:
        ckpt.roll_back_to(config.checkpoint.restore_step)  # newer ones moved aside, not deleted
    latest = ckpt.latest_step() if config.checkpoint.resume else None
    if latest is None and ckpt.latest_step() is not None:
        raise ConfigError(f"{ckpt.directory} holds checkpoints but checkpoint.resume=False; "
                          "use a new --workdir (checkpoints are never overwritten).")
    pretrained = None
    if latest is not None:
        meta = ckpt.read_meta(latest)
        if config.init_from:  # fine-tuning: the model is the saved one
            run.cfg = GPT2Config(**dict(meta["model"], **_runtime_overrides(config)))
        ckpt.check_model(latest, run.cfg)
    elif config.init_from:

        run.cfg, pretrained = load_pretrained(config.init_from, **_runtime_overrides(config))
        if run.tc.block_size > run.cfg.n_positions:
            raise ConfigError(f"train.block_size={run.tc.block_size} exceeds the pretrained "
                              f"model's n_positions={run.cfg.n_positions}.")
    _check_vocab(run.cfg, run.ds.tokenizer)
    run.trainer = Trainer(run.cfg, run.tc, mesh, rules)
    if latest is not None:
        run.state, data_state, _ = ckpt.restore(latest, run.trainer.abstract_state())
        run.ds.train.restore(data_state)
        logging.info("Resumed from %s at step %d.", ckpt.directory, latest)
        return latest
    if pretrained is not None:
        run.state = run.trainer.state_from_params(pretrained, config.seed)
    else:
        run.state = run.trainer.init(config.seed)
    return 0


class _NullWriter:
    """Stands in for the TensorBoard writer on processes other than 0."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    add_text = add_scalar

    def close(self) -> None:
        pass


def _write_run_files(run: Run) -> None:
    """config.json, tokenizer.json and the TensorBoard writer (process 0 writes files)."""
    if jax.process_index() != 0:
        run.writer = _NullWriter()
        return
    ckpt_lib.save_json(run.workdir / "config.json", json.loads(run.config.to_json_best_effort()))
    data_lib.save_tokenizer(run.ds.tokenizer, run.workdir / "tokenizer.json")
    from tensorboardX import SummaryWriter

    run.writer = SummaryWriter(str(run.workdir / "tensorboard"))


def _meta(run: Run) -> dict:
    return {"model": run.cfg.to_dict(), "tokenizer": run.ds.tokenizer.to_json()}


def _num_steps(run: Run) -> int:
    if run.tc.num_steps > 0:
        return run.tc.num_steps
    it = run.ds.train
    if it.mode == "epochs" and it.num_epochs > 0:
        return it.steps_per_epoch * it.num_epochs
    raise ConfigError("train.num_steps=0 needs data.mode='epochs' with data.num_epochs > 0; "
                      "set one of them.")


# ----------------------------------------------------------------------------- the loop


def _train(run: Run, start: int, hooks: Sequence[Hook]) -> dict:
    tc, config = run.tc, run.config
    num_steps, trainer = run.num_steps, run.trainer
    meter = Meter(run, model_flops_per_token(run.cfg, tc.block_size), peak_flops(run))
    val_batches = _val_batches(run) if config.train.eval_every > 0 else []
    bar = _progress(config, start, num_steps)
    meta, every = _meta(run), config.checkpoint.save_every
    step = start
    guard = PreemptionGuard().install()  # SIGTERM/SIGINT: save, wait, return (exit 0)
    try:
        while step < num_steps:
            try:
                batch = next(run.ds.train)
            except StopIteration:
                break
            run.state, metrics = trainer.train_step(run.state, _to_global(run, batch))
            step += 1
            meter.add(step, metrics)
            last = step == num_steps
            evaluate_now = bool(val_batches) and (step % config.train.eval_every == 0 or last)
            save_now = (every > 0 and step % every == 0) or last
            if step % config.train.log_every == 0 or evaluate_now or save_now:
                meter.flush(bar)  # raises on a NaN loss/update before anything is saved
            if evaluate_now:
                _evaluate(run, val_batches, step, meter)
            if save_now:
                _save(run, step, meta, val_batches, meter, preempted=False)
            if bar is not None:
                bar.update(1)
            for hook in hooks:
                hook(step, run)
            if guard.should_stop(step):  # preempted: the checkpoint is saved just below
                break
        meter.flush(bar)
        if step > start and run.checkpointer.latest_step() != step:  # data ended / preempted
            if val_batches and not guard.stop_requested:
                _evaluate(run, val_batches, step, meter)
            _save(run, step, meta, val_batches, meter, preempted=guard.stop_requested)
    finally:
        guard.uninstall()
        meter.close()
        if bar is not None:
            bar.close()
    run.checkpointer.wait_until_finished()
    if guard.stop_requested:
        logging.warning(guard.stop_message(step))
        print(guard.stop_message(step), flush=True)
        return {"step": step, "train_loss": meter.last_loss, "val_loss": run.val_loss,
                "preempted": True}
    if config.train.export_hf:
        export_hf(run)
    logging.info("train_step compiled %d time(s).", trainer.compile_count())
    return {"step": step, "train_loss": meter.last_loss, "val_loss": run.val_loss}


def _save(run: Run, step: int, meta: dict, val_batches, meter: Meter, preempted: bool) -> None:
    """Saves checkpoint `step`, ranked for keep_best only by a val loss of its own params.

    With keep_best > 0 a save at a step without an evaluation evaluates first; a preemption
    save does not (the grace period is short) and is saved without a metric: Orbax's BestN
    leaves it out of the ranking, LatestN keeps it.
    """
    if (run.config.checkpoint.keep_best > 0 and val_batches and not preempted
            and run.val_step != step):
        _evaluate(run, val_batches, step, meter)
    own = run.val_loss if run.val_step == step else None
    run.checkpointer.save(step, run.state, run.ds.train.state(), meta, own)


def _val_batches(run: Run) -> list[dict]:
    """The fixed validation batches, each split into grad_accum_steps chunks of rows."""
    out = []
    for b in run.ds.val_batches(run.config.train.eval_batches):
        rows = b["inputs"].shape[0]
        chunk = max(rows // run.tc.grad_accum_steps, 1)
        for i in range(0, rows, chunk):
            out.append(_to_global(run, {k: v[i:i + chunk] for k, v in b.items()}))
    return out


def _to_global(run: Run, batch: dict) -> dict:
    return run.trainer.placement.put_batch(batch)  # this process's rows -> global arrays


def _progress(config, start: int, total: int):
    if not config.train.progress_bar or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def evaluate_batches(trainer: Trainer, params, batches: Sequence[dict]) -> dict:
    """Token-weighted loss/accuracy of `params` over `batches` (global jax.Arrays)."""
    sums = None
    for b in batches:
        m = trainer.eval_step(params, b)
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    sums = jax.device_get(sums)
    w = max(float(sums["weight_sum"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / w, "accuracy": float(sums["correct_sum"]) / w,
            "tokens": float(sums["weight_sum"])}


def _evaluate(run: Run, val_batches, step: int, meter: Meter) -> None:
    res = evaluate_batches(run.trainer, run.state.params, val_batches)
    run.val_loss, run.val_step = res["loss"], step
    run.writer.add_scalar("val/loss", res["loss"], step)
    run.writer.add_scalar("val/accuracy", res["accuracy"], step)
    run.writer.add_scalar("val/perplexity", math.exp(min(res["loss"], 50.0)), step)
    meter.write({"step": step, "val_loss": res["loss"], "val_accuracy": res["accuracy"]})
    if run.config.train.lm_eval.tasks:
        from gpt2jax.eval import harness_train  # optional dependency: lm-eval (eval extra)

        harness_train.log_training_metrics(run.cfg, run.state.params, run.config.train.lm_eval,
                                           step, run.writer, meter.write)
    meter.jsonl.flush()
    logging.info("step %d: train loss %.4f, val loss %.4f", step, meter.last_loss, res["loss"])
    if jax.process_index() == 0:  # the console's metrics, like the files, are process 0's
        print(f"step {step}: train loss {meter.last_loss:.4f}, val loss {res['loss']:.4f}",
              flush=True)
    if run.config.train.sample_tokens > 0:
        text = sample_text(run, step)
        if text is not None:
            run.writer.add_text("sample", text, step)
            print(f"sample at step {step}:\n{text}", flush=True)


def sample_text(run: Run, step: int) -> str | None:
    """A short sample from the current params (gpt2jax.generate), None if unavailable."""
    tok = run.ds.tokenizer
    ids = tok.encode(run.config.train.sample_prompt) or [tok.eot_id or 0]
    new = min(run.config.train.sample_tokens, run.cfg.n_positions - len(ids))
    if jax.process_count() > 1:
        return None  # samples are a single-host convenience
    try:

        params = jax.device_get(run.state.params)
        out = generate(run.cfg, params, np.asarray([ids], np.int32), max_new_tokens=new,
                       do_sample=True, temperature=0.8, top_k=200, seed=step,
                       eos_token_id=tok.eot_id)
    except (ImportError, ConfigError) as e:  # sampling must never stop training
        logging.warning("No sample at step %d: %s", step, e)
        return None
    return tok.decode([int(t) for t in np.asarray(out)[0, len(ids):]])


def export_hf(run: Run) -> Path:
    """Writes the params to `<workdir>/hf` (HF GPT2LMHeadModel layout) + the tokenizer."""

    params = run.state.params
    if jax.process_count() > 1:  # gather the shards of every host, write on process 0
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
        if jax.process_index() != 0:
            return run.workdir / "hf"
    params = jax.device_get(params)
    target = save_pretrained(run.cfg, params, run.workdir / "hf", overwrite=True)
    data_lib.save_tokenizer(run.ds.tokenizer, target / "gpt2jax_tokenizer.json")
    return target
