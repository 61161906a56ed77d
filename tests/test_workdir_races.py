"""A workdir shared by a run and a reader: a reader that loses the race to a training run's
deletion of old checkpoints (keep=1) reads the newest one instead of calling a healthy
checkpoint unreadable. (A resume on another character vocabulary: the catalogue's
workdir-other-vocabulary cases in test_bad_inputs_*.py.)
"""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gpt2jax.errors import WeightsError
from gpt2jax.training.checkpoint import Checkpointer
from gpt2jax.weights.loader import load_model
from helpers import MICRO, tiny_config, tiny_params

def _save(checkpointer: Checkpointer, step: int, cfg, params) -> None:
    meta = {"model": cfg.to_dict(), "tokenizer": {"name": "char", "vocab_size": 50,
                                                  "eot_id": None, "chars": "".join(
                                                      chr(48 + i) for i in range(50))}}
    checkpointer.save(step, {"params": params}, {"position": step}, meta)
    checkpointer.wait_until_finished()


def test_reader_that_loses_the_race_to_deletion_reads_the_newest(tmp_path, monkeypatch):
    """A run with keep=1 finalizes step 2 (deleting step 1) between the reader choosing step 1
    and reading it: the reader reads step 2 (before: "Checkpoint 1 cannot be read ... train
    again, or move it elsewhere")."""
    cfg = tiny_config(**MICRO)
    params = [jax.device_get(tiny_params(cfg, seed)) for seed in (1, 2)]
    run = Checkpointer(tmp_path, keep=1, keep_best=0, async_save=False)
    _save(run, 1, cfg, params[0])
    real_restore, raced = ocp.CheckpointManager.restore, []

    def restore_after_the_run_moved_on(self, step, *args, **kwargs):
        if not raced:  # the run saves step 2 and its keep=1 deletes step 1, right now
            raced.append(step)
            _save(run, 2, cfg, params[1])
        return real_restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore_after_the_run_moved_on)
    _, loaded, _ = load_model(tmp_path)
    assert raced == [1] and run.all_steps() == [2]  # the race happened as described
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params[1])):
        np.testing.assert_array_equal(np.asarray(got), want)

    with pytest.raises(WeightsError, match=r"Checkpoint 1 .* was deleted while it was read"):
        load_model(tmp_path, step=1)  # an explicit step that is gone: named, with the steps
    run.close()
