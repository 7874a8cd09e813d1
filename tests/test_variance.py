"""Optimal reverse variances (docs/optimal_variance.md) against closed forms, quadrature and Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm import likelihood, oracles, variance
from udm.processes import GaussianProcess
from udm.sampling import discrete_time_grid as time_grid, make_sampler

T = 1000
S = 0.5                                                   # Gaussian data N(0, S^2 I)
MIX_MEANS, MIX_STDS, MIX_WEIGHTS = [[-1.5], [0.4], [2.0]], [0.3, 0.2, 0.5], [0.3, 0.3, 0.4]


# One process and one eps function per data set, shared by the tests so that the jitted
# estimators compile once per shape. The mixture's params (scale, shift) bias it on purpose:
# eps_theta = scale * eps* + shift; (1, 0) is exact.
P = GaussianProcess.from_schedule("blog", T)
GAUSSIAN_EPS = variance.eps_fn_from_x0_predictor(P, oracles.gaussian_posterior_mean(P, 0.0, S))
_MIXTURE_EPS = variance.eps_fn_from_x0_predictor(P, oracles.gaussian_mixture_posterior_mean(
    P, jnp.array(MIX_MEANS), jnp.array(MIX_STDS), jnp.array(MIX_WEIGHTS)))
EXACT = jnp.array([1.0, 0.0])


def MIXTURE_EPS(params, xt, t):
    return params[0] * _MIXTURE_EPS(None, xt, t) + params[1]


def _mixture_data(n, key):
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.choice(k_comp, 3, (n,), p=jnp.array(MIX_WEIGHTS))
    noise = jax.random.normal(k_noise, (n, 1))
    return jnp.array(MIX_MEANS)[comp] + jnp.array(MIX_STDS)[comp][:, None] * noise


def _mixture_quadrature(a, b):
    """Gamma_t = E||eps*||^2 and E Var[x_0|x_t] of the 1-D mixture by quadrature (float64)."""
    mu, sd, w = (np.asarray(v, np.float64).ravel() for v in (MIX_MEANS, MIX_STDS, MIX_WEIGHTS))
    x = np.linspace(-12.0, 12.0, 48001)[:, None]
    var = a ** 2 * sd ** 2 + b ** 2                                        # [K]
    comp = w * np.exp(-0.5 * (x - a * mu) ** 2 / var) / np.sqrt(2 * np.pi * var)
    px = comp.sum(axis=1)
    resp = comp / px[:, None]
    post_mean = mu + a * sd ** 2 / var * (x - a * mu)
    post_var = sd ** 2 * b ** 2 / var
    mean = np.sum(resp * post_mean, axis=1)
    cond_var = np.sum(resp * (post_var + post_mean ** 2), axis=1) - mean ** 2
    eps = (x[:, 0] - a * mean) / b
    dx = x[1, 0] - x[0, 0]
    return np.sum(px * eps ** 2) * dx, np.sum(px * cond_var) * dx


def test_analytic_variance_of_gaussian_data_is_the_exact_posterior_variance():
    # docs/optimal_variance.md §4: with eps = eps*, (V3) returns Var[x_0|x_t] = S^2 bb^2 / (ab^2 S^2 + bb^2).
    p = P
    ab, bb = np.asarray(p.alpha_bar, np.float64), np.asarray(p.beta_bar, np.float64)
    t = np.arange(1, T + 1)
    v = ab[t] ** 2 * S ** 2 + bb[t] ** 2
    exact = S ** 2 * bb[t] ** 2 / v
    # 1) Closed form: E||eps*||^2 / d = bb^2 / v. The float32 relative error grows like
    #    (bb / ab)^2 * 1e-7 / S^2 (the cancellation in 1 - Gamma), about 1% at t = T.
    got = np.asarray(variance.analytic_sigma_bar_sq(p, bb[t] ** 2 / v, t), np.float64)
    np.testing.assert_allclose(got[:300], exact[:300], rtol=1e-4)
    np.testing.assert_allclose(got, exact, rtol=3e-2)
    # 2) Monte Carlo at t = 300 with d = 2e5 values (200 x 1000): 0.21369 exactly (documented),
    #    SD 0.0042, so +-0.013.
    assert abs(exact[299] - 0.21369) < 1e-5
    data = S * jax.random.normal(jax.random.PRNGKey(0), (512, 1000))
    gamma = variance.estimate_gamma(p, GAUSSIAN_EPS, None, data, jnp.array([300]),
                                    key=jax.random.PRNGKey(1), num_samples=200, batch_size=50)
    assert gamma.shape == (1,) and gamma.dtype == jnp.float32
    assert abs(float(variance.analytic_sigma_bar_sq(p, gamma, [300])[0]) - 0.21369) < 0.013


@pytest.mark.parametrize("num_steps,spacing", [(T, "uniform"), (10, "uniform"),
                                               (37, "quadratic")])
def test_corrected_variance_is_the_exact_reverse_variance(num_steps, spacing):
    # For x_0 ~ N(0, S^2), the DDIM-family kernel marginalised over p(x_0|x_t) has
    # Var[x_s|x_t] = v_s - Cov(x_s, x_t)^2 / v_t, Cov = k v_t + gamma ab_t S^2 (k: the x_t
    # coefficient); (V1) with sigma_bar_t^2 = Var[x_0|x_t] must equal it, for any eta and grid.
    # At eta = 1 it is the forward chain's 1 - ... : v_s - (ab_t/ab_s)^2 v_s^2 / v_t; at S = 1,
    # the documented beta_t^2 = 1 - (ab_t/ab_s)^2.
    grid = time_grid(T, num_steps, spacing)
    t, s = grid[:, 0], grid[:, 1]
    with jax.enable_x64(True):
        for std in (S, 1.0):
            p = GaussianProcess.from_schedule("blog", T, dtype=jnp.float64)
            ab, bb = np.asarray(p.alpha_bar), np.asarray(p.beta_bar)
            v = ab ** 2 * std ** 2 + bb ** 2
            sigma_bar = jnp.asarray(np.sqrt(std ** 2 * bb ** 2 / v))
            for eta in (0.0, 0.5, 1.0):
                got = np.asarray(variance.reverse_variance("analytic", p, grid, eta=eta,
                                                           sigma_bar=sigma_bar))
                sigma_sq, gamma = (np.asarray(x) for x in
                                   variance.step_coefficients(p, grid, eta))
                k = np.sqrt(bb[s] ** 2 - sigma_sq) / bb[t]
                cov = k * v[t] + gamma * ab[t] * std ** 2
                np.testing.assert_allclose(got, v[s] - cov ** 2 / v[t], rtol=1e-9, atol=1e-14)
                if eta == 1.0:
                    ratio = ab[t] / ab[s]
                    np.testing.assert_allclose(got, v[s] - ratio ** 2 * v[s] ** 2 / v[t],
                                               rtol=1e-9, atol=1e-14)
                    if std == 1.0:
                        np.testing.assert_allclose(got, 1 - ratio ** 2, rtol=1e-9, atol=1e-15)
                # The sampler hook adds sigma_bar noise to x0_hat, which enters x_s with the
                # coefficient gamma: read it off the correct step (same key, x0_hat 1 vs 0).
                x_t = jnp.ones((1, 1))
                for i in range(0, num_steps, max(num_steps // 7, 1)):
                    tilde = eta * p.ddpm_sigma_tilde(t[i], s[i])
                    step = lambda x0_hat: p.correct(t[i], s[i], x_t, x0_hat, sigma_tilde=tilde,
                                                    key=jax.random.PRNGKey(i))
                    slope = float((step(jnp.ones((1, 1))) - step(jnp.zeros((1, 1))))[0, 0])
                    np.testing.assert_allclose(slope, gamma[i], rtol=1e-9, atol=1e-12)


def test_mixture_gamma_matches_quadrature_and_traces_once():
    p = P
    ab, bb = np.asarray(p.alpha_bar, np.float64), np.asarray(p.beta_bar, np.float64)
    timesteps = np.array([10, 100, 300, 600, 900])
    quad = np.array([_mixture_quadrature(ab[t], bb[t]) for t in timesteps])   # [n, 2]
    # (V3) on non-Gaussian data: E Var[x_0|x_t] = (bb^2/ab^2)(1 - Gamma_t) exactly.
    np.testing.assert_allclose(variance.analytic_sigma_bar_sq(p, quad[:, 0], timesteps),
                               quad[:, 1], rtol=1e-4)
    calls = []

    def counting_eps_fn(params, xt, t):
        calls.append(1)                       # runs only while tracing
        return MIXTURE_EPS(params, xt, t)

    # A pool 4x num_samples: at small t Gamma_t is set by the spread of x_0 around its
    # component mean, so a small pool would be a biased stand-in for the mixture.
    data = _mixture_data(65536, jax.random.PRNGKey(0))
    gamma, stderr = variance.estimate_gamma(p, counting_eps_fn, EXACT, data, timesteps,
                                            key=jax.random.PRNGKey(1), num_samples=16384,
                                            batch_size=4096, return_stderr=True)
    assert len(calls) == 1, "eps_fn must be traced once for all timesteps and batches"
    # The pool's own Gamma differs from the mixture's by about SE / 2: 4 SE, widened by sqrt(2).
    z = np.abs(np.asarray(gamma) - quad[:, 0]) / np.asarray(stderr)
    assert np.all(z < 4 * np.sqrt(2)), (gamma, quad[:, 0], stderr)
    assert np.all(np.asarray(stderr) < 0.015)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_sharded_monte_carlo_equals_unsharded(impl):
    # Each batch split over the 8 fake devices (tests/conftest.py): the same draws and
    # the same estimates up to float32 summation order (measured: <= 1.2e-7 relative).
    from udm.parallel import data_mesh
    mesh = data_mesh()
    assert mesh.devices.size == 8
    p, timesteps = P, np.array([10, 300, 900])
    data = _mixture_data(4096, jax.random.PRNGKey(0))
    kw = dict(key=jax.random.key(4, impl=impl), num_samples=1024, batch_size=256,
              return_stderr=True)
    for estimate in (variance.estimate_gamma, variance.estimate_eps_mse):
        plain = estimate(p, MIXTURE_EPS, EXACT, data, timesteps, **kw)
        sharded = estimate(p, MIXTURE_EPS, EXACT, data, timesteps, mesh=mesh, **kw)
        for a, b in zip(plain, sharded):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5)
    # The program really splits the batch: the per-batch sums are cross-device reductions.
    lowered = variance.moments._monte_carlo_jit.lower(
        p, MIXTURE_EPS, EXACT, jnp.asarray(data), jnp.asarray(timesteps), kw["key"],
        statistic="gamma", diagonal=False, num_samples=1024, batch_size=256, mesh=mesh)
    assert "all-reduce" in lowered.compile().as_text()
    table = variance.estimate_sigma_bar("analytic", p, MIXTURE_EPS, EXACT, data, timesteps,
                                        key=kw["key"], num_samples=1024, batch_size=256,
                                        mesh=mesh)
    assert np.all(np.isfinite(np.asarray(table)[timesteps]))
    with pytest.raises(ValueError, match="batch_size=12 must be divisible by the number of "
                                         "devices \\(8\\)"):
        variance.estimate_gamma(p, MIXTURE_EPS, EXACT, data, timesteps, key=kw["key"],
                                num_samples=24, batch_size=12, mesh=mesh)


def test_ml_isotropic_equals_analytic_with_the_exact_mean():
    # With eps_theta = eps*, E||eps - eps*||^2 = 1 - E||eps*||^2, so (V5) == (V3) in expectation;
    # a constant bias b moves them apart symmetrically: Gamma + b^2, mse + b^2 (docs/optimal_variance.md §4).
    p = P
    timesteps = np.array([10, 100, 300, 600, 900])      # the shapes of the test above
    data = _mixture_data(65536, jax.random.PRNGKey(0))
    bias = 0.2
    biased = jnp.array([1.0, bias])
    n = 16384
    kw = dict(num_samples=n, batch_size=4096, return_stderr=True)
    gamma, gamma_se = variance.estimate_gamma(p, MIXTURE_EPS, EXACT, data, timesteps,
                                              key=jax.random.PRNGKey(1), **kw)
    mse, mse_se = variance.estimate_eps_mse(p, MIXTURE_EPS, EXACT, data, timesteps,
                                            key=jax.random.PRNGKey(2), **kw)
    analytic = np.asarray(variance.analytic_sigma_bar_sq(p, gamma, timesteps))
    ml = np.asarray(variance.ml_sigma_bar_sq(p, mse, timesteps))
    scale = np.asarray((p.beta_bar[timesteps] / p.alpha_bar[timesteps]) ** 2)
    combined_se = scale * np.hypot(gamma_se, mse_se)
    assert np.all(np.abs(analytic - ml) < 4 * combined_se), (analytic, ml, combined_se)
    assert np.all((analytic > 8 * combined_se)[:3])         # a non-trivial comparison
    # Same keys: the bias shifts are b^2 up to 2 b mean(eps*) (resp. mean(eps - eps*)), whose
    # standard error is at most 2 b / sqrt(n).
    gamma_b, _ = variance.estimate_gamma(p, MIXTURE_EPS, biased, data, timesteps,
                                         key=jax.random.PRNGKey(1), **kw)
    mse_b, _ = variance.estimate_eps_mse(p, MIXTURE_EPS, biased, data, timesteps,
                                         key=jax.random.PRNGKey(2), **kw)
    tolerance = 4 * 2 * bias / np.sqrt(n)
    np.testing.assert_allclose(gamma_b - gamma, bias ** 2, atol=tolerance)
    np.testing.assert_allclose(mse_b - mse, bias ** 2, atol=tolerance)


def test_estimates_stay_within_the_bounds_for_biased_predictors():
    # docs/optimal_variance.md §2.3/§2.5: 0 <= sigma_bar_t^2 <= min(bb^2/ab^2, ((b - a)/2)^2), data in [-1, 1]:
    # max_var = 1. Each predictor below pushes the raw estimate past one of the bounds.
    p = P
    timesteps = np.array([10, 100, 300, 600, 900])
    data = jnp.clip(_mixture_data(65536, jax.random.PRNGKey(0)) / 2.5, -1.0, 1.0)
    predictors = {"x1.5": jnp.array([1.5, 0.0]), "x0.3": jnp.array([0.3, 0.0]),
                  "+1.5": jnp.array([1.0, 1.5])}
    scale = np.asarray((p.beta_bar[timesteps] / p.alpha_bar[timesteps]) ** 2, np.float64)
    upper = np.minimum(scale, 1.0)
    hit = {"lower": False, "noise_to_signal": False, "max_var": False}
    for name, params in predictors.items():
        kw = dict(key=jax.random.PRNGKey(3), num_samples=16384, batch_size=4096)
        gamma = np.asarray(variance.estimate_gamma(p, MIXTURE_EPS, params, data, timesteps,
                                                   **kw))
        mse = np.asarray(variance.estimate_eps_mse(p, MIXTURE_EPS, params, data, timesteps,
                                                   **kw))
        for raw, clipped in [
                (scale * (1 - gamma), variance.analytic_sigma_bar_sq(p, gamma, timesteps,
                                                                     max_var=1.0)),
                (scale * mse, variance.ml_sigma_bar_sq(p, mse, timesteps, max_var=1.0))]:
            clipped = np.asarray(clipped, np.float64)
            assert np.all(clipped >= 0) and np.all(clipped <= upper * (1 + 1e-6)), name
            np.testing.assert_allclose(clipped, np.clip(raw, 0, upper), rtol=1e-5)
            hit["lower"] |= bool(np.any(raw < 0))
            hit["noise_to_signal"] |= bool(np.any((raw > scale) & (scale < 1)))
            hit["max_var"] |= bool(np.any((raw > 1) & (scale > 1)))
        # The reverse variance then obeys Analytic-DPM's bounds (Bao et al. Thm 2):
        # sigma_s^2 <= var <= sigma_s^2 + gamma^2 min(bb_t^2/ab_t^2, max_var).
        sigma_bar = variance.analytic_sigma_bar(p, gamma, timesteps, max_var=1.0)
        grid = time_grid(T, 10, "quadratic")
        grid = grid[np.isin(grid[:, 0], timesteps)]
        for eta in (0.0, 1.0):
            var = np.asarray(variance.reverse_variance("analytic", p, grid, eta=eta,
                                                       sigma_bar=sigma_bar))
            sigma_sq, g = (np.asarray(x) for x in variance.step_coefficients(p, grid, eta))
            t = grid[:, 0]
            top = sigma_sq + g ** 2 * np.minimum(np.asarray(p.beta_bar[t] / p.alpha_bar[t]) ** 2,
                                                 1.0)
            assert np.all(var >= sigma_sq * (1 - 1e-6)) and np.all(var <= top * (1 + 1e-5))
    assert all(hit.values()), hit


def test_sampling_clips_and_their_sigma_bar_table():
    # The released code's clips (docs/optimal_variance.md §2.5): the step into x_{tau_1} is capped at
    # (2 (2/255) sqrt(pi/2))^2 and the final step is the mean only.
    p = P
    grid = time_grid(T, 10)
    sigma_bar = variance.sigma_bar_table(p, jnp.full((10,), 0.3), grid[:, 0])
    cap = (2 * 2 / 255 * np.sqrt(np.pi / 2)) ** 2
    for eta in (0.0, 1.0):
        var = np.asarray(variance.reverse_variance("analytic", p, grid, eta=eta,
                                                   sigma_bar=sigma_bar))
        clipped = np.asarray(variance.sampling_clip(var, grid, clip_pixel=2))
        assert clipped[-1] == 0 and cap < var[-2]
        np.testing.assert_allclose(clipped[-2], cap, rtol=1e-6)
        np.testing.assert_array_equal(clipped[:-2], var[:-2])
        table = jnp.minimum(sigma_bar, variance.std_cap(p, grid, eta=eta, clip_pixel=2))
        realised = np.asarray(variance.corrected_reverse_var(p, grid, table, eta=eta))
        sigma_sq, _ = variance.step_coefficients(p, grid, eta)
        # Exact where the clipped value is reachable (>= sigma_s^2): all of eta = 0.
        np.testing.assert_allclose(realised, np.maximum(clipped, np.asarray(sigma_sq)),
                                   rtol=1e-5, atol=1e-9)
    assert np.isnan(sigma_bar[150]) and sigma_bar[0] == 0     # unestimated times fail loudly


def _bound_fn(num_steps):
    """Jitted VLB of a grid's chain with the exact Gaussian x0_hat, per example (nats)."""
    @jax.jit
    def bound(alpha_bar, beta_bar, reverse_var, x0, key):
        chain = GaussianProcess(alpha_bar, beta_bar)
        x0_fn = lambda x, i: oracles.gaussian_posterior_mean(chain, 0.0, S)(None, x, i)
        return likelihood.variational_bound(alpha_bar, beta_bar, x0_fn, x0, key=key,
                                            decoder="gaussian", reverse_var=reverse_var).total
    return bound


