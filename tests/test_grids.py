"""Time grids, the zero-terminal-SNR rescale and dynamic thresholding (docs/time_grids.md G1-G6)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm import oracles, schedules
from udm.processes import GaussianProcess, masking
from udm.processes import sde as sde_lib
from udm.sampling import (SPACINGS, SamplerOptions, clip_estimate, discrete_time_grid,
                          make_sampler, network_predictor, time_grid)
from udm.sampling.grids import log_snr

M, S = 0.5, 0.3
LINEAR = GaussianProcess.from_schedule("linear", 1000)
ZTSNR = GaussianProcess.from_schedule("linear", 1000, prediction="v", zero_terminal_snr=True)
SDES = [sde_lib.VPSDE(), sde_lib.VESDE(), sde_lib.SubVPSDE()]
CONTINUOUS = ["uniform", "quadratic", "karras", "logsnr"]


@pytest.mark.parametrize("process", [LINEAR, ZTSNR, GaussianProcess.from_schedule("cosine", 12)],
                         ids=["linear", "ztsnr", "cosine12"])
def test_discrete_grids_increase_strictly_to_T(process):
    T = process.num_timesteps
    for spacing in SPACINGS:
        for k in sorted({1, 2, 7, 10, T // 2, T} & set(range(1, T + 1))):
            grid = time_grid(process, k, spacing)
            tau = grid[::-1, 0]
            assert grid.dtype == np.int32 and grid.shape == (k, 2), (spacing, k)
            assert tau[0] >= 1 and tau[-1] == T and np.all(np.diff(tau) > 0), (spacing, k, tau)
            np.testing.assert_array_equal(grid[:, 1], np.concatenate([[0], tau[:-1]])[::-1])
            if k == T:  # every spacing is then the full chain
                np.testing.assert_array_equal(tau, np.arange(1, T + 1))


@pytest.mark.parametrize("sde", SDES, ids=["vp", "ve", "subvp"])
def test_continuous_grids_decrease_from_1_to_t_min(sde):
    for spacing in CONTINUOUS:
        for k in (1, 3, 40):
            grid = time_grid(sde, k, spacing)
            times = np.concatenate([grid[:, 0], grid[-1:, 1]])
            assert grid.dtype == np.float32 and grid.shape == (k, 2)
            assert times[0] == 1.0 and times[-1] == np.float32(sde.t_min)
            assert np.all(np.diff(times) < 0), (spacing, k)


def test_leading_linspace_trailing_are_diffusers_spacings():
    """diffusers' DDIMScheduler timesteps (0-based) written out by hand for T = 1000, K = 7, plus
    one: "leading" 852, 710, 568, 426, 284, 142, 0 (step ratio 142) has its top moved to T;
    "linspace" round(linspace(0, 999, 7)) = 0, 166, 333, 500, 666, 832, 999 (numpy rounds half to
    even); "trailing" round(arange(1000, 0, -1000/7)) - 1 = 999, 856, 713, 570, 428, 285, 142 is
    udm's "uniform"."""
    leading = discrete_time_grid(1000, 7, "leading")[::-1, 0]
    np.testing.assert_array_equal(leading, [1, 143, 285, 427, 569, 711, 1000])
    linspace = discrete_time_grid(1000, 7, "linspace")[::-1, 0]
    np.testing.assert_array_equal(linspace, [1, 167, 334, 501, 667, 833, 1000])
    trailing = np.array([999, 856, 713, 570, 428, 285, 142])[::-1] + 1
    np.testing.assert_array_equal(discrete_time_grid(1000, 7, "uniform")[::-1, 0], trailing)
    np.testing.assert_array_equal(discrete_time_grid(1000, 10, "leading")[::-1, 0],
                                  [1, 101, 201, 301, 401, 501, 601, 701, 801, 1000])


def _sigmas(process, times):
    return np.exp(-log_snr(process, times))


def _karras(sigma_max, sigma_min, num, rho=7.0):
    i = np.arange(num)
    return (sigma_max ** (1 / rho) + i / (num - 1) * (sigma_min ** (1 / rho)
                                                       - sigma_max ** (1 / rho))) ** rho


