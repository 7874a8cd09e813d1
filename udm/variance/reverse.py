"""The reverse variance of each step: sigma_bar_t from the moments, the corrected step variances,
their sampling-time clips and std caps, the VARIANCES registry and `sampling_sigma_bar`."""
import math
from typing import Any, Callable, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from udm.registry import Registry
from udm.variance.moments import EpsFn, estimate_eps_mse, estimate_gamma

Array = Any


# --- sigma_bar_t^2 = Var[x_0 | x_t] from the moments ----------------------------------------

def _noise_to_signal(process, timesteps: Array, like: Array) -> Array:
    """beta_bar_t^2 / alpha_bar_t^2, shaped [n, 1, ...] to broadcast against `like` [n, ...]."""
    ratio = (process.beta_bar[timesteps] / process.alpha_bar[timesteps]) ** 2
    return ratio.reshape(ratio.shape + (1,) * (like.ndim - 1))


def clip_sigma_bar_sq(process, timesteps: Array, sigma_bar_sq: Array, *,
                      max_var: Optional[float] = None) -> Array:
    """Clips an estimate of Var[x_0|x_t] into the bounds of the optimum (docs/optimal_variance.md §2.3, §2.5).

        0 <= sigma_bar_t^2 <= min(beta_bar_t^2 / alpha_bar_t^2, max_var),

    beta_bar_t^2 / alpha_bar_t^2 from (V3) with Gamma_t >= 0; max_var bounds Var[x_0] (V2):
    ((b - a)/2)^2 for data in [a, b] (1 for [-1, 1]) or the data's own per-coordinate variance.

    Args:
        process: GaussianProcess.
        timesteps: int [n].
        sigma_bar_sq: [n] (or [n, ...] diagonal).
        max_var: optional scalar bound on the data variance.

    Returns:
        float32, same shape as sigma_bar_sq.
    """
    timesteps = jnp.asarray(timesteps, jnp.int32)
    sigma_bar_sq = jnp.asarray(sigma_bar_sq, jnp.float32)
    upper = _noise_to_signal(process, timesteps, sigma_bar_sq)
    if max_var is not None:
        upper = jnp.minimum(upper, jnp.float32(max_var))
    return jnp.clip(sigma_bar_sq, 0.0, upper)


def analytic_sigma_bar_sq(process, gamma: Array, timesteps: Array, *,
                          max_var: Optional[float] = None) -> Array:
    """Analytic-DPM's sigma_bar_t^2 from Gamma_t (docs/optimal_variance.md §2.4 V3, §2.5 step 2; diagonal: V4).

        sigma_bar_t^2 = (beta_bar_t^2 / alpha_bar_t^2) clip(1 - Gamma_t, 0, 1), then <= max_var.

    Args:
        process: GaussianProcess.
        gamma: [n] Gamma_t from `estimate_gamma` (or [n, ...] diagonal).
        timesteps: int [n], the t of each entry.
        max_var: optional bound on Var[x_0] (see clip_sigma_bar_sq).

    Returns:
        float32 [n] (or [n, ...]).
    """
    gamma = jnp.asarray(gamma, jnp.float32)
    timesteps = jnp.asarray(timesteps, jnp.int32)
    raw = _noise_to_signal(process, timesteps, gamma) * (1.0 - gamma)
    return clip_sigma_bar_sq(process, timesteps, raw, max_var=max_var)


def ml_sigma_bar_sq(process, eps_mse: Array, timesteps: Array, *,
                    max_var: Optional[float] = None) -> Array:
    """The maximum-likelihood sigma_bar_t^2 given a frozen mean (docs/optimal_variance.md §3.3, V5; diagonal: V6).

        sigma_bar_t^2 = (beta_bar_t^2 / (alpha_bar_t^2 d)) E ||eps - eps_theta(x_t, t)||^2,

    clipped as `clip_sigma_bar_sq` (the bounds hold for the optimum whatever the mean model).

    Args:
        process: GaussianProcess.
        eps_mse: [n] from `estimate_eps_mse` (or [n, ...] diagonal).
        timesteps: int [n].
        max_var: optional bound on Var[x_0].

    Returns:
        float32 [n] (or [n, ...]).
    """
    eps_mse = jnp.asarray(eps_mse, jnp.float32)
    timesteps = jnp.asarray(timesteps, jnp.int32)
    raw = _noise_to_signal(process, timesteps, eps_mse) * eps_mse
    return clip_sigma_bar_sq(process, timesteps, raw, max_var=max_var)


