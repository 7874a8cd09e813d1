"""Continuous-time SDEs, denoising score matching and the reverse-time samplers (docs/sde_ode.md).

Ground truth is Gaussian data x_0 ~ N(M, S^2 I): p_t = N(alpha_bar M, V_t I) with
V_t = alpha_bar^2 S^2 + beta_bar^2 and score -(x - alpha_bar M) / V_t (docs/sde_ode.md §5), and Gaussian
mixtures through the exact posterior mean of `udm.oracles`. Reference numerics are float64 numpy;
the library runs in float32. Monte Carlo tolerances are k standard errors (SE), stated inline.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from udm import losses, oracles
from udm.processes import GaussianProcess
from udm.processes import sde as sde_lib
from udm.sampling import make_sampler, time_grid
from udm.sampling import sde as sde_samplers

M, S = 0.5, 0.3          # data N(M, S^2 I)
ALL_SDES = ["vp", "subvp", "ve", "blog"]


# --- exact scores ----------------------------------------------------------------------------

def gaussian_score(sde, mean=M, std=S):
    """The exact score of p_t for x_0 ~ N(mean, std^2 I), `(params, x, t) -> score`."""
    def score(params, x, t):
        del params
        a, b = sde.marginal(t)
        return -(x - a * mean) / (a ** 2 * std ** 2 + b ** 2)

    return score


def marginal64(sde, t):
    a, b = sde.marginal(jnp.float32(t))
    return float(a), float(b)


def exact_p1_sample(sde, seed, shape):
    """x_1 ~ p_1 = N(alpha_bar_1 M, V_1 I) exactly (not the N(0, prior_std^2) stand-in), float32.

    Test inputs are drawn with numpy: an eager jax.random draw would cost a compilation."""
    a1, b1 = marginal64(sde, 1.0)
    z = np.random.default_rng(seed).standard_normal(shape)
    return jnp.asarray(a1 * M + np.sqrt(a1 ** 2 * S ** 2 + b1 ** 2) * z, jnp.float32)


# --- (S6): drift and diffusion from the marginals --------------------------------------------

def _closed_forms(name, sde, t):
    """(f, g^2) of the Score SDE paper / the blog, float64 numpy."""
    if name in ("vp", "subvp"):
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        big_b = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t ** 2
        g2 = beta if name == "vp" else beta * (1 - np.exp(-2 * big_b))
        return -0.5 * beta, g2
    if name == "ve":
        sigma = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
        return np.zeros_like(t), 2 * np.log(sde.sigma_max / sde.sigma_min) * sigma ** 2
    beta = -sde.num_timesteps * np.log1p(-sde.rate * t)        # blog: beta(t) = -T ln(1 - rate t)
    return -0.5 * beta, beta


@pytest.mark.parametrize("name", ALL_SDES)
def test_drift_and_diffusion_match_closed_forms(name):
    sde = sde_lib.get_sde(name)
    t = np.concatenate([[sde.t_min, 1e-2], np.linspace(0.05, 1.0, 20)])
    f = np.asarray(sde.f(jnp.asarray(t, jnp.float32)), np.float64)
    g2 = np.asarray(sde.g2(jnp.asarray(t, jnp.float32)), np.float64)
    f_ref, g2_ref = _closed_forms(name, sde, t)
    # float32 autodiff of float32 marginals: a few ulps, relative.
    np.testing.assert_allclose(f, f_ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(g2, g2_ref, rtol=2e-5)
    if name in ("vp", "blog"):
        # VP condition alpha_bar^2 + beta_bar^2 = 1  <=>  g^2 + 2 f = 0 (docs/sde_ode.md §1.5).
        np.testing.assert_allclose(g2 + 2 * f, 0.0, atol=2e-5 * np.abs(g2).max())
    a0, b0 = marginal64(sde, 0.0)
    a1, b1 = marginal64(sde, 1.0)
    if name == "ve":   # the paper's marginal: alpha_bar = 1, beta_bar = sigma(t)
        assert a0 == a1 == 1.0 and np.isclose(b0, sde.sigma_min) and np.isclose(b1, sde.sigma_max)
    else:
        assert a0 == 1.0 and b0 == 0.0 and a1 < 0.01
    if name == "blog":   # docs/sde_ode.md §1.5: alpha_bar(1) = 0.0065 vs the discrete chain's 0.00648
        assert abs(a1 - 0.0065) < 1e-4


@pytest.mark.parametrize("name", ALL_SDES)
def test_diffusion_is_finite_at_time_zero(name):
    # g_0^2 is finite (VP: beta_min; sub-VP and blog: 0) and (S2) started at t = 0 needs it,
    # but 2 beta_bar^2 d/dt ln(beta_bar / alpha_bar) is 0 * inf there when beta_bar(0) = 0.
    sde = sde_lib.get_sde(name)
    f_ref, g2_ref = _closed_forms(name, sde, np.zeros(1))
    g2_0 = float(sde.g2(jnp.float32(0.0)))
    assert np.isfinite(g2_0), f"{name}: g2(0) = {g2_0}, expected {g2_ref[0]}"
    np.testing.assert_allclose(g2_0, g2_ref[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(sde.f(jnp.float32(0.0))), f_ref[0], atol=1e-7)


@pytest.mark.parametrize("name", ALL_SDES)
def test_transition_is_consistent_with_marginals(name):
    sde = sde_lib.get_sde(name)
    t = jnp.array([0.01, 0.3, 0.5, 1.0, 1.0])
    s = jnp.array([0.001, 0.29, 0.1, 0.99, 0.0])
    a, v = sde.transition(t, s)
    abar_t, bbar_t = sde.marginal(t)
    abar_s, bbar_s = sde.marginal(s)
    np.testing.assert_allclose(a * abar_s, abar_t, rtol=1e-5)
    np.testing.assert_allclose(a ** 2 * bbar_s ** 2 + v, bbar_t ** 2, rtol=1e-5)
    assert np.all(np.asarray(v) > 0)


@pytest.mark.parametrize("name", ALL_SDES)
def test_forward_euler_maruyama_reaches_the_marginals(name):
    """(S6) round trip: simulate (S2) with the library's f, g from a point x_0; the mean and
    variance at t approach alpha_bar x_0 and beta_bar^2 as dt -> 0 (docs/sde_ode.md §5.1)."""
    sde = sde_lib.get_sde(name)
    x0, n, checkpoints = 1.5, 20_000, (0.25, 0.5, 1.0)
    a0, b0 = marginal64(sde, 0.0)    # VE starts at N(x_0, sigma_min^2), the others at x_0

    # f and g^2 at mid-step times of both step sizes, all on the grid j / 4000 (one evaluation).
    # Mid-step: (S2) at the left end would need g^2(0), which is NaN for the VP family (see
    # test_diffusion_is_finite_at_time_zero); the scheme stays first order.
    fine_grid = jnp.arange(4001, dtype=jnp.float32) / 4000
    f_all, g2_all = (np.asarray(c, np.float64)
                     for c in jax.jit(lambda t: (sde.f(t), sde.g2(t)))(fine_grid))

    def coefficients(num_steps):
        j = (4000 // num_steps) * (2 * np.arange(num_steps) + 1) // 2
        return f_all[j], g2_all[j]

    def chain_law(num_steps):
        """Exact mean/var of the Euler-Maruyama chain (it is linear), at the checkpoints."""
        f, g2 = coefficients(num_steps)
        dt = 1.0 / num_steps
        mean, var, out = a0 * x0, b0 ** 2, {}
        for k in range(num_steps):
            mean, var = (1 + f[k] * dt) * mean, (1 + f[k] * dt) ** 2 * var + g2[k] * dt
            if (k + 1) / num_steps in checkpoints:
                out[(k + 1) / num_steps] = (mean, var)
        return out

    coarse, fine = chain_law(1000), chain_law(2000)
    rng = np.random.default_rng(0)
    f, g2 = coefficients(1000)
    x = a0 * x0 + b0 * rng.standard_normal(n)
    for k in range(1000):
        x = x + f[k] * x * 1e-3 + np.sqrt(g2[k] * 1e-3) * rng.standard_normal(n)
        t = (k + 1) / 1000
        if t not in checkpoints:
            continue
        abar, bbar = marginal64(sde, t)
        exact_mean, exact_var = abar * x0, bbar ** 2
        # Discretisation error is O(dt): it halves with dt and is small at dt = 1e-3.
        for i, exact in enumerate([exact_mean, exact_var]):
            e_coarse, e_fine = abs(coarse[t][i] - exact), abs(fine[t][i] - exact)
            scale = np.sqrt(exact_var) if i == 0 else exact_var
            assert e_fine <= 0.6 * e_coarse + 1e-7 * scale, (t, i, e_coarse, e_fine)
            assert e_coarse <= 0.02 * scale, (t, i, e_coarse)
        # Simulated moments: 5 SE (var SE = var sqrt(2 / n)) plus the chain's own bias.
        bias_mean, bias_var = (abs(coarse[t][i] - e) for i, e in enumerate([exact_mean, exact_var]))
        assert abs(x.mean() - exact_mean) < 5 * np.sqrt(exact_var / n) + bias_mean
        assert abs(x.var() - exact_var) < 5 * exact_var * np.sqrt(2 / n) + bias_var


def test_prior_and_predictor_conversions():
    from scipy import stats
    for name in ALL_SDES:
        sde = sde_lib.get_sde(name)
        a1, b1 = marginal64(sde, 1.0)
        assert sde.prior_std == pytest.approx(b1)
        z = np.asarray(sde.prior_sample(jax.random.PRNGKey(0), (3, 4)))
        assert z.shape == (3, 4) and z.dtype == np.float32 and np.all(np.abs(z) < 6 * b1)
        want = stats.norm(0, b1).logpdf(z[0].astype(np.float64)).sum()
        np.testing.assert_allclose(float(sde.prior_logp(jnp.asarray(z[0]))), want, rtol=1e-5)
    # eps / x0 / score outputs describe the same score; Tweedie inverts the x0 parameterisation.
    sde = sde_lib.VPSDE()
    rng = np.random.default_rng(1)
    x0, eps = (jnp.asarray(rng.standard_normal((5, 3)), jnp.float32) for _ in range(2))
    t = jnp.float32(0.4)
    a, b = sde.marginal(t)
    xt = sde.forward(t, x0, eps)
    score = -eps / b
    np.testing.assert_allclose(sde.score_from_output("eps", xt, t, eps), score, rtol=1e-6)
    np.testing.assert_allclose(sde.score_from_output("x0", xt, t, x0), score, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sde.x0_from_score(xt, t, score), x0, atol=1e-5)
    for kind, out in [("eps", eps), ("x0", x0), ("score", score)]:
        wrapped = sde_lib.as_score_fn(sde, lambda p, x, tt, out=out: out, kind)
        np.testing.assert_allclose(wrapped(None, xt, t), score, rtol=1e-4, atol=1e-4)


# --- denoising score matching (S5) ---------------------------------------------------------

def _vp64(sde, t):
    """Closed-form VP marginals and likelihood weight g^2 / beta_bar^2, float64."""
    big_b = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t ** 2
    a2, b2 = np.exp(-big_b), -np.expm1(-big_b)
    return a2, b2, (sde.beta_min + t * (sde.beta_max - sde.beta_min)) / b2


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_dsm_optimum_over_linear_scores(name):
    """docs/sde_ode.md §5.6: least squares of the (S5) target -eps/beta_bar on (x_t, 1) at fixed t."""
    sde = sde_lib.get_sde(name)
    rng = np.random.default_rng(0)
    n = 200_000
    for t in [0.05, 0.3, 0.7]:
        x0 = M + S * rng.standard_normal(n)
        eps = rng.standard_normal(n)
        xt = np.asarray(sde.forward(jnp.float32(t), jnp.asarray(x0, jnp.float32),
                                    jnp.asarray(eps, jnp.float32)), np.float64)
        a, b = marginal64(sde, t)
        target = -eps / b                          # grad log p(x_t | x_0), (S5)
        (slope, intercept), *_ = np.linalg.lstsq(np.stack([xt, np.ones(n)], 1), target, rcond=None)
        v = a ** 2 * S ** 2 + b ** 2
        # OLS standard errors: residual variance 1/b^2 - 1/v; 5 SE each.
        resid_var = 1 / b ** 2 - 1 / v
        se_slope = np.sqrt(resid_var / (n * v))
        se_intercept = np.sqrt(resid_var / n * (1 + (a * M) ** 2 / v))
        assert abs(slope - (-1 / v)) < 5 * se_slope, (t, slope, -1 / v)
        assert abs(intercept - a * M / v) < 5 * se_intercept, (t, intercept, a * M / v)


def test_dsm_loss_of_exact_eps_predictor_matches_closed_form():
    """With eps_hat = E[eps | x_t] = beta_bar (x_t - alpha_bar M) / V_t, each entry's residual has
    variance r(t) = 1 - beta_bar^2 / V_t; the loss's expectation is a 1-D integral over t."""
    sde = sde_lib.VPSDE()
    d, batch = 4, 65_536

    def exact_eps(params, xt, t_input, key):
        del params, key
        a, b = sde.marginal(t_input / sde.time_input_scale)      # [B]
        v = a ** 2 * S ** 2 + b ** 2
        return (b / v)[:, None] * (xt - (a * M)[:, None])

    def r(t):
        a2, b2, _ = _vp64(sde, t)
        return 1 - b2 / (a2 * S ** 2 + b2)

    w = lambda t: _vp64(sde, t)[2]
    quad = lambda fn: integrate.quad(fn, sde.t_min, 1.0, limit=200, points=[1e-2, 1e-1])[0]
    length = 1.0 - sde.t_min
    x0 = jnp.asarray(M + S * np.random.default_rng(0).standard_normal((batch, d)), jnp.float32)
    key = jax.random.PRNGKey(1)

    def run(weighting, time_sampling):
        loss_fn = losses.make_loss_fn(sde, exact_eps, weighting=weighting,
                                      time_sampling=time_sampling)
        return float(jax.jit(loss_fn)(None, x0, key=key)[0])

    # Per example: given t the mean over d entries has mean r and variance 2 r^2 / d.
    # 1) uniform t, no weighting.
    mean = quad(r) / length
    var = quad(lambda t: r(t) ** 2 * (1 + 2 / d)) / length - mean ** 2
    assert abs(run("none", "uniform") - mean) < 5 * np.sqrt(var / batch)     # 5 SE
    # 2) uniform t, likelihood weighting g^2 / beta_bar^2.
    mean_u = quad(lambda t: w(t) * r(t)) / length
    var_u = quad(lambda t: (w(t) * r(t)) ** 2 * (1 + 2 / d)) / length - mean_u ** 2
    loss_u = run("likelihood", "uniform")
    assert abs(loss_u - mean_u) < 5 * np.sqrt(var_u / batch)                  # 5 SE
    # 3) importance-sampled t ~ w / Z, estimate Z * mse.
    z_lib = sde_lib._importance_table(sde)[0][-1]
    z = quad(w)
    assert abs(float(z_lib) / z - 1) < 1e-3       # trapezoid table vs adaptive quadrature
    mean_i = float(z_lib) * quad(lambda t: w(t) * r(t)) / z
    var_i = float(z_lib) ** 2 * quad(lambda t: w(t) / z * r(t) ** 2 * (1 + 2 / d)) - mean_i ** 2
    loss_i = run("likelihood", "importance")
    assert abs(loss_i - mean_i) < 5 * np.sqrt(var_i / batch)                  # 5 SE
    # Same expectation both ways (up to the 1 / (1 - t_min) of averaging over U(t_min, 1)),
    # and the Monte Carlo estimates agree within 5 combined SE; importance sampling is the
    # low-variance one.
    assert abs(mean_i / mean_u - 1) < 2 * sde.t_min
    assert abs(loss_i - loss_u) < 5 * np.sqrt(var_u / batch + var_i / batch)
    assert var_i < 0.1 * var_u


