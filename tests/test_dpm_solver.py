"""DPM-Solver, DPM-Solver++ and UniPC (docs/fast_solvers.md) against closed forms.

Gaussian data x_0 ~ N(M, S^2) with the exact predictor E[x_0 | x_t]: the probability-flow ODE is
then linear and its flow map is known, x_s = alpha_bar_s M + (v_s / v_t)^(1/2) (x_t - alpha_bar_t M)
with v = alpha_bar^2 S^2 + beta_bar^2, so each solver's error is exact (float64 throughout).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm import oracles
from udm.processes import GaussianProcess, PROCESSES
from udm.processes.sde import VPSDE
from udm.sampling import make_sampler, time_grid
from udm.sampling.dpm import multistep_orders, singlestep_groups

M, S = 0.5, 0.3
NEW = ["dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver_pp_2m", "dpm_solver_pp_3m",
       "sde_dpm_solver_pp_2m", "unipc_bh2"]
ODE_ORDERS = {"dpm_solver_1": 1, "dpm_solver_2": 2, "dpm_solver_3": 3, "dpm_solver_pp_2m": 2,
              "dpm_solver_pp_3m": 3, "unipc_bh2": 3}  # UniP-2 + UniC: one order above UniP-2
X_T = np.array([[-1.0], [0.3], [2.0]])


@dataclasses.dataclass(frozen=True)
class VP64(VPSDE):
    """The VP SDE with its marginals in the dtype of t (udm's casts t to float32), so that the
    float64 errors below are discretisation errors, not float32 rounding of alpha_bar(t)."""

    def integrated_beta(self, t):
        t = jnp.asarray(t, jnp.float64)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2


def flow_map(process, t, s, x_t):
    """The exact probability-flow ODE solution at s from x_t at t, for the Gaussian data."""
    a_t, b_t = (float(v) for v in process.marginal(t))
    a_s, b_s = (float(v) for v in process.marginal(s))
    return a_s * M + np.sqrt((a_s ** 2 * S ** 2 + b_s ** 2) / (a_t ** 2 * S ** 2 + b_t ** 2)) * (
        x_t - a_t * M)


def zero_terminal_snr_process(num_timesteps=100):
    """The linear schedule with alpha_bar rescaled to alpha_bar_T = 0 (lambda_T = -inf)."""
    a = np.asarray(GaussianProcess.from_schedule("linear", num_timesteps).alpha_bar, np.float64)
    a = (a - a[-1]) / (a[0] - a[-1])
    return GaussianProcess(jnp.asarray(a), jnp.asarray(np.sqrt(1.0 - a ** 2)))


def _slope(ks, errors):
    return -np.polyfit(np.log(ks), np.log(errors), 1)[0]


# --- order of convergence -----------------------------------------------------------------------

def test_order_of_convergence_on_a_vp_sde():
    # t_min = 0.25 keeps the lambda steps of the uniform t grid moderate (lambda from -5 to -0.6),
    # so the asymptotic regime is reached at K = 12; the end state (denoise=False) is compared.
    ks = np.array([12, 24, 48])
    with jax.enable_x64(True):
        sde = VP64(t_min=0.25)
        pred = oracles.gaussian_posterior_mean(sde, M, S)
        slopes, table = {}, {}
        for name, order in ODE_ORDERS.items():
            errors = []
            for k in ks:
                out = make_sampler(sde, pred, name, num_steps=int(k), denoise=False,
                                   lower_order_final=False)(
                    None, jnp.asarray(X_T), key=jax.random.PRNGKey(0))
                assert int(out.nfe) == k
                errors.append(np.max(np.abs(np.asarray(out.x0) - flow_map(sde, 1.0, 0.25, X_T))))
            slopes[name], table[name] = _slope(ks, errors), errors
        print({n: (round(slopes[n], 2), ["%.1e" % e for e in table[n]]) for n in slopes})
        for name, order in ODE_ORDERS.items():
            assert abs(slopes[name] - order) < 0.3, (name, slopes[name], table[name])


def test_float32_matches_the_float64_error():
    # The library's own float32 VP SDE: the error is the discretisation error measured in float64
    # (1.2e-4 for dpm_solver_3 at K = 24), not rounding.
    sde = VPSDE(t_min=0.25)
    out = make_sampler(sde, oracles.gaussian_posterior_mean(sde, M, S), "dpm_solver_3",
                       num_steps=24, denoise=False)(None, jnp.asarray(X_T, jnp.float32),
                                                    key=jax.random.PRNGKey(0))
    assert out.x0.dtype == jnp.float32
    error = np.max(np.abs(np.asarray(out.x0, np.float64) - flow_map(sde, 1.0, 0.25, X_T)))
    assert error < 2e-4, error


@pytest.mark.parametrize("name,order", [("dpm_solver_2", 2), ("dpm_solver_pp_3m", 3)])
def test_order_of_convergence_on_a_discrete_chain(name, order):
    # Uniform sub-sequences of the linear schedule (K = 20, 40: tau = 50 i, 25 i), compared at
    # tau = 200, a grid point ending a step of both solvers (the last step, to 0, is DDIM's).
    ks = np.array([20, 40])
    with jax.enable_x64(True):
        p = GaussianProcess.from_schedule("linear", 1000, dtype=jnp.float64)
        pred = oracles.gaussian_posterior_mean(p, M, S)
        errors = []
        for k in ks:
            out = make_sampler(p, pred, name, num_steps=int(k), return_path=True)(
                None, jnp.asarray(X_T), key=jax.random.PRNGKey(0))
            i = int(0.8 * k) - 1
            assert time_grid(p, int(k))[i, 1] == 200
            errors.append(np.max(np.abs(np.asarray(out.path[i]) - flow_map(p, 1000, 200, X_T))))
        slope = _slope(ks, errors)
        print(name, round(slope, 2), errors)
        assert abs(slope - order) < 0.35, (name, slope, errors)


# --- DPM-Solver-1 is DDIM; the endpoints -----------------------------------------------------

def test_dpm_solver_1_is_ddim_on_a_vp_sde():
    with jax.enable_x64(True):
        sde = VP64()
        pred = oracles.gaussian_posterior_mean(sde, M, S)
        x_T = jnp.asarray(X_T)
        ddim = make_sampler(sde, pred, "ddim", num_steps=9)(None, x_T, key=jax.random.PRNGKey(0))
        ours = make_sampler(sde, pred, "dpm_solver_1", num_steps=9)(None, x_T,
                                                                    key=jax.random.PRNGKey(0))
        assert int(ours.nfe) == int(ddim.nfe) == 10
        np.testing.assert_allclose(np.asarray(ours.x0), np.asarray(ddim.x0), rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def zero_snr_runs():
    """Every new sampler (and ddim) on K = 10 steps of a zero-terminal-SNR chain, float64."""
    with jax.enable_x64(True):
        p = zero_terminal_snr_process()
        assert float(p.alpha_bar[-1]) == 0.0 and float(p.beta_bar[0]) == 0.0
        pred = oracles.gaussian_posterior_mean(p, M, S)
        x_T = jnp.asarray(np.linspace(-2.0, 2.0, 5)[:, None])
        runs = {}
        for name in NEW + ["ddim"]:
            sample = make_sampler(p, pred, name, num_steps=10, return_path=True)
            runs[name] = sample(None, x_T, key=jax.random.PRNGKey(0))
            if name == "sde_dpm_solver_pp_2m":
                runs["sde_same_key"] = sample(None, x_T, key=jax.random.PRNGKey(0))
                runs["sde_other_key"] = sample(None, x_T, key=jax.random.PRNGKey(1))
    return p, pred, runs


def test_dpm_solver_1_is_ddim_from_lambda_minus_infinity(zero_snr_runs):
    _, _, runs = zero_snr_runs
    np.testing.assert_allclose(np.asarray(runs["dpm_solver_1"].path),
                               np.asarray(runs["ddim"].path), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NEW)
def test_steps_from_lambda_minus_infinity_to_zero_are_finite(zero_snr_runs, name):
    # lambda_T = -inf at the top, lambda_0 = +inf at the end: every state is finite, and the last
    # step returns DDIM's limit, x_0 = x0_hat(x_{tau_1}, tau_1).
    p, pred, runs = zero_snr_runs
    out = runs[name]
    assert int(out.nfe) == 10 and out.path.shape == (10, 5, 1)
    assert np.all(np.isfinite(np.asarray(out.path)))
    with jax.enable_x64(True):
        tau_1 = int(time_grid(p, 10)[-1, 0])
        np.testing.assert_allclose(np.asarray(out.x0), np.asarray(pred(None, out.path[-2], tau_1)),
                                   rtol=1e-12, atol=1e-12)


def test_sde_solver_noise_is_set_by_the_key(zero_snr_runs):
    _, _, runs = zero_snr_runs
    same, other = runs["sde_same_key"].x0, runs["sde_other_key"].x0
    np.testing.assert_array_equal(np.asarray(runs["sde_dpm_solver_pp_2m"].x0), np.asarray(same))
    assert np.min(np.abs(np.asarray(same) - np.asarray(other))) > 1e-6


# --- structure: step layouts, one trace, refusals -------------------------------------------

def test_singlestep_groups_and_multistep_orders():
    assert singlestep_groups(8, 3, discrete=False) == [3, 3, 2]
    assert singlestep_groups(16, 3, discrete=False) == [3, 3, 3, 3, 2, 2]  # no lone order-1 step
    assert singlestep_groups(10, 3, discrete=True) == [3, 3, 3, 1]  # the step to 0 on its own
    assert singlestep_groups(7, 2, discrete=True) == [2, 2, 2, 1]
    assert singlestep_groups(1, 3, discrete=True) == [1]
    for k in range(1, 12):
        for order in (1, 2, 3):
            for discrete in (False, True):
                groups = singlestep_groups(k, order, discrete=discrete)
                assert sum(groups) == k and max(groups) <= order
    np.testing.assert_array_equal(multistep_orders(5, 3, discrete=True), [1, 2, 3, 3, 1])
    np.testing.assert_array_equal(multistep_orders(4, 2, discrete=False), [1, 2, 2, 2])
    np.testing.assert_array_equal(multistep_orders(6, 3, discrete=False, lower_order_final=True),
                                  [1, 2, 3, 3, 2, 1])
    np.testing.assert_array_equal(multistep_orders(15, 3, discrete=False, lower_order_final=True),
                                  multistep_orders(15, 3, discrete=False))



@pytest.mark.parametrize("continuous", [False, True])
def test_each_sampler_traces_the_predictor_a_fixed_number_of_times(continuous):
    process = VPSDE() if continuous else GaussianProcess.from_schedule("linear", 100)
    oracle = oracles.gaussian_posterior_mean(process, M, S)
    traces = []

    def counting_predictor(params, xt, t):
        traces.append(1)  # runs only while tracing
        return oracle(params, xt, t)

    for name in NEW:
        counts = []
        for k in (7, 30):
            traces.clear()
            sample = make_sampler(process, counting_predictor, name, num_steps=k, jit=False)
            jax.eval_shape(lambda x: sample(None, x, key=jax.random.PRNGKey(0)),
                           jnp.zeros((2, 1)))
            counts.append(len(traces))
        # the scan body once, plus the final estimate at t_min in continuous time
        assert counts == [1 + continuous] * 2, (name, counts)


@pytest.mark.parametrize("process_name", ["masking", "cold_blur"])
def test_non_gaussian_processes_are_refused_naming_the_valid_samplers(process_name):
    kwargs = {"masking": dict(seq_len=6, vocab_size=5), "cold_blur": dict(num_timesteps=5)}
    process = PROCESSES.get(process_name)(**kwargs[process_name])
    for name in NEW:
        with pytest.raises(ValueError, match=f"sampler '{name}' needs a process with Gaussian "
                                             f"marginals.*samples with: .*baseline"):
            make_sampler(process, lambda params, xt, t: xt, name, num_steps=2)


def test_variance_tables_are_refused():
    p = GaussianProcess.from_schedule("linear", 100)
    pred = oracles.gaussian_posterior_mean(p, M, S)
    for name in NEW:
        with pytest.raises(ValueError, match="sigma_bar / std_cap"):
            make_sampler(p, pred, name, num_steps=5, sigma_bar=jnp.zeros(101))
