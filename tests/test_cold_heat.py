"""Cold diffusion (docs/processes.md B2) and heat dissipation (C1) as LinearDegradationProcess."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm.data.datasets import load_dataset
from udm.losses import make_loss_fn
from udm.processes.cold import (DEFAULT_PRIOR_JITTER, LinearDegradationProcess, blur_operator,
                                cold_blur, gaussian_kernel)
from udm.processes.heat import dct_matrix, heat_dissipation, heat_operator
from udm.sampling import make_sampler

SAMPLER_NAMES = ("baseline", "improved")  # B2.1 (sigma_tilde = 1) and B2.2 (sigma_tilde = 0)


@functools.lru_cache(maxsize=None)
def _digits() -> np.ndarray:
    return load_dataset("digits").train_images


def _images(key, n, shape=(8, 8, 1)):
    return jax.random.uniform(key, (n, *shape), jnp.float32, -1.0, 1.0)


def _oracle(params, xt, t):
    """Ignores x_t and returns the x0_hat it was given as params."""
    del xt, t
    return params


def _sample(process, predictor, params, x_T, name, num_steps=None):
    sample = make_sampler(process, predictor, num_steps=num_steps or process.num_timesteps,
                          name=name)
    return np.asarray(sample(params, x_T, key=jax.random.PRNGKey(7)).x0)


# --- the forward and its inverse --------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: cold_blur(sigma=0.1), lambda: heat_dissipation()],
                         ids=["cold", "heat"])
def test_invert_recovers_eps(make):
    process = make()
    x0 = _images(jax.random.PRNGKey(0), 4)
    eps = process.sample_eps(jax.random.PRNGKey(1), x0.shape)
    for t in (1, 7, process.num_timesteps):
        np.testing.assert_allclose(process.invert(t, x0, process.forward(t, x0, eps)), eps,
                                   atol=2e-5 / float(process.sigma))
    # per-example times through vmap, as the loss does
    t = jnp.array([0, 3, 11, 20])
    xt = jax.vmap(process.forward)(t, x0, eps)
    np.testing.assert_allclose(jax.vmap(process.invert)(t, x0, xt), eps, atol=1e-3)


@pytest.mark.parametrize("padding", ["circular", "reflect"])
def test_blur_operator_matches_a_direct_convolution(padding):
    kernel = gaussian_kernel(3, 1.0)
    image = np.random.default_rng(0).normal(size=(5, 6))
    mode = {"circular": "wrap", "reflect": "reflect"}[padding]
    padded = np.pad(image, 1, mode=mode)
    direct = sum(kernel[a, b] * padded[a:a + 5, b:b + 6] for a in range(3) for b in range(3))
    op = blur_operator((5, 6), kernel, padding)
    np.testing.assert_allclose((op @ image.reshape(-1)).reshape(5, 6), direct, atol=1e-12)


def test_cold_blur_default_collapses_to_the_mean_image():
    """Defaults (T = 20, 5x5, std 2, circular): F_T(x_0) is the constant per-channel mean."""
    process = cold_blur()
    x0 = _digits()
    collapsed = np.asarray(process.degrade(process.num_timesteps, x0))
    mean = x0.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(collapsed, np.broadcast_to(mean, collapsed.shape), atol=1e-4)
    np.testing.assert_allclose(process.ops[0], np.eye(64), atol=0)


def test_heat_default_collapses_to_the_mean_image():
    process = heat_dissipation()
    x0 = _digits()
    collapsed = np.asarray(process.degrade(process.num_timesteps, x0))
    mean = x0.mean(axis=(1, 2), keepdims=True)
    # slowest mode decays by exp(-pi^2 / 64 * 50) ~ 5e-4; pixel values are in [-1, 1]
    np.testing.assert_allclose(collapsed, np.broadcast_to(mean, collapsed.shape), atol=1e-3)


# --- B2 test 1: an exact G returns x_0 with both samplers --------------------------------------

@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("make", [lambda: cold_blur(), lambda: heat_dissipation(sigma=0.0)],
                         ids=["cold", "heat"])
def test_exact_oracle_returns_x0(make, name):
    process = make()
    x0 = _images(jax.random.PRNGKey(0), 3)
    x_T = process.degrade(process.num_timesteps, x0)
    np.testing.assert_allclose(_sample(process, _oracle, x0, x_T, name), x0, atol=1e-5)


def test_improved_sampler_telescopes():
    """x_T + sum_t [F_{t-1}(x_0) - F_t(x_0)] = F_0(x_0) = x_0, and each step of (B2.2) is one term."""
    process = cold_blur()
    x0 = _images(jax.random.PRNGKey(0), 2)
    T = process.num_timesteps
    degrade = jax.jit(process.degrade)
    correct = jax.jit(lambda t, x: process.correct(t, t - 1, x, x0, sigma_tilde=0.0,
                                                   key=jax.random.PRNGKey(0)))
    x = degrade(T, x0)
    for t in range(T, 0, -1):
        step = correct(t, x)
        np.testing.assert_allclose(step, x + degrade(t - 1, x0) - degrade(t, x0), atol=1e-6)
        x = step
    np.testing.assert_allclose(x, x0, atol=1e-5)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_sub_sequence_sampling_with_the_oracle(name):
    process = cold_blur()
    x0 = _images(jax.random.PRNGKey(0), 3)
    x_T = process.degrade(process.num_timesteps, x0)
    np.testing.assert_allclose(_sample(process, _oracle, x0, x_T, name, num_steps=5), x0,
                               atol=1e-5)


def test_improved_sampler_keeps_the_inferred_noise():
    """sigma > 0, oracle: (B2.2) carries x_T's noise to the end, x_0 = x0 + (x_T - F_T(x0))."""
    process = heat_dissipation(sigma=0.01)
    x0 = _images(jax.random.PRNGKey(0), 3)
    eps = process.sample_eps(jax.random.PRNGKey(1), x0.shape)
    x_T = process.forward(process.num_timesteps, x0, eps)
    out = _sample(process, _oracle, x0, x_T, "improved", num_steps=4)
    np.testing.assert_allclose(out, x0 + 0.01 * eps, atol=1e-5)