@pytest.mark.parametrize("num_steps,spacing", [(T, "uniform"), (10, "uniform"),
                                               (10, "quadratic")])
def test_vlb_with_the_analytic_variance_is_no_worse_than_fixed_small(num_steps, spacing):
    p = P
    grid = time_grid(T, num_steps, spacing)
    alpha_bar, beta_bar, times = variance.chain_from_grid(p, grid)
    assert times[0] == 0 and np.all(np.diff(np.asarray(times)) > 0)
    x0 = S * jax.random.normal(jax.random.PRNGKey(0), (4096, 8))
    sigma_bar = variance.estimate_sigma_bar(
        "analytic", p, GAUSSIAN_EPS, None, x0, grid[:, 0], key=jax.random.PRNGKey(1),
        num_samples=1024, batch_size=1024, max_var=float(jnp.var(x0)))
    rv = {name: variance.chain_reverse_var(variance.reverse_variance(
        name, p, grid, eta=1.0, sigma_bar=sigma_bar)) for name in ("fixed_small", "analytic")}
    # The chain's reverse_var[i] is the step tau_i -> tau_{i-1}: against likelihood's own
    # posterior variance var_q and c_0 (test_likelihood) with the closed-form Var[x_0|x_i].
    ab, bb = np.asarray(alpha_bar, np.float64), np.asarray(beta_bar, np.float64)
    a = ab[1:] / ab[:-1]
    v = bb[1:] ** 2 - a ** 2 * bb[:-1] ** 2
    var_q, c_0 = bb[:-1] ** 2 * v / bb[1:] ** 2, ab[:-1] * v / bb[1:] ** 2
    post = S ** 2 * bb[1:] ** 2 / (ab[1:] ** 2 * S ** 2 + bb[1:] ** 2)
    # float32: the schedule's 1 - (ab_t/ab_s)^2 cancels to ~1e-3 relative at t = 1.
    np.testing.assert_allclose(rv["fixed_small"][2:], var_q[1:], rtol=5e-3)
    np.testing.assert_allclose(rv["analytic"][1:], var_q + c_0 ** 2 * post, rtol=0.05)
    bound = _bound_fn(num_steps)
    key = jax.random.PRNGKey(2)                              # paired: the same x_i draws
    totals = {name: np.asarray(bound(alpha_bar, beta_bar, r, x0, key), np.float64)
              for name, r in rv.items()}
    if num_steps == 10:                                     # fixed_small == likelihood's default
        default = jax.jit(lambda x: likelihood.variational_bound(
            alpha_bar, beta_bar, lambda y, i: oracles.gaussian_posterior_mean(
                GaussianProcess(alpha_bar, beta_bar), 0.0, S)(
                    None, y, i), x, key=key, decoder="gaussian").total)(x0)
        np.testing.assert_allclose(totals["fixed_small"], default, rtol=1e-5, atol=1e-4)
    assert all(np.all(np.isfinite(x)) for x in totals.values())
    gain = totals["fixed_small"] - totals["analytic"]
    se = gain.std() / np.sqrt(gain.size)
    assert gain.mean() > -4 * se, (gain.mean(), se)
    if num_steps == 10:
        assert gain.mean() > 10 * se, (gain.mean(), se)   # the gain is large at few steps


