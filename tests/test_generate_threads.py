"""Two threads calling `generate` at once each get their own streamed tokens.

The streamer of a call must be bound to that call, not to a module-level slot that another
thread's call overwrites or clears. Thread A's streamer blocks inside its first callback
until thread B's whole call (with its own streamer) has run; A's later tokens must still reach
A's streamer. B runs on another (simulated CPU) device, so its ordered host callbacks need
not wait for A's computation to finish.
"""

import threading

import jax
import numpy as np

from gpt2jax.generation.generate import generate
from gpt2jax.nn.model import GPT2Config, init_params

NEW = 6  # new tokens per call
WAIT_S = 300  # generous bound on a blocked event (a stuck run fails instead of hanging)


def tiny_model():
    cfg = GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
    return cfg, params


class Recorder:
    """A streamer that records (step, row-0 token, whether the other call was done)."""

    def __init__(self, other_done: threading.Event | None = None):
        self.calls = []
        self.other_done = other_done
        self.first_call = threading.Event()

    def __call__(self, step, tokens):
        done = self.other_done is not None and self.other_done.is_set()
        self.calls.append((int(step), int(np.asarray(tokens)[0]), done))
        if not self.first_call.is_set():
            self.first_call.set()
            if self.other_done is not None:
                self.other_done.wait(WAIT_S)  # hold A's loop while B runs its whole call

    def tokens(self) -> list[int]:
        return [t for _, t, _ in self.calls]


def test_two_threads_stream_into_their_own_streamers():
    assert len(jax.devices()) >= 2
    cfg, params = tiny_model()
    params_b = jax.device_put(params, jax.devices()[1])
    kw = dict(max_new_tokens=NEW, eos_token_id=None, pad_token_id=0)
    prompt_a, prompt_b = np.array([[5, 6, 7]]), np.array([[9, 8, 7, 6, 5]])

    b_done = threading.Event()
    stream_a, stream_b = Recorder(other_done=b_done), Recorder()
    result = {}

    def call_a():
        result["a"] = generate(cfg, params, prompt_a, streamer=stream_a, **kw)

    thread_a = threading.Thread(target=call_a)
    thread_a.start()
    assert stream_a.first_call.wait(WAIT_S), "A's streamer was never called"
    out_b = generate(cfg, params_b, prompt_b, streamer=stream_b, **kw)
    b_done.set()
    thread_a.join(WAIT_S)
    assert not thread_a.is_alive()

    # the race was reached: B ran its whole call while A sat in its first callback
    assert stream_a.calls[0][2] is False and len(stream_b.calls) == NEW
    assert stream_b.tokens() == out_b[0, prompt_b.shape[1]:].tolist()
    out_a = result["a"]
    assert [s for s, _, _ in stream_a.calls] == list(range(NEW))
    assert stream_a.tokens() == out_a[0, prompt_a.shape[1]:].tolist()
    assert all(done for _, _, done in stream_a.calls[1:])
