"""The host training loop: `train_and_evaluate(config, workdir)`.

The run's setup (typed config, data, checkpointer, model, Trainer) is built once by
`training.setup.open_run`; this module is the loop over it.
Data -> sharded `train_step` -> metrics (console + tqdm, TensorBoard, `metrics.jsonl`),
periodic evaluation on fixed validation batches (with an optional text sample), Orbax
checkpoints with automatic resume, NaN guard, and an HF export at the end.

Workdir: `config.json` (the run's config), `tokenizer.json`, `metrics.jsonl` (a line per step
/ eval), `tensorboard/`, `checkpoints/<step>/`, `hf/`, `train.<process>.lock` while running.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gpt2jax import data as data_lib
from gpt2jax.errors import ConfigError
from gpt2jax.generation.args import suppress_past_tokenizer
from gpt2jax.generation.generate import generate
from gpt2jax.training.meter import StepMetrics, Throughput, log_steps, peak_flops
from gpt2jax.training.preemption import PreemptionGuard
from gpt2jax.training.setup import Hook, Run, open_run
from gpt2jax.training.step import Trainer, model_flops_per_token
from gpt2jax.weights.pretrained import gpt2_layout_mismatch, save_pretrained


def train_and_evaluate(config, workdir: str | Path, hooks: Sequence[Hook] = (),
                       explicit: Collection[str] = ()) -> dict:
    """Trains `config` in `workdir` (resuming from its latest checkpoint if any).

    Args:
      config: the ConfigDict (model, train, data, checkpoint, mesh, seed, init_from); read
        once, by `training.setup.open_run`.
      workdir: run directory (created).
      hooks: callables `hook(step, run)` after each step (tests, custom actions).
      explicit: config keys set on the command line; a `model.X` override that a loaded
        model (init_from, a resumed checkpoint) fixes to another value is refused.
    Returns:
      dict with the final step, last train loss and last val loss.
    Raises:
      TrainingDivergedError on a NaN/inf loss or update (nothing non-finite is saved).
    """
    with open_run(config, workdir, explicit) as run:
        return _train(run, hooks)


def _meta(run: Run) -> dict:
    return {"model": run.cfg.to_dict(), "tokenizer": run.ds.tokenizer.to_json()}


# ----------------------------------------------------------------------------- the loop


def _train(run: Run, hooks: Sequence[Hook]) -> dict:
    opt, start, num_steps, trainer = (run.setup.options, run.setup.start_step,
                                      run.setup.num_steps, run.trainer)
    steps = StepMetrics(run.checkpointer)
    speed = Throughput(run.tc.batch_size * run.tc.block_size,
                       model_flops_per_token(run.cfg, run.tc.block_size), peak_flops(run))
    train_loss = math.nan  # of the last logged step
    val_batches = _val_batches(run) if opt.eval_every > 0 else []
    if start >= num_steps and jax.process_index() == 0:
        print(f"{run.workdir} holds this run finished at step {start} of {num_steps}: nothing "
              "to train. Raise train.num_steps to go on, or pass a new --workdir.", flush=True)
    if val_batches and opt.eval_at_start and start == 0:  # the baseline a run must beat
        _evaluate(run, val_batches, 0, math.nan)
    bar = _progress(opt.progress_bar, start, num_steps)
    meta, every = _meta(run), opt.save_every
    step = start
    per_call = opt.steps_per_call if not hooks else 1  # a hook sees every step's state
    guard = PreemptionGuard().install()  # SIGTERM/SIGINT: save, wait, return (exit 0)
    try:
        while step < num_steps:
            n = _call_length(step, per_call, num_steps, opt, bool(val_batches))
            batches = list(itertools.islice(run.ds.train, n))  # fewer when the data ends
            if not batches:  # the data ended
                break
            first, step = step + 1, _run_steps(run, batches, step, per_call, steps)
            # only the last step of a call may log, evaluate or save (`_call_length`)
            last = step == num_steps
            evaluate_now = bool(val_batches) and (step % opt.eval_every == 0 or last)
            save_now = (every > 0 and step % every == 0) or last
            if step % opt.log_every == 0 or evaluate_now or save_now:
                # raises on a NaN loss/update before anything is saved
                train_loss = _log_train(steps, speed, run.writer, bar, train_loss,
                                        console=step % opt.log_every == 0)
            if evaluate_now:
                _evaluate(run, val_batches, step, train_loss)
            if save_now:
                _save(run, step, meta, val_batches, train_loss, preempted=False)
            if bar is not None:
                bar.update(len(batches))
            for hook in hooks:
                hook(step, run)
            # every step is offered to the guard (multi-host: the agreed stop step is one)
            if any([guard.should_stop(s) for s in range(first, step + 1)]):
                break  # preempted: the checkpoint is saved just below
        train_loss = _log_train(steps, speed, run.writer, bar, train_loss)
        if step > start and run.checkpointer.latest_step() != step:  # data ended / preempted
            if val_batches and not guard.stop_requested:
                _evaluate(run, val_batches, step, train_loss)
            _save(run, step, meta, val_batches, train_loss, preempted=guard.stop_requested)
    finally:
        guard.uninstall()
        if bar is not None:
            bar.close()
    run.checkpointer.wait_until_finished()
    if guard.stop_requested:
        logging.warning(guard.stop_message(step))
        print(guard.stop_message(step), flush=True)
        return {"step": step, "train_loss": train_loss, "val_loss": run.val_loss,
                "preempted": True}
    if opt.export_hf:
        export_hf(run)  # None (and one line saying why) for a variant HF cannot hold
    logging.info("train_step compiled %d time(s).", trainer.compile_count())
    return {"step": step, "train_loss": train_loss, "val_loss": run.val_loss}


def _run_steps(run: Run, batches: list[dict], step: int, per_call: int,
               steps: StepMetrics) -> int:
    """Trains on `batches` after `step` (one `train_steps` call when they are `per_call`
    > 1, else `train_step` each), keeps their metrics in `steps`; returns the new step."""
    trainer = run.trainer
    if 1 < len(batches) == per_call:  # one call, the steps' metrics stacked [n]
        run.state, metrics = trainer.train_steps(run.state, trainer.put_steps(batches))
        steps.add_steps(range(step + 1, step + len(batches) + 1), metrics)
        return step + len(batches)
    for batch in batches:  # one step (or the data's last batches, one by one)
        run.state, metrics = trainer.train_step(run.state, _to_global(run, batch))
        step += 1
        steps.add(step, metrics)
    return step


def _call_length(step: int, per_call: int, num_steps: int, opt, evaluates: bool) -> int:
    """Steps in the next call after `step`: `per_call` (`train.steps_per_call`) when none of
    the steps before its last logs, evaluates, saves or ends the run, else 1; so there are
    two programs at most (n = per_call and n = 1), and every log, evaluation and save sees
    the state of its own step."""

    def event(s: int) -> bool:
        return (s % opt.log_every == 0 or (evaluates and s % opt.eval_every == 0)
                or (opt.save_every > 0 and s % opt.save_every == 0) or s == num_steps)

    if per_call <= 1 or step + per_call > num_steps:
        return 1
    return 1 if any(event(s) for s in range(step + 1, step + per_call)) else per_call


def _log_train(steps: StepMetrics, speed: Throughput, writer, bar, loss: float,
               console: bool = False) -> float:
    """Writes the pending steps' metrics (`meter.log_steps`: every step to metrics.jsonl),
    shows the last on the bar and, with `console`, prints it as one line (process 0);
    returns the last train loss (`loss` when nothing was pending)."""
    record = log_steps(steps, speed, writer)
    if record is None:
        return loss
    writer.flush()
    if bar is not None:
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}")
    if console and jax.process_index() == 0:
        _say(bar, f"step {steps.last_step}: {format_record(record)}")
    return record["loss"]


def format_record(record: dict) -> str:
    """`loss 2.7387, lr 1.00e-03, 12,146 tok/s, MFU 3.1%` (speed only when measured)."""
    text = f"loss {record['loss']:.4f}, lr {record['learning_rate']:.2e}"
    if "tokens_per_sec" in record:
        text += f", {record['tokens_per_sec']:,.0f} tok/s, MFU {100 * record['mfu']:.1f}%"
    return text


def _say(bar, text: str) -> None:
    """One console line; above the progress bar when there is one, so the bar stays one line."""
    if bar is not None:
        bar.write(text)
    else:
        print(text, flush=True)


def _save(run: Run, step: int, meta: dict, val_batches, train_loss: float,
          preempted: bool) -> None:
    """Saves checkpoint `step`, ranked for keep_best only by a val loss of its own params.

    With keep_best > 0 a save at a step without an evaluation evaluates first; a preemption
    save does not (the grace period is short) and is saved without a metric: Orbax's BestN
    leaves it out of the ranking, LatestN keeps it.
    """
    if (run.setup.options.keep_best > 0 and val_batches and not preempted
            and run.val_step != step):
        _evaluate(run, val_batches, step, train_loss)
    own = run.val_loss if run.val_step == step else None
    run.checkpointer.save(step, run.state, run.ds.train.state(), meta, own)


def _val_batches(run: Run) -> list[dict]:
    """The fixed validation batches, each split into grad_accum_steps chunks of rows."""
    out = []
    for b in run.ds.val_batches(run.setup.options.eval_batches):
        rows = b["inputs"].shape[0]
        chunk = max(rows // run.tc.grad_accum_steps, 1)
        for i in range(0, rows, chunk):
            out.append(_to_global(run, {k: v[i:i + chunk] for k, v in b.items()}))
    return out


def _to_global(run: Run, batch: dict) -> dict:
    return run.trainer.placement.put_batch(batch)  # this process's rows -> global arrays


def _progress(enabled: bool, start: int, total: int):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def evaluate_batches(trainer: Trainer, params, batches: Sequence[dict]) -> dict:
    """Token-weighted loss/accuracy of `params` over `batches` (global jax.Arrays)."""
    # The batches are independent programs with an all-reduce each. Queued asynchronously on
    # several XLA:CPU devices (the split CPU host) they ran in different orders per device and
    # the in-process all-reduce aborted (tests/test_cpu_devices.py); so on CPU wait for each.
    serial = jax.default_backend() == "cpu" and jax.device_count() > 1
    sums = None
    for b in batches:
        m = trainer.eval_step(params, b)
        if serial:  # see above
            m = jax.block_until_ready(m)
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    sums = jax.device_get(sums)
    w = max(float(sums["weight_sum"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / w, "accuracy": float(sums["correct_sum"]) / w,
            "tokens": float(sums["weight_sum"])}


def _evaluate(run: Run, val_batches, step: int, train_loss: float) -> None:
    """Val loss of the current params (and lm-eval tasks, a sample) written at `step`."""
    res = evaluate_batches(run.trainer, run.state.params, val_batches)
    run.val_loss, run.val_step = res["loss"], step
    run.writer.write_scalars(step, {"val_loss": res["loss"], "val_accuracy": res["accuracy"],
                                    "val_perplexity": math.exp(min(res["loss"], 50.0))})
    opt = run.setup.options
    if opt.lm_eval.tasks:
        from gpt2jax.eval import harness_train  # optional dependency: lm-eval (eval extra)

        harness_train.log_training_metrics(run.cfg, run.state.params, opt.lm_eval, step,
                                           run.writer)
    if jax.process_index() == 0:  # the console's metrics, like the files, are process 0's
        train_text = "before training" if step == 0 else f"train loss {train_loss:.4f}"
        print(f"step {step}: {train_text}, val loss {res['loss']:.4f}", flush=True)
    if opt.sample_tokens > 0:
        text = sample_text(run, step)
        if text is not None:
            run.writer.write_texts(step, {"sample": text})
            print(f"sample at step {step}:\n{text}", flush=True)
    run.writer.flush()


def sample_text(run: Run, step: int) -> str | None:
    """A short sample from the current params (gpt2jax.generate), None if unavailable."""
    tok = run.ds.tokenizer
    opt = run.setup.options
    ids = tok.encode(opt.sample_prompt) or [tok.eot_id or 0]
    new = min(opt.sample_tokens, run.cfg.n_positions - len(ids))
    if jax.process_count() > 1:
        return None  # samples are a single-host convenience
    try:

        params = jax.device_get(run.state.params)
        kwargs = dict(max_new_tokens=new, do_sample=True, temperature=0.8, top_k=200,
                      seed=step, eos_token_id=tok.eot_id)
        out = generate(run.cfg, params, np.asarray([ids], np.int32),
                       **suppress_past_tokenizer(kwargs, run.cfg.vocab_size, tok.vocab_size))
    except (ImportError, ConfigError) as e:  # sampling must never stop training
        logging.warning("No sample at step %d: %s", step, e)
        return None
    return tok.decode([int(t) for t in np.asarray(out)[0, len(ids):]])


def export_hf(run: Run) -> Path | None:
    """Writes the params to `<workdir>/hf` (HF GPT2LMHeadModel layout) + the tokenizer.

    An attention variant that layout cannot hold (ALiBi, RoPE, GQA, post-LN, ...) is not
    exported: one line says why and where the model is (its Orbax checkpoint, which
    `--config.init_from=WORKDIR` and `gpt2jax.weights.loader.load_model` read); returns None
    (before, the run saved its checkpoint and then exited 2 with the WeightsError).
    """
    bad = gpt2_layout_mismatch(run.cfg, exact=True)
    if bad:
        line = (f"export_hf skipped: the HF GPT-2 layout cannot represent {bad}; the model "
                f"is in {run.workdir / 'checkpoints'} (--mode=generate or eval read it with "
                f"--config.init_from={run.workdir}).")
        logging.info(line)
        if jax.process_index() == 0:
            print(line, flush=True)
        return None
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
