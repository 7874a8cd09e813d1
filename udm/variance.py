"""Optimal reverse variances: Analytic-DPM (spec 04 §2) and the ML estimates of §3.3.

Blog notation: x_t = alpha_bar_t x_0 + beta_bar_t eps. A reverse step t -> s of the DDIM family
(spec 04 §2.1) with the point estimate x0_hat replaced by p(x_0|x_t) ~ N(mu_bar(x_t),
sigma_bar_t^2 I) has the same mean and the variance

    sigma_s^2 + gamma_{t,s}^2 sigma_bar_t^2,
    gamma_{t,s} = alpha_bar_s - alpha_bar_t sqrt(beta_bar_s^2 - sigma_s^2) / beta_bar_t   (V1)

on any sub-sequence (sigma_s = eta * the DDPM value recomputed on the step, spec 02 §2.4).
sigma_bar_t depends on t only, so a [T + 1] array of it serves every grid: it is the
`sigma_bar` hook of `udm.samplers.make_sampler` (which adds N(0, sigma_bar_t^2) to x0_hat,
realising exactly (V1) because x0_hat enters x_s with the coefficient gamma_{t,s}).

Estimates of sigma_bar_t^2 from an eps predictor `eps_fn(params, x_t [B, ...], t) -> [B, ...]`,
by Monte Carlo over training data (x_t = alpha_bar_t x_0 + beta_bar_t eps):
  analytic (V3):      (beta_bar_t^2 / alpha_bar_t^2) (1 - Gamma_t),  Gamma_t = E||eps_theta||^2/d;
  ML isotropic (V5):  (beta_bar_t^2 / alpha_bar_t^2) E||eps - eps_theta||^2 / d;
and their diagonal forms (V4, V6). All are clipped into [0, min(beta_bar_t^2 / alpha_bar_t^2,
max_var)] (spec 04 §2.3, §2.5 step 2), max_var = ((b - a)/2)^2 for data in [a, b].
Sources: Bao et al. arXiv 2201.06503 and 2206.07309; kexue.fm/archives/9245, 9246.
"""
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from udm import parallel
from udm.registry import Registry

Array = Any
# `eps_fn(params, x_t [B, ...], t int32 scalar) -> eps_hat [B, ...]`.
EpsFn = Callable[[Any, Array, Array], Array]


def eps_fn_from_x0_predictor(process, predictor: Callable) -> EpsFn:
    """Turns an x_0 predictor into an eps predictor: eps = (x_t - alpha_bar_t x0_hat) / beta_bar_t.

    Args:
        process: a GaussianProcess (alpha_bar, beta_bar [T + 1]).
        predictor: `(params, x_t [B, ...], t) -> x0_hat [B, ...]`, e.g. an oracle of udm.oracles.

    Returns:
        `eps_fn(params, x_t [B, ...], t) -> [B, ...]`, valid for t >= 1.
    """
    def eps_fn(params, xt, t):
        return process.invert(t, predictor(params, xt, t), xt)

    return eps_fn


# --- Monte Carlo moments of the eps predictor over the data ---------------------------------

def _statistic(name: str, eps: Array, eps_hat: Array, diagonal: bool) -> Array:
    """Per-example statistic: eps_hat^2 ("gamma") or (eps - eps_hat)^2 ("mse"), [B] or [B, ...]."""
    value = eps_hat ** 2 if name == "gamma" else (eps - eps_hat) ** 2
    if diagonal:
        return value
    return jnp.mean(value.reshape(value.shape[0], -1), axis=1)


def _monte_carlo(process, eps_fn, params, data, timesteps, key, *, statistic, diagonal,
                 num_samples, batch_size, mesh):
    """Mean and standard error over (x_0, eps) of a statistic, for every t: ([n, ...], [n, ...]).

    With a mesh each batch is split over its devices (the draws do not depend on it); the sums
    over the batch become cross-device reductions.
    """
    def split_batch(x):
        if mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, parallel.batch_sharded(mesh))

    num_data = data.shape[0]
    num_batches = num_samples // batch_size
    stat_shape = data.shape[1:] if diagonal else ()

    def per_t(t):
        t_key = jax.random.fold_in(key, t)

        def body(carry, b):
            total, total_sq = carry
            index_key, eps_key = jax.random.split(jax.random.fold_in(t_key, b))
            index = jax.random.randint(index_key, (batch_size,), 0, num_data)
            x0 = split_batch(data[index].astype(jnp.float32))
            eps = split_batch(jax.random.normal(eps_key, x0.shape, jnp.float32))
            xt = process.forward(t, x0, eps)
            stat = _statistic(statistic, eps, eps_fn(params, xt, t).astype(jnp.float32),
                              diagonal)
            return (total + jnp.sum(stat, axis=0), total_sq + jnp.sum(stat ** 2, axis=0)), None

        zeros = jnp.zeros(stat_shape, jnp.float32)
        (total, total_sq), _ = jax.lax.scan(body, (zeros, zeros),
                                            jnp.arange(num_batches, dtype=jnp.int32))
        mean = total / num_samples
        var = jnp.maximum(total_sq / num_samples - mean ** 2, 0.0)
        return mean, jnp.sqrt(var / max(num_samples - 1, 1))

    return jax.lax.map(per_t, timesteps)


