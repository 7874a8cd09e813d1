"""The one process contract: every forward corruption, discrete or continuous time.

A process describes x_t = F_t(x_0, eps) and how to step back towards x_0 (docs/udm.md A1-A8). It is
a frozen dataclass of arrays and numbers with pure methods, satisfying `Process` below; what it
can do beyond the contract is declared once, in its `capabilities` (a `Capabilities`), so that the
loss, the samplers and the pipeline never ask which process they hold.

The UDM "correct" step shared by every process whose noise is Gaussian and invertible, docs/udm.md
(A8): with eps = sqrt(1 - sigma_tilde^2) eps_1 + sigma_tilde eps_2, replace eps_1 by the noise
inferred from (x_0_hat, x_t) and draw eps_2 fresh:

    x_s = F_s(x0_hat, sqrt(1 - sigma_tilde^2) F_t^{-1}(x0_hat, x_t) + sigma_tilde eps),

sigma_tilde = 0 is the deterministic design (A7), sigma_tilde = 1 the baseline
x_s = F_s(x0_hat, eps_new). Marginals are kept for any sigma_tilde in [0, 1] because
F_t^{-1}(x_0, x_t) ~ N(0, I) when x_t ~ p(x_t | x_0). Here s < t is the previous time of the grid
(s = t - 1 on the full chain).
"""
import dataclasses
from typing import Any, Optional, Protocol, Tuple, runtime_checkable

import jax
import jax.numpy as jnp

