"""EDM's Heun (with churn) and ancestral Euler samplers against closed forms (docs/time_grids.md G7, G8).

Gaussian data x_0 ~ N(M, S^2) with the exact predictor E[x_0 | x_t]: the probability-flow map is
linear and known (x_s = alpha_bar_s M + sqrt(V_s / V_t)(x_t - alpha_bar_t M), V = alpha_bar^2 S^2 +
beta_bar^2), and every ancestral step is affine plus fresh Gaussian noise, so its output law
propagates exactly.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm import oracles
from udm.processes import GaussianProcess, masking
from udm.processes import sde as sde_lib
from udm.sampling import SamplerOptions, grids, make_sampler, supported_samplers
from udm.sampling.edm import churn_times

M, S = 0.5, 0.3
PROCESS = GaussianProcess.from_schedule("linear", 1000)


def _marginal(process, t):
    a, b = process.marginal(jnp.asarray(t))
    return float(a), float(b)


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE()], ids=["vp", "ve"])
def test_heun_edm_converges_with_order_two(sde):
    """States at t_min (before the final estimate) against the exact flow map, K = 8, 16, 32 on
    the karras grid. Measured max errors: VP 0.21, 0.049, 0.011 (slope -2.12); VE 0.14, 0.031,
    0.0072 (slope -2.13): far above float32 rounding."""
    predictor = oracles.gaussian_posterior_mean(sde, M, S)
    a1, b1 = _marginal(sde, 1.0)
    a_e, b_e = _marginal(sde, sde.t_min)
    v1, v_e = a1 ** 2 * S ** 2 + b1 ** 2, a_e ** 2 * S ** 2 + b_e ** 2
    x_1 = a1 * M + np.sqrt(v1) * np.array([[-2.0], [-0.5], [0.3], [1.5]])
    exact = a_e * M + np.sqrt(v_e / v1) * (x_1 - a1 * M)
    ks, errors = np.array([8, 16, 32]), []
    for k in ks:
        out = make_sampler(sde, predictor, "heun_edm", num_steps=int(k), spacing="karras",
                           denoise=False)(None, jnp.asarray(x_1, jnp.float32), key=jax.random.key(0))
        assert int(out.nfe) == 2 * k
        errors.append(np.max(np.abs(np.asarray(out.x0, np.float64) - exact)))
    slope = np.polyfit(np.log(ks), np.log(errors), 1)[0]
    assert abs(slope + 2) < 0.3, (slope, errors)


def _heun_reference(process, grid, x_T):
    """EDM's Algorithm 2 (deterministic) written out in float64 numpy on a discrete grid."""
    abar = np.asarray(process.alpha_bar, np.float64)
    bbar = np.asarray(process.beta_bar, np.float64)

    def D(y, t):  # the exact denoiser at x = alpha_bar y
        gain = abar[t] * S ** 2 / (abar[t] ** 2 * S ** 2 + bbar[t] ** 2)
        return M + gain * (abar[t] * y - abar[t] * M)

    sigma = lambda t: bbar[t] / abar[t]  # noqa: E731
    y = x_T / abar[grid[0, 0]]
    for t, s in grid:
        d = (y - D(y, t)) / sigma(t)
        y_next = y + (sigma(s) - sigma(t)) * d
        if s > 0:
            y_next = y + (sigma(s) - sigma(t)) * 0.5 * (d + (y_next - D(y_next, s)) / sigma(s))
        y = y_next
    return y


def test_heun_edm_discrete_is_algorithm_2():
    """Integer times: K - 1 Heun steps, the step to sigma = 0 an Euler step; NFE 2K - 1."""
    x_T = np.array([[-1.5], [0.2], [2.0]])
    predictor = oracles.gaussian_posterior_mean(PROCESS, M, S)
    for k, spacing in [(5, "karras"), (1, "uniform")]:
        out = make_sampler(PROCESS, predictor, "heun_edm", num_steps=k, spacing=spacing)(
            None, jnp.asarray(x_T, jnp.float32), key=jax.random.key(0))
        assert int(out.nfe) == 2 * k - 1
        expected = _heun_reference(PROCESS, grids.time_grid(PROCESS, k, spacing), x_T)
        np.testing.assert_allclose(np.asarray(out.x0), expected, rtol=1e-4, atol=1e-5)


