"""Likelihoods in nats and bits/dim: the probability-flow ODE NLL and the discrete-time VLB.

Two estimates of -log p(x_0), both jittable end to end:

* `make_ode_log_likelihood`: the instantaneous change of variables along the probability-flow
  ODE (S10) of an SDE (docs/sde_ode.md, Song et al. 2021 appendix D.2),

      dx/dt = f_t x - 1/2 g_t^2 score(x, t),
      log p_{t0}(x(t0)) = log p_1(x(1)) + int_{t0}^{1} div_x(dx/dt)(x(t), t) dt,

  integrated from the data at t0 = t_min to the latent at t = 1 by an adaptive diffrax solver
  inside one `jit` (no host round trip per function evaluation, unlike the Score SDE code's
  `scipy.integrate.solve_ivp`). The divergence is exact (the Jacobian trace, small dimension)
  or Hutchinson's estimate with probes drawn once per solve.
* `variational_bound`: the bound of a K-step Gaussian chain (DDPM, Ho et al. 2020 eq. 5) with
  closed-form Gaussian KLs and a discretised-Gaussian (or Gaussian) decoder.

Units: `dequantize` + `bits_per_dim` turn the density of continuous data into bits per
dimension of the discrete data (an upper bound on its code length); `vlb_bits_per_dim` does the
same for the VLB, whose discretised decoder already gives a probability mass.
"""
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from udm.sampling import ode
from udm.sampling import Estimate
from udm.processes.sde import SDE

Array = Any
# `score_fn(params, x [B, ...], t scalar float32) -> score [B, ...]`.
ScoreFn = Callable[[Any, Array, Array], Array]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
DECODERS = ("discretized", "gaussian")