Array = Any


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a process can do beyond the required contract, declared by its class.

    Attributes:
      continuous_time: times are floats in [t_min, 1] (an SDE); otherwise integers 0..T.
      tokens: the data are token ids [B, l] and the network outputs logits over the vocabulary;
        the process has the ints `seq_len` (l) and `vocab_size` (V, the data's vocabulary).
      gaussian_marginals: p(x_t | x_0) = N(alpha_bar_t x_0, beta_bar_t^2 I); the process has
        `marginal(t) -> (alpha_bar_t, beta_bar_t)`, so scores and the SDE / ODE solvers apply.
      ddpm_variance: the process has `ddpm_sigma_tilde(t, s)`, DDPM's fresh-noise fraction, so
        the ddpm and ddim samplers apply.
      learned_params: the process learns parameters jointly with the network: it has
        `init_params() -> pytree`, `bind(pytree) -> process` and `diagnostics() -> dict`.
      latent_state: the chain runs in a latent space; `decode(state)` maps the last state to data.
      fitted_prior: the prior is fitted to the training data by `fit_prior(data) -> process`
        before sampling (cold blur, heat dissipation).
      isotropic_prior: the prior is N(0, prior_std^2 I) over the state: the process has the float
        `prior_std`, and `prior(key, shape)` is `prior_std` times a standard normal draw of the
        state's shape, so a standard-normal latent z stands for x_T = prior_std z
        (docs/architecture.md, "One contract for processes").
      reverse_sde: the process is a linear SDE with drift and diffusion finite on [t_min, 1]: it
        has `f(t)`, `g2(t)` and `transition(t, s)`, so the reverse-time SDE samplers (em, pc)
        apply. The flow-matching path has Gaussian marginals but not this: its g_t^2 = 2t / (1 - t)
        diverges at t = 1 (docs/flow_matching.md (FM6)); it samples with the probability-flow ODE.
      absorbing: a token process whose corruption replaces tokens by one id, the int `mask_id`,
        and leaves the others unchanged (masking, absorbing D3PM). A state with any positions
        set back to their true tokens is then a valid state of the process, which is what
        inpainting's `reveal` relies on (docs/inpainting.md (IP3)).
    """
    continuous_time: bool = False
    tokens: bool = False
    gaussian_marginals: bool = False
    ddpm_variance: bool = False
    learned_params: bool = False
    latent_state: bool = False
    fitted_prior: bool = False
    isotropic_prior: bool = False
    reverse_sde: bool = False
    absorbing: bool = False


@runtime_checkable
class Process(Protocol):
    """The contract every process satisfies (checked for each registered process in the tests).

    Times: integer t in {0..T} for discrete processes, float t in [t_min, 1] for continuous ones;
    a method takes one time shared by every array it touches (vmap for per-example times).
    """

    capabilities: Capabilities

    def sample_eps(self, key, shape, dtype=jnp.float32) -> Array:
        """eps ~ q(eps), the corruption's randomness."""

    def forward(self, t, x0: Array, eps: Array) -> Array:
        """x_t = F_t(x_0, eps)."""

    def prior(self, key, shape, dtype=jnp.float32) -> Array:
        """A draw from the stand-in for p(x_T) where sampling starts."""

    def correct(self, t, s, xt: Array, x0_hat: Array, *, sigma_tilde, key) -> Array:
        """x_s ~ p(x_s | x_t, x_0 = x0_hat), s < t, with the fraction sigma_tilde of fresh noise."""

    def x0_from_output(self, t, xt: Array, output: Array) -> Array:
        """The x_0 estimate (or logits) implied by the network output at (x_t, t)."""

    def network_time(self, t) -> Array:
        """The time value the network is shown for time t."""

    def sample_time(self, key, batch: int, *, time_sampling: str = "uniform"
                    ) -> Tuple[Array, Optional[Array]]:
        """Training times [batch] and an importance ratio [batch] for the loss (None: uniform)."""

    def check_loss_options(self, weighting: str, time_sampling: str) -> None:
        """Raises ValueError naming the valid choices when the process does not know them."""

    def loss(self, t, x0: Array, eps: Array, output: Array, *, weighting: str = "none"):
        """(weighted, unweighted) loss of one example at time t."""


class DiscreteTime:
    """The time handling of a discrete-time process (t in {1..T} for training): a mixin.

    Needs `num_timesteps` and `check_weighting(weighting)` from the class.
    """

    def network_time(self, t):
        """The network sees the integer step itself."""
        return t

    def sample_time(self, key, batch: int, *, time_sampling: str = "uniform"):
        """t ~ U{1..T} per example (docs/udm.md A4); no importance ratio."""
        del time_sampling  # only "uniform" (check_loss_options)
        return jax.random.randint(key, (batch,), 1, self.num_timesteps + 1), None

    def check_loss_options(self, weighting: str, time_sampling: str) -> None:
        self.check_weighting(weighting)
        if time_sampling != "uniform":
            raise ValueError(f"unknown time sampling {time_sampling!r} for a discrete-time "
                             f"process; valid: uniform")


def correct_by_inversion(process, t, s, xt: Array, x0_hat: Array, *,
                         sigma_tilde, key) -> Array:
    """One UDM correction x_t -> x_s given the estimate x0_hat (docs/udm.md A8).

    Args:
      process: any process with `forward(t, x0, eps)` and `invert(t, x0, xt)`.
      t, s: times, s < t (scalars shared by the whole batch).
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


# --- the optional capabilities, used through these helpers ----------------------------------
#
# The encoding model (docs/processes.md B5) learns its encoder jointly with the predictor: the trained
# pytree is then {"network": ..., "process": ...}. Its chain also runs in a latent space, so its
# last state is decoded. The loss, the sampler and the trainer call these helpers.

def init_params(process, network_params):
    """The trained pytree at initialisation: the network's params, plus the process's own."""
    if not process.capabilities.learned_params:
        return network_params
    return {"network": network_params, "process": process.init_params()}


def split_params(process, params):
    """(process with its trained parameters bound, network params) from a trained pytree."""
    if not process.capabilities.learned_params:
        return process, params
    return process.bind(params["process"]), params["network"]


def diagnostics(process) -> dict:
    """Per-batch diagnostics of a process's learned parameters (empty for fixed processes)."""
    return process.diagnostics() if process.capabilities.learned_params else {}


def prior_from_latents(process, z):
    """x_T = prior_std z: the prior draw a standard-normal latent z stands for.

    Args:
      process: a process declaring `isotropic_prior`.
      z: [...] float32 draws of N(0, I) in the state's shape.
    Returns:
      x_T, the shape and dtype of z (a numpy z stays numpy).
    Raises:
      ValueError: the process's prior is not N(0, prior_std^2 I).
    """
    if not process.capabilities.isotropic_prior:
        raise ValueError(f"{type(process).__name__} does not declare an isotropic Gaussian prior "
                         f"(Capabilities.isotropic_prior): no standard-normal latent stands for "
                         f"its x_T")
    return process.prior_std * z


def decode(process, state):
    """The data a final state x_0 of the chain stands for (itself, except for latent chains)."""
    return process.decode(state) if process.capabilities.latent_state else state
