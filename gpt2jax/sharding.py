"""Device meshes and shardings: mesh axes `data`, `fsdp`, `tensor`; logical -> mesh rules.

The model annotates parameters and activations with logical axis names (`batch`, `length`,
`embed`, `heads`, `head_dim`, `mlp`, `vocab`); `config.mesh.rules` maps them to mesh axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpt2jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


class MeshError(ConfigError):
    """A mesh that does not fit the devices or the model."""


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolves one -1 entry to "the rest of the devices" and checks the product."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise MeshError(f"Only one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}.")
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


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes (data, fsdp, tensor) from `config.mesh`."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config.data, mesh_config.fsdp, mesh_config.tensor, len(devices))
    if len(devices) == len(jax.devices()):
        try:
            return jax.make_mesh(shape, MESH_AXES, devices=devices)
        except (TypeError, ValueError):
            pass
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def rules(mesh_config) -> tuple:
    """The logical-axis rules as a tuple of (logical, mesh-axes) pairs."""
    return tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in mesh_config.rules)


def logical_to_sharding(logical_specs, mesh: Mesh, axis_rules):
    """Maps a pytree of logical `PartitionSpec`s to `NamedSharding`s on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, axis_rules)


def batch_sharding(mesh: Mesh, axis_rules, ndim: int = 2) -> NamedSharding:
    """Sharding for a host batch [batch, length, ...]: batch over the data-like axes."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), axis_rules)
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
