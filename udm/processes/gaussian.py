"""Hot (Gaussian) diffusion: F_t(x_0, eps) = alpha_bar_t x_0 + beta_bar_t eps (docs/processes.md B1, docs/ddpm_ddim.md).

The process is a pytree of schedule arrays with pure methods. Methods take a scalar integer
time `t` shared by every array they touch (one example, or a batch at one time); per-example
times are handled with `jax.vmap` by the caller.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from udm import schedules
from udm.processes.base import Capabilities, DiscreteTime, correct_by_inversion
from udm.registry import Registry

Array = Any

PREDICTION_TARGETS = Registry("prediction target")
for _name in ("eps", "x0", "v"):
    PREDICTION_TARGETS.register(_name)(_name)

# Weight w(t) multiplying the mean squared error in the network's target space.
# "min_snr_5" is Min-SNR-gamma (Hang et al., arXiv 2303.09556) with gamma = 5, written per target
# so that it is the same weight on the x_0 error whatever the network predicts.
LOSS_WEIGHTINGS = Registry("loss weighting")


@LOSS_WEIGHTINGS.register("none")
def _no_weight(snr, prediction):
    del prediction
    return jnp.ones_like(snr)


@LOSS_WEIGHTINGS.register("min_snr_5")
def _min_snr_5(snr, prediction):
    clipped = jnp.minimum(snr, 5.0)
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[prediction]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianProcess(DiscreteTime):
    """x_t = alpha_bar_t x_0 + beta_bar_t eps, eps ~ N(0, I), t in {0, ..., T}.

    Attributes:
      alpha_bar: [T + 1] signal coefficients (alpha_bar_0 = 1).
      beta_bar: [T + 1] noise standard deviations (beta_bar_0 = 0).
      prediction: what the network outputs: "eps", "x0" or "v" (v = alpha_bar eps - beta_bar x_0).
    """

    capabilities = Capabilities(gaussian_marginals=True, ddpm_variance=True, isotropic_prior=True)

    alpha_bar: Array
    beta_bar: Array
    prediction: str = dataclasses.field(default="eps", metadata=dict(static=True))

    @classmethod
    def from_schedule(cls, schedule: str = "blog", num_timesteps: int = 1000, *,
                      prediction: str = "eps", zero_terminal_snr: bool = False,
                      dtype=jnp.float32) -> "GaussianProcess":
        """Builds the process from a named schedule (see `udm.schedules.SCHEDULES`).

        zero_terminal_snr: rescale the schedule so alpha_bar_T = 0 (docs/time_grids.md (G5)); x_T
        then carries no signal, so an eps prediction cannot give x_0 there and is refused
        (use "v" or "x0").
        """
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        PREDICTION_TARGETS.get(prediction)
        if zero_terminal_snr and prediction == "eps":
            raise ValueError("zero_terminal_snr=True needs prediction 'v' or 'x0': at t = T, "
                             "alpha_bar_T = 0 and x_0 = (x_T - beta_bar_T eps) / alpha_bar_T is "
                             "undefined, got prediction 'eps'")
        alpha_bar = schedules.get_alpha_bar(schedule, num_timesteps,
                                            zero_terminal_snr=zero_terminal_snr)
        beta_bar = np.sqrt(1.0 - alpha_bar ** 2)
        return cls(jnp.asarray(alpha_bar, dtype), jnp.asarray(beta_bar, dtype), prediction)

    @property
    def num_timesteps(self) -> int:
        return self.alpha_bar.shape[0] - 1

    # --- forward corruption and its inverse (docs/udm.md A1; docs/processes.md B1) ---------

    def sample_eps(self, key, shape, dtype=jnp.float32) -> Array:
        """eps ~ q(eps) = N(0, I)."""
        return jax.random.normal(key, shape, dtype)

    def forward(self, t, x0: Array, eps: Array) -> Array:
        """x_t = F_t(x_0, eps) = alpha_bar_t x_0 + beta_bar_t eps."""
        return self.alpha_bar[t] * x0 + self.beta_bar[t] * eps

    def invert(self, t, x0: Array, xt: Array) -> Array:
        """eps = F_t^{-1}(x_0, x_t) = (x_t - alpha_bar_t x_0) / beta_bar_t, for t >= 1."""
        return (xt - self.alpha_bar[t] * x0) / self.beta_bar[t]

    def marginal(self, t):
        """(alpha_bar_t, beta_bar_t): p(x_t | x_0) = N(alpha_bar_t x_0, beta_bar_t^2 I)."""
        return self.alpha_bar[t], self.beta_bar[t]

    @property
    def prior_std(self) -> float:
        """Std of the prior N(0, I): 1."""
        return 1.0

    def prior(self, key, shape, dtype=jnp.float32) -> Array:
        """x_T ~ N(0, I), the usual stand-in for p(x_T) = N(alpha_bar_T x_0, beta_bar_T^2 I)."""
        return jax.random.normal(key, shape, dtype)

    # --- the correct step (docs/udm.md A8; docs/processes.md B1.1) ----------------------

    def correct(self, t, s, xt: Array, x0_hat: Array, *, sigma_tilde, key) -> Array:
        """x_s ~ p(x_s | x_t, x_0 = x0_hat); sigma_s = beta_bar_s sigma_tilde in the DDIM family (D6)."""
        return correct_by_inversion(self, t, s, xt, x0_hat, sigma_tilde=sigma_tilde, key=key)

    def ddpm_sigma_tilde(self, t, s) -> Array:
        """sigma_tilde of DDPM on the step t -> s: sigma_s = (beta_bar_s / beta_bar_t) sqrt(1 - alpha_bar_t^2 / alpha_bar_s^2).

        On the full chain (s = t - 1) this is the posterior std beta_bar_{t-1} beta_t / beta_bar_t
        of (D3); on a sub-sequence it is the recomputed value of docs/ddpm_ddim.md §2.4. Divided by
        beta_bar_s it is sqrt(1 - (alpha_bar_t / alpha_bar_s)^2) / beta_bar_t, finite at s = 0.
        """
        ratio = self.alpha_bar[t] / self.alpha_bar[s]
        return jnp.sqrt(1.0 - ratio ** 2) / self.beta_bar[t]

    # --- network parameterisations --------------------------------------------------------

    def x0_from_output(self, t, xt: Array, output: Array) -> Array:
        """The x_0 estimate implied by the network output (eps: D4; v: alpha_bar x_t - beta_bar v)."""
        a, b = self.alpha_bar[t], self.beta_bar[t]
        if self.prediction == "eps":
            return (xt - b * output) / a
        if self.prediction == "x0":
            return output
        return a * xt - b * output  # "v"; uses alpha_bar^2 + beta_bar^2 = 1

    def target(self, t, x0: Array, eps: Array) -> Array:
        """What the network is trained to output at (x_0, eps)."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return self.alpha_bar[t] * eps - self.beta_bar[t] * x0

    def snr(self, t) -> Array:
        """Signal-to-noise ratio alpha_bar_t^2 / beta_bar_t^2."""
        return (self.alpha_bar[t] / self.beta_bar[t]) ** 2

    def loss_weight(self, t, weighting: str) -> Array:
        """w(t) for the target-space squared error (see LOSS_WEIGHTINGS)."""
        return LOSS_WEIGHTINGS.get(weighting)(self.snr(t), self.prediction)

    def check_weighting(self, weighting: str) -> None:
        LOSS_WEIGHTINGS.get(weighting)

    def loss(self, t, x0: Array, eps: Array, output: Array, *, weighting: str = "none"):
        """(w(t) mse, mse) of one example: mse = mean((output - target)^2) (docs/udm.md A5; docs/processes.md B1)."""
        mse = jnp.mean((output - self.target(t, x0, eps)) ** 2)
        return self.loss_weight(t, weighting) * mse, mse
