"""Data parallelism over every device: a 1-D mesh, batch sharded on it, parameters replicated.

One code path for 1 or N devices: with one device the shardings are trivial.
"""
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A mesh with one axis, "data", over all (or the given) devices."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"{field}={batch_size} must be divisible by the number of devices ({n})")


def shard_batch(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Places a host batch [B, ...] on the mesh, split along B."""
    return jax.device_put(x, batch_sharded(mesh))
