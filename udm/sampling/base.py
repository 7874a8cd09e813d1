"""What every sampler shares: its inputs (a predictor, options), its output, its registry.

A predictor is any pure function `predictor(params, x_t [B, ...], t) -> x0_hat [B, ...]` (a
network wrapped by `network_predictor`, or an analytic oracle of `udm.oracles`), or one that
returns an `Estimate` (x0_hat with its own std). Every sampler, whatever the process, is built by
`udm.sampling.make_sampler` and returns a `SampleOutput`.
"""
import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax.numpy as jnp

from udm.registry import Registry

Array = Any
Predictor = Callable[[Any, Array, Array], Array]


class Estimate(NamedTuple):
    """What a predictor may return instead of a bare x0_hat: p(x_0 | x_t) ~ N(x0, diag(std^2)).

    std is a scalar or broadcasts against x0 (a state-dependent diagonal std, e.g. from the
    NPR-DPM / SN-DPM heads of udm.variance_heads). The sampler adds std * N(0, I) to x0, which
    gives a step t -> s the variance sigma_s^2 + gamma_{t,s}^2 std^2 (docs/optimal_variance.md V1, §3.6).
    """
    x0: Array
    std: Array


class SampleOutput(NamedTuple):
    """What every sampler returns."""
    x0: Array            # [B, ...] samples (decoded to data for a latent chain)
    nfe: Array           # int32: predictor evaluations per batch (every example shares them)
    success: Array       # bool: False only when an adaptive solver failed (x0 is then NaN)
    path: Optional[Array] = None  # [K, B, ...] state after each step, with return_path=True


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
    """Every sampler option, with its default; each sampler reads the ones it uses.

    Attributes:
      eta: ddim: the fresh-noise scale, sigma_s = eta sigma_s^DDPM, in [0, 1].
      spacing: a `udm.sampling.grids.SPACINGS` name (docs/time_grids.md G1-G4) or, in
        discrete time, an explicit increasing sub-sequence of {1..T}. The fixed-step SDE / ODE
        solvers and the EDM samplers follow it too.
      sigma_bar: ddpm / ddim on a discrete process: optional [T + 1] std of p(x_0 | x_t) added
        to the estimate (Analytic-DPM's sigma_bar_t).
      std_cap: optional [T + 1] upper bound on that std (`udm.variance.std_cap`).
      clip_x0: clip to [-clip_x0, clip_x0]: every x_0 estimate of the estimate-then-correct
        samplers, the final samples of the SDE / ODE solvers (which integrate the unclipped
        flow). None: no clipping.
      noise_scale: em: sigma_t = noise_scale g_t (1: reverse SDE, 0: probability-flow ODE).
      snr, corrector_steps: pc: Langevin corrector signal-to-noise ratio and steps per step.
      solver, rtol, atol, max_steps: ode_adaptive (diffrax Tsit5 / Dopri5, PID controller).
      denoise: continuous time: end with the x_0 estimate at t_min (one more evaluation).
      return_path: also return every state of the scan (estimate-then-correct samplers).
      rho: the exponent of the "karras" spacing (docs/time_grids.md (G3)); EDM's 7.
      threshold: dynamic thresholding (docs/time_grids.md (G6)): the quantile p in (0, 1) of
        |x0_hat| per example; None: off. Applied where clip_x0 is; exclusive with it.
      churn, churn_tmin, churn_tmax, churn_noise: heun_edm's stochastic churn S_churn, S_tmin,
        S_tmax, S_noise (docs/time_grids.md (G7)); churn = 0 is the deterministic sampler.
      lower_order_final: the multistep solvers (dpm_solver_pp_2m / 3m, sde_dpm_solver_pp_2m,
        unipc_bh2) take first-order last steps when K < 15 (docs/fast_solvers.md, "Few steps").
    """
    eta: float = 0.0
    spacing: Any = "uniform"
    sigma_bar: Optional[Array] = None
    std_cap: Optional[Array] = None
    clip_x0: Optional[float] = None
    noise_scale: float = 1.0
    snr: float = 0.16
    corrector_steps: int = 1
    solver: str = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 4096
    denoise: bool = True
    return_path: bool = False
    rho: float = 7.0
    threshold: Optional[float] = None
    churn: float = 0.0
    churn_tmin: float = 0.0
    churn_tmax: float = float("inf")
    churn_noise: float = 1.0
    lower_order_final: bool = True


class SamplerEntry(NamedTuple):
    """A registered sampler: its builder and which processes it supports."""
    build: Callable      # build(process, predictor, num_steps, options) -> sample fn
    supports: Callable   # supports(capabilities) -> bool
    requirement: str     # what `supports` asks of a process, for error messages
    adaptive: bool = False  # picks its own steps (num_steps unused)
    # refusal(process) -> None, or why this process cannot be sampled although its capabilities
    # allow it (e.g. a property of its schedule); checked wherever `supports` is.
    refusal: Optional[Callable] = None

    def refuses(self, process) -> Optional[str]:
        """None if this sampler can sample `process`, else the reason (for error messages)."""
        if not self.supports(process.capabilities):
            return f"needs {self.requirement}"
        return self.refusal(process) if self.refusal is not None else None


