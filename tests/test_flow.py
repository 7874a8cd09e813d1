"""Flow matching / rectified flow (docs/flow_matching.md): the path, its correct step, its ODE, its loss.

Ground truth from Gaussian and Gaussian-mixture data, whose E[x_0 | x_t] is known in closed form
(`udm.oracles`, read with the flow's marginals alpha_bar = 1 - t, beta_bar = t): with it the
probability-flow ODE must carry N(0, I) to the data law, which is checked by Monte Carlo with
tolerances from the standard error.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm import oracles
from udm.losses import make_loss_fn
from udm.processes import PROCESSES, FlowProcess
from udm.sampling import make_sampler, network_predictor, ode

MU, S = 0.5, 0.3
MIX_MEANS, MIX_STDS, MIX_WEIGHTS = jnp.array([[-1.0], [1.5]]), jnp.array([0.3, 0.5]), jnp.array([0.3, 0.7])
N = 4000


def _phi(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2)))


def test_flow_is_registered_with_its_marginals():
    process = PROCESSES.get("flow")(t_min=1e-3)
    assert isinstance(process, FlowProcess) and process.prediction == "velocity"
    (a, b), (da, db) = ode.marginal_rates(process, jnp.float32(0.25))
    assert (float(a), float(b), float(da), float(db)) == (0.75, 0.25, -1.0, 1.0)
    assert not process.capabilities.reverse_sde and process.capabilities.gaussian_marginals


def test_ode_carries_the_prior_to_gaussian_data():
    """ode_heun with the exact x_0 predictor of N(MU, S^2) maps N(0, 1) draws to N(MU, S^2).

    The flow map is deterministic, so the samples are as good as N i.i.d. draws of the data:
    mean SE = S / sqrt(N) = 0.0047, std SE = S / sqrt(2N) = 0.0034; 4 SE, plus 1e-3 for the
    discretisation (Heun, 40 steps: the map is off by at most 9.5e-4 here, measured). Measured:
    mean off by -0.0065 (1.4 SE, the prior draws' own sample mean), std by +0.0036 (1.1 SE).
    """
    process = FlowProcess()
    x_1 = jax.random.normal(jax.random.PRNGKey(0), (N, 1))
    out = make_sampler(process, oracles.gaussian_posterior_mean(process, MU, S), "ode_heun",
                       num_steps=40)(None, x_1, key=jax.random.PRNGKey(1))
    assert int(out.nfe) == 2 * 40 + 1 and bool(out.success)
    x = np.asarray(out.x0, np.float64)
    assert abs(x.mean() - MU) < 4 * S / math.sqrt(N) + 1e-3, x.mean()
    assert abs(x.std() - S) < 4 * S / math.sqrt(2 * N) + 1e-3, x.std()
    # The linear flow map of Gaussian data, x_0 = MU + S x_1 (V_t = (1-t)^2 S^2 + t^2, V_1 = 1),
    # up to the final x_0 estimate at t_min: a check tighter than the Monte Carlo one.
    np.testing.assert_allclose(x, MU + S * np.asarray(x_1, np.float64), atol=2e-3)


def test_ode_carries_the_prior_to_a_two_component_mixture():
    """The mixture 0.3 N(-1, 0.3^2) + 0.7 N(1.5, 0.5^2): fraction of samples above 0 and the mean
    on each side match the exact values (truncated-normal moments) within 4 SE + 0.01."""
    process = FlowProcess()
    predictor = oracles.gaussian_mixture_posterior_mean(process, MIX_MEANS, MIX_STDS, MIX_WEIGHTS)
    x_1 = jax.random.normal(jax.random.PRNGKey(2), (N, 1))
    out = make_sampler(process, predictor, "ode_heun", num_steps=100)(None, x_1,
                                                                        key=jax.random.PRNGKey(3))
    x = np.asarray(out.x0, np.float64)[:, 0]
    means, stds, weights = (np.asarray(v, np.float64).ravel()
                            for v in (MIX_MEANS, MIX_STDS, MIX_WEIGHTS))
    p_pos = sum(w * _Phi(m / s) for m, s, w in zip(means, stds, weights))
    above = sum(w * (m * _Phi(m / s) + s * _phi(m / s)) for m, s, w in zip(means, stds, weights))
    below = sum(w * (m * _Phi(-m / s) - s * _phi(m / s)) for m, s, w in zip(means, stds, weights))
    pos = x > 0
    frac_se = math.sqrt(p_pos * (1 - p_pos) / N)
    assert abs(pos.mean() - p_pos) < 4 * frac_se + 0.01, (pos.mean(), p_pos)
    for side, exact_mean in ((pos, above / p_pos), (~pos, below / (1 - p_pos))):
        se = x[side].std() / math.sqrt(side.sum())
        assert abs(x[side].mean() - exact_mean) < 4 * se + 0.01, (x[side].mean(), exact_mean)


@pytest.mark.parametrize("t,s", [(0.8, 0.3), (1.0, 0.5)])
def test_correct_step_keeps_the_marginals(t, s):
    """x_t ~ p(x_t | x_0) for a fixed x_0, then correct(t, s, x_t, x_0, sigma_tilde) ~ N((1-s) x_0, s^2)
    for every sigma_tilde in {0, 0.5, 1} (FM3); 4 SE with 20000 entries."""
    process = FlowProcess()
    x0 = jnp.full((20000,), 0.7)
    xt = process.forward(t, x0, jax.random.normal(jax.random.PRNGKey(4), x0.shape))
    correct = jax.jit(lambda st, key: process.correct(t, s, xt, x0, sigma_tilde=st, key=key))
    for i, sigma_tilde in enumerate((0.0, 0.5, 1.0)):
        x = np.asarray(correct(jnp.float32(sigma_tilde), jax.random.PRNGKey(10 + i)), np.float64)
        assert abs(x.mean() - (1 - s) * 0.7) < 4 * s / math.sqrt(x.size), (sigma_tilde, x.mean())
        assert abs(x.std() - s) < 4 * s / math.sqrt(2 * x.size), (sigma_tilde, x.std())


def test_ddpm_sigma_tilde_gives_the_exact_posterior():
    """With sigma_tilde = ddpm_sigma_tilde(t, s) the correct step draws from q(x_s | x_t, x_0) (FM4):
    its mean and variance match Gaussian conditioning of x_s ~ N((1-s) x_0, s^2),
    x_t | x_s ~ N(a x_s, v), a = (1-t)/(1-s), v = t^2 - a^2 s^2 (float64 closed forms)."""
    process = FlowProcess()
    x0, xt = 0.4, -1.3
    for t, s in ((0.9, 0.2), (1.0, 0.7), (0.05, 0.01)):
        a, v = (1 - t) / (1 - s), t ** 2 - ((1 - t) / (1 - s)) ** 2 * s ** 2
        post_var = 1.0 / (1.0 / s ** 2 + a ** 2 / v)
        post_mean = post_var * ((1 - s) * x0 / s ** 2 + a * xt / v)
        sigma = float(process.ddpm_sigma_tilde(t, s))
        eps_inferred = (xt - (1 - t) * x0) / t
        mean = (1 - s) * x0 + s * math.sqrt(1 - sigma ** 2) * eps_inferred
        np.testing.assert_allclose([mean, (s * sigma) ** 2], [post_mean, post_var], rtol=1e-5)


def test_ode_ddim_is_euler_on_the_velocity():
    """ode_ddim on the flow path is rectified flow's Euler sampler x_s = x_t + (s - t) v with
    v = eps_hat - x0_hat = (x_t - x0_hat) / t (FM5): an identity, checked in float64 against
    ode_euler and a hand-written loop, with a non-linear (mixture) predictor."""
    with jax.enable_x64(True):
        process = FlowProcess()
        predictor = oracles.gaussian_mixture_posterior_mean(
            process, MIX_MEANS.astype(jnp.float64), MIX_STDS.astype(jnp.float64),
            MIX_WEIGHTS.astype(jnp.float64))
        x_1 = jnp.asarray(np.random.default_rng(0).standard_normal((64, 1)))
        k = 12
        run = lambda name: np.asarray(make_sampler(process, predictor, name, num_steps=k,
                                                   denoise=False)(None, x_1, key=None).x0)
        ddim, euler = run("ode_ddim"), run("ode_euler")
        times = np.asarray(jnp.linspace(1.0, process.t_min, k + 1, dtype=jnp.float32), np.float64)
        x = x_1
        for t, s in zip(times[:-1], times[1:]):
            x = x + (s - t) * (x - predictor(None, x, jnp.float64(t))) / t
        assert x.dtype == jnp.float64 and float(np.max(np.abs(np.asarray(x) - x_1))) > 0.5
        np.testing.assert_allclose(ddim, euler, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ddim, np.asarray(x), rtol=0, atol=1e-12)


def test_ode_euler_steps_with_the_networks_velocity():
    """A velocity-predicting network through network_predictor: x0_hat = x_t - t v (FM2), and the
    ODE velocity eps_hat - x0_hat (FM5) gives back v, so ode_euler steps x_s = x_t + (s - t) v."""
    process = FlowProcess(prediction="velocity")
    apply_fn = lambda params, xt, t_input: params * jnp.sin(xt) + (t_input / 999.0)[:, None]
    predictor = network_predictor(process, apply_fn)
    x_1 = jax.random.normal(jax.random.PRNGKey(8), (16, 3))
    k = 4
    out = make_sampler(process, predictor, "ode_euler", num_steps=k, denoise=False)(
        jnp.float32(0.7), x_1, key=None).x0
    times = np.asarray(jnp.linspace(1.0, process.t_min, k + 1, dtype=jnp.float32))
    x = x_1
    for t, s in zip(times[:-1], times[1:]):
        x = x + (s - t) * apply_fn(0.7, x, jnp.full((x.shape[0],), 999.0 * t))
    np.testing.assert_allclose(out, x, rtol=0, atol=2e-5)


def test_velocity_loss_of_the_exact_predictor_is_the_posterior_variance():
    """make_loss_fn trains the flow: with the exact velocity of N(MU, S^2) data the expected
    loss is E_t[Var[eps - x_0 | x_t]] = E_t[S^2 / ((1 - t)^2 S^2 + t^2)] (FM7), t ~ U(t_min, 1);
    the Monte Carlo loss (N examples) is within 5 SE of the integral."""
    process = FlowProcess()
    x0_fn = oracles.gaussian_posterior_mean(process, MU, S)

    def exact_velocity(params, xt, t_input, key):
        del params, key
        t = (t_input / process.time_input_scale)[:, None]
        x0_hat = jax.vmap(lambda x, tt: x0_fn(None, x, tt))(xt, t)
        return (xt - x0_hat) / t

    loss_fn = jax.jit(make_loss_fn(process, exact_velocity))
    x0 = MU + S * jax.random.normal(jax.random.PRNGKey(5), (N, 1))
    loss, aux = loss_fn(None, x0, key=jax.random.PRNGKey(6))
    grid = np.linspace(process.t_min, 1.0, 100001)
    expected = np.trapezoid(S ** 2 / ((1 - grid) ** 2 * S ** 2 + grid ** 2), grid) / (1 - process.t_min)
    # Per-example loss: a scaled chi-square with 1 degree of freedom, std <= sqrt(2) max(S^2/V_t) = sqrt(2).
    assert abs(float(loss) - expected) < 5 * math.sqrt(2.0) / math.sqrt(N), (float(loss), expected)
    assert float(aux["unweighted_loss"]) == pytest.approx(float(loss))


def test_logit_normal_times_stay_in_range():
    process = FlowProcess(t_min=0.01)
    t, ratio = process.sample_time(jax.random.PRNGKey(7), 4000, time_sampling="logit_normal")
    t = np.asarray(t)
    assert ratio is None and t.min() >= 0.01 and t.max() <= 1.0
    assert abs(np.median(t) - (0.01 + 0.99 * 0.5)) < 0.03     # sigmoid(N(0, 1)) has median 1/2


def test_bad_options_are_refused_naming_the_valid_choices():
    with pytest.raises(ValueError, match="unknown prediction target 'score'.*valid: velocity, x0, eps"):
        FlowProcess(prediction="score")
    for t_min in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"t_min must be in \(0, 1\)"):
            FlowProcess(t_min=t_min)
    with pytest.raises(ValueError, match="unknown hyperparameters \\['sigma_max'\\] for the flow"):
        PROCESSES.get("flow")(sigma_max=3.0)
    process = FlowProcess()
    with pytest.raises(ValueError, match="unknown time sampling 'importance'.*valid: uniform, "
                                         "logit_normal"):
        process.check_loss_options("none", "importance")
    with pytest.raises(ValueError, match="unknown loss weighting 'likelihood'.*valid: none"):
        process.check_loss_options("likelihood", "uniform")
    predictor = oracles.gaussian_posterior_mean(process, MU, S)
    for name in ("em", "pc"):
        with pytest.raises(ValueError, match=f"sampler '{name}' needs a reverse-time SDE.*"
                                             f"FlowProcess samples with: .*ode_euler"):
            make_sampler(process, predictor, name, num_steps=5)
