"""Flow matching / rectified flow: the straight path x_t = (1 - t) x_0 + t eps, t in [t_min, 1] (docs/flow_matching.md).

A continuous-time process with Gaussian marginals, alpha_bar(t) = 1 - t and beta_bar(t) = t
(FM1), so it satisfies the same contract as the SDEs (`udm.processes.base.Process`) and runs
through the same samplers and loss: the UDM correct step (FM3), DDPM's fresh-noise fraction (FM4),
and the probability-flow ODE, whose velocity is eps_hat - x0_hat (FM5) and is finite at t = 1,
where x_1 = eps exactly. Its drift f_t = -1 / (1 - t) and diffusion g_t^2 = 2t / (1 - t) diverge
at t = 1 (FM6), so it does not declare `reverse_sde`: em and pc refuse it.

The network predicts the velocity v = eps - x_0 (rectified flow, Liu et al. arXiv 2209.03003;
flow matching, Lipman et al. arXiv 2210.02747), or x_0, or eps (FM2); the loss is the MSE in
that target space with weight 1 (FM7). Training times are uniform on [t_min, 1] or logit-normal
(Esser et al., arXiv 2403.03206, "SD3").
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from udm.processes.base import Capabilities, correct_by_inversion

Array = Any

FLOW_PREDICTIONS = ("velocity", "x0", "eps")
FLOW_WEIGHTINGS = ("none",)
# "uniform": t ~ U(t_min, 1); "logit_normal": t = t_min + (1 - t_min) sigmoid(n), n ~ N(0, 1),
# which puts more training weight on middle times (FM8). Neither has an importance ratio.
FLOW_TIME_SAMPLINGS = ("uniform", "logit_normal")


@dataclasses.dataclass(frozen=True)
class FlowProcess:
    """x_t = (1 - t) x_0 + t eps, eps ~ N(0, I), float t in [t_min, 1] (docs/flow_matching.md (FM1)).

    A frozen dataclass of Python values: hashable, closed over by jitted functions as constants.

    Attributes:
      t_min: smallest time of training and sampling (the samplers end there and return the
        x_0 estimate), in (0, 1).
      time_input_scale: the network sees time_input_scale * t (999: the range of discrete step
        numbers the UNet's sinusoidal embedding was designed for, as for the SDEs).
      prediction: the network's output: "velocity" (v = eps - x_0), "x0" or "eps" (FM2).
    """

    t_min: float = 1e-3
    time_input_scale: float = 999.0
    prediction: str = "velocity"

    capabilities = Capabilities(continuous_time=True, gaussian_marginals=True, ddpm_variance=True,
                                isotropic_prior=True)

    def __post_init__(self):
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {self.t_min}")
        if not self.time_input_scale > 0:
            raise ValueError(f"time_input_scale must be > 0, got {self.time_input_scale}")
        if self.prediction not in FLOW_PREDICTIONS:
            raise ValueError(f"unknown prediction target {self.prediction!r} for the flow process; "
                             f"valid: {', '.join(FLOW_PREDICTIONS)}")

    # --- the path and its inverse (FM1) ---------------------------------------------------------

    def marginal(self, t: Array):
        """(alpha_bar, beta_bar) = (1 - t, t): p(x_t | x_0) = N((1 - t) x_0, t^2 I) (FM1)."""
        t = jnp.asarray(t)
        return 1.0 - t, t

    def sample_eps(self, key, shape, dtype=jnp.float32) -> Array:
        """eps ~ N(0, I)."""
        return jax.random.normal(key, shape, dtype)

    def forward(self, t, x0: Array, eps: Array) -> Array:
        """x_t = (1 - t) x_0 + t eps (FM1)."""
        alpha_bar, beta_bar = self.marginal(t)
        return alpha_bar * x0 + beta_bar * eps

    def invert(self, t, x0: Array, xt: Array) -> Array:
        """eps = (x_t - (1 - t) x_0) / t, for t >= t_min > 0."""
        alpha_bar, beta_bar = self.marginal(t)
        return (xt - alpha_bar * x0) / beta_bar

    # --- the prior: x_1 = eps exactly -----------------------------------------------------------

    @property
    def prior_std(self) -> float:
        """Std of the prior N(0, I): x_1 = eps, so the prior is exact, not a stand-in."""
        return 1.0

    def prior(self, key, shape, dtype=jnp.float32) -> Array:
        """x_1 ~ N(0, I)."""
        return jax.random.normal(key, shape, dtype)

    # --- stepping back: the UDM correct step (FM3) and DDPM's fraction (FM4) -------------------

    def correct(self, t, s, xt: Array, x0_hat: Array, *, sigma_tilde, key) -> Array:
        """x_s = (1 - s) x0_hat + s (sqrt(1 - sigma_tilde^2) eps_hat + sigma_tilde eps') (FM3), s < t."""
        return correct_by_inversion(self, t, s, xt, x0_hat, sigma_tilde=sigma_tilde, key=key)

    def ddpm_sigma_tilde(self, t, s) -> Array:
        """DDPM's fresh-noise fraction on t -> s: sqrt(t^2 - a^2 s^2) / t, a = (1 - t) / (1 - s) (FM4).

        With x_t = a x_s + sqrt(v) noise, v = beta_bar_t^2 - a^2 beta_bar_s^2, the posterior
        q(x_s | x_t, x_0) has std sqrt(v) beta_bar_s / beta_bar_t; over beta_bar_s that is
        sqrt(v) / beta_bar_t. It is 1 at t = 1 (x_1 carries nothing about x_s but its noise).
        """
        a = (1.0 - t) / (1.0 - s)
        v = t ** 2 - a ** 2 * s ** 2
        return jnp.sqrt(jnp.maximum(v, 0.0)) / t

    # --- network parameterisations (FM2) ------------------------------------------------------

    def x0_from_output(self, t, xt: Array, output: Array) -> Array:
        """The x_0 estimate implied by the network output (FM2).

        velocity: x_t - t v; x0: as is; eps: (x_t - t eps) / (1 - t), which has no finite limit
        at t = 1 (x_1 = eps carries no information on x_0): 1 - t is floored at t_min there, so
        prefer "velocity" or "x0" for this process.
        """
        if self.prediction == "velocity":
            return xt - t * output
        if self.prediction == "x0":
            return output
        return (xt - t * output) / jnp.maximum(1.0 - t, self.t_min)

    def target(self, t, x0: Array, eps: Array) -> Array:
        """What the network is trained to output at (x_0, eps): v = eps - x_0, x_0 or eps (FM2)."""
        del t  # the straight path's velocity does not depend on t
        if self.prediction == "velocity":
            return eps - x0
        if self.prediction == "x0":
            return x0
        return eps

    # --- training (FM7, FM8) ------------------------------------------------------------------

    def network_time(self, t: Array) -> Array:
        """The network sees time_input_scale * t."""
        return self.time_input_scale * t

    def check_loss_options(self, weighting: str, time_sampling: str) -> None:
        if weighting not in FLOW_WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {weighting!r} for the flow process; "
                             f"valid: {', '.join(FLOW_WEIGHTINGS)}")
        if time_sampling not in FLOW_TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {time_sampling!r} for the flow process; "
                             f"valid: {', '.join(FLOW_TIME_SAMPLINGS)}")

    def sample_time(self, key, batch: int, *, time_sampling: str = "uniform"):
        """Training times [batch] in [t_min, 1], uniform or logit-normal (FM8); no importance ratio."""
        if time_sampling == "logit_normal":
            n = jax.random.normal(key, (batch,), jnp.float32)
            return self.t_min + (1.0 - self.t_min) * jax.nn.sigmoid(n), None
        return jax.random.uniform(key, (batch,), jnp.float32, self.t_min, 1.0), None

    def loss(self, t, x0: Array, eps: Array, output: Array, *, weighting: str = "none"):
        """(mse, mse) of one example, mse = mean((output - target)^2) in the target space (FM7)."""
        del weighting  # only "none" (check_loss_options)
        mse = jnp.mean((output - self.target(t, x0, eps)) ** 2)
        return mse, mse


def flow(**hyperparameters) -> FlowProcess:
    """The flow-matching process, e.g. config.process = {name: "flow", prediction: "velocity"}."""
    fields = {f.name for f in dataclasses.fields(FlowProcess)}
    unknown = sorted(set(hyperparameters) - fields)
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown} for the flow process; "
                         f"valid: {', '.join(sorted(fields))}")
    return FlowProcess(**hyperparameters)
