"""NaN/Inf guard: a non-finite loss or update stops training with a typed one-line error naming
the step, and the last good checkpoint stays (restorable, finite, bit-equal to the params of
that step).

A learning rate of 1e20 makes the first Adam update push every parameter to ~1e19, so the
LayerNorm variance overflows float32 and the loss of step 2 is NaN, deterministically. The
runs are in-process (`train_and_evaluate` on the test process's 8 CPU devices), a checkpoint
after every step.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from gpt2jax.errors import GPT2JaxError
from gpt2jax.training.checkpoint import load_params_for_inference
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.training.step import TrainingDivergedError
from helpers import char_run_config, params_hash


def _train(text, workdir, num_steps: int, learning_rate: float = 1e-3) -> dict[int, str]:
    """Trains the tiny char model with a checkpoint every step; returns {step: params hash}
    of every step that completed (the hook runs after each finished step), also when the
    run raises (then on the exception as `.hashes`)."""
    config = char_run_config(text, num_steps, save_every=1)
    config.train.update(learning_rate=learning_rate, min_learning_rate=learning_rate / 10)
    hashes = {}

    def hook(step, run):
        hashes[step] = params_hash(run.state.params)

    try:
        train_and_evaluate(config, workdir, hooks=[hook])
    except GPT2JaxError as e:
        e.hashes = hashes
        raise
    return hashes


def _saved(workdir) -> list[str]:
    return sorted(os.listdir(workdir / "checkpoints"))


def _assert_finite_params_of(workdir, digest: str) -> None:
    """The params that load for inference are finite and equal those hashed at that step."""
    _, params, _ = load_params_for_inference(workdir)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert params_hash(params) == digest


def test_huge_learning_rate_stops_naming_the_step_and_keeps_last_good_checkpoint(
        shakespeare_20k, tmp_path, record_property):
    work = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as info:
        _train(shakespeare_20k, work, 10, learning_rate=1e20)
    message = str(info.value)
    record_property("message", message)
    assert "\n" not in message and "at step 2" in message and "learning_rate" in message
    assert sorted(info.value.hashes) == [1]  # step 2 never completed: no hook, no save
    assert _saved(work) == ["1"]
    _assert_finite_params_of(work, info.value.hashes[1])


def test_non_finite_update_is_never_saved_and_error_names_the_good_checkpoint(
        shakespeare_20k, tmp_path):
    """learning_rate=inf: every step's loss is finite (it is measured before the update) but
    the update makes the params inf/NaN. The step's `update_finite` must stop the run before
    that state is saved (save_every=1), naming the step and the last finite checkpoint."""
    work = tmp_path / "run"
    good = _train(shakespeare_20k, work, 3)[3]
    assert _saved(work) == ["1", "2", "3"]

    with pytest.raises(TrainingDivergedError) as info:  # resumes at 3; step 4's update is inf
        _train(shakespeare_20k, work, 6, learning_rate=float("inf"))
    message = str(info.value)
    assert "step 4" in message and "step 3" in message and "learning_rate" in message, message
    assert _saved(work) == ["1", "2", "3"]  # nothing non-finite saved
    _assert_finite_params_of(work, good)

    fresh = tmp_path / "fresh"
    with pytest.raises(TrainingDivergedError) as info:
        _train(shakespeare_20k, fresh, 4, learning_rate=float("inf"))
    assert "step 1" in str(info.value) and "no checkpoint" in str(info.value), info.value
    assert not (fresh / "checkpoints").exists() or _saved(fresh) == []
