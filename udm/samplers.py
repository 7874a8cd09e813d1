"""The generic estimate-then-correct sampler (spec 01 A3), one `jax.lax.scan` over a time grid.

Every process plugs in through two methods, `correct(t, s, x_t, x0_hat, *, sigma_tilde, key)` and
`prior(key, shape)`; every predictor is a pure function `predictor(params, x_t, t) -> x0_hat`
(a network wrapped by `network_predictor`, or an analytic oracle). DDPM and DDIM(eta) are two
rules for the fresh-noise fraction sigma_tilde on each step, not two loops.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from udm.processes.base import decode, split_params
from udm.registry import Registry

Array = Any
Predictor = Callable[[Any, Array, Array], Array]

# --- time grids: increasing sub-sequences tau_1 < ... < tau_K = T of {1, ..., T} -------------

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


def time_grid(num_timesteps: int, num_steps: int, spacing="uniform") -> np.ndarray:
    """The sampling grid as pairs (t, s), from the top step down: [[tau_K, tau_{K-1}], ..., [tau_1, 0]].

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


# --- how much fresh noise each step gets ----------------------------------------------------

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


SAMPLERS = Registry("sampler")
SAMPLERS.register("ddim")(_ddim)
SAMPLERS.register("ddpm")(_ddpm)
SAMPLERS.register("baseline")(_baseline)
SAMPLERS.register("improved")(_improved)


class Estimate(NamedTuple):
    """What a predictor may return instead of a bare x0_hat: p(x_0 | x_t) ~ N(x0, diag(std^2)).

    std is a scalar or broadcasts against x0 (a state-dependent diagonal std, e.g. from the
    NPR-DPM / SN-DPM heads of udm.variance_heads). The sampler adds std * N(0, I) to x0, which
    gives a step t -> s the variance sigma_s^2 + gamma_{t,s}^2 std^2 (spec 04 V1, §3.6).
    """
    x0: Array
    std: Array


class SamplerStep(NamedTuple):
    """Per-step inputs of the scan: times t > s and the step index (for fold_in)."""
    t: Array
    s: Array
    index: Array


def make_sampler(process, predictor: Predictor, *, num_steps: int, name: str = "ddim",
                 eta: float = 0.0, spacing: str = "uniform",
                 sigma_bar: Optional[Array] = None, std_cap: Optional[Array] = None,
                 return_path: bool = False, jit: bool = True):
    """Builds `sample(params, x_T, *, key) -> x_0` for any process and predictor.

    Each step (spec 01 A3, B1.2): x0_hat = predictor(params, x_t, t) [+ std eps'],
    then x_s = process.correct(t, s, x_t, x0_hat, sigma_tilde=rule(t, s), key=...).
    The K steps run as one lax.scan over a precomputed grid, so the step is traced once
    whatever K is; step keys are fold_in(key, step index). A process with learned parameters
    (the encoding model) takes params = {"network": ..., "process": ...} and its final latent
    state is decoded to data (`udm.processes.base.split_params`, `decode`).

    Args:
      process: a process object (e.g. GaussianProcess).
      predictor: `(params, x_t [B, ...], t scalar int) -> x0_hat [B, ...]`, or an `Estimate`
        (x0_hat with its own, possibly state-dependent, std).
      num_steps: K, number of network calls, in [1, T].
      name: "ddpm", "ddim", "baseline" (fresh corruption of x0_hat, sigma_tilde = 1) or
        "improved" (the deterministic design, sigma_tilde = 0, for processes without DDPM's
        variance); see SAMPLERS.
      eta: DDIM's scale of the DDPM noise, sigma_s = eta * sigma_s^DDPM (ignored by ddpm/baseline).
      spacing: "uniform" or "quadratic" sub-sequence of {1..T}, or the sequence itself (see
        `time_grid`).
      sigma_bar: optional [T + 1] std of p(x_0 | x_t) added to the estimate (Analytic-DPM's
        sigma_bar_t); None means the point estimate (or the predictor's own Estimate std).
      std_cap: optional [T + 1] upper bound on that std at each t (see
        `udm.variance.std_cap`: 0 makes a step mean-only, a finite value is the pixel clip).
      return_path: also return every state: (x_0, path [K, B, ...]) with path[i] the state
        after step i (path[-1] = x_0, before `decode` for a latent chain), for trajectories
        and strips.
      jit: return a jitted function (default) or the pure one.
    Returns:
      sample(params, x_T, *, key) -> x_0 with the shape of x_T (or (x_0, path)).
    """
    rule = SAMPLERS.get(name)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    grid = time_grid(process.num_timesteps, num_steps, spacing)
    steps = SamplerStep(t=jnp.asarray(grid[:, 0]), s=jnp.asarray(grid[:, 1]),
                        index=jnp.arange(num_steps, dtype=jnp.int32))

    def sample(params, x_T, *, key):
        proc, network_params = split_params(process, params)

        def body(x, step):
            step_key = jax.random.fold_in(key, step.index)
            estimate_key, correct_key = jax.random.split(step_key)
            x0_hat, std = predictor(network_params, x, step.t), None
            if isinstance(x0_hat, Estimate):
                x0_hat, std = x0_hat
            if sigma_bar is not None:
                std = sigma_bar[step.t]
            if std is not None:
                if std_cap is not None:
                    std = jnp.minimum(std, std_cap[step.t])
                x0_hat = x0_hat + std * jax.random.normal(estimate_key, x.shape, x.dtype)
            sigma_tilde = rule(proc, step.t, step.s, eta)
            x_next = proc.correct(step.t, step.s, x, x0_hat,
                                  sigma_tilde=sigma_tilde, key=correct_key)
            x_next = x_next.astype(x.dtype)
            return x_next, (x_next if return_path else None)

        x0, path = jax.lax.scan(body, x_T, steps)
        x0 = decode(proc, x0)
        return (x0, path) if return_path else x0

    return jax.jit(sample) if jit else sample


def network_predictor(process, apply_fn: Callable, *, clip: Optional[float] = None) -> Predictor:
    """Wraps a network `apply_fn(params, x_t [B,...], t [B]) -> output` as an x_0 predictor.

    The output is converted by the process (eps / x0 / v), then optionally clipped to
    [-clip, clip] (the data range), which keeps early, far-from-data estimates sane.
    """
    def predictor(params, xt, t):
        t_batch = jnp.full((xt.shape[0],), t, dtype=jnp.int32)
        x0_hat = process.x0_from_output(t, xt, apply_fn(params, xt, t_batch))
        if clip is not None:
            x0_hat = jnp.clip(x0_hat, -clip, clip)
        return x0_hat

    return predictor


def slerp(z1: Array, z2: Array, lam) -> Array:
    """Spherical interpolation of Gaussian latents, z1 cos(lam pi/2) + z2 sin(lam pi/2) (spec 02 §2.5).

    Keeps N(0, I) when z1, z2 are independent N(0, I); lam in [0, 1].
    """
    angle = lam * jnp.pi / 2
    return jnp.cos(angle) * z1 + jnp.sin(angle) * z2