@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_follows_the_rho_formula(rho):
    # VE: sigma(t) = sigma_min (sigma_max / sigma_min)^t, so times have a closed form.
    ve, k = sde_lib.VESDE(), 12
    ends = _sigmas(ve, np.array([1.0, ve.t_min], np.float32))
    sigma = _karras(ends[0], ends[1], k + 1, rho)
    closed = np.log(sigma / ve.sigma_min) / np.log(ve.sigma_max / ve.sigma_min)
    grid = time_grid(ve, k, "karras", rho=rho)
    np.testing.assert_allclose(np.concatenate([grid[:, 0], grid[-1:, 1]]), closed, atol=2e-6)
    # VP (bisection): the sigmas of the grid times follow the formula.
    vp = sde_lib.VPSDE()
    grid = time_grid(vp, k, "karras", rho=rho)
    times = np.concatenate([grid[:, 0], grid[-1:, 1]])
    ends = _sigmas(vp, np.array([1.0, vp.t_min], np.float32))
    np.testing.assert_allclose(_sigmas(vp, times), _karras(ends[0], ends[1], k + 1, rho),
                               rtol=2e-5)
    # Discrete: each step is the one whose sigma is nearest (in log) to the formula's, when
    # no two collide (K = 10 of T = 1000).
    tau = time_grid(LINEAR, 10, "karras", rho=rho)[::-1, 0]
    table = log_snr(LINEAR, np.arange(1, 1001))
    targets = -np.log(_karras(np.exp(-table[-1]), np.exp(-table[0]), 10, rho))[::-1]
    np.testing.assert_array_equal(tau, 1 + np.argmin(np.abs(table[None] - targets[:, None]), 1))


def test_logsnr_is_uniform_in_lambda():
    for sde in SDES:
        grid = time_grid(sde, 10, "logsnr")
        lam = log_snr(sde, np.concatenate([grid[:, 0], grid[-1:, 1]]))
        np.testing.assert_allclose(np.diff(lam), np.full(10, (lam[-1] - lam[0]) / 10),
                                   rtol=1e-3)
    # VE: lambda = -log sigma is linear in t, so logsnr is the uniform grid.
    np.testing.assert_allclose(time_grid(SDES[1], 10, "logsnr"), time_grid(SDES[1], 10),
                               atol=1e-5)
    tau = time_grid(LINEAR, 10, "logsnr")[::-1, 0]
    lam = log_snr(LINEAR, tau)
    step = (lam[-1] - lam[0]) / 9
    table = log_snr(LINEAR, np.arange(1, 1001))
    # each step is the nearest one to its target: off by at most half the local spacing
    spacing = np.abs(np.gradient(table))[tau - 1]
    assert np.all(np.abs(lam - (lam[0] + step * np.arange(10))) <= 0.5 * spacing + 1e-9)


def test_logsnr_and_karras_on_the_flow_path_keep_t_1_on_top():
    # lambda(1) = -inf for the flow path: the rule runs from lambda(1 - t_min), the top is 1.
    from udm.processes import flow
    process = flow()
    for spacing in ("logsnr", "karras"):
        times = np.concatenate([time_grid(process, 8, spacing)[:, 0], [process.t_min]])
        assert times[0] == 1.0 and np.all(np.diff(times) < 0)
        assert np.isclose(times[-1], process.t_min)
    lam = log_snr(process, np.concatenate([time_grid(process, 8, "logsnr")[1:, 0],
                                           [process.t_min]]))
    np.testing.assert_allclose(np.diff(lam), np.full(7, np.diff(lam).mean()), rtol=1e-3)
    assert np.isclose(lam[0], np.log(process.t_min / (1 - process.t_min)) + np.diff(lam).mean(),
                      rtol=1e-3)