def test_importance_time_sampler_follows_the_likelihood_weight():
    sde = sde_lib.VPSDE()
    n = 200_000
    t, _ = sde.sample_time(jax.random.PRNGKey(0), n, time_sampling="importance")
    t = np.asarray(t, np.float64)
    assert t.min() >= sde.t_min and t.max() <= 1.0
    w = lambda u: _vp64(sde, u)[2]
    z = integrate.quad(w, sde.t_min, 1.0, limit=200, points=[1e-2, 1e-1])[0]
    for q in [2e-3, 1e-2, 0.1, 0.5, 0.9]:
        cdf = integrate.quad(w, sde.t_min, q, limit=200)[0] / z
        # Binomial SE sqrt(p (1 - p) / n); 5 SE plus 1e-3 for the tabulated inverse CDF.
        assert abs(np.mean(t <= q) - cdf) < 5 * np.sqrt(cdf * (1 - cdf) / n) + 1e-3, q


def test_dsm_loss_rejects_bad_names():
    sde = sde_lib.VPSDE()
    apply_fn = lambda p, x, t, k: x
    with pytest.raises(ValueError, match="none, likelihood"):
        losses.make_loss_fn(sde, apply_fn, weighting="snr")
    with pytest.raises(ValueError, match="uniform, importance"):
        losses.make_loss_fn(sde, apply_fn, weighting="likelihood", time_sampling="cosine")
    with pytest.raises(ValueError, match="needs weighting='likelihood'"):
        losses.make_loss_fn(sde, apply_fn, time_sampling="importance")


