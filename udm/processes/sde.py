"""Continuous-time Gaussian diffusions as linear SDEs dx = f_t x dt + g_t dw, t in [0, 1] (docs/sde_ode.md).

They are processes like the discrete ones (`udm.processes.base.Process`): forward corruption,
inverse, the UDM correct step, DDPM's variance, the x_0 estimate of the network output and the
denoising score matching loss (S5), with float times; the samplers of `udm.sampling` take them
as they take every process.

Every SDE here is described by its marginals p(x_t | x_0) = N(alpha_bar(t) x_0, beta_bar(t)^2 I)
(blog notation: alpha_bar is the signal coefficient, beta_bar the noise std). The drift and the
diffusion follow from them by (S6),

    f_t = d/dt ln alpha_bar(t),    g_t^2 = alpha_bar^2 d/dt (beta_bar^2 / alpha_bar^2)
                                         = d/dt beta_bar^2 - 2 f_t beta_bar^2,

computed by forward-mode autodiff (the last form stays finite at t = 0, where beta_bar = 0), so
a new SDE only has to give its two marginal functions; the
tests check the result against the Score SDE paper's closed forms (VP: g^2 = beta(t); sub-VP:
g^2 = beta(t)(1 - e^{-2 int beta}); VE: g^2 = d sigma^2/dt).

The SDEs are frozen dataclasses of Python floats: hashable, closed over by jitted functions as
constants. Their methods are pure and take a time `t` (a scalar, or an array broadcast against the
values it multiplies; write single-example maths and vmap).

The network's output is converted to a score by `score_from_output` (eps: -eps / beta_bar;
x0: -(x - alpha_bar x0) / beta_bar^2; score: as is), so every sampler takes any predictor.
"""
import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from udm.processes.base import Capabilities, correct_by_inversion
from udm.registry import Registry

Array = Any
# `fn(params, x [B, ...], t scalar float) -> [B, ...]`: a score, eps or x0 predictor.
PredictorFn = Callable[[Any, Array, Array], Array]

OUTPUT_KINDS = ("eps", "x0", "score")
# Denoising score matching (S5): "none" is Song et al.'s lambda(t) = beta_bar^2, i.e. the plain
# eps MSE; "likelihood" is lambda(t) = g_t^2, whose integral bounds the NLL (arXiv 2101.09258).
DSM_WEIGHTINGS = ("none", "likelihood")
# Training times: t ~ U(t_min, 1), or "importance": density proportional to g_t^2 / beta_bar_t^2
# (only with the likelihood weighting: the same expected loss with lower variance).
TIME_SAMPLINGS = ("uniform", "importance")


