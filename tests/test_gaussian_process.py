"""Closed forms and identities of the Gaussian ("hot") process (docs/processes.md B1, docs/ddpm_ddim.md)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm import schedules
from udm.processes import GaussianProcess


def _process64(name="blog", T=1000, prediction="eps"):
    return GaussianProcess.from_schedule(name, T, prediction=prediction, dtype=jnp.float64)


def test_blog_schedule_known_numbers():
    # docs/notation.md: alpha_bar_T = 0.00648; |log alpha_bar_t + 5 s^2| <= 0.039, largest at t = T.
    abar = schedules.get_alpha_bar("blog", 1000)
    assert abs(abar[-1] - 0.00648) < 5e-6
    s = np.arange(1001) / 1000
    gap = np.abs(np.log(abar) + 5 * s ** 2)
    assert gap.max() <= 0.039 and np.argmax(gap) == 1000


@pytest.mark.parametrize("name", ["blog", "linear", "cosine"])
def test_schedules_are_valid(name):
    abar = schedules.get_alpha_bar(name, 1000)
    assert abar[0] == 1.0 and np.all(np.diff(abar) < 0) and 0 < abar[-1] < 0.01


def test_linear_schedule_matches_ddpm_paper():
    abar = schedules.get_alpha_bar("linear", 1000)
    paper_beta = 1 - (abar[1:] / abar[:-1]) ** 2
    np.testing.assert_allclose(paper_beta[[0, -1]], [1e-4, 0.02], rtol=1e-10)


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="blog, cosine, linear"):
        GaussianProcess.from_schedule("sigmoid", 1000)
    with pytest.raises(ValueError, match="eps, v, x0"):
        GaussianProcess.from_schedule("blog", 1000, prediction="score")


def test_invert_forward_is_identity():
    p = GaussianProcess.from_schedule("blog", 1000)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x0 = jax.random.normal(k1, (4, 8, 8, 1))
    eps = jax.random.normal(k2, x0.shape)
    for t in [1, 10, 500, 1000]:
        np.testing.assert_allclose(p.invert(t, x0, p.forward(t, x0, eps)), eps, atol=2e-4)


def test_iterated_one_step_noising_matches_marginal():
    # (D2) by simulation: iterate x_t = alpha_t x_{t-1} + beta_t eps_t from a fixed x_0.
    abar = schedules.get_alpha_bar("blog", 100)
    alphas = abar[1:] / abar[:-1]
    n, x0 = 200_000, 0.7
    rng = np.random.default_rng(0)
    x = np.full(n, x0)
    for t in range(1, 61):
        x = alphas[t - 1] * x + np.sqrt(1 - alphas[t - 1] ** 2) * rng.standard_normal(n)
    se = np.sqrt(1.0 / n)
    assert abs(x.mean() - abar[60] * x0) < 5 * se
    assert abs(x.var() - (1 - abar[60] ** 2)) < 5 * np.sqrt(2.0 / n)


def test_ddpm_posterior_coefficients_D3_equal_D6():
    # docs/ddpm_ddim.md §5: with the DDPM sigma the DDIM coefficients equal those of (D3).
    with jax.enable_x64(True):
        p = _process64()
        for t in [2, 10, 999, 1000]:
            a, b = float(p.alpha_bar[t]), float(p.beta_bar[t])
            a1, b1 = float(p.alpha_bar[t - 1]), float(p.beta_bar[t - 1])
            alpha_t = a / a1
            beta_t_sq = 1 - alpha_t ** 2
            sigma = b1 * float(p.ddpm_sigma_tilde(t, t - 1))
            np.testing.assert_allclose(sigma ** 2, b1 ** 2 * beta_t_sq / b ** 2, rtol=1e-12)
            kappa = np.sqrt(b1 ** 2 - sigma ** 2) / b
            np.testing.assert_allclose(kappa, alpha_t * b1 ** 2 / b ** 2, rtol=1e-10)
            lam = a1 - a * kappa
            np.testing.assert_allclose(lam, a1 * beta_t_sq / b ** 2, rtol=1e-9)
        # (D3) variance is 0 at t = 1 (beta_bar_0 = 0).
        assert float(p.beta_bar[0]) * float(p.ddpm_sigma_tilde(1, 0)) == 0.0


def test_udm_correct_equals_ddpm_update():
    # docs/processes.md (B1) test: sigma_bar = 0 and the DDPM sigma give x_{t-1} = (x_t - beta_t^2/beta_bar_t eps)/alpha_t + sigma_t eps.
    with jax.enable_x64(True):
        p = _process64()
        key = jax.random.PRNGKey(1)
        kx, ke, kn = jax.random.split(key, 3)
        xt = jax.random.normal(kx, (16,), jnp.float64)
        eps_theta = jax.random.normal(ke, (16,), jnp.float64)
        for t in [2, 37, 500, 1000]:
            a, b = p.alpha_bar[t], p.beta_bar[t]
            b1 = p.beta_bar[t - 1]
            alpha_t = a / p.alpha_bar[t - 1]
            beta_t_sq = 1 - alpha_t ** 2
            x0_hat = (xt - b * eps_theta) / a                      # (D4)
            udm = p.correct(t, t - 1, xt, x0_hat, sigma_tilde=p.ddpm_sigma_tilde(t, t - 1), key=kn)
            noise = jax.random.normal(kn, xt.shape, jnp.float64)
            sigma_t = b1 * jnp.sqrt(beta_t_sq) / b
            ddpm = (xt - beta_t_sq / b * eps_theta) / alpha_t + sigma_t * noise
            np.testing.assert_allclose(udm, ddpm, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_udm_correct_equals_ddim_subsequence_update(eta):
    # docs/ddpm_ddim.md (D6) on a sub-sequence t -> s with every coefficient recomputed from alpha_bar.
    with jax.enable_x64(True):
        p = _process64()
        kx, ke, kn = jax.random.split(jax.random.PRNGKey(2), 3)
        xt = jax.random.normal(kx, (16,), jnp.float64)
        eps_theta = jax.random.normal(ke, (16,), jnp.float64)
        for t, s in [(1000, 900), (300, 100), (100, 0), (7, 3)]:
            a_t, b_t, a_s, b_s = p.alpha_bar[t], p.beta_bar[t], p.alpha_bar[s], p.beta_bar[s]
            sigma = eta * (b_s / b_t) * jnp.sqrt(1 - a_t ** 2 / a_s ** 2)
            noise = jax.random.normal(kn, xt.shape, jnp.float64)
            ddim = (a_s / a_t) * (xt - (b_t - (a_t / a_s) * jnp.sqrt(b_s ** 2 - sigma ** 2)) * eps_theta) \
                + sigma * noise
            x0_hat = (xt - b_t * eps_theta) / a_t
            udm = p.correct(t, s, xt, x0_hat, sigma_tilde=eta * p.ddpm_sigma_tilde(t, s), key=kn)
            np.testing.assert_allclose(udm, ddim, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma_tilde", [0.0, 0.5, 1.0])
def test_marginal_consistency_A6(sigma_tilde):
    # x_t ~ p(x_t|x_0), then x_s ~ correct(t, s, x_t, x_0): the law must be p(x_s|x_0).
    p = GaussianProcess.from_schedule("blog", 1000)
    n, x0 = 400_000, 0.8
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    for t, s in [(500, 499), (800, 300)]:
        xt = p.forward(t, x0, jax.random.normal(k1, (n,)))
        xs = p.correct(t, s, xt, jnp.full((n,), x0), sigma_tilde=sigma_tilde, key=k2)
        var_s = float(p.beta_bar[s]) ** 2
        # Monte Carlo tolerances: 5 standard errors of the mean and of the variance.
        assert abs(float(xs.mean()) - float(p.alpha_bar[s]) * x0) < 5 * np.sqrt(var_s / n)
        assert abs(float(xs.var()) - var_s) < 5 * var_s * np.sqrt(2.0 / n)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_output_conversion_inverts_target(prediction):
    p = GaussianProcess.from_schedule("cosine", 1000, prediction=prediction)
    k1, k2 = jax.random.split(jax.random.PRNGKey(4))
    x0 = jax.random.normal(k1, (32,))
    eps = jax.random.normal(k2, (32,))
    for t in [1, 250, 999]:
        xt = p.forward(t, x0, eps)
        np.testing.assert_allclose(p.x0_from_output(t, xt, p.target(t, x0, eps)), x0,
                                   atol=2e-3 if t > 900 else 2e-5)


def test_min_snr_weight_is_target_independent():
    # Weighted target-space error == min(snr, 5) * ||x_0 error||^2 for every parameterisation.
    with jax.enable_x64(True):
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
        x0 = jax.random.normal(k1, (8,), jnp.float64)
        eps = jax.random.normal(k2, (8,), jnp.float64)
        x0_hat = x0 + 0.1 * jax.random.normal(k3, (8,), jnp.float64)
        for t in [10, 300, 900]:
            losses = []
            for prediction in ["eps", "x0", "v"]:
                p = _process64("cosine", prediction=prediction)
                xt = p.forward(t, x0, eps)
                eps_hat = p.invert(t, x0_hat, xt)
                out = p.target(t, x0_hat, eps_hat)   # the output that implies x0_hat
                err = jnp.sum((out - p.target(t, x0, eps)) ** 2)
                losses.append(float(p.loss_weight(t, "min_snr_5") * err))
            expected = min(float(p.snr(t)), 5.0) * float(jnp.sum((x0_hat - x0) ** 2))
            np.testing.assert_allclose(losses, [expected] * 3, rtol=1e-8)
