"""Hubness: exact k-nearest neighbours, the k-occurrence N_k, its measures, hubness reduction,
and the hubness-prior latent filter (spec 07).

    N_k(x_i) = #{ j != i : x_i in kNN(x_j) }                                        (H1)

Everything is exact (brute force, O(N^2 d)) and jitted: query points are processed in blocks
of `block_size` rows, so the neighbour search holds O(block_size x N) distances at a time, never
the N x N matrix. The hubness reductions (mutual proximity, local scaling, NICDM, CSLS) do work
on a dense N x N float32 distance matrix (4 N^2 bytes: 16 MB at N = 2000, 400 MB at N = 10^4),
read in row blocks.

Tie-breaking, everywhere: among equal distances the lower index comes first. It is what
`jax.lax.top_k` does on the negated distances (checked in tests/test_hubness.py), and it makes
the neighbour lists a deterministic function of the data.

Sources: Radovanović, Nanopoulos, Ivanović, "Hubs in Space", JMLR 2010 (N_k and its skewness);
kexue.fm/archives/9147 and Liang et al., ICML 2022, arXiv 2206.06014 (hubness prior for GAN
latents); Feldbauer et al. 2018 and scikit-hubness (hub / anti-hub occurrence, Robin Hood
index); the papers of each reduction are cited at its function.
"""
import functools
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from udm.parallel import DATA_AXIS, batch_sharded, replicated
from udm.registry import Registry

Array = jax.Array

METRICS = ("euclidean", "cosine")
# The spec's threshold for "hub" in the table (frac N_k > 50) and in the latent filter (3.1).
DEFAULT_HUB_THRESHOLD = 50
# Elements of the [rows, candidates, N] comparison tensor that empirical mutual proximity holds
# at a time (2^24 booleans + floats: ~80 MB).
_MP_BLOCK_ELEMENTS = 2 ** 24
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# Input checks (on the host, before anything compiles)


def _as_points(x, name: str = "x") -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a [N, d] array of points, got shape {x.shape}")
    return x


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")


def _first_rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return f"row {rows[0]}{more}"


def _check_points(x: Array, k: int, *, metric: str, include_self: bool, name: str = "x") -> None:
    """Raises ValueError for a bad k, too few points, non-finite rows or zero rows (cosine)."""
    _check_metric(metric)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"{name} needs at least 2 points for nearest neighbours, got N = {n}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if include_self and k > n:
        raise ValueError(f"k = {k} must be <= N = {n} (self included)")
    if not include_self and k >= n:
        raise ValueError(f"k = {k} must be <= N - 1 = {n - 1}: each point has only N - 1 "
                         f"other points (self excluded)")
    if isinstance(x, jax.core.Tracer):
        return  # values unknown under a transformation: only shapes are checked
    finite = np.asarray(jnp.all(jnp.isfinite(x), axis=1))
    if not finite.all():
        raise ValueError(f"{name} has non-finite values (NaN or inf) in {_first_rows(~finite)}")
    if metric == "cosine":
        zero = np.asarray(jnp.all(x == 0, axis=1))
        if zero.any():
            raise ValueError(f"{name} has an all-zero {_first_rows(zero)}: its cosine distance "
                             f"is undefined")


def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")


# ----------------------------------------------------------------------------------------------
# Exact k nearest neighbours


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
            scikit-hubness `kneighbors_graph` on the fitted set); the spec's N_k excludes it.
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


# ----------------------------------------------------------------------------------------------
# Hubness measures of a k-occurrence vector


