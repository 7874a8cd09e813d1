"""The K-step chain of a grid (for the VLB) and the optimal trajectory (Analytic-DPM §4)."""
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

Array = Any


# --- the chain of a grid, for likelihood.variational_bound ---------------------------------

def chain_from_grid(process, grid: Array):
    """The K-step chain of a grid: index i is time tau_i, index 0 the data (docs/ddpm_ddim.md §2.4).

        alpha_bar_chain[i] = alpha_bar_{tau_i},  beta_bar_chain[i] = beta_bar_{tau_i},  tau_0 = 0.

    Args:
        process: GaussianProcess.
        grid: int [K, 2] rows (t, s) from `time_grid`.

    Returns:
        (alpha_bar [K + 1], beta_bar [K + 1], times int32 [K + 1]).
    """
    grid = jnp.asarray(grid, jnp.int32)
    times = jnp.concatenate([jnp.zeros((1,), jnp.int32), grid[::-1, 0]])
    return process.alpha_bar[times], process.beta_bar[times], times


def chain_reverse_var(step_var: Array) -> Array:
    """Reorders [K] grid-order step variances into the [K + 1] `reverse_var` of the chain.

        reverse_var[i] = var_{tau_i -> tau_{i-1}},  reverse_var[0] = 1 (unused).

    Args:
        step_var: [K] in grid order (top step first), every entry > 0.

    Returns:
        float32 [K + 1] for `likelihood.variational_bound(..., reverse_var=...)`.
    """
    step_var = jnp.asarray(step_var, jnp.float32)
    return jnp.concatenate([jnp.ones((1,), jnp.float32), step_var[::-1]])


# --- the optimal trajectory (Analytic-DPM §4) ------------------------------------------------

def trajectory_costs(process, sigma_bar_sq: Array, *, bin_width: Optional[float] = None):
    """Per-dimension bound terms of every possible step, for `optimal_trajectory`.

        cost[s, t] = 1/2 log((lambda^2 + gamma^2 sigma_bar_t^2) / lambda^2),  1 <= s < t,

    the expected KL term of a step t -> s with the DDPM kernel (eta = 1, posterior variance
    lambda^2, x_0 coefficient gamma) and the optimal variance, for a perfect mean (Bao et al.,
    arXiv 2201.06503, §4); and the decoder term of the last step t -> 0,

        decoder[t] = 1/2 log(2 pi e sigma_bar_t^2)       (a Gaussian decoder, continuous data),
        decoder[t] = max(0, that - log(bin_width))       (a discretised decoder: a probability
                                                          <= 1, about density x bin width).

    sigma_bar_sq is first made non-decreasing in t (its running maximum), as the true
    E Var[x_0 | x_t] is.

    Args:
        process: GaussianProcess.
        sigma_bar_sq: [T + 1] sigma_bar_t^2 for every t = 1..T (index 0 unused).
        bin_width: the data's bin width (2 / (L - 1) for L levels on [-1, 1]), or None.

    Returns:
        (cost float64 [T + 1, T + 1] with inf where s = 0 or s >= t, decoder float64 [T + 1]).
    """
    sb2 = np.asarray(sigma_bar_sq, np.float64)
    if sb2.shape != (process.num_timesteps + 1,) or np.any(np.isnan(sb2[1:])):
        raise ValueError(f"sigma_bar_sq must be [T + 1] = [{process.num_timesteps + 1}] and "
                         f"known for every t >= 1 (estimate Gamma_t on all of 1..T)")
    # E Var[x_0 | x_t] cannot decrease with t (x_t is a noisier copy of x_s, s < t); a Monte
    # Carlo estimate can (Gamma_t > 1 from noise or bias clips sigma_bar_t^2 to 0), and a zero
    # would make the jump into t free. The running maximum restores the order.
    sb2 = np.concatenate([sb2[:1], np.maximum.accumulate(sb2[1:])])
    ab = np.asarray(process.alpha_bar, np.float64)
    bb = np.asarray(process.beta_bar, np.float64)
    s, t = np.meshgrid(np.arange(ab.size), np.arange(ab.size), indexing="ij")
    valid = (s >= 1) & (s < t)
    s, t = np.where(valid, s, 1), np.where(valid, t, 2)  # dummy pair where invalid
    lam2 = bb[s] ** 2 * (1.0 - (ab[t] / ab[s]) ** 2) / bb[t] ** 2
    gamma = ab[s] - ab[t] * np.sqrt(np.maximum(bb[s] ** 2 - lam2, 0.0)) / bb[t]
    cost = np.where(valid, 0.5 * np.log1p(gamma ** 2 * sb2[t] / lam2), np.inf)
    with np.errstate(divide="ignore"):
        decoder = 0.5 * np.log(2.0 * np.pi * np.e * sb2)
    if bin_width is not None:
        decoder = np.maximum(decoder - np.log(bin_width), 0.0)
    decoder[0] = np.inf
    return cost, decoder


def optimal_trajectory(process, sigma_bar_sq: Array, num_steps: int, *,
                       bin_width: Optional[float] = None) -> np.ndarray:
    """The K-step sub-sequence minimising the bound's terms by dynamic programming (Analytic-DPM §4).

        J(tau) = decoder[tau_1] + sum_{k=2..K} cost[tau_{k-1}, tau_k],  tau_K = T,

    with the terms of `trajectory_costs`; D_k(t) = min_s cost[s, t] + D_{k-1}(s) over the
    T + 1 states, O(K T^2) in numpy (a few seconds for T = K = 1000). The prior term is the same
    for every trajectory (tau_K = T).

    Args:
        process: GaussianProcess.
        sigma_bar_sq: [T + 1] sigma_bar_t^2 for every t (e.g. analytic_sigma_bar_sq on 1..T).
        num_steps: K in [1, T].
        bin_width: see `trajectory_costs`.

    Returns:
        int32 [K] increasing times tau_1 < ... < tau_K = T, for `time_grid(..., spacing=tau)`.
    """
    T = process.num_timesteps
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, T={T}], got {num_steps}")
    cost, best = trajectory_costs(process, sigma_bar_sq, bin_width=bin_width)
    if num_steps == T:
        return np.arange(1, T + 1, dtype=np.int32)
    parents = []
    for _ in range(num_steps - 1):
        total = cost + best[:, None]                   # [s, t]: go t -> s, then s -> 0
        parents.append(np.argmin(total, axis=0))
        best = total[parents[-1], np.arange(T + 1)]
    tau = [T]
    for parent in reversed(parents):
        tau.append(int(parent[tau[-1]]))
    return np.asarray(tau[::-1], np.int32)
