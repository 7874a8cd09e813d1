"""Training losses: fit the x_0 predictor of p(x_0 | x_t) (spec 01 A4-A5, spec 02 §1.3)."""
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = Any


def make_loss_fn(process, apply_fn: Callable, *, weighting: str = "none"):
    """Builds `loss_fn(params, x0, *, key) -> (loss, aux)` for a Gaussian-noise process.

    Per example: t ~ U{1..T}, eps ~ N(0, I), x_t = F_t(x_0, eps); the network output at (x_t, t)
    is regressed onto `process.target(t, x0, eps)` (eps / x0 / v) with weight w(t). With
    prediction "eps" and weighting "none" this is the DDPM loss ||eps - eps_theta(x_t, t)||^2,
    here averaged over pixels.

    Args:
      process: e.g. GaussianProcess.
      apply_fn: `apply_fn(params, x_t [B, ...], t [B], key) -> output [B, ...]`; the key feeds
        dropout.
      weighting: a name in `udm.processes.LOSS_WEIGHTINGS`.
    Returns:
      loss_fn(params, x0 [B, ...], *, key) -> (scalar loss, dict of per-batch diagnostics).
    """
    process.loss_weight(1, weighting)  # fail early on an unknown weighting name

    def loss_fn(params, x0, *, key):
        t_key, eps_key, net_key = jax.random.split(key, 3)
        batch = x0.shape[0]
        t = jax.random.randint(t_key, (batch,), 1, process.num_timesteps + 1)
        eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
        xt = jax.vmap(process.forward)(t, x0, eps)
        target = jax.vmap(process.target)(t, x0, eps)
        output = apply_fn(params, xt, t, net_key)
        per_example = jnp.mean((output - target).reshape(batch, -1) ** 2, axis=1)
        weight = jax.vmap(lambda ti: process.loss_weight(ti, weighting))(t)
        loss = jnp.mean(weight * per_example)
        return loss, {"unweighted_mse": jnp.mean(per_example)}

    return loss_fn