def sigma_bar_table(process, sigma_bar_sq: Array, timesteps: Array) -> Array:
    """The [T + 1] table of sigma_bar_t (std) for `make_sampler(..., sigma_bar=...)`.

        table[t] = sqrt(sigma_bar_t^2) for t in timesteps, table[0] = 0, NaN elsewhere,

    so a grid that reads a time where nothing was estimated fails loudly.

    Args:
        process: GaussianProcess.
        sigma_bar_sq: [n] isotropic variances.
        timesteps: int [n].

    Returns:
        float32 [T + 1].
    """
    table = jnp.full((process.num_timesteps + 1,), jnp.nan, jnp.float32).at[0].set(0.0)
    return table.at[jnp.asarray(timesteps, jnp.int32)].set(
        jnp.sqrt(jnp.asarray(sigma_bar_sq, jnp.float32)))


def analytic_sigma_bar(process, gamma_by_t: Array, timesteps: Array, *,
                       max_var: Optional[float] = None) -> Array:
    """Analytic-DPM's sigma_bar_t as a [T + 1] table for make_sampler (docs/optimal_variance.md §2.4-2.5, V3).

        sigma_bar_t = sqrt(min((beta_bar_t^2 / alpha_bar_t^2) clip(1 - Gamma_t, 0, 1), max_var))

    Args:
        process: GaussianProcess.
        gamma_by_t: [n] Gamma_t at `timesteps` (estimate_gamma).
        timesteps: int [n] (e.g. `time_grid(T, K)[:, 0]`).
        max_var: optional bound on Var[x_0] (1 for data in [-1, 1]).

    Returns:
        float32 [T + 1], NaN at times not in `timesteps`, 0 at t = 0.
    """
    sigma_bar_sq = analytic_sigma_bar_sq(process, gamma_by_t, timesteps, max_var=max_var)
    return sigma_bar_table(process, sigma_bar_sq, timesteps)


def ml_sigma_bar(process, eps_mse_by_t: Array, timesteps: Array, *,
                 max_var: Optional[float] = None) -> Array:
    """The ML-isotropic sigma_bar_t as a [T + 1] table for make_sampler (docs/optimal_variance.md §3.3, V5).

        sigma_bar_t = sqrt((beta_bar_t^2 / alpha_bar_t^2) E||eps - eps_theta||^2 / d), clipped.

    Args and Returns: as `analytic_sigma_bar`, with the per-t eps MSE (estimate_eps_mse).
    """
    sigma_bar_sq = ml_sigma_bar_sq(process, eps_mse_by_t, timesteps, max_var=max_var)
    return sigma_bar_table(process, sigma_bar_sq, timesteps)


# --- the reverse variance of each step of a grid --------------------------------------------

def step_coefficients(process, grid: Array, eta: float):
    """sigma_s^2 and gamma_{t,s} of each step t -> s of a grid (docs/optimal_variance.md §2.1, docs/ddpm_ddim.md §2.4).

        sigma_s = eta beta_bar_s sqrt(1 - (alpha_bar_t / alpha_bar_s)^2) / beta_bar_t,
        gamma_{t,s} = alpha_bar_s - alpha_bar_t sqrt(beta_bar_s^2 - sigma_s^2) / beta_bar_t,

    the same quantities as the sampler's correct step (sigma_s = beta_bar_s sigma_tilde).

    Args:
        process: GaussianProcess.
        grid: int [K, 2] rows (t, s), from `udm.sampling.time_grid`.
        eta: 1 for DDPM (Analytic-DDPM), 0 for DDIM (Analytic-DDIM).

    Returns:
        (sigma_sq [K], gamma [K]) in the process dtype.
    """
    grid = jnp.asarray(grid, jnp.int32)
    t, s = grid[:, 0], grid[:, 1]
    sigma_tilde = eta * process.ddpm_sigma_tilde(t, s)
    keep = jnp.sqrt(jnp.maximum(1.0 - sigma_tilde ** 2, 0.0))
    beta_bar_s = process.beta_bar[s]
    gamma = process.alpha_bar[s] - process.alpha_bar[t] * beta_bar_s * keep / process.beta_bar[t]
    return (beta_bar_s * sigma_tilde) ** 2, gamma


