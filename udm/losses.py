"""The one training loss: fit the x_0 predictor of p(x_0 | x_t) (docs/udm.md A4-A5, docs/ddpm_ddim.md §1.3).

Every process, discrete or continuous time, is trained by `make_loss_fn`; what differs lives in
the process: the time draw (`sample_time`: U{1..T}, U(t_min, 1) or importance-sampled), the
corruption (`sample_eps`, `forward`), the time the network sees (`network_time`) and the
per-example loss (`loss`: w(t) times the eps / x0 / v MSE, denoising score matching with the
likelihood weighting, l1 for cold diffusion, cross-entropy for the token corruptions, the
encoding model's joint cross-entropy).
"""
from typing import Callable

import jax
import jax.numpy as jnp

from udm.processes.base import diagnostics, split_params


def make_loss_fn(process, apply_fn: Callable, *, weighting: str = "none",
                 time_sampling: str = "uniform"):
    """Builds `loss_fn(params, x0, *, key) -> (loss, aux)` for any process.

    Per example (docs/udm.md A4): t from `process.sample_time`, eps ~ q(eps), x_t = F_t(x_0, eps);
    the network output at (x_t, network_time(t)) is scored by
    `process.loss(t, x0, eps, output, weighting=...)`, times the importance ratio of the time
    draw where there is one.

    Args:
      process: a process (udm.processes). One with learned parameters (the encoding model)
        takes params = {"network": ..., "process": ...} and is trained jointly.
      apply_fn: `apply_fn(params, x_t [B, ...], t_input [B], key) -> output [B, ...]`; the key
        feeds dropout.
      weighting: a per-t loss weighting the process knows (Gaussian: LOSS_WEIGHTINGS; SDEs:
        "none" or "likelihood").
      time_sampling: "uniform", or "importance" (SDEs with the likelihood weighting).
    Returns:
      loss_fn(params, x0 [B, ...], *, key) -> (scalar loss, dict of per-batch diagnostics,
      with the process's own `diagnostics()` where it learns parameters).
    """
    process.check_loss_options(weighting, time_sampling)  # fail before anything is traced

    def loss_fn(params, x0, *, key):
        t_key, eps_key, net_key = jax.random.split(key, 3)
        proc, network_params = split_params(process, params)
        t, ratio = proc.sample_time(t_key, x0.shape[0], time_sampling=time_sampling)
        eps = proc.sample_eps(eps_key, x0.shape, x0.dtype)
        xt = jax.vmap(proc.forward)(t, x0, eps)
        output = apply_fn(network_params, xt, proc.network_time(t), net_key)
        weighted, unweighted = jax.vmap(
            lambda *a: proc.loss(*a, weighting=weighting))(t, x0, eps, output)
        if ratio is not None:
            weighted = ratio * weighted
        aux = {"unweighted_loss": jnp.mean(unweighted), **diagnostics(proc)}
        return jnp.mean(weighted), aux

    return loss_fn
