"""experiments/tpu/README.md, sections 3-4, run as written with a local folder for the bucket.

Prep machine (TensorFlow installed: the `tfrecord` extra): TFDS prepares the dataset as
TFRecord (`tfds build`; here the local builder of tfds_local, as tiny_shakespeare cannot
download), `run.py --mode=prepare` turns it into token shards under data/NAME, copied to the
bucket (`gcloud storage cp -r`). Every worker (no TensorFlow: a stub makes `import
tensorflow` fail) copies them to its own disk and trains on them with the README's command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfds_local
from configs import prepare_tfds, shakespeare_char
from gpt2jax.cli import CliArgs, run_mode
from gpt2jax.data import shards
from gpt2jax.errors import ConfigError
from helpers import REPO, run_cli
NAME = "local_tiny_shakespeare"  # stands for tiny_shakespeare in the README's commands
# The README's training command, shrunk to seconds on CPU.
TINY = ["--config.model.n_layer=1", "--config.model.n_head=2", "--config.model.n_embd=32",
        "--config.model.n_positions=32", "--config.train.batch_size=8",
        "--config.train.grad_accum_steps=1", "--config.train.block_size=32",
        "--config.train.num_steps=2", "--config.train.warmup_steps=1",
        "--config.train.lr_decay_steps=2", "--config.train.eval_every=2",
        "--config.train.eval_batches=1", "--config.train.log_every=1",
        "--config.train.export_hf=False", "--config.train.progress_bar=False",
        "--config.train.peak_flops=1e9", "--config.checkpoint.save_every=2"]


def _without_tensorflow(tmp_path: Path) -> dict:
    """This environment with a `tensorflow` stub first on the path: importing it fails."""
    stub = tmp_path / "no_tf" / "tensorflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("no TensorFlow on the TPU workers")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stub.parent), str(REPO)]))
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env,
                           capture_output=True, text=True)
    assert check.returncode != 0 and "no TensorFlow on the TPU workers" in check.stderr
    return env


def test_recipe_trains_from_staged_shards_without_tensorflow(data_dir, tokenizer, tmp_path,
                                                             monkeypatch):
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()
    # 3. Once, on a machine with TensorFlow: tfds build (TFRecord), prepare, copy to the bucket.
    prep = tmp_path / "prep"
    tfds_local.build(str(data_dir / "tinyshakespeare" / "input.txt"),
                     str(prep / "tensorflow_datasets"))
    # run.py --mode=prepare --config=configs/prepare_tfds.py:NAME --config.data.data_dir=...
    # (in this process: it already holds TensorFlow, which a fresh one would import again)
    monkeypatch.chdir(prep)
    config = prepare_tfds.get_config(NAME)
    config.data.data_dir = str(prep / "tensorflow_datasets")
    run_mode("prepare", config, CliArgs())
    bucket = tmp_path / "bucket"
    shutil.copytree(prep / "data" / NAME, bucket / "shards" / NAME)

    # 4. Every worker: stage the shards to local disk, then the training command.
    worker = tmp_path / "worker"
    shutil.copytree(bucket / "shards" / NAME, worker / "data" / NAME)
    proc = run_cli(["--mode=train", f"--config={REPO}/configs/gpt2.py:small",
                    f"--config.data.shards_dir=data/{NAME}", "--config.mesh.data=-1",
                    "--workdir=runs/gpt2-small-shakespeare", *TINY],
                   cwd=worker, env=_without_tensorflow(tmp_path))  # asserts exit status 0
    assert "done: step 2" in proc.stdout
    assert (worker / "runs" / "gpt2-small-shakespeare" / "checkpoints" / "2").is_dir()

    parts = tfds_local.splits(text)
    _, train, val, meta = shards.open_shards(str(worker / "data" / NAME))
    assert meta["splits"]["train"]["origin"] == f"tfds:{NAME}/train"
    np.testing.assert_array_equal(train.to_numpy(), tokenizer.encode_ordinary(parts["train"]))
    np.testing.assert_array_equal(val.to_numpy(), tokenizer.encode_ordinary(parts["validation"]))


def test_bucket_urls_as_local_folders_are_refused(tmp_path, monkeypatch):
    """A gs:// workdir or shards folder would be written to a local folder named `gs:`."""
    monkeypatch.chdir(tmp_path)
    config = shakespeare_char.get_config("cpu")
    config.model.update(n_layer=1, n_head=2, n_embd=32, n_positions=32)  # fast if not refused
    config.train.update(batch_size=8, block_size=32, num_steps=1, eval_every=0, export_hf=False,
                        progress_bar=False, peak_flops=1e9, sample_tokens=0)
    with pytest.raises(ConfigError, match="gs://b/runs/x.*not a local folder"):
        run_mode("train", config, CliArgs(workdir="gs://b/runs/x"))
    config = prepare_tfds.get_config(NAME)
    config.data.shards_dir = "gs://b/shards"
    with pytest.raises(ConfigError, match="gs://b/shards.*not a local folder"):
        run_mode("prepare", config, CliArgs())
    assert list(tmp_path.iterdir()) == []