# --- samplers: closed-form reproduction ----------------------------------------------------

# Steps per named sampler, and the allowed |std / S - 1| from discretisation (at least 1.5x the
# bias measured at these K). Euler in t is first order with a large constant for VE, whose
# sigma(t) grows like e^{8.5 t}; "pc" adds the Langevin corrector's step-size bias at snr = 0.16,
# Var x 1 / (1 - snr^2) (std + 1.3%), to the predictor's O(dt) error.
# The estimate-then-correct samplers run on the SDEs too (float times): ddpm, ddim (eta = 0) and
# improved (= ddim for Gaussian noise) are exact for Gaussian data up to the grid; the baseline
# design is not (it ignores Var[x_0 | x_t]) and is left out.
NUM_STEPS = {"em": 200, "pc": 200, "ode_euler": 400, "ode_heun": 100, "ode_ddim": 400,
             "ode_adaptive": 0, "ddpm": 1000, "ddim": 400, "improved": 400}
STD_ALLOWANCE = {"em": 0.015, "pc": 0.02, "ode_euler": 0.015, "ode_heun": 0.015, "ode_ddim": 0.015,
                 "ode_adaptive": 0.005, "ddpm": 0.015, "ddim": 0.015, "improved": 0.015}
STD_ALLOWANCE_VE = {"ode_euler": 0.08}
# Score traces per compilation: the scan body once (Heun: two evaluations, pc: corrector and
# predictor), plus the final Tweedie denoise. A scan unrolled per step would trace K times.
TRACES = {"em": 2, "pc": 3, "ode_euler": 2, "ode_heun": 3, "ode_ddim": 2, "ddpm": 2, "ddim": 2,
          "improved": 2}