class SDE:
    """Base class: subclasses define `log_alpha_bar(t)` and `beta_bar_sq(t)` (and the fields below).

    Attributes (every subclass):
      t_min: smallest time used in training, sampling and likelihoods (the marginal at 0 is a
        point mass, so samplers stop at t_min and likelihoods start there).
      time_input_scale: the network sees `time_input_scale * t` (999 puts t in the range of the
        discrete step numbers the UNet's sinusoidal embedding was designed for).
    """

    t_min: float
    time_input_scale: float

    capabilities = Capabilities(continuous_time=True, gaussian_marginals=True, ddpm_variance=True,
                                isotropic_prior=True, reverse_sde=True)

    def __post_init__(self):
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {self.t_min}")

    # --- the two functions that define the SDE ------------------------------------------------

    def log_alpha_bar(self, t: Array) -> Array:
        raise NotImplementedError

    def beta_bar_sq(self, t: Array) -> Array:
        """Variance beta_bar(t)^2 of p(x_t | x_0)."""
        raise NotImplementedError

    # --- everything else follows ----------------------------------------------------------------

    def beta_bar(self, t: Array) -> Array:
        """Noise standard deviation of p(x_t | x_0)."""
        return jnp.sqrt(self.beta_bar_sq(t))

    def alpha_bar(self, t: Array) -> Array:
        """Signal coefficient of p(x_t | x_0)."""
        return jnp.exp(self.log_alpha_bar(t))

    def marginal(self, t: Array):
        """(alpha_bar(t), beta_bar(t)): p(x_t | x_0) = N(alpha_bar x_0, beta_bar^2 I)."""
        return self.alpha_bar(t), self.beta_bar(t)

    def f(self, t: Array) -> Array:
        """Drift coefficient f_t = d/dt ln alpha_bar (S6); the drift is f_t x."""
        t = jnp.asarray(t, jnp.float32)
        return jax.jvp(self.log_alpha_bar, (t,), (jnp.ones_like(t),))[1]

    def g2(self, t: Array) -> Array:
        """Squared diffusion g_t^2 = d/dt beta_bar^2 - 2 f_t beta_bar^2 (S6)."""
        t = jnp.asarray(t, jnp.float32)
        var, dvar = jax.jvp(self.beta_bar_sq, (t,), (jnp.ones_like(t),))
        return dvar - 2.0 * self.f(t) * var

    def drift(self, x: Array, t: Array) -> Array:
        """f_t x, the forward drift (S1)."""
        return self.f(t) * x

    def forward(self, t: Array, x0: Array, eps: Array) -> Array:
        """x_t = alpha_bar(t) x_0 + beta_bar(t) eps (one example, or a batch at one time)."""
        alpha_bar, beta_bar = self.marginal(t)
        return alpha_bar * x0 + beta_bar * eps

    def sample_eps(self, key, shape, dtype=jnp.float32) -> Array:
        """eps ~ N(0, I)."""
        return jax.random.normal(key, shape, dtype)

    def invert(self, t: Array, x0: Array, xt: Array) -> Array:
        """eps = (x_t - alpha_bar(t) x_0) / beta_bar(t), for t > 0."""
        alpha_bar, beta_bar = self.marginal(t)
        return (xt - alpha_bar * x0) / beta_bar

    def correct(self, t, s, xt: Array, x0_hat: Array, *, sigma_tilde, key) -> Array:
        """x_s ~ p(x_s | x_t, x_0 = x0_hat) by the UDM correct step (docs/udm.md A8), float s < t."""
        return correct_by_inversion(self, t, s, xt, x0_hat, sigma_tilde=sigma_tilde, key=key)

    def ddpm_sigma_tilde(self, t, s) -> Array:
        """DDPM's fresh-noise fraction on t -> s: the posterior std of q(x_s | x_t, x_0) over beta_bar_s.

        With p(x_t | x_s) = N(a x_s, v I) (`transition`), Var[x_s | x_t, x_0] = v beta_bar_s^2 /
        beta_bar_t^2, so sigma_tilde = sqrt(v) / beta_bar_t (for a VP SDE, v = 1 - a^2 as in the
        discrete chain; for a VE SDE, v = beta_bar_t^2 - beta_bar_s^2).
        """
        _, v = self.transition(t, s)
        return jnp.sqrt(jnp.maximum(v, 0.0)) / self.beta_bar(t)

    def x0_from_output(self, t, xt: Array, output: Array) -> Array:
        """x_0 = (x_t - beta_bar eps) / alpha_bar: the networks of the SDEs predict eps."""
        alpha_bar, beta_bar = self.marginal(t)
        return (xt - beta_bar * output) / alpha_bar

    # --- training: denoising score matching (S5) in eps space -------------------------------

    def network_time(self, t: Array) -> Array:
        """The network sees time_input_scale * t (999 t: the range of discrete step numbers)."""
        return self.time_input_scale * t

    def check_weighting(self, weighting: str) -> None:
        if weighting not in DSM_WEIGHTINGS:
            raise ValueError(f"unknown DSM weighting {weighting!r}; "
                             f"valid: {', '.join(DSM_WEIGHTINGS)}")

    def check_loss_options(self, weighting: str, time_sampling: str) -> None:
        self.check_weighting(weighting)
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {time_sampling!r}; "
                             f"valid: {', '.join(TIME_SAMPLINGS)}")
        if time_sampling == "importance" and weighting != "likelihood":
            raise ValueError("time_sampling='importance' needs weighting='likelihood'")

    def sample_time(self, key, batch: int, *, time_sampling: str = "uniform"):
        """Training times [batch] and the importance ratio of the loss (None for uniform).

        "importance" draws t with density w(t) / Z, w = g_t^2 / beta_bar_t^2; the ratio Z / w(t)
        times the likelihood-weighted loss w(t) mse is then Z mse, an unbiased estimate of
        int w(t) E[mse | t] dt with lower variance.
        """
        if time_sampling == "importance":
            cdf, grid = _importance_table(self)
            u = jax.random.uniform(key, (batch,), jnp.float32) * cdf[-1]
            t = jnp.interp(u, cdf, grid)
            return t, cdf[-1] / likelihood_weight_eps(self, t)
        return jax.random.uniform(key, (batch,), jnp.float32, self.t_min, 1.0), None

    def loss(self, t, x0: Array, eps: Array, output: Array, *, weighting: str = "none"):
        """(w(t) mse, mse) of one example, mse = mean((eps_theta - eps)^2); w = 1 or g^2 / beta_bar^2."""
        mse = jnp.mean((output - eps) ** 2)
        weight = likelihood_weight_eps(self, t) if weighting == "likelihood" else 1.0
        return weight * mse, mse

    def transition(self, t: Array, s: Array):
        """(a, v): p(x_t | x_s) = N(a x_s, v I) for s < t, with a = alpha_bar_t / alpha_bar_s and
        v = beta_bar_t^2 - a^2 beta_bar_s^2 (exact for a linear SDE)."""
        a = jnp.exp(self.log_alpha_bar(t) - self.log_alpha_bar(s))
        return a, self.beta_bar_sq(t) - a ** 2 * self.beta_bar_sq(s)

    # --- the prior p_1 ------------------------------------------------------------------------

    @property
    def prior_std(self) -> float:
        """Std of the prior N(0, prior_std^2 I) that stands in for p_1 (beta_bar(1))."""
        with jax.ensure_compile_time_eval():  # a constant, also when called under jit
            return float(self.beta_bar(jnp.float32(1.0)))

    def prior_sample(self, key, shape, dtype=jnp.float32) -> Array:
        """x_1 ~ N(0, prior_std^2 I)."""
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def prior(self, key, shape, dtype=jnp.float32) -> Array:
        """Same as `prior_sample`: the name the discrete processes use."""
        return self.prior_sample(key, shape, dtype)

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, prior_std^2 I) of one example z (any shape), summed over its entries."""
        n = z.size
        var = self.prior_std ** 2
        return -0.5 * n * math.log(2 * math.pi * var) - 0.5 * jnp.sum(z ** 2) / var

    # --- converting a predictor to a score ------------------------------------------------------

    def score_from_output(self, kind: str, x: Array, t: Array, output: Array) -> Array:
        """The score implied by a predictor output of the given kind at (x, t)."""
        if kind == "score":
            return output
        alpha_bar, beta_bar = self.marginal(t)
        if kind == "eps":
            return -output / beta_bar
        if kind == "x0":
            return -(x - alpha_bar * output) / beta_bar ** 2
        raise ValueError(f"unknown predictor kind {kind!r}; valid: {', '.join(OUTPUT_KINDS)}")

    def x0_from_score(self, x: Array, t: Array, score: Array) -> Array:
        """Tweedie: E[x_0 | x_t] = (x + beta_bar^2 score) / alpha_bar."""
        alpha_bar, beta_bar = self.marginal(t)
        return (x + beta_bar ** 2 * score) / alpha_bar


def as_score_fn(sde: SDE, fn: PredictorFn, kind: str = "score") -> PredictorFn:
    """Wraps a score / eps / x0 predictor `fn(params, x, t)` as a score function of the same signature."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown predictor kind {kind!r}; valid: {', '.join(OUTPUT_KINDS)}")
    if kind == "score":
        return fn
    return lambda params, x, t: sde.score_from_output(kind, x, t, fn(params, x, t))