@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddpm", 1.0)])
def test_sampling_with_the_analytic_sigma_bar_reproduces_the_data_variance(name, eta):
    # docs/optimal_variance.md §4 sampling sanity at K = 10 with the exact mean: the plain sampler's variance is
    # off, the analytic one (sigma_bar from Monte Carlo Gamma_t) recovers S^2.
    p = P
    grid = time_grid(T, 10)
    data = S * jax.random.normal(jax.random.PRNGKey(0), (4096, 8))
    sigma_bar = variance.estimate_sigma_bar(
        "analytic", p, GAUSSIAN_EPS, None, data, grid[:, 0], key=jax.random.PRNGKey(1),
        num_samples=1024, batch_size=1024, max_var=float(jnp.var(data)))
    pred = oracles.gaussian_posterior_mean(p, 0.0, S)
    a_T, b_T = float(p.alpha_bar[-1]), float(p.beta_bar[-1])
    x_T = np.sqrt(a_T ** 2 * S ** 2 + b_T ** 2) * jax.random.normal(jax.random.PRNGKey(2),
                                                                    (8192, 8))
    errors = {}
    for label, table in [("plain", None), ("analytic", sigma_bar)]:
        out = make_sampler(p, pred, num_steps=10, name=name, eta=eta, sigma_bar=table)(
            None, x_T, key=jax.random.PRNGKey(3)).x0
        errors[label] = abs(float(jnp.var(out)) / S ** 2 - 1)
    n = x_T.size
    assert errors["analytic"] < 5 * np.sqrt(2 / n) + 0.01, errors   # MC + Gamma estimation
    assert errors["plain"] > 3 * errors["analytic"], errors


