"""Checkpoints: exact resume after SIGKILL, a different model in the workdir is refused,
and the params load back for inference."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from gpt2jax.training import checkpoint
from gpt2jax.errors import ConfigError
from helpers import char_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains configs/shakespeare_char.py:cpu shrunk to seconds, on one CPU device; with "block"
# it stops after step 12's checkpoint is on disk, prints a marker and waits to be killed.
RUNNER = textwrap.dedent("""
    import sys, time
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from configs import shakespeare_char
    from gpt2jax.training.loop import train_and_evaluate

    text, workdir, mode = sys.argv[1:4]
    c = shakespeare_char.get_config("cpu")
    c.model.update(n_layer=1, n_head=2, n_embd=32, n_positions=32, embd_pdrop=0.1,
                   attn_pdrop=0.1, resid_pdrop=0.1)  # dropout on: rng must resume too
    c.data.update(train_file=text, prefetch=2)
    c.train.update(batch_size=4, block_size=32, num_steps=20, lr_decay_steps=20,
                   warmup_steps=2, log_every=1, eval_every=0, sample_tokens=0,
                   export_hf=False, progress_bar=False, peak_flops=1e9)
    c.checkpoint.update(save_every=4, keep=2, keep_best=0)

    def block(step, run):
        if mode == "block" and step == 12:
            run.checkpointer.wait_until_finished()
            print("CHECKPOINT-12-DONE", flush=True)
            time.sleep(600)

    train_and_evaluate(c, workdir, hooks=[block])
""")


def _env(cache=None) -> dict:
    """One CPU device; `cache`: an XLA compilation cache directory shared by the runs."""
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")
    return env


def _losses(workdir) -> dict:
    """step -> loss from metrics.jsonl (a resumed run appends; the last record wins)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare_20k):
    """(killed-then-resumed workdir, uninterrupted workdir) of the 20-step runner."""
    tmp_path = tmp_path_factory.mktemp("resume")
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    # the three runs compile the same programs: the resumed and the straight run reuse the
    # killed run's compiles from a cache (as test_crash_safety's zygote does)
    env = _env(tmp_path / "xla_cache")
    text = str(shakespeare_20k)
    proc = subprocess.Popen([sys.executable, str(script), text, str(killed), "block"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, cwd=REPO)
    deadline = time.time() + 600
    for line in proc.stdout:  # wait for the marker printed after step 12's checkpoint
        if "CHECKPOINT-12-DONE" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.Checkpointer(killed).latest_step() == 12
    assert max(_losses(killed)) == 12
    for workdir in (killed, straight):  # resume; and an uninterrupted run
        subprocess.run([sys.executable, str(script), text, str(workdir), "run"], check=True,
                       env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return killed, straight


def test_exact_resume_after_sigkill(runs):
    killed, straight = runs
    resumed, reference = _losses(killed), _losses(straight)
    assert sorted(reference) == list(range(1, 21))
    for step in range(13, 21):
        assert resumed[step] == reference[step], (step, resumed[step], reference[step])
    assert checkpoint.Checkpointer(killed).all_steps() == [16, 20]  # keep=2


def test_other_model_in_workdir_is_refused_and_params_load(runs, shakespeare_20k):
    from gpt2jax.training.loop import train_and_evaluate

    workdir = runs[1]
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    with pytest.raises(checkpoint.CheckpointMismatchError, match="n_embd: saved 32 vs config 64"):
        train_and_evaluate(char_config(shakespeare_20k, 8, n_embd=64), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    assert isinstance(checkpoint.CheckpointMismatchError("x"), ConfigError)

    cfg, params, tok = checkpoint.load_params_for_inference(workdir)
    assert (cfg.n_embd, cfg.vocab_size, tok["name"]) == (32, 65, "char")
    assert len(tok["chars"]) == tok["vocab_size"] == 58  # characters of the 20k-char slice
    ck = checkpoint.Checkpointer(workdir)
    from configs import common
    from gpt2jax.parallel import sharding
    from gpt2jax.training.step import TrainConfig, Trainer

    c = char_config(shakespeare_20k)
    mesh = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              devices=jax.devices()[:1])
    trainer = Trainer(cfg, TrainConfig.from_config(c.train), mesh,
                      sharding.rules(common.mesh_config()))
    state, data_state, meta = ck.restore(20, trainer.abstract_state())
    assert int(state.step) == 20 and data_state["index"] == 20 and meta["step"] == 20
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