# The SDE solvers on all three SDEs; the estimate-then-correct samplers (one code path, the
# process's `correct`) on VP and on VE, whose x_T scale and noise schedule are the extremes.
CASES = [(sde, name) for sde in ("vp", "subvp", "ve") for name in sorted(NUM_STEPS)
         if not (sde == "subvp" and name in ("ddpm", "ddim", "improved"))]


@pytest.mark.parametrize("sde_name,name", CASES)
def test_named_samplers_reproduce_gaussian_data(sde_name, name):
    sde = sde_lib.get_sde(sde_name)
    n, d = 4096, 64        # d >= 64: the Langevin step-size heuristic assumes high dimension
    x_1 = exact_p1_sample(sde, 0, (n, d))
    traces = []
    exact = oracles.gaussian_posterior_mean(sde, M, S)

    def predictor(params, x, t):
        traces.append(1)          # Python side effect: runs only while tracing
        return params * exact(None, x, t)

    sample = make_sampler(sde, predictor, name, num_steps=NUM_STEPS[name])
    out = sample(jnp.float32(1.0), x_1, key=jax.random.PRNGKey(1))
    assert len(traces) == TRACES.get(name, len(traces)) and len(traces) >= 1, len(traces)
    if sde_name == "vp":
        # Traced once: a second call with new params, inputs and key reuses the compilation.
        first = len(traces)
        sample(jnp.float32(1.0 + 1e-7), x_1 + 1e-3, key=jax.random.PRNGKey(2))
        assert len(traces) == first, f"{name} retraced on a second call with the same shapes"
    assert bool(out.success) and out.x0.shape == (n, d) and out.x0.dtype == jnp.float32
    if name != "ode_adaptive":
        per_step = {"pc": 2, "ode_heun": 2}.get(name, 1)
        assert int(out.nfe) == per_step * NUM_STEPS[name] + 1   # + 1: the x_0 estimate at t_min
    x = np.asarray(out.x0, np.float64)
    size = x.size
    # 5 SE: mean SE = S / sqrt(size); relative std SE = 1 / sqrt(2 size) (0.14% here); plus
    # 0.002 of discretisation on the mean (largest offset measured: 0.003, pc).
    assert abs(x.mean() - M) < 5 * S / np.sqrt(size) + 0.002
    allowance = (STD_ALLOWANCE_VE if sde_name == "ve" else {}).get(name, STD_ALLOWANCE[name])
    ratio = float(x.std() / S)
    assert abs(ratio - 1) < 5 / np.sqrt(2 * size) + allowance, f"std / S = {ratio:.4f}"


