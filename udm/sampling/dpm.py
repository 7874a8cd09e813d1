"""Exponential-integrator samplers of the probability-flow ODE: DPM-Solver, DPM-Solver++, UniPC.

Every process with Gaussian marginals p(x_t | x_0) = N(alpha_bar_t x_0, beta_bar_t^2 I) (discrete
time on any sub-sequence of 1..T, or an SDE) has the probability-flow ODE whose solution, written
in the half log-SNR lambda_t = log(alpha_bar_t / beta_bar_t), is (docs/fast_solvers.md (F0))

    x_s = (beta_bar_s / beta_bar_t) x_t
          + beta_bar_s int_{lambda_t}^{lambda_s} e^lambda x0_hat dlambda.

The linear part is integrated exactly; the samplers differ in how they interpolate x0_hat in lambda
(all in the data-prediction form, which stays finite at lambda = -inf, a zero-terminal-SNR top):

  dpm_solver_1/2/3     singlestep, k consecutive grid intervals per step, the intermediate grid
                       points as intermediate times (F1)-(F3)
  dpm_solver_pp_2m/3m  multistep, previous estimates of the grid reused (F4), (F5)
  sde_dpm_solver_pp_2m the stochastic variant of 2M, fresh noise per step (F6)
  unipc_bh2            UniP-2 predictor and UniC corrector with B(h) = e^h - 1 (F7), (F8)

Each runs one `jax.lax.scan` over `grids.time_grid(process, num_steps, spacing)` with one predictor
evaluation per grid interval (nfe = K, + 1 for the final estimate at t_min in continuous time when
`denoise`); everything a step needs from earlier steps (the group's start, previous estimates) is
a fixed-shape carry, and everything that depends only on the grid (each step's order, its
group's start time, the previous grid times) is a precomputed scan input, so the body is traced
once whatever K is. In discrete time the last interval, to s = 0 where beta_bar_0 = 0 and
lambda_0 = +inf, is always a first-order step: x_0 = x0_hat(x_{tau_1}), DDIM's last step.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from udm.processes.base import decode, split_params
from udm.sampling import grids
from udm.sampling.base import (SampleOutput, SamplerOptions, check_clip_options, clip_estimate,
                               register, x0_of)

_REQUIREMENT = "a process with Gaussian marginals (`marginal(t)`)"
_SERIES_BELOW = 0.1  # |z| under which phi_k(z) is summed as a series (the closed forms cancel)
_SERIES_TERMS = 8    # truncation error below 0.1^8 / 8! relative


# --- the phi functions and the half log-SNR -------------------------------------------------------

def _phi(k: int, z):
    """phi_k(z) = sum_j z^j / (j + k)! (docs/fast_solvers.md (F0)): phi_1 = (e^z - 1) / z, ...

    Closed form (expm1(z) - sum_{j<k} z^j / j!) / z^k for |z| >= 0.1, a series (Horner) below.
    """
    z = jnp.asarray(z)
    small = jnp.abs(z) < _SERIES_BELOW
    z_small = jnp.where(small, z, 0.0)
    series = 1.0 / math.factorial(k + _SERIES_TERMS - 1)
    for j in range(_SERIES_TERMS - 2, -1, -1):
        series = series * z_small + 1.0 / math.factorial(k + j)
    z_big = jnp.where(small, 1.0, z)
    closed = jnp.expm1(z_big)
    for j in range(1, k):
        closed = closed - z_big ** j / math.factorial(j)
    return jnp.where(small, series, closed / z_big ** k)


class _Time(NamedTuple):
    """alpha_bar, beta_bar and lambda = log(alpha_bar / beta_bar) at one time."""
    alpha_bar: jax.Array
    beta_bar: jax.Array
    lam: jax.Array


def _at(process, t) -> _Time:
    alpha_bar, beta_bar = process.marginal(t)
    # log 0 = -inf, never NaN: lambda_T = -inf at a zero-terminal-SNR top, +inf at t = 0.
    return _Time(alpha_bar, beta_bar, jnp.log(alpha_bar) - jnp.log(beta_bar))


def _first_order(x, x0_hat, t: _Time, s: _Time):
    """The first-order step, DDIM's deterministic one: docs/fast_solvers.md (F1).

        x_s = (beta_bar_s / beta_bar_t) x_t + alpha_bar_s (1 - e^{-h}) x0_hat,

    h = lambda_s - lambda_t, as docs/ddpm_ddim.md (D7); finite for lambda_t = -inf (then
    x_s = (beta_bar_s / beta_bar_t) x_t + alpha_bar_s x0_hat) and for s = 0 (then x_s = x0_hat).
    """
    h = s.lam - t.lam
    return (s.beta_bar / t.beta_bar) * x - s.alpha_bar * jnp.expm1(-h) * x0_hat


# --- the shared pieces of every builder ---------------------------------------------------------

def _check_options(o: SamplerOptions, name: str) -> None:
    """ValueError for the options these deterministic-variance solvers cannot honour."""
    if o.sigma_bar is not None or o.std_cap is not None:
        raise ValueError(f"{name} integrates the probability-flow ODE: it takes no sigma_bar / "
                         f"std_cap variance table (those are for ddpm / ddim)")


def _estimator(predictor, options: SamplerOptions):
    """x0_hat of the predictor, clipped or thresholded as the options say (`clip_estimate`)."""
    check_clip_options(options)

    def estimate(params, x, t):
        x0_hat = clip_estimate(x0_of(predictor(params, x, t)), options)
        return x0_hat.astype(x.dtype)
    return estimate


def _grid(process, num_steps: int, spacing, rho: float):
    grid = grids.time_grid(process, num_steps, spacing, rho=rho)
    return grid, process.capabilities.continuous_time


def _finish(process, proc, estimate, network_params, x, t_end, num_steps, denoise, path):
    """SampleOutput from the state at the end of the grid: in continuous time (with `denoise`)
    its x_0 estimate at t_min, one more evaluation."""
    nfe = num_steps
    if process.capabilities.continuous_time and denoise:
        x = estimate(network_params, x, t_end)
        nfe += 1
    return SampleOutput(decode(proc, x), jnp.int32(nfe), jnp.bool_(True), path)


# --- singlestep DPM-Solver-k ---------------------------------------------------------------------

def singlestep_groups(num_steps: int, order: int, *, discrete: bool) -> list:
    """How many grid intervals each singlestep step spans (its order), top down.

    Groups of `order` intervals; a remainder r < order becomes lower-order groups placed last,
    and a remainder of 1 under order 3 is merged with the last full group into two groups of 2
    (a lone first-order step would cap the global order at 2). In discrete time the last interval,
    to s = 0, is a group of its own (first order: lambda_0 = +inf).
    """
    rest = num_steps - 1 if discrete else num_steps
    groups = [order] * (rest // order)
    remainder = rest % order
    if order == 3 and remainder == 1 and groups:
        groups[-1:] = [2, 2]
    elif remainder:
        groups.append(remainder)
    return groups + ([1] if discrete else [])


class _SinglestepInput(NamedTuple):
    t: jax.Array        # this interval's start (the point evaluated)
    s: jax.Array        # this interval's end (the state computed)
    t_start: jax.Array  # the start of its group
    first: jax.Array    # bool: the interval opens its group
    index: jax.Array


def make_singlestep_sampler(process, predictor, num_steps: int, options: SamplerOptions, *,
                            order: int, name: str = "dpm_solver"):
    """`sample(params, x_T, *, key) -> SampleOutput` of singlestep DPM-Solver-`order` (not jitted).

    A step of order k spans k consecutive grid intervals t = u_0 > u_1 > ... > u_k = s, and
    evaluates the predictor once at each u_j (its own grid time, so discrete times stay integers).
    With h = lambda_s - lambda_t and r_j = (lambda_{u_j} - lambda_t) / h (from the grid, not fixed
    1/3, 2/3), every point u after the first is reached from x_t by docs/fast_solvers.md (F2),

        x_u = (F1)(x_t, x0_hat(t); t -> u)
              + alpha_bar_u (H + expm1(-H)) / (lambda_{u_j} - lambda_t) (x0_hat(u_j) - x0_hat(t)),

    H = lambda_u - lambda_t, u_j the last point evaluated before u. k = 2 is DPM-Solver-2 with a
    general r_1: u_1 by (F1), s by (F2), the weight h phi_2(-h) / r_1. k = 3 is DPM-Solver-3 with
    general r_1 < r_2 (F3): u_1 by (F1), u_2 by (F2) from u_1 (weight (r_2^2 h / r_1)
    phi_2(-r_2 h)), s by (F2) from u_2 alone (weight h phi_2(-h) / r_2); third order when
    r_2 = 2/3 + O(h) (any grid whose lambda steps vary smoothly), second order otherwise. From
    lambda_t = -inf the limit is taken: x_u = (beta_bar_u / beta_bar_t) x_t + alpha_bar_u
    x0_hat(u_j). DPM-Solver-1 is DDIM (eta = 0) on the same grid. Group sizes:
    `singlestep_groups`.

    Lu et al., "DPM-Solver" (arXiv 2206.00927), in the data-prediction form of Lu et al.,
    "DPM-Solver++" (arXiv 2211.01095).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"singlestep DPM-Solver order must be 1, 2 or 3, got {order}")
    o = options
    _check_options(o, name)
    grid, continuous = _grid(process, num_steps, o.spacing, o.rho)
    groups = singlestep_groups(num_steps, order, discrete=not continuous)
    starts = np.repeat(np.cumsum([0] + groups[:-1]), groups)
    first = np.arange(num_steps) == starts
    steps = _SinglestepInput(t=jnp.asarray(grid[:, 0]), s=jnp.asarray(grid[:, 1]),
                             t_start=jnp.asarray(grid[starts, 0]), first=jnp.asarray(first),
                             index=jnp.arange(num_steps, dtype=jnp.int32))
    t_end = jnp.asarray(grid[-1, 1])
    estimate = _estimator(predictor, o)

    def sample(params, x_T, *, key):
        del key  # deterministic
        proc, network_params = split_params(process, params)

        def body(carry, step):
            x, x_start, x0_start = carry
            x0_hat = estimate(network_params, x, step.t)
            x_start = jnp.where(step.first, x, x_start)
            x0_start = jnp.where(step.first, x0_hat, x0_start)
            t0, u, s = _at(proc, step.t_start), _at(proc, step.t), _at(proc, step.s)
            big_h, small_h = s.lam - t0.lam, u.lam - t0.lam  # H and r H
            # H^2 phi_2(-H) / (r H) by (F2); its limit 1 from lambda = -inf (H = r H = inf).
            weight = jnp.where(jnp.isfinite(t0.lam), big_h ** 2 * _phi(2, -big_h) / small_h, 1.0)
            correction = jnp.where(step.first, 0.0, s.alpha_bar * weight)
            x_next = (_first_order(x_start, x0_start, t0, s)
                      + correction * (x0_hat - x0_start)).astype(x.dtype)
            return (x_next, x_start, x0_start), (x_next if o.return_path else None)

        (x, _, _), path = jax.lax.scan(body, (x_T, x_T, jnp.zeros_like(x_T)), steps)
        return _finish(process, proc, estimate, network_params, x, t_end, num_steps, o.denoise,
                       path)

    return sample


