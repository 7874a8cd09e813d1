"""The probability-flow ODE of any process with Gaussian marginals (docs/sde_ode.md S10), and its solvers.

The velocity is written with the marginals alone (docs/flow_matching.md (FM5)):

    dx/dt = alpha_bar'(t) x0_hat + beta_bar'(t) eps_hat,   eps_hat = (x - alpha_bar x0_hat) / beta_bar,

which equals f_t x - 1/2 g_t^2 score (S10) for every linear SDE, but needs neither f_t nor g_t:
for the flow-matching path it is eps_hat - x0_hat, finite at t = 1 where f_t and g_t^2 diverge.
alpha_bar' and beta_bar' come from `process.marginal` by forward-mode autodiff. The solvers take a
score function (kind="score": Tweedie gives x0_hat = (x + beta_bar^2 score) / alpha_bar and
eps_hat = -beta_bar score, so alpha_bar must be > 0 on the grid: an SDE) or an x_0 predictor
(kind="x0", what the registered samplers pass: any Gaussian-marginal process, the flow included).

Fixed-step Euler and Heun run as one `jax.lax.scan` over a uniform time grid; "ddim" steps
x_s = alpha_bar_s x0_hat + beta_bar_s eps_hat, Euler in the variables of docs/sde_ode.md §2.4,
d(x / alpha_bar) = eps(x, t) d(beta_bar / alpha_bar), whose steps are exactly DDIM's (D7); on the
flow path it is Euler on the velocity (FM5). Adaptive Runge-Kutta (Tsit5 / Dopri5 with a PID
step-size controller) runs through diffrax and reports its number of function evaluations and
whether it succeeded. The solvers integrate in either direction (1 -> t_min samples, t_min -> 1
encodes).
"""
from typing import Any, Callable, NamedTuple, Optional

import diffrax
import jax
import jax.numpy as jnp

from udm.registry import Registry

Array = Any

FIXED_STEP_METHODS = ("euler", "heun", "ddim")
# What the function handed to a solver returns: the score of p_t, or an x_0 estimate.
PREDICTOR_KINDS = ("score", "x0")
ADAPTIVE_SOLVERS = Registry("adaptive ODE solver")
ADAPTIVE_SOLVERS.register("tsit5")(diffrax.Tsit5)
ADAPTIVE_SOLVERS.register("dopri5")(diffrax.Dopri5)


class ODESolution(NamedTuple):
    """Result of an ODE solve: the end state, the number of drift evaluations, and success."""
    x: Array
    nfe: Array
    success: Array


