"""A disk that fills up during training: the first failed checkpoint save stops the run with
one error naming the disk and the last good checkpoint; the checkpoints before it are intact,
no temporary folder is left, and after freeing space the same command resumes, with each
step's record once in metrics.jsonl. Also: the HF export onto a full disk.

The full disk is real: a small tmpfs mounted for the test (the test containers run as root;
the tests skip where mounting is not allowed), filled by a ballast file from a hook once the
first checkpoint is on disk, so that the next save fails with ENOSPC inside TensorStore, as
on a cluster's scratch disk. No write is simulated.
"""

from __future__ import annotations

import json
import re
import time

import jax
import pytest

from gpt2jax.errors import GPT2JaxError, StorageError
from gpt2jax.training.checkpoint import Checkpointer, CheckpointSaveError
from gpt2jax.training.loop import train_and_evaluate
from gpt2jax.weights.pretrained import save_pretrained
from helpers import (REPO, TINY, char_run_config, cli_env, file_digests, fill_disk, run_cli,
                     tiny_config, tiny_params, tmpfs)

TMP_MARK = "orbax-checkpoint-tmp"
DISK_BYTES = 16 * 2**20
LINE = "First Citizen: Before we proceed any further, hear me speak.\n"


def _train_steps(workdir) -> list[int]:
    """The steps of metrics.jsonl's training records (those with a loss), in file order."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize("async_save", [True, False], ids=["async", "sync"])
def test_full_disk_stops_at_the_failed_save_keeps_the_last_good_one_and_resumes(
        tmp_path, async_save, record_property):
    text = tmp_path / "text.txt"
    text.write_text(LINE * 40)
    with tmpfs(tmp_path / "disk", DISK_BYTES) as disk:
        work, ballast, seen = disk / "run", disk / "ballast", {}
        config = char_run_config(text, 12, save_every=4, async_save=async_save)

        def fill_after_first_checkpoint(step, run):
            seen["last"] = step
            if step == 5:  # checkpoint 4 is on disk (or being written): fill the disk
                run.checkpointer.wait_until_finished()
                seen["digest"] = file_digests(work / "checkpoints" / "4")
                fill_disk(ballast, leave_bytes=16 * 1024)  # metrics fit, a checkpoint not
            if step == 9:  # the async write of checkpoint 8 fails while step 9 runs
                deadline = time.time() + 120
                while run.checkpointer.manager.is_saving_in_progress():
                    assert time.time() < deadline, "checkpoint 8 neither failed nor finished"
                    time.sleep(0.01)

        with pytest.raises(GPT2JaxError) as info:
            train_and_evaluate(config, work, hooks=[fill_after_first_checkpoint])
        message = str(info.value)
        record_property("message", f"{type(info.value).__name__}: {message}")
        assert isinstance(info.value, CheckpointSaveError), repr(info.value)
        assert "\n" not in message
        for fragment in ("Checkpoint 8 could not be written", "No space left on device",
                         f"the disk mounted at {disk}", "last good checkpoint is step 4",
                         "free space", "run the same command again"):
            assert fragment in message, (fragment, message)
        # stopped at once: at the step during which the save failed, or the next (before: on
        # to the next save, step 12, then ~3,000 lines of Orbax tracebacks)
        assert seen["last"] <= (9 if async_save else 8), seen
        listing = sorted(p.name for p in (work / "checkpoints").iterdir())
        assert listing == ["4"] and not any(TMP_MARK in n for n in listing), listing
        assert file_digests(work / "checkpoints" / "4") == seen["digest"]  # intact

        if not async_save:
            return  # the resume below is the same for both
        ballast.unlink()  # free the space; the same command resumes from step 4
        result = train_and_evaluate(config, work)
        assert result["step"] == 12
        assert Checkpointer(work).all_steps() == [4, 8, 12]
        # steps 5.. ran twice (before the failure and after the resume), recorded once
        assert _train_steps(work) == list(range(1, 13))


def test_full_disk_through_the_cli_prints_one_line_and_no_traceback(tmp_path):
    """`python run.py --mode=train` (async saves, the default) on a 1.5 MB disk that holds
    four checkpoints and a half: exit 2 and the `error:` line is the last line; no traceback,
    and none of asyncio's "Future exception was never retrieved" (one per array of the
    failed write, printed as they are collected); no temporary folder left."""
    text = tmp_path / "text.txt"
    text.write_text(LINE * 40)
    with tmpfs(tmp_path / "disk", 1500 * 1024) as disk:
        proc = run_cli(["--mode=train", "--config=configs/shakespeare_char.py:cpu",
                        f"--workdir={disk}/run", f"--config.data.train_file={text}",
                        "--config.model.n_layer=1", "--config.model.n_embd=32",
                        "--config.model.n_head=2", "--config.model.n_positions=32",
                        "--config.train.block_size=32", "--config.train.batch_size=4",
                        "--config.train.num_steps=40", "--config.checkpoint.save_every=5",
                        "--config.checkpoint.keep=4", "--config.train.eval_every=0",
                        "--config.train.sample_tokens=0", "--config.train.progress_bar=false",
                        "--config.train.steps_per_call=1"],
                       env=cli_env(), cwd=REPO, timeout=300, check=False)
        output = proc.stderr + proc.stdout
        lines = [ln for ln in proc.stderr.splitlines()
                 if ln.strip() and not re.match(r"^[IWEF]\d{4} ", ln)]
        assert proc.returncode == 2, output[-3000:]
        for echo in ("Traceback", "Exception ignored", "never retrieved", "future: <"):
            assert echo not in output, (echo, output[-3000:])
        assert lines[-1].startswith("error: Checkpoint "), lines[-5:]
        assert sum(ln.startswith("error: ") for ln in lines) == 1, lines
        assert "No space left on device" in lines[-1], lines[-1]
        last = Checkpointer(disk / "run").all_steps()
        assert last and f"last good checkpoint is step {last[-1]}" in lines[-1], (last, lines)
        assert not list((disk / "run").rglob(f"*{TMP_MARK}*"))


def test_hf_export_onto_a_full_disk_is_one_storage_error_and_leaves_nothing(tmp_path):
    cfg = tiny_config(**TINY)
    params = jax.device_get(tiny_params(cfg))
    with tmpfs(tmp_path / "disk", 256 * 1024) as disk:  # the model needs ~0.5 MB
        with pytest.raises(StorageError) as info:
            save_pretrained(cfg, params, disk / "hf")
        message = str(info.value)
        assert "No space left on device" in message and f"mounted at {disk}" in message
        assert "free space" in message, message
        assert sorted(p.name for p in disk.iterdir()) == []  # no partial export, no tmp dir
