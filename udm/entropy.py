"""Entropy normalisation of categorical distributions and entropy-controlled sampling (docs/entropy_attention.md Part B).

A distribution p is mapped to p^gamma / sum_j p_j^gamma (N1), with gamma chosen so the result
has a prescribed entropy H*; this replaces top-k / top-p truncation when sampling categorical
predictors (kexue.fm/archives/8829). Pure jax; all logs natural, entropies in nats.
"""
from typing import NamedTuple, Optional, Tuple

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Largest / smallest overall exponent: keeps gamma * log p finite in float32 even when a target
# sits on the edge of the reachable range (where the exact exponent is 0 or infinity).
_EXPONENT_BOUND = 1e8
# The post's guard on the Newton denominator H^2 - sum p (log p)^2 = -Var_p[log p] (docs/entropy_attention.md B.6).
_DENOMINATOR_MAX = -1e-12
# Rows of `probs` must sum to one within this.
_SUM_TOLERANCE = 1e-4


class EntropyNormalized(NamedTuple):
    """Result of `entropy_normalize`; `...` is the batch shape (the input without `axis`).

    log_probs: [..., n] (at `axis`) normalised log-probabilities, -inf at zeros and masked entries.
    probs: [..., n] (at `axis`) exp(log_probs).
    exponent: [...] the overall gamma applied to the original distribution (the product of the
        per-iteration gammas).
    iterations: [...] int32, Newton updates performed for each row.
    entropy: [...] the entropy of `probs` in nats.
    """
    log_probs: Array
    probs: Array
    exponent: Array
    iterations: Array
    entropy: Array


class NewtonTrace(NamedTuple):
    """Per-iteration record of the post's Newton iteration (`newton_trace`).

    gammas: [..., K] the exponent applied at each iteration to the current distribution.
    entropies: [..., K] the entropy after each iteration.
    """
    gammas: Array
    entropies: Array


def _is_concrete(*arrays) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _row_log_probs(probs, logits, where, axis: int, normalize: bool) -> Array:
    """Log-probabilities with the category axis moved last; -inf at zeros and masked entries.

    With `normalize`, each row is shifted so its largest entry is exactly 0 instead of being
    normalised: (N1) ignores the shift, and gamma * log p then stays accurate in float32 near the
    mass of the distribution even for large gamma (a normalised row would carry an absolute
    rounding of ~gamma * ulp(log p_max)). Zero probabilities stay at -inf.
    """
    if (probs is None) == (logits is None):
        raise ValueError("pass exactly one of `probs` and `logits`")
    x = jnp.asarray(probs if probs is not None else logits)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)  # bfloat16 / float16 rows are solved in float32
    where = None if where is None else jnp.asarray(where, bool)
    return _log_probs_jit(x, where, axis=axis, from_probs=probs is not None, normalize=normalize)


@functools.partial(jax.jit, static_argnames=("axis", "from_probs", "normalize"))
def _log_probs_jit(x, where, *, axis, from_probs, normalize):
    x = jnp.moveaxis(x, axis, -1)
    valid = jnp.ones(x.shape, bool)
    if where is not None:
        valid = jnp.broadcast_to(jnp.moveaxis(where, axis, -1), x.shape)
    if from_probs:
        valid = valid & (x > 0)
        # The inner where keeps log() away from zeros so gradients stay finite.
        log_p = jnp.where(valid, jnp.log(jnp.where(valid, x, 1.0)), -jnp.inf)
        if not normalize:
            return log_p
    else:
        log_p = jnp.where(valid, x, -jnp.inf)
        if not normalize:
            return log_p - jax.nn.logsumexp(log_p, axis=-1, keepdims=True)
    # The shift is a constant for gradients too: (N1) does not depend on it.
    return log_p - jax.lax.stop_gradient(jnp.max(log_p, axis=-1, keepdims=True))