# --- B2 test 2: how a constant error enters ------------------------------------------------------

@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_offset_oracle(name):
    """x0_hat = x0 + e: (B2.2) ends at x0 + F_0(e) - F_T(e), (B2.1) at x0 + F_0(e)."""
    process = cold_blur()
    x0 = _images(jax.random.PRNGKey(0), 3)
    e = 0.1 * _images(jax.random.PRNGKey(1), 3)
    T = process.num_timesteps
    out = _sample(process, _oracle, x0 + e, process.degrade(T, x0), name)
    expected = x0 + e - (process.degrade(T, e) if name == "improved" else 0.0)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_predictor_in_the_loop():
    """G_t(y) = F_t^{-1}(y) + e with F_t = K^t: (B2.1) ends at x0 + T e, (B2.2) at x0 + T (I - K) e."""
    h, w, T = 4, 4, 5
    p = h * w
    shift = np.roll(np.eye(p), 1, axis=1)  # not symmetric: catches a transposed operator
    K = 0.8 * np.eye(p) + 0.2 * shift      # eigenvalues 0.8 + 0.2 e^{i theta}, |.| >= 0.6
    ops = np.stack([np.linalg.matrix_power(K, t) for t in range(T + 1)])
    inv_ops = np.stack([np.linalg.inv(op) for op in ops])
    process = LinearDegradationProcess.from_operators(ops, (h, w, 1))
    inverse = LinearDegradationProcess.from_operators(inv_ops, (h, w, 1))  # F_t^{-1} = K^{-t}

    def predictor(e, xt, t):
        return inverse.degrade(t, xt) + e

    x0 = _images(jax.random.PRNGKey(0), 3, (h, w, 1))
    e = 0.1 * _images(jax.random.PRNGKey(1), 3, (h, w, 1))
    x_T = process.degrade(T, x0)
    naive = _sample(process, predictor, e, x_T, "baseline")
    improved = _sample(process, predictor, e, x_T, "improved")
    np.testing.assert_allclose(naive, x0 + T * e, atol=1e-4)
    i_minus_k = LinearDegradationProcess.from_operators(np.stack([np.eye(p), np.eye(p) - K]),
                                                        (h, w, 1))
    np.testing.assert_allclose(improved, x0 + T * i_minus_k.degrade(1, e), atol=1e-4)


# --- (A6) marginal consistency by Monte Carlo -----------------------------------------------------

