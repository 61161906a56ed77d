"""Two processes on localhost through `jax.distributed` == one process with the same 4 devices.

Each process of `tests/multihost_worker.py` has 2 CPU devices (XLA_FLAGS in its environment),
the global mesh has 4 (hosts along `data` as DCN slices, `fsdp` inside a host); every process
feeds only its own rows of each global batch. Run 1 trains steps 0-4 and saves an Orbax
checkpoint from both processes; a fresh 2-process run restores it and trains steps 5-9.
Every loss must equal that of one process with 4 devices training steps 0-9 without a break.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from gpt2jax.parallel import distributed
from helpers import free_port


REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multihost_worker.py"
TIMEOUT_S = 240


def _launch(workdir: Path, start: int, stop: int, tag: str) -> list[dict]:
    """Runs 2 worker processes to completion (killed on timeout); returns their outputs."""
    port = free_port()
    # One XLA compilation cache for the launches of this test: the second run's processes
    # reuse the train step the first run compiled (as test_crash_safety's zygote does).
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COMPILATION_CACHE_DIR=str(workdir.parent / "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    procs, outs = [], []
    for pid in range(2):
        out = workdir.parent / f"{tag}_p{pid}.json"
        cmd = [sys.executable, str(WORKER), "--num_processes=2", f"--process_id={pid}",
               f"--port={port}", f"--workdir={workdir}", f"--start={start}", f"--stop={stop}",
               f"--out={out}"]
        log = open(workdir.parent / f"{tag}_p{pid}.log", "w")
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=REPO), log))
        outs.append(out)
    try:
        for proc, _ in procs:
            proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    for pid, (proc, _) in enumerate(procs):
        text = (workdir.parent / f"{tag}_p{pid}.log").read_text()[-3000:]
        assert proc.returncode == 0, f"{tag} process {pid} exit {proc.returncode}:\n{text}"
    return [json.loads(o.read_text()) for o in outs]


def _single_process_losses(steps: int) -> list[float]:
    """The reference: this process, 4 of its simulated devices, steps 0..steps-1, no break."""
    sys.path.insert(0, str(WORKER.parent))
    import multihost_worker as worker

    _, trainer, mesh, axis_rules = worker.build(1, devices=jax.devices()[:4])
    state = trainer.init(0)
    losses = []
    for step in range(steps):
        batch = trainer.placement.put_batch(worker.host_batch(step, mesh, axis_rules))
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss_sum"]) / float(metrics["weight_sum"]))
    return losses


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_equal_one_process(tmp_path):
    workdir = tmp_path / "run"
    first = _launch(workdir, 0, 5, "first")
    second = _launch(workdir, 5, 10, "second")
    reference = _single_process_losses(10)
    for out in first + second:
        assert out["process_count"] == 2 and out["local_devices"] == 2
        assert out["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert {o["rows"] for o in first} == {"slice(0, 4, None)", "slice(4, 8, None)"}
    for out in (first[0], first[1]):
        got = [out["losses"][str(s)] for s in range(5)]
        np.testing.assert_allclose(got, reference[:5], rtol=1e-6, atol=0)
    for out in (second[0], second[1]):
        got = [out["losses"][str(s)] for s in range(5, 10)]
        np.testing.assert_allclose(got, reference[5:], rtol=1e-6, atol=0)
    assert reference[9] < reference[0]  # it trains


@pytest.mark.parametrize("flags, problem", [
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2), "--process_id"),
    (dict(num_processes=2, process_id=0), "--coordinator_address"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), "outside 0..1"),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), "host:port"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0), ">= 1"),
])
def test_mismatched_process_flags_are_refused(flags, problem):
    with pytest.raises(distributed.DistributedError, match=problem):
        distributed.initialize(distributed.ProcessFlags(**flags), auto=False)


def test_no_process_flags_is_a_single_process_run():
    assert distributed.initialize(distributed.ProcessFlags(), auto=False) is False
    assert distributed.is_main_process() and jax.process_count() == 1


def test_run_py_refuses_mismatched_process_flags():
    cmd = [sys.executable, str(REPO / "run.py"), "--config=configs/gpt2.py:small",
           "--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--prompt=hi"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2
    assert "missing --process_id" in proc.stderr and "Traceback" not in proc.stderr


def test_cluster_detection_from_environment(monkeypatch):
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID",
                "MEGASCALE_COORDINATOR_ADDRESS", "TPU_SKIP_MDS_QUERY"):
        monkeypatch.delenv(var, raising=False)
    assert not distributed.in_cluster_job()
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed.in_cluster_job()  # one task: nothing to connect
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.in_cluster_job()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
    assert distributed.on_cloud_tpu()
    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
    assert not distributed.on_cloud_tpu()
