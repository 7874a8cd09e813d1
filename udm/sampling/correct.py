"""The estimate-then-correct samplers (docs/udm.md A3): ddpm, ddim, baseline, improved.

One `jax.lax.scan` over a time grid (`udm.sampling.grids`). Each step: x0_hat =
predictor(params, x_t, t) [+ std eps'], then x_s = process.correct(t, s, x_t, x0_hat,
sigma_tilde=rule(t, s), key=...). The four samplers differ only in the fresh-noise fraction
sigma_tilde of each step, so they are four rules, not four loops, and every process plugs in:
discrete or continuous time (a continuous grid ends at t_min, where the last x_0 estimate is
returned, like the SDE solvers' denoising step).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from udm.processes.base import decode, split_params
from udm.sampling import grids
from udm.sampling.base import (Estimate, SampleOutput, SamplerOptions, check_clip_options,
                               clip_estimate, register)


def _ddim(process, t, s, eta):
    return eta * process.ddpm_sigma_tilde(t, s)


def _ddpm(process, t, s, eta):
    del eta  # DDPM is DDIM with eta = 1
    return process.ddpm_sigma_tilde(t, s)


def _baseline(process, t, s, eta):
    del process, t, s, eta  # the UDM baseline design: x_s = F_s(x0_hat, fresh eps)
    return jnp.float32(1.0)


def _improved(process, t, s, eta):
    del process, t, s, eta  # the deterministic design (A7): reuse the inferred corruption
    return jnp.float32(0.0)


class SamplerStep(NamedTuple):
    """Per-step inputs of the scan: times t > s and the step index (for fold_in)."""
    t: jax.Array
    s: jax.Array
    index: jax.Array


def make_correct_sampler(process, predictor, num_steps: int, options: SamplerOptions, rule):
    """`sample(params, x_T, *, key) -> SampleOutput` of one fresh-noise rule (not jitted).

    The K steps run as one lax.scan over a precomputed grid, so the step is traced once whatever
    K is; step keys are fold_in(key, step index). A process with learned parameters (the encoding
    model) takes params = {"network": ..., "process": ...} and its final latent state is decoded
    to data (`udm.processes.base.split_params`, `decode`).
    """
    o = options
    if not 0.0 <= o.eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {o.eta}")
    check_clip_options(o)
    continuous = process.capabilities.continuous_time
    if continuous and (o.sigma_bar is not None or o.std_cap is not None):
        raise ValueError("sigma_bar / std_cap tables are indexed by discrete times")
    grid = grids.time_grid(process, num_steps, o.spacing, rho=o.rho)
    steps = SamplerStep(t=jnp.asarray(grid[:, 0]), s=jnp.asarray(grid[:, 1]),
                        index=jnp.arange(num_steps, dtype=jnp.int32))
    t_end = jnp.asarray(grid[-1, 1])

    def estimate(network_params, x, t, key):
        x0_hat, std = predictor(network_params, x, t), None
        if isinstance(x0_hat, Estimate):
            x0_hat, std = x0_hat
        x0_hat = clip_estimate(x0_hat, o)  # clip_x0, or thresholding (docs/time_grids.md G6)
        if o.sigma_bar is not None:
            std = o.sigma_bar[t]
        if std is not None:
            if o.std_cap is not None:
                std = jnp.minimum(std, o.std_cap[t])
            x0_hat = x0_hat + std * jax.random.normal(key, x.shape, x.dtype)
        return x0_hat

    def sample(params, x_T, *, key):
        proc, network_params = split_params(process, params)

        def body(x, step):
            step_key = jax.random.fold_in(key, step.index)
            estimate_key, correct_key = jax.random.split(step_key)
            x0_hat = estimate(network_params, x, step.t, estimate_key)
            sigma_tilde = rule(proc, step.t, step.s, o.eta)
            x_next = proc.correct(step.t, step.s, x, x0_hat,
                                  sigma_tilde=sigma_tilde, key=correct_key)
            x_next = x_next.astype(x.dtype)
            return x_next, (x_next if o.return_path else None)

        x0, path = jax.lax.scan(body, x_T, steps)
        nfe = num_steps
        if continuous:  # the state at t_min is noisy: return its x_0 estimate
            x0 = estimate(network_params, x0, t_end, jax.random.fold_in(key, num_steps))
            x0 = x0.astype(x_T.dtype)
            nfe += 1
        x0 = decode(proc, x0)
        return SampleOutput(x0, jnp.int32(nfe), jnp.bool_(True), path)

    return sample


def _register(name, rule, *, needs_ddpm_variance: bool):
    if needs_ddpm_variance:
        supports, requirement = (lambda c: c.ddpm_variance), "a process with DDPM's variance"
    else:
        supports, requirement = (lambda c: True), "any process"

    @register(name, supports=supports, requirement=requirement)
    def build(process, predictor, num_steps, options):
        return make_correct_sampler(process, predictor, num_steps, options, rule)
    return build


_register("ddpm", _ddpm, needs_ddpm_variance=True)
_register("ddim", _ddim, needs_ddpm_variance=True)
_register("baseline", _baseline, needs_ddpm_variance=False)
_register("improved", _improved, needs_ddpm_variance=False)


def slerp(z1, z2, lam):
    """Spherical interpolation of Gaussian latents, z1 cos(lam pi/2) + z2 sin(lam pi/2) (docs/ddpm_ddim.md §2.5).

    Keeps N(0, I) when z1, z2 are independent N(0, I); lam in [0, 1].
    """
    angle = lam * jnp.pi / 2
    return jnp.cos(angle) * z1 + jnp.sin(angle) * z2
