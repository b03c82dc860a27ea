"""Multi-controller JAX: process setup, global arrays from host data, and who writes which rows.

Call `initialize(...)` once per process before anything touches a JAX device; one process needs
no call. On Cloud TPU VM pods `initialize(auto=True)` lets JAX detect the pod; elsewhere give the
coordinator address (the same on every process), the process count and this process's id.
`cpu_devices` splits a CPU host into virtual devices, and CPU processes talk through gloo, so a
pod can be rehearsed on one machine. Every process then runs the same program over one global
mesh; host data known to every process becomes a global array of which each process places only
its own devices' part, and each row of a result is written by exactly one process.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from gatekv_jax.utils.sharding import logical_to_spec


def initialize(*, auto: bool = False, coordinator: str | None = None, num_processes: int = 1, process_id: int = 0,
               cpu_devices: int | None = None) -> None:
    """Set up this process of a multi-controller run (nothing to do for one process without options)."""
    if cpu_devices is not None:
        if isinstance(cpu_devices, bool) or not isinstance(cpu_devices, int) or cpu_devices <= 0:
            raise ValueError(f"cpu_devices must be a positive int, got {cpu_devices!r}")
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    if jax.distributed.is_initialized():
        return
    if auto:
        if coordinator is not None:
            raise ValueError("give either auto=True (pod auto-detection) or a coordinator, not both")
        jax.distributed.initialize()
        return
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes <= 0:
        raise ValueError(f"num_processes must be a positive int, got {num_processes!r}")
    if isinstance(process_id, bool) or not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be an int in [0, {num_processes}), got {process_id!r}")
    if coordinator is None:
        if num_processes > 1:
            raise ValueError(f"{num_processes} processes need a coordinator address (host:port)")
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def is_main_process() -> bool:
    """Whether this process writes the run's outputs (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches this point (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def global_array(value: Any, mesh: Mesh, logical_axes: Sequence[str | None]) -> jax.Array:
    """`value` (the same host array on every process) as a global array sharded by logical axes;
    each process places only the part its own devices hold."""
    value = np.asarray(value)
    sharding = NamedSharding(mesh, logical_to_spec(tuple(logical_axes), value.shape, dict(mesh.shape)))
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def owned_rows(array: jax.Array, axis: int = 0) -> dict[int, np.ndarray]:
    """`{index: host copy}` of the slices along `axis` that this process writes: those of which it
    is the lowest-numbered process holding a copy, so every slice has exactly one writer. A slice
    is put together from this process's shards; one split over processes is an error (shard such
    arrays along `axis` only)."""
    holders: dict[int, int] = {}
    for device, index in array.sharding.devices_indices_map(array.shape).items():
        for row in range(*index[axis].indices(array.shape[axis])):
            holders[row] = min(holders.get(row, device.process_index), device.process_index)
    row_shape = array.shape[:axis] + array.shape[axis + 1:]
    rows: dict[int, np.ndarray] = {}
    seen: dict[int, set] = {}
    for shard in array.addressable_shards:
        rest = tuple(shard.index[:axis]) + tuple(shard.index[axis + 1:])
        key = tuple(part.indices(size) for part, size in zip(rest, row_shape))
        data = np.asarray(shard.data)
        for offset, row in enumerate(range(*shard.index[axis].indices(array.shape[axis]))):
            if holders[row] != jax.process_index() or key in seen.setdefault(row, set()):
                continue
            seen[row].add(key)
            rows.setdefault(row, np.empty(row_shape, array.dtype))[rest] = np.take(data, offset, axis=axis)
    for row, parts in seen.items():
        if parts and sum(int(np.prod([len(range(*k)) for k in key])) for key in parts) != int(np.prod(row_shape)):
            raise ValueError(f"slice {row} along axis {axis} is split over processes; shard the array along "
                             f"axis {axis} only")
    return rows