_monte_carlo_jit = jax.jit(_monte_carlo, static_argnames=(
    "eps_fn", "statistic", "diagonal", "num_samples", "batch_size", "mesh"))


def _run_monte_carlo(statistic, process, eps_fn, params, data, timesteps, *, key, num_samples,
                     batch_size, diagonal, return_stderr, mesh):
    if num_samples < 1 or batch_size < 1 or num_samples % batch_size:
        raise ValueError(f"num_samples must be a positive multiple of batch_size, got "
                         f"num_samples={num_samples}, batch_size={batch_size}")
    if mesh is not None:
        parallel.check_divisible(batch_size, mesh, "batch_size")
        # Every process holds the whole data set; a global replicated copy for the program.
        data = parallel.replicate(np.asarray(data), mesh)
    timesteps = jnp.asarray(timesteps, jnp.int32)
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {timesteps.shape}")
    t_np = np.asarray(timesteps)
    if t_np.size and (t_np.min() < 1 or t_np.max() > process.num_timesteps):
        raise ValueError(f"timesteps must lie in [1, T={process.num_timesteps}], got "
                         f"[{t_np.min()}, {t_np.max()}]")
    mean, stderr = _monte_carlo_jit(process, eps_fn, params, jnp.asarray(data), timesteps, key,
                                    statistic=statistic, diagonal=diagonal,
                                    num_samples=num_samples, batch_size=batch_size, mesh=mesh)
    return (mean, stderr) if return_stderr else mean


def estimate_gamma(process, eps_fn: EpsFn, params, data: Array, timesteps: Array, *, key,
                   num_samples: int, batch_size: int, diagonal: bool = False,
                   return_stderr: bool = False, mesh: Optional[Mesh] = None):
    """Monte Carlo Gamma_t = E_{x_t ~ p(x_t)} ||eps_theta(x_t, t)||^2 / d for each t (spec 04 §2.5).

        Gamma_t ~ (1/N) sum_n ||eps_theta(alpha_bar_t x_0^n + beta_bar_t eps^n, t)||^2 / d,
        x_0^n drawn uniformly from `data`, eps^n ~ N(0, I)   (diagonal: eps_theta^2, for V4).

    One jitted program: `lax.map` over t, `lax.scan` over batches (eps_fn is traced once).

    Args:
        process: GaussianProcess (alpha_bar, beta_bar [T + 1]).
        eps_fn: `(params, x_t [B, ...], t int32 scalar) -> [B, ...]`.
        params: passed to eps_fn.
        data: [N, ...] training examples, sampled with replacement.
        timesteps: int [n], each in [1, T].
        key: PRNG key (t's draws use fold_in(key, t)).
        num_samples: examples per t, a multiple of batch_size (author: 160).
        batch_size: B, examples per eps_fn call.
        diagonal: return the per-coordinate E[eps_theta^2] [n, ...] instead.
        return_stderr: also return the Monte Carlo standard errors.
        mesh: a data mesh (`udm.parallel.data_mesh`, all processes' devices): each batch of B
            is split over its devices (B must be a multiple of the device count) and `params`
            must be replicated on it. The estimate equals the unsharded one up to float
            summation order (tested with threefry and rbg keys).

    Returns:
        float32 [n] (or [n, ...]); with return_stderr, (gamma, stderr).
    """
    return _run_monte_carlo("gamma", process, eps_fn, params, data, timesteps, key=key,
                            num_samples=num_samples, batch_size=batch_size, diagonal=diagonal,
                            return_stderr=return_stderr, mesh=mesh)


def estimate_eps_mse(process, eps_fn: EpsFn, params, data: Array, timesteps: Array, *, key,
                     num_samples: int, batch_size: int, diagonal: bool = False,
                     return_stderr: bool = False, mesh: Optional[Mesh] = None):
    """Monte Carlo E||eps - eps_theta(x_t, t)||^2 / d for each t, the per-t eps loss (spec 04 §3.3).

        mse_t ~ (1/N) sum_n ||eps^n - eps_theta(alpha_bar_t x_0^n + beta_bar_t eps^n, t)||^2 / d
        (diagonal: the per-coordinate mean of (eps - eps_theta)^2, for V6).

    Args and Returns: as `estimate_gamma`.
    """
    return _run_monte_carlo("mse", process, eps_fn, params, data, timesteps, key=key,
                            num_samples=num_samples, batch_size=batch_size, diagonal=diagonal,
                            return_stderr=return_stderr, mesh=mesh)


# --- sigma_bar_t^2 = Var[x_0 | x_t] from the moments ----------------------------------------

