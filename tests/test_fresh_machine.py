"""The README's first command on a fresh machine: nothing but the install, no network.

Tiny Shakespeare ships inside the package (gpt2jax/data/assets), so the char Shakespeare
config trains and samples with no `GPT2JAX_DATA_DIR`, an empty cache and no reachable
download server. The subprocesses run the real `run.py`, as a user would.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from gpt2jax.data import resolve
from helpers import REPO, run_cli

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def fresh_env(home: Path) -> dict[str, str]:
    """This environment minus every data location: no data dir, an empty home and cache,
    and a download base URL where nothing listens (a download attempt fails at once)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GPT2JAX_DATA_DIR", "GPT2JAX_TIKTOKEN_RANKS", "TIKTOKEN_CACHE_DIR",
                        "DATA_GYM_CACHE_DIR")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), JAX_PLATFORMS="cpu",
               XLA_FLAGS="", GPT2JAX_DOWNLOAD_BASE_URL="http://127.0.0.1:9",
               TMPDIR=str(home / "tmp"))
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return env


def test_packaged_shakespeare_is_the_real_file(data_dir):
    packaged = resolve.packaged_file("tinyshakespeare/input.txt")
    assert packaged is not None and packaged.is_file()
    assert hashlib.sha256(packaged.read_bytes()).hexdigest() == SHAKESPEARE_SHA256
    assert packaged.read_bytes() == (data_dir / "tinyshakespeare" / "input.txt").read_bytes()


def test_wheel_ships_tiny_shakespeare(tmp_path):
    """A non-editable install gets the text too: it is in the wheel (pyproject.toml package-data).
    Built from a copy of the sources, so no build/ folder appears in the checkout."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "gpt2jax", src / "gpt2jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("gpt2jax-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read("gpt2jax/data/assets/tinyshakespeare/input.txt")
    assert hashlib.sha256(data).hexdigest() == SHAKESPEARE_SHA256


def test_main_job_trains_and_samples_with_nothing_but_the_install(tmp_path):
    home = tmp_path / "home"
    env = fresh_env(home)
    workdir = tmp_path / "runs" / "sc"
    small = ["--config.train.num_steps=3", "--config.train.eval_every=3",
             "--config.train.eval_batches=1", "--config.train.log_every=1",
             "--config.checkpoint.save_every=3", "--config.train.sample_tokens=0"]
    run_cli(["--mode=train", "--config=configs/shakespeare_char.py:cpu",
             f"--workdir={workdir}", *small], env=env)  # asserts exit status 0
    assert (workdir / "tokenizer.json").is_file()
    gen = run_cli(["--mode=generate", "--config=configs/shakespeare_char.py:cpu",
                   f"--config.init_from={workdir}", "--prompt=ROMEO:",
                   "--config.generate.max_new_tokens=20"], env=env)  # asserts exit status 0
    assert "ROMEO:" in gen.stdout
    # Nothing was downloaded or cached: the text came from the package.
    cache = home / ".cache" / "gpt2jax"
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))


def test_offline_dataset_is_one_line_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    workdir = tmp_path / "runs" / "ptb"
    proc = run_cli(["--mode=train", "--config=configs/shakespeare_char.py:cpu",
                    f"--workdir={workdir}", "--config.data.train_file=dataset:ptb/ptb.train.txt"],
                   env=fresh_env(home), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: Could not download ptb/ptb.train.txt from "
                            "http://127.0.0.1:9/ptb/ptb.train.txt"), error
    assert "GPT2JAX_DATA_DIR=DIR" in error
    assert not workdir.exists()
    assert [p for p in home.rglob("*") if p.is_file()] == []
