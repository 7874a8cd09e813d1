"""The generic estimate-then-correct sampler against closed forms (docs/udm.md A3, docs/ddpm_ddim.md)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from udm import oracles
from udm.processes import GaussianProcess
from udm.sampling import discrete_time_grid as time_grid, make_sampler, slerp

M, S = 0.5, 0.3          # data N(M, S^2)


def _exact_output_law(p, grid, name, eta, mean_T, var_T):
    """Mean and variance of the sampler's output for Gaussian data with the exact oracle.

    Every step is affine in x_t plus independent Gaussian noise, so the law propagates
    exactly: x_s = A x_t + B + beta_bar_s sigma_tilde eps.
    """
    abar = np.asarray(p.alpha_bar, np.float64)
    bbar = np.asarray(p.beta_bar, np.float64)
    mean, var = mean_T, var_T
    for t, s in grid:
        a_t, b_t, a_s, b_s = abar[t], bbar[t], abar[s], bbar[s]
        gain = a_t * S ** 2 / (a_t ** 2 * S ** 2 + b_t ** 2)
        ddpm = np.sqrt(1 - (a_t / a_s) ** 2) / b_t
        st = {"ddpm": ddpm, "ddim": eta * ddpm, "baseline": 1.0}[name]
        k = b_s * np.sqrt(max(1 - st ** 2, 0.0)) / b_t
        A = a_s * gain + k * (1 - a_t * gain)
        B = (a_s - k * a_t) * M * (1 - gain * a_t)
        mean, var = A * mean + B, A ** 2 * var + (b_s * st) ** 2
    return mean, var


@pytest.mark.parametrize("name,num_steps,eta", [
    ("ddpm", 1000, 1.0), ("ddim", 1000, 0.0), ("ddim", 50, 0.0), ("ddim", 50, 0.5), ("ddpm", 50, 1.0)])
def test_gaussian_data_is_recovered(name, num_steps, eta):
    p = GaussianProcess.from_schedule("blog", 1000)
    sample = make_sampler(p, oracles.gaussian_posterior_mean(p, M, S),
                          num_steps=num_steps, name=name, eta=eta)
    n = 40_000
    a_T, b_T = float(p.alpha_bar[-1]), float(p.beta_bar[-1])
    var_T = a_T ** 2 * S ** 2 + b_T ** 2      # exact p(x_T) for this data
    x_T = a_T * M + np.sqrt(var_T) * jax.random.normal(jax.random.PRNGKey(0), (n, 1))
    x0 = np.asarray(sample(None, x_T, key=jax.random.PRNGKey(1)).x0, np.float64)
    exact_mean, exact_var = _exact_output_law(p, time_grid(1000, num_steps), name, eta, a_T * M, var_T)
    # 1) The Monte Carlo output matches the exactly propagated law: 5 standard errors.
    assert abs(x0.mean() - exact_mean) < 5 * np.sqrt(exact_var / n)
    assert abs(x0.var() - exact_var) < 5 * exact_var * np.sqrt(2 / n)
    # 2) That law is the data's: the mean exactly; the variance within the discretisation bias,
    #    which is small for the 1000-step chain (DDPM ignores Var[x_0|x_t], docs/optimal_variance.md) and larger at K = 50.
    assert abs(exact_mean - M) < 1e-3
    tolerance = 0.03 if num_steps == 1000 else 0.3
    assert abs(exact_var / S ** 2 - 1) < tolerance


def test_ddim_ode_converges_with_order_one():
    # Deterministic DDIM is an affine map x_T -> x_0; its slope c gives Var[x_0] = c^2 Var[x_T].
    with jax.enable_x64(True):
        p = GaussianProcess.from_schedule("blog", 1000, dtype=jnp.float64)
        pred = oracles.gaussian_posterior_mean(p, M, S)
        a_T, b_T = float(p.alpha_bar[-1]), float(p.beta_bar[-1])
        var_T = a_T ** 2 * S ** 2 + b_T ** 2
        errors = []
        for k in [25, 50, 100, 200]:
            out = make_sampler(p, pred, num_steps=k, name="ddim", spacing="uniform")(
                None, jnp.array([[0.0], [1.0]]), key=jax.random.PRNGKey(0)).x0
            slope = float(out[1, 0] - out[0, 0])
            errors.append(abs(np.sqrt(slope ** 2 * var_T) - S))
        orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
        assert np.all(orders > 0.8) and np.all(orders < 1.3), orders


def test_mixture_weights_are_recovered():
    p = GaussianProcess.from_schedule("blog", 1000)
    means, stds, weights = jnp.array([[-2.0], [2.0]]), jnp.array([0.5, 0.5]), jnp.array([0.3, 0.7])
    pred = oracles.gaussian_mixture_posterior_mean(p, means, stds, weights)
    n = 20_000
    x_T = p.prior(jax.random.PRNGKey(0), (n, 1))
    for name, k in [("ddpm", 1000), ("ddim", 100)]:
        x0 = make_sampler(p, pred, num_steps=k, name=name)(None, x_T, key=jax.random.PRNGKey(1)).x0
        recovered = oracles.mixture_responsibilities(means, stds, weights, x0).mean(axis=0)
        # Binomial standard error sqrt(0.21 / n) = 0.0032; 0.02 allows ~6 of them.
        np.testing.assert_allclose(recovered, weights, atol=0.02)


def test_time_grids():
    grid = time_grid(1000, 1000)
    np.testing.assert_array_equal(grid[:, 0], np.arange(1000, 0, -1))
    np.testing.assert_array_equal(grid[:, 1], np.arange(999, -1, -1))
    np.testing.assert_array_equal(time_grid(1000, 10)[:, 0], np.arange(1000, 0, -100))
    q = time_grid(1000, 50, "quadratic")
    assert q[0, 0] == 1000 and q[-1, 1] == 0 and np.all(q[:, 0] > q[:, 1])
    assert np.all(np.diff(q[::-1, 0]) >= 1) and (q[-1, 0] < 1000 / 50)  # denser near 0
    for bad in [0, 1001]:
        with pytest.raises(ValueError, match=r"num_steps must be in \[1, T=1000\], got"):
            time_grid(1000, bad)
    with pytest.raises(ValueError, match="quadratic, uniform"):
        time_grid(1000, 10, "cubic")


def test_unknown_sampler_lists_valid_names():
    p = GaussianProcess.from_schedule("blog", 100)
    with pytest.raises(ValueError, match="baseline, ddim, ddpm"):
        make_sampler(p, oracles.gaussian_posterior_mean(p, 0.0, 1.0), num_steps=10, name="euler")


def test_stride_one_subsequence_equals_hand_written_chain():
    # Sampling on tau = {1..T} must be the step-by-step DDPM chain, written out by hand here.
    p = GaussianProcess.from_schedule("blog", 20)
    pred = oracles.gaussian_posterior_mean(p, M, S)
    x_T = p.prior(jax.random.PRNGKey(0), (64, 1))
    key = jax.random.PRNGKey(5)
    got = make_sampler(p, pred, num_steps=20, name="ddpm")(None, x_T, key=key).x0
    x = x_T
    for i, t in enumerate(range(20, 0, -1)):
        _, correct_key = jax.random.split(jax.random.fold_in(key, i))
        x = p.correct(t, t - 1, x, pred(None, x, t), sigma_tilde=p.ddpm_sigma_tilde(t, t - 1),
                      key=correct_key)
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)


def test_sampler_traces_once_for_any_number_of_steps():
    p = GaussianProcess.from_schedule("blog", 1000)
    traces = []
    oracle = oracles.gaussian_posterior_mean(p, M, S)

    def counting_predictor(params, xt, t):
        traces.append(1)  # runs only while tracing
        return oracle(params, xt, t) * params

    for k in [10, 1000]:
        traces.clear()
        chex.clear_trace_counter()
        sample = make_sampler(p, counting_predictor, num_steps=k, name="ddpm", jit=False)
        sample = jax.jit(chex.assert_max_traces(sample, n=1))
        x_T = jnp.zeros((4, 1))
        for seed in range(3):   # new keys and params must not retrace
            sample(jnp.float32(1.0 + seed), x_T, key=jax.random.PRNGKey(seed)).x0
        assert len(traces) == 1, f"step body traced {len(traces)} times for K={k}"


def test_data_parallel_sampling_matches_single_device():
    devices = np.array(jax.devices())
    assert devices.size >= 2, "tests expect fake CPU devices (see conftest)"
    mesh = Mesh(devices, ("data",))
    p = GaussianProcess.from_schedule("blog", 1000)
    sample = make_sampler(p, oracles.gaussian_posterior_mean(p, M, S), num_steps=20, name="ddim",
                          eta=1.0)
    x_T = p.prior(jax.random.PRNGKey(0), (8 * devices.size, 4))
    sharded = jax.device_put(x_T, NamedSharding(mesh, P("data")))
    out_sharded = sample(None, sharded, key=jax.random.PRNGKey(1)).x0
    assert out_sharded.sharding.spec == P("data")
    np.testing.assert_allclose(out_sharded, sample(None, x_T, key=jax.random.PRNGKey(1)).x0,
                               rtol=1e-6, atol=1e-6)


def test_slerp_keeps_standard_normal():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    z1, z2 = jax.random.normal(k1, (200_000,)), jax.random.normal(k2, (200_000,))
    np.testing.assert_allclose(slerp(z1, z2, 0.0), z1)
    np.testing.assert_allclose(slerp(z1, z2, 1.0), z2, atol=1e-6)
    for lam in [0.25, 0.5]:
        assert abs(float(slerp(z1, z2, lam).var()) - 1) < 5 * np.sqrt(2 / 200_000)
        # linear interpolation shrinks the variance: the reason to use slerp
        assert float(((1 - lam) * z1 + lam * z2).var()) < 0.7


@pytest.mark.parametrize("name,num_steps", [("ddim", 1), ("ddim", 3), ("ddpm", 5), ("baseline", 4)])
def test_exact_posterior_sampling_is_exact_for_any_step_count(name, num_steps):
    # With x0_hat ~ p(x_0|x_t) exactly (sigma_bar_t^2 = Var[x_0|x_t], docs/processes.md B1.2) the step
    # p(x_s|x_t) = E[p(x_s|x_t,x_0)] is exact (A2), so even K = 1 returns N(M, S^2).
    p = GaussianProcess.from_schedule("blog", 1000)
    a, b = np.asarray(p.alpha_bar, np.float64), np.asarray(p.beta_bar, np.float64)
    sigma_bar = jnp.asarray(np.sqrt(S ** 2 * b ** 2 / (a ** 2 * S ** 2 + b ** 2)), jnp.float32)
    sample = make_sampler(p, oracles.gaussian_posterior_mean(p, M, S), num_steps=num_steps,
                          name=name, sigma_bar=sigma_bar)
    n = 100_000
    var_T = a[-1] ** 2 * S ** 2 + b[-1] ** 2
    x_T = a[-1] * M + np.sqrt(var_T) * jax.random.normal(jax.random.PRNGKey(0), (n, 1))
    x0 = np.asarray(sample(None, x_T, key=jax.random.PRNGKey(1)).x0, np.float64)
    assert abs(x0.mean() - M) < 5 * S / np.sqrt(n)
    assert abs(x0.var() - S ** 2) < 5 * S ** 2 * np.sqrt(2 / n)