def entropy(probs: Optional[Array] = None, *, logits: Optional[Array] = None,
            where: Optional[Array] = None, axis: int = -1) -> Array:
    """Shannon entropy in nats of categorical distributions, with 0 log 0 = 0.

        H = -sum_i p_i log p_i,        p = probs, or softmax(logits) over the valid entries.

    Args:
        probs: [..., n] probabilities (used as given, not renormalised).
        logits: [..., n] unnormalised log-probabilities (instead of `probs`).
        where: boolean mask broadcastable to [..., n]; False entries have zero probability.
        axis: the category axis.

    Returns:
        [...] the entropy of each row.
    """
    log_p = _row_log_probs(probs, logits, where, axis, normalize=False)
    support = log_p > -jnp.inf
    log_p = jnp.where(support, log_p, 0.0)
    return -jnp.sum(jnp.where(support, jnp.exp(log_p) * log_p, 0.0), axis=-1)


def _stats(log_p: Array, support: Array, exponent: Array) -> Tuple[Array, Array, Array]:
    """One row's transform (N1) in log space, its entropy (N2) and Var_q[log q].

        log q = gamma log p - logsumexp(gamma log p),  H = -sum q log q,
        H^2 - sum q (log q)^2 = -sum q (log q + H)^2.

    The variance is summed centred: the uncentred difference cancels badly in float32 when
    H ~ 10 nats. Rows arrive shifted so max log p = 0 (`_row_log_probs`), hence max gamma log p
    = 0 and the sum of exponentials needs no max subtraction: one exp per entry.

    Args:
        log_p: [n] log-probabilities up to a constant, with maximum exactly 0 over the support;
            finite (any value) outside it.
        support: [n] bool, entries with nonzero probability.
        exponent: [] gamma.

    Returns:
        log_q: [n] (meaningless outside the support), H: [], Var_q[log q]: [].
    """
    z = exponent * log_p
    unnormalized = jnp.where(support, jnp.exp(z), 0.0)
    total = jnp.sum(unnormalized)
    log_q = z - jnp.log(total)
    q = unnormalized / total
    h = -jnp.sum(q * log_q)
    return log_q, h, jnp.sum(q * jnp.square(log_q + h))


class _State(NamedTuple):
    exponent: Array
    lower: Array
    upper: Array
    entropy: Array
    variance: Array
    iterations: Array
    stalled: Array


def _newton_update(state: _State, log_p, support, target, gamma_clip) -> _State:
    """One Newton step of docs/entropy_attention.md B.4 on the current distribution q = p^Gamma / sum p^Gamma.

        gamma = 1 + (H* - H) / (H^2 - sum q (log q)^2),     Gamma <- Gamma * gamma.

    Because (p^Gamma)^gamma = p^(Gamma gamma), this is the post's iteration written on the
    original p (no rounding drift from re-powering), and it is Newton's method on H(Gamma).
    Our safeguard (not in the post): H decreases in Gamma, so each evaluation shrinks a bracket
    around the root; a step leaving the bracket is replaced by its geometric midpoint. Newton
    overshoots on this curve only far from the root (it never does in the reference run).
    """
    denominator = jnp.minimum(-state.variance, _DENOMINATOR_MAX)
    gamma = jnp.clip(1.0 + (target - state.entropy) / denominator, *gamma_clip)
    too_flat = state.entropy > target
    lower = jnp.where(too_flat, state.exponent, state.lower)
    upper = jnp.where(too_flat, state.upper, state.exponent)
    proposal = state.exponent * gamma
    inside = (proposal > lower) & (proposal < upper)
    exponent = jnp.where(inside, proposal, jnp.sqrt(lower * upper))
    _, h, v = _stats(log_p, support, exponent)
    # Float rounding of H (~eps H per sum) can put |H - H*| <= tol out of reach (float32, large
    # n). Within that noise floor a Newton step that fails to halve the residual means the
    # iteration has stopped converging, so the row stops rather than spinning to max_iter.
    floor = 64 * jnp.finfo(h.dtype).eps * jnp.maximum(1.0, jnp.abs(target))
    residual = jnp.abs(h - target)
    stalled = (residual < floor) & (residual > 0.5 * jnp.abs(state.entropy - target))
    return _State(exponent, lower, upper, h, v, state.iterations + 1, stalled)


