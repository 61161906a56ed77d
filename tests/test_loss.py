"""Chunked cross-entropy (nn/loss.py): equal to the plain full-logits loss and its gradients,
with no `[batch, length, vocab]` logits in the program; the train step with chunking equals
the train step without."""

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from configs import common
from gpt2jax.eval import perplexity as ppl_lib
from gpt2jax.nn import loss as loss_lib
from gpt2jax.nn.model import GPT2, GPT2Config, init_params
from gpt2jax.parallel import sharding
from gpt2jax.training import step as train

CFG = GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                 embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
B, T = 3, 13  # 39 tokens: no chunk size used below divides it


def make_batch(seed: int = 0, b: int = B, t: int = T) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, CFG.vocab_size, (b, t + 1)).astype(np.int32)
    w = np.ones((b, t), np.float32)
    w[1, 9:] = 0.0  # right padding
    w[2, :4] = 0.0  # unscored context
    w[0, 5] = 0.5   # a fractional weight
    return {"inputs": jnp.asarray(x[:, :-1]), "targets": jnp.asarray(x[:, 1:]),
            "weights": jnp.asarray(w)}


def _loss(cfg, chunk_tokens):
    model = GPT2(cfg)

    def loss(params, batch):
        m = loss_lib.model_metrics(model, params, batch, chunk_tokens)
        return m["loss_sum"], m

    return loss


def _shapes(jaxpr) -> set:
    """Every array shape in a (closed) jaxpr, sub-jaxprs (scan, checkpoint) included."""
    out = set()
    for eqn in jaxpr.eqns:
        out.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out |= _shapes(sub)
    return out


def _params(cfg=CFG, seed=0):
    return jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(seed))


def test_chunked_loss_and_gradients_equal_plain():
    """fp32: loss, counts and every gradient within 1e-6 of the plain loss; 6 and 12 tokens
    (2 and 4 positions per chunk, 13 positions) do not divide the length, 1000 = one chunk."""
    params, batch = _params(), make_batch()
    g_plain, m_plain = jax.jit(jax.grad(_loss(CFG, 0), has_aux=True))(params, batch)
    for chunk_tokens in (6, 12, 1000):
        grad = jax.jit(jax.grad(_loss(CFG, chunk_tokens), has_aux=True))
        g_chunk, m_chunk = grad(params, batch)
        _assert_equal(g_chunk, m_chunk, g_plain, m_plain, batch)


def _assert_equal(g_chunk, m_chunk, g_plain, m_plain, batch):
    for name in ("loss_sum", "weight_sum", "correct_sum"):
        np.testing.assert_allclose(m_chunk[name], m_plain[name], rtol=1e-6, err_msg=name)
    assert float(m_plain["weight_sum"]) == float(batch["weights"].sum())
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g_chunk),
                          jax.tree.leaves(g_chunk), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=str(path[0]))
    diff = optax.tree.norm(jax.tree.map(jnp.subtract, g_chunk, g_plain))
    assert float(diff / optax.tree.norm(g_plain)) <= 1e-6


def test_chunked_program_holds_no_full_logits():
    """The value-and-gradient program of the chunked loss never holds a [B, T, V] array (nor
    its flattened [B*T, V]); the plain one does (so the check can see them)."""
    params, batch = _params(), make_batch()
    full = {(B, T, CFG.vocab_size), (B * T, CFG.vocab_size)}
    for chunk_tokens, expect in ((0, True), (6, False)):
        fn = jax.value_and_grad(_loss(CFG, chunk_tokens), has_aux=True)
        shapes = _shapes(jax.make_jaxpr(fn)(params, batch).jaxpr)
        assert bool(shapes & full) == expect, (chunk_tokens, shapes & full)
        if chunk_tokens:
            assert (B, 2, CFG.vocab_size) in shapes  # chunks of 2 positions: it did chunk