def corrected_reverse_var(process, grid: Array, sigma_bar: Array, *, eta: float) -> Array:
    """The corrected reverse variance of each step of a grid (docs/optimal_variance.md §2.1 V1, §2.5 step 3).

        var_{t->s} = sigma_s^2 + gamma_{t,s}^2 sigma_bar_t^2.

    On the last step (s = 0, gamma = 1, sigma = 0) this is sigma_bar_{tau_1}^2, the variance of
    the decoder p(x_0 | x_{tau_1}); see `sampling_clip` for the sampling-time convention.

    Args:
        process: GaussianProcess.
        grid: int [K, 2] rows (t, s).
        sigma_bar: [T + 1] std table (analytic_sigma_bar / ml_sigma_bar).
        eta: DDIM eta in [0, 1].

    Returns:
        float32 [K], in grid order (top step first).
    """
    sigma_sq, gamma = step_coefficients(process, grid, eta)
    sigma_bar_t = jnp.asarray(sigma_bar)[jnp.asarray(grid, jnp.int32)[:, 0]]
    return sigma_sq + gamma ** 2 * sigma_bar_t ** 2


def pixel_clip_var(clip_pixel: float) -> float:
    """The pixel-clip variance (clip_pixel (2/255) sqrt(pi/2))^2 (docs/optimal_variance.md §2.5).

    A Gaussian with this variance has mean |noise| of clip_pixel levels on the [-1, 1] scale.
    """
    return (clip_pixel * (2.0 / 255.0) * math.sqrt(math.pi / 2.0)) ** 2


def sampling_clip(step_var: Array, grid: Array, *, clip_pixel: Optional[float] = None,
                  clip_sigma_idx: int = 1, noise_free_last: bool = True) -> Array:
    """The released Analytic-DPM code's sampling-time clips of the step variances (docs/optimal_variance.md §2.5).

        var_{t->s} <- min(var_{t->s}, (clip_pixel (2/255) sqrt(pi/2))^2)  if 0 < s <= tau_idx,
        var_{tau_1->0} <- 0 (the final step is the mean only),

    with 0 = tau_0 < tau_1 < ... < tau_K the grid's times and idx = clip_sigma_idx (0: off).

    Args:
        step_var: [K] step variances in grid order.
        grid: int [K, 2] rows (t, s).
        clip_pixel: the bound in pixel levels (1 or 2), None for no pixel clip.
        clip_sigma_idx: idx above; 1 clips only the step that produces x_{tau_1}.
        noise_free_last: zero the variance of the final step.

    Returns:
        float32 [K].
    """
    grid = np.asarray(grid)
    step_var = jnp.asarray(step_var)
    s = jnp.asarray(grid[:, 1])
    if clip_pixel is not None and clip_sigma_idx > 0:
        tau = np.concatenate([[0], grid[::-1, 0]])
        if clip_sigma_idx >= tau.size:
            raise ValueError(f"clip_sigma_idx must be < K + 1 = {tau.size}, got {clip_sigma_idx}")
        clipped = jnp.minimum(step_var, pixel_clip_var(clip_pixel))
        step_var = jnp.where((s > 0) & (s <= int(tau[clip_sigma_idx])), clipped, step_var)
    if noise_free_last:
        step_var = jnp.where(s == 0, 0.0, step_var)
    return step_var


