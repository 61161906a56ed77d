"""PreemptionGuard: signals become a polled flag; the multi-host path asks JAX's sync point.

The end-to-end check (a training subprocess that gets SIGTERM saves a checkpoint, waits for
it and exits 0) is `test_sigterm_saves_checkpoint_and_exits_zero` in test_crash_safety.py,
which shares its training subprocess machinery.
"""

import os
import signal

import pytest

from gpt2jax.preemption import PreemptionGuard


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
    from gpt2jax.preemption import _distributed_client_active, _sync_point_reached

    assert not _distributed_client_active()
    assert _sync_point_reached(3) is False


def test_request_stop_from_code():
    guard = PreemptionGuard()
    assert not guard.stop_requested
    guard.request_stop()
    assert guard.should_stop(0) and guard.signal_name == "SIGTERM"