def test_chunked_bfloat16_matches_plain():
    """bf16 compute: the chunked head rounds its logits like the plain head (flax attend)."""
    cfg = CFG.replace(dtype="bfloat16")
    params, batch = _params(cfg), make_batch(1)
    plain, _ = jax.jit(_loss(cfg, 0))(params, batch)
    chunk, _ = jax.jit(_loss(cfg, 6))(params, batch)
    np.testing.assert_allclose(chunk, plain, rtol=1e-6)


def test_hidden_states_times_embedding_are_the_logits():
    params = _params(seed=2)
    ids = make_batch()["inputs"]
    variables = {"params": params}
    logits = jax.jit(GPT2(CFG).apply)(variables, ids)
    hidden = jax.jit(functools.partial(GPT2(CFG).apply, return_hidden=True))(variables, ids)
    assert hidden.shape == (B, T, CFG.n_embd)
    head_fn = jax.jit(loss_lib.head_logits, static_argnums=2)
    head = head_fn(hidden, loss_lib.head_embedding(params), CFG.compute_dtype)
    np.testing.assert_array_equal(head, logits)


def _train_cfg(**kw) -> train.TrainConfig:
    c = common.train_config(batch_size=4, grad_accum_steps=2, block_size=T, learning_rate=3e-3,
                            warmup_steps=0, lr_decay_steps=10, **kw)
    return train.TrainConfig.from_config(c)


