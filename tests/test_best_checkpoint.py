"""Best-checkpoint ranking: a checkpoint is ranked (Orbax `BestN`, `keep_best`) only by a
validation loss measured on its own parameters.

Policy (gpt2jax/training/loop.py): with `keep_best > 0` a save at a step without an evaluation
evaluates first; a preemption save (SIGTERM: no time for an eval) is left out of the ranking
(saved without metrics; `LatestN` keeps it).
"""

from __future__ import annotations

import json
import os
import signal

import jax
import pytest

from gpt2jax.training import checkpoint
from gpt2jax.training.loop import train_and_evaluate
from helpers import char_config


def _val_losses(workdir) -> dict[int, float]:
    """step -> val loss from metrics.jsonl (each measured on that step's params)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "val_loss" in r:
            out[r["step"]] = r["val_loss"]
    return out


def _eval_config(text, steps, save_every, eval_every, keep=1, keep_best=1):
    c = char_config(text, steps)
    c.train.update(eval_every=eval_every, eval_batches=1)
    c.checkpoint.update(save_every=save_every, keep=keep, keep_best=keep_best)
    return c


def _stored_metric(workdir, step):
    ck = checkpoint.Checkpointer(workdir)
    try:
        m = ck.manager.metrics(step)
    finally:
        ck.close()
    return None if m is None else m["val_loss"]


def _blow_up_at(at: int):
    """A hook that multiplies the output embedding by 50 after step `at` (loss jumps up)."""

    def hook(step, run):
        if step == at:
            p = dict(run.state.params)
            p["wte"] = jax.tree.map(lambda x: x * 50.0, p["wte"])
            run.state = run.state.replace(params=p)

    return hook


def test_unaligned_saves_are_ranked_by_their_own_val_loss(tmp_path, shakespeare_20k):
    """save_every=3, eval_every=2, keep=1, keep_best=1, checked with Orbax's real policies.

    After step 2's evaluation the output embedding is blown up, so every later loss is far
    above step 2's: ranked by step 2's loss, checkpoint 3 would be "best" and kept; ranked by
    its own loss it is the worst and Orbax removes it. Then a resumed run (to step 10) blows
    up again after step 8: the best checkpoint of the first run must survive the resume
    (its metric is read back from disk) and the new, worse saves."""
    work = tmp_path / "w"
    train_and_evaluate(_eval_config(shakespeare_20k, steps=7, save_every=3, eval_every=2), work,
                       hooks=[_blow_up_at(2)])
    val = _val_losses(work)
    assert {2, 3, 4, 6, 7} <= set(val), val  # 3 evaluated at its save; 2, 4, 6 by eval_every
    assert val[3] > val[2] + 1.0  # the case is reached: step 2's loss would flatter 3
    best = min([3, 6, 7], key=lambda s: val[s])
    assert best != 3
    survivors = checkpoint.Checkpointer(work).all_steps()
    assert survivors == sorted({7, best}), (survivors, val)  # Orbax's BestN + LatestN(1)
    for step in survivors:
        assert _stored_metric(work, step) == pytest.approx(val[step], rel=1e-6)

    train_and_evaluate(_eval_config(shakespeare_20k, steps=10, save_every=3, eval_every=2), work,
                       hooks=[_blow_up_at(8)])
    val = _val_losses(work)
    assert {9, 10} <= set(val) and min(val[9], val[10]) > val[best]  # the old best stays best
    assert checkpoint.Checkpointer(work).all_steps() == [best, 10], val


def test_preemption_save_is_left_out_of_the_ranking(tmp_path, shakespeare_20k):
    """SIGTERM after step 3 (last eval at step 2): the preemption checkpoint has no metric."""

    def preempt(step, run):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    work = tmp_path / "w"
    res = train_and_evaluate(_eval_config(shakespeare_20k, steps=8, save_every=100, eval_every=2,
                                          keep=2), work, hooks=[preempt])
    assert res["preempted"] and res["step"] == 3
    assert 2 in _val_losses(work) and 3 not in _val_losses(work)
    assert checkpoint.Checkpointer(work).all_steps() == [3]
    assert _stored_metric(work, 3) is None
