"""Device meshes and shardings: mesh axes `data`, `fsdp`, `tensor`; logical -> mesh rules.

The model annotates parameters and activations with logical axis names (`batch`, `length`,
`embed`, `heads`, `head_dim`, `mlp`, `vocab`); `config.mesh.rules` maps them to mesh axes.
With the default rules the mesh sizes choose the parallelism: `data` = data parallel
(parameters replicated), `fsdp` = fully sharded data parallel (parameters and optimizer state
split on `embed`, batch split too), `tensor` = tensor parallel (heads / mlp / vocab split).

Multi-slice (several TPU slices, or several GPU nodes): `config.mesh.dcn_*` give the sizes
across slices (data-centre network); `data`/`fsdp`/`tensor` are then the sizes inside one
slice (ICI). JAX's `mesh_utils.create_hybrid_device_mesh` lays the devices out; processes act
as slices where the devices carry no `slice_index` (GPU nodes, CPU tests).

Placing parameters, state and batches on a mesh is `placement.Placement`'s job (one rule for
dimensions the mesh does not divide); this module builds meshes, maps logical names while
tracing (`mesh_rules`, `constrain`) and reports shardings and memory:

    mesh = make_mesh(config.mesh)
    state, shardings = Placement(mesh, rules(config.mesh)).init(init_fn, rng)
    print(format_sharding_table(shardings["params"], state["params"]))
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gpt2jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
DCN_FIELDS = ("dcn_data", "dcn_fsdp", "dcn_tensor")

PyTree = Any


class MeshError(ConfigError):
    """A mesh that does not fit the devices or the model."""


# ----------------------------------------------------------------------------- mesh


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolves one -1 entry to "the rest of the devices" and checks the product."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise MeshError(
            f"Only one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}; "
            "give explicit sizes to all but one axis."
        )
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"Mesh sizes must be positive or -1, got {sizes}.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise MeshError(
                f"Mesh fsdp*tensor*data={known} does not divide the {num_devices} devices; "
                "choose sizes whose product divides the device count."
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise MeshError(
            f"Mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
            f"devices, but {num_devices} are available; set the sizes so that their product is "
            f"{num_devices} (or use -1 for one axis)."
        )
    return tuple(sizes)


# Shardings are propagated by XLA (jit's in/out shardings and `constrain`): "auto" axes
# (jax >= 0.7 makes `jax.make_mesh`'s axes explicit by default).
AUTO_AXES = (AxisType.Auto,) * len(MESH_AXES)


def _dcn_sizes(mesh_config) -> tuple[int, int, int]:
    # Configs built before multi-slice support have no dcn_* fields: one slice.
    return tuple(int(mesh_config[f]) if f in mesh_config else 1 for f in DCN_FIELDS)


def _granules(devices: Sequence[jax.Device]) -> tuple[int, bool]:
    """(number of slices, whether processes stand in for slices)."""
    slices = {getattr(d, "slice_index", None) for d in devices}
    if None not in slices and len(slices) > 1:
        return len(slices), False
    return len({d.process_index for d in devices}), True


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes (data, fsdp, tensor) from `config.mesh`.

    Args:
      mesh_config: `config.mesh` (data, fsdp, tensor, optional dcn_data/dcn_fsdp/dcn_tensor).
      devices: the devices to use (default: all `jax.devices()`, every process's).
    Returns:
      A mesh with auto (compiler-chosen) axis types, shape (data, fsdp, tensor); along each
      axis the DCN (multi-slice) factor is the outer one.
    """
    devices = list(jax.devices() if devices is None else devices)
    dcn = _dcn_sizes(mesh_config)
    ici = (mesh_config.data, mesh_config.fsdp, mesh_config.tensor)
    if all(s == 1 for s in dcn):
        return _single_slice_mesh(mesh_shape(*ici, len(devices)), devices)
    num_granules, by_process = _granules(devices)
    dcn_shape = mesh_shape(*dcn, num_granules)
    ici_shape = mesh_shape(*ici, len(devices) // num_granules)
    try:
        array = mesh_utils.create_hybrid_device_mesh(
            ici_shape, dcn_shape, devices, process_is_granule=by_process,
            allow_split_physical_axes=True,
        )
    except (ValueError, AssertionError) as e:
        raise MeshError(
            f"Cannot lay out ICI mesh {ici_shape} x DCN mesh {dcn_shape} over {len(devices)} "
            f"devices in {num_granules} slices: {e}; make the dcn_* product the number of "
            "slices and the data*fsdp*tensor product the devices per slice."
        ) from e
    return Mesh(array, MESH_AXES, axis_types=AUTO_AXES)


def _single_slice_mesh(shape: tuple[int, int, int], devices: list) -> Mesh:
    """All devices: `jax.make_mesh` (it orders devices by the physical topology); a subset:
    in the given order."""
    if len(devices) != len(jax.devices()):
        return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=AUTO_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=AUTO_AXES)
    except ValueError as e:  # e.g. a shape the TPU topology cannot be split into
        raise MeshError(f"Cannot lay out mesh {dict(zip(MESH_AXES, shape))} over "
                        f"{len(devices)} {devices[0].platform} devices: {e}; choose sizes that "
                        "follow the slice's topology (e.g. powers of two).") from e