def marginal_rates(process, t):
    """((alpha_bar, beta_bar), (alpha_bar', beta_bar')) at time t, by forward-mode autodiff."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.float32)
    return jax.jvp(process.marginal, (t,), (jnp.ones_like(t),))


def make_denoiser(process, fn: Callable, kind: str = "score") -> Callable:
    """`denoise(params, x, t) -> (x0_hat, eps_hat)` from a score function or an x_0 predictor.

    Args:
      process: a process with Gaussian marginals (`marginal(t) -> (alpha_bar, beta_bar)`).
      fn: `(params, x [B, ...], t scalar) -> [B, ...]`, a score (kind="score") or x0_hat ("x0").
      kind: "score" (Tweedie: x0_hat = (x + beta_bar^2 score) / alpha_bar, eps_hat =
        -beta_bar score; needs alpha_bar > 0) or "x0" (eps_hat = (x - alpha_bar x0_hat) /
        beta_bar; needs beta_bar > 0, true on [t_min, 1]).
    """
    if kind not in PREDICTOR_KINDS:
        raise ValueError(f"unknown predictor kind {kind!r}; valid: {', '.join(PREDICTOR_KINDS)}")

    def denoise(params, x, t):
        alpha_bar, beta_bar = process.marginal(t)
        if kind == "x0":
            x0_hat = fn(params, x, t)
            return x0_hat, (x - alpha_bar * x0_hat) / beta_bar
        score = fn(params, x, t)
        return (x + beta_bar ** 2 * score) / alpha_bar, -beta_bar * score

    return denoise


def velocity(process, t, x0_hat: Array, eps_hat: Array) -> Array:
    """dx/dt = alpha_bar'(t) x0_hat + beta_bar'(t) eps_hat, the probability-flow velocity (FM5)."""
    _, (d_alpha_bar, d_beta_bar) = marginal_rates(process, t)
    return d_alpha_bar * x0_hat + d_beta_bar * eps_hat


def probability_flow_drift(process, fn: Callable, kind: str = "score"):
    """`drift(params, x, t)`: the velocity of (S10) in the form (FM5), from a score or x_0 predictor."""
    denoise = make_denoiser(process, fn, kind)

    def drift(params, x, t):
        return velocity(process, t, *denoise(params, x, t))

    return drift


def make_fixed_step_solver(sde, score_fn, *, num_steps: int, method: str = "euler",
                           t0: float = 1.0, t1: Optional[float] = None, kind: str = "score",
                           times: Optional[Array] = None):
    """Builds `solve(params, x) -> ODESolution`: K fixed steps of the ODE from t0 to t1.

    Args:
      sde: a continuous-time process with Gaussian marginals (an SDE, the flow path).
      score_fn: `(params, x [B, ...], t scalar) -> [B, ...]`, a score or x0_hat (`kind`).
      num_steps: K >= 1 steps on a uniform grid.
      method: "euler" (1 evaluation per step, order 1), "heun" (2 per step, order 2) or "ddim"
        (Euler in x / alpha_bar against beta_bar / alpha_bar, 1 per step; exact for a constant
        eps prediction).
      t0, t1: start and end times; t1 defaults to sde.t_min (t0 > t1 samples, t0 < t1 encodes).
      kind: what score_fn returns, "score" or "x0" (`make_denoiser`).
      times: optional [K + 1] times t0 ... t1 (`udm.sampling.grids`) instead of a uniform grid.
    """
    if method not in FIXED_STEP_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; valid: {', '.join(FIXED_STEP_METHODS)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t1 = sde.t_min if t1 is None else t1
    if times is None:
        grid = jnp.linspace(t0, t1, num_steps + 1, dtype=jnp.float32)
    else:
        grid = jnp.asarray(times, jnp.float32)
        if grid.shape != (num_steps + 1,):
            raise ValueError(f"times must be [K + 1] = [{num_steps + 1}], got {grid.shape}")
    denoise = make_denoiser(sde, score_fn, kind)
    drift = probability_flow_drift(sde, score_fn, kind)

    def step(params, x, t, s):
        h = s - t
        if method == "euler":
            return x + h * drift(params, x, t)
        if method == "heun":
            d_t = drift(params, x, t)
            d_s = drift(params, x + h * d_t, s)
            return x + 0.5 * h * (d_t + d_s)
        # ddim: x_s = alpha_bar_s (x_t / alpha_bar_t + d(beta_bar/alpha_bar) eps_hat)
        #           = alpha_bar_s x0_hat + beta_bar_s eps_hat   (no division by alpha_bar_t)
        x0_hat, eps_hat = denoise(params, x, t)
        a_s, b_s = sde.marginal(s)
        return a_s * x0_hat + b_s * eps_hat

    evals_per_step = 2 if method == "heun" else 1

    def solve(params, x):
        def body(x, ts):
            return step(params, x, ts[0], ts[1]).astype(x.dtype), None

        # Float32 times for float32 states; a float64 state (reference numerics under x64) gets
        # the same grid in float64, so that steps and marginals are not rounded to float32.
        times = grid.astype(jnp.promote_types(grid.dtype, x.dtype))
        x, _ = jax.lax.scan(body, x, jnp.stack([times[:-1], times[1:]], axis=1))
        return ODESolution(x, jnp.int32(evals_per_step * num_steps), jnp.bool_(True))

    return solve


def solve_adaptive(vector_field, y0, *, t0: float, t1: float, args=None, solver: str = "tsit5",
                   rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 4096,
                   dt0: Optional[float] = None):
    """Integrates dy/dt = vector_field(t, y, args) from t0 to t1 with an adaptive diffrax solver.

    The one adaptive solve of udm, shared by sampling (`make_adaptive_solver`) and likelihoods
    (`udm.likelihood`); y may be any pytree. The evaluation at (t0, y0) is done here and handed
    to diffrax as its first-same-as-last solver state (left to diffrax, it would be redone on
    every retry of a rejected first step), so the count is exact:
    nfe = 1 + (stages - 1) x (attempted steps) for Tsit5 / Dopri5 (7 stages).

    Args:
      vector_field: `(t, y, args) -> dy/dt`, a pytree like y.
      y0: the state at t0.
      t0, t1: start and end (either order).
      solver: "tsit5" or "dopri5" (5th order, embedded 4th-order error estimate).
      rtol, atol: tolerances of the PID step-size controller.
      max_steps: step limit (accepted + rejected).
      dt0: first step size, default (t1 - t0) / 100; given, so no evaluations are spent on
        choosing it.
    Returns:
      (y1, nfe int32, success bool). y1 is whatever diffrax stopped at when success is False.
    """
    solver_obj = ADAPTIVE_SOLVERS.get(solver)()
    tableau = solver_obj.tableau
    if not tableau.fsal:
        raise ValueError(f"solver {solver!r} is not first-same-as-last; the NFE count assumes it")
    dt0 = (t1 - t0) / 100 if dt0 is None else dt0
    # FSAL state (first_step=False, f(t0, y0)); diffrax's reversed-time wrapper leaves the
    # vector field's sign alone, so this is right in both directions.
    f0 = vector_field(jnp.float32(t0), y0, args)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(vector_field), solver_obj, t0, t1, dt0, y0,
                              args=args, stepsize_controller=diffrax.PIDController(rtol=rtol,
                                                                                   atol=atol),
                              max_steps=max_steps, saveat=diffrax.SaveAt(t1=True), throw=False,
                              solver_state=(jnp.array(False), f0))
    new_evals_per_step = len(tableau.c)  # stages - 1
    nfe = (1 + new_evals_per_step * jnp.asarray(sol.stats["num_steps"], jnp.int32))
    y1 = jax.tree.map(lambda leaf: leaf[0], sol.ys)
    return y1, nfe.astype(jnp.int32), sol.result == diffrax.RESULTS.successful


def make_adaptive_solver(sde, score_fn, *, solver: str = "tsit5", rtol: float = 1e-5,
                         atol: float = 1e-5, max_steps: int = 4096, t0: float = 1.0,
                         t1: Optional[float] = None, dt0: Optional[float] = None,
                         kind: str = "score"):
    """Builds `solve(params, x) -> ODESolution` of the probability-flow ODE by `solve_adaptive`.

    A solve that fails (e.g. reaches `max_steps`) returns success=False and an all-NaN x, so a
    failed solve can never pass for a sample; `check_success` raises on it host-side.

    Args:
      solver, rtol, atol, max_steps, dt0: as in `solve_adaptive`.
      t0, t1: start and end times; t1 defaults to sde.t_min.
      kind: what score_fn returns, "score" or "x0" (`make_denoiser`).
    """
    ADAPTIVE_SOLVERS.get(solver)  # fail on an unknown name when building, not when tracing
    t1 = sde.t_min if t1 is None else t1
    drift = probability_flow_drift(sde, score_fn, kind)

    def solve(params, x):
        end, nfe, success = solve_adaptive(
            lambda t, y, p: drift(p, y, t), x, t0=t0, t1=t1, args=params, solver=solver,
            rtol=rtol, atol=atol, max_steps=max_steps, dt0=dt0)
        return ODESolution(jnp.where(success, end, jnp.nan).astype(x.dtype), nfe, success)

    return solve


def check_success(solution: ODESolution, what: str = "ODE solve") -> ODESolution:
    """Raises RuntimeError (host side) if any solve in `solution` failed."""
    if not bool(jnp.all(solution.success)):
        raise RuntimeError(f"{what} failed after {int(solution.nfe)} function evaluations "
                           f"(step limit reached or non-finite values); raise max_steps or "
                           f"loosen rtol/atol")
    return solution