def _two_scale_sigma_bar_sq(process):
    """An increasing sigma_bar_t^2 profile that is not a single Gaussian's: for N(0, s^2) data the
    bound of the optimal variance is the same for EVERY trajectory (a mutual information), so
    only a non-Gaussian profile tells trajectories apart."""
    ab, bb = (np.asarray(v, np.float64) for v in (process.alpha_bar, process.beta_bar))
    r = bb ** 2 / ab ** 2
    return 0.5 * (0.1 ** 2 * r / (0.1 ** 2 + r) + r / (1.0 + r))


def test_gaussian_data_make_every_trajectory_equally_good():
    ab, bb = (np.asarray(v, np.float64) for v in (P.alpha_bar, P.beta_bar))
    cost, decoder = variance.trajectory_costs(P, S ** 2 * bb ** 2 / (ab ** 2 * S ** 2 + bb ** 2))
    totals = [decoder[tau[0]] + sum(cost[a, b] for a, b in zip(tau[:-1], tau[1:]))
              for tau in ([200, 400, 600, 800, 1000], [996, 997, 998, 999, 1000], [1, 2, 3, 4, 1000])]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)   # float32 schedule arrays
    cost, decoder = variance.trajectory_costs(P, _two_scale_sigma_bar_sq(P))
    other = [decoder[tau[0]] + sum(cost[a, b] for a, b in zip(tau[:-1], tau[1:]))
             for tau in ([200, 400, 600, 800, 1000], [1, 2, 3, 4, 1000])]
    assert abs(other[0] - other[1]) > 1e-2 * abs(other[0])      # ... unlike other data