def _init_state(log_p, support) -> _State:
    one = jnp.ones((), log_p.dtype)
    _, h, v = _stats(log_p, support, one)
    return _State(one, one / _EXPONENT_BOUND, one * _EXPONENT_BOUND, h, v,
                  jnp.zeros((), jnp.int32), jnp.zeros((), bool))


@jax.jit
def _reachable_range(log_p: Array) -> Tuple[Array, Array]:
    """Entropies reachable by (N1) for gamma in [0, inf]: [log #(ties at the max), log #support].

    Args:
        log_p: [..., n] log-probabilities, -inf outside the support.

    Returns:
        ([...], [...]) the lowest and highest reachable entropy; equal for a uniform row.
    """
    support = log_p > -jnp.inf
    ties = log_p == jnp.max(log_p, axis=-1, keepdims=True)
    n_support = jnp.sum(support, axis=-1).astype(log_p.dtype)
    n_ties = jnp.sum(ties & support, axis=-1).astype(log_p.dtype)
    return jnp.log(n_ties), jnp.log(n_support)


def _check_concrete(log_p, target) -> None:
    """Eager input checks (docs/entropy_attention.md B.6): support non-empty, target reachable."""
    log_p = np.asarray(log_p)
    target = np.asarray(target, np.float64)
    n = log_p.shape[-1]
    n_support = np.sum(log_p > -np.inf, axis=-1)
    if np.any(n_support == 0):
        row = tuple(int(i) for i in np.argwhere(n_support == 0)[0])
        raise ValueError(f"row {row} has no entry with nonzero probability")
    h_min, h_max = (np.asarray(h, np.float64) for h in _reachable_range(jnp.asarray(log_p)))
    # Slack for the rounding of a float32 target such as log(n) itself.
    slack = 1e-6 * (1.0 + h_max)
    bad = (target < h_min - slack) | (target > h_max + slack)
    if np.any(bad):
        row = tuple(int(i) for i in np.argwhere(bad)[0])
        k, lo, hi, t = int(n_support[row]), h_min[row], h_max[row], target[row]
        if lo == hi:
            raise ValueError(
                    f"row {row} is uniform over its {k} nonzero entries, so every power "
                    f"transform leaves it unchanged: target_entropy {t:.6g} is unreachable, "
                    f"only log {k} = {hi:.6g} is")
        raise ValueError(
                f"target_entropy {t:.6g} at row {row} is outside the reachable range "
                f"[{lo:.6g}, log {k} = {hi:.6g}] for a row of {n} entries with {k} nonzero "
                f"(the lower end is log of the number of entries tied at the maximum)")