def std_cap(process, grid: Array, *, eta: float, clip_pixel: Optional[float] = None,
            clip_sigma_idx: int = 1, noise_free_last: bool = True) -> Array:
    """[T + 1] upper bounds on the std added to x0_hat so that each step obeys `sampling_clip`.

        cap_t = sqrt(max(clip_var - sigma_s^2, 0)) / gamma_{t,s}  on the pixel-clipped steps,
        cap_{tau_1} = 0 (mean-only final step),  cap = inf elsewhere,

    since the step variance sigma_s^2 + gamma^2 std^2 <= clip_var iff std <= cap. For eta > 0 a
    clip below the DDPM sigma_s^2 cannot be reached by adding noise to x0_hat: the step then
    keeps sigma_s^2. Works for a [T + 1] table and for state-dependent stds alike (the
    `std_cap` argument of `udm.sampling.make_sampler`).

    Args:
        process: GaussianProcess.
        grid: int [K, 2] rows (t, s), the sampler's grid.
        eta: the sampler's eta (1 for "ddpm").
        clip_pixel, clip_sigma_idx, noise_free_last: as `sampling_clip`.

    Returns:
        float32 [T + 1].
    """
    sigma_sq, gamma = step_coefficients(process, grid, eta)
    unclipped = jnp.full(sigma_sq.shape, jnp.inf, jnp.float32)
    clipped = sampling_clip(unclipped, grid, clip_pixel=clip_pixel,
                            clip_sigma_idx=clip_sigma_idx, noise_free_last=noise_free_last)
    cap = jnp.where(jnp.isinf(clipped), jnp.inf,
                    jnp.sqrt(jnp.maximum(clipped - sigma_sq, 0.0)) / gamma)
    table = jnp.full((process.num_timesteps + 1,), jnp.inf, jnp.float32)
    return table.at[jnp.asarray(grid)[:, 0]].set(cap)


# --- the registry of choices -----------------------------------------------------------------

class VarianceChoice(NamedTuple):
    """A reverse-variance choice: how to estimate sigma_bar (None: fixed) and the step variances.

    Attributes:
        estimate: None, or `(process, eps_fn, params, data, timesteps, *, key, num_samples,
            batch_size, max_var) -> sigma_bar [T + 1]`.
        step_var: `(process, grid, *, eta, sigma_bar) -> [K]` in grid order; the s = 0 entry is
            the decoder variance of p(x_0 | x_{tau_1}) (> 0, for the VLB).
    """
    estimate: Optional[Callable]
    step_var: Callable


VARIANCES = Registry("reverse variance")


def _fixed_small(process, grid, *, eta, sigma_bar=None):
    # (eta x) the DDPM posterior variance; the decoder gets beta_bar^2 / alpha_bar^2, the
    # default of likelihood.variational_bound, since the posterior variance vanishes at s = 0.
    del sigma_bar
    sigma_sq, _ = step_coefficients(process, grid, eta)
    t, s = jnp.asarray(grid)[:, 0], jnp.asarray(grid)[:, 1]
    return jnp.where(s == 0, (process.beta_bar[t] / process.alpha_bar[t]) ** 2, sigma_sq)


def _fixed_large(process, grid, *, eta, sigma_bar=None):
    # paper-beta of the step, 1 - (alpha_bar_t / alpha_bar_s)^2 (DDPM's sigma_t^2 = beta_t).
    del eta, sigma_bar
    t, s = jnp.asarray(grid)[:, 0], jnp.asarray(grid)[:, 1]
    return 1.0 - (process.alpha_bar[t] / process.alpha_bar[s]) ** 2


def _corrected(process, grid, *, eta, sigma_bar=None):
    if sigma_bar is None:
        raise ValueError("this reverse variance needs sigma_bar (see estimate_sigma_bar)")
    return corrected_reverse_var(process, grid, sigma_bar, eta=eta)


def _estimate_analytic(process, eps_fn, params, data, timesteps, *, key, num_samples,
                       batch_size, max_var=None, mesh=None):
    gamma = estimate_gamma(process, eps_fn, params, data, timesteps, key=key,
                           num_samples=num_samples, batch_size=batch_size, mesh=mesh)
    return analytic_sigma_bar(process, gamma, timesteps, max_var=max_var)


def _estimate_ml(process, eps_fn, params, data, timesteps, *, key, num_samples, batch_size,
                 max_var=None, mesh=None):
    mse = estimate_eps_mse(process, eps_fn, params, data, timesteps, key=key,
                           num_samples=num_samples, batch_size=batch_size, mesh=mesh)
    return ml_sigma_bar(process, mse, timesteps, max_var=max_var)


VARIANCES.register("fixed_small")(VarianceChoice(None, _fixed_small))
VARIANCES.register("fixed_large")(VarianceChoice(None, _fixed_large))
VARIANCES.register("analytic")(VarianceChoice(_estimate_analytic, _corrected))
VARIANCES.register("ml_isotropic")(VarianceChoice(_estimate_ml, _corrected))