def test_bad_spacings_are_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="karras, leading, linspace, logsnr, quadratic, uniform"):
        time_grid(LINEAR, 10, "cubic")
    for name in ("leading", "linspace"):
        with pytest.raises(ValueError, match=f"spacing '{name}' is not defined in continuous "
                                             f"time; valid: karras, logsnr, quadratic, uniform"):
            time_grid(SDES[0], 4, name)
    with pytest.raises(ValueError, match="not an explicit sequence"):
        time_grid(SDES[0], 2, np.array([1, 2]))
    with pytest.raises(ValueError, match="needs a process with Gaussian marginals"):
        discrete_time_grid(1000, 10, "karras")
    with pytest.raises(ValueError, match="needs a process with Gaussian marginals"):
        time_grid(masking(seq_len=4, vocab_size=3), 2, "logsnr")
    # explicit sequences still work
    np.testing.assert_array_equal(time_grid(LINEAR, 3, np.array([5, 50, 1000]))[:, 0],
                                  [1000, 50, 5])


# --- zero terminal SNR (G5) ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["blog", "linear", "cosine"])
def test_zero_terminal_snr_rescale(name):
    plain = schedules.get_alpha_bar(name, 1000)
    rescaled = schedules.get_alpha_bar(name, 1000, zero_terminal_snr=True)
    assert rescaled[-1] == 0.0 and rescaled[1] == plain[1] and rescaled[0] == 1.0
    assert np.all(np.diff(rescaled) < 0)
    # an affine map of alpha_bar_1..T with slope alpha_bar_1 / (alpha_bar_1 - alpha_bar_T)
    slope = (rescaled[2:] - rescaled[1]) / (plain[2:] - plain[1])
    np.testing.assert_allclose(slope, plain[1] / (plain[1] - plain[-1]), rtol=1e-9)
    p = GaussianProcess.from_schedule(name, 1000, prediction="x0", zero_terminal_snr=True)
    assert float(p.alpha_bar[-1]) == 0.0 and float(p.beta_bar[-1]) == 1.0


def test_zero_terminal_snr_refuses_eps_prediction():
    with pytest.raises(ValueError, match="zero_terminal_snr=True needs prediction 'v' or 'x0'"):
        GaussianProcess.from_schedule("linear", 1000, zero_terminal_snr=True)


def _exact_output_law(p, grid, eta, mean, var):
    """Mean and variance of ddim's output for Gaussian data with the exact oracle: each step is
    x_s = A x_t + B + beta_bar_s sigma_tilde eps (as in tests/test_samplers.py)."""
    abar, bbar = np.asarray(p.alpha_bar, np.float64), np.asarray(p.beta_bar, np.float64)
    for t, s in grid:
        a_t, b_t, a_s, b_s = abar[t], bbar[t], abar[s], bbar[s]
        gain = a_t * S ** 2 / (a_t ** 2 * S ** 2 + b_t ** 2)
        st = eta * np.sqrt(1 - (a_t / a_s) ** 2) / b_t
        k = b_s * np.sqrt(max(1 - st ** 2, 0.0)) / b_t
        A = a_s * gain + k * (1 - a_t * gain)
        B = (a_s - k * a_t) * M * (1 - gain * a_t)
        mean, var = A * mean + B, A ** 2 * var + (b_s * st) ** 2
    return mean, var


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_zero_terminal_snr_ddim_with_v_prediction_samples_the_data(eta):
    """x_T ~ N(0, I) is then exactly p(x_T). A "network" outputs the exact v = (alpha_bar x_t -
    x0_hat) / beta_bar (at T: -x0_hat = -M), converted back by the process. The MC output (K = 50,
    n = 20000) matches the exactly propagated law (5 standard errors), whose mean is M and whose
    variance converges to S^2: relative error of the law at K = 50, 200, 1000: eta = 0 -0.17,
    -0.046, -0.0098; eta = 1 -0.29, -0.10, -0.025 (the same as without the rescale, to 1e-3)."""
    oracle = oracles.gaussian_posterior_mean(ZTSNR, M, S)

    def v_network(params, xt, t_batch):
        t = t_batch[0]
        a, b = ZTSNR.marginal(t)
        return (a * xt - oracle(params, xt, t)) / b

    predictor = network_predictor(ZTSNR, v_network)
    n = 20_000
    x_T = jax.random.normal(jax.random.key(0), (n, 1))
    x0 = np.asarray(make_sampler(ZTSNR, predictor, "ddim", num_steps=50, eta=eta)(
        None, x_T, key=jax.random.key(1)).x0, np.float64)
    assert np.all(np.isfinite(x0))
    mean, var = _exact_output_law(ZTSNR, discrete_time_grid(1000, 50), eta, 0.0, 1.0)
    assert abs(x0.mean() - mean) < 5 * np.sqrt(var / n)
    assert abs(x0.var() - var) < 5 * var * np.sqrt(2 / n)
    mean, var = _exact_output_law(ZTSNR, discrete_time_grid(1000, 1000), eta, 0.0, 1.0)
    assert abs(mean - M) < 1e-9 and abs(var / S ** 2 - 1) < 0.03


