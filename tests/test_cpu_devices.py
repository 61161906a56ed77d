"""run.py's default `--cpu_devices=-1`: training on a CPU host runs data-parallel over one
device per core when the batch divides, with the losses of one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import shakespeare_char
from gpt2jax.parallel import distributed

REPO = Path(__file__).resolve().parents[1]
NONE = distributed.ProcessFlags()


def test_auto_split_is_the_most_devices_that_divide_the_batch():
    assert distributed.auto_cpu_devices(12, 2) == 2
    assert distributed.auto_cpu_devices(12, 16) == 12
    assert distributed.auto_cpu_devices(12, 5) == 4
    assert distributed.auto_cpu_devices(7, 2) == 1
    assert distributed.auto_cpu_devices(8, 1) == 1


def test_default_applies_to_single_process_data_parallel_training_only(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    c = shakespeare_char.get_config("cpu")  # batch 12
    auto = distributed.AUTO_CPU_DEVICES
    assert distributed.default_cpu_devices(auto, "train", c, NONE) == 2
    assert distributed.default_cpu_devices(3, "train", c, NONE) == 3  # given: used as is
    assert distributed.default_cpu_devices(auto, "generate", c, NONE) == 0
    multi = distributed.ProcessFlags("localhost:1234", 2, 0)
    assert distributed.default_cpu_devices(auto, "train", c, multi) == 0
    c.mesh.fsdp = 2
    assert distributed.default_cpu_devices(auto, "train", c, NONE) == 0
    c.mesh.fsdp, c.train.batch_size = 1, 7  # does not divide
    assert distributed.default_cpu_devices(auto, "train", c, NONE) == 0
    c.train.batch_size = 12
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert distributed.default_cpu_devices(auto, "train", c, NONE) == 0


@pytest.fixture
def text_file(tmp_path, data_dir):
    path = tmp_path / "train.txt"
    path.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    return path


def _train(workdir: Path, text_file, *flags: str,
           xla_flags: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    cmd = [sys.executable, "run.py", "--mode=train", "--config=configs/shakespeare_char.py:cpu",
           f"--workdir={workdir}", f"--config.data.train_file={text_file}",
           "--config.model.n_layer=1", "--config.model.n_embd=32", "--config.model.n_head=2",
           "--config.train.num_steps=3", "--config.train.log_every=1",
           "--config.train.eval_every=0", "--config.train.sample_tokens=0",
           "--config.train.peak_flops=1e9", "--config.train.progress_bar=False",
           "--config.train.export_hf=False", "--config.checkpoint.save_every=0",
           "--config.checkpoint.keep_best=0", "--verbosity=0", *flags]  # INFO: the split line
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _losses(workdir: Path) -> list[float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_main_job_default_splits_the_cpu_with_the_losses_of_one_device(tmp_path, text_file):
    assert len(os.sched_getaffinity(0)) >= 2, "needs >= 2 cores to reach the split"
    split = _train(tmp_path / "default", text_file)
    assert "CPU host split into 2 JAX devices" in split.stderr  # the default did split
    one = _train(tmp_path / "one", text_file, "--cpu_devices=1")
    assert "CPU host split" not in one.stderr
    a, b = _losses(tmp_path / "default"), _losses(tmp_path / "one")
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=1e-5, abs=0)  # float32 rounding of the device sums


def test_split_cpu_evaluates_many_times_without_a_collective_deadlock(tmp_path, text_file):
    # Validation batches are independent programs with an all-reduce each; queued
    # asynchronously on the two CPU devices they ran in different orders per device and
    # XLA:CPU aborted ("Termination timeout for all reduce ... only 1 of them arrived"),
    # within 3 evaluations in 3 of 3 runs of the README main job before the fix.
    out = _train(tmp_path / "evals", text_file, "--config.model.n_layer=4",
                 "--config.model.n_embd=128", "--config.model.n_head=4",  # the main job's model
                 "--config.train.num_steps=24",
                 "--config.train.eval_every=2", "--config.train.eval_batches=20",
                 xla_flags="--xla_cpu_collective_call_terminate_timeout_seconds=20")
    assert "CPU host split into 2 JAX devices" in out.stderr
    lines = (tmp_path / "evals" / "metrics.jsonl").read_text().splitlines()
    assert sum("val_loss" in r for r in map(json.loads, lines)) == 12
