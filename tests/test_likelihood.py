"""Likelihoods against closed forms: Gaussian data N(m, Sigma) has every marginal in closed form.

For x_0 ~ N(m, Sigma), Sigma = Q diag(lam) Q^T, the marginal of an SDE is
p_t = N(alpha_bar m, Q diag(V_t) Q^T) with V_t = alpha_bar^2 lam + beta_bar^2, its score is
-Q diag(1/V_t) Q^T (x - alpha_bar m), and the probability-flow drift is linear with Jacobian
J_t = Q diag(f_t + g_t^2 / (2 V_t)) Q^T, whose time integral is A = Q diag(1/2 log(V_1 / V_t0))
Q^T (the flow maps each eigen-direction's variance V_t0 to V_1). A full (rotated) covariance
makes the Hutchinson estimate v^T A v random for Rademacher probes too.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from udm import likelihood
from udm.processes.sde import SubVPSDE, VESDE, VPSDE

D = 3
MEAN = np.array([0.3, -0.2, 0.1])
LAM = np.array([0.5, 1.0, 2.0])                 # eigenvalues of Sigma
ROT, _ = np.linalg.qr(np.random.RandomState(0).randn(D, D))
ROT_2D = np.array([[math.cos(0.7), -math.sin(0.7)], [math.sin(0.7), math.cos(0.7)]])


class Gaussian:
    """x_0 ~ N(mean, rot diag(lam) rot^T) in len(mean) dimensions; all maths in closed form."""

    def __init__(self, mean, lam, rot):
        self.mean = jnp.asarray(mean, jnp.float32)
        self.lam = jnp.asarray(lam, jnp.float32)
        self.rot = jnp.asarray(rot, jnp.float32)

    def marginal(self, sde, t):
        """(alpha_bar, V_t [D]): p_t = N(alpha_bar mean, rot diag(V_t) rot^T)."""
        alpha_bar, beta_bar = sde.marginal(jnp.float32(t))
        return alpha_bar, alpha_bar ** 2 * self.lam + beta_bar ** 2

    def score_fn(self, sde):
        def score(params, x, t):
            del params
            alpha_bar, var = self.marginal(sde, t)
            y = (x - alpha_bar * self.mean[None]) @ self.rot
            return (-y / var[None]) @ self.rot.T
        return score

    def log_prob(self, sde, t, x):
        """log p_t(x) of a batch x [B, D] -> [B]."""
        alpha_bar, var = self.marginal(sde, t)
        y = (x - alpha_bar * self.mean[None]) @ self.rot
        return -0.5 * jnp.sum(y ** 2 / var[None] + jnp.log(2 * math.pi * var)[None], axis=1)

    def sample(self, sde, t, n, key):
        """n samples of p_t: [n, D]."""
        alpha_bar, var = self.marginal(sde, t)
        eps = jax.random.normal(key, (n, self.mean.shape[0]))
        return alpha_bar * self.mean[None] + (eps * jnp.sqrt(var)[None]) @ self.rot.T

    def posterior_mean(self, alpha_bar, beta_bar, x):
        """E[x_0 | x_t] = m + Sigma a (a^2 Sigma + b^2 I)^{-1} (x - a m); (a, b) = marginal."""
        y = (x - alpha_bar * self.mean[None]) @ self.rot
        gain = alpha_bar * self.lam / (alpha_bar ** 2 * self.lam + beta_bar ** 2)
        return self.mean[None] + (y * gain[None]) @ self.rot.T


DATA = Gaussian(MEAN, LAM, ROT)


def _exact_p1(sde):
    """log p_1 of one latent z [D]: the exact marginal at t = 1, in place of the N(0, s^2) prior."""
    return lambda z: DATA.log_prob(sde, 1.0, z[None])[0]


# --- probability-flow ODE -------------------------------------------------------------------

@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_exact_divergence_gives_exact_log_density(sde):
    # With the exact p_1 as the prior, log p_1(z) + int div = log p_t0(x) holds exactly, so
    # only solver error remains: compared with the closed form log p_t0 at samples of p_t0.
    x = DATA.sample(sde, sde.t_min, 16, jax.random.PRNGKey(0))
    fn = likelihood.make_ode_log_likelihood(sde, DATA.score_fn(sde), divergence="exact",
                                            prior_logp_fn=_exact_p1(sde))
    out = fn(None, x)
    exact = DATA.log_prob(sde, sde.t_min, x)
    assert bool(out.success)
    np.testing.assert_allclose(out.log_likelihood, exact, rtol=1e-2)
    assert float(jnp.max(jnp.abs(out.log_likelihood - exact))) < 2e-3      # nats
    np.testing.assert_allclose(out.log_likelihood, out.prior_logp + out.delta_logp, rtol=1e-6)


def test_vp_standard_prior_is_exact_p1_for_unit_variance_data():
    # VP preserves N(0, I): p_1 = N(0, alpha^2 + beta^2 = 1), and sde.prior_logp (std
    # beta_bar(1) = 1 - 2e-5) differs from it by < 1e-4 nats, so the default prior suffices.
    sde = VPSDE()
    white = Gaussian(np.zeros(D), np.ones(D), np.eye(D))
    x = white.sample(sde, sde.t_min, 16, jax.random.PRNGKey(1))
    out = likelihood.ode_log_likelihood(sde, white.score_fn(sde), None, x, divergence="exact")
    exact = white.log_prob(sde, sde.t_min, x)
    np.testing.assert_allclose(out.log_likelihood, exact, rtol=1e-2)
    assert float(jnp.max(jnp.abs(out.log_likelihood - exact))) < 2e-3


@pytest.mark.parametrize("probe,num_probes", [("rademacher", 1), ("gaussian", 4)])
def test_hutchinson_is_unbiased_with_the_closed_form_variance(probe, num_probes):
    # The error of the estimate is v^T A v - tr A for the fixed matrix A = int J dt (the drift
    # is linear), independent across examples: mean 0, variance 2 sum_{i != j} A_ij^2
    # (Rademacher) or 2 ||A||_F^2 (Gaussian), divided by the number of probes.
    sde = VPSDE()
    n = 4096
    x = DATA.sample(sde, sde.t_min, n, jax.random.PRNGKey(2))
    fn = likelihood.make_ode_log_likelihood(sde, DATA.score_fn(sde), probe=probe,
                                            num_probes=num_probes, prior_logp_fn=_exact_p1(sde))
    out = fn(None, x, key=jax.random.PRNGKey(3))
    err = np.asarray(out.log_likelihood - DATA.log_prob(sde, sde.t_min, x), np.float64)

    var_1 = np.asarray(DATA.marginal(sde, 1.0)[1], np.float64)
    var_0 = np.asarray(DATA.marginal(sde, sde.t_min)[1], np.float64)
    a = ROT @ np.diag(0.5 * np.log(var_1 / var_0)) @ ROT.T
    off_diagonal = 2 * (np.sum(a ** 2) - np.sum(np.diag(a) ** 2))
    var_exact = (off_diagonal if probe == "rademacher" else 2 * np.sum(a ** 2)) / num_probes
    assert var_exact > 0.01                       # the test is not degenerate
    assert abs(err.mean()) < 4 * math.sqrt(var_exact / n)
    # The sample variance of n draws has standard error sqrt((mu_4 - var^2) / n); the fourth
    # moment mu_4 of v^T A v - tr A (heavy tailed for Gaussian probes) from 10^5 numpy draws.
    rng = np.random.RandomState(0)
    shape = (10 ** 5, num_probes, D)
    v = rng.choice([-1.0, 1.0], shape) if probe == "rademacher" else rng.randn(*shape)
    draws = np.sum((v @ a) * v, axis=(1, 2)) / num_probes - np.trace(a)
    se_var = math.sqrt((np.mean(draws ** 4) - var_exact ** 2) / n)
    assert abs(err.var() - var_exact) < 4 * se_var, (err.var(), var_exact, se_var)


def _counting_score(sde, counter):
    """The exact score, counting its real (runtime) evaluations through a debug callback."""
    score = DATA.score_fn(sde)

    def counted(params, x, t):
        jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
        return score(params, x, t)
    return counted


@pytest.mark.parametrize("options", [
    dict(divergence="exact"),
    # A first step over the whole interval with loose tolerances: 3 of the 6 attempted steps
    # are rejected (sol.stats), the first ones included. Left to itself diffrax would redo the
    # first stage after each early rejection (39 evaluations here, not 1 + 6 * 6 = 37): hence
    # the first evaluation handed to it as solver state.
    dict(solver="dopri5", rtol=1e-3, atol=1e-3, dt0=1.0 - VESDE().t_min),
    dict(max_steps=2),
], ids=["exact-tsit5", "rejections-dopri5", "max-steps"])
def test_nfe_counts_real_drift_evaluations(options):
    sde = VESDE()
    counter = [0]
    fn = likelihood.make_ode_log_likelihood(sde, _counting_score(sde, counter), **options)
    x = DATA.sample(sde, sde.t_min, 8, jax.random.PRNGKey(4))
    out = jax.block_until_ready(fn(None, x, key=jax.random.PRNGKey(5)))
    jax.effects_barrier()
    assert int(out.nfe) == counter[0] > 0
    if options.get("max_steps") == 2:
        assert not bool(out.success)
        assert int(out.nfe) == 1 + 6 * 2
        assert np.all(np.isnan(out.log_likelihood)) and np.all(np.isnan(out.delta_logp))
    else:
        assert bool(out.success) and np.all(np.isfinite(out.log_likelihood))


def test_jitted_likelihood_traces_once_per_shape():
    sde = VPSDE()
    traces = [0]
    score = DATA.score_fn(sde)

    def traced_score(params, x, t):
        traces[0] += 1                              # runs only while tracing
        return score(params, x, t)

    fn = likelihood.make_ode_log_likelihood(sde, traced_score, rtol=1e-3, atol=1e-3)
    x = DATA.sample(sde, sde.t_min, 4, jax.random.PRNGKey(6))
    first = fn(None, x, key=jax.random.PRNGKey(7))
    after_first = traces[0]
    second = fn(None, x + 0.1, key=jax.random.PRNGKey(8))
    jax.block_until_ready((first, second))
    assert after_first > 0 and traces[0] == after_first


def test_bad_options_fail_naming_the_field():
    with pytest.raises(ValueError, match="divergence"):
        likelihood.make_ode_log_likelihood(VPSDE(), DATA.score_fn(VPSDE()), divergence="trace")
    with pytest.raises(ValueError, match="solver"):
        likelihood.make_ode_log_likelihood(VPSDE(), DATA.score_fn(VPSDE()), solver="rk4")


# --- units ----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_levels", [17, 256])
def test_bits_per_dim_closed_forms(num_levels):
    # The uniform density 2^-D on [-1, 1]^D gives every level probability 1/L: log2(L) bits.
    dim = 64
    ll = jnp.full((2,), -dim * math.log(2.0))
    np.testing.assert_allclose(likelihood.bits_per_dim(ll, dim, num_levels=num_levels),
                               math.log2(num_levels), rtol=1e-6)
    # L = 256 on [-1, 1]: the Score SDE code's offset, -log p / (D ln 2) + 7.
    ll = jnp.array([-100.0, 250.0])
    expected = -ll / (dim * math.log(2.0)) + math.log2(num_levels / 2)
    np.testing.assert_allclose(likelihood.bits_per_dim(ll, dim, num_levels=num_levels),
                               expected, rtol=1e-6)


def test_dequantized_piecewise_constant_density_gives_the_discrete_code_length():
    # A density constant on each level's bin, p(y) = P(k) / w (w = 2/L), makes Jensen's bound
    # an equality: bits_per_dim(log p(dequantize(x))) = -sum_d log2 P(k_d) / D for every u.
    num_levels, dim = 17, 5
    probs = np.random.RandomState(1).dirichlet(np.ones(num_levels))
    k = np.random.RandomState(2).randint(0, num_levels, (256, dim))
    x = jnp.asarray(-1.0 + 2.0 * k / (num_levels - 1), jnp.float32)
    y = likelihood.dequantize(x, num_levels, key=jax.random.PRNGKey(0))
    bins = np.floor((np.asarray(y, np.float64) + 1.0) * num_levels / 2.0).astype(int)
    np.testing.assert_array_equal(bins, k)                        # y lies in level k's bin
    u = (np.asarray(y, np.float64) + 1.0) * num_levels / 2.0 - k  # the uniform offsets
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / u.size)
    log_density = np.sum(np.log(probs[bins] * num_levels / 2.0), axis=1)
    bpd = likelihood.bits_per_dim(jnp.asarray(log_density), dim, num_levels=num_levels)
    np.testing.assert_allclose(bpd, -np.sum(np.log2(probs[k]), axis=1) / dim, rtol=1e-5)


# --- discretised decoder --------------------------------------------------------------------

@pytest.mark.parametrize("mean", [-1.5, -1.0, -0.3, 0.02, 1.0, 2.0])
@pytest.mark.parametrize("std", [1e-3, 0.05, 1.0, 10.0])
def test_discretized_probabilities_sum_to_one(mean, std):
    num_levels = 17
    grid = jnp.linspace(-1.0, 1.0, num_levels)
    log_p = likelihood.discretized_gaussian_log_likelihood(grid, mean=mean, std=std,
                                                           num_levels=num_levels)
    assert np.all(np.asarray(log_p) <= 1e-6)
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(log_p))), 1.0, atol=2e-5)


def test_discretized_tails_match_float64():
    # Bins 10-20 standard deviations from the mean: Phi(hi) - Phi(lo) underflows to 0 in
    # float32 if computed directly; the log-CDF difference stays accurate.
    num_levels = 17
    grid = np.linspace(-1.0, 1.0, num_levels)
    mean, std = -0.1, 0.06
    log_p = likelihood.discretized_gaussian_log_likelihood(
        jnp.asarray(grid, jnp.float32), mean=mean, std=std, num_levels=num_levels)
    half = 1.0 / (num_levels - 1)
    lo, hi = (grid - half - mean) / std, (grid + half - mean) / std
    # float64 reference: CDF differences left of the mean, survival-function differences right.
    left = grid < mean
    ref = np.log(np.where(left, special.ndtr(hi) - special.ndtr(lo),
                          special.ndtr(-lo) - special.ndtr(-hi)))
    ref[0], ref[-1] = special.log_ndtr(hi[0]), special.log_ndtr(-lo[-1])
    assert np.all(np.isfinite(np.asarray(log_p)))
    np.testing.assert_allclose(log_p, ref, rtol=1e-4)


# --- the discrete-time variational bound ----------------------------------------------------

def _expected_bound_gap(sde, num_steps, data, reverse_var=None):
    """E[bound] - E[-log p_0(x_0)] for Gaussian data and the exact x0_hat, in float64.

    E_{x_i} ||x_0 - x0_hat(x_i)||^2 = sum_d lam_d beta_bar^2 / (alpha_bar^2 lam_d + beta_bar^2)
    (the trace of the posterior covariance) gives every expected KL in closed form.
    """
    alpha_bar, beta_bar, _ = likelihood.sde_chain(sde, num_steps)
    ab, bb = np.asarray(alpha_bar, np.float64), np.asarray(beta_bar, np.float64)
    lam, mean = np.asarray(data.lam, np.float64), np.asarray(data.mean, np.float64)
    dim = lam.size
    post = lambda i: np.sum(lam * bb[i] ** 2 / (ab[i] ** 2 * lam + bb[i] ** 2))
    k = num_steps
    total = 0.5 * np.sum(-np.log(bb[k] ** 2) + bb[k] ** 2 + ab[k] ** 2 * (mean ** 2 + lam) - 1)
    for i in range(2, k + 1):
        a = ab[i] / ab[i - 1]
        v = bb[i] ** 2 - a ** 2 * bb[i - 1] ** 2
        var_q, c_0 = bb[i - 1] ** 2 * v / bb[i] ** 2, ab[i - 1] * v / bb[i] ** 2
        var_p = var_q if reverse_var is None else reverse_var[i]
        total += 0.5 * dim * (np.log(var_p / var_q) + var_q / var_p - 1)
        total += 0.5 * c_0 ** 2 * post(i) / var_p
    var_1 = (bb[1] / ab[1]) ** 2
    total += 0.5 * dim * np.log(2 * np.pi * var_1) + 0.5 * post(1) / var_1
    return total - 0.5 * np.sum(np.log(2 * np.pi * np.e * lam))


def _mc_bound_gap(sde, num_steps, data, n, key, reverse_var=None):
    """Per-example bound - (-log p_0(x_0)) at n samples x_0, with the exact x0_hat."""
    alpha_bar, beta_bar, _ = likelihood.sde_chain(sde, num_steps)
    x0_fn = lambda x, i: data.posterior_mean(alpha_bar[i], beta_bar[i], x)
    data_key, bound_key = jax.random.split(key)
    x0 = data.sample(sde, 0.0, n, data_key)
    bound = jax.jit(lambda x0: likelihood.variational_bound(
        alpha_bar, beta_bar, x0_fn, x0, key=bound_key, decoder="gaussian",
        reverse_var=reverse_var))(x0)
    np.testing.assert_allclose(bound.total, bound.prior + bound.diffusion + bound.decoder,
                               rtol=1e-5, atol=1e-3)
    nll = -np.asarray(data.log_prob(sde, 0.0, x0), np.float64)
    return np.asarray(bound.total, np.float64) - nll


def test_vlb_of_gaussian_data_tightens_towards_the_nll():
    # Expected gaps (float64 closed form) on 2-D data, VP SDE, uniform grid from t_min:
    # K = 10: 1124 nats, K = 100: 18.7, K = 1000: 0.90 (and 0.078 at K = 10^4: ~1/K). The
    # Monte Carlo bound (one sample per example) must agree within 4 standard errors.
    data = Gaussian(MEAN[:2], np.array([0.5, 2.0]), ROT_2D)
    sde = VPSDE()
    gaps = []
    for num_steps in (10, 100, 1000):
        gap = _mc_bound_gap(sde, num_steps, data, 2000, jax.random.PRNGKey(num_steps))
        expected = _expected_bound_gap(sde, num_steps, data)
        se = gap.std() / math.sqrt(gap.size)
        assert abs(gap.mean() - expected) < 4 * se, (num_steps, gap.mean(), expected, se)
        assert gap.mean() > -4 * se                              # a bound on the NLL
        gaps.append((gap.mean(), se, expected))
    (g10, s10, e10), (g100, s100, e100), (g1000, s1000, e1000) = gaps
    assert e10 > e100 > e1000 > 0
    assert g10 - 4 * s10 > g100 + 4 * s100 and g100 - 4 * s100 > g1000 + 4 * s1000
    assert g1000 < 1.0                                           # nats, for 2 dimensions


def test_vlb_reverse_var_enters_the_kl():
    # The optimal isotropic reverse variance for the exact mean (Analytic-DPM):
    # var_q + c_0^2 tr(Cov[x_0 | x_i]) / D, a tighter bound than the default var_q.
    data = Gaussian(MEAN[:2], np.array([0.5, 2.0]), np.eye(2))
    sde, num_steps = VPSDE(), 30
    alpha_bar, beta_bar, _ = likelihood.sde_chain(sde, num_steps)
    ab, bb = np.asarray(alpha_bar, np.float64), np.asarray(beta_bar, np.float64)
    lam = np.asarray(data.lam, np.float64)
    reverse_var = np.ones(num_steps + 1)
    for i in range(2, num_steps + 1):
        a = ab[i] / ab[i - 1]
        v = bb[i] ** 2 - a ** 2 * bb[i - 1] ** 2
        post = np.mean(lam * bb[i] ** 2 / (ab[i] ** 2 * lam + bb[i] ** 2))
        reverse_var[i] = bb[i - 1] ** 2 * v / bb[i] ** 2 + (ab[i - 1] * v / bb[i] ** 2) ** 2 * post
    reverse_var[1] = (bb[1] / ab[1]) ** 2                        # the default decoder variance
    gap = _mc_bound_gap(sde, num_steps, data, 4000, jax.random.PRNGKey(9),
                        reverse_var=jnp.asarray(reverse_var, jnp.float32))
    expected = _expected_bound_gap(sde, num_steps, data, reverse_var=reverse_var)
    assert abs(gap.mean() - expected) < 4 * gap.std() / math.sqrt(gap.size)
    assert 0 < expected < _expected_bound_gap(sde, num_steps, data)


def test_vlb_discretized_decoder_is_a_probability():
    num_levels, num_steps = 17, 20
    sde = VPSDE()
    alpha_bar, beta_bar, _ = likelihood.sde_chain(sde, num_steps)
    k = np.random.RandomState(3).randint(0, num_levels, (8, 4, 4, 1))
    x0 = jnp.asarray(-1.0 + 2.0 * k / (num_levels - 1), jnp.float32)
    x0_fn = lambda x, i: jnp.clip(x / alpha_bar[i], -1.0, 1.0)   # a crude denoiser
    bound = jax.jit(lambda x0: likelihood.variational_bound(
        alpha_bar, beta_bar, x0_fn, x0, key=jax.random.PRNGKey(0), num_levels=num_levels))(x0)
    assert bound.total.shape == (8,)
    assert np.all(np.asarray(bound.decoder) >= 0) and np.all(np.asarray(bound.diffusion) >= 0)
    bpd = likelihood.vlb_bits_per_dim(bound.total, 16)
    np.testing.assert_allclose(bpd, bound.total / (16 * math.log(2)), rtol=1e-6)


def test_sde_chain_grid():
    alpha_bar, beta_bar, times = likelihood.sde_chain(VESDE(), 5)
    np.testing.assert_allclose(times, [0.0, 1e-5, 0.25 + 0.75e-5, 0.5 + 0.5e-5,
                                       0.75 + 0.25e-5, 1.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(alpha_bar, np.ones(6))
    assert float(beta_bar[0]) == 0.0 and float(beta_bar[-1]) == pytest.approx(50.0, rel=1e-5)
    alpha_bar, beta_bar, times = likelihood.sde_chain(VPSDE(), 1)
    np.testing.assert_allclose(times, [0.0, 1.0])
    assert float(alpha_bar[0]) == 1.0 and float(beta_bar[0]) == 0.0
