"""Data parallelism over every device: a 1-D mesh, batch sharded on it, parameters replicated.

One code path for 1 device, N devices and N devices on P processes (jax.distributed, see
udm.distributed): with one device the shardings are trivial; with several processes the mesh
spans all of them, each process feeds only the rows of a batch that its own devices hold
(`process_rows`, `global_batch`), and host copies of sharded results are gathered (`to_host`).
"""
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A mesh with one axis, "data", over all (or the given) devices.

    Devices are grouped by process (a stable sort, so a single process keeps jax.devices()
    order): each process then owns one contiguous block of the batch.
    """
    devices = list(jax.devices() if devices is None else devices)
    devices = sorted(devices, key=lambda d: d.process_index)
    return Mesh(np.asarray(devices).reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array, the same on every process, as one global array replicated over the mesh."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated(mesh), lambda index: x[index])


def check_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"{field}={batch_size} must be divisible by the number of devices ({n})")


def process_rows(batch_size: int, mesh: Mesh) -> slice:
    """The rows [start, stop) of a global batch [batch_size, ...] held by this process's devices.

    The whole batch in a single-process run; rows p * B / P ... (p + 1) * B / P for process p of
    P with the same number of devices each.
    """
    index_map = batch_sharded(mesh).addressable_devices_indices_map((batch_size,))
    spans = sorted({idx[0].indices(batch_size)[:2] for idx in index_map.values()})
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(f"the devices of process {jax.process_index()} hold rows {spans} of the "
                         f"batch, not one contiguous block; build the mesh with data_mesh()")
    return slice(start, stop)


def global_batch(local_rows: np.ndarray, mesh: Mesh, batch_size: int) -> jax.Array:
    """The global batch [batch_size, ...] sharded over the mesh, from this process's rows.

    Args:
        local_rows: [stop - start, ...] the rows `process_rows(batch_size, mesh)` of the batch.
        mesh: the data mesh.
        batch_size: B, the global batch size.
    """
    return jax.make_array_from_process_local_data(
        batch_sharded(mesh), local_rows, (batch_size, *local_rows.shape[1:]))


def shard_batch(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Places a host batch [B, ...], the same on every process, on the mesh, split along B."""
    return global_batch(np.asarray(x)[process_rows(len(x), mesh)], mesh, len(x))


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly sharded over several processes) array as numpy, on every process.

    A collective when the array spans other processes: every process must call it.
    """
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
