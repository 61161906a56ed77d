"""NaN/Inf guard: a non-finite loss stops training with a message naming the step, and the
last good checkpoint stays (restorable, finite, bit-equal to the params of that step).

A learning rate of 1e20 makes the first Adam update push every parameter to ~1e19, so the
LayerNorm variance overflows float32 and the loss of step 2 is NaN, deterministically. The
run is a child of the zygote of test_crash_safety.py (2 CPU devices, the same tiny model).
"""

from __future__ import annotations

import jax
import numpy as np

from test_crash_safety import params_hash, read_log, text_file, zygote  # noqa: F401


def test_huge_learning_rate_stops_naming_the_step_and_keeps_last_good_checkpoint(
        zygote, text_file, tmp_path, record_property):  # noqa: F811
    from gpt2jax.training.checkpoint import load_params_for_inference

    work, log = tmp_path / "run", tmp_path / "log"
    res = zygote.run(workdir=str(work), log=str(log), text=text_file, num_steps=10,
                     lr=1e20, save_every=1)
    out = (tmp_path / "log.out").read_text()
    message = next((ln for ln in out.splitlines() if ln.startswith("error: ")), out[-2000:])
    record_property("message", message[len("error: "):])
    assert res["exit"] == 2, out[-3000:]  # a typed GPT2JaxError, not a crash
    assert message.startswith("error: TrainingDivergedError: "), message
    assert "at step 2" in message and "learning_rate" in message, message
    assert "Traceback" not in out
    hashes = dict(read_log(log))
    assert sorted(hashes) == [1]  # step 2 never completed: no hook, no save
    assert res["listing_after"] == ["1"]

    cfg, params, _ = load_params_for_inference(work)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert params_hash(params) == hashes[1]


def test_non_finite_update_is_never_saved_and_error_names_the_good_checkpoint(
        zygote, text_file, tmp_path):  # noqa: F811
    """learning_rate=inf: every step's loss is finite (it is measured before the update) but
    the update makes the params inf/NaN. The step's `update_finite` must stop the run before
    that state is saved (save_every=1), naming the step and the last finite checkpoint."""
    from gpt2jax.training.checkpoint import load_params_for_inference

    work, log = tmp_path / "run", tmp_path / "log"
    res = zygote.run(workdir=str(work), log=str(log), text=text_file, num_steps=3, save_every=1)
    assert res["exit"] == 0 and res["listing_after"] == ["1", "2", "3"]
    good = dict(read_log(log))[3]

    res = zygote.run(workdir=str(work), log=str(log), text=text_file, num_steps=6,
                     lr=float("inf"), save_every=1)  # resumes at 3; step 4's update is inf
    out = (tmp_path / "log.out").read_text()
    message = next((ln for ln in out.splitlines() if ln.startswith("error: ")), out[-2000:])
    assert res["exit"] == 2, out[-3000:]
    assert message.startswith("error: TrainingDivergedError: "), message
    assert "step 4" in message and "step 3" in message and "learning_rate" in message, message
    assert res["listing_after"] == ["1", "2", "3"]  # nothing non-finite saved
    cfg, params, _ = load_params_for_inference(work)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert params_hash(params) == good

    fresh, flog = tmp_path / "fresh", tmp_path / "fresh_log"
    res = zygote.run(workdir=str(fresh), log=str(flog), text=text_file, num_steps=4,
                     lr=float("inf"), save_every=1)
    out = (tmp_path / "fresh_log.out").read_text()
    message = next((ln for ln in out.splitlines() if ln.startswith("error: ")), out[-2000:])
    assert res["exit"] == 2, out[-3000:]
    assert "step 1" in message and "no checkpoint" in message, message
    assert res["listing_after"] == []