def test_churn():
    """Churn outside its sigma window is the deterministic sampler (churn = 0) bit for bit;
    inside it the chain is stochastic and still samples the data (MC, n = 20000, K = 40)."""
    predictor = oracles.gaussian_posterior_mean(PROCESS, M, S)
    n = 20_000
    x_T = jax.random.normal(jax.random.key(0), (n, 1))
    run = lambda **o: np.asarray(make_sampler(  # noqa: E731
        PROCESS, predictor, "heun_edm", num_steps=40, spacing="karras", **o)(
        None, x_T, key=jax.random.key(1)).x0, np.float64)
    deterministic = run()  # churn = 0: no noise is drawn at all
    np.testing.assert_array_equal(run(churn=10.0, churn_tmin=1e6), deterministic)
    churned = run(churn=10.0, churn_tmin=0.05, churn_tmax=50.0)
    assert np.max(np.abs(churned - deterministic)) > 0.1
    # Measured: deterministic mean 0.4976, var 0.0935 (+3.9%: Heun's error from sigma_max = 156
    # in 40 steps); churned mean 0.4950, var 0.0958 (+6.5%). Standard errors 0.0021 and 0.0009.
    for x0 in (deterministic, churned):
        assert abs(x0.mean() - M) < 5 * S / np.sqrt(n)
        assert abs(x0.var() / S ** 2 - 1) < 0.1


@pytest.mark.parametrize("process", [PROCESS, sde_lib.VPSDE()], ids=["discrete", "vp"])
def test_churn_times(process):
    """sigma(t_hat) = (1 + gamma) sigma(t) inside [S_tmin, S_tmax] (continuous: by bisection;
    discrete: the nearest step, within half a step's change of sigma), capped at the top; t_hat =
    t elsewhere."""
    k = 10
    options = SamplerOptions(churn=2.0, churn_tmin=0.5, churn_tmax=20.0)
    times = grids.time_grid(process, k, "karras")[:, 0]
    t_hat = churn_times(process, times, k, options)
    sigma, sigma_hat = (np.exp(-grids.log_snr(process, x)) for x in (times, t_hat))
    inside = (sigma >= 0.5) & (sigma <= 20.0)
    assert inside.sum() >= 3 and (~inside).sum() >= 3
    np.testing.assert_array_equal(t_hat[~inside], times[~inside])
    top = np.exp(-grids.log_snr(process, 1.0 if process.capabilities.continuous_time else 1000))
    target = np.minimum(1.2 * sigma[inside], top)
    rtol = 1e-4 if process.capabilities.continuous_time else 0.02
    np.testing.assert_allclose(sigma_hat[inside], target, rtol=rtol)


def _ancestral_law(process, grid, mean, var):
    """Exact law of y = x / alpha_bar through euler_ancestral with the exact predictor: each
    step is y_s - M = A (y_t - M) + sigma_up z, A = c + (sigma_down / sigma_t)(1 - c), c = D's gain."""
    a_t, b_t = (np.asarray(v, np.float64) for v in process.marginal(jnp.asarray(grid[:, 0])))
    a_s, b_s = (np.asarray(v, np.float64) for v in process.marginal(jnp.asarray(grid[:, 1])))
    for a_t, b_t, a_s, b_s in zip(a_t, b_t, a_s, b_s):
        sigma_t, sigma_s = b_t / a_t, b_s / a_s
        c = a_t ** 2 * S ** 2 / (a_t ** 2 * S ** 2 + b_t ** 2)
        up = min(sigma_s, np.sqrt(max(sigma_s ** 2 * (sigma_t ** 2 - sigma_s ** 2) / sigma_t ** 2, 0)))
        down = np.sqrt(max(sigma_s ** 2 - up ** 2, 0.0))
        A = c + down / sigma_t * (1 - c)
        mean, var = M + A * (mean - M), A ** 2 * var + up ** 2
    return mean, var


