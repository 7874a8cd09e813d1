"""Latents for sampling: the hubness-prior selection and, to compare with it, norm-truncated
Gaussian latents at a matched mean norm."""
import functools
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from udm.hubness._checks import _as_points
from udm.hubness.knn import k_occurrence_of
from udm.hubness.measures import DEFAULT_HUB_THRESHOLD

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Hubness-prior latent selection (docs/hubness.md §3)


class HubSelection(NamedTuple):
    """Result of `hub_select`.

    latents: [M, dim] the selected latents z (not map_fn(z)).
    k_occurrence: [M] int32 their N_k within the pool they were drawn in.
    num_rounds: pools drawn.
    num_drawn: latents drawn in all (num_rounds x pool size).
    num_passed: latents of all the pools drawn that passed the filter (M or more), so
        num_passed / num_drawn is the filter's pass rate.
    """
    latents: Array
    k_occurrence: Array
    num_rounds: int
    num_drawn: int
    num_passed: int = 0


def _pools(*, dim, sample_fn, pool, pool_size, max_rounds, key):
    """(sample_fn of round i, pool size, most rounds) of a fixed pool or of fresh draws."""
    if pool is not None:
        if sample_fn is not None:
            raise ValueError("pass either `pool` or `sample_fn`, not both")
        pool = _as_points(pool, "pool")
        return (lambda _: pool), pool.shape[0], 1
    if key is None:
        raise ValueError("hub_select draws pools: pass `key` (or a fixed `pool`)")
    if sample_fn is None:
        if dim is None:
            raise ValueError("pass `dim` for the default N(0, I) sampler (or `sample_fn`)")
        sample_fn = lambda pool_key, n: jax.random.normal(pool_key, (n, dim))  # noqa: E731
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    return (lambda i: sample_fn(jax.random.fold_in(key, i), pool_size)), pool_size, max_rounds


def _select(filters: dict, draw, *, num_wanted, max_rounds, map_fn, k, metric,
            include_self, block_size):
    """Draws pools (round i: draw(i)) until every filter (N_k -> keep mask) kept num_wanted.

    Each pool's N_k is counted once and shared by the filters. Returns {name: (latents list,
    N_k list, number passed)} and the rounds drawn.
    """
    kept = {name: ([], [], 0) for name in filters}
    rounds = 0
    while rounds < max_rounds:
        z = draw(rounds)
        rounds += 1
        nk = np.asarray(k_occurrence_of(z if map_fn is None else map_fn(z), k, metric=metric,
                                        include_self=include_self, block_size=block_size))
        z = np.asarray(z)  # masks select on the host: no compile per number kept
        for name, keep_fn in filters.items():
            keep = keep_fn(nk)
            latents, counts, passed = kept[name]
            kept[name] = latents + [z[keep]], counts + [nk[keep]], passed + int(keep.sum())
        if num_wanted is None or all(passed >= num_wanted for *_, passed in kept.values()):
            break
    return kept, rounds


def _selection(latents, counts, passed, rounds, pool_size, num_wanted) -> HubSelection:
    latents, counts = np.concatenate(latents), np.concatenate(counts)
    if num_wanted is not None:
        latents, counts = latents[:num_wanted], counts[:num_wanted]
    return HubSelection(jnp.asarray(latents), jnp.asarray(counts), rounds, rounds * pool_size,
                        passed)


def hub_select(*, dim: Optional[int] = None, sample_fn: Optional[Callable] = None,
               pool: Optional[Array] = None, pool_size: int = 10000, k: int = 5,
               threshold: int = DEFAULT_HUB_THRESHOLD, strict: bool = True,
               map_fn: Optional[Callable[[Array], Array]] = None,
               num_wanted: Optional[int] = None, max_rounds: int = 100,
               metric: str = "euclidean", include_self: bool = False,
               block_size: int = 1000, key: Optional[Array] = None) -> HubSelection:
    """Latents with large hub values (the post's algorithm, docs/hubness.md §3.1).

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
        HubSelection (latents [M, dim], their k_occurrence [M], num_rounds, num_drawn,
        num_passed).
    """
    if num_wanted is not None and num_wanted < 1:
        raise ValueError(f"num_wanted must be >= 1 or None, got {num_wanted}")
    draw, pool_size, max_rounds = _pools(dim=dim, sample_fn=sample_fn, pool=pool,
                                         pool_size=pool_size, max_rounds=max_rounds, key=key)
    keep_fn = (lambda nk: nk > threshold) if strict else (lambda nk: nk >= threshold)
    kept, rounds = _select({"hub": keep_fn}, draw, num_wanted=num_wanted, max_rounds=max_rounds,
                           map_fn=map_fn, k=k, metric=metric, include_self=include_self,
                           block_size=block_size)
    latents, counts, passed = kept["hub"]
    if num_wanted is not None and passed < num_wanted:
        where = "the given pool" if pool is not None else f"{rounds} pools of {pool_size}"
        raise RuntimeError(
                f"hub_select kept {passed} of the {num_wanted} latents wanted from {where} "
                f"(N_k {'>' if strict else '>='} {threshold}, k = {k}); raise max_rounds "
                f"or lower the threshold")
    return _selection(latents, counts, passed, rounds, pool_size, num_wanted)


def hub_antihub_select(*, dim: int, num_wanted: int, pool_size: int = 10000, k: int = 5,
                       threshold: int = DEFAULT_HUB_THRESHOLD, max_rounds: int = 100,
                       block_size: int = 1000, key: Array) -> Tuple[HubSelection, HubSelection]:
    """Hubs (N_k > threshold) and anti-hubs (N_k = 0) of the same N(0, I_dim) pools.

    `hub_select` in z space (docs/hubness.md §3.1, self excluded, Euclidean) that also keeps the
    anti-hubs, the contrast set of docs/hubness.md §7: pools are drawn until both sets hold
    num_wanted, so both selections report the same rounds and their pass rates are over the
    same pools. Pool i is N(0, I_dim) drawn with fold_in(key, i), as in `hub_select`.

    Args:
        dim: latent dimension.
        num_wanted: latents wanted in each set.
        pool_size, k, threshold, max_rounds, block_size: as in `hub_select`.
        key: PRNG key of the pools.

    Returns:
        (hubs, antihubs), each a HubSelection of num_wanted latents.
    """
    if num_wanted < 1:
        raise ValueError(f"num_wanted must be >= 1, got {num_wanted}")
    draw, pool_size, max_rounds = _pools(dim=dim, sample_fn=None, pool=None,
                                         pool_size=pool_size, max_rounds=max_rounds, key=key)
    filters = {"hub": lambda nk: nk > threshold, "antihub": lambda nk: nk == 0}
    kept, rounds = _select(filters, draw, num_wanted=num_wanted, max_rounds=max_rounds,
                           map_fn=None, k=k, metric="euclidean", include_self=False,
                           block_size=block_size)
    short = {name: passed for name, (_, _, passed) in kept.items() if passed < num_wanted}
    if short:
        raise RuntimeError(
                f"fewer than {num_wanted} latents in {rounds} pools of {pool_size} (kept "
                f"{short}; hubs: N_k > {threshold}, k = {k}): raise max_rounds or lower the "
                f"threshold")
    return tuple(_selection(*kept[name], rounds, pool_size, num_wanted)
                 for name in ("hub", "antihub"))


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
    (docs/hubness.md §6).

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
