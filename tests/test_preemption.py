"""PreemptionGuard: signals become a polled flag; the multi-host path asks JAX's sync point.

The two-host test runs two `jax.distributed` processes on localhost. The end-to-end check
(a training subprocess that gets SIGTERM saves a checkpoint, waits for
it and exits 0) is `test_sigterm_saves_checkpoint_and_exits_zero` in test_crash_safety.py,
which shares its training subprocess machinery.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpt2jax.training.preemption import PreemptionGuard
from helpers import free_port


def test_sigterm_sets_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before os.kill returns to Python
        assert guard.should_stop(1)
        assert guard.signal_name == "SIGTERM"
        assert "SIGTERM at step 7" in guard.stop_message(7)
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM must not kill the saver
        assert guard.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_sigint_raises_keyboard_interrupt():
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.should_stop(0) and guard.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_multihost_installs_no_handler_and_follows_sync_point():
    calls = []

    def fake_sync_point(step):
        calls.append(step)
        return step == 5  # the step the coordination service agreed on

    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard(multihost=True, sync_point_fn=fake_sync_point) as guard:
        assert signal.getsignal(signal.SIGTERM) is before  # the service keeps SIGTERM
        assert [guard.should_stop(s) for s in range(4, 7)] == [False, True, True]
        assert guard.signal_name == "preemption notice"
    assert calls[:2] == [4, 5]


def test_single_process_sync_point_is_false_without_distributed():
    from gpt2jax.training.preemption import _distributed_client_active, _sync_point_reached

    assert not _distributed_client_active()
    assert _sync_point_reached(3) is False


def test_request_stop_from_code():
    guard = PreemptionGuard()
    assert not guard.stop_requested
    guard.request_stop()
    assert guard.should_stop(0) and guard.signal_name == "SIGTERM"


WORKER = textwrap.dedent(
    """
    import json, sys, time
    port, pid, progress, repo = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sys.path.insert(0, repo)
    import jax
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid)
    from jax.experimental import multihost_utils
    from gpt2jax.training.preemption import PreemptionGuard
    guard = PreemptionGuard().install()
    stopped = None
    for step in range(1, 3000):
        multihost_utils.sync_global_devices(f"step{step}")  # lockstep, like a train step
        with open(progress, "w") as f:
            f.write(str(step))
        if guard.should_stop(step):
            stopped = step
            break
        time.sleep(0.01)
    print(json.dumps({"multihost": guard._multihost, "stopped": stopped,
                      "signal": guard.signal_name}), flush=True)
    jax.distributed.shutdown()
    """
)


def _progress(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_two_hosts_stop_at_the_same_step_when_one_gets_sigterm(tmp_path):
    """Two `jax.distributed` processes; SIGTERM reaches process 1 only. JAX's preemption
    service (not a Python handler, which would replace it) spreads the notice, and both
    processes stop at the same agreed step and exit 0 instead of one of them hanging in a
    collective."""
    port, repo = free_port(), str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = []
    try:
        for pid in range(2):
            log = open(tmp_path / f"p{pid}.log", "w")
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, str(port), str(pid), str(tmp_path / f"p{pid}"),
                 repo], env=env, stdout=subprocess.PIPE, stderr=log, text=True))
        deadline = time.monotonic() + 120
        while _progress(tmp_path / "p1") < 5 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), (tmp_path / "p1.log").read_text()
            time.sleep(0.05)
        signalled_at = _progress(tmp_path / "p1")
        procs[1].send_signal(signal.SIGTERM)
        results = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])
                   for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(r["multihost"] for r in results)
    assert results[0]["stopped"] == results[1]["stopped"] >= signalled_at
    assert results[0]["signal"] == results[1]["signal"] == "preemption notice"