@pytest.mark.parametrize("bin_width", [None, 2.0 / 16])
def test_optimal_trajectory_is_the_brute_force_minimum(bin_width):
    """The dynamic programme's K-step sequence minimises J over every sequence (T = 12 exhaustive)."""
    import itertools
    small = GaussianProcess.from_schedule("blog", 12)
    sb2 = _two_scale_sigma_bar_sq(small)
    cost, decoder = variance.trajectory_costs(small, sb2, bin_width=bin_width)

    def objective(tau):
        return decoder[tau[0]] + sum(cost[s, t] for s, t in zip(tau[:-1], tau[1:]))

    for k in (1, 2, 3, 5, 12):
        best = min(objective(c + (12,)) for c in itertools.combinations(range(1, 12), k - 1))
        tau = variance.optimal_trajectory(small, sb2, k, bin_width=bin_width)
        assert tau.shape == (k,) and tau[-1] == 12 and np.all(np.diff(tau) > 0)
        np.testing.assert_allclose(objective(tuple(tau)), best, rtol=1e-12)
        # ... and beats (or ties) the uniform sub-sequence, and time_grid accepts it.
        assert objective(tuple(tau)) <= objective(tuple(time_grid(12, k)[::-1, 0])) + 1e-12
        np.testing.assert_array_equal(time_grid(12, k, tau)[::-1, 0], tau)


