"""Time grids of every sampler: rows (t, s) from the top step down, s < t.

Discrete time: an increasing sub-sequence tau_1 < ... < tau_K = T of {1..T} (docs/ddpm_ddim.md §2.4),
as rows [[tau_K, tau_{K-1}], ..., [tau_1, 0]] of int32. Continuous time: K uniform steps from
t = 1 down to t_min, as float32 rows [[1, 1 - h], ..., [t_min + h, t_min]].
"""
from typing import Any

import jax.numpy as jnp
import numpy as np

from udm.registry import Registry

Array = Any

SPACINGS = Registry("time spacing")


@SPACINGS.register("uniform")
def uniform_spacing(num_timesteps: int, num_steps: int) -> np.ndarray:
    """tau_i = round(i T / K); K = T gives the full chain 1..T."""
    i = np.arange(1, num_steps + 1)
    return np.round(i * num_timesteps / num_steps).astype(np.int32)


@SPACINGS.register("quadratic")
def quadratic_spacing(num_timesteps: int, num_steps: int) -> np.ndarray:
    """tau_i ~ T (i / K)^2, denser near t = 0 (DDIM paper), kept strictly increasing."""
    i = np.arange(1, num_steps + 1)
    tau = np.round(num_timesteps * (i / num_steps) ** 2).astype(np.int64)
    # Small i collide after rounding; push each up to at least its predecessor + 1 and keep
    # the top at T (possible because K <= T).
    tau = np.maximum(tau, i)
    for j in range(1, num_steps):
        tau[j] = max(tau[j], tau[j - 1] + 1)
    return tau.astype(np.int32)


def discrete_time_grid(num_timesteps: int, num_steps: int, spacing="uniform") -> np.ndarray:
    """The grid of a discrete chain as rows (t, s): [[tau_K, tau_{K-1}], ..., [tau_1, 0]].

    Args:
      num_timesteps: T.
      num_steps: K in [1, T].
      spacing: a SPACINGS name, or the sub-sequence itself: K increasing ints tau_1 < ... <
        tau_K = T in [1, T] (e.g. `udm.variance.optimal_trajectory`).

    Returns:
      int32 array [K, 2].
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, T={num_timesteps}], got {num_steps}")
    if isinstance(spacing, str):
        tau = SPACINGS.get(spacing)(num_timesteps, num_steps)
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


def continuous_time_grid(t_end: float, num_steps: int, *, t_start: float = 1.0) -> np.ndarray:
    """K uniform steps from t_start down to t_end as float32 rows (t, s)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    # jnp's float32 linspace, as the solvers have always used (np's differs in the last bits).
    times = np.asarray(jnp.linspace(t_start, t_end, num_steps + 1, dtype=jnp.float32))
    return np.stack([times[:-1], times[1:]], axis=1)


def time_grid(process, num_steps: int, spacing="uniform") -> np.ndarray:
    """The grid of any process: discrete (with `spacing`) or continuous (uniform in t)."""
    if process.capabilities.continuous_time:
        if spacing != "uniform":
            raise ValueError(f"continuous-time grids are uniform in t, got spacing {spacing!r}")
        return continuous_time_grid(process.t_min, num_steps)
    return discrete_time_grid(process.num_timesteps, num_steps, spacing)


def check_num_steps(process, num_steps: int, what: str = "num_steps") -> None:
    """ValueError unless num_steps fits the process: [1, T] in discrete time, >= 1 otherwise."""
    if process.capabilities.continuous_time:
        if num_steps < 1:
            raise ValueError(f"{what} must be >= 1, got {num_steps}")
    elif not 1 <= num_steps <= process.num_timesteps:
        raise ValueError(f"{what} must be in [1, T={process.num_timesteps}], got {num_steps}")