@pytest.mark.parametrize("sigma_tilde", [0.0, 0.5, 1.0])
def test_correct_keeps_the_marginal(sigma_tilde):
    """x_t ~ p(x_t | x0), x_s = correct(t, s, x_t, x0): x_s ~ N(F_s x0, sigma^2 I) = p(x_s | x0).

    N = 20000 draws of 16 pixels; tolerances are 5 standard errors: sigma / sqrt(N) for the
    mean, sqrt(2) sigma^2 / sqrt(N) for a covariance entry.
    """
    sigma, n, t, s = 0.3, 20000, 4, 2
    process = cold_blur((4, 4, 1), num_timesteps=5, kernel_size=3, kernel_std=1.0, sigma=sigma)
    x0 = _images(jax.random.PRNGKey(0), 1, (4, 4, 1))
    eps = process.sample_eps(jax.random.PRNGKey(1), (n, 4, 4, 1))
    xt = process.forward(t, x0, eps)
    xs = process.correct(t, s, xt, jnp.broadcast_to(x0, xt.shape), sigma_tilde=sigma_tilde,
                         key=jax.random.PRNGKey(2))
    flat = np.asarray(xs, np.float64).reshape(n, -1)
    expected_mean = np.asarray(process.degrade(s, x0), np.float64).reshape(-1)
    np.testing.assert_allclose(flat.mean(axis=0), expected_mean, atol=5 * sigma / np.sqrt(n))
    np.testing.assert_allclose(np.cov(flat, rowvar=False), sigma ** 2 * np.eye(16),
                               atol=5 * np.sqrt(2) * sigma ** 2 / np.sqrt(n))


# --- heat dissipation (C1) ------------------------------------------------------------------------

def test_heat_operator_properties():
    """F_t symmetric, contractive, constants fixed, F(a) F(b) = F(a + b), on a non-square image."""
    a, b = 0.3, 0.7
    process = heat_dissipation((6, 8, 2), taus=[a, b, a + b], sigma=0.0)
    ops = np.asarray(process.ops, np.float64)
    for op in ops:
        np.testing.assert_allclose(op, op.T, atol=1e-6)
        assert np.linalg.norm(op, 2) <= 1.0 + 1e-5
        np.testing.assert_allclose(op @ np.ones(48), np.ones(48), atol=1e-5)
    np.testing.assert_allclose(ops[1] @ ops[2], ops[3], atol=1e-5)
    constant = jnp.broadcast_to(jnp.array([0.3, -0.7]), (2, 6, 8, 2))
    np.testing.assert_allclose(process.degrade(3, constant), constant, atol=1e-5)


def test_heat_eigenvalues_follow_lambda():
    """A DCT basis image of frequencies (m, n) decays by exp(-pi^2 (n^2/W^2 + m^2/H^2) tau)."""
    h, w, tau = 6, 8, 0.4
    op = heat_operator((h, w), tau)
    np.testing.assert_allclose(dct_matrix(w) @ dct_matrix(w).T, np.eye(w), atol=1e-12)
    for m, n in [(0, 1), (1, 0), (2, 3), (5, 7)]:
        basis = np.outer(dct_matrix(h)[m], dct_matrix(w)[n]).reshape(-1)
        decay = np.exp(-np.pi ** 2 * (n ** 2 / w ** 2 + m ** 2 / h ** 2) * tau)
        np.testing.assert_allclose(op @ basis, decay * basis, atol=1e-12)


# --- the generic loss -----------------------------------------------------------------------------

def test_generic_loss_is_the_l1_loss():
    process = cold_blur(sigma=0.1)
    x0 = _images(jax.random.PRNGKey(0), 4)
    key = jax.random.PRNGKey(3)

    def apply_fn(params, xt, t, key):
        del t, key
        return params * xt

    loss, aux = make_loss_fn(process, apply_fn)(0.5, x0, key=key)
    # by hand, with the key splits of make_loss_fn
    t_key, eps_key, _ = jax.random.split(key, 3)
    t = np.asarray(jax.random.randint(t_key, (4,), 1, process.num_timesteps + 1))
    eps = np.asarray(jax.random.normal(eps_key, x0.shape), np.float64)
    ops = np.asarray(process.ops, np.float64)
    x = np.asarray(x0, np.float64)
    xt = np.stack([(ops[t[i]] @ x[i].reshape(64, 1)).reshape(8, 8, 1) for i in range(4)])
    xt = xt + 0.1 * eps
    expected = np.mean(np.abs(x - 0.5 * xt))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(aux["unweighted_loss"], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="none"):
        make_loss_fn(process, apply_fn, weighting="min_snr_5")


# --- the prior over x_T ---------------------------------------------------------------------------