def estimate_sigma_bar(name: str, process, eps_fn: EpsFn, params, data: Array,
                       timesteps: Array, *, key, num_samples: int, batch_size: int,
                       max_var: Optional[float] = None,
                       mesh: Optional[Mesh] = None) -> Optional[Array]:
    """The [T + 1] sigma_bar table of a VARIANCES choice (None for the fixed ones).

    analytic: V3 from `estimate_gamma`; ml_isotropic: V5 from `estimate_eps_mse` (docs/optimal_variance.md).

    Args:
        name: a VARIANCES name.
        process, eps_fn, params, data, timesteps, key, num_samples, batch_size, mesh: as
            `estimate_gamma`.
        max_var: optional bound on Var[x_0] (1 for data in [-1, 1]).

    Returns:
        float32 [T + 1] (NaN off `timesteps`) or None.
    """
    choice = VARIANCES.get(name)
    if choice.estimate is None:
        return None
    return choice.estimate(process, eps_fn, params, data, timesteps, key=key,
                           num_samples=num_samples, batch_size=batch_size, max_var=max_var,
                           mesh=mesh)


def reverse_variance(name: str, process, grid: Array, *, eta: float = 1.0,
                     sigma_bar: Optional[Array] = None) -> Array:
    """The reverse variance of each step of a grid for a VARIANCES choice (docs/optimal_variance.md, docs/ddpm_ddim.md).

        fixed_small: (eta sigma_s^DDPM)^2;  fixed_large: 1 - (alpha_bar_t / alpha_bar_s)^2;
        analytic, ml_isotropic: sigma_s^2 + gamma_{t,s}^2 sigma_bar_t^2   (V1).

    Args:
        name: "fixed_small", "fixed_large", "analytic" or "ml_isotropic".
        process: GaussianProcess.
        grid: int [K, 2] rows (t, s) from `time_grid`.
        eta: DDIM eta (1 = DDPM); fixed_large ignores it.
        sigma_bar: [T + 1] table from `estimate_sigma_bar`, needed by analytic / ml_isotropic.

    Returns:
        float32 [K] in grid order; `chain_reverse_var` turns it into the VLB's [K + 1].
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    return VARIANCES.get(name).step_var(process, grid, eta=eta, sigma_bar=sigma_bar)


# Names that `config.sampler.variance` accepts: the VARIANCES choices (a [T + 1] std table) and
# the state-dependent heads of udm.variance_heads.
HEAD_VARIANCES = ("npr", "sn")
# The choices whose sigma_bar comes from a Monte Carlo over the data (estimate_sigma_bar).
MONTE_CARLO_VARIANCES = tuple(name for name in VARIANCES if VARIANCES.get(name).estimate)
SAMPLING_VARIANCES = ("fixed_small", "fixed_large", "analytic", "ml_isotropic") + HEAD_VARIANCES


def sampling_sigma_bar(name: str, process, grid: Array, *, eta: float,
                       sigma_bar: Optional[Array] = None) -> Optional[Array]:
    """The [T + 1] std that `make_sampler` adds to x0_hat to realise a VARIANCES choice.

        std_t = sqrt(max(var_{t->s} - sigma_s^2, 0)) / gamma_{t,s}   (var from reverse_variance)

    so each step t -> s of the grid has the variance sigma_s^2 + gamma^2 std^2 = var_{t->s} of the
    choice (V1): fixed_large becomes DDPM's mean with variance 1 - (alpha_bar_t/alpha_bar_s)^2,
    analytic / ml_isotropic give back sigma_bar. fixed_small returns None (the plain sampler).
    Apply `std_cap` for the mean-only final step and the pixel clip.

    Args:
        name: a VARIANCES name.
        process: GaussianProcess.
        grid: int [K, 2] rows (t, s), the sampler's grid.
        eta: the sampler's eta.
        sigma_bar: [T + 1] from `estimate_sigma_bar`, for analytic / ml_isotropic.

    Returns:
        float32 [T + 1] (NaN off the grid, 0 at t = 0) or None.
    """
    if name == "fixed_small":
        VARIANCES.get(name)
        return None
    var = reverse_variance(name, process, grid, eta=eta, sigma_bar=sigma_bar)
    sigma_sq, gamma = step_coefficients(process, grid, eta)
    std = jnp.sqrt(jnp.maximum(var - sigma_sq, 0.0)) / gamma
    table = jnp.full((process.num_timesteps + 1,), jnp.nan, jnp.float32).at[0].set(0.0)
    return table.at[jnp.asarray(grid)[:, 0]].set(std)