# --- multistep DPM-Solver++ (and its SDE variant) and UniPC -------------------------------------

LOWER_ORDER_FINAL_BELOW = 15  # K under which `lower_order_final` lowers the last steps


def multistep_orders(num_steps: int, order: int, *, discrete: bool,
                     lower_order_final: bool = False) -> np.ndarray:
    """Each multistep step's order: min(i + 1, order) (the history fills up), and 1 for the
    discrete step to s = 0.

    With lower_order_final and K < 15 the last step is first order and, for order 3, the one
    before at most second order (docs/fast_solvers.md, "Few steps"): on short grids the last
    lambda step is the longest (t_min's lambda is far from the rest), and extrapolating the
    x_0 history across it overshoots.
    """
    orders = np.minimum(np.arange(1, num_steps + 1), order)
    if discrete:
        orders[-1] = 1
    if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
        orders[-1] = 1
        if num_steps >= 2:
            orders[-2] = min(orders[-2], 2)
    return orders.astype(np.int32)


class _MultistepInput(NamedTuple):
    t: jax.Array
    s: jax.Array
    t_prev: jax.Array   # the grid time one step before t (t itself on the first step)
    t_prev2: jax.Array  # two steps before
    order: jax.Array    # this step's order
    index: jax.Array


def _multistep_inputs(grid, orders) -> _MultistepInput:
    t = grid[:, 0]
    t_prev = np.concatenate([t[:1], t[:-1]])
    t_prev2 = np.concatenate([t_prev[:1], t_prev[:-1]])
    return _MultistepInput(jnp.asarray(t), jnp.asarray(grid[:, 1]), jnp.asarray(t_prev),
                           jnp.asarray(t_prev2), jnp.asarray(orders),
                           jnp.arange(len(t), dtype=jnp.int32))