# --- dynamic thresholding (G6) -------------------------------------------------------------

def test_dynamic_thresholding_by_hand():
    x0_hat = jnp.array([[0.5, -0.2, 0.1, 0.3], [3.0, -1.0, 0.5, 2.0]])
    out = np.asarray(clip_estimate(x0_hat, SamplerOptions(threshold=0.5)))
    # example 0: every |x| <= 1, so s = 1 and it is untouched; example 1: the median of
    # |x| = (0.5, 1, 2, 3) is 1.5 (linear interpolation), so clip to [-1.5, 1.5] and divide.
    np.testing.assert_allclose(out[0], [0.5, -0.2, 0.1, 0.3], rtol=1e-6)
    np.testing.assert_allclose(out[1], [1.0, -1.0 / 1.5, 0.5 / 1.5, 1.0], rtol=1e-6)
    # p = 0.995 of example 1: s = 2 + (3 - 2) * (0.995 * 3 - 2) = 2.985
    out = np.asarray(clip_estimate(x0_hat, SamplerOptions(threshold=0.995)))
    np.testing.assert_allclose(out[1], np.array([2.985, -1.0, 0.5, 2.0]) / 2.985, rtol=1e-6)
    np.testing.assert_array_equal(clip_estimate(x0_hat, SamplerOptions()), x0_hat)
    with pytest.raises(ValueError, match="exclusive"):
        clip_estimate(x0_hat, SamplerOptions(clip_x0=1.0, threshold=0.9))
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
            make_sampler(LINEAR, lambda p, x, t: x, "ddim", num_steps=2, threshold=bad)


def test_thresholding_acts_on_every_estimate():
    """An estimate far outside [-1, 1] is pulled into it at every step (ddim with eta = 0 then
    returns the last thresholded estimate)."""
    out = make_sampler(LINEAR, lambda p, x, t: 5.0 * jnp.ones_like(x) + x, "ddim", num_steps=3,
                       threshold=0.9)(None, jnp.ones((2, 4)), key=jax.random.key(0))
    assert np.all(np.abs(np.asarray(out.x0)) <= 1.0 + 1e-6)


def test_sde_and_ode_solvers_follow_the_spacing():
    """ode_euler on the karras grid is the Euler loop of the probability-flow ODE (S10) over those
    times (numpy reference with the exact Gaussian score); it differs from the uniform grid's."""
    sde, k = SDES[0], 6
    predictor = oracles.gaussian_posterior_mean(sde, M, S)
    x_1 = np.array([[-1.0], [0.4], [2.0]])
    times = time_grid(sde, k, "karras")
    x = x_1.copy()
    for t, s in times:
        a, b = (float(v) for v in sde.marginal(jnp.float32(t)))
        score = -(x - a * M) / (a ** 2 * S ** 2 + b ** 2)
        x = x + (s - t) * (float(sde.f(t)) * x - 0.5 * float(sde.g2(t)) * score)
    run = lambda spacing: np.asarray(make_sampler(  # noqa: E731
        sde, predictor, "ode_euler", num_steps=k, spacing=spacing, denoise=False)(
        None, jnp.asarray(x_1, jnp.float32), key=jax.random.key(0)).x0)
    karras = run("karras")
    np.testing.assert_allclose(karras, x, rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(karras - run("uniform"))) > 1e-2
