"""Time grids of every sampler: rows (t, s) from the top step down (docs/time_grids.md).

Discrete time: an increasing sub-sequence tau_1 < ... < tau_K = T of {1..T} (docs/ddpm_ddim.md §2.4),
as rows [[tau_K, tau_{K-1}], ..., [tau_1, 0]] of int32. Continuous time: K + 1 decreasing float32
times from t = 1 down to t_min, as rows [[1, t_{K-1}], ..., [t_1, t_min]].

A spacing (the `SPACINGS` registry) says how the K steps are placed: "uniform" and "quadratic"
in t, diffusers' "leading" and "linspace" (discrete time only), "karras" (EDM's rho-spacing of
sigma = beta_bar / alpha_bar) and "logsnr" (uniform in lambda = log(alpha_bar / beta_bar)). The
last two read the process's marginal, so every spacing takes the process.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from udm.registry import Registry

Array = Any


class Spacing(NamedTuple):
    """A registered spacing: its discrete-time and continuous-time rules (None: not defined).

    discrete(process, num_timesteps T, K, rho) -> K strictly increasing ints in [1, T], the last T;
      `process` is None when only T is known (`discrete_time_grid(T, K)`), which the spacings
      that read the marginal refuse.
    continuous(process, K, rho) -> K + 1 strictly decreasing floats, 1 first, t_min last.
    """
    discrete: Optional[Callable]
    continuous: Optional[Callable]


SPACINGS = Registry("time spacing")


# --- shared maths ------------------------------------------------------------------------------

def log_snr(process, t) -> np.ndarray:
    """lambda_t = log(alpha_bar_t / beta_bar_t) (float64 numpy; -inf where alpha_bar_t = 0)."""
    with jax.ensure_compile_time_eval():
        alpha_bar, beta_bar = process.marginal(jnp.asarray(t))
        alpha_bar, beta_bar = np.asarray(alpha_bar, np.float64), np.asarray(beta_bar, np.float64)
    with np.errstate(divide="ignore"):
        return np.log(alpha_bar) - np.log(beta_bar)


def karras_log_snr(lam_noisy: float, lam_clean: float, num: int, rho: float) -> np.ndarray:
    """`num` values of lambda = -log sigma, sigma_i = (sigma_max^(1/rho) + i/(num-1)
    (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..num-1 (docs/time_grids.md (G3)).

    lam_noisy < lam_clean are the log-SNRs of the ends, sigma_max = exp(-lam_noisy) and
    sigma_min = exp(-lam_clean); the values run from the noisy end to the clean one.
    """
    u = np.linspace(0.0, 1.0, num)
    # sigma^(1/rho) = exp(-lambda / rho), interpolated linearly, then raised back to rho.
    root = np.exp(-lam_noisy / rho) + u * (np.exp(-lam_clean / rho) - np.exp(-lam_noisy / rho))
    return -rho * np.log(root)


def _strictly_increasing(tau: np.ndarray, num_timesteps: int) -> np.ndarray:
    """The closest strictly increasing sequence in [1, T] ending at T, keeping K entries.

    Rounding can put several steps on one integer; each is pushed up past its predecessor, then
    down below its successor, with the top fixed at T (possible since K <= T).
    """
    tau = np.array(tau, np.int64)
    k = tau.shape[0]
    tau[-1] = num_timesteps
    for j in range(k):
        tau[j] = max(tau[j], j + 1, tau[j - 1] + 1 if j else 1)
    tau[-1] = num_timesteps
    for j in range(k - 2, -1, -1):
        tau[j] = min(tau[j], tau[j + 1] - 1)
    return tau.astype(np.int32)


def nearest_steps(process, num_timesteps: int, lam_targets: np.ndarray) -> np.ndarray:
    """For each target log-SNR, the step t in [1, T] whose lambda_t is nearest."""
    lam = log_snr(process, np.arange(1, num_timesteps + 1))
    return 1 + np.argmin(np.abs(lam[None, :] - lam_targets[:, None]), axis=1)


def times_of_log_snr(process, lam_targets, *, t_lo: float, t_hi: float = 1.0,
                     iterations: int = 40) -> np.ndarray:
    """Continuous times t in [t_lo, t_hi] with lambda(t) = lam_targets, by bisection.

    lambda(t) decreases in t for every process of udm.processes.sde; targets outside
    [lambda(t_hi), lambda(t_lo)] land on the nearer end. 40 halvings of [t_lo, t_hi] resolve t
    below float32's spacing at t_min = 1e-5.
    """
    lam_targets = np.atleast_1d(np.asarray(lam_targets, np.float64))
    n = lam_targets.shape[0]
    # Pad to a fixed size: JAX compiles each eager op once per shape, not once per K.
    size = max(256, 1 << (n - 1).bit_length())
    padded = np.concatenate([lam_targets, np.full(size - n, lam_targets[-1])])
    lo, hi = np.full(size, t_lo, np.float64), np.full(size, t_hi, np.float64)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        above = log_snr(process, mid.astype(np.float32)) > padded  # still too clean: go later
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return (0.5 * (lo + hi))[:n]


def _check_marginal(process, name: str) -> None:
    if process is None or not process.capabilities.gaussian_marginals:
        raise ValueError(f"spacing {name!r} reads log(alpha_bar / beta_bar): it needs a process "
                         f"with Gaussian marginals (time_grid(process, ...))")


def _finite_top(process, num_timesteps: int) -> int:
    """T, or T - 1 when alpha_bar_T = 0 (zero terminal SNR: lambda_T = -inf, sigma_T = inf)."""
    top = log_snr(process, num_timesteps)
    return num_timesteps if np.isfinite(top) else num_timesteps - 1


def _continuous_log_snr_ends(process) -> np.ndarray:
    """(lambda(1), lambda(t_min)); where lambda(1) = -inf (alpha_bar(1) = 0: the flow-matching
    path) the rule runs from lambda(1 - t_min) instead and the top time is then put back at 1,
    as in discrete time (`_finite_top`)."""
    lam = log_snr(process, np.array([1.0, process.t_min], np.float32))
    if not np.isfinite(lam[0]):
        lam[0] = log_snr(process, np.array([1.0 - process.t_min], np.float32))[0]
    return lam


def _continuous_from_log_snr(process, lam: np.ndarray) -> np.ndarray:
    times = times_of_log_snr(process, lam, t_lo=process.t_min)
    times[0], times[-1] = 1.0, process.t_min  # the ends exactly
    return times


# --- the spacings ------------------------------------------------------------------------------

def _uniform_discrete(process, num_timesteps, num_steps, rho):
    """tau_i = round(i T / K) (docs/time_grids.md G1); K = T gives the full chain 1..T.

    This is diffusers' "trailing" spacing, shifted to udm's 1-based steps."""
    del process, rho
    i = np.arange(1, num_steps + 1)
    return np.round(i * num_timesteps / num_steps).astype(np.int32)


def _uniform_continuous(process, num_steps, rho):
    del rho
    # jnp's float32 linspace, as the solvers have always used (np's differs in the last bits).
    return np.asarray(jnp.linspace(1.0, process.t_min, num_steps + 1, dtype=jnp.float32))


def _quadratic_discrete(process, num_timesteps, num_steps, rho):
    """tau_i ~ T (i / K)^2, denser near t = 0 (DDIM paper), kept strictly increasing
    (docs/time_grids.md G1)."""
    del process, rho
    i = np.arange(1, num_steps + 1)
    tau = np.round(num_timesteps * (i / num_steps) ** 2).astype(np.int64)
    # Small i collide after rounding; push each up to at least its predecessor + 1 and keep
    # the top at T (possible because K <= T).
    tau = np.maximum(tau, i)
    for j in range(1, num_steps):
        tau[j] = max(tau[j], tau[j - 1] + 1)
    return tau.astype(np.int32)


def _quadratic_continuous(process, num_steps, rho):
    """t_i = t_min + (1 - t_min) (i / K)^2, i = K..0 (docs/time_grids.md G1)."""
    del rho
    u = np.arange(num_steps, -1, -1) / num_steps
    return process.t_min + (1.0 - process.t_min) * u ** 2


def _leading_discrete(process, num_timesteps, num_steps, rho):
    """diffusers' "leading" (docs/time_grids.md G2): its 0-based steps j r, r = T // K, are
    udm's j r + 1; the top one, (K - 1) r + 1 < T in general, is moved to T so that sampling
    starts from the prior."""
    del process, rho
    tau = np.arange(num_steps) * (num_timesteps // num_steps) + 1
    tau[-1] = num_timesteps
    return tau.astype(np.int32)


def _linspace_discrete(process, num_timesteps, num_steps, rho):
    """diffusers' "linspace" (docs/time_grids.md G2): round(linspace(0, T - 1, K)) + 1, which
    ends at T (K = 1: T)."""
    del process, rho
    if num_steps == 1:
        return np.array([num_timesteps], np.int32)
    return (np.round(np.linspace(0, num_timesteps - 1, num_steps)) + 1).astype(np.int32)


def _karras_discrete(process, num_timesteps, num_steps, rho):
    """EDM's rho-spacing of sigma between steps 1 and T, each mapped to the nearest step
    (docs/time_grids.md G3)."""
    _check_marginal(process, "karras")
    if num_steps == 1:
        return np.array([num_timesteps], np.int32)
    top = _finite_top(process, num_timesteps)
    lam_ends = log_snr(process, np.array([top, 1]))
    lam = karras_log_snr(lam_ends[0], lam_ends[1], num_steps, rho)[::-1]
    return _strictly_increasing(nearest_steps(process, num_timesteps, lam), num_timesteps)


def _karras_continuous(process, num_steps, rho):
    """K + 1 rho-spaced sigmas from sigma(1) to sigma(t_min), mapped to times by bisection
    (docs/time_grids.md G3)."""
    lam_ends = _continuous_log_snr_ends(process)
    return _continuous_from_log_snr(process, karras_log_snr(lam_ends[0], lam_ends[1],
                                                            num_steps + 1, rho))


def _logsnr_discrete(process, num_timesteps, num_steps, rho):
    """lambda uniform between lambda_1 and lambda_T, each mapped to the nearest step
    (docs/time_grids.md G4)."""
    del rho
    _check_marginal(process, "logsnr")
    if num_steps == 1:
        return np.array([num_timesteps], np.int32)
    top = _finite_top(process, num_timesteps)
    lam_ends = log_snr(process, np.array([1, top]))
    lam = np.linspace(lam_ends[0], lam_ends[1], num_steps)
    return _strictly_increasing(nearest_steps(process, num_timesteps, lam), num_timesteps)


def _logsnr_continuous(process, num_steps, rho):
    """lambda uniform between lambda(1) and lambda(t_min), mapped to times by bisection
    (docs/time_grids.md G4)."""
    del rho
    lam_ends = _continuous_log_snr_ends(process)
    return _continuous_from_log_snr(process, np.linspace(lam_ends[0], lam_ends[1], num_steps + 1))


SPACINGS.register("uniform")(Spacing(_uniform_discrete, _uniform_continuous))
SPACINGS.register("quadratic")(Spacing(_quadratic_discrete, _quadratic_continuous))
SPACINGS.register("leading")(Spacing(_leading_discrete, None))
SPACINGS.register("linspace")(Spacing(_linspace_discrete, None))
SPACINGS.register("karras")(Spacing(_karras_discrete, _karras_continuous))
SPACINGS.register("logsnr")(Spacing(_logsnr_discrete, _logsnr_continuous))


def _names(time: str):
    return [n for n in SPACINGS if getattr(SPACINGS.get(n), time) is not None]


# --- the grids ----------------------------------------------------------------------------------

def discrete_time_grid(num_timesteps: int, num_steps: int, spacing="uniform", *,
                       process=None, rho: float = 7.0) -> np.ndarray:
    """The grid of a discrete chain as rows (t, s): [[tau_K, tau_{K-1}], ..., [tau_1, 0]].

    Args:
      num_timesteps: T.
      num_steps: K in [1, T].
      spacing: a SPACINGS name, or the sub-sequence itself: K increasing ints tau_1 < ... <
        tau_K = T in [1, T] (e.g. `udm.variance.optimal_trajectory`).
      process: the discrete process, needed by "karras" and "logsnr" (its marginal).
      rho: the exponent of "karras" (docs/time_grids.md G3).

    Returns:
      int32 array [K, 2].
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, T={num_timesteps}], got {num_steps}")
    if isinstance(spacing, str):
        rule = SPACINGS.get(spacing).discrete
        if rule is None:
            raise ValueError(f"spacing {spacing!r} is not defined in discrete time; valid: "
                             f"{', '.join(_names('discrete'))}")
        tau = rule(process, num_timesteps, num_steps, rho)
    else:
        tau = np.asarray(spacing)
        if tau.shape != (num_steps,) or not np.issubdtype(tau.dtype, np.integer):
            raise ValueError(f"an explicit time sequence must be {num_steps} ints, got "
                             f"{tau.dtype} {tau.shape}")
    if tau[-1] != num_timesteps or np.any(np.diff(tau) <= 0) or tau[0] < 1:
        raise ValueError(f"time sequence must increase strictly from >= 1 to T={num_timesteps}, "
                         f"got {tau}")
    t = tau[::-1]
    s = np.concatenate([[0], tau[:-1]])[::-1]
    return np.stack([t, s], axis=1).astype(np.int32)


def continuous_time_grid(process, num_steps: int, spacing: str = "uniform", *,
                         rho: float = 7.0) -> np.ndarray:
    """K steps of a continuous-time process from t = 1 down to t_min as float32 rows (t, s).

    Args:
      process: a continuous-time process (its t_min, and its marginal for karras / logsnr).
      num_steps: K >= 1.
      spacing: "uniform", "quadratic", "karras" or "logsnr" (docs/time_grids.md G1-G4).
      rho: the exponent of "karras".
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    valid = ", ".join(_names("continuous"))
    if not isinstance(spacing, str):
        raise ValueError(f"continuous-time grids take a spacing name ({valid}), not an explicit "
                         f"sequence")
    rule = SPACINGS.get(spacing).continuous
    if rule is None:
        raise ValueError(f"spacing {spacing!r} is not defined in continuous time; valid: {valid}")
    times = np.asarray(rule(process, num_steps, rho), np.float32)
    if times[0] != 1.0 or np.any(np.diff(times) >= 0):
        raise ValueError(f"spacing {spacing!r} gave times that do not decrease strictly from 1 "
                         f"with K={num_steps} (too many steps for float32?)")
    return np.stack([times[:-1], times[1:]], axis=1)


def time_grid(process, num_steps: int, spacing="uniform", *, rho: float = 7.0) -> np.ndarray:
    """The grid of any process: discrete ([K, 2] int32) or continuous ([K, 2] float32)."""
    if process.capabilities.continuous_time:
        return continuous_time_grid(process, num_steps, spacing, rho=rho)
    return discrete_time_grid(process.num_timesteps, num_steps, spacing, process=process, rho=rho)


def check_num_steps(process, num_steps: int, what: str = "num_steps") -> None:
    """ValueError unless num_steps fits the process: [1, T] in discrete time, >= 1 otherwise."""
    if process.capabilities.continuous_time:
        if num_steps < 1:
            raise ValueError(f"{what} must be >= 1, got {num_steps}")
    elif not 1 <= num_steps <= process.num_timesteps:
        raise ValueError(f"{what} must be in [1, T={process.num_timesteps}], got {num_steps}")