def test_trajectory_cost_is_the_kl_of_the_optimal_step():
    """cost[s, t] = 1/2 log(var* / lambda^2) with var* the corrected DDPM variance (V1)."""
    ab, bb = (np.asarray(v, np.float64) for v in (P.alpha_bar, P.beta_bar))
    sb2 = S ** 2 * bb ** 2 / (ab ** 2 * S ** 2 + bb ** 2)
    cost, _ = variance.trajectory_costs(P, sb2)
    grid = time_grid(T, 10)
    var = np.asarray(variance.corrected_reverse_var(P, grid, jnp.asarray(np.sqrt(sb2), jnp.float32),
                                                    eta=1.0), np.float64)
    lam2, _ = variance.step_coefficients(P, grid, 1.0)
    t, s = grid[:-1, 0], grid[:-1, 1]                              # steps with s >= 1
    np.testing.assert_allclose(cost[s, t], 0.5 * np.log(var[:-1] / np.asarray(lam2)[:-1]),
                               rtol=2e-3)
    assert np.isinf(cost[0]).all() and np.isinf(cost[5, 5]) and np.isinf(cost[6, 5])
    with pytest.raises(ValueError, match="every t"):
        variance.trajectory_costs(P, np.full(T + 1, np.nan))


def test_a_spurious_zero_does_not_make_a_free_jump():
    """A Monte Carlo sigma_bar^2 clipped to 0 at one large t (Gamma_t > 1) would make the step
    into t cost nothing; the running maximum keeps the trajectory the same as without it."""
    sb2 = _two_scale_sigma_bar_sq(P)
    spoiled = sb2.copy()
    spoiled[975] = 0.0
    for k in (5, 10):
        np.testing.assert_array_equal(variance.optimal_trajectory(P, spoiled, k, bin_width=0.125),
                                      variance.optimal_trajectory(P, sb2, k, bin_width=0.125))
