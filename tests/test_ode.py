"""The probability-flow ODE (S10) and its solvers: order, DDIM, invertibility, NFE (docs/sde_ode.md).

For Gaussian data x_0 ~ N(M, S^2) the flow map is linear and known: with V_t = alpha_bar_t^2 S^2
+ beta_bar_t^2, x_t = alpha_bar_t M + sqrt(V_t / V_1) (x_1 - alpha_bar_1 M). Mixtures use the exact
posterior mean of `udm.oracles` read at continuous times.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from udm import oracles
from udm.processes import GaussianProcess
from udm.processes import sde as sde_lib
from udm.sampling import make_sampler, ode

M, S = 0.5, 0.3
MEANS = jnp.array([[-1.5, 0.0], [1.0, 1.0], [1.0, -1.5]])      # a 2-D, 3-component mixture
STDS = jnp.array([0.4, 0.3, 0.5])
WEIGHTS = jnp.array([0.2, 0.5, 0.3])


def gaussian_score(sde):
    def score(params, x, t):
        del params
        a, b = sde.marginal(t)
        return -(x - a * M) / (a ** 2 * S ** 2 + b ** 2)

    return score


def mixture_x0(sde):
    """E[x_0 | x_t] of the mixture, `(params, x [B, 2], t float) -> [B, 2]`."""
    return oracles.gaussian_mixture_posterior_mean(sde, MEANS, STDS, WEIGHTS)


def marginal64(sde, t):
    a, b = sde.marginal(jnp.float32(t))
    return float(a), float(b)


# --- order of the fixed-step solvers -------------------------------------------------------

@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("ddim", 1)])
def test_fixed_step_order_of_convergence(method, order):
    sde = sde_lib.VPSDE()
    t_end = 1e-2
    a1, b1 = marginal64(sde, 1.0)
    a_t, b_t = marginal64(sde, t_end)
    v1, v_t = a1 ** 2 * S ** 2 + b1 ** 2, a_t ** 2 * S ** 2 + b_t ** 2
    x_1 = a1 * M + np.sqrt(v1) * np.array([[-2.0], [-0.5], [0.3], [1.5]])
    exact = a_t * M + np.sqrt(v_t / v1) * (x_1 - a1 * M)        # the flow map, float64
    # Errors from 1e-1 down to 1e-4 (Heun): far above float32 rounding of x ~ 1.
    ks = np.array([16, 32, 64, 128]) if order == 2 else np.array([32, 64, 128, 256])
    errors = []
    for k in ks:
        solve = ode.make_fixed_step_solver(sde, gaussian_score(sde), num_steps=int(k),
                                           method=method, t1=t_end)
        out = solve(None, jnp.asarray(x_1, jnp.float32))
        assert int(out.nfe) == (2 if method == "heun" else 1) * k and bool(out.success)
        errors.append(np.max(np.abs(np.asarray(out.x, np.float64) - exact)))
    slope = np.polyfit(np.log(ks), np.log(errors), 1)[0]
    assert abs(slope + order) < 0.3, (method, slope, errors)


# --- DDIM is Euler in (x / alpha_bar, beta_bar / alpha_bar) ------------------------------------

@pytest.mark.parametrize("name", ["ddim", "improved"])
def test_correct_step_on_an_sde_is_the_ddim_solver(name):
    """One sampler family: the UDM correct step with sigma_tilde = 0 on the SDE's own float grid
    (`ddim`, eta = 0, and `improved`) takes the same steps as `ode_ddim` (D7), with the same final
    x_0 estimate at t_min. The same maths rounded differently in float32 (the correct step infers
    eps from x0_hat, the solver from the score): measured max difference 2.5e-5 over 128 entries,
    where the mixture's posterior is steep; a wrong step would differ by O(1)."""
    sde = sde_lib.VPSDE()
    predictor = mixture_x0(sde)
    x_1 = jnp.asarray(np.random.default_rng(1).standard_normal((64, 2)), jnp.float32)
    key = jax.random.PRNGKey(0)
    via_correct = make_sampler(sde, predictor, name, num_steps=25)(None, x_1, key=key)
    via_ode = make_sampler(sde, predictor, "ode_ddim", num_steps=25)(None, x_1, key=key)
    assert int(via_correct.nfe) == int(via_ode.nfe) == 26
    np.testing.assert_allclose(via_correct.x0, via_ode.x0, atol=1e-4)


