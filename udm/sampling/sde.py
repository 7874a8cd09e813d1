"""Reverse-time SDE and probability-flow ODE samplers of a continuous-time process (docs/sde_ode.md).

em and pc need the SDE's drift and diffusion (`Capabilities.reverse_sde`: the SDEs of
udm.processes.sde); the ODE samplers need only Gaussian marginals, so they also run the
flow-matching path (docs/flow_matching.md (FM5)), whose g_t^2 diverges at t = 1.

* "em": Euler-Maruyama on the one-parameter family of reverse SDEs that share the marginals
  (S9), dx = [f_t x - 1/2 (g_t^2 + sigma_t^2) score] dt + sigma_t dw with sigma_t = lambda g_t:
  lambda = 1 is the reverse SDE (S3)/(S4), lambda = 0 the probability-flow ODE (S10) by Euler.
* "pc": predictor-corrector (Song et al. 2021): the "reverse diffusion" predictor, which
  discretises the reverse SDE with the exact forward kernel of each step, after a Langevin
  corrector whose step is set by a signal-to-noise ratio.
* "ode_euler", "ode_heun", "ode_ddim", "ode_adaptive": the probability-flow ODE (udm.sampling.ode).

The registered samplers take the x_0 predictor every sampler takes: em and pc turn it into the
score (alpha_bar x0_hat - x) / beta_bar^2, the ODE samplers use it directly (kind="x0"); the
builders below also take a score function (tests use exact scores). They run from x_1 at t = 1 to
t_end = t_min and by default return the x_0 estimate at t_end (for a score, Tweedie's
E[x_0 | x_{t_end}] = (x + beta_bar^2 score) / alpha_bar; one more evaluation), as
`SampleOutput(x0, nfe, success)`.
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from udm.sampling import grids, ode
from udm.sampling.base import (SampleOutput, SamplerOptions, check_clip_options, clip_estimate,
                               register, score_fn_of, x0_of)

Array = Any


def _per_example_norm(x):
    return jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1))


def euler_maruyama_step(sde, score, x, t, s, noise_scale, z):
    """One step t -> s < t of the reverse SDE family (S9) with sigma_t = noise_scale * g_t."""
    dt = t - s
    g2 = sde.g2(t)
    mean = x - (sde.f(t) * x - 0.5 * (1.0 + noise_scale ** 2) * g2 * score) * dt
    return mean + noise_scale * jnp.sqrt(g2 * dt) * z, mean


def reverse_diffusion_step(sde, score, x, t, s, z):
    """One "reverse diffusion" step t -> s: with the forward kernel x_t = a x_s + sqrt(v) eps,
    x_s = x_t - (a - 1) x_t + v score + sqrt(v) z (Song et al.'s ReverseDiffusionPredictor, for any
    linear SDE)."""
    a, v = sde.transition(t, s)
    mean = x - (a - 1.0) * x + v * score
    return mean + jnp.sqrt(v) * z, mean


def langevin_step(sde, score, x, t, s, snr, z):
    """One Langevin corrector step at time t: x + eps score + sqrt(2 eps) z.

    eps = 2 a^2 (snr mean||z|| / mean||score||)^2 with norms per example averaged over the batch
    (Song et al.'s rule) and a^2 = alpha_bar_t^2 / alpha_bar_s^2 (their 1 - beta_i for VP, 1 for
    VE). The batch means matter: a step size set per example from its own ||score(x)|| depends
    on the state, and the chain then leaves p_t for p_t ||score||^2 (variance too large by a
    factor (d + 2) / d). The norm ratio is only meaningful in high dimension, where
    ||z|| ~ sqrt(d).
    """
    a, _ = sde.transition(t, s)
    ratio = snr * jnp.mean(_per_example_norm(z)) / jnp.mean(_per_example_norm(score))
    step = 2.0 * a ** 2 * ratio ** 2
    return x + step * score + jnp.sqrt(2.0 * step) * z


def make_sde_sampler(sde, score_fn: Callable, *, num_steps: int, predictor: str = "em",
                     noise_scale: float = 1.0, corrector_steps: int = 0, snr: float = 0.16,
                     denoise: bool = True, t_end: Optional[float] = None, jit: bool = True,
                     times: Optional[Array] = None):
    """Builds `sample(params, x_1, *, key) -> SampleOutput` for a reverse-time SDE.

    Args:
      sde: a continuous-time process (`udm.processes.sde`).
      score_fn: `(params, x [B, ...], t scalar) -> score [B, ...]`.
      num_steps: K predictor steps on a uniform grid from 1 to t_end.
      predictor: "em" (the (S9) family, sigma_t = noise_scale g_t) or "reverse_diffusion".
      noise_scale: lambda >= 0 of the "em" family (1: reverse SDE, 0: probability-flow ODE).
        Every lambda >= 0 keeps the marginals; only the discretisation error differs.
      corrector_steps: Langevin corrector steps before each predictor step (0: none).
      snr: the corrector's signal-to-noise ratio r.
      denoise: return E[x_0 | x_{t_end}] (Tweedie, one more evaluation) instead of x_{t_end}.
      t_end: last time, default sde.t_min.
      times: optional [K + 1] decreasing times from 1 to t_end (`udm.sampling.grids`), instead of
        the uniform grid.
    """
    if predictor not in ("em", "reverse_diffusion"):
        raise ValueError(f"unknown predictor {predictor!r}; valid: em, reverse_diffusion")
    if noise_scale < 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    if num_steps < 1 or corrector_steps < 0:
        raise ValueError(f"need num_steps >= 1 and corrector_steps >= 0, got {num_steps}, "
                         f"{corrector_steps}")
    t_end = sde.t_min if t_end is None else t_end
    grid = _grid(times, 1.0, t_end, num_steps)
    t_end = grid[-1]
    steps = (grid[:-1], grid[1:], jnp.arange(num_steps, dtype=jnp.int32))
    nfe = num_steps * (1 + corrector_steps) + int(denoise)

    def sample(params, x_1, *, key):
        def body(x, step):
            t, s, index = step
            keys = jax.random.split(jax.random.fold_in(key, index), corrector_steps + 1)
            for j in range(corrector_steps):
                z = jax.random.normal(keys[j], x.shape, x.dtype)
                x = langevin_step(sde, score_fn(params, x, t), x, t, s, snr, z)
            z = jax.random.normal(keys[-1], x.shape, x.dtype)
            score = score_fn(params, x, t)
            if predictor == "em":
                x, _ = euler_maruyama_step(sde, score, x, t, s, noise_scale, z)
            else:
                x, _ = reverse_diffusion_step(sde, score, x, t, s, z)
            return x.astype(x_1.dtype), None

        x, _ = jax.lax.scan(body, x_1, steps)
        if denoise:
            x = sde.x0_from_score(x, t_end, score_fn(params, x, t_end))
        return SampleOutput(x, jnp.int32(nfe), jnp.bool_(True))

    return jax.jit(sample) if jit else sample


def _grid(times, t0, t1, num_steps):
    """The float32 [K + 1] times of a fixed-step solve: `times` if given, else uniform."""
    if times is None:
        return jnp.linspace(t0, t1, num_steps + 1, dtype=jnp.float32)
    times = jnp.asarray(times, jnp.float32)
    if times.shape != (num_steps + 1,):
        raise ValueError(f"times must be [K + 1] = [{num_steps + 1}], got {times.shape}")
    return times


def make_ode_sampler(sde, score_fn: Callable, *, num_steps: int = 0, method: str = "euler",
                     denoise: bool = True, t_end: Optional[float] = None, jit: bool = True,
                     kind: str = "score", times: Optional[Array] = None, **adaptive_options):
    """Builds `sample(params, x_1, *, key) -> SampleOutput` from the probability-flow ODE.

    method: "euler", "heun", "ddim" (K fixed steps) or "adaptive" (diffrax; num_steps unused;
    `adaptive_options` go to `udm.sampling.ode.make_adaptive_solver`: solver, rtol, atol, max_steps).
    kind: what score_fn returns, "score" or "x0" (`udm.sampling.ode.make_denoiser`).
    The key is unused (the ODE is deterministic). `times`: optional [K + 1] fixed-step grid.
    """
    t_end = sde.t_min if t_end is None else t_end
    if times is not None:
        t_end = float(times[-1])
    if method == "adaptive":
        solve = ode.make_adaptive_solver(sde, score_fn, t0=1.0, t1=t_end, kind=kind,
                                         **adaptive_options)
    else:
        solve = ode.make_fixed_step_solver(sde, score_fn, num_steps=num_steps, method=method,
                                           t0=1.0, t1=t_end, kind=kind, times=times)
    denoiser = ode.make_denoiser(sde, score_fn, kind)

    def sample(params, x_1, *, key):
        del key
        x, nfe, success = solve(params, x_1)
        if denoise:
            x = denoiser(params, x, jnp.float32(t_end))[0].astype(x.dtype)
            nfe = nfe + 1
        return SampleOutput(x, nfe, success)

    return jax.jit(sample) if jit else sample


# --- the registered samplers ------------------------------------------------------------------

def _continuous_gaussian(c):
    return c.continuous_time and c.gaussian_marginals


def _reverse_sde(c):
    return c.continuous_time and c.gaussian_marginals and c.reverse_sde


_REQUIREMENT = ("a continuous-time process with Gaussian marginals (an SDE, or the flow-matching "
                "path)")
_SDE_REQUIREMENT = ("a reverse-time SDE with finite drift and diffusion on [t_min, 1] "
                    "(Capabilities.reverse_sde: the SDEs, not the flow-matching path, whose "
                    "g_t^2 diverges at t = 1)")


def x0_fn_of(predictor) -> Callable:
    """`(params, x, t) -> x0_hat` of a predictor (the point estimate of an `Estimate`)."""
    return lambda params, x, t: x0_of(predictor(params, x, t))


def _clipped(sample, options: SamplerOptions):
    """The samples clipped by clip_x0 or thresholded (docs/time_grids.md G6); the flow itself is
    integrated unclipped."""
    check_clip_options(options)
    if options.clip_x0 is None and options.threshold is None:
        return sample

    def clipped(params, x, *, key):
        out = sample(params, x, key=key)
        return out._replace(x0=clip_estimate(out.x0, options))
    return clipped


def _times(process, num_steps, o: SamplerOptions):
    """[K + 1] times of the spacing the options name (docs/time_grids.md)."""
    grid = grids.time_grid(process, num_steps, o.spacing, rho=o.rho)
    return np.concatenate([grid[:, 0], grid[-1:, 1]])


@register("em", supports=_reverse_sde, requirement=_SDE_REQUIREMENT)
def _em(process, predictor, num_steps, o: SamplerOptions):
    return _clipped(make_sde_sampler(process, score_fn_of(process, predictor),
                                     num_steps=num_steps, predictor="em",
                                     noise_scale=o.noise_scale, denoise=o.denoise, jit=False,
                                     times=_times(process, num_steps, o)), o)


@register("pc", supports=_reverse_sde, requirement=_SDE_REQUIREMENT)
def _pc(process, predictor, num_steps, o: SamplerOptions):
    return _clipped(make_sde_sampler(process, score_fn_of(process, predictor),
                                     num_steps=num_steps, predictor="reverse_diffusion",
                                     corrector_steps=o.corrector_steps, snr=o.snr,
                                     denoise=o.denoise, jit=False,
                                     times=_times(process, num_steps, o)), o)


def _fixed_ode(method):
    def build(process, predictor, num_steps, o: SamplerOptions):
        return _clipped(make_ode_sampler(process, x0_fn_of(predictor), num_steps=num_steps,
                                         method=method, denoise=o.denoise, jit=False,
                                         kind="x0", times=_times(process, num_steps, o)), o)
    return build


for _method in ("euler", "heun", "ddim"):
    register(f"ode_{_method}", supports=_continuous_gaussian,
             requirement=_REQUIREMENT)(_fixed_ode(_method))


@register("ode_adaptive", supports=_continuous_gaussian, requirement=_REQUIREMENT, adaptive=True)
def _ode_adaptive(process, predictor, num_steps, o: SamplerOptions):
    del num_steps  # the controller chooses the steps
    return _clipped(make_ode_sampler(process, x0_fn_of(predictor), method="adaptive",
                                     denoise=o.denoise, solver=o.solver, rtol=o.rtol,
                                     atol=o.atol, max_steps=o.max_steps, jit=False, kind="x0"),
                    o)