def network_score_fn(sde: SDE, apply_fn: Callable, kind: str = "eps") -> PredictorFn:
    """A network `apply_fn(params, x [B, ...], t_input [B]) -> output` as a score function.

    The network sees `sde.time_input_scale * t` for every example.
    """
    def fn(params, x, t):
        t_input = jnp.full((x.shape[0],), sde.time_input_scale * t, jnp.float32)
        return apply_fn(params, x, t_input)

    return as_score_fn(sde, fn, kind)


def likelihood_weight_eps(sde: SDE, t):
    """g_t^2 / beta_bar_t^2: the likelihood weighting lambda(t) = g_t^2 written in eps space."""
    return sde.g2(t) / sde.beta_bar(t) ** 2


@functools.lru_cache(maxsize=16)
def _importance_table(sde: SDE, num_points: int = 4096):
    """(cdf, grid) of the density proportional to g_t^2 / beta_bar_t^2 on [t_min, 1].

    Tabulated on a grid that is geometric near t_min (where the weight of a VP SDE grows like
    1/t) and uniform elsewhere, integrated by the trapezoid rule; computed once per SDE.
    """
    with jax.ensure_compile_time_eval():
        grid = jnp.unique(jnp.concatenate([
            jnp.geomspace(sde.t_min, 1.0, num_points // 2),
            jnp.linspace(sde.t_min, 1.0, num_points // 2)]))
        w = likelihood_weight_eps(sde, grid)
        cdf = jnp.concatenate([jnp.zeros(1), jnp.cumsum(0.5 * (w[1:] + w[:-1]) * jnp.diff(grid))])
    return cdf, grid


# --- the SDEs ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
    """Variance preserving: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta(t) = beta_min + t (beta_max - beta_min).

    alpha_bar(t) = exp(-1/2 B(t)), B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2;
    beta_bar^2 = 1 - alpha_bar^2. Defaults: the Score SDE paper's CIFAR-10 values.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    time_input_scale: float = 999.0

    def integrated_beta(self, t):
        t = jnp.asarray(t, jnp.float32)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2

    def log_alpha_bar(self, t):
        return -0.5 * self.integrated_beta(t)

    def beta_bar_sq(self, t):
        return -jnp.expm1(-self.integrated_beta(t))  # 1 - e^{-B}, accurate for small t


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """sub-VP: the VP drift with g^2 = beta(t)(1 - e^{-2 B(t)}); beta_bar = 1 - alpha_bar^2 <= VP's."""

    def beta_bar_sq(self, t):
        return jnp.expm1(-self.integrated_beta(t)) ** 2


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance exploding: dx = sqrt(d sigma^2/dt) dw, sigma(t) = sigma_min (sigma_max / sigma_min)^t.

    alpha_bar = 1, beta_bar = sigma(t) (the Score SDE paper's marginal, which ignores the tiny
    sigma_min at t = 0). Defaults: the paper's CIFAR-10 values.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    time_input_scale: float = 999.0

    def log_alpha_bar(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.float32))

    def beta_bar_sq(self, t):
        t = jnp.asarray(t, jnp.float32)
        return (self.sigma_min * (self.sigma_max / self.sigma_min) ** t) ** 2


@dataclasses.dataclass(frozen=True)
class BlogSDE(SDE):
    """The posts' schedule alpha_k = sqrt(1 - rate k / T), k = 1..T, in continuous time t = k / T.

    ln alpha_bar(t) = 1/2 sum_k ln(1 - rate k / T) -> (T / 2) int_0^t ln(1 - rate u) du
                    = -(T / (2 rate)) [(1 - rate t) ln(1 - rate t) + rate t],
    beta_bar^2 = 1 - alpha_bar^2, so it is a VP SDE with beta(t) = -T ln(1 - rate t) ~ 20 t
    (alpha_bar(1) = 0.0065; the discrete chain's alpha_bar_T is 0.00648).
    """

    num_timesteps: int = 1000
    rate: float = 0.02
    t_min: float = 1e-3
    time_input_scale: float = 999.0

    def log_alpha_bar(self, t):
        t = jnp.asarray(t, jnp.float32)
        u = self.rate * t
        # (1 - u) ln(1 - u) + u = sum_{k>=2} u^k / (k (k - 1)): the closed form cancels
        # catastrophically for small u in float32, so the series is used below u = 0.05.
        series = sum(u ** k / (k * (k - 1)) for k in range(2, 9))
        closed = (1 - u) * jnp.log1p(-u) + u
        return -(self.num_timesteps / (2 * self.rate)) * jnp.where(u < 0.05, series, closed)

    def beta_bar_sq(self, t):
        return -jnp.expm1(2.0 * self.log_alpha_bar(t))


SDES = Registry("SDE")
SDES.register("vp")(VPSDE)
SDES.register("subvp")(SubVPSDE)
SDES.register("ve")(VESDE)
SDES.register("blog")(BlogSDE)


def get_sde(name: str, **kwargs) -> SDE:
    """An SDE by registry name ("vp", "subvp", "ve", "blog") with its hyperparameters as keywords."""
    cls = SDES.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown} for the {name!r} SDE; "
                         f"valid: {', '.join(sorted(fields))}")
    return cls(**kwargs)
