"""lm-eval tasks during training (`config.train.lm_eval`): the metrics of the params being
trained, at each evaluation of the loop, as TensorBoard scalars and a metrics.jsonl record
named `lm_eval/<task>/<metric>`. Needs lm-eval (the optional `eval` extra)."""

from __future__ import annotations

import functools

import jax
from absl import logging

from gpt2jax.eval.harness import (GPT2JaxLM, TaskManager, evaluate, result_rows, task_manager,
                                  task_names)
from gpt2jax.nn.model import GPT2Config


@functools.lru_cache(maxsize=4)
def _manager_for(tasks: str, include_path: str, data_dir: str) -> TaskManager:
    """A task index for `tasks`: the include_path alone when it holds them all (fast), else
    with lm-eval's built-in tasks too. Kept across evaluations."""
    local = task_manager(include_path or None, data_dir, include_defaults=False)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if include_path and all(t in local.all_tasks for t in names):
        return local
    return task_manager(include_path or None, data_dir, include_defaults=True)


def training_metrics(cfg: GPT2Config, params, lm_eval_config) -> dict[str, float]:
    """lm-eval metrics of params in memory, for the training loop's evaluations.

    Args:
      cfg, params: the model being trained (params may be sharded: jit follows them).
      lm_eval_config: `config.train.lm_eval` (tasks, limit, batch_size, include_path,
        data_dir).
    Returns:
      {"lm_eval/<task>/<metric>": value}; {} on a multi-host run (not supported there).
    """
    c = lm_eval_config
    if jax.process_count() > 1:
        logging.warning("train.lm_eval.tasks: skipped on a multi-host run (single host only).")
        return {}
    manager = _manager_for(c.tasks, c.include_path, str(c.data_dir))
    lm = GPT2JaxLM(cfg=cfg, params=params, batch_size=c.batch_size, progress=False)
    results = evaluate(lm, task_names(c.tasks, manager), manager, limit=c.limit)
    return {f"lm_eval/{r['task']}/{r['metric']}": r["value"] for r in result_rows(results)}


def log_training_metrics(cfg: GPT2Config, params, lm_eval_config, step: int,
                         writer) -> dict[str, float]:
    """`training_metrics` written as one record at `step` to the run's `writer`
    (`training.metric_writers`: metrics.jsonl, TensorBoard, log); returns them."""
    metrics = training_metrics(cfg, params, lm_eval_config)
    if metrics:
        writer.write_scalars(step, metrics)
    return metrics