def _dpm_pp_2m(x, x0_hat, x0_prev, prev: _Time, t: _Time, s: _Time):
    """DPM-Solver++(2M), docs/fast_solvers.md (F4).

    (F1) with x0_hat + (h / (2 h_prev)) (x0_hat - x0_prev) in place of x0_hat, where
    h_prev = lambda_t - lambda_prev; h_prev = inf (the previous point at lambda = -inf) gives (F1).
    """
    h, h_prev = s.lam - t.lam, t.lam - prev.lam
    return _first_order(x, x0_hat + (0.5 * h / h_prev) * (x0_hat - x0_prev), t, s)


def _dpm_pp_3m(x, x0_hat, x0_prev, x0_prev2, prev2: _Time, prev: _Time, t: _Time, s: _Time):
    """DPM-Solver++(3M), docs/fast_solvers.md (F5).

    x0_hat interpolated by the quadratic in lambda through the last three estimates, integrated
    exactly against e^lambda:

        x_s = (F1) + alpha_bar_s [h^2 phi_2(-h) d_1 + 2 h^3 phi_3(-h) d_2],
        d_1 = delta_0 + h_0 d_2,  d_2 = (delta_0 - delta_1) / (h_0 + h_1),
        delta_0 = (x0_hat - x0_prev) / h_0,  delta_1 = (x0_prev - x0_prev2) / h_1,

    h_0 = lambda_t - lambda_prev, h_1 = lambda_prev - lambda_prev2 (h_1 = inf gives the linear
    interpolation through the last two).
    """
    h, h0, h1 = s.lam - t.lam, t.lam - prev.lam, prev.lam - prev2.lam
    delta0, delta1 = (x0_hat - x0_prev) / h0, (x0_prev - x0_prev2) / h1
    d2 = (delta0 - delta1) / (h0 + h1)
    d1 = delta0 + h0 * d2
    return (_first_order(x, x0_hat, t, s)
            + s.alpha_bar * (h ** 2 * _phi(2, -h) * d1 + 2.0 * h ** 3 * _phi(3, -h) * d2))