def _noise_to_signal(process, timesteps: Array, like: Array) -> Array:
    """beta_bar_t^2 / alpha_bar_t^2, shaped [n, 1, ...] to broadcast against `like` [n, ...]."""
    ratio = (process.beta_bar[timesteps] / process.alpha_bar[timesteps]) ** 2
    return ratio.reshape(ratio.shape + (1,) * (like.ndim - 1))


def clip_sigma_bar_sq(process, timesteps: Array, sigma_bar_sq: Array, *,
                      max_var: Optional[float] = None) -> Array:
    """Clips an estimate of Var[x_0|x_t] into the bounds of the optimum (spec 04 §2.3, §2.5).

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
    """Analytic-DPM's sigma_bar_t^2 from Gamma_t (spec 04 §2.4 V3, §2.5 step 2; diagonal: V4).

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
    """The maximum-likelihood sigma_bar_t^2 given a frozen mean (spec 04 §3.3, V5; diagonal: V6).

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
    """Analytic-DPM's sigma_bar_t as a [T + 1] table for make_sampler (spec 04 §2.4-2.5, V3).

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
    """The ML-isotropic sigma_bar_t as a [T + 1] table for make_sampler (spec 04 §3.3, V5).

        sigma_bar_t = sqrt((beta_bar_t^2 / alpha_bar_t^2) E||eps - eps_theta||^2 / d), clipped.

    Args and Returns: as `analytic_sigma_bar`, with the per-t eps MSE (estimate_eps_mse).
    """
    sigma_bar_sq = ml_sigma_bar_sq(process, eps_mse_by_t, timesteps, max_var=max_var)
    return sigma_bar_table(process, sigma_bar_sq, timesteps)


# --- the reverse variance of each step of a grid --------------------------------------------

def step_coefficients(process, grid: Array, eta: float):
    """sigma_s^2 and gamma_{t,s} of each step t -> s of a grid (spec 04 §2.1, spec 02 §2.4).

        sigma_s = eta beta_bar_s sqrt(1 - (alpha_bar_t / alpha_bar_s)^2) / beta_bar_t,
        gamma_{t,s} = alpha_bar_s - alpha_bar_t sqrt(beta_bar_s^2 - sigma_s^2) / beta_bar_t,

    the same quantities as the sampler's correct step (sigma_s = beta_bar_s sigma_tilde).

    Args:
        process: GaussianProcess.
        grid: int [K, 2] rows (t, s), from `udm.samplers.time_grid`.
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
    """The corrected reverse variance of each step of a grid (spec 04 §2.1 V1, §2.5 step 3).

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
    """The pixel-clip variance (clip_pixel (2/255) sqrt(pi/2))^2 (spec 04 §2.5).

    A Gaussian with this variance has mean |noise| of clip_pixel levels on the [-1, 1] scale.
    """
    return (clip_pixel * (2.0 / 255.0) * math.sqrt(math.pi / 2.0)) ** 2


def sampling_clip(step_var: Array, grid: Array, *, clip_pixel: Optional[float] = None,
                  clip_sigma_idx: int = 1, noise_free_last: bool = True) -> Array:
    """The released Analytic-DPM code's sampling-time clips of the step variances (spec 04 §2.5).

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
    `std_cap` argument of `udm.samplers.make_sampler`).

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


def sigma_bar_for_sampling(process, sigma_bar: Array, grid: Array, *, eta: float,
                           clip_pixel: Optional[float] = None, clip_sigma_idx: int = 1,
                           noise_free_last: bool = True) -> Array:
    """A [T + 1] sigma_bar table whose make_sampler steps carry the `sampling_clip` variances.

        sigma_bar_t' = min(sigma_bar_t, std_cap_t),

    i.e. var' = sampling_clip(sigma_s^2 + gamma_{t,s}^2 sigma_bar_t^2) wherever var' >= sigma_s^2
    (always for eta = 0 and for the final step; see `std_cap`).

    Args:
        process: GaussianProcess.
        sigma_bar: [T + 1] std table.
        grid: int [K, 2] rows (t, s), the sampler's grid.
        eta: the sampler's eta (1 for "ddpm").
        clip_pixel, clip_sigma_idx, noise_free_last: as `sampling_clip`.

    Returns:
        float32 [T + 1].
    """
    cap = std_cap(process, grid, eta=eta, clip_pixel=clip_pixel, clip_sigma_idx=clip_sigma_idx,
                  noise_free_last=noise_free_last)
    times = jnp.asarray(grid)[:, 0]
    return jnp.asarray(sigma_bar, jnp.float32).at[times].set(
        jnp.minimum(jnp.asarray(sigma_bar, jnp.float32)[times], cap[times]))


# --- the chain of a grid, for likelihood.variational_bound ---------------------------------

def chain_from_grid(process, grid: Array):
    """The K-step chain of a grid: index i is time tau_i, index 0 the data (spec 02 §2.4).

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

    analytic: V3 from `estimate_gamma`; ml_isotropic: V5 from `estimate_eps_mse` (spec 04).

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
    """The reverse variance of each step of a grid for a VARIANCES choice (spec 04, spec 02).

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
