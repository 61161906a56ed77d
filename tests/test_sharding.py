"""Meshes and shardings on 8 simulated CPU devices (tests/conftest.py).

Every parameter and optimizer leaf resolves to a NamedSharding, FSDP / tensor parallel really
split the big matrices (shard shapes), sharded init holds the same values as a single-device
init, a sharded train step and sharded generation equal the single-device results, and bad
meshes fail with a clear error.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

from configs import common
from gpt2jax.parallel import sharding
from gpt2jax.parallel.placement import Placement
from gpt2jax.nn.model import GPT2, GPT2Config, init_params

CFG = GPT2Config(vocab_size=256, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                 embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


def _mesh(data=1, fsdp=1, tensor=1, devices=None, **dcn):
    c = common.mesh_config()
    c.update(data=data, fsdp=fsdp, tensor=tensor, **dcn)
    devices = None if devices is None else jax.devices()[:devices]
    return sharding.make_mesh(c, devices), sharding.rules(c)


def _init_fn(cfg: GPT2Config):
    tx = optax.adamw(1e-3)

    def init(rng):
        params = init_params(cfg, rng, boxed=True)
        return {"params": params, "opt": tx.init(params)}

    return init


def _leaf(tree, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def test_fsdp_every_leaf_is_named_sharding_and_big_matrices_split():
    mesh, axis_rules = _mesh(fsdp=8)
    state, shardings = Placement(mesh, axis_rules).init(_init_fn(CFG), jax.random.key(0))
    leaves = jax.tree.leaves(state)
    assert leaves and all(isinstance(x.sharding, NamedSharding) for x in leaves)
    assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(shardings))
    params, mu = state["params"], state["opt"][0].mu
    expected = {  # embed (size 64) split 8 ways on fsdp
        "h_0/mlp/c_fc/kernel": (8, 256), "h_0/mlp/c_proj/kernel": (256, 8),
        "h_1/attn/c_attn/kernel": (8, 3, 4, 16), "h_1/attn/c_proj/kernel": (4, 16, 8),
        "wte/embedding": (256, 8), "wpe/embedding": (32, 8),
    }
    for path, shard in expected.items():
        for tree in (params, mu):
            x = _leaf(tree, path)
            assert x.sharding.shard_shape(x.shape) == shard, path
            assert {s.data.shape for s in x.addressable_shards} == {shard}, path
    # The values are those of an unsharded (eager) init with the same key, up to float rounding.
    reference = init_params(CFG, jax.random.key(0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-8),
                 params, reference)
    table = sharding.format_sharding_table(shardings["params"], params)
    assert "h_0/mlp/c_fc/kernel" in table and "(8, 256)" in table
    assert len(table.splitlines()) == len(jax.tree.leaves(params)) + 2


def test_tensor_parallel_splits_heads_mlp_vocab_and_replicates_uneven_vocab():
    mesh, axis_rules = _mesh(data=2, tensor=4)
    abstract, shardings = Placement(mesh, axis_rules).abstract(
        lambda r: init_params(CFG, r, boxed=True), jax.random.key(0))
    shard = lambda p: _leaf(shardings, p).shard_shape(_leaf(abstract, p).shape)
    assert shard("h_0/attn/c_attn/kernel") == (64, 3, 1, 16)
    assert shard("h_0/attn/c_proj/kernel") == (1, 16, 64)
    assert shard("h_0/mlp/c_fc/kernel") == (64, 64)
    assert shard("wte/embedding") == (64, 64)
    # GPT-2's vocabulary (50257) does not divide by 4: that dimension stays whole.
    odd = CFG.replace(vocab_size=50257)
    abstract, shardings = Placement(*_mesh(fsdp=2, tensor=4)).abstract(
        lambda r: init_params(odd, r, boxed=True), jax.random.key(0))
    assert shardings["wte"]["embedding"].shard_shape((50257, 64)) == (50257, 32)


def _batch(rng, rows, length, vocab):
    ids = np.random.default_rng(rng).integers(0, vocab, (rows, length + 1)).astype(np.int32)
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:],
            "weights": np.ones((rows, length), np.float32)}


def test_sharded_generation_equals_single_device():
    import gpt2jax

    params = init_params(CFG, jax.random.key(1))
    prompts = np.random.default_rng(0).integers(0, CFG.vocab_size, (4, 6)).astype(np.int32)
    single = gpt2jax.generate(CFG, params, prompts, max_new_tokens=8)
    mesh, axis_rules = _mesh(data=2, tensor=4)
    state, _ = Placement(mesh, axis_rules).init(functools.partial(init_params, CFG, boxed=True),
                                                jax.random.key(1))
    sharded = gpt2jax.generate(CFG, state, prompts, mesh=mesh, axis_rules=axis_rules,
                               max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))
    # and the sharded forward pass equals the unsharded one
    logits = jax.jit(lambda p, x: GPT2(CFG).apply({"params": p}, x))
    np.testing.assert_allclose(logits(state, prompts), logits(params, prompts), atol=1e-5)


def test_put_batch_shards_rows_over_data_axes():
    mesh, axis_rules = _mesh(data=4, fsdp=2)
    place = Placement(mesh, axis_rules)
    assert place.host_batch_rows(16) == slice(0, 16)
    batch = place.put_batch({"x": np.arange(16 * 3).reshape(16, 3)})
    assert batch["x"].shape == (16, 3)
    assert batch["x"].sharding.shard_shape((16, 3)) == (2, 3)
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(48).reshape(16, 3))


@pytest.mark.parametrize("sizes, match", [  # data=3 and two -1s: catalogue cases (mesh-*)
    (dict(data=-1, fsdp=3), "does not divide the 8 devices"),
    (dict(data=1, dcn_data=2), "does not divide the 1 devices|1 are available"),
])
def test_bad_mesh_shapes_are_refused(sizes, match):
    with pytest.raises(sharding.MeshError, match=match):
        _mesh(**sizes)


def test_tensor_parallel_not_dividing_heads_is_refused():
    cfg = CFG.replace(n_head=2, n_embd=64)
    mesh, axis_rules = _mesh(data=2, tensor=4)
    with pytest.raises(sharding.MeshError, match=r"'heads' \(n_head\), size 2.*mesh.tensor"):
        Placement(mesh, axis_rules).abstract(lambda r: init_params(cfg, r, boxed=True),
                                             jax.random.key(0))


def test_activation_constraints_take_effect_inside_mesh_rules():
    """`sharding.constrain` puts activations on the mesh inside `mesh_rules` (FSDP splits the
    batch, not `embed`), leaves dimensions the mesh does not divide to the compiler, and is
    the identity outside; the model's forward pass really carries the constraints."""
    mesh, axis_rules = _mesh(data=2, fsdp=4)
    constrain = jax.jit(lambda x: sharding.constrain(x, ("batch", "length", "embed")))
    with sharding.mesh_rules(mesh, axis_rules):
        out = constrain(np.ones((8, 4, 16), np.float32))
        uneven = constrain(np.ones((1, 4, 16), np.float32))  # batch 1 on 8 devices
    assert out.sharding.is_equivalent_to(
        NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))), 3)
    assert uneven.shape == (1, 4, 16)
    plain = jax.make_jaxpr(lambda x: sharding.constrain(x, ("batch", "length", "embed")))
    assert "sharding_constraint" not in str(plain(np.ones((8, 4, 16), np.float32)))

    params = init_params(CFG, jax.random.key(0))
    forward = lambda p, x: GPT2(CFG).apply({"params": p}, x)
    ids = np.zeros((8, 16), np.int32)
    with sharding.mesh_rules(mesh, axis_rules):
        jaxpr = str(jax.make_jaxpr(forward)(params, ids))
    # embeddings, each block's output, q and the MLP hidden layer, and the logits
    assert jaxpr.count("sharding_constraint") == 2 + 3 * CFG.n_layer


def test_cpu_devices_split_the_host_and_bad_values_are_refused():
    """run.py --cpu_devices=N: N CPU devices when set before JAX starts, a clear error after."""
    import os
    import subprocess
    import sys

    from gpt2jax.parallel import distributed
    from gpt2jax.errors import ConfigError

    code = ("from gpt2jax.parallel import distributed; distributed.set_cpu_devices(3); "
            "import jax; print(jax.device_count())")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "3"
    with pytest.raises(ConfigError, match="positive number"):
        distributed.set_cpu_devices(-2)
    jax.devices()  # backends are running in this process
    with pytest.raises(ConfigError, match="too late"):
        distributed.set_cpu_devices(2)
