"""One training run per workdir (gpt2jax/training/workdir_lock.py): a second run is refused at start
with one line naming the owner (host, pid), the first run does not notice; a lock left by a
dead process is taken over; the processes of one multi-host run each lock their own index."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2jax.training import checkpoint
from gpt2jax.errors import ConfigError
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.training.workdir_lock import WorkdirLockedError, acquire, lock_path, release
from helpers import char_config, cli_env, run_cli


def _cli_train(workdir: Path) -> subprocess.CompletedProcess:
    """`run.py --mode=train` on `workdir` (a tiny shakespeare_char:cpu run, one CPU device)."""
    return run_cli(["--mode=train", "--config=configs/shakespeare_char.py:cpu",
                    f"--workdir={workdir}", "--config.model.n_layer=1", "--config.model.n_embd=32",
                    "--config.model.n_head=2", "--config.train.num_steps=2",
                    "--config.train.eval_every=0", "--config.train.progress_bar=False"],
                   env=cli_env(), check=False)


def _lines(workdir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_second_run_is_refused_and_the_first_does_not_notice(tmp_path, shakespeare_20k):
    """Run A (this process) starts run B (`run.py`, same workdir) after its step 2 and waits
    for it: B must exit 2 with one line naming A's pid, before touching the workdir; A goes
    on, saves and finishes with a metrics.jsonl of its own steps only."""
    work, seen = tmp_path / "w", {}

    def start_second_run(step, run):
        if step == 2:
            seen["listing"] = sorted(p.name for p in work.iterdir())
            seen["b"] = _cli_train(work)
            seen["listing_after"] = sorted(p.name for p in work.iterdir())

    c = char_config(shakespeare_20k, 6)
    c.checkpoint.update(save_every=2, keep=5)
    res = train_and_evaluate(c, work, hooks=[start_second_run])
    b = seen["b"]
    assert b.returncode == 2, b.stderr[-3000:]
    errors = [ln for ln in b.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in b.stderr, b.stderr[-3000:]
    assert f"pid {os.getpid()}" in errors[0] and "in use by another training run" in errors[0]
    assert seen["listing_after"] == seen["listing"]  # B wrote nothing
    assert res["step"] == 6
    assert [r["step"] for r in _lines(work)] == [1, 2, 3, 4, 5, 6]
    assert checkpoint.Checkpointer(work).all_steps() == [2, 4, 6]
    assert not lock_path(work, 0).exists()  # released at the end


def test_stale_lock_is_taken_over_and_indices_are_separate(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock_path(tmp_path, 0).write_text(json.dumps({"host": "h", "pid": int(dead.stdout)}))
    with caplog.at_level(logging.WARNING):
        fd = acquire(tmp_path, 0)
    assert f"pid {int(dead.stdout)}" in caplog.text and "gone" in caplog.text
    assert json.loads(lock_path(tmp_path, 0).read_text())["pid"] == os.getpid()
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
        acquire(tmp_path, 0)  # held (also against this very process)
    other = acquire(tmp_path, 1)  # process 1 of a multi-host run: its own lock
    release(tmp_path, other, 1)
    release(tmp_path, fd, 0)
    assert sorted(os.listdir(tmp_path)) == []
    release(tmp_path, acquire(tmp_path, 0), 0)  # free again


def test_user_error_after_the_lock_leaves_no_trace(tmp_path, shakespeare_20k):
    c = char_config(shakespeare_20k)
    c.train.block_size = 64  # > n_positions=32: refused after the lock is taken
    with pytest.raises(ConfigError, match="block_size"):
        train_and_evaluate(c, tmp_path / "new" / "w")
    assert not (tmp_path / "new").exists()