SAMPLERS: Registry = Registry("sampler")


def register(name: str, *, supports: Callable, requirement: str, adaptive: bool = False,
             refusal: Optional[Callable] = None):
    """Decorator: registers `build(process, predictor, num_steps, options)` under `name`.

    `supports(capabilities)` says which processes the sampler is for; the optional
    `refusal(process)` returns a reason for a process that the capabilities alone do not rule out.
    """
    def decorator(build):
        SAMPLERS.register(name)(SamplerEntry(build, supports, requirement, adaptive, refusal))
        return build
    return decorator


def supported_samplers(process) -> list:
    """The names of the samplers that can sample `process`."""
    return [n for n in SAMPLERS if SAMPLERS.get(n).refuses(process) is None]


def check_supported(name: str, process) -> SamplerEntry:
    """The registry entry of `name`; ValueError naming the valid samplers if `process` is not
    supported (or the name is unknown)."""
    entry = SAMPLERS.get(name)
    reason = entry.refuses(process)
    if reason is not None:
        raise ValueError(f"sampler {name!r} {reason}; the "
                         f"{type(process).__name__} samples with: "
                         f"{', '.join(supported_samplers(process))}")
    return entry


def network_predictor(process, apply_fn: Callable, *, clip: Optional[float] = None) -> Predictor:
    """Wraps a network `apply_fn(params, x_t [B,...], t_input [B]) -> output` as an x_0 predictor.

    The network sees `process.network_time(t)` for every example; its output is converted by
    the process (eps / x0 / v, or logits), then optionally clipped to [-clip, clip].
    """
    def predictor(params, xt, t):
        t_input = jnp.asarray(process.network_time(t))
        t_batch = jnp.full((xt.shape[0],), t_input, dtype=t_input.dtype)
        x0_hat = process.x0_from_output(t, xt, apply_fn(params, xt, t_batch))
        if clip is not None:
            x0_hat = jnp.clip(x0_hat, -clip, clip)
        return x0_hat

    return predictor


def x0_of(estimate) -> Array:
    """The point estimate of a predictor's result (bare x0_hat or `Estimate`)."""
    return estimate.x0 if isinstance(estimate, Estimate) else estimate


def check_clip_options(options: SamplerOptions) -> None:
    """ValueError unless at most one of clip_x0 / threshold is set and threshold is in (0, 1)."""
    if options.clip_x0 is not None and options.threshold is not None:
        raise ValueError(f"clip_x0={options.clip_x0} and threshold={options.threshold} are "
                         f"exclusive: set one of them (threshold replaces the static clip)")
    if options.threshold is not None and not 0.0 < options.threshold < 1.0:
        raise ValueError(f"threshold is the quantile p of |x0_hat| and must be in (0, 1), got "
                         f"{options.threshold}")


def dynamic_threshold(x0_hat: Array, p: float) -> Array:
    """Imagen's dynamic thresholding (docs/time_grids.md (G6)), per example.

    s = max(1, quantile_p |x0_hat|) over the example's entries; x0_hat is clipped to [-s, s]
    and divided by s, so an example whose p-quantile is at most 1 is left untouched.

    Args:
      x0_hat: [B, ...] estimates.
      p: the quantile, in (0, 1) (Imagen: 0.995).
    Returns:
      [B, ...], in [-1, 1].
    """
    flat = jnp.abs(x0_hat.reshape(x0_hat.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, p, axis=1), 1.0).astype(x0_hat.dtype)
    s = s.reshape((-1,) + (1,) * (x0_hat.ndim - 1))
    return jnp.clip(x0_hat, -s, s) / s


def clip_estimate(x0_hat: Array, options: SamplerOptions) -> Array:
    """x0_hat clipped as the options say: static clip_x0, dynamic threshold, or unchanged."""
    check_clip_options(options)
    if options.clip_x0 is not None:
        return jnp.clip(x0_hat, -options.clip_x0, options.clip_x0)
    if options.threshold is not None:
        return dynamic_threshold(x0_hat, options.threshold)
    return x0_hat


def score_from_x0(process, t, x: Array, x0_hat: Array) -> Array:
    """Tweedie's relation turned around: score = (alpha_bar x0_hat - x) / beta_bar^2."""
    alpha_bar, beta_bar = process.marginal(t)
    return (alpha_bar * x0_hat - x) / beta_bar ** 2


def score_fn_of(process, predictor: Predictor) -> Callable:
    """`score(params, x, t)` implied by an x_0 predictor of a process with Gaussian marginals."""
    def score(params, x, t):
        return score_from_x0(process, t, x, x0_of(predictor(params, x, t)))
    return score
