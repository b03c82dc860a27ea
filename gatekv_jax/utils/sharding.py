"""Device meshes and the one table that maps logical axis names onto mesh axes.

Parameters and activations are named with logical axes ("embed", "q_heads", "batch", ...);
`LOGICAL_RULES` says which mesh axis ("data", "fsdp", "tensor") each is split over. A dimension
that the mesh axes do not divide is split over the longest leading run of them that does (a batch
of 2 over data=2 x fsdp=4: over data), or replicated (one KV head over 4 tensor devices).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("cache_slots", None),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (all by default); one size may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive with at most one -1, got {dict(zip(MESH_AXES, sizes))}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh {dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh_shape: dict[str, int] | None = None,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> PartitionSpec:
    """PartitionSpec for logical axes; with `shape` and `mesh_shape`, non-dividing axes are replicated."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        target = table.get(name) if name is not None else None
        mesh_axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        mesh_axes = tuple(a for a in mesh_axes if a not in used)
        if shape is not None and mesh_shape is not None:
            mesh_axes = tuple(a for a in mesh_axes if mesh_shape.get(a, 1) > 1)
            while mesh_axes and shape[dim] % int(np.prod([mesh_shape[a] for a in mesh_axes])):
                mesh_axes = mesh_axes[:-1]  # keep the longest leading run of mesh axes that divides
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else (mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes))
    return PartitionSpec(*spec)


def tree_shardings(logical_tree: Any, arrays: Any, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
    """NamedShardings for a pytree of logical PartitionSpecs and a matching pytree of arrays (or shapes)."""
    mesh_shape = dict(mesh.shape)
    return jax.tree.map(
        lambda axes, array: NamedSharding(mesh, logical_to_spec(tuple(axes), array.shape, mesh_shape, rules)),
        logical_tree, arrays, is_leaf=lambda x: isinstance(x, PartitionSpec))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Shard an activation by logical axes when a mesh is set (`jax.set_mesh`); otherwise a no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def replicated(x: jax.Array) -> jax.Array:
    """`x` copied to every device when a mesh is set (results the host reads, on every process)."""
    return constrain(x, (None,) * x.ndim)