def rules(mesh_config) -> tuple:
    """The logical-axis rules as a tuple of (logical, mesh-axes) pairs."""
    return tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in mesh_config.rules)


# The mesh that `constrain` places activations on; set by `mesh_rules` while tracing.
_TRACING_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    "gpt2jax_tracing_mesh", default=None)


@contextlib.contextmanager
def mesh_rules(mesh: Mesh, axis_rules) -> Iterator[None]:
    """Context for tracing model code on `mesh` (a step's first call, `.lower()`, `init`).

    Sets the logical-axis rules and the mesh that `constrain` puts activations on. No global
    mesh (`jax.set_mesh`) is set: under one, flax constrains DenseGeneral's flat init-time
    kernel [E, 3*H*D] with the 4-d logical spec and fails. Parameters, state and batch are
    placed by jit's in/out shardings; activations by `constrain`.
    """
    token = _TRACING_MESH.set(mesh)
    try:
        with nn.logical_axis_rules(axis_rules):
            yield
    finally:
        _TRACING_MESH.reset(token)


def constrain(x: jax.Array, logical_axes: tuple) -> jax.Array:
    """Constrains activation `x` to the sharding its logical axis names map to.

    Inside `mesh_rules` this is `with_sharding_constraint(x, NamedSharding(mesh, spec))`
    with `spec` from the rules (a mesh axis already taken by an earlier dimension is left
    out, so FSDP's `embed -> fsdp` does not split activations whose batch holds fsdp); a
    dimension the mesh axes do not divide (batch 1 in decoding, the 50,257-way vocabulary) is
    left to the compiler. Outside `mesh_rules` (one device, no rules) `x` is returned as is.

    Args:
      x: an array of rank len(logical_axes).
      logical_axes: names such as ("batch", "length", "embed"); None = replicated.
    """
    mesh = _TRACING_MESH.get()
    axis_rules = nn.get_logical_axis_rules()
    if mesh is None or not axis_rules:
        return x
    spec = list(nn.logical_to_mesh_axes(logical_axes, axis_rules))
    for dim, axes in enumerate(spec):
        if axes is not None and x.shape[dim] % axes_size(mesh, axes):
            spec[dim] = PartitionSpec.UNCONSTRAINED
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


# ----------------------------------------------------------------------------- helpers


def axes_size(mesh: Mesh, axes) -> int:
    """How many ways mesh axes `axes` (a name, a tuple of names, or None) split a dimension."""
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def path_str(path) -> str:
    """"h_0/attn/c_attn/kernel" for a pytree key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


# ----------------------------------------------------------------------------- reports


def _human(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    return str(num_bytes)


def format_sharding_table(params_shardings: PyTree, params: PyTree | None = None) -> str:
    """A table with one row per parameter: path, shape, mesh spec, per-device shard, bytes.

    Args:
      params_shardings: pytree of `NamedSharding` (e.g. from `Placement.state_shardings`).
      params: matching arrays or ShapeDtypeStructs, for shapes and bytes (optional).
    Returns:
      The table as a string, with totals per device at the bottom.
    """
    flat = jax.tree_util.tree_flatten_with_path(params_shardings)[0]
    arrays = [None] * len(flat) if params is None else jax.tree.leaves(nn.unbox(params))
    lines = [f"{'parameter':<40} {'shape':<20} {'mesh spec':<34} {'per device':<20} bytes/dev"]
    total = per_device = 0
    for (path, sharding), array in zip(flat, arrays):
        spec = str(tuple(sharding.spec)) if isinstance(sharding, NamedSharding) else str(sharding)
        shape = shard = nbytes = ""
        if array is not None:
            shard_shape = sharding.shard_shape(array.shape)
            itemsize = np.dtype(array.dtype).itemsize
            total += math.prod(array.shape) * itemsize
            per_device += math.prod(shard_shape) * itemsize
            shape, shard = str(tuple(array.shape)), str(tuple(shard_shape))
            nbytes = _human(math.prod(shard_shape) * itemsize)
        lines.append(f"{path_str(path):<40} {shape:<20} {spec:<34} {shard:<20} {nbytes}")
    if params is not None:
        lines.append(f"total {_human(total)}; per device {_human(per_device)}")
    return "\n".join(lines)


def memory_analysis(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled computation (`jit(f).lower(...).compile()`).

    Returns a dict with argument/output/temp/alias/generated_code bytes and `peak`
    (= argument + output + temp - alias, XLA's per-device estimate); {} when the backend
    gives no analysis.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    if isinstance(stats, (list, tuple)):
        stats = stats[0]
    keys = ("argument", "output", "temp", "alias", "generated_code")
    out = {k: int(getattr(stats, f"{k}_size_in_bytes", 0)) for k in keys}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def format_memory_analysis(compiled) -> str:
    """One line: per-device argument / output / temp / peak bytes of a compiled step."""
    stats = memory_analysis(compiled)
    if not stats:
        return "memory analysis: not available on this backend"
    return "per-device memory: " + ", ".join(f"{k} {_human(v)}" for k, v in stats.items())