def _select(order, candidates):
    """candidates[order - 1], by jnp.where (the unused ones may be inf / NaN: never mixed in)."""
    out = candidates[0]
    for k, candidate in enumerate(candidates[1:], start=2):
        out = jnp.where(order == k, candidate, out)
    return out


def make_multistep_sampler(process, predictor, num_steps: int, options: SamplerOptions, *,
                           order: int, stochastic: bool = False, name: str = "dpm_solver_pp"):
    """`sample(params, x_T, *, key) -> SampleOutput` of DPM-Solver++(2M / 3M) or its SDE variant.

    One evaluation per grid interval; the last `order - 1` estimates ride in the scan carry (a
    fixed [2, B, ...] history), their times are scan inputs. Orders per step: `multistep_orders`.
    The deterministic steps are docs/fast_solvers.md (F1), (F4) (order 2) and (F5) (order 3);
    the stochastic variant (order 2 only) is (F6), with fresh noise N(0, I) drawn with
    fold_in(key, step index).

    Lu et al., "DPM-Solver++" (arXiv 2211.01095), Algorithm 2 and its SDE variant.
    """
    if order not in ((2,) if stochastic else (2, 3)):
        raise ValueError(f"{name}: unsupported order {order}")
    o = options
    _check_options(o, name)
    grid, continuous = _grid(process, num_steps, o.spacing, o.rho)
    steps = _multistep_inputs(grid, multistep_orders(num_steps, order, discrete=not continuous,
                                                     lower_order_final=o.lower_order_final))
    t_end = jnp.asarray(grid[-1, 1])
    estimate = _estimator(predictor, o)

    def sample(params, x_T, *, key):
        proc, network_params = split_params(process, params)

        def body(carry, step):
            x, history = carry
            x0_hat = estimate(network_params, x, step.t)
            prev2, prev = _at(proc, step.t_prev2), _at(proc, step.t_prev)
            t, s = _at(proc, step.t), _at(proc, step.s)
            if stochastic:
                z = jax.random.normal(jax.random.fold_in(key, step.index), x.shape, x.dtype)
                x_next = _sde_dpm_pp_2m(x, x0_hat, history[0], step.order, prev, t, s, z)
            else:
                candidates = [_first_order(x, x0_hat, t, s),
                              _dpm_pp_2m(x, x0_hat, history[0], prev, t, s)]
                if order == 3:
                    candidates.append(_dpm_pp_3m(x, x0_hat, history[0], history[1], prev2, prev,
                                                 t, s))
                x_next = _select(step.order, candidates)
            x_next = x_next.astype(x.dtype)
            history = jnp.stack([x0_hat, history[0]])
            return (x_next, history), (x_next if o.return_path else None)

        history = jnp.zeros((2,) + x_T.shape, x_T.dtype)
        (x, _), path = jax.lax.scan(body, (x_T, history), steps)
        return _finish(process, proc, estimate, network_params, x, t_end, num_steps, o.denoise,
                       path)

    return sample


