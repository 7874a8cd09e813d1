"""Hubness measures of a k-occurrence vector: skewness, hub / anti-hub occurrence, Robin Hood,
Gini, correlation with the distance to the mean."""
import functools
from typing import Dict, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from udm.hubness._checks import _as_points
from udm.hubness.knn import k_occurrence_of

Array = jax.Array

# The documented threshold for "hub" in the table (frac N_k > 50) and in the latent filter (3.1).
DEFAULT_HUB_THRESHOLD = 50


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
    """Pearson correlation of N_k with the distance to the data mean (docs/hubness.md §2).

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
        threshold: for frac_gt_threshold = #{N_k > threshold} / N (docs/hubness.md: 50).

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
