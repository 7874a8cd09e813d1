"""Every sampler of udm behind one entry point, `make_sampler`, with one return type.

    sample = make_sampler(process, predictor, "ddim", num_steps=50, eta=0.0)
    out = sample(params, x_T, key=key)     # SampleOutput(x0, nfe, success, path)

Samplers (one registry, `SAMPLERS`; each states which processes it supports):
  ddpm, ddim, baseline, improved   estimate-then-correct (docs/udm.md A3), any process / any with
                                   DDPM's variance, discrete or continuous time (`correct`)
  em, pc                           reverse-time SDE (docs/sde_ode.md S9) and predictor-corrector (`sde`),
                                   processes declaring `reverse_sde` (the SDEs)
  ode_euler, ode_heun, ode_ddim, ode_adaptive   the probability-flow ODE (docs/sde_ode.md S10) in
                                   velocity form (docs/flow_matching.md FM5; `ode`): the SDEs and flow matching
  heun_edm, euler_ancestral        EDM's Heun (with churn) and ancestral Euler in sigma =
                                   beta_bar / alpha_bar, any Gaussian-marginal process
                                   (docs/time_grids.md G7, G8; `edm`)
  dpm_solver_1, dpm_solver_2, dpm_solver_3, dpm_solver_pp_2m, dpm_solver_pp_3m,
  sde_dpm_solver_pp_2m, unipc_bh2   exponential integrators in the half log-SNR, any process with
                                   Gaussian marginals, discrete or continuous time
                                   (docs/fast_solvers.md; `dpm`)
Guidance: `classifier_free_guidance(conditional, unconditional, scale)` turns two predictors into
a guided one that every sampler takes (docs/guidance.md; `guidance`).
Inpainting: `inpainting_predictor(predictor, known, mask)` puts the known part of x_0 into every
estimate (logits space and reveal=True for token processes), for every sampler
(docs/inpainting.md; `inpaint`).
Time grids come from `grids` (spacings: docs/time_grids.md). A predictor is `(params, x_t, t) -> x0_hat` (or an `Estimate`).
"""
from typing import Any

import jax

from udm.sampling import correct, dpm, edm, grids, ode, sde  # noqa: F401  (registers the samplers)
from udm.sampling.base import (SAMPLERS, Estimate, Predictor, SampleOutput, SamplerOptions,
                               check_supported, clip_estimate, dynamic_threshold,
                               network_predictor, score_fn_of, score_from_x0, supported_samplers)
from udm.sampling.correct import slerp
from udm.sampling.grids import (SPACINGS, check_num_steps, continuous_time_grid,
                                discrete_time_grid, time_grid)
from udm.sampling.guidance import classifier_free_guidance, guide
from udm.sampling.inpaint import inpainting_predictor


def make_sampler(process, predictor: Predictor, name: str = "ddim", *, num_steps: int = 0,
                 jit: bool = True, **options: Any):
    """Builds `sample(params, x_T, *, key) -> SampleOutput` for any process and sampler.

    Args:
      process: a process (`udm.processes`).
      predictor: `(params, x_t [B, ...], t) -> x0_hat [B, ...]`, or an `Estimate`.
      name: a SAMPLERS name; refused, naming the valid ones, if it does not support `process`.
      num_steps: K steps of the time grid (ignored by ode_adaptive): [1, T] in discrete time.
      jit: return a jitted function (default) or the pure one.
      **options: `SamplerOptions` fields (eta, spacing, sigma_bar, std_cap, clip_x0,
        noise_scale, snr, corrector_steps, solver, rtol, atol, max_steps, denoise, return_path,
        rho, threshold, churn, churn_tmin, churn_tmax, churn_noise).
    """
    entry = check_supported(name, process)
    try:
        opts = SamplerOptions(**options)
    except TypeError as e:
        raise TypeError(f"{e}; valid options: "
                        f"{', '.join(SamplerOptions.__dataclass_fields__)}") from None
    if not entry.adaptive:
        check_num_steps(process, num_steps)
    sample = entry.build(process, predictor, num_steps, opts)
    return jax.jit(sample) if jit else sample


__all__ = ["SAMPLERS", "SPACINGS", "Estimate", "Predictor", "SampleOutput", "SamplerOptions",
           "check_num_steps", "check_supported", "classifier_free_guidance", "clip_estimate",
           "continuous_time_grid", "discrete_time_grid", "dynamic_threshold", "guide",
           "inpainting_predictor", "make_sampler", "network_predictor", "score_fn_of",
           "score_from_x0", "slerp", "supported_samplers", "time_grid"]
