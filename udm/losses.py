"""Training losses: fit the x_0 predictor of p(x_0 | x_t) (spec 01 A4-A5, spec 02 §1.3)."""
from typing import Any, Callable

import jax
import jax.numpy as jnp

from udm.processes.base import split_params

Array = Any


def make_loss_fn(process, apply_fn: Callable, *, weighting: str = "none"):
    """Builds `loss_fn(params, x0, *, key) -> (loss, aux)` for any discrete-time UDM process.

    Per example (spec 01 A4): t ~ U{1..T}, eps ~ q(eps) (`process.sample_eps`), x_t = F_t(x_0, eps);
    the network output at (x_t, t) is scored by `process.loss(t, x0, eps, output, weighting=...)`
    (Gaussian: w(t) times the mean squared error against the eps / x0 / v target, the DDPM loss
    for prediction "eps" and weighting "none"; other processes: their own x_0 loss, e.g. l1 for
    cold diffusion, cross-entropy for token corruptions).

    Args:
      process: a UDM process (udm.processes). A process with learned parameters (the encoding
        model) takes params = {"network": ..., "process": ...} and is trained jointly.
      apply_fn: `apply_fn(params, x_t [B, ...], t [B], key) -> output [B, ...]`; the key feeds
        dropout.
      weighting: a per-t loss weighting the process knows (Gaussian: LOSS_WEIGHTINGS).
    Returns:
      loss_fn(params, x0 [B, ...], *, key) -> (scalar loss, dict of per-batch diagnostics,
      with the process's own `diagnostics()` where it has them).
    """
    process.check_weighting(weighting)  # fail early on a name the process does not know

    def loss_fn(params, x0, *, key):
        t_key, eps_key, net_key = jax.random.split(key, 3)
        proc, network_params = split_params(process, params)
        batch = x0.shape[0]
        t = jax.random.randint(t_key, (batch,), 1, proc.num_timesteps + 1)
        eps = proc.sample_eps(eps_key, x0.shape, x0.dtype)
        xt = jax.vmap(proc.forward)(t, x0, eps)
        output = apply_fn(network_params, xt, t, net_key)
        weighted, unweighted = jax.vmap(
            lambda *a: proc.loss(*a, weighting=weighting))(t, x0, eps, output)
        aux = {"unweighted_loss": jnp.mean(unweighted)}
        if hasattr(proc, "diagnostics"):  # e.g. the encoding model's encoder scale
            aux.update(proc.diagnostics())
        return jnp.mean(weighted), aux

    return loss_fn


# --- continuous time: denoising score matching (spec 03, S5) ---------------------------------

DSM_WEIGHTINGS = ("none", "likelihood")
TIME_SAMPLINGS = ("uniform", "importance")


def likelihood_weight_eps(sde, t):
    """g_t^2 / beta_bar_t^2: the likelihood weighting lambda(t) = g_t^2 written in eps space."""
    return sde.g2(t) / sde.beta_bar(t) ** 2


def importance_time_sampler(sde, *, num_points: int = 4096):
    """Draws t on [t_min, 1] with density proportional to g_t^2 / beta_bar_t^2 (inverse CDF).

    The density is tabulated on a grid that is geometric near t_min (where the weight of a VP
    SDE grows like 1/t) and uniform elsewhere, integrated by the trapezoid rule.
    Returns:
      (sample(key, shape) -> t, normaliser Z = int w dt): with t from `sample`, Z * mse is an
      unbiased estimate of the likelihood-weighted loss int w(t) E[mse | t] dt.
    """
    t_min = sde.t_min
    grid = jnp.unique(jnp.concatenate([
        jnp.geomspace(t_min, 1.0, num_points // 2), jnp.linspace(t_min, 1.0, num_points // 2)]))
    w = likelihood_weight_eps(sde, grid)
    cdf = jnp.concatenate([jnp.zeros(1), jnp.cumsum(0.5 * (w[1:] + w[:-1]) * jnp.diff(grid))])
    total = cdf[-1]

    def sample(key, shape):
        u = jax.random.uniform(key, shape, jnp.float32) * total
        return jnp.interp(u, cdf, grid)

    return sample, total


def make_dsm_loss_fn(sde, apply_fn: Callable, *, weighting: str = "none",
                     time_sampling: str = "uniform"):
    """Builds `loss_fn(params, x0, *, key) -> (loss, aux)`: denoising score matching (S5).

    Per example: t ~ U(t_min, 1) (or importance-sampled), eps ~ N(0, I), x_t = alpha_bar(t) x_0
    + beta_bar(t) eps; the network predicts eps (score = -eps / beta_bar, spec 03 §1.5), so (S5)
    with Song et al.'s lambda(t) = beta_bar^2 is ||eps_theta - eps||^2 ("none"), and the
    likelihood weighting lambda(t) = g_t^2 is (g_t^2 / beta_bar_t^2) ||eps_theta - eps||^2
    ("likelihood"), whose integral bounds the NLL (Song et al. 2021, arXiv 2101.09258).
    "importance" sampling draws t with density proportional to g^2 / beta_bar^2 and is only
    meaningful with the likelihood weighting (same expected loss, lower variance).

    Args:
      sde: a `udm.sde.SDE`.
      apply_fn: `apply_fn(params, x_t [B, ...], t_input [B], key) -> eps [B, ...]`, with
        t_input = sde.time_input_scale * t.
      weighting: "none" or "likelihood".
      time_sampling: "uniform" or "importance".
    """
    if weighting not in DSM_WEIGHTINGS:
        raise ValueError(f"unknown DSM weighting {weighting!r}; valid: {', '.join(DSM_WEIGHTINGS)}")
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(
            f"unknown time sampling {time_sampling!r}; valid: {', '.join(TIME_SAMPLINGS)}")
    if time_sampling == "importance" and weighting != "likelihood":
        raise ValueError("time_sampling='importance' needs weighting='likelihood'")
    if time_sampling == "importance":
        sample_t, normaliser = importance_time_sampler(sde)

    def loss_fn(params, x0, *, key):
        t_key, eps_key, net_key = jax.random.split(key, 3)
        batch = x0.shape[0]
        if time_sampling == "importance":
            t = sample_t(t_key, (batch,))
        else:
            t = jax.random.uniform(t_key, (batch,), jnp.float32, sde.t_min, 1.0)
        eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
        xt = jax.vmap(sde.forward)(t, x0, eps)
        output = apply_fn(params, xt, sde.time_input_scale * t, net_key)
        per_example = jnp.mean((output - eps).reshape(batch, -1) ** 2, axis=1)
        if time_sampling == "importance":
            weight = jnp.full_like(t, normaliser)
        elif weighting == "likelihood":
            weight = likelihood_weight_eps(sde, t)
        else:
            weight = jnp.ones_like(t)
        loss = jnp.mean(weight * per_example)
        return loss, {"unweighted_mse": jnp.mean(per_example)}

    return loss_fn
