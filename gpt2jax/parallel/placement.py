"""The one placement service: where parameters, optimizer state and batches live on a mesh.

Training (`training.step.Trainer`), generation (`generation.generate`) and evaluation
(`eval.perplexity`, the lm-eval backend in `eval.harness_core`) all place through a
`Placement(mesh, axis_rules)`, so a mesh that trains a model also generates and evaluates with
it, with the same shardings. `mesh=None` means one device: nothing is moved, no context is
entered, and jit puts arrays on the default device.

The rule for a dimension that its mesh axes do not divide (one rule, everywhere):
- `vocab` is replicated on that dimension. GPT-2's vocabulary (50257 = 29 * 1733) divides by
  almost no mesh size, `jax.device_put` and jit refuse uneven shards, and the embedding is a
  small share of the model, so a full copy of that dimension is the standard answer (the
  other dimension of `wte`, `embed`, is still split on `fsdp`).
- any other uneven dimension (`heads` when mesh.tensor does not divide n_head, `embed` when
  mesh.fsdp does not divide n_embd, ...) raises `MeshError` naming the fix. Replicating it
  instead would silently turn tensor parallelism or FSDP into full copies (memory x the axis
  size) behind the user's back; the trainer always refused such meshes, and now generation
  and evaluation refuse the same meshes with the same message (before, generation replicated
  any uneven dimension and evaluation crashed in `jax.device_put` even on the vocabulary).

Typical flow (abstract shapes first, nothing allocated until `jax.jit` runs the init):

    place = Placement(make_mesh(config.mesh), rules(config.mesh))
    state, shardings = place.init(init_fn, rng)          # init_fn returns boxed params
    params = place.put_params(params, model.logical_axes(cfg))
    batch = place.put_batch({"inputs": rows, ...})       # this process's rows
    prompts = place.put_batch(prompts, local=False)     # the same whole batch everywhere
    with place.context():
        out = step(state, batch)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpt2jax.parallel.sharding import MeshError, axes_size, mesh_rules, path_str

# Logical axes replicated where the mesh does not divide them (see the module docstring).
REPLICATE_IF_UNEVEN = ("vocab",)

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Placement:
    """Places params, state and batches on `mesh` by the logical-axis `axis_rules`.

    Attributes:
      mesh: the device mesh (axes data, fsdp, tensor), or None for one device.
      axis_rules: (logical name, mesh axes) pairs, e.g. `sharding.rules(config.mesh)`.
    """

    mesh: Mesh | None = None
    axis_rules: tuple = ()

    def __post_init__(self):
        rules = tuple((n, tuple(a) if isinstance(a, list) else a)
                      for n, a in self.axis_rules or ())
        object.__setattr__(self, "axis_rules", rules)

    # ------------------------------------------------------------------------- batches

    @property
    def data_parallel_size(self) -> int:
        """How many ways the batch is split: the product of the mesh axes that the batch's
        sharding uses (1 without a mesh). Batch sizes are rounded to a multiple of it."""
        if self.mesh is None:
            return 1
        return axes_size(self.mesh, self.batch_sharding(1).spec[0])

    def batch_sharding(self, ndim: int = 2, lead: int = 0) -> NamedSharding | None:
        """Sharding of a batch [batch, ...] of rank `ndim`: rows over the `batch` rule's axes.
        `lead` whole leading axes come first ([steps, batch, ...] for lead=1)."""
        if self.mesh is None:
            return None
        logical = PartitionSpec(*(None,) * lead, "batch", *(None,) * (ndim - 1 - lead))
        return nn.logical_to_mesh_sharding(logical, self.mesh, self.axis_rules)

    def replicated(self) -> NamedSharding | None:
        """A full copy on every device (metrics, scalars); None without a mesh."""
        return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())

    def put_batch(self, host_arrays: PyTree, *, local: bool = True, lead: int = 0) -> PyTree:
        """Host arrays [rows, ...] -> global `jax.Array`s [batch, ...] split on the batch axes.

        Args:
          host_arrays: a pytree of numpy arrays.
          local: True: each process passes its own rows (training data; `host_batch_rows`
            says which), assembled by `jax.make_array_from_process_local_data`, the global
            shape following from the sharding. False: every process passes the same whole
            batch (generation and evaluation inputs), put by `jax.device_put`. With one
            process both are the same.
          lead: whole leading axes before the batch axis (1 for the stacked [steps, rows,
            ...] batches of `Trainer.train_steps`).
        Returns:
          The arrays on the mesh; without a mesh, `host_arrays` as they are (jit puts them on
          the default device).
        """
        if self.mesh is None:
            return host_arrays

        def put(x):
            x = np.asarray(x)
            sharding = self.batch_sharding(x.ndim, lead)
            if local:
                return jax.make_array_from_process_local_data(sharding, x)
            return jax.device_put(x, sharding)

        return jax.tree.map(put, host_arrays)

    def host_batch_rows(self, global_batch_size: int) -> slice:
        """The rows of the global batch [global_batch_size, ...] that this process must load.

        Processes whose devices hold replicas of the same rows get the same slice.
        """
        if self.mesh is None:
            return slice(0, global_batch_size)
        index_map = self.batch_sharding(1).addressable_devices_indices_map((global_batch_size,))
        rows = sorted({idx[0].indices(global_batch_size)[:2] for idx in index_map.values()})
        start, stop = rows[0][0], rows[-1][1]
        if sum(b - a for a, b in rows) != stop - start:
            raise MeshError(
                f"This process's devices hold non-contiguous rows {rows} of the batch; build the "
                "mesh with make_mesh() so that each process owns one contiguous block."
            )
        return slice(start, stop)

    # ------------------------------------------------------------------------- params / state

    def spec_for(self, path: str, logical: PartitionSpec, shape: tuple) -> PartitionSpec:
        """The mesh `PartitionSpec` of one array [shape] with logical axis names `logical`
        (one rule for uneven dimensions: see the module docstring).

        Flax's `nn.logical_to_mesh_axes` maps the names; ours only adds what flax's
        `logical_to_mesh_sharding` cannot: the uneven-dimension rule, per array shape."""
        mesh_spec = list(nn.logical_to_mesh_axes(logical, self.axis_rules)) if len(logical) else []
        mesh_spec += [None] * (len(shape) - len(mesh_spec))
        for dim, axes in enumerate(mesh_spec):
            size = axes_size(self.mesh, axes)
            if shape[dim] % size == 0:
                continue
            name = logical[dim] if dim < len(logical) else None
            if name in REPLICATE_IF_UNEVEN:
                mesh_spec[dim] = None
                continue
            hint = " (n_head)" if name == "heads" else ""
            raise MeshError(
                f"{path}: dimension {dim} ({name!r}{hint}, size {shape[dim]}) cannot be split "
                f"{size} ways over mesh axes {axes}; choose mesh sizes that divide it (e.g. "
                f"mesh.tensor must divide model.n_head) or change the rules in config.mesh.rules."
            )
        return PartitionSpec(*mesh_spec)

    def shardings(self, logical: PyTree, shapes: PyTree) -> PyTree | None:
        """`NamedSharding`s for `shapes` (arrays or ShapeDtypeStructs) given their logical
        `PartitionSpec`s (a pytree of the same structure, e.g. `model.logical_axes(cfg)` for
        params); None without a mesh."""
        if self.mesh is None:
            return None
        return jax.tree_util.tree_map_with_path(
            lambda p, x, spec: NamedSharding(
                self.mesh, self.spec_for(path_str(p), spec, tuple(x.shape))),
            shapes, logical)

    def state_shardings(self, abstract_boxed: PyTree) -> PyTree | None:
        """Shardings of `jax.eval_shape(init_fn, ...)`'s output: leaves boxed in
        `nn.Partitioned` are sharded by their logical names, others (step, rng) replicated.
        The result has the structure of `nn.unbox(abstract_boxed)`."""
        return self.shardings(nn.get_partition_spec(abstract_boxed), nn.unbox(abstract_boxed))

    def put_params(self, params: PyTree, logical: PyTree) -> PyTree:
        """Puts a params pytree on the mesh by its logical axes (`model.logical_axes(cfg)`);
        without a mesh the params are returned as they are."""
        if self.mesh is None:
            return params
        return jax.device_put(params, self.shardings(logical, params))

    def abstract(self, init_fn: Callable, *args) -> tuple[PyTree, PyTree]:
        """(ShapeDtypeStructs carrying their shardings, shardings) of `init_fn(*args)`, whose
        output holds boxed (logically partitioned) leaves; nothing is allocated."""
        boxed = jax.eval_shape(init_fn, *args)
        shardings = self.state_shardings(boxed)
        if shardings is None:
            return nn.unbox(boxed), None
        shapes = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              nn.unbox(boxed), shardings)
        return shapes, shardings

    def init(self, init_fn: Callable, *args) -> tuple[PyTree, PyTree]:
        """Runs `init_fn(*args)` (boxed leaves) directly into its shardings: no full copy on
        any device. `jax.eval_shape` -> logical specs -> `jax.jit(..., out_shardings=...)`.
        Returns (unboxed state, its shardings)."""
        shardings = self.state_shardings(jax.eval_shape(init_fn, *args))
        init = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)
        with self.context():
            return init(*args), shardings

    # ------------------------------------------------------------------------- tracing

    def context(self):
        """`with`: the logical-axis rules and the mesh while tracing (`sharding.mesh_rules`);
        nothing without a mesh."""
        if self.mesh is None:
            return contextlib.nullcontext()
        return mesh_rules(self.mesh, self.axis_rules)
