"""run.py's console when stdout's reader goes away (`python run.py ... | head`): the run goes on
to its last checkpoint with one warning, instead of dying in a BrokenPipeError traceback."""

from __future__ import annotations

import subprocess
import sys

from gpt2jax.training import checkpoint
from helpers import REPO, cli_env

STEPS = 12


def test_training_outlives_a_closed_stdout_pipe(tmp_path, shakespeare_20k):
    workdir = tmp_path / "w"
    cmd = [sys.executable, "run.py", "--mode=train", "--config=configs/shakespeare_char.py:cpu",
           f"--workdir={workdir}", f"--config.data.train_file={shakespeare_20k}",
           "--config.model.n_layer=1", "--config.model.n_embd=32", "--config.model.n_head=2",
           "--config.train.batch_size=8", f"--config.train.num_steps={STEPS}",
           "--config.train.log_every=1", "--config.train.eval_every=6",
           "--config.train.eval_batches=1", "--config.train.progress_bar=False",
           f"--config.checkpoint.save_every={STEPS}", "--config.train.export_hf=False"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # what `| head -1` reads; then the reader is gone
    proc.stdout.close()
    _, err = proc.communicate(timeout=600)

    assert first.startswith("step 1:"), first  # the pipe was read while the run was young
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
    assert "stdout's reader has gone" in err, err[-3000:]
    assert checkpoint.Checkpointer(workdir).latest_step() == STEPS  # trained to the end
