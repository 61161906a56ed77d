"""NaN/Inf guard: a non-finite loss stops training with a message naming the step, and the
last good checkpoint stays (restorable, finite, bit-equal to the params of that step).

A learning rate of 1e20 makes the first Adam update push every parameter to ~1e19, so the
LayerNorm variance overflows float32 and the loss of step 2 is NaN, deterministically.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from test_crash_safety import params_hash, tiny_config


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, data_dir) -> str:
    path = tmp_path_factory.mktemp("text") / "shakespeare_20k.txt"
    path.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20000])
    return str(path)


def test_huge_learning_rate_stops_naming_the_step_and_keeps_last_good_checkpoint(
        text_file, tmp_path, record_property):
    from gpt2jax.checkpoint import load_params_for_inference
    from gpt2jax.errors import GPT2JaxError
    from gpt2jax.loop import train_and_evaluate

    config = tiny_config(text_file, num_steps=10, learning_rate=1e20, save_every=1)
    config.train.batch_size = 8  # the pytest process has 8 simulated devices
    hashes = {}

    def hook(step, run):
        hashes[step] = params_hash(run.state.params)

    with pytest.raises(GPT2JaxError) as info:
        train_and_evaluate(config, tmp_path / "run", hooks=[hook])
    message = str(info.value)
    record_property("message", f"{type(info.value).__name__}: {message}")
    assert isinstance(info.value, FloatingPointError)
    assert "at step 2" in message and "learning_rate" in message, message
    assert sorted(hashes) == [1]  # step 2 never completed: no hook, no save

    cfg, params, _ = load_params_for_inference(tmp_path / "run")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert params_hash(params) == hashes[1]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1"]
