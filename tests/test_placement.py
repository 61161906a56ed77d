"""The one placement service (`gpt2jax.parallel.placement`): its rule for a dimension the mesh
does not divide, used by the train step, generation, perplexity and the lm-eval scorer, each
equal to one device on a simulated 8-device mesh (conftest: 8 CPU devices)."""

import functools

import jax
import numpy as np
import pytest

from configs import common
from gpt2jax.eval import harness_core
from gpt2jax.eval.perplexity import perplexity
from gpt2jax.generation.generate import generate
from gpt2jax.nn.model import GPT2Config, init_params, logical_axes
from gpt2jax.parallel import sharding
from gpt2jax.parallel.placement import Placement
from gpt2jax.training.step import TrainConfig, Trainer

# 65 tokens (Tiny Shakespeare's characters) split by no tensor size > 1: the uneven dimension.
CFG = GPT2Config(vocab_size=65, n_positions=32, n_embd=32, n_layer=1, n_head=4,
                 embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


def _placement(data=2, fsdp=2, tensor=2) -> Placement:
    c = common.mesh_config()
    c.update(data=data, fsdp=fsdp, tensor=tensor)
    return Placement(sharding.make_mesh(c), sharding.rules(c))


@pytest.fixture(scope="module")
def place():
    return _placement()


@pytest.fixture(scope="module")
def params():
    # jitted: eager flax init compiles op by op (slow on CPU)
    return jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(3))


def test_uneven_vocab_is_replicated_other_uneven_dims_refused(place, params):
    assert place.data_parallel_size == 4  # batch over data x fsdp
    placed = place.put_params(params, logical_axes(CFG))
    wte, c_fc = placed["wte"]["embedding"], placed["h_0"]["mlp"]["c_fc"]["kernel"]
    assert wte.sharding.shard_shape(wte.shape) == (65, 16)  # vocab whole, embed on fsdp
    assert c_fc.sharding.shard_shape(c_fc.shape) == (16, 64)  # embed on fsdp, mlp on tensor
    np.testing.assert_array_equal(np.asarray(wte), np.asarray(params["wte"]["embedding"]))
    with pytest.raises(sharding.MeshError, match=r"'heads' \(n_head\), size 4.*mesh.tensor"):
        _placement(data=1, fsdp=1, tensor=8).put_params(params, logical_axes(CFG))
    # one device: nothing moves, nothing is entered
    single = Placement()
    assert single.put_params(params, logical_axes(CFG)) is params
    assert single.data_parallel_size == 1 and single.put_batch({"x": 1}) == {"x": 1}


def test_train_step_on_uneven_vocab_mesh_equals_one_device(place):
    tc = TrainConfig.from_config(common.train_config(
        batch_size=8, grad_accum_steps=1, block_size=16, num_steps=1, warmup_steps=0,
        learning_rate=1e-2, min_learning_rate=1e-2, schedule="constant"))
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 17)).astype(np.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:],
             "weights": np.ones((8, 16), np.float32)}
    results = []
    for mesh in (sharding.make_mesh(common.mesh_config(), jax.devices()[:1]), place.mesh):
        trainer = Trainer(CFG, tc, mesh, place.axis_rules)
        state, metrics = trainer.train_step(trainer.init(0), trainer.put_batch(batch))
        results.append(((float(metrics["loss_sum"]), float(metrics["grad_norm"])),
                        jax.device_get(state.params)))
    wte = state.params["wte"]["embedding"]
    assert wte.sharding.shard_shape(wte.shape) == (65, 16)  # the mesh run really is sharded
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    # Adam's first step is about lr * sign(grad): float rounding of near-zero gradients shows,
    # so parameters are compared well below lr (1e-2), as in test_sharding.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-3),
                 results[1][1], results[0][1])


def test_generate_on_uneven_vocab_mesh_equals_one_device(place, params):
    prompts = np.random.default_rng(1).integers(0, CFG.vocab_size, (3, 5)).astype(np.int32)
    single = generate(CFG, params, prompts, max_new_tokens=6)
    state, _ = place.init(functools.partial(init_params, CFG, boxed=True), jax.random.key(3))
    for p in (params, state):  # host params placed by generate, and params born sharded
        sharded = generate(CFG, p, prompts, max_new_tokens=6, mesh=place.mesh,
                           axis_rules=place.axis_rules)
        np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))


def test_perplexity_and_scorer_on_uneven_vocab_mesh_equal_one_device(place, params):
    ids = np.random.default_rng(2).integers(0, CFG.vocab_size, 100)
    kw = dict(context_length=32, stride=16, batch_size=2)
    single = perplexity(CFG, params, ids, **kw)
    sharded = perplexity(CFG, params, ids, mesh=place.mesh, axis_rules=place.axis_rules, **kw)
    assert sharded.token_count == single.token_count == 99
    np.testing.assert_allclose(sharded.window_nll_sums, single.window_nll_sums, rtol=1e-5)
    pairs = [(ids[:10].tolist(), ids[10:13].tolist()), (ids[20:25].tolist(), [int(ids[25])])]
    one = harness_core.Scorer(CFG, params, 2, 32).score(pairs)
    scorer = harness_core.Scorer(CFG, params, 2, 32, mesh=place.mesh, axis_rules=place.axis_rules)
    assert scorer.batch_size == 4  # rounded up to the data-parallel size
    many = scorer.score(pairs)
    np.testing.assert_allclose([s for s, _ in many], [s for s, _ in one], rtol=1e-5)
    assert [g for _, g in many] == [g for _, g in one]