def test_fit_prior_matches_mean_and_covariance():
    """prior() draws N(mean, cov) of F_T(data), plus (jitter + sigma^2 + prior_noise^2) I.

    M = 20000 draws; tolerances are 5 standard errors: sqrt(max var / M) for the mean,
    sqrt(2) max var / sqrt(M) for a covariance entry.
    """
    shape, sigma, prior_noise, m = (4, 4, 1), 0.05, 0.1, 20000
    process = cold_blur(shape, num_timesteps=2, kernel_size=3, kernel_std=0.8, sigma=sigma,
                        prior_noise=prior_noise)
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16)) * 0.3
    data = (rng.normal(size=(3000, 16)) @ mix.T + np.linspace(-0.5, 0.5, 16)).reshape(3000, *shape)
    fitted = process.fit_prior(data.astype(np.float32))
    collapsed = process.degrade(2, jnp.asarray(data, jnp.float32))
    collapsed = np.asarray(collapsed, np.float64).reshape(3000, -1)
    data_cov = np.cov(collapsed, rowvar=False)
    np.testing.assert_allclose(fitted.prior_mean.reshape(-1), collapsed.mean(axis=0), atol=1e-5)
    chol = np.asarray(fitted.prior_chol, np.float64)
    np.testing.assert_allclose(chol @ chol.T, data_cov + DEFAULT_PRIOR_JITTER * np.eye(16),
                               atol=1e-5)

    draws = jax.jit(lambda p, k: p.prior(k, (m, *shape)))(fitted, jax.random.PRNGKey(0))
    flat = np.asarray(draws, np.float64).reshape(m, -1)
    expected_cov = data_cov + (DEFAULT_PRIOR_JITTER + sigma ** 2 + prior_noise ** 2) * np.eye(16)
    max_var = np.max(np.diag(expected_cov))
    np.testing.assert_allclose(flat.mean(axis=0), collapsed.mean(axis=0),
                               atol=5 * np.sqrt(max_var / m))
    np.testing.assert_allclose(np.cov(flat, rowvar=False), expected_cov,
                               atol=5 * np.sqrt(2) * max_var / np.sqrt(m))


def test_prior_of_default_blur_on_digits_is_a_mean_colour_image():
    """Fitted on the digits, prior samples are (nearly) constant images of the digits' brightness."""
    digits = _digits()
    process = cold_blur().fit_prior(digits)
    draws = np.asarray(process.prior(jax.random.PRNGKey(0), (4000, 8, 8, 1)))
    spatial_mean = draws.mean(axis=(1, 2, 3))
    assert np.max(draws.std(axis=(1, 2, 3))) < 5e-3  # jitter std 1e-3 per pixel
    data_mean = digits.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(spatial_mean.mean(), data_mean.mean(), atol=5e-3)
    np.testing.assert_allclose(spatial_mean.std(), data_mean.std(), rtol=0.05)


# --- bad inputs -----------------------------------------------------------------------------------

def test_bad_inputs_fail_clearly():
    process = cold_blur()
    with pytest.raises(ValueError, match="fit_prior"):
        process.prior(jax.random.PRNGKey(0), (2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"\[\.\.\., 8, 8, 1\]"):
        process.forward(1, jnp.zeros((2, 4, 4, 1)), jnp.zeros((2, 4, 4, 1)))
    with pytest.raises(ValueError, match="fit_prior needs images"):
        process.fit_prior(np.zeros((10, 4, 4, 1)))
    with pytest.raises(ValueError, match="prior shape"):
        process.fit_prior(_digits()[:50]).prior(jax.random.PRNGKey(0), (2, 4, 4, 1))
    for build in (cold_blur, heat_dissipation):
        with pytest.raises(ValueError, match="sigma must be"):
            build(sigma=-0.1)
        with pytest.raises(ValueError, match="prior_noise must be"):
            build(prior_noise=-1.0)
        with pytest.raises(ValueError, match="image_shape"):
            build(image_shape=(8, 8))
    with pytest.raises(ValueError, match="padding"):
        cold_blur(padding="mirror")
    with pytest.raises(ValueError, match="odd"):
        cold_blur(kernel_size=4)
    with pytest.raises(ValueError, match="tau_min"):
        heat_dissipation(tau_min=0.0)
    with pytest.raises(ValueError, match="identity"):
        LinearDegradationProcess.from_operators(np.stack([2 * np.eye(4)] * 3), (2, 2, 1))
    with pytest.raises(ValueError, match="weighting"):
        process.check_weighting("min_snr_5")