def test_ddim_solver_equals_discrete_ddim():
    """`ode_ddim` on the grid 1, 1 - 1/K, ..., 0 is the discrete DDIM(eta = 0) sampler of a
    GaussianProcess whose index i is the grid time i / K (D7 of docs/ddpm_ddim.md; docs/sde_ode.md §2.4, §5.5)."""
    sde = sde_lib.VPSDE()
    k = 20
    x0_fn = mixture_x0(sde)
    times = jnp.linspace(1.0, 0.0, k + 1, dtype=jnp.float32)[::-1]     # the solver's grid, reversed
    alpha_bar, beta_bar = sde.marginal(times)
    assert float(alpha_bar[0]) == 1.0 and float(beta_bar[0]) == 0.0     # index 0 is data
    process = GaussianProcess(alpha_bar=alpha_bar, beta_bar=beta_bar, prediction="eps")
    discrete = make_sampler(process, lambda params, x, i: x0_fn(params, x, times[i]),
                            num_steps=k, name="ddim", eta=0.0)
    continuous = ode.make_fixed_step_solver(sde, sde_lib.as_score_fn(sde, x0_fn, "x0"),
                                            num_steps=k, method="ddim", t0=1.0, t1=0.0)
    x_1 = jnp.asarray(np.random.default_rng(0).standard_normal((64, 2)), jnp.float32)
    got = continuous(None, x_1).x
    want = discrete(None, x_1, key=jax.random.PRNGKey(0)).x0
    # Same maths, different float32 rounding (measured max difference 3e-6 for |x| <= 2.3).
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    assert float(jnp.max(jnp.abs(got - x_1))) > 0.5               # the solve moved the points


@pytest.fixture(scope="module")
def mixture_flow():
    """One adaptive probability-flow solve 1 -> t_min of a 2-D mixture, shared by two tests."""
    sde = sde_lib.VPSDE()
    score = sde_lib.as_score_fn(sde, mixture_x0(sde), "x0")
    x_1 = jnp.asarray(np.random.default_rng(1).standard_normal((32, 2)), jnp.float32)
    solve = jax.jit(ode.make_adaptive_solver(sde, score, rtol=1e-5, atol=1e-5))
    return sde, score, x_1, ode.check_success(solve(None, x_1))


def test_euler_and_ddim_converge_to_the_ode_solution(mixture_flow):
    sde, score, x_1, reference = mixture_flow
    errors = {}
    for method in ["euler", "ddim"]:
        for k in [25, 400]:
            out = ode.make_fixed_step_solver(sde, score, num_steps=k, method=method)(None, x_1)
            errors[method, k] = float(jnp.max(jnp.abs(out.x - reference.x)))
    for method in ["euler", "ddim"]:
        # First order: 16x the steps, ~16x smaller error (>= 6x asked).
        assert errors[method, 400] < errors[method, 25] / 6, errors
        assert errors[method, 400] < 0.02, errors
    # Hence the two discretisations approach each other (and the same limit).
    gap = lambda k: errors["euler", k] + errors["ddim", k]
    assert gap(400) < gap(25) / 6


# --- invertibility, NFE and failure of the adaptive solver ---------------------------------------

def test_probability_flow_is_invertible(mixture_flow):
    sde, score, x_1, forward = mixture_flow
    backward = ode.make_adaptive_solver(sde, score, t0=sde.t_min, t1=1.0)
    back = ode.check_success(jax.jit(backward)(None, forward.x))
    assert float(jnp.max(jnp.abs(forward.x - x_1))) > 0.5        # a non-trivial map
    rel = float(jnp.max(jnp.abs(back.x - x_1)) / jnp.max(jnp.abs(x_1)))
    assert rel < 1e-3, rel


def test_adaptive_nfe_counts_every_evaluation_and_failure_is_reported():
    sde = sde_lib.VPSDE()
    exact = gaussian_score(sde)
    calls = []

    def counting_score(params, x, t):
        # Runs on every evaluation of the compiled solve, not only while tracing.
        jax.debug.callback(lambda: calls.append(1))
        return exact(params, x, t)

    def run(**options):
        calls.clear()
        out = jax.block_until_ready(
            jax.jit(ode.make_adaptive_solver(sde, counting_score, **options))(None, x_1))
        jax.effects_barrier()
        return out, len(calls)

    x_1 = jnp.asarray(np.random.default_rng(2).standard_normal((8, 3)), jnp.float32)
    out, evaluations = run()
    assert bool(out.success) and (int(out.nfe) - 1) % 6 == 0
    assert int(out.nfe) == evaluations, (int(out.nfe), evaluations)
    assert ode.check_success(out) is out

    out, evaluations = run(max_steps=2)
    assert not bool(out.success)
    assert bool(jnp.all(jnp.isnan(out.x))) and out.x.shape == x_1.shape
    assert int(out.nfe) == 1 + 6 * 2 == evaluations
    with pytest.raises(RuntimeError, match="failed after 13 function evaluations"):
        ode.check_success(out, "probability-flow solve")

    # A first step so large that the controller rejects it. Left to itself, diffrax's FSAL
    # Runge-Kutta re-evaluates the first stage on every retry of a rejected first step
    # (diffrax/_solver/runge_kutta.py: eval_first_stage = first_step | made_jump), which made
    # the count 79 for 80 real evaluations here; the solver hands diffrax f(t0) instead.
    out, evaluations = run(dt0=-0.5)
    assert bool(out.success)
    assert int(out.nfe) == evaluations, (int(out.nfe), evaluations)


def test_ode_errors_list_valid_names():
    sde = sde_lib.VPSDE()
    score = gaussian_score(sde)
    with pytest.raises(ValueError, match="euler, heun, ddim"):
        ode.make_fixed_step_solver(sde, score, num_steps=10, method="rk4")
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        ode.make_fixed_step_solver(sde, score, num_steps=0)
    with pytest.raises(ValueError, match="dopri5, tsit5"):
        ode.make_adaptive_solver(sde, score, solver="rk45")