def sum_tolerance(dtype) -> float:
    """How far from one a row of probabilities of `dtype` may sum: _SUM_TOLERANCE, or four
    units of the dtype's rounding where that is coarser (bfloat16 0.031, float16 0.0039)."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        return _SUM_TOLERANCE
    return max(_SUM_TOLERANCE, 4.0 * float(jnp.finfo(dtype).eps))


def _valid(values: np.ndarray, where, axis) -> np.ndarray:
    """bool, True at the entries `where` keeps (all of them without a mask), category axis last."""
    if where is None:
        return np.ones(values.shape, bool)
    return np.broadcast_to(np.moveaxis(np.asarray(where, bool), axis, -1), values.shape)


def _first_row(bad: np.ndarray) -> tuple:
    return tuple(int(i) for i in np.argwhere(bad)[0])


def _check_finite(target_entropy, probs, logits, where, axis) -> None:
    """Eager: NaN / inf named where they are (probs: any; logits: NaN or +inf, since -inf is a
    zero probability; the target: any), instead of being read as zeros or giving NaN rows."""
    target = np.asarray(target_entropy, np.float64)
    if not np.all(np.isfinite(target)):
        bad = target[~np.isfinite(target)].flat[0]
        raise ValueError(f"target_entropy must be finite, got {bad}")
    name, x = ("probs", probs) if probs is not None else ("logits", logits)
    values = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    bad = (np.isnan(values) | (np.isinf(values) if name == "probs" else values == np.inf))
    bad &= _valid(values, where, axis)
    if np.any(bad):
        row = _first_row(bad.any(axis=-1))
        what = ", ".join(sorted({"NaN" if np.isnan(v) else str(v) for v in values[row][bad[row]]}))
        raise ValueError(f"{name} contain {what} in row {row}; "
                         + ("probabilities must be finite" if name == "probs" else
                            "logits must be finite or -inf (zero probability)"))


def _check_sums(probs, where, axis) -> None:
    tolerance = sum_tolerance(jnp.asarray(probs).dtype)
    p = np.moveaxis(np.asarray(probs, np.float64), axis, -1)
    if np.any(p < 0):
        raise ValueError("probs must be non-negative")
    p = np.where(_valid(p, where, axis), p, 0.0)
    sums = np.sum(p, axis=-1)
    bad = np.abs(sums - 1.0) > tolerance
    if np.any(bad):
        row = _first_row(bad)
        raise ValueError(f"rows of probs must sum to one (within {tolerance:g} for "
                         f"{jnp.asarray(probs).dtype}) over the valid entries; row {row} sums "
                         f"to {sums[row]:.8g}")


def _prepare(target_entropy, probs, logits, where, axis):
    """Shared front end: flattened [B, n] log-probs, [B] targets, eager checks when concrete."""
    x = probs if probs is not None else logits
    if x is not None and _is_concrete(x, where, target_entropy):
        _check_finite(target_entropy, probs, logits, where, axis)
    if probs is not None and _is_concrete(probs, where):
        _check_sums(probs, where, axis)
    log_p = _row_log_probs(probs, logits, where, axis, normalize=True)
    batch_shape = log_p.shape[:-1]
    target = jnp.broadcast_to(jnp.asarray(target_entropy, log_p.dtype), batch_shape)
    if _is_concrete(log_p, target):
        _check_concrete(log_p, target)
    # Under jit the checks above cannot run: clip to the reachable range instead (a uniform row's
    # range is one point, its own entropy, so it converges at iteration 0 and stays unchanged).
    h_min, h_max = _reachable_range(log_p)
    target = jnp.clip(target, h_min, h_max)
    n = log_p.shape[-1]
    return log_p.reshape(-1, n), target.reshape(-1), batch_shape


def _normalize_row(log_p, target, *, tol, max_iter, method, gamma_clip):
    """entropy_normalize for one row: log_p [n] (-inf outside the support), target []."""
    support = log_p > -jnp.inf
    log_p = jnp.where(support, log_p, 0.0)
    uniform = jnp.max(jnp.where(support, log_p, -jnp.inf)) == jnp.min(
            jnp.where(support, log_p, jnp.inf))
    if method == "one_step":
        # (N3): one gamma from the expansion at gamma = 1; differentiable as written.
        state = _init_state(log_p, support)
        step = _newton_update(state, log_p, support, target, gamma_clip)
        exponent = jnp.where(uniform, state.exponent, step.exponent)
        iterations = jnp.where(uniform, 0, 1).astype(jnp.int32)
    elif method == "newton":
        # The solve runs without gradient (reverse mode cannot go through while_loop); the
        # gradient is put back by the implicit function theorem below.
        frozen_log_p, frozen_target = jax.lax.stop_gradient((log_p, target))

        def active(state):
            return ((jnp.abs(state.entropy - frozen_target) > tol)
                    & (state.iterations < max_iter) & ~uniform & ~state.stalled)

        state = jax.lax.while_loop(
                active,
                lambda s: _newton_update(s, frozen_log_p, support, frozen_target, gamma_clip),
                _init_state(frozen_log_p, support))
        solved = state.exponent
        # H(Gamma; p) = H* defines Gamma(p, H*), so dGamma = (dH* - dH|_Gamma) / (dH/dGamma) with
        # dH/dGamma = -Var_q[log q] / Gamma. The term below is zero in value and carries exactly
        # that gradient: solving without gradient and then correcting is exact at the root.
        _, h, v = _stats(log_p, support, solved)
        residual = target - h
        slope = jnp.minimum(-v, _DENOMINATOR_MAX) / solved
        exponent = solved + (residual - jax.lax.stop_gradient(residual)) / jax.lax.stop_gradient(
                slope)
        iterations = state.iterations
    else:
        raise ValueError(f"method must be 'newton' or 'one_step', got {method!r}")
    log_q, h, _ = _stats(log_p, support, exponent)
    return jnp.where(support, log_q, -jnp.inf), exponent, iterations, h


@functools.partial(jax.jit, static_argnames=("tol", "max_iter", "method", "gamma_clip"))
def _normalize_rows(log_p, target, *, tol, max_iter, method, gamma_clip):
    """_normalize_row over [B, n] rows, compiled once per shape (eager calls stay fast)."""
    return jax.vmap(functools.partial(_normalize_row, tol=tol, max_iter=max_iter, method=method,
                                      gamma_clip=gamma_clip))(log_p, target)


def entropy_normalize(target_entropy, *, probs: Optional[Array] = None,
                      logits: Optional[Array] = None, where: Optional[Array] = None,
                      axis: int = -1, tol: float = 1e-6, max_iter: int = 20,
                      method: str = "newton",
                      gamma_clip: Tuple[float, float] = (1e-3, 1e3)) -> EntropyNormalized:
    """Entropy normalisation: raise each row to the power gamma that gives it entropy H*.

        p~_i = p_i^gamma / sum_j p_j^gamma  with  H(p~) = H*                                (N1)
        repeat: gamma = 1 + (H* - H) / (H^2 - sum p (log p)^2),  p <- p^gamma / sum p^gamma (B.4)

    Works in log space. "newton" repeats the post's step until |H - H*| <= tol or max_iter
    updates (a `lax.while_loop`; converged rows stop changing), or earlier when float rounding
    of H makes tol unreachable (residual within 64 eps max(1, H*) and no longer halving per
    step: float32 rows with n ~ 1e4..1e5 may end at ~1e-6..2e-6 nats), each gamma clipped to
    `gamma_clip`, the denominator clamped to <= -1e-12, steps kept inside a bracket of the root
    (our safeguard; see `_newton_update`). "one_step" takes the single gamma of the expansion
    (N3) at gamma = 1. Zeros and masked entries stay at zero. Order is preserved.

    Gradients (w.r.t. probs/logits and target_entropy) for "newton" are those of the exact
    root, by the implicit function theorem, not of the truncated iteration; "one_step" is
    differentiated as written. Both work under jit, vmap and grad.

    Errors: with concrete inputs, raises ValueError for NaN or inf in `probs`, NaN or +inf in
    `logits` (-inf is a zero probability), a non-finite target, rows of `probs` not summing to
    one (within 1e-4, or 4 eps of a coarser dtype: `sum_tolerance`) or with negative entries, rows without support, and targets outside the
    reachable range [log #(entries tied at the max), log #(nonzero entries)] (a uniform row's
    range is the single point log #support). Under jit nothing can be raised: the target is
    clipped to that range, so a uniform row comes back unchanged with exponent 1, and the
    overall exponent stays in [1e-8, 1e8] so nothing becomes NaN; a row with no support at all
    gives NaN.

    Args:
        target_entropy: H* in nats, scalar or broadcastable to the batch shape [...].
        probs: [..., n] probabilities (rows sum to one over valid entries).
        logits: [..., n] unnormalised log-probabilities (instead of `probs`).
        where: boolean mask broadcastable to [..., n]; False entries have zero probability.
        axis: the category axis.
        tol: convergence tolerance on |H - H*| in nats.
        max_iter: cap on Newton updates per row.
        method: "newton" or "one_step".
        gamma_clip: (low, high) bounds on each per-iteration gamma.

    Returns:
        EntropyNormalized with log_probs, probs [..., n]; exponent, iterations, entropy [...].
    """
    log_p, target, batch_shape = _prepare(target_entropy, probs, logits, where, axis)
    log_q, exponent, iterations, h = _normalize_rows(log_p, target, tol=tol, max_iter=max_iter,
                                                     method=method, gamma_clip=tuple(gamma_clip))
    log_q = jnp.moveaxis(log_q.reshape(*batch_shape, -1), -1, axis)
    # A low-precision input (solved in float32) gets its probabilities back in its own dtype.
    in_dtype = jnp.asarray(probs if probs is not None else logits).dtype
    out_dtype = in_dtype if jnp.issubdtype(in_dtype, jnp.floating) else log_q.dtype
    return EntropyNormalized(
            log_probs=log_q.astype(out_dtype), probs=jnp.exp(log_q).astype(out_dtype),
            exponent=exponent.reshape(batch_shape), iterations=iterations.reshape(batch_shape),
            entropy=h.reshape(batch_shape))


def newton_trace(target_entropy, *, probs: Optional[Array] = None,
                 logits: Optional[Array] = None, where: Optional[Array] = None,
                 axis: int = -1, num_iter: int = 5,
                 gamma_clip: Tuple[float, float] = (1e-3, 1e3)) -> NewtonTrace:
    """The post's iteration (B.4) run exactly `num_iter` times, recording every gamma and H.

        gamma_k = 1 + (H* - H_k) / (H_k^2 - sum q_k (log q_k)^2),  q_{k+1} = q_k^gamma_k / Z

    The same update as `entropy_normalize` without the stopping test (a uniform row is left
    alone); the product of the gammas is the overall exponent. For checking against the post.

    Args:
        target_entropy: H*, scalar or broadcastable to the batch shape [...].
        probs, logits, where, axis, gamma_clip: as in `entropy_normalize`.
        num_iter: K, the number of iterations.

    Returns:
        NewtonTrace with gammas and entropies [..., K].
    """
    log_p, target, batch_shape = _prepare(target_entropy, probs, logits, where, axis)

    def row(log_p, target):
        support = log_p > -jnp.inf
        log_p = jnp.where(support, log_p, 0.0)
        uniform = jnp.max(jnp.where(support, log_p, -jnp.inf)) == jnp.min(
                jnp.where(support, log_p, jnp.inf))

        def body(state, _):
            new = _newton_update(state, log_p, support, target, gamma_clip)
            new = jax.tree.map(lambda a, b: jnp.where(uniform, a, b), state, new)
            return new, (new.exponent / state.exponent, new.entropy)

        _, (gammas, entropies) = jax.lax.scan(body, _init_state(log_p, support), None,
                                              length=num_iter)
        return gammas, entropies

    gammas, entropies = jax.vmap(row)(log_p, target)
    return NewtonTrace(gammas.reshape(*batch_shape, num_iter),
                       entropies.reshape(*batch_shape, num_iter))


def sample_with_entropy(logits: Array, target_entropy, *, axis: int = -1,
                        where: Optional[Array] = None, key: Array) -> Array:
    """Draws one category per row after entropy normalisation (the post's top-k/top-p substitute).

        x ~ Categorical(p~),   p~ = softmax(gamma z) with H(p~) = H*   (N1, B.5)

    Args:
        logits: [..., n] unnormalised log-probabilities z.
        target_entropy: H* in nats, scalar or broadcastable to [...].
        axis: the category axis.
        where: boolean mask broadcastable to [..., n]; False entries are never drawn.
        key: PRNG key.

    Returns:
        [...] int32 category indices.
    """
    normalized = entropy_normalize(target_entropy, logits=logits, where=where, axis=axis)
    return jax.random.categorical(key, normalized.log_probs, axis=axis)