@jax.jit
def skewness(nk: Array) -> Array:
    """Skewness of the k-occurrence distribution (Radovanović et al. 2010, S_{N_k}).

        S_{N_k} = E[(N_k - mu)^3] / Var[N_k]^{3/2},   mu = mean N_k (= k for a full k-NN graph),

    with population moments (scipy.stats.skew's default). 0 when all N_k are equal.

    Args:
        nk: [N] k-occurrences.

    Returns:
        [] float32.
    """
    v = nk.astype(jnp.float32)
    c = v - jnp.mean(v)
    m2 = jnp.mean(c * c)
    m3 = jnp.mean(c * c * c)
    safe_m2 = jnp.where(m2 > 0, m2, 1.0)
    return jnp.where(m2 > 0, m3 / safe_m2 ** 1.5, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def hub_occurrence(nk: Array, k: int, *, hub_size: float = 2.0) -> Array:
    """Share of all k-NN slots taken by hubs (scikit-hubness `Hubness.hub_occurrence`).

        hubs = { i : N_k(x_i) >= hub_size * k },
        hub occurrence = sum_{i in hubs} N_k(x_i) / sum_i N_k(x_i)

    (= sum_{hubs} N_k / (k * number of queries) for a full k-NN graph). scikit-hubness defines
    hubs by this threshold with hub_size = 2 (Feldbauer et al. 2018), not as a top fraction.

    Args:
        nk: [N] k-occurrences.
        k: neighbourhood size the counts were made with.
        hub_size: hubs have N_k >= hub_size * k.

    Returns:
        [] float32 in [0, 1].
    """
    v = nk.astype(jnp.float32)
    return jnp.sum(jnp.where(v >= hub_size * k, v, 0.0)) / jnp.sum(v)


@jax.jit
def antihub_occurrence(nk: Array) -> Array:
    """Fraction of anti-hubs, points in no neighbour list (scikit-hubness convention).

        antihub occurrence = #{ i : N_k(x_i) = 0 } / N

    Args:
        nk: [N] k-occurrences.

    Returns:
        [] float32 in [0, 1].
    """
    return jnp.mean((nk == 0).astype(jnp.float32))


@jax.jit
def robin_hood_index(nk: Array) -> Array:
    """Robin Hood (Hoover) index of N_k (Feldbauer, Leodolter, Plant, Flexer 2018).

        RH = sum_i |N_k(x_i) - mu| / (2 sum_i N_k(x_i)),   mu = mean N_k (= k for a full graph):

    the share of all neighbour slots that would have to move for every point to occur equally
    often. 0 = no hubness, -> 1 = one point takes every slot.

    Args:
        nk: [N] k-occurrences.

    Returns:
        [] float32 in [0, 1).
    """
    v = nk.astype(jnp.float32)
    return jnp.sum(jnp.abs(v - jnp.mean(v))) / (2.0 * jnp.sum(v))


@jax.jit
def gini(nk: Array) -> Array:
    """Gini index of N_k (as in scikit-hubness `Hubness.gini_index`).

        G = sum_i sum_j |N_k(x_i) - N_k(x_j)| / (2 N sum_i N_k(x_i))
          = sum_i (2 i - N - 1) s_i / (N sum_i s_i),   s = N_k sorted ascending, i = 1..N,

    computed with the sorted form in O(N log N).

    Args:
        nk: [N] k-occurrences.

    Returns:
        [] float32 in [0, 1).
    """
    s = jnp.sort(nk.astype(jnp.float32))
    n = s.shape[0]
    weights = 2.0 * jnp.arange(1, n + 1, dtype=jnp.float32) - n - 1
    return jnp.sum(weights * s) / (n * jnp.sum(s))


def _pearson(a: Array, b: Array) -> Array:
    a = a - jnp.mean(a)
    b = b - jnp.mean(b)
    return jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))


@jax.jit
def corr_with_distance_to_mean(nk: Array, x: Array, center: Optional[Array] = None) -> Array:
    """Pearson correlation of N_k with the distance to the data mean (spec 07 section 2).

        r = corr(N_k(x_i), ||x_i - c||),   c = (1/N) sum_i x_i  (or `center`).

    Hubs sit near the mean (the minimiser of the summed squared distances), so r < 0 in high
    dimension. NaN when either variable is constant.

    Args:
        nk: [N] k-occurrences.
        x: [N, d] the points.
        center: [d] optional reference point instead of the mean (zeros: corr with ||x||).

    Returns:
        [] float32 in [-1, 1].
    """
    c = jnp.mean(x, axis=0) if center is None else center
    dist = jnp.linalg.norm(x - c[None, :], axis=1)
    return _pearson(nk.astype(jnp.float32), dist.astype(jnp.float32))


def hubness_measures(nk: Array, k: int, x: Optional[Array] = None, *,
                     hub_size: float = 2.0,
                     threshold: int = DEFAULT_HUB_THRESHOLD) -> Dict[str, float]:
    """All hubness measures of one k-occurrence vector, as Python floats.

    Args:
        nk: [N] k-occurrences.
        k: the neighbourhood size.
        x: [N, d] the points, for the correlations (left out when None).
        hub_size: for `hub_occurrence`.
        threshold: for frac_gt_threshold = #{N_k > threshold} / N (the spec's 50).

    Returns:
        dict: mean, skewness, max, frac_gt_threshold (with `threshold`), frac_zero
        (= antihub_occurrence), hub_occurrence, robin_hood, gini, and with x corr_dist_to_mean
        and corr_norm (Pearson with ||x - mean|| and with ||x||).
    """
    nk = jnp.asarray(nk)
    v = nk.astype(jnp.float32)
    out = {
        "k": int(k),
        "mean": float(jnp.mean(v)),
        "skewness": float(skewness(nk)),
        "max": int(jnp.max(nk)),
        "threshold": int(threshold),
        "frac_gt_threshold": float(jnp.mean((nk > threshold).astype(jnp.float32))),
        "frac_zero": float(antihub_occurrence(nk)),
        "hub_occurrence": float(hub_occurrence(nk, int(k), hub_size=hub_size)),
        "robin_hood": float(robin_hood_index(nk)),
        "gini": float(gini(nk)),
    }
    if x is not None:
        x = jnp.asarray(x)
        out["corr_dist_to_mean"] = float(corr_with_distance_to_mean(nk, x))
        out["corr_norm"] = float(corr_with_distance_to_mean(nk, x, jnp.zeros(x.shape[1],
                                                                              x.dtype)))
    return out


