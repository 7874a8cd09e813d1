"""The UDM "correct" step shared by every process whose noise is Gaussian and invertible.

Spec 01 (A8): with eps = sqrt(1 - sigma_tilde^2) eps_1 + sigma_tilde eps_2, replace eps_1 by the
noise inferred from (x_0_hat, x_t) and draw eps_2 fresh:

    x_s = F_s(x0_hat, sqrt(1 - sigma_tilde^2) F_t^{-1}(x0_hat, x_t) + sigma_tilde eps),

sigma_tilde = 0 is the deterministic design (A7), sigma_tilde = 1 the baseline
x_s = F_s(x0_hat, eps_new). Marginals are kept for any sigma_tilde in [0, 1] because
F_t^{-1}(x_0, x_t) ~ N(0, I) when x_t ~ p(x_t | x_0). Here s < t is the previous time of the grid
(s = t - 1 on the full chain).
"""
from typing import Any, Protocol

import jax
import jax.numpy as jnp

Array = Any


class InvertibleProcess(Protocol):
    """What correct_by_inversion needs from a process."""

    def forward(self, t, x0, eps): ...

    def invert(self, t, x0, xt): ...


def correct_by_inversion(process: InvertibleProcess, t, s, xt: Array, x0_hat: Array, *,
                         sigma_tilde, key) -> Array:
    """One UDM correction x_t -> x_s given the estimate x0_hat (spec 01, A8).

    Args:
      process: any process with `forward(t, x0, eps)` and `invert(t, x0, xt)`.
      t, s: integer times, s < t (scalars shared by the whole batch).
      xt: [B, ...] current state.
      x0_hat: [B, ...] estimate of x_0.
      sigma_tilde: scalar in [0, 1], the fraction of fresh noise.
      key: PRNG key for the fresh noise.
    Returns:
      x_s, same shape as xt.
    """
    eps_inferred = process.invert(t, x0_hat, xt)
    eps_new = jax.random.normal(key, xt.shape, xt.dtype)
    keep = jnp.sqrt(jnp.maximum(1.0 - sigma_tilde ** 2, 0.0))
    return process.forward(s, x0_hat, keep * eps_inferred + sigma_tilde * eps_new)


def check_no_weighting(process_name: str, weighting: str) -> None:
    """The loss of processes without per-t weightings accepts only "none"."""
    if weighting != "none":
        raise ValueError(f"unknown loss weighting {weighting!r} for the {process_name} process; "
                         f"valid names: none")


# --- processes with learned parameters, processes whose state is not the data ----------------
#
# Most processes are fixed maps. The encoding model (spec 01 B5) learns its encoder jointly with
# the predictor: such a process has `init_params() -> pytree` (its initial values) and
# `bind(pytree) -> process`, and the trained pytree is {"network": ..., "process": ...}. Its
# chain also runs in a latent space, so it has `decode(state) -> data` for the last state.
# The loss, the sampler and the trainer call the three helpers below and nothing else.

def has_params(process) -> bool:
    """Whether the process learns parameters jointly with the network."""
    return hasattr(process, "init_params")


def init_params(process, network_params):
    """The trained pytree at initialisation: the network's params, plus the process's own."""
    if not has_params(process):
        return network_params
    return {"network": network_params, "process": process.init_params()}


def split_params(process, params):
    """(process with its trained parameters bound, network params) from a trained pytree."""
    if not has_params(process):
        return process, params
    return process.bind(params["process"]), params["network"]


def decode(process, state):
    """The data a final state x_0 of the chain stands for (itself, except for latent chains)."""
    return process.decode(state) if hasattr(process, "decode") else state