def test_langevin_corrector_leaves_p_t_invariant():
    """Langevin steps at a fixed t with the exact score keep p_t = N(alpha_bar M, V I) up to the
    unadjusted-Langevin bias of a step eps = 2 a^2 snr^2 V: Var -> V / (1 - a^2 snr^2).

    The step size must not depend on the state. The library's `langevin_step` sets it per example
    from ||score(x)||, so examples near the mean take larger steps; in the small-step limit
    dx = h(x) grad log p dt + sqrt(2 h(x)) dw keeps q ∝ p / h ∝ p ||score||^2, i.e.
    Var x (d + 2) / d for Gaussian data whatever the snr (+6% of variance in total here,
    measured). Song et al.'s LangevinCorrector uses batch means of the two norms, a
    state-independent step.
    """
    sde = sde_lib.VPSDE()
    t, s = jnp.float32(0.5), jnp.float32(0.495)
    a, b = marginal64(sde, 0.5)
    v = a ** 2 * S ** 2 + b ** 2
    snr, n, d = 0.16, 1024, 64
    score = gaussian_score(sde)
    a_step = float(sde.transition(t, s)[0])
    x = jnp.asarray(a * M + np.sqrt(v) * np.random.default_rng(0).standard_normal((n, d)),
                    jnp.float32)

    @jax.jit
    def run(x, key):
        def body(x, i):
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape)
            return sde_samplers.langevin_step(sde, score(None, x, t), x, t, s, snr, z), None

        return jax.lax.scan(body, x, jnp.arange(100))[0]    # ~10 relaxation times

    x = np.asarray(run(x, jax.random.PRNGKey(0)), np.float64)
    target_var = v / (1 - snr ** 2 * a_step ** 2)
    size = x.size
    assert abs(x.mean() - a * M) < 5 * np.sqrt(v / size)                    # 5 SE
    # 5 SE of the variance (sqrt(2 / size) relative, 0.55%) + 0.5% for the O(1/d) randomness of
    # the noise norm in the step.
    ratio = x.var() / target_var
    assert abs(ratio - 1) < 5 * np.sqrt(2 / size) + 0.005, (
        f"Langevin corrector does not keep p_t: Var / (V / (1 - a^2 snr^2)) = {ratio:.4f} "
        f"(a per-example step size biases the stationary law by (d + 2) / d = {(d + 2) / d:.4f})")


