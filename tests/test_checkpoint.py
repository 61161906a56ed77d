"""Checkpoints: the params a run saved load back for inference equal to the restored train
state, and closing a checkpointer finishes Orbax's cleanup of stale temporary directories.

(Exact resume after SIGKILL: test_crash_safety.py; another model in the workdir: the
catalogue's workdir-other-model cases in test_bad_inputs_*.py.)"""

import jax
import numpy as np
from ml_collections import ConfigDict

from configs import common
from gpt2jax.parallel import sharding
from gpt2jax.training import checkpoint
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.training.step import TrainConfig, Trainer
from helpers import char_config


def test_saved_params_load_for_inference_as_restored(tmp_path, shakespeare_20k):
    workdir = tmp_path / "w"
    c = char_config(shakespeare_20k, 4)
    train_and_evaluate(c, workdir)

    cfg, params, tok = checkpoint.load_params_for_inference(workdir)
    assert (cfg.n_embd, cfg.vocab_size, tok["name"]) == (32, 65, "char")
    assert len(tok["chars"]) == tok["vocab_size"] == 58  # characters of the 20k-char slice
    ck = checkpoint.Checkpointer(workdir)
    mesh = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              devices=jax.devices()[:1])
    trainer = Trainer(cfg, TrainConfig.from_config(c.train), mesh,
                      sharding.rules(common.mesh_config()))
    state, data_state, meta = ck.restore(4, trainer.abstract_state())
    assert int(state.step) == 4 and data_state["index"] == 4 and meta["step"] == 4
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_close_before_any_save_finishes_the_tmp_cleanup(tmp_path):
    # Orbax deletes stale tmp directories in a background thread started with the manager,
    # which only a private method awaits; the Checkpointer removes them itself, before the
    # manager exists, so a run that stops before its first save leaves nothing deleting in the
    # workdir. 200 of them: an unawaited background cleanup would still be at work.
    directory = checkpoint.checkpoint_dir(tmp_path)
    directory.mkdir(parents=True)
    stale = [directory / f"{s}.orbax-checkpoint-tmp-{1700000000 + s}" for s in range(200)]
    for path in stale:
        path.mkdir()
        (path / "half_written").write_text("x")
    checkpoint.Checkpointer(tmp_path, async_save=True).close()
    assert [p.name for p in stale if p.exists()] == []
    assert directory.is_dir()