@pytest.mark.parametrize("process", [PROCESS, sde_lib.VPSDE()], ids=["discrete", "vp"])
def test_euler_ancestral_samples_gaussian_data(process):
    """The MC output (K = 50, logsnr grid, n = 20000) matches its exactly propagated law (5
    standard errors), whose mean is the data's and whose variance converges to it with order 1.

    The ancestral step is DDPM's posterior step written in y = x / alpha_bar (G8), so it shares
    DDPM's variance deficit at small K (it ignores Var[x_0 | x_t]). Measured relative variance
    error of the exact law, K = 25, 50, 100, 200: discrete -0.31, -0.17, -0.090, -0.040; VP
    -0.30, -0.17, -0.090, -0.046.
    """
    k, n = 50, 20_000
    predictor = oracles.gaussian_posterior_mean(process, M, S)
    continuous = process.capabilities.continuous_time

    def law(num_steps):
        grid = grids.time_grid(process, num_steps, "logsnr")
        a_T, b_T = _marginal(process, grid[0, 0])
        var_T = a_T ** 2 * S ** 2 + b_T ** 2          # exact p(x_T)
        mean, var = _ancestral_law(process, grid, M, var_T / a_T ** 2)
        sigma_end = np.divide(*_marginal(process, grid[-1, 1])[::-1]) if continuous else 0.0
        return mean, var, var / (S ** 2 + sigma_end ** 2) - 1, a_T, var_T

    mean, var, error_50, a_T, var_T = law(k)
    x_T = a_T * M + np.sqrt(var_T) * jax.random.normal(jax.random.key(0), (n, 1))
    out = make_sampler(process, predictor, "euler_ancestral", num_steps=k, spacing="logsnr",
                       denoise=False)(None, x_T, key=jax.random.key(1))
    assert int(out.nfe) == k
    y = np.asarray(out.x0, np.float64)
    if continuous:  # the state at t_min, back in y = x / alpha_bar
        y = y / _marginal(process, process.t_min)[0]
    assert abs(y.mean() - mean) < 5 * np.sqrt(var / n)
    assert abs(y.var() - var) < 5 * var * np.sqrt(2 / n)
    assert abs(mean - M) < 1e-3
    error_200 = law(200)[2]
    assert abs(error_200) < 0.06 and abs(error_50 / error_200) > 3, (error_50, error_200)


def test_refusals():
    tokens = masking(seq_len=4, vocab_size=3)
    for name in ("heun_edm", "euler_ancestral"):
        with pytest.raises(ValueError, match=f"sampler '{name}' needs a process with Gaussian "
                                             f"marginals; the MaskingProcess samples with: "):
            make_sampler(tokens, lambda p, x, t: x, name, num_steps=2)
    ztsnr = GaussianProcess.from_schedule("linear", 100, prediction="v", zero_terminal_snr=True)
    for name in ("heun_edm", "euler_ancestral"):
        assert name not in supported_samplers(ztsnr) and name in supported_samplers(PROCESS)
        with pytest.raises(ValueError, match=f"sampler '{name}' works in sigma = beta_bar / "
                                             f"alpha_bar, which is infinite at the top"):
            make_sampler(ztsnr, lambda p, x, t: x, name, num_steps=4)
    with pytest.raises(ValueError, match="churn >= 0"):
        make_sampler(PROCESS, lambda p, x, t: x, "heun_edm", num_steps=4, churn=-1.0)


@pytest.mark.parametrize("name,traces", [("heun_edm", 3), ("euler_ancestral", 1)])
def test_traces_once_for_any_number_of_steps(name, traces):
    """The predictor is traced a fixed number of times (heun_edm: twice in the scan body, once
    for the final estimate), whatever K."""
    oracle = oracles.gaussian_posterior_mean(PROCESS, M, S)
    count = []

    def counting_predictor(params, xt, t):
        count.append(1)  # runs only while tracing
        return oracle(params, xt, t) * params

    for k in (3, 30):
        count.clear()
        chex.clear_trace_counter()
        sample = make_sampler(PROCESS, counting_predictor, name, num_steps=k, churn=1.0,
                              spacing="karras", jit=False)
        sample = jax.jit(chex.assert_max_traces(sample, n=1))
        for seed in range(2):
            sample(jnp.float32(1.0 + seed), jnp.zeros((2, 1)), key=jax.random.key(seed)).x0
        assert len(count) == traces, (k, len(count))