def test_mixture_weights_are_recovered():
    sde = sde_lib.VPSDE()
    means, stds, weights = jnp.array([[-2.0], [2.0]]), jnp.array([0.5, 0.5]), jnp.array([0.3, 0.7])
    predictor = oracles.gaussian_mixture_posterior_mean(sde, means, stds, weights)
    n = 8192
    rng = np.random.default_rng(0)
    x0 = np.where(rng.random((n, 1)) < 0.7, 2.0, -2.0) + 0.5 * rng.standard_normal((n, 1))
    a1, b1 = marginal64(sde, 1.0)
    x_1 = jnp.asarray(a1 * x0 + b1 * rng.standard_normal((n, 1)), jnp.float32)   # exact p_1
    for name, k in [("em", 200), ("ode_heun", 50)]:
        out = make_sampler(sde, predictor, name, num_steps=k)(None, x_1, key=jax.random.PRNGKey(1))
        x = np.asarray(out.x0)[:, 0]
        recovered = np.mean(x > 0.0)             # nearest component (overlap at 0 is 3e-5)
        # Binomial SE sqrt(0.21 / n) = 0.005; 5 SE plus 0.005 of discretisation.
        assert abs(recovered - 0.7) < 5 * np.sqrt(0.21 / n) + 0.005, (name, recovered)
        # Within a component the spread is the component's: 5 SE (5 / sqrt(2 * 5700) = 4.7%)
        # plus 1% of discretisation.
        assert abs(x[x > 0].std() / 0.5 - 1) < 0.057, (name, x[x > 0].std())