def test_train_step_with_chunked_loss_equals_plain():
    """A few Adam steps (2 micro-batches each) with train.loss_chunk_size=10 (a chunk of 5
    positions of 2 rows; 13 positions) follow the plain run: same metrics and parameters."""
    rules = sharding.rules(common.mesh_config())
    mesh = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              devices=jax.devices()[:1])
    batches = [make_batch(s, b=4) for s in range(2)]
    runs = {}
    for chunk in (0, 10):
        tc = _train_cfg(loss_chunk_size=chunk)
        assert tc.loss_chunk_size == chunk
        trainer = train.Trainer(CFG.replace(n_layer=1), tc, mesh, rules)
        state, metrics = trainer.init(0), []
        for b in batches:
            state, m = trainer.train_step(state, trainer.put_batch(jax.device_get(b)))
            metrics.append([float(m[k]) for k in ("loss_sum", "weight_sum", "correct_sum",
                                                  "grad_norm")])
        eval_m = trainer.eval_step(state.params, trainer.put_batch(jax.device_get(batches[0])))
        runs[chunk] = (np.array(metrics), jax.device_get(state.params),
                       float(eval_m["loss_sum"]))
    np.testing.assert_allclose(runs[10][0], runs[0][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(runs[10][1]), jax.tree.leaves(runs[0][1])):
        # Adam moves a parameter by ~lr whatever its gradient: near-zero gradients (zero-init
        # biases) may differ in sign by rounding, so compare to 1e-5 (lr is 3e-3)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(runs[10][2], runs[0][2], rtol=1e-5)


def test_config_key_is_checked():
    c = common.train_config()
    assert c.loss_chunk_size >= 0
    del c.loss_chunk_size
    with pytest.raises(Exception, match="loss_chunk_size"):
        train.TrainConfig.from_config(c)
    with pytest.raises(Exception, match="loss_chunk_size"):
        train.TrainConfig.from_config(common.train_config(loss_chunk_size=-1))


def test_perplexity_windows_one_at_a_time_equal_the_whole_batch():
    """On a CPU the scoring program can run a batch's windows one pass each (`lax.map`): the
    same per-window sums as one pass over the whole batch."""
    params = _params()
    ids = np.random.default_rng(5).integers(0, CFG.vocab_size, 40)
    windows = ppl_lib.plan_windows(len(ids), 8, 8)
    arrays = [jnp.asarray(a) for a in ppl_lib.window_batch(ids, windows, np.arange(4))]
    one = ppl_lib._window_nll_fn(CFG, 0, 3, 1)(params, *arrays)
    whole = ppl_lib._window_nll_fn(CFG, 0, 3, 4)(params, *arrays)
    np.testing.assert_allclose(one, whole, rtol=1e-6)


def test_rows_per_pass_keeps_a_cpu_pass_near_the_cache():
    assert ppl_lib.rows_per_pass(8, 1, length=1024, n_embd=768) == 1  # 124M: 12.6 MB a row
    assert ppl_lib.rows_per_pass(8, 1, length=1024, n_embd=128) == 8  # 2 MB a row
    assert ppl_lib.rows_per_pass(8, 1, length=1024, n_embd=256) == 4
    assert ppl_lib.rows_per_pass(6, 1, length=1024, n_embd=256) == 3  # a divisor of the batch
    assert ppl_lib.rows_per_pass(8, 2, length=1024, n_embd=768) == 8  # a mesh shards the batch


@pytest.mark.parametrize("length,stride", [(8, 3), (8, 8), (8, 7), (6, 1)])
def test_perplexity_scores_only_scored_positions_equal_full_logits(length, stride, monkeypatch):
    """Strided windows: the head on scored positions only, chunked lse (3 tokens: chunks that
    do not divide) == full logits of every window, window by window (text of 29 tokens)."""
    params = _params()
    ids = np.random.default_rng(3).integers(0, CFG.vocab_size, 29)
    windows = ppl_lib.plan_windows(len(ids), length, stride)
    calls = []
    make_fn = ppl_lib._window_nll_fn
    monkeypatch.setattr(ppl_lib, "_window_nll_fn", lambda *a: calls.append(a) or make_fn(*a))
    ours = ppl_lib.window_nll_sums(CFG, params, ids, windows, batch_size=2, chunk_tokens=3)
    offsets = {offset for _, offset, *_ in calls}
    # the later windows skipped the head on all but their last `stride` positions
    assert offsets == ({0} if stride >= length - 1 else {0, length - 1 - stride})
    apply = jax.jit(GPT2(CFG).apply)
    for w in range(len(windows)):
        inputs, targets, weights = ppl_lib.window_batch(ids, windows, np.array([w]))
        logits = apply({"params": params}, jnp.asarray(inputs))
        full = float(jnp.sum(ppl_lib.token_nll(logits, jnp.asarray(targets)) * weights))
        np.testing.assert_allclose(ours[w], full, rtol=1e-6, err_msg=str(w))


def test_head_at_continuation_positions_equals_full_logits():
    """lm-eval / LAMBADA scoring: the head at the scored positions only (k = 4 slots, rows with
    3, 0 and 2 scored positions) == full logits at those positions: NLL sums and argmax."""
    params, batch = _params(), make_batch()
    weights = np.zeros((B, T), np.float32)
    weights[0, 7:10], weights[2, 11:13] = 1.0, 1.0
    positions = loss_lib.scored_positions(weights, 4)
    targets_k, weights_k = loss_lib.gather_scored(positions, np.asarray(batch["targets"]), weights)
    assert weights_k.sum() == 5 and positions[0, :3].tolist() == [7, 8, 9]
    hidden = jax.jit(functools.partial(GPT2(CFG).apply, return_hidden=True))(
        {"params": params}, batch["inputs"])
    nll, greedy = jax.jit(loss_lib.head_at)(hidden, loss_lib.head_embedding(params),
                                            positions, targets_k, weights_k)
    logits = jax.jit(GPT2(CFG).apply)({"params": params}, batch["inputs"])
    full = ppl_lib.token_nll(logits, batch["targets"])
    np.testing.assert_allclose(nll, np.sum(full * weights, axis=1), rtol=1e-6, atol=1e-6)
    argmax = np.take_along_axis(np.asarray(jnp.argmax(logits, -1)), positions, 1)
    np.testing.assert_array_equal(np.where(weights_k > 0, greedy, -1),
                                  np.where(weights_k > 0, argmax, -1))
