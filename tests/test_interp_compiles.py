"""The interpretability tools compile once per model and shape, not once per call: a second
call (new params, a new `logit_difference` pair) compiles nothing, and the patching map of
several hook points is one program. Compiles are counted with jax.monitoring's
backend-compile event (jax's own record of every XLA compilation)."""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from gpt2jax import activation_patching, head_ablation, logit_difference, logit_lens
from helpers import tiny_config, tiny_params

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CFG = tiny_config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")


@contextlib.contextmanager
def compiles():
    """Collects one entry per XLA compilation inside the block."""
    seen = []

    def listen(event, duration_secs, **kwargs):
        if event == COMPILE_EVENT:
            seen.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def _ids(seed: int, shape=(2, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, shape).astype(np.int32)


def test_a_second_call_compiles_nothing():
    params, other = tiny_params(CFG, 0), tiny_params(CFG, 1)
    clean, corrupted = _ids(0, (1, 10)), _ids(1, (1, 10))
    calls = {
        "logit_lens": lambda p, metric: logit_lens(CFG, p, _ids(2)),
        "head_ablation": lambda p, metric: head_ablation(CFG, p, _ids(2), mode="mean"),
        "activation_patching": lambda p, metric: activation_patching(
            CFG, p, clean, corrupted, metric),
    }
    for name, call in calls.items():
        with compiles() as first:
            a = np.asarray(call(params, logit_difference(3, 4)))
        assert first, f"{name}: the listener saw no compile on the first call"
        with compiles() as second:  # other params and another token pair, same shapes
            b = np.asarray(call(other, logit_difference(4, 3)))
        assert second == [], f"{name} compiled {len(second)} time(s) again on a second call"
        assert a.shape == b.shape and np.abs(a - b).max() > 1e-4, name  # new inputs were used
    # the new pair was read, not a stale one: swapping the tokens flips the sign
    np.testing.assert_allclose(calls["activation_patching"](params, logit_difference(4, 3)),
                               -calls["activation_patching"](params, logit_difference(3, 4)),
                               atol=1e-5)


def test_patching_several_hooks_is_one_program_equal_to_one_hook_at_a_time():
    # the shapes and metric type of the first test: its one-hook program is reused here
    params = tiny_params(CFG, 2)
    clean, corrupted = _ids(3, (1, 10)), _ids(4, (1, 10))
    metric = logit_difference(5, 6)
    with compiles() as seen:
        maps = np.asarray(activation_patching(CFG, params, clean, corrupted, metric, hook=HOOKS))
    assert len(seen) == 1, f"{len(seen)} compiles for one multi-hook map"
    assert maps.shape == (len(HOOKS), CFG.n_layer, 10)
    for k, hook in enumerate(HOOKS):
        single = activation_patching(CFG, params, clean, corrupted, metric, hook=hook)
        np.testing.assert_allclose(maps[k], single, atol=1e-5, err_msg=hook)
    assert np.abs(maps[0] - maps[1]).max() > 1e-3  # the hook points differ