# --- (S8)/(S9): one family of reverse SDEs, one set of marginals ---------------------------------

def test_em_family_shares_the_marginals():
    """Reverse (S9) with sigma_t = lambda g_t, lambda in {0, 1/2, 1, 2}: the same marginal variance
    alpha_bar_t^2 S^2 + beta_bar_t^2 at t = 3/4, 1/2, 1/4.

    One scan of the library's `euler_maruyama_step` with lambda as an argument records every
    intermediate time in one compilation; it is first checked to be `make_sde_sampler` itself.
    """
    sde = sde_lib.VPSDE()
    n, d, num_steps = 4096, 16, 600                  # dt = 1/800 down to t = 1/4
    times = jnp.linspace(1.0, 0.25, num_steps + 1, dtype=jnp.float32)
    checkpoints = (0.75, 0.5, 0.25)                  # every 200 steps
    x_1 = exact_p1_sample(sde, 0, (n, d))
    score = gaussian_score(sde)
    key = jax.random.PRNGKey(1)

    @jax.jit
    def run(lam, x):
        def step_body(x, step):
            t, s, index = step
            z = jax.random.normal(jax.random.split(jax.random.fold_in(key, index), 1)[-1],
                                  x.shape, x.dtype)
            x, _ = sde_samplers.euler_maruyama_step(sde, score(None, x, t), x, t, s, lam, z)
            return x, None

        def segment_body(x, steps):
            x = jax.lax.scan(step_body, x, steps)[0]
            return x, x

        steps = (times[:-1], times[1:], jnp.arange(num_steps, dtype=jnp.int32))
        segments = jax.tree.map(lambda a: a.reshape((len(checkpoints), -1)), steps)
        return jax.lax.scan(segment_body, x, segments)[1]     # [3, n, d]: x at 3/4, 1/2, 1/4

    # The hand-written scan is the library sampler: same grid, keys and step.
    ends = run(jnp.float32(2.0), x_1)
    library = sde_samplers.make_sde_sampler(sde, score, num_steps=200, noise_scale=2.0,
                                            denoise=False, t_end=0.75)
    # Same times up to float32 rounding of the two linspaces.
    np.testing.assert_allclose(library(None, x_1, key=key).x0, ends[0], rtol=1e-4, atol=1e-4)

    size = n * d
    for lam in [0.0, 0.5, 1.0, 2.0]:
        ends = run(jnp.float32(lam), x_1) if lam != 2.0 else ends
        for i, t in enumerate(checkpoints):
            a, b = marginal64(sde, t)
            v = a ** 2 * S ** 2 + b ** 2
            x = np.asarray(ends[i], np.float64)
            # 5 SE (mean: sqrt(v / size); variance: v sqrt(2 / size), 0.55%) plus the
            # Euler-Maruyama bias of an OU step, k dt / 2 with rate k = (1 + lambda^2) g^2 / (2 V)
            # <= 10 (1 + lambda^2): 3.1% at lambda = 2 (measured about 2%).
            allowance = 5 * (1 + lam ** 2) / 800
            ratio = float(x.var() / v)
            assert abs(x.mean() - a * M) < 5 * np.sqrt(v / size) + 0.002, (t, lam)
            assert abs(ratio - 1) < 5 * np.sqrt(2 / size) + allowance, f"t={t} lambda={lam}: {ratio}"