def _sde_dpm_pp_2m(x, x0_hat, x0_prev, order, prev: _Time, t: _Time, s: _Time, z):
    """SDE-DPM-Solver++(2M), docs/fast_solvers.md (F6): the reverse SDE in the data form.

        x_s = (beta_bar_s / beta_bar_t) e^{-h} x_t + alpha_bar_s (1 - e^{-2h}) D
              + beta_bar_s sqrt(1 - e^{-2h}) z,

    D = x0_hat (order 1) or x0_hat + (h / (2 h_prev)) (x0_hat - x0_prev) (order 2).
    """
    h, h_prev = s.lam - t.lam, t.lam - prev.lam
    data = jnp.where(order >= 2, x0_hat + (0.5 * h / h_prev) * (x0_hat - x0_prev), x0_hat)
    one_minus = -jnp.expm1(-2.0 * h)
    return ((s.beta_bar / t.beta_bar) * jnp.exp(-h) * x + s.alpha_bar * one_minus * data
            + s.beta_bar * jnp.sqrt(one_minus) * z)


class _UniPCInput(NamedTuple):
    t: jax.Array          # t_i: the point evaluated, where the corrector lands
    s: jax.Array          # t_{i+1}: where the predictor goes
    t_prev: jax.Array     # t_{i-1}: where the corrector starts
    t_prev2: jax.Array    # t_{i-2}
    order: jax.Array      # the predictor's order on this step
    corrector: jax.Array  # the corrector's order on this step (0: no corrector, the first step)
    index: jax.Array


def _unic_bh2(x_prev, x0_prev, x0_prev2, x0_new, order, prev2: _Time, prev: _Time, t: _Time):
    """UniC with B(h) = e^h - 1, docs/fast_solvers.md (F8): corrects the state at t from t_prev.

        x_t^c = (F1)(x_prev, x0_prev; prev -> t) - alpha_bar_t B(-h) [sum_m rho_m D_m],

    h = lambda_t - lambda_prev. Order 1: the sum is (x0_new - x0_prev) / 2. Order 2: with
    r = (lambda_prev2 - lambda_prev) / h < 0, D_old = (x0_prev2 - x0_prev) / r and
    D_new = x0_new - x0_prev, the sum is rho_old D_old + rho_new D_new where
    rho_old + rho_new = b_1, r rho_old + rho_new = b_2, b_k = k! (-h) phi_{k+1}(-h) / B(-h).
    """
    h = t.lam - prev.lam
    big_b = jnp.expm1(-h)
    b1 = -h * _phi(2, -h) / big_b
    b2 = -2.0 * h * _phi(3, -h) / big_b
    r = (prev2.lam - prev.lam) / h  # < 0 (NaN on the first correction, where order is 1)
    rho_old = (b1 - b2) / (1.0 - r)
    # Scalar weights first, one array expression after (XLA compiles this far faster).
    weight_new = jnp.where(order >= 2, b1 - rho_old, 0.5)
    weight_old = jnp.where(order >= 2, rho_old / r, 0.0)
    data = (x0_prev + weight_old * (x0_prev2 - x0_prev) + weight_new * (x0_new - x0_prev))
    return _first_order(x_prev, data, prev, t)


