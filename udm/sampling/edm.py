"""EDM's samplers in sigma = beta_bar / alpha_bar: heun_edm, euler_ancestral (docs/time_grids.md G7, G8).

Karras et al. (arXiv 2206.00364) write a Gaussian-marginal process in the scaled variable
y = x / alpha_bar = x_0 + sigma eps, whose probability-flow ODE is dy/dsigma = (y - D(y; sigma)) /
sigma with the denoiser D = E[x_0 | x]. Both samplers run on a udm time grid (any spacing;
"karras" is EDM's), evaluate the predictor only at grid times, and run as one `jax.lax.scan`
with fold_in(key, step) noise:

* "heun_edm": Algorithm 2 of the paper: a Heun step in sigma between consecutive grid times, the
  step to sigma = 0 an Euler step (which is the estimate D itself); optional churn (S_churn,
  S_tmin, S_tmax, S_noise) raises sigma to sigma_hat before a step by adding fresh noise. In
  discrete time sigma_hat is rounded to a step of the chain, so the predictor is still only
  asked at integer times.
* "euler_ancestral": an Euler step down to sigma_down, then fresh noise up to the next sigma
  (k-diffusion's ancestral Euler with eta = 1).

NFE: heun_edm 2K - 1 in discrete time (K - 1 Heun steps, then the estimate at tau_1), 2K (+1
with `denoise`) in continuous time (K Heun steps down to t_min, then the estimate there);
euler_ancestral K in discrete time, K (+1 with `denoise`) in continuous time.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from udm.processes.base import decode, split_params
from udm.sampling import grids
from udm.sampling.base import (SampleOutput, SamplerOptions, check_clip_options, clip_estimate,
                               register, x0_of)


class EDMStep(NamedTuple):
    """Per-step inputs of the scan: times t > s, the churned time t_hat >= t, the step index."""
    t: jax.Array
    t_hat: jax.Array
    s: jax.Array
    index: jax.Array


def _sigma(process, t):
    alpha_bar, beta_bar = process.marginal(t)
    return beta_bar / alpha_bar


def _infinite_top(process):
    """Why EDM's samplers refuse `process`: sigma = beta_bar / alpha_bar is infinite at its top
    (a zero-terminal-SNR schedule, flow matching at t = 1); None where sigma_max is finite."""
    top = 1.0 if process.capabilities.continuous_time else process.num_timesteps
    if np.isfinite(grids.log_snr(process, top)):
        return None
    return ("works in sigma = beta_bar / alpha_bar, which is infinite at the top of this process "
            "(alpha_bar = 0: a zero-terminal-SNR schedule or flow matching)")


def _check_finite_top(process) -> None:
    reason = _infinite_top(process)
    if reason is not None:
        raise ValueError(f"heun_edm / euler_ancestral {reason}; use ddim, the DPM-Solvers or the "
                         f"ODE solvers there")


def churn_times(process, times: np.ndarray, num_steps: int, o: SamplerOptions) -> np.ndarray:
    """t_hat_i >= t_i with sigma(t_hat_i) ~ (1 + gamma_i) sigma(t_i) (docs/time_grids.md (G7)).

    gamma_i = min(S_churn / K, sqrt(2) - 1) where S_tmin <= sigma(t_i) <= S_tmax, else 0; sigma_hat
    is capped at the top of the process (t = 1 or T), where sigma is largest. Continuous time:
    by bisection; discrete time: the nearest step at or above t_i.
    """
    if o.churn == 0.0:
        return times
    lam = grids.log_snr(process, times)
    sigma = np.exp(-lam)
    in_window = (o.churn_tmin <= sigma) & (sigma <= o.churn_tmax)
    gamma = np.where(in_window, min(o.churn / num_steps, math.sqrt(2.0) - 1.0), 0.0)
    continuous = process.capabilities.continuous_time
    top = 1.0 if continuous else process.num_timesteps
    lam_hat = np.maximum(lam - np.log1p(gamma), grids.log_snr(process, top))
    if continuous:
        t_hat = grids.times_of_log_snr(process, lam_hat, t_lo=process.t_min)
        t_hat = np.maximum(t_hat, times)
    else:
        t_hat = np.maximum(grids.nearest_steps(process, process.num_timesteps, lam_hat), times)
    return np.where(gamma > 0, t_hat, times).astype(times.dtype)


def _check_churn(o: SamplerOptions) -> None:
    if o.churn < 0 or o.churn_noise < 0 or o.churn_tmin > o.churn_tmax:
        raise ValueError(f"need churn >= 0, churn_noise >= 0 and churn_tmin <= churn_tmax, got "
                         f"churn={o.churn}, churn_noise={o.churn_noise}, "
                         f"churn_tmin={o.churn_tmin}, churn_tmax={o.churn_tmax}")


def make_heun_edm(process, predictor, num_steps: int, options: SamplerOptions):
    """`sample(params, x_T, *, key) -> SampleOutput` of EDM's Algorithm 2, not jitted.

    docs/time_grids.md G7; Karras et al., arXiv 2206.00364.

    Args:
      process: a process with Gaussian marginals (discrete or continuous time).
      predictor: `(params, x_t [B, ...], t) -> x0_hat` (or an `Estimate`, whose std is unused).
      num_steps: K grid steps.
      options: spacing, rho, churn*, denoise; clip_x0 / threshold act on the final samples.
    """
    o = options
    check_clip_options(o)
    _check_churn(o)
    continuous = process.capabilities.continuous_time
    grid = grids.time_grid(process, num_steps, o.spacing, rho=o.rho)
    _check_finite_top(process)
    # Heun steps go between grid times with s > 0; the step to sigma = 0 (discrete time) is the
    # estimate at tau_1. A continuous grid ends at t_min > 0: every row is a Heun step.
    rows = grid if continuous else grid[:-1]
    t_last = grid[-1, 1] if continuous else grid[-1, 0]
    t_hat = churn_times(process, rows[:, 0], num_steps, o)
    steps = EDMStep(t=jnp.asarray(rows[:, 0]), t_hat=jnp.asarray(t_hat),
                    s=jnp.asarray(rows[:, 1]), index=jnp.arange(rows.shape[0], dtype=jnp.int32))
    stochastic = o.churn > 0
    nfe = 2 * rows.shape[0] + (1 if (o.denoise or not continuous) else 0)

    def sample(params, x_T, *, key):
        proc, network_params = split_params(process, params)

        def denoise(y, t):
            alpha_bar, _ = proc.marginal(t)
            return x0_of(predictor(network_params, alpha_bar * y, t)).astype(y.dtype)

        def body(y, step):
            sigma_t, sigma_hat = _sigma(proc, step.t), _sigma(proc, step.t_hat)
            if stochastic:  # gamma = 0 steps add exactly zero noise (t_hat = t)
                z = jax.random.normal(jax.random.fold_in(key, step.index), y.shape, y.dtype)
                spread = jnp.sqrt(jnp.maximum(sigma_hat ** 2 - sigma_t ** 2, 0.0))
                y = y + o.churn_noise * spread * z
            sigma_s = _sigma(proc, step.s)
            d = (y - denoise(y, step.t_hat)) / sigma_hat
            y_euler = y + (sigma_s - sigma_hat) * d
            d_s = (y_euler - denoise(y_euler, step.s)) / sigma_s
            y_next = y + (sigma_s - sigma_hat) * 0.5 * (d + d_s)
            return y_next.astype(y.dtype), None

        alpha_top, _ = proc.marginal(jnp.asarray(grid[0, 0]))
        y, _ = jax.lax.scan(body, (x_T / alpha_top).astype(x_T.dtype), steps)
        t_end = jnp.asarray(t_last)
        if continuous and not o.denoise:
            x0 = (proc.marginal(t_end)[0] * y).astype(x_T.dtype)
        else:
            x0 = denoise(y, t_end)
        x0 = decode(proc, clip_estimate(x0, o))
        return SampleOutput(x0, jnp.int32(nfe), jnp.bool_(True))

    return sample


def make_euler_ancestral(process, predictor, num_steps: int, options: SamplerOptions):
    """`sample(params, x_T, *, key) -> SampleOutput` of the ancestral Euler sampler, not jitted.

    docs/time_grids.md G8 (k-diffusion's sample_euler_ancestral, eta = 1).

    Each step t -> s: y' = D + (sigma_down / sigma_t)(y - D), then y_s = y' + sigma_up z with
    sigma_up = sigma_s sqrt(1 - sigma_s^2 / sigma_t^2), sigma_down = sqrt(sigma_s^2 - sigma_up^2).
    """
    o = options
    check_clip_options(o)
    continuous = process.capabilities.continuous_time
    grid = grids.time_grid(process, num_steps, o.spacing, rho=o.rho)
    _check_finite_top(process)
    steps = (jnp.asarray(grid[:, 0]), jnp.asarray(grid[:, 1]),
             jnp.arange(num_steps, dtype=jnp.int32))
    nfe = num_steps + (1 if continuous and o.denoise else 0)

    def sample(params, x_T, *, key):
        proc, network_params = split_params(process, params)

        def denoise(y, t):
            alpha_bar, _ = proc.marginal(t)
            return x0_of(predictor(network_params, alpha_bar * y, t)).astype(y.dtype)

        def body(y, step):
            t, s, index = step
            sigma_t, sigma_s = _sigma(proc, t), _sigma(proc, s)
            d0 = denoise(y, t)
            sigma_up = jnp.minimum(sigma_s, jnp.sqrt(jnp.maximum(
                sigma_s ** 2 * (sigma_t ** 2 - sigma_s ** 2) / sigma_t ** 2, 0.0)))
            sigma_down = jnp.sqrt(jnp.maximum(sigma_s ** 2 - sigma_up ** 2, 0.0))
            z = jax.random.normal(jax.random.fold_in(key, index), y.shape, y.dtype)
            y_next = d0 + (sigma_down / sigma_t) * (y - d0) + sigma_up * z
            return y_next.astype(y.dtype), None

        alpha_top, _ = proc.marginal(jnp.asarray(grid[0, 0]))
        y, _ = jax.lax.scan(body, (x_T / alpha_top).astype(x_T.dtype), steps)
        t_end = jnp.asarray(grid[-1, 1])
        if continuous and o.denoise:
            x0 = denoise(y, t_end)
        else:  # discrete time: the last step went to sigma = 0, y is x_0
            x0 = (proc.marginal(t_end)[0] * y).astype(x_T.dtype)
        x0 = decode(proc, clip_estimate(x0, o))
        return SampleOutput(x0, jnp.int32(nfe), jnp.bool_(True))

    return sample


def _gaussian(c):
    return c.gaussian_marginals


_REQUIREMENT = "a process with Gaussian marginals"
register("heun_edm", supports=_gaussian, requirement=_REQUIREMENT,
         refusal=_infinite_top)(make_heun_edm)
register("euler_ancestral", supports=_gaussian, requirement=_REQUIREMENT,
         refusal=_infinite_top)(make_euler_ancestral)
