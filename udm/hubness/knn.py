"""Exact k nearest neighbours (brute force, blocked, jitted) and the k-occurrence N_k (H1)."""
import functools
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from udm.hubness._checks import _as_points, _check_block_size, _check_points
from udm.parallel import DATA_AXIS, batch_sharded, replicated

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


def _block_distances(queries: Array, database: Array, db_sq_norms: Array, *,
                     cosine: bool) -> Array:
    """Distances [b, N] of a block of queries [b, d] to every database point [N, d].

    Euclidean: squared distances ||q||^2 + ||x||^2 - 2 q.x, clamped at 0 (rounding can make a
    near-zero distance negative). Cosine: rows are already unit-norm, and 1 - q.x is the squared
    Euclidean distance between them halved, computed without the norms' rounding.
    """
    prods = jnp.matmul(queries, database.T, precision=_HIGHEST)
    if cosine:
        return jnp.maximum(1.0 - prods, 0.0)
    q_sq = jnp.sum(queries * queries, axis=1)
    return jnp.maximum(q_sq[:, None] + db_sq_norms[None, :] - 2.0 * prods, 0.0)


def _unit_rows(x: Array) -> Array:
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


@functools.lru_cache(maxsize=None)
def _knn_program(k: int, include_self: bool, cosine: bool, block: int,
                 mesh: Optional[Mesh]) -> Callable:
    """A jitted `(queries [Q, d], query_ids [Q], database [N, d]) -> (indices, distances)`.

    Q is a multiple of `block` (of devices x `block` with a mesh); a query id of -1 marks a
    padding row, which masks nothing.
    """

    def local(queries, query_ids, database):
        if cosine:
            queries, database = _unit_rows(queries), _unit_rows(database)
        db_sq_norms = jnp.sum(database * database, axis=1)
        columns = jnp.arange(database.shape[0], dtype=jnp.int32)

        def one_block(args):
            q, ids = args
            dist = _block_distances(q, database, db_sq_norms, cosine=cosine)
            # By index, not by value: a duplicate of the query stays a neighbour. Included, the
            # self distance is exactly 0 rather than the expansion's rounding residue.
            dist = jnp.where(columns[None, :] == ids[:, None],
                             0.0 if include_self else jnp.inf, dist)
            # top_k keeps the lower index first among equal values: the documented tie rule.
            neg_dist, idx = jax.lax.top_k(-dist, k)
            return idx, -neg_dist

        d = queries.shape[1]
        idx, dist = jax.lax.map(one_block, (queries.reshape(-1, block, d),
                                            query_ids.reshape(-1, block)))
        dist = dist.reshape(-1, k)
        return idx.reshape(-1, k), dist if cosine else jnp.sqrt(dist)

    if mesh is None:
        return jax.jit(local)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS), P()),
                            out_specs=(P(DATA_AXIS), P(DATA_AXIS)))
    return jax.jit(sharded,
                   in_shardings=(batch_sharded(mesh), batch_sharded(mesh), replicated(mesh)),
                   out_shardings=(batch_sharded(mesh), batch_sharded(mesh)))


def knn(x, k: int, *, metric: str = "euclidean", include_self: bool = False,
        block_size: int = 1024, mesh: Optional[Mesh] = None) -> Tuple[Array, Array]:
    """Exact k nearest neighbours of every point among all points (brute force, blocked).

        kNN(x_j) = the k points x_i (i != j unless include_self) of smallest d(x_j, x_i),
        Euclidean:  d = ||x_j - x_i||, from ||x_j||^2 + ||x_i||^2 - 2 x_j.x_i clamped at 0;
        cosine:     d = 1 - cos(x_j, x_i)   (Euclidean on L2-normalised rows: ||u - v||^2 / 2).

    Queries go through in blocks of `block_size` rows (`jax.lax.map`), so memory is
    O(block_size x N), and the squared distances are computed in the input's float dtype
    (float32 by default). Equal distances: the lower index comes first. With include_self=False
    the self distance is set to +inf by index, so an exact duplicate of x_j is still a neighbour
    of x_j (at distance 0 up to rounding). With include_self=True the self distance is exactly 0,
    so x_j is its own first neighbour unless a duplicate of lower index ties with it.

    Args:
        x: [N, d] points (N >= 2, finite; no zero rows for cosine).
        k: neighbours per point, 1 <= k <= N - 1 (<= N with include_self).
        metric: "euclidean" or "cosine".
        include_self: count each point as a candidate neighbour of itself (scikit-learn /
            scikit-hubness `kneighbors_graph` on the fitted set); the documented N_k excludes it.
        block_size: query rows per block (memory only: results do not depend on it except through
            floating-point rounding of the matrix product).
        mesh: a 1-D data mesh (`udm.parallel.data_mesh`): query blocks are split over its
            devices, the points are replicated; the result equals the unsharded one.

    Returns:
        indices: [N, k] int32, neighbours of each point, nearest first.
        distances: [N, k] the matching distances (Euclidean, or 1 - cos).
    """
    x = _as_points(x)
    _check_points(x, k, metric=metric, include_self=include_self)
    _check_block_size(block_size)
    n = x.shape[0]
    shards = 1 if mesh is None else mesh.devices.size
    block = min(block_size, -(-n // shards))
    padded = -(-n // (shards * block)) * shards * block
    ids = jnp.arange(n, dtype=jnp.int32)
    queries = x
    if padded > n:
        # Padding rows repeat point 0 (finite, nonzero) with id -1, and are dropped below.
        queries = jnp.concatenate([x, jnp.broadcast_to(x[:1], (padded - n, x.shape[1]))])
        ids = jnp.concatenate([ids, jnp.full((padded - n,), -1, jnp.int32)])
    program = _knn_program(int(k), bool(include_self), metric == "cosine", int(block), mesh)
    idx, dist = program(queries, ids, x)
    return idx[:n], dist[:n]


@functools.partial(jax.jit, static_argnames="n")
def k_occurrence(indices: Array, n: int) -> Array:
    """The k-occurrence (H1): how many neighbour lists each point appears in.

        N_k(x_i) = #{ j : i in indices[j] },     sum_i N_k(x_i) = (number of lists) * k.

    Args:
        indices: [M, k] int neighbour lists with entries in [0, n).
        n: number of points.

    Returns:
        [n] int32 counts.
    """
    return jnp.zeros((n,), jnp.int32).at[indices.reshape(-1)].add(1)


def k_occurrence_of(x, k: int, **knn_kwargs) -> Array:
    """N_k [N] int32 of the points x [N, d]: `knn` (same keyword arguments) then `k_occurrence`."""
    indices, _ = knn(x, k, **knn_kwargs)
    return k_occurrence(indices, indices.shape[0])