def make_unipc_sampler(process, predictor, num_steps: int, options: SamplerOptions, *,
                       name: str = "unipc_bh2"):
    """`sample(params, x_T, *, key) -> SampleOutput` of UniPC-2 (bh2), data prediction (not jitted).

    Step i evaluates x0_hat at the predicted x_{t_i}, corrects x_{t_i} from x_{t_{i-1}} with it
    (UniC, docs/fast_solvers.md (F8), with the order of the previous predictor step; not on the
    first step), then predicts x_{t_{i+1}} from the corrected state (UniP-2, (F7), which with
    B(h) = e^h - 1 is exactly DPM-Solver++(2M) (F4)). The estimate at the uncorrected point is
    kept (no extra evaluation), so nfe = K; the last predicted state is not corrected (that
    would cost one more evaluation).

    Zhao et al., "UniPC" (arXiv 2302.04867).
    """
    o = options
    _check_options(o, name)
    grid, continuous = _grid(process, num_steps, o.spacing, o.rho)
    orders = multistep_orders(num_steps, 2, discrete=not continuous,
                              lower_order_final=o.lower_order_final)
    base = _multistep_inputs(grid, orders)
    steps = _UniPCInput(base.t, base.s, base.t_prev, base.t_prev2, base.order,
                        jnp.asarray(np.concatenate([[0], orders[:-1]]).astype(np.int32)),
                        base.index)
    t_end = jnp.asarray(grid[-1, 1])
    estimate = _estimator(predictor, o)

    def sample(params, x_T, *, key):
        del key  # deterministic
        proc, network_params = split_params(process, params)

        def body(carry, step):
            x, x_prev, history = carry
            x0_hat = estimate(network_params, x, step.t)
            prev2, prev = _at(proc, step.t_prev2), _at(proc, step.t_prev)
            t, s = _at(proc, step.t), _at(proc, step.s)
            corrected = _unic_bh2(x_prev, history[0], history[1], x0_hat, step.corrector,
                                  prev2, prev, t)
            x = jnp.where(step.corrector > 0, corrected, x).astype(x.dtype)
            x_next = _select(step.order, [_first_order(x, x0_hat, t, s),
                                          _dpm_pp_2m(x, x0_hat, history[0], prev, t, s)])
            x_next = x_next.astype(x.dtype)
            history = jnp.stack([x0_hat, history[0]])
            return (x_next, x, history), (x_next if o.return_path else None)

        history = jnp.zeros((2,) + x_T.shape, x_T.dtype)
        (x, _, _), path = jax.lax.scan(body, (x_T, x_T, history), steps)
        return _finish(process, proc, estimate, network_params, x, t_end, num_steps, o.denoise,
                       path)

    return sample


# --- the registered samplers ---------------------------------------------------------------------

def _gaussian(c):
    return c.gaussian_marginals


def _register_singlestep(order):
    name = f"dpm_solver_{order}"

    @register(name, supports=_gaussian, requirement=_REQUIREMENT)
    def build(process, predictor, num_steps, options):
        return make_singlestep_sampler(process, predictor, num_steps, options, order=order,
                                       name=name)
    return build


for _order in (1, 2, 3):
    _register_singlestep(_order)


@register("dpm_solver_pp_2m", supports=_gaussian, requirement=_REQUIREMENT)
def _dpm_solver_pp_2m(process, predictor, num_steps, options):
    return make_multistep_sampler(process, predictor, num_steps, options, order=2,
                                  name="dpm_solver_pp_2m")


@register("dpm_solver_pp_3m", supports=_gaussian, requirement=_REQUIREMENT)
def _dpm_solver_pp_3m(process, predictor, num_steps, options):
    return make_multistep_sampler(process, predictor, num_steps, options, order=3,
                                  name="dpm_solver_pp_3m")


@register("sde_dpm_solver_pp_2m", supports=_gaussian, requirement=_REQUIREMENT)
def _sde_dpm_solver_pp_2m(process, predictor, num_steps, options):
    return make_multistep_sampler(process, predictor, num_steps, options, order=2,
                                  stochastic=True, name="sde_dpm_solver_pp_2m")


@register("unipc_bh2", supports=_gaussian, requirement=_REQUIREMENT)
def _unipc_bh2(process, predictor, num_steps, options):
    return make_unipc_sampler(process, predictor, num_steps, options)
