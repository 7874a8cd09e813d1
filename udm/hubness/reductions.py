"""Hubness reduction: secondary distances, a corrected k-NN graph from each (mutual proximity,
local scaling, NICDM, CSLS, centering)."""
import functools
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from udm.hubness._checks import METRICS, _as_points, _check_block_size, _check_points
from udm.hubness.knn import _block_distances, _unit_rows, k_occurrence, knn
from udm.hubness.measures import DEFAULT_HUB_THRESHOLD, hubness_measures
from udm.registry import Registry

Array = jax.Array

# Elements of the [rows, candidates, N] comparison tensor that empirical mutual proximity holds
# at a time (2^24 booleans + floats: ~80 MB).
_MP_BLOCK_ELEMENTS = 2 ** 24


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
# The reductions defined on cosine similarity only (their `metric` must be "cosine").
COSINE_ONLY = frozenset({"csls", "centering"})


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


def reduction_reports(x, ks: Sequence[int], *, metrics: Sequence[str] = METRICS
                      ) -> List[Dict[str, float]]:
    """`reduce_and_report` for every k, metric and reduction that accepts the metric.

    The order: k, then metric, then "none" (the primary graph) followed by the other reductions
    in registry order; a COSINE_ONLY reduction is skipped for other metrics.

    Args:
        x: [N, d] points (e.g. embeddings).
        ks: neighbourhood sizes.
        metrics: primary distances, names of METRICS.

    Returns:
        One dict per graph: the `reduce_and_report` dict, its metric and the seconds it took.
    """
    reports = []
    for k in ks:
        for metric in metrics:
            for method in sorted(REDUCTIONS.names(), key=lambda m: m != "none"):
                if metric != "cosine" and method in COSINE_ONLY:
                    continue
                start = time.perf_counter()
                report = reduce_and_report(x, k, method, metric=metric)
                reports.append(dict(report, metric=metric, seconds=time.perf_counter() - start))
    return reports