# --- errors ----------------------------------------------------------------------------------

def test_sampler_errors_list_valid_names():
    sde = sde_lib.VPSDE()
    score = gaussian_score(sde)
    x0_pred = oracles.gaussian_posterior_mean(sde, M, S)
    discrete = GaussianProcess.from_schedule("blog", 100)
    with pytest.raises(ValueError, match="needs a reverse-time SDE with finite drift and "
                                         r"diffusion on \[t_min, 1\] \(Capabilities.reverse_sde"
                                         r".*\); the GaussianProcess samples with: "
                                         "baseline, ddim, ddpm, dpm_solver_1, .*, euler_ancestral, heun_edm, improved"):
        make_sampler(discrete, oracles.gaussian_posterior_mean(discrete, M, S), "em",
                     num_steps=10)
    with pytest.raises(ValueError, match="needs a continuous-time process with Gaussian marginals "
                                         r"\(an SDE, or the flow-matching path\); the "
                                         "GaussianProcess samples with: baseline, ddim, ddpm, "
                                         "dpm_solver_1, .*, euler_ancestral, heun_edm, improved"):
        make_sampler(discrete, oracles.gaussian_posterior_mean(discrete, M, S), "ode_euler",
                     num_steps=10)
    with pytest.raises(ValueError, match="unknown sampler 'euler'; valid names: baseline, ddim"):
        make_sampler(sde, x0_pred, "euler", num_steps=10)
    with pytest.raises(ValueError, match="em, reverse_diffusion"):
        sde_samplers.make_sde_sampler(sde, score, num_steps=10, predictor="langevin")
    with pytest.raises(ValueError, match="noise_scale must be >= 0"):
        sde_samplers.make_sde_sampler(sde, score, num_steps=10, noise_scale=-0.5)
    with pytest.raises(ValueError, match="num_steps >= 1"):
        sde_samplers.make_sde_sampler(sde, score, num_steps=0)
    with pytest.raises(ValueError, match="corrector_steps >= 0"):
        sde_samplers.make_sde_sampler(sde, score, num_steps=10, corrector_steps=-1)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        make_sampler(sde, x0_pred, "ode_euler", num_steps=0)
    with pytest.raises(TypeError, match="valid options: eta, spacing"):
        make_sampler(sde, x0_pred, "em", num_steps=10, lam=0.5)
    with pytest.raises(ValueError, match="euler, heun, ddim"):
        sde_samplers.make_ode_sampler(sde, score, num_steps=10, method="rk4")
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        time_grid(sde, 0)
    with pytest.raises(ValueError, match="not defined in continuous time; valid: karras, logsnr, "
                                         "quadratic, uniform"):
        time_grid(sde, 4, "leading")
    with pytest.raises(ValueError, match="eps, x0, score"):
        sde_lib.as_score_fn(sde, score, "v")
    with pytest.raises(ValueError, match="blog, subvp, ve, vp"):
        sde_lib.get_sde("cosine")
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        sde_lib.get_sde("vp", sigma_max=50.0)
    grid = time_grid(sde, 4)
    times = np.linspace(1.0, sde.t_min, 5)
    np.testing.assert_allclose(grid, np.stack([times[:-1], times[1:]], axis=1), rtol=1e-6)
