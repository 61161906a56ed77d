"""A finalized checkpoint that cannot be read: one clear error naming it and the way on
(`--config.checkpoint.restore_step=<previous>`), and the damaged checkpoint is never deleted
or overwritten (resuming from the previous step moves it, byte for byte, out of Orbax's
reach to `<workdir>/checkpoints_set_aside/`, so no later save or garbage collection can
touch it)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from gpt2jax.training import checkpoint
from gpt2jax.errors import ConfigError, GPT2JaxError
from gpt2jax.training.loop import train_and_evaluate
from helpers import char_config, damage_largest_array_file, file_digests


def _run_config(text):
    c = char_config(text, 4)
    c.checkpoint.update(save_every=2, keep=3)
    return c


def test_unreadable_checkpoint_names_itself_and_the_way_on(tmp_path, shakespeare_20k):
    work = tmp_path / "w"
    train_and_evaluate(_run_config(shakespeare_20k), work)
    ckpts = work / "checkpoints"
    assert checkpoint.Checkpointer(work).all_steps() == [2, 4]
    damage_largest_array_file(ckpts / "4")
    damaged = file_digests(ckpts / "4")

    with pytest.raises(checkpoint.CheckpointUnreadableError) as info:
        train_and_evaluate(_run_config(shakespeare_20k), work)  # the same command again
    message = str(info.value)
    assert isinstance(info.value, GPT2JaxError) and "\n" not in message, message
    assert str(ckpts / "4") in message and "--config.checkpoint.restore_step=2" in message
    assert file_digests(ckpts / "4") == damaged  # untouched

    c = _run_config(shakespeare_20k)
    c.checkpoint.restore_step = 2
    res = train_and_evaluate(c, work)  # resumes from 2, saves a new 4
    assert res["step"] == 4
    records = [json.loads(ln) for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # 3, 4 re-run: once
    aside = work / "checkpoints_set_aside" / "4"
    assert file_digests(aside) == damaged  # moved, byte for byte, never deleted
    assert checkpoint.Checkpointer(work).all_steps() == [2, 4]
    _, params, _ = checkpoint.load_params_for_inference(work)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))

    c.checkpoint.restore_step = 3
    with pytest.raises(ConfigError, match=r"restore_step=3.*\[2, 4\]"):
        train_and_evaluate(c, work)
