"""Preemption: turn SIGTERM / SIGINT into a flag that the training loop polls between steps.

Cloud TPU (and most schedulers: Kubernetes, Slurm, GCE spot VMs) send SIGTERM some seconds
before they kill a preemptible machine. The default Python action for SIGTERM is to die at
once, which loses every step since the last checkpoint. A `PreemptionGuard` replaces that
with "finish the current step, save a checkpoint, wait for it to be committed, exit 0":

    with PreemptionGuard() as guard:
        for step in range(start, total):
            state, metrics = train_step(state, batch)
            if guard.should_stop(step):
                manager.save(step, ..., force=True)
                manager.wait_until_finished()
                break

Single process: the guard installs Python handlers for SIGTERM and SIGINT that only set a
flag (a handler must not do real work: it runs between two bytecodes of whatever the main
thread was doing). A second SIGINT raises `KeyboardInterrupt` (a user pressing Ctrl-C twice
wants out now); a second SIGTERM is ignored so that the save in progress can finish.

Several processes (`jax.distributed` initialised): stopping must be collective, or the host
that stops first leaves the others blocked in a collective. JAX's coordination service
(enabled by `jax_enable_preemption_service`, the default) already listens for SIGTERM on every
host and agrees on a common step; `multihost_utils.reached_preemption_sync_point(step)` is
True on all hosts at that same step. The guard then installs no handler (a Python SIGTERM
handler would replace the service's; a SIGINT seen by one host only would desynchronise the
hosts) and asks the service instead. Orbax's
`CheckpointManager.should_save(step)` consults the same sync point.
"""

from __future__ import annotations

import signal
import threading
import types
from typing import Callable, Iterable

import jax
from absl import logging

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _distributed_client_active() -> bool:
    """True when `jax.distributed.initialize` has connected this process to a coordinator."""
    return jax.distributed.is_initialized()


def _sync_point_reached(step: int) -> bool:
    """JAX's multi-host preemption sync point (False when the service is not running)."""
    from jax.experimental import multihost_utils

    try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # preemption service disabled: nothing to agree on
        return False


class PreemptionGuard:
    """Records SIGTERM/SIGINT so that the training loop can save and exit cleanly.

    Use as a context manager (handlers are restored on exit) or call `install()` /
    `uninstall()`. Handlers can only be installed from the main thread; elsewhere the guard
    still works through `request_stop()` and the multi-host sync point.
    """

    def __init__(
        self,
        signals: Iterable[int] = DEFAULT_SIGNALS,
        multihost: bool | None = None,
        sync_point_fn: Callable[[int], bool] | None = None,
    ):
        """Args:
        signals: signals that request a stop.
        multihost: force the multi-host behaviour on/off; None = detect `jax.distributed`.
        sync_point_fn: `step -> bool`, defaults to `reached_preemption_sync_point` (tests
            pass a fake).
        """
        self._signals = tuple(signals)
        self._multihost = _distributed_client_active() if multihost is None else multihost
        self._sync_point_fn = sync_point_fn or _sync_point_reached
        self._event = threading.Event()
        self._signum: int | None = None
        self._previous: dict[int, object] = {}

    # -- installation ---------------------------------------------------------------------
    def install(self) -> PreemptionGuard:
        """Installs the flag-setting handlers (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            logging.warning("PreemptionGuard: not in the main thread, no signal handlers.")
            return self
        if self._multihost:
            return self  # the JAX coordination service owns SIGTERM on every host
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Restores the handlers that were there before `install()`."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __enter__(self) -> PreemptionGuard:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    # -- the flag -----------------------------------------------------------------------
    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        del frame
        if self._event.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: the user wants out now
            return  # repeated SIGTERM: keep saving
        self._signum = signum
        self._event.set()

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Asks for a stop as if `signum` had arrived (tests, or another thread)."""
        if not self._event.is_set():
            self._signum = signum
            self._event.set()

    @property
    def stop_requested(self) -> bool:
        """True once a signal (or `request_stop`) has arrived on this process."""
        return self._event.is_set()

    @property
    def signal_name(self) -> str | None:
        """Name of the signal that requested the stop (e.g. "SIGTERM"), None if none did."""
        if self._signum is None:
            return "preemption notice" if self._multihost and self._event.is_set() else None
        return signal.Signals(self._signum).name

    def should_stop(self, step: int) -> bool:
        """True when the loop should save a checkpoint now and stop.

        Call once per step, on every host, with the step just completed. Single process:
        True as soon as a signal arrived. Multi-host: True on all hosts at the same step,
        the one the coordination service agreed on (a stop that only one host saw would
        leave the others blocked in a collective).
        """
        if self._multihost:
            if self._sync_point_fn(step):
                self._event.set()
            return self._event.is_set()
        return self._event.is_set()

    def stop_message(self, step: int) -> str:
        """One line for the log: which signal stopped training at which step."""
        return (
            f"Received {self.signal_name} at step {step}: saved a checkpoint and stopped; "
            "run the same command again to resume."
        )