def _check_name(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


def _sum_trailing(v: Array, num_leading: int = 1) -> Array:
    """Sum over all but the first `num_leading` axes ([B, ...] -> [B]), as a matrix-vector product.

    Inside the solver's loop and the bound's scan XLA's CPU reductions cost ~10x a matvec of the
    same size; HIGHEST precision keeps the product exact float32 on GPU / TPU too.
    """
    flat = v.reshape(*v.shape[:num_leading], -1)
    ones = jnp.ones((flat.shape[-1],), flat.dtype)
    return jnp.matmul(flat, ones, precision=jax.lax.Precision.HIGHEST)


# --- the probability-flow ODE and its divergence ---------------------------------------------

def draw_probes(shape, *, key, probe: str = "rademacher", num_probes: int = 1) -> Array:
    """Hutchinson probes v with E[v v^T] = I: Rademacher (+-1) or standard Gaussian entries.

    Args:
        shape: the batch shape (B, ...) of the data.
        key: PRNG key; one draw per solve, so every function evaluation uses the same probes.
        probe: "rademacher" or "gaussian".
        num_probes: P, the number of probes averaged per example.

    Returns:
        float32 [P, B, ...].
    """
    _check_name("probe", probe, PROBES)
    full = (num_probes, *shape)
    if probe == "rademacher":
        return jax.random.rademacher(key, full, jnp.float32)
    return jax.random.normal(key, full, jnp.float32)


def _basis(shape) -> Array:
    """The D unit vectors of one example, each broadcast to the batch: float32 [D, B, ...]."""
    dim = math.prod(shape[1:])
    eye = jnp.eye(dim, dtype=jnp.float32).reshape(dim, 1, *shape[1:])
    return jnp.broadcast_to(eye, (dim, *shape))


def make_augmented_drift(sde: SDE, score_fn: ScoreFn) -> Callable:
    """The probability-flow drift and its per-example divergence, for a whole batch at once.

        dx/dt = f_t x - 1/2 g_t^2 score(x, t)                                         (S10)
        div_b = (1/P) sum_p v_p^T J_b v_p  (Hutchinson),   sum_d e_d^T J_b e_d = tr J_b (exact),
        J_b = d(dx_b/dt)/dx_b.

    Examples are independent (the score of example b depends on x_b only), so the Jacobian of
    the batch drift is block diagonal and ONE jvp with a batch of tangents [B, ...] returns
    J_b v_b for every example: one primal score call on [B, ...] per evaluation, shared by the
    tangent passes (one per probe, or one per unit vector e_d for the exact trace).

    Args:
        sde: the SDE giving f_t and g_t^2.
        score_fn: `score_fn(params, x [B, ...], t) -> [B, ...]`.

    Returns:
        `drift(params, x [B, ...], t scalar, tangents [P, B, ...] or None)` -> (dx/dt [B, ...],
        div [B]); `tangents=None` means the exact trace (D basis vectors).
    """
    flow = ode.probability_flow_drift(sde, score_fn)

    def drift_fn(params, x, t):
        return flow(params, x, jnp.asarray(t, jnp.float32))

    def augmented(params, x, t, tangents):
        exact = tangents is None
        if exact:
            tangents = _basis(x.shape)
        drift = lambda y: drift_fn(params, y, t)
        if tangents.shape[0] == 1:
            # One jvp: on CPU markedly cheaper than linearize + a size-1 vmap.
            dx, jv = jax.jvp(drift, (x,), (tangents[0],))
            jv = jv[None]
        else:
            dx, jvp_fn = jax.linearize(drift, x)
            jv = jax.vmap(jvp_fn)(tangents)                          # [P, B, ...]
        quad = _sum_trailing(tangents * jv, 2)                       # [P, B]: v^T J v
        div = jnp.sum(quad, axis=0) if exact else jnp.mean(quad, axis=0)
        return dx, div

    return augmented


class LogLikelihood(NamedTuple):
    """Result of one probability-flow ODE solve.

    Attributes:
        log_likelihood: [B] nats, log p_{t0}(x) = prior_logp + delta_logp; NaN where not success.
        prior_logp: [B] log p_1(z) of the latent (NaN where not success).
        delta_logp: [B] int_{t0}^{1} div(drift) dt (NaN where not success).
        z: [B, ...] the latent x(1) (NaN where not success).
        nfe: int32 scalar, evaluations of the augmented drift (one score call each, plus its
            jvp per tangent direction).
        success: bool scalar, False if the solver hit max_steps or failed.
    """
    log_likelihood: Array
    prior_logp: Array
    delta_logp: Array
    z: Array
    nfe: Array
    success: Array


def make_ode_log_likelihood(sde: SDE, score_fn: ScoreFn, *, divergence: str = "hutchinson",
                            probe: str = "rademacher", num_probes: int = 1,
                            solver: str = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
                            max_steps: int = 4096, t_start: Optional[float] = None,
                            dt0: float = 1e-2,
                            prior_logp_fn: Optional[Callable[[Array], Array]] = None) -> Callable:
    """Jitted log p_{t0}(x) by the instantaneous change of variables along the flow ODE (S10).

        log p_{t0}(x) = log p_1(z) + int_{t0}^{1} div_x(f_t x - 1/2 g_t^2 score(x, t)) dt,

    the augmented state (x [B, ...], delta [B]) integrated from (x, 0) at t0 to (z, delta_logp)
    at t = 1 with `diffrax.diffeqsolve` (one adaptive step size for the whole batch, the RMS
    error norm over all of it, as `solve_ivp` on the flattened batch in the Score SDE code).

    The first step starts from a fixed `dt0` (no initial step-size search) and the first drift
    evaluation is done here and handed to diffrax as the FSAL solver state, so the number of
    drift evaluations is exactly nfe = 1 + (stages - 1) * num_steps (Tsit5 / Dopri5: 1 + 6 n,
    n = attempted steps, rejected included). It is an evaluation metric: gradients through the
    adaptive solve are neither needed nor tested (train on `variational_bound` or the DSM loss).

    Args:
        sde: the SDE (closed over as a constant).
        score_fn: `score_fn(params, x [B, ...], t scalar float32) -> [B, ...]`.
        divergence: "exact" (trace of the Jacobian: D jvps, small D only) or "hutchinson"
            (mean over `num_probes` probes of v^T J v, one jvp per probe).
        probe: "rademacher" or "gaussian" Hutchinson probes, drawn once per solve from `key`.
        num_probes: probes per example.
        solver: "tsit5" or "dopri5" (the Dormand-Prince pair of scipy's RK45).
        rtol, atol: PID step-size controller tolerances.
        max_steps: attempted steps before the solve gives up (success = False).
        t_start: t0, where the data sits; default `sde.t_min`.
        dt0: the first step size (at most 1 - t0).
        prior_logp_fn: log p_1 of ONE latent z (any shape) -> scalar; default
            `sde.prior_logp`, the N(0, prior_std^2 I) stand-in for p_1 (tests plug in the exact
            p_1 of Gaussian data).

    Returns:
        `fn(params, x [B, ...], *, key) -> LogLikelihood`, jitted (traced once per input
        shape); `key` may be None for divergence="exact".
    """
    _check_name("divergence", divergence, DIVERGENCES)
    _check_name("probe", probe, PROBES)
    ode.ADAPTIVE_SOLVERS.get(solver)
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    t0 = float(sde.t_min if t_start is None else t_start)
    if not 0.0 <= t0 < 1.0:
        raise ValueError(f"t_start must be in [0, 1), got {t0}")
    if dt0 <= 0.0:
        raise ValueError(f"dt0 must be > 0, got {dt0}")
    dt0 = min(float(dt0), 1.0 - t0)
    augmented = make_augmented_drift(sde, score_fn)
    prior_logp_fn = sde.prior_logp if prior_logp_fn is None else prior_logp_fn

    def fn(params, x, *, key=None):
        x = jnp.asarray(x, jnp.float32)
        if divergence == "exact":
            probes = None
        else:
            if key is None:
                raise ValueError("divergence='hutchinson' needs a key for its probes")
            probes = draw_probes(x.shape, key=key, probe=probe, num_probes=num_probes)

        def vector_field(t, y, args):
            del args
            return augmented(params, y[0], t, probes)

        y0 = (x, jnp.zeros((x.shape[0],), jnp.float32))
        (z, delta_logp), nfe, success = ode.solve_adaptive(
            vector_field, y0, t0=t0, t1=1.0, solver=solver, rtol=rtol, atol=atol,
            max_steps=max_steps, dt0=dt0)
        prior_logp = jax.vmap(prior_logp_fn)(z)
        nan = jnp.float32(jnp.nan)
        return LogLikelihood(
            log_likelihood=jnp.where(success, prior_logp + delta_logp, nan),
            prior_logp=jnp.where(success, prior_logp, nan),
            delta_logp=jnp.where(success, delta_logp, nan),
            z=jnp.where(success, z, nan),
            nfe=nfe,
            success=success)

    return jax.jit(fn)


def ode_log_likelihood(sde: SDE, score_fn: ScoreFn, params, x: Array, *, key=None,
                       **options) -> LogLikelihood:
    """log p_{t0}(x) along the flow ODE: `make_ode_log_likelihood(sde, score_fn, **options)`.

    Builds (and compiles) the jitted function on every call: to evaluate many batches, build it
    once with `make_ode_log_likelihood`.

    Args:
        sde, score_fn, options: as `make_ode_log_likelihood`.
        params: the score function's parameters.
        x: [B, ...] data.
        key: PRNG key for the Hutchinson probes (None for divergence="exact").

    Returns:
        LogLikelihood, per-example fields [B].
    """
    return make_ode_log_likelihood(sde, score_fn, **options)(params, x, key=key)


# --- units --------------------------------------------------------------------------------

def dequantize(x: Array, num_levels: int, *, key) -> Array:
    """Uniform dequantisation of grid data x = -1 + 2k/(L-1) to y = 2(k + u)/L - 1, u ~ U[0, 1).

    Level k owns the bin [2k/L - 1, 2(k+1)/L - 1) of width 2/L: the bins tile [-1, 1), so a
    density p(y) on [-1, 1] gives level k the probability P(k) = int_bin p (see `bits_per_dim`).
    L = 17 for scikit-learn digits, 256 for 8-bit images.

    Args:
        x: [B, ...] data in [-1, 1] on the grid of `num_levels` values.
        num_levels: L.
        key: PRNG key for u (one independent draw per entry).

    Returns:
        float32 [B, ...] in [-1, 1).
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    k = jnp.round((jnp.asarray(x, jnp.float32) + 1.0) * (num_levels - 1) / 2.0)
    u = jax.random.uniform(key, k.shape, jnp.float32)
    return 2.0 * (k + u) / num_levels - 1.0


def bits_per_dim(log_likelihood: Array, dim: int, *, num_levels: int,
                 data_range: float = 2.0) -> Array:
    """Bits per dimension of discrete data from the density of its uniform dequantisation.

        bpd = -(log p(y) + D log(data_range / L)) / (D ln 2)

    Level k of L owns a bin of width w = data_range / L, so P(k) = w^D E_u[p(y)] and, by
    Jensen, -log2 P(k) <= -(E_u log p(y) + D log w) / ln 2: the bpd of the dequantised density
    (averaged over u) bounds the discrete code length. For L = 256 and data_range = 2 the
    offset is -log2(2/256) = 7 bits, the Score SDE code's `bpd + 7`; the uniform density
    2^{-D} on [-1, 1]^D gives log2(L) bits.

    Args:
        log_likelihood: [B] log p(y) in nats of dequantised data y (e.g. `ode_log_likelihood`
            of `dequantize(x)`).
        dim: D, the number of entries of one example.
        num_levels: L.
        data_range: the width of the data interval (2 for [-1, 1]).

    Returns:
        [B] bits per dimension.
    """
    log_bin = math.log(data_range / num_levels)
    return -(log_likelihood + dim * log_bin) / (dim * math.log(2.0))


def vlb_bits_per_dim(total: Array, dim: int) -> Array:
    """Bits per dimension of a variational bound in nats: bpd = total / (D ln 2).

    With the discretised decoder the bound is on -log P(x_0) of a probability mass over the L^D
    grid, so no bin-width offset appears (contrast `bits_per_dim`).

    Args:
        total: [B] `Bound.total` in nats.
        dim: D, the number of entries of one example.

    Returns:
        [B] bits per dimension.
    """
    return total / (dim * math.log(2.0))


# --- the discrete-time variational bound ----------------------------------------------------

def gaussian_kl(mean_q: Array, var_q: Array, mean_p: Array, var_p: Array) -> Array:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) of each entry (variances, broadcastable).

        KL = 1/2 [log(var_p / var_q) + var_q / var_p + (mean_q - mean_p)^2 / var_p - 1]

    Returns:
        The elementwise KL in nats (sum it over an example's entries).
    """
    return 0.5 * (jnp.log(var_p / var_q) + var_q / var_p + (mean_q - mean_p) ** 2 / var_p - 1.0)


def _log_ndtr_diff(lo: Array, hi: Array) -> Array:
    """log(Phi(hi) - Phi(lo)) for lo < hi, without cancellation in either tail."""
    # Reflect bins right of 0 into the left tail, where log_ndtr is accurate: Phi(hi) - Phi(lo)
    # = Phi(-lo) - Phi(-hi).
    flip = lo + hi > 0
    lo, hi = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    log_hi = jax.scipy.special.log_ndtr(hi)
    log_lo = jax.scipy.special.log_ndtr(lo)
    return log_hi + jnp.log(-jnp.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(x: Array, *, mean: Array, std: Array,
                                        num_levels: int) -> Array:
    """log P(x) of each entry for N(mean, std^2) integrated over x's bin (DDPM's decoder).

        P(x) = Phi((x + delta - mean) / std) - Phi((x - delta - mean) / std),  delta = 1/(L-1),

    with the bin of the lowest level (x = -1) extended to -inf and that of the highest (x = 1)
    to +inf, so the probabilities of the L levels sum to one.

    Args:
        x: [...] data on the grid -1 + 2k/(L-1).
        mean: [...] (broadcastable) decoder mean.
        std: decoder std (broadcastable).
        num_levels: L.

    Returns:
        [...] log-probabilities in nats.
    """
    half = 1.0 / (num_levels - 1)
    lo = (x - half - mean) / std
    hi = (x + half - mean) / std
    log_cdf_hi = jax.scipy.special.log_ndtr(hi)              # lowest level: Phi(hi)
    log_sf_lo = jax.scipy.special.log_ndtr(-lo)              # highest level: 1 - Phi(lo)
    middle = _log_ndtr_diff(lo, hi)
    return jnp.where(x < -1.0 + half, log_cdf_hi, jnp.where(x > 1.0 - half, log_sf_lo, middle))


class Bound(NamedTuple):
    """The variational bound of a K-step chain, per example, in nats.

    Attributes:
        total: [B] prior + diffusion + decoder, a bound on -log p(x_0).
        prior: [B] KL(q(x_K | x_0) || N(0, prior_std^2 I)).
        diffusion: [B] sum_{i=2..K} KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i)).
        decoder: [B] -log p(x_0 | x_1).
    """
    total: Array
    prior: Array
    diffusion: Array
    decoder: Array


def _split_estimate(out):
    """(x0_hat, std) from an x0_fn output: an Estimate or a bare x0_hat (std None)."""
    if isinstance(out, Estimate):
        return out.x0, out.std
    return out, None


def variational_bound(alpha_bar: Array, beta_bar: Array, x0_fn: Callable, x0: Array, *, key,
                      decoder: str = "discretized", num_levels: Optional[int] = None,
                      reverse_var: Optional[Array] = None, prior_std: float = 1.0) -> Bound:
    """One Monte Carlo sample of the K-step Gaussian chain's bound on -log p(x_0) (DDPM eq. 5).

        L = KL(q(x_K|x_0) || N(0, prior_std^2 I))
            + sum_{i=2..K} KL(q(x_{i-1}|x_i, x_0) || p(x_{i-1}|x_i)) - log p(x_0|x_1),

        q(x_{i-1}|x_i, x_0) = N(c_x x_i + c_0 x_0, sigma_tilde_i^2 I),
        a = alpha_bar_i / alpha_bar_{i-1},  v = beta_bar_i^2 - a^2 beta_bar_{i-1}^2,
        c_x = a beta_bar_{i-1}^2 / beta_bar_i^2,  c_0 = alpha_bar_{i-1} v / beta_bar_i^2,
        sigma_tilde_i^2 = beta_bar_{i-1}^2 v / beta_bar_i^2,
        p(x_{i-1}|x_i) = N(c_x x_i + c_0 x0_hat(x_i, i), reverse_var_i I).

    The KLs are closed form (the means differ by c_0 (x_0 - x0_hat)). Each term is an
    expectation over the marginal q(x_i|x_0) only, so term i draws its own x_i = alpha_bar_i x_0
    + beta_bar_i eps_i (eps_i from `fold_in(key, i)`): the same expectation as one joint
    trajectory. The decoder's mean is x0_hat(x_1, 1) (the formula above with beta_bar_0 = 0)
    and its variance sigma_1^2 = reverse_var[1], default beta_bar_1^2 / alpha_bar_1^2 (the
    posterior variance vanishes at i = 1).

    Args:
        alpha_bar: float32 [K + 1] signal coefficients of q(x_i|x_0); alpha_bar[0] = 1.
        beta_bar: float32 [K + 1] noise stds; beta_bar[0] = 0 (index 0 is the data).
        x0_fn: `x0_fn(x_i [B, ...], i int32 scalar) -> x0_hat [B, ...]` for i >= 1, or an
            `udm.sampling.Estimate(x0_hat, std)`: then p(x_{i-1}|x_i) has the (diagonal,
            state-dependent) variance sigma_tilde_i^2 + c_0^2 std^2 and the decoder std^2,
            as the DDPM sampler with that estimate (NPR-DPM / SN-DPM); reverse_var must be None.
        x0: [B, ...] data (on the grid of `num_levels` values for the discretised decoder).
        key: PRNG key.
        decoder: "discretized" (DDPM's discretised Gaussian over bins of width 2/(L-1), edges
            extended to +-inf: a probability) or "gaussian" (the density N(x0_hat, sigma_1^2):
            continuous data).
        num_levels: L, required by the discretised decoder.
        reverse_var: optional float32 [K + 1] reverse variances (index 0 unused); default the
            posterior variances sigma_tilde_i^2 (DDPM's beta-tilde).
        prior_std: std of the prior N(0, prior_std^2 I) standing in for q(x_K).

    Returns:
        Bound with [B] fields in nats; `vlb_bits_per_dim(bound.total, D)` for bits/dim.
    """
    _check_name("decoder", decoder, DECODERS)
    if decoder == "discretized" and (num_levels is None or num_levels < 2):
        raise ValueError(f"decoder='discretized' needs num_levels >= 2, got {num_levels}")
    alpha_bar = jnp.asarray(alpha_bar, jnp.float32)
    beta_bar = jnp.asarray(beta_bar, jnp.float32)
    if alpha_bar.ndim != 1 or alpha_bar.shape != beta_bar.shape or alpha_bar.shape[0] < 2:
        raise ValueError(f"alpha_bar and beta_bar must both be [K + 1] with K >= 1, got "
                         f"{alpha_bar.shape} and {beta_bar.shape}")
    num_steps = alpha_bar.shape[0] - 1
    if reverse_var is not None:
        reverse_var = jnp.asarray(reverse_var, jnp.float32)
        if reverse_var.shape != alpha_bar.shape:
            raise ValueError(f"reverse_var must be [K + 1] = {alpha_bar.shape}, got "
                             f"{reverse_var.shape}")
    x0 = jnp.asarray(x0, jnp.float32)

    def sample_x(i):
        eps = jax.random.normal(jax.random.fold_in(key, i), x0.shape, jnp.float32)
        return alpha_bar[i] * x0 + beta_bar[i] * eps

    # Prior: q(x_K | x_0) = N(alpha_bar_K x_0, beta_bar_K^2 I) against N(0, prior_std^2 I).
    prior = _sum_trailing(gaussian_kl(alpha_bar[num_steps] * x0, beta_bar[num_steps] ** 2,
                                      0.0, prior_std ** 2))

    # Diffusion terms i = 2..K, one lax.scan step each (one x0_fn call on the batch).
    def kl_term(total, i):
        x_i = sample_x(i)
        x0_hat, std = _split_estimate(x0_fn(x_i, i))
        ab_i, ab_prev = alpha_bar[i], alpha_bar[i - 1]
        bb2_i, bb2_prev = beta_bar[i] ** 2, beta_bar[i - 1] ** 2
        a = ab_i / ab_prev
        v = bb2_i - a ** 2 * bb2_prev
        var_q = bb2_prev * v / bb2_i
        c_0 = ab_prev * v / bb2_i
        var_p = var_q if reverse_var is None else reverse_var[i]
        if std is not None:  # the estimate's own variance, through the x_0 coefficient (V1)
            if reverse_var is not None:
                raise ValueError("x0_fn returned an Estimate with its own std: pass no reverse_var")
            var_p = var_q + c_0 ** 2 * std ** 2
        # The c_x x_i parts of the two means cancel in the KL.
        kl = _sum_trailing(gaussian_kl(c_0 * x0, var_q, c_0 * x0_hat, var_p))
        return total + kl, None

    steps = jnp.arange(2, num_steps + 1, dtype=jnp.int32)
    diffusion, _ = jax.lax.scan(kl_term, jnp.zeros((x0.shape[0],), jnp.float32), steps)

    # Decoder -log p(x_0 | x_1).
    one = jnp.int32(1)
    x0_hat, std = _split_estimate(x0_fn(sample_x(one), one))
    var_1 = (beta_bar[1] / alpha_bar[1]) ** 2 if reverse_var is None else reverse_var[1]
    if std is not None:
        var_1 = std ** 2
    if decoder == "discretized":
        log_p = discretized_gaussian_log_likelihood(x0, mean=x0_hat, std=jnp.sqrt(var_1),
                                                    num_levels=num_levels)
    else:
        log_p = -0.5 * (jnp.log(2.0 * math.pi * var_1) + (x0 - x0_hat) ** 2 / var_1)
    decoder_nll = -_sum_trailing(log_p)
    return Bound(total=prior + diffusion + decoder_nll, prior=prior, diffusion=diffusion,
                 decoder=decoder_nll)


def sde_chain(sde: SDE, num_steps: int, *, t_end: Optional[float] = None):
    """The K-step chain of an SDE's marginals: t_0 = 0 (data), then K uniform times t_end..1.

        t_i = t_end + (1 - t_end) (i - 1) / (K - 1),  i = 1..K   (K = 1: t_1 = 1),
        alpha_bar[i], beta_bar[i] = sde.marginal(t_i);  alpha_bar[0] = 1, beta_bar[0] = 0.

    Index 0 is the data itself, whatever the SDE says at t = 0 (the VE SDE's beta_bar(0) =
    sigma_min is replaced by 0). Index 1 sits at t_end (default `sde.t_min`), where the
    decoder reads x_1.

    Args:
        sde: the SDE.
        num_steps: K >= 1.
        t_end: the time of index 1; default `sde.t_min`.

    Returns:
        (alpha_bar, beta_bar, times), each float32 [K + 1].
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t_end = sde.t_min if t_end is None else t_end
    if not 0.0 < t_end <= 1.0:
        raise ValueError(f"t_end must be in (0, 1], got {t_end}")
    if num_steps == 1:
        chain_times = jnp.ones((1,), jnp.float32)
    else:
        chain_times = jnp.linspace(t_end, 1.0, num_steps, dtype=jnp.float32)
    alpha_bar, beta_bar = sde.marginal(chain_times)
    alpha_bar = jnp.broadcast_to(alpha_bar, chain_times.shape)
    times = jnp.concatenate([jnp.zeros((1,), jnp.float32), chain_times])
    alpha_bar = jnp.concatenate([jnp.ones((1,), jnp.float32), alpha_bar.astype(jnp.float32)])
    beta_bar = jnp.concatenate([jnp.zeros((1,), jnp.float32), beta_bar.astype(jnp.float32)])
    return alpha_bar, beta_bar, times