def hubness_report(x, k: int, *, metric: str = "euclidean", include_self: bool = False,
                   block_size: int = 1024, mesh: Optional[Mesh] = None,
                   hub_size: float = 2.0,
                   threshold: int = DEFAULT_HUB_THRESHOLD) -> Dict[str, float]:
    """k-NN graph of x, its N_k and every measure of `hubness_measures` (a dict of floats).

    Args:
        x: [N, d] points; k, metric, include_self, block_size, mesh: as in `knn`;
        hub_size, threshold: as in `hubness_measures`.
    """
    x = _as_points(x)
    nk = k_occurrence_of(x, k, metric=metric, include_self=include_self,
                         block_size=block_size, mesh=mesh)
    return hubness_measures(nk, k, x, hub_size=hub_size, threshold=threshold)


# ----------------------------------------------------------------------------------------------
# Hubness reduction: secondary distances, a corrected k-NN graph from each


@functools.partial(jax.jit, static_argnames=("cosine", "block"))
def _dense_distances(x: Array, *, cosine: bool, block: int) -> Array:
    n, d = x.shape
    if cosine:
        x = _unit_rows(x)
    sq = jnp.sum(x * x, axis=1)
    padded = -(-n // block) * block
    rows = jnp.concatenate([x, jnp.zeros((padded - n, d), x.dtype)])
    dist = jax.lax.map(lambda q: _block_distances(q, x, sq, cosine=cosine),
                       rows.reshape(-1, block, d)).reshape(padded, n)[:n]
    if not cosine:
        dist = jnp.sqrt(dist)
    # Exactly zero on the diagonal (the clamp leaves rounding residue there).
    diagonal = jnp.arange(n)
    return dist.at[diagonal, diagonal].set(0.0)


def pairwise_distances(x, *, metric: str = "euclidean", block_size: int = 1024) -> Array:
    """Dense distance matrix D [N, N] in float32 (4 N^2 bytes), computed in row blocks.

    D_ij = ||x_i - x_j|| (Euclidean) or 1 - cos(x_i, x_j) (cosine); D_ii = 0.

    Args:
        x: [N, d] points.
        metric: "euclidean" or "cosine".
        block_size: rows per block.

    Returns:
        [N, N] distances.
    """
    x = _as_points(x)
    _check_points(x, 1, metric=metric, include_self=False)
    _check_block_size(block_size)
    return _dense_distances(x, cosine=metric == "cosine", block=min(block_size, x.shape[0]))


def _dense_knn(row_fn: Callable[[Array], Array], n: int, k: int, block: int,
               ) -> Tuple[Array, Array]:
    """k smallest entries of each row of a dense (secondary) distance, self excluded, in blocks.

    Args:
        row_fn: ids [b] -> [b, n] the distance rows of those points.
        n, k, block: points, neighbours, rows per block.

    Returns:
        indices [n, k] int32 and distances [n, k], ties to the lower index.
    """
    block = min(block, n)
    padded = -(-n // block) * block
    columns = jnp.arange(n, dtype=jnp.int32)

    def one_block(ids):
        ids = jnp.minimum(ids, n - 1)  # padding rows recompute the last row, dropped below
        rows = jnp.where(columns[None, :] == ids[:, None], jnp.inf, row_fn(ids))
        neg, idx = jax.lax.top_k(-rows, k)
        return idx, -neg

    idx, dist = jax.lax.map(one_block, jnp.arange(padded, dtype=jnp.int32).reshape(-1, block))
    return idx.reshape(padded, k)[:n], dist.reshape(padded, k)[:n]


def _neighbour_scales(dist: Array, scale_k: int, block: int) -> Array:
    """Distances [N, scale_k] from each point to its scale_k nearest others."""
    _, nn_dist = _dense_knn(lambda ids: dist[ids], dist.shape[0], scale_k, block)
    return nn_dist


@functools.partial(jax.jit, static_argnames=("k", "scale_k", "block"))
def _local_scaling(dist, *, k, scale_k, block):
    # sigma = 0 only for exact duplicates; the floor keeps the ratio finite there.
    sigma = jnp.maximum(_neighbour_scales(dist, scale_k, block)[:, -1], 1e-30)

    def rows(ids):
        return -jnp.expm1(-(dist[ids] ** 2) / (sigma[ids][:, None] * sigma[None, :]))

    return _dense_knn(rows, dist.shape[0], k, block)


@functools.partial(jax.jit, static_argnames=("k", "scale_k", "block"))
def _nicdm(dist, *, k, scale_k, block):
    mu = jnp.maximum(jnp.mean(_neighbour_scales(dist, scale_k, block), axis=1), 1e-30)

    def rows(ids):
        return dist[ids] / jnp.sqrt(mu[ids][:, None] * mu[None, :])

    return _dense_knn(rows, dist.shape[0], k, block)


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _mp_gaussian(dist, *, k, block):
    n = dist.shape[0]
    # Row moments over j != i: the diagonal is 0, so it only needs removing from the variance.
    mean = jnp.sum(dist, axis=1) / (n - 1)
    var = (jnp.sum((dist - mean[:, None]) ** 2, axis=1) - mean ** 2) / (n - 1)
    std = jnp.sqrt(jnp.maximum(var, 1e-30))

    def rows(ids):
        d = dist[ids]
        # log P(X > d) with X ~ N(mean_x, std_x): exact for near neighbours, where P ~ 1 and
        # 1 - P would round to 0 in float32 and tie every near neighbour.
        log_sf_x = jax.scipy.special.log_ndtr(-(d - mean[ids][:, None]) / std[ids][:, None])
        log_sf_y = jax.scipy.special.log_ndtr(-(d - mean[None, :]) / std[None, :])
        return -jnp.expm1(log_sf_x + log_sf_y)

    return _dense_knn(rows, n, k, block)


@functools.partial(jax.jit, static_argnames=("k", "num_candidates", "block"))
def _mp_empiric(dist, *, k, num_candidates, block):
    n = dist.shape[0]
    candidates, cand_dist = _dense_knn(lambda ids: dist[ids], n, num_candidates, block)
    rows_per_block = max(1, min(block, _MP_BLOCK_ELEMENTS // (num_candidates * n)))
    padded = -(-n // rows_per_block) * rows_per_block

    def one_block(ids):
        ids = jnp.minimum(ids, n - 1)
        d_xy = cand_dist[ids]                                        # [b, K]
        beyond_x = dist[ids][:, None, :] > d_xy[:, :, None]          # [b, K, n]
        beyond_y = dist[candidates[ids]] > d_xy[:, :, None]          # [b, K, n]
        # j = x and j = y never count: D_xx = 0 and D_xy are not > d_xy.
        shared = jnp.sum(beyond_x & beyond_y, axis=2).astype(jnp.float32)
        secondary = 1.0 - shared / (n - 2)
        # Candidates are sorted by primary distance and top_k keeps the lower position first,
        # so equal MP values (integer counts tie often) fall back to the primary order.
        neg, pos = jax.lax.top_k(-secondary, k)
        return jnp.take_along_axis(candidates[ids], pos, axis=1), -neg

    idx, sec = jax.lax.map(one_block,
                           jnp.arange(padded, dtype=jnp.int32).reshape(-1, rows_per_block))
    return idx.reshape(padded, k)[:n], sec.reshape(padded, k)[:n]


@functools.partial(jax.jit, static_argnames=("k", "scale_k", "block"))
def _csls(cos_dist, *, k, scale_k, block):
    # r_x = mean cosine similarity of x to its scale_k nearest neighbours.
    r = 1.0 - jnp.mean(_neighbour_scales(cos_dist, scale_k, block), axis=1)

    def rows(ids):
        cos = 1.0 - cos_dist[ids]
        return r[ids][:, None] + r[None, :] - 2.0 * cos

    return _dense_knn(rows, cos_dist.shape[0], k, block)


REDUCTIONS = Registry("hubness reduction")


def _prepare(x, k: int, metric: str, block_size: int, scale_k: Optional[int] = None):
    x = _as_points(x)
    _check_points(x, k, metric=metric, include_self=False)
    _check_block_size(block_size)
    scale_k = k if scale_k is None else scale_k
    if not 1 <= scale_k < x.shape[0]:
        raise ValueError(f"scale_k must be in [1, N - 1 = {x.shape[0] - 1}], got {scale_k}")
    return x, int(scale_k), int(min(block_size, x.shape[0]))


@REDUCTIONS.register("none")
def no_reduction(x, k: int, *, metric: str = "euclidean",
                 block_size: int = 1024) -> Tuple[Array, Array]:
    """The primary k-NN graph (`knn`), for comparison."""
    return knn(x, k, metric=metric, block_size=block_size)


@REDUCTIONS.register("mp_empiric")
def mutual_proximity_empiric(x, k: int, *, metric: str = "euclidean", block_size: int = 1024,
                             num_candidates: Optional[int] = None) -> Tuple[Array, Array]:
    """k-NN graph under empirical mutual proximity (Schnitzer, Flexer, Schedl, Widmer, JMLR 2012).

        MP(x, y) = #{ j != x, y : d(x, j) > d(x, y)  and  d(y, j) > d(x, y) } / (N - 2),
        d_MP(x, y) = 1 - MP(x, y):

    y is close to x in MP if few points are closer to x than y, *and* few are closer to y than x;
    a hub (close to everyone in d) is rarely the mutual choice. MP is evaluated for the
    `num_candidates` nearest neighbours of x under d (as in scikit-hubness's approximate
    reduction, Feldbauer et al. 2018) and the graph keeps the k of smallest d_MP; with
    num_candidates = N - 1 it is exact. Equal d_MP: the nearer under d first.

    Cost O(N^2 num_candidates); memory: the dense D (4 N^2 bytes) plus ~2^24 comparisons.

    Args:
        x: [N, d] points (N >= 3).
        k: neighbours kept.
        metric: primary distance, "euclidean" or "cosine".
        block_size: rows per block of the primary search.
        num_candidates: candidates per point, k <= num_candidates <= N - 1;
            default min(N - 1, max(10 k, 50)).

    Returns:
        indices [N, k] int32, d_MP [N, k].
    """
    x, _, block = _prepare(x, k, metric, block_size)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"mutual proximity needs N >= 3 points, got N = {n}")
    if num_candidates is None:
        num_candidates = min(n - 1, max(10 * k, 50))
    if not k <= num_candidates <= n - 1:
        raise ValueError(f"num_candidates must be in [k = {k}, N - 1 = {n - 1}], "
                         f"got {num_candidates}")
    dist = _dense_distances(x, cosine=metric == "cosine", block=block)
    return _mp_empiric(dist, k=k, num_candidates=int(num_candidates), block=block)


@REDUCTIONS.register("mp_gaussian")
def mutual_proximity_gaussian(x, k: int, *, metric: str = "euclidean",
                              block_size: int = 1024) -> Tuple[Array, Array]:
    """k-NN graph under Gaussian mutual proximity (independent marginals; Schnitzer et al. 2012).

        MP(x, y) = P(X > d_xy) P(Y > d_xy),   X ~ N(mu_x, s_x^2), Y ~ N(mu_y, s_y^2),
        d_MP(x, y) = 1 - MP(x, y),

    where mu_x, s_x are the mean and standard deviation of the distances from x to all other
    points. Products of log survival functions keep near neighbours apart in float32.
    Memory: the dense D (4 N^2 bytes) plus block_size x N.

    Args:
        x: [N, d] points; k: neighbours; metric: primary distance; block_size: rows per block.

    Returns:
        indices [N, k] int32, d_MP [N, k].
    """
    x, _, block = _prepare(x, k, metric, block_size)
    dist = _dense_distances(x, cosine=metric == "cosine", block=block)
    return _mp_gaussian(dist, k=k, block=block)


@REDUCTIONS.register("local_scaling")
def local_scaling(x, k: int, *, metric: str = "euclidean", block_size: int = 1024,
                  scale_k: Optional[int] = None) -> Tuple[Array, Array]:
    """k-NN graph under local scaling (Zelnik-Manor & Perona 2005; as used by Schnitzer 2012).

        LS(x, y) = 1 - exp(-d_xy^2 / (sigma_x sigma_y)),   sigma_x = d(x, its scale_k-th NN).

    Memory: the dense D (4 N^2 bytes) plus block_size x N.

    Args:
        x: [N, d] points; k: neighbours; metric: primary distance; block_size: rows per block.
        scale_k: neighbour rank of the local scale (default k).

    Returns:
        indices [N, k] int32, LS [N, k].
    """
    x, scale_k, block = _prepare(x, k, metric, block_size, scale_k)
    dist = _dense_distances(x, cosine=metric == "cosine", block=block)
    return _local_scaling(dist, k=k, scale_k=scale_k, block=block)


@REDUCTIONS.register("nicdm")
def nicdm(x, k: int, *, metric: str = "euclidean", block_size: int = 1024,
          scale_k: Optional[int] = None) -> Tuple[Array, Array]:
    """k-NN graph under the non-iterative contextual dissimilarity measure.

        NICDM(x, y) = d_xy / sqrt(mu_x mu_y),   mu_x = mean distance of x to its scale_k NN,

    the closed-form variant (Schnitzer et al. 2012) of Jegou et al.'s contextual dissimilarity
    measure (CVPR 2007). Memory: the dense D (4 N^2 bytes) plus block_size x N.

    Args:
        x: [N, d] points; k: neighbours; metric: primary distance; block_size: rows per block.
        scale_k: neighbourhood size of mu (default k).

    Returns:
        indices [N, k] int32, NICDM [N, k].
    """
    x, scale_k, block = _prepare(x, k, metric, block_size, scale_k)
    dist = _dense_distances(x, cosine=metric == "cosine", block=block)
    return _nicdm(dist, k=k, scale_k=scale_k, block=block)


@REDUCTIONS.register("csls")
def csls(x, k: int, *, metric: str = "cosine", block_size: int = 1024,
         scale_k: Optional[int] = None) -> Tuple[Array, Array]:
    """k-NN graph under cross-domain similarity local scaling (Conneau et al., ICLR 2018).

        CSLS(x, y) = 2 cos(x, y) - r_x - r_y,   r_x = mean cos(x, z) over the scale_k NN z of x,
        returned as the dissimilarity -CSLS(x, y) = r_x + r_y - 2 cos(x, y)

    (one set plays both languages). Always cosine: `metric` must be "cosine".
    Memory: the dense cosine distances (4 N^2 bytes) plus block_size x N.

    Args:
        x: [N, d] points; k: neighbours; block_size: rows per block.
        scale_k: neighbourhood size of r (default k; Conneau et al. use 10).

    Returns:
        indices [N, k] int32, -CSLS [N, k].
    """
    if metric != "cosine":
        raise ValueError(f"csls is defined on cosine similarity; metric must be 'cosine', "
                         f"got {metric!r}")
    x, scale_k, block = _prepare(x, k, metric, block_size, scale_k)
    dist = _dense_distances(x, cosine=True, block=block)
    return _csls(dist, k=k, scale_k=scale_k, block=block)


@REDUCTIONS.register("centering")
def centering(x, k: int, *, metric: str = "cosine",
              block_size: int = 1024) -> Tuple[Array, Array]:
    """Cosine k-NN graph of the centred data (Suzuki et al., EMNLP 2013).

        d(x, y) = 1 - cos(x - c, y - c),   c = (1/N) sum_i x_i:

    the data mean, where hubs gather, moves to the origin, where cosine ignores it. Blocked like
    `knn`: O(block_size x N) memory. `metric` must be "cosine".

    Args:
        x: [N, d] points; k: neighbours; block_size: rows per block.

    Returns:
        indices [N, k] int32, 1 - cos of the centred points [N, k].
    """
    if metric != "cosine":
        raise ValueError(f"centering is followed by cosine; metric must be 'cosine', got "
                         f"{metric!r}")
    x = _as_points(x)
    _check_points(x, k, metric="euclidean", include_self=False)
    return knn(x - jnp.mean(x, axis=0, keepdims=True), k, metric="cosine",
               block_size=block_size)


def reduce_and_report(x, k: int, method: str, *, metric: Optional[str] = None,
                      hub_size: float = 2.0, threshold: int = DEFAULT_HUB_THRESHOLD,
                      **params) -> Dict[str, float]:
    """Hubness of the k-NN graph after a reduction: `hubness_measures` of its N_k.

    Args:
        x: [N, d] points.
        k: neighbours.
        method: a name in REDUCTIONS ("none" gives the primary graph).
        metric: primary distance (default: the reduction's own default).
        hub_size, threshold: as in `hubness_measures`.
        **params: the reduction's own keyword arguments (block_size, scale_k, num_candidates).

    Returns:
        dict: {"method": method, **hubness_measures(...)}.
    """
    reduce = REDUCTIONS.get(method)
    if metric is not None:
        params["metric"] = metric
    x = _as_points(x)
    indices, _ = reduce(x, k, **params)
    nk = k_occurrence(indices, x.shape[0])
    return {"method": method, **hubness_measures(nk, k, x, hub_size=hub_size,
                                                 threshold=threshold)}


# ----------------------------------------------------------------------------------------------
# Hubness-prior latent selection (spec 07 section 3)


class HubSelection(NamedTuple):
    """Result of `hub_select`.

    latents: [M, dim] the selected latents z (not map_fn(z)).
    k_occurrence: [M] int32 their N_k within the pool they were drawn in.
    num_rounds: pools drawn.
    num_drawn: latents drawn in all (num_rounds x pool size).
    """
    latents: Array
    k_occurrence: Array
    num_rounds: int
    num_drawn: int


def hub_select(*, dim: Optional[int] = None, sample_fn: Optional[Callable] = None,
               pool: Optional[Array] = None, pool_size: int = 10000, k: int = 5,
               threshold: int = DEFAULT_HUB_THRESHOLD, strict: bool = True,
               map_fn: Optional[Callable[[Array], Array]] = None,
               num_wanted: Optional[int] = None, max_rounds: int = 100,
               metric: str = "euclidean", include_self: bool = False,
               block_size: int = 1000, key: Optional[Array] = None) -> HubSelection:
    """Latents with large hub values (the post's algorithm, spec 07 section 3.1).

        repeat: Z <- pool_size draws (N(0, I_dim) or sample_fn);
                N_k of each z among Z, in z space or in the space of map_fn(Z);
                keep z with N_k > threshold (N_k >= threshold with strict=False);
        until num_wanted are kept.

    Defaults are the post's (pool 10000, k = 5, t = 50, strict, self excluded, query chunks of
    1000). The paper's code counts in W = mapping(z) space with N_k >= 50 and a self-including
    graph: map_fn=mapping, strict=False, include_self=True.

    Args:
        dim: latent dimension for the default N(0, I) sampler.
        sample_fn: (key, n) -> [n, dim] latents, instead of N(0, I).
        pool: [P, dim] a fixed pool instead of sampling: one round, no key.
        pool_size: latents per pool.
        k: neighbourhood size.
        threshold, strict: keep N_k > threshold (strict) or N_k >= threshold.
        map_fn: [P, dim] -> [P, d'] the space where neighbours are counted (default: z).
        num_wanted: latents to return; pools are drawn until that many pass (None: one pool,
            all that pass).
        max_rounds: most pools drawn before giving up with an error.
        metric, include_self, block_size: as in `knn`.
        key: PRNG key (pool i uses fold_in(key, i)).

    Returns:
        HubSelection (latents [M, dim], their k_occurrence [M], num_rounds, num_drawn).
    """
    if pool is not None:
        if sample_fn is not None:
            raise ValueError("pass either `pool` or `sample_fn`, not both")
        pool = _as_points(pool, "pool")
        pool_size, max_rounds = pool.shape[0], 1
    else:
        if key is None:
            raise ValueError("hub_select draws pools: pass `key` (or a fixed `pool`)")
        if sample_fn is None:
            if dim is None:
                raise ValueError("pass `dim` for the default N(0, I) sampler (or `sample_fn`)")
            sample_fn = lambda pool_key, n: jax.random.normal(pool_key, (n, dim))  # noqa: E731
    if num_wanted is not None and num_wanted < 1:
        raise ValueError(f"num_wanted must be >= 1 or None, got {num_wanted}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    latents, counts, total, rounds = [], [], 0, 0
    while rounds < max_rounds:
        z = pool if pool is not None else sample_fn(jax.random.fold_in(key, rounds), pool_size)
        rounds += 1
        features = z if map_fn is None else map_fn(z)
        nk = k_occurrence_of(features, k, metric=metric, include_self=include_self,
                             block_size=block_size)
        keep = np.asarray(nk > threshold if strict else nk >= threshold)
        latents.append(z[keep])
        counts.append(nk[keep])
        total += int(keep.sum())
        if num_wanted is None or total >= num_wanted:
            break
    if num_wanted is not None and total < num_wanted:
        where = "the given pool" if pool is not None else f"{rounds} pools of {pool_size}"
        raise RuntimeError(
                f"hub_select kept {total} of the {num_wanted} latents wanted from {where} "
                f"(N_k {'>' if strict else '>='} {threshold}, k = {k}); raise max_rounds "
                f"or lower the threshold")
    latents, counts = jnp.concatenate(latents), jnp.concatenate(counts)
    if num_wanted is not None:
        latents, counts = latents[:num_wanted], counts[:num_wanted]
    return HubSelection(latents, counts, rounds, rounds * pool_size)


# ----------------------------------------------------------------------------------------------
# Norm-truncated Gaussian latents at a matched mean norm (comparison to the truncation trick)


def truncated_mean_norm(dim: int, radius) -> Array:
    """Mean norm of z ~ N(0, I_dim) conditioned on ||z|| <= radius (closed form).

        E[R | R <= r] = m_dim F_{dim+1}(r) / F_dim(r),
        m_dim = sqrt(2) Gamma((dim+1)/2) / Gamma(dim/2) = E[R],
        F_n(r) = P(chi^2_n <= r^2) = gammainc(n/2, r^2/2),

    from r f_dim(r) = m_dim f_{dim+1}(r) for the chi densities f_n.

    Args:
        dim: latent dimension.
        radius: [...] truncation radius r > 0.

    Returns:
        [...] the conditional mean norm.
    """
    r2 = jnp.square(jnp.asarray(radius, jnp.float32)) / 2.0
    m = jnp.sqrt(2.0) * jnp.exp(jax.scipy.special.gammaln((dim + 1) / 2.0)
                                - jax.scipy.special.gammaln(dim / 2.0))
    return m * (jax.scipy.special.gammainc((dim + 1) / 2.0, r2)
                / jax.scipy.special.gammainc(dim / 2.0, r2))


@functools.partial(jax.jit, static_argnames=("dim", "iterations"))
def _bisect_radius(target: Array, dim: int, iterations: int = 60) -> Array:
    hi = jnp.sqrt(jnp.float32(dim)) + 20.0

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = truncated_mean_norm(dim, mid) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, body, (jnp.float32(0.0), hi))
    return 0.5 * (lo + hi)


def truncation_radius(dim: int, target_mean_norm: float) -> float:
    """Radius r with E[||z|| : ||z|| <= r] = target for z ~ N(0, I_dim) (bisection, float32).

    Args:
        dim: latent dimension.
        target_mean_norm: in (0, E||z||).

    Returns:
        r as a Python float.
    """
    mean_norm = float(truncated_mean_norm(dim, jnp.sqrt(jnp.float32(dim)) + 20.0))
    if not 0.0 < target_mean_norm < mean_norm:
        raise ValueError(f"target_mean_norm must be in (0, E||z|| = {mean_norm:.4f}) for "
                         f"dim = {dim}, got {target_mean_norm}")
    return float(_bisect_radius(jnp.float32(target_mean_norm), dim))


@functools.partial(jax.jit, static_argnames=("n", "dim", "max_rounds"))
def _rejection_sample(radius, *, n, dim, max_rounds, key):
    def cond(state):
        _, count, rounds = state
        return (count < n) & (rounds < max_rounds)

    def body(state):
        buffer, count, rounds = state
        z = jax.random.normal(jax.random.fold_in(key, rounds), (n, dim))
        accept = jnp.linalg.norm(z, axis=1) <= radius
        slots = jnp.where(accept, count + jnp.cumsum(accept) - 1, n)  # n: dropped
        buffer = buffer.at[slots].set(z, mode="drop")
        return buffer, jnp.minimum(count + jnp.sum(accept), n), rounds + 1

    buffer, count, _ = jax.lax.while_loop(
            cond, body, (jnp.zeros((n, dim), jnp.float32), jnp.int32(0), jnp.int32(0)))
    return buffer, count


def truncated_normal_matched(n: int, dim: int, target_mean_norm: float, *,
                             max_rounds: int = 10000, key: Array) -> Array:
    """Norm-truncated Gaussian latents whose expected norm is `target_mean_norm`.

        z ~ N(0, I_dim) conditioned on ||z|| <= r,   r: E[||z|| : ||z|| <= r] = target
        (`truncation_radius`), by rejection of ||z|| > r.

    The truncation trick at a matched average norm, to compare with hub-selected latents
    (spec 07 section 6).

    Args:
        n: latents wanted.
        dim: latent dimension.
        target_mean_norm: in (0, E||z||).
        max_rounds: most batches of n proposals before giving up.
        key: PRNG key.

    Returns:
        [n, dim] float32 latents.
    """
    radius = truncation_radius(dim, target_mean_norm)
    accept_rate = float(jax.scipy.special.gammainc(dim / 2.0, radius ** 2 / 2.0))
    if accept_rate * max_rounds < 2.0:
        raise ValueError(f"target_mean_norm = {target_mean_norm} needs radius {radius:.4f}, "
                         f"accepted with probability {accept_rate:.2e}: rejection would take "
                         f"more than max_rounds = {max_rounds} batches")
    latents, count = _rejection_sample(jnp.float32(radius), n=n, dim=dim,
                                       max_rounds=max_rounds, key=key)
    if int(count) < n:
        raise RuntimeError(f"rejection sampling kept {int(count)} of {n} latents in "
                           f"{max_rounds} rounds (acceptance {accept_rate:.2e})")
    return latents
