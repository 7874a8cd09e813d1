"""NPR-DPM / SN-DPM heads and state-dependent variances (docs/optimal_variance.md §3.4-3.6, §4) on Gaussian data.

With x_0 ~ N(0, S^2 I), v_t = alpha_bar_t^2 S^2 + beta_bar_t^2, everything is closed form:
eps*(x_t) = beta_bar_t x_t / v_t, Var[eps | x_t] = 1 - beta_bar_t^2 / v_t =: g*_t per coordinate,
E[eps^2 | x_t] = g*_t + eps*(x_t)^2 and Var[x_0 | x_t] = S^2 beta_bar_t^2 / v_t.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from udm import likelihood, oracles, variance, variance_heads
from udm.processes import GaussianProcess
from udm.sampling import Estimate, discrete_time_grid as time_grid, make_sampler

S = 0.5                      # data std
D = 16                       # data dimension of the head-training tests
T_SMALL = 20                 # the head-training process: one head parameter per t
P_SMALL = GaussianProcess.from_schedule("blog", T_SMALL)
T = 1000
P = GaussianProcess.from_schedule("blog", T)


def _closed_form(process):
    """(alpha_bar, beta_bar, v, g*, Var[x_0|x_t]) as float64 [T + 1] arrays."""
    ab = np.asarray(process.alpha_bar, np.float64)
    bb = np.asarray(process.beta_bar, np.float64)
    v = ab ** 2 * S ** 2 + bb ** 2
    return ab, bb, v, 1.0 - bb ** 2 / v, S ** 2 * bb ** 2 / v


def _exact_features_fn(process):
    """A frozen exact mean: features_fn(mean_params, x_t [B, d], t [B]) -> (eps*, x0*, features).

    features = (one_hot(t) [B, T + 1], eps*^2 [B, d]): enough for a per-t constant head (NPR)
    and for the per-t affine head a_t + b_t eps*^2 that contains SN's optimum.
    """
    def fn(mean_params, xt, t):
        del mean_params
        a = process.alpha_bar[t][:, None]
        b = process.beta_bar[t][:, None]
        eps = b * xt / (a ** 2 * S ** 2 + b ** 2)
        x0 = (xt - b * eps) / a
        return eps, x0, (jax.nn.one_hot(t, process.num_timesteps + 1), eps ** 2)

    return fn


def _npr_head_apply(params, features):
    one_hot, eps_sq = features
    return jnp.broadcast_to((one_hot @ params["a"])[:, None], eps_sq.shape)


def _sn_head_apply(params, features):
    one_hot, eps_sq = features
    return (one_hot @ params["a"])[:, None] + (one_hot @ params["b"])[:, None] * eps_sq


def _train_head(kind, head_apply, params, *, num_steps=400, batch_size=512, seed=0):
    """Adam on make_head_loss_fn with fresh Gaussian data each step, as one jitted scan."""
    loss_fn = variance_heads.make_head_loss_fn(P_SMALL, _exact_features_fn(P_SMALL), head_apply,
                                               None, kind=kind)
    optimizer = optax.adam(optax.exponential_decay(0.05, num_steps, 0.01))

    @jax.jit
    def run(params):
        def step(carry, i):
            params, opt_state = carry
            data_key, loss_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), i))
            x0 = S * jax.random.normal(data_key, (batch_size, D))
            grads, _ = jax.grad(lambda p: loss_fn(p, x0, key=loss_key), has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)),
                                      jnp.arange(num_steps))
        return params

    return jax.tree.map(np.asarray, run(params))


def test_npr_head_converges_to_the_conditional_residual_variance():
    # docs/optimal_variance.md §4: with eps_theta = eps*, the NPR target (eps - eps*)^2 has conditional mean
    # g*_t = 1 - beta_bar_t^2 / v_t (here 0.996 at t = 1 down to 0.515 at t = 20). A per-t
    # constant head sees ~25 examples x 16 coordinates of each t per step; with the decaying
    # Adam step the final error is ~0.005 (SD of one step's target mean is ~0.07 g*).
    # Tolerance 0.02 absolute, 5x smaller than the change of g* over the last 5 steps.
    zeros = jnp.zeros((T_SMALL + 1,), jnp.float32)
    params = _train_head("npr", _npr_head_apply, {"a": zeros})
    _, _, _, g_star, _ = _closed_form(P_SMALL)
    t = np.arange(1, T_SMALL + 1)
    np.testing.assert_allclose(params["a"][t], g_star[t], atol=0.02)
    assert params["a"][0] == 0                     # t = 0 is never drawn
    # The sampler's variance from the trained head: (beta_bar^2/alpha_bar^2) g = Var[x_0|x_t];
    # 0.02 in g is at most 0.2 * 0.02 = 0.005 in sigma_bar^2 (ratio <= 0.24 here).
    _, _, _, _, post = _closed_form(P_SMALL)
    for ti in (1, 10, 20):
        head_out = jnp.full((4, D), params["a"][ti])
        got = variance_heads.head_sigma_bar_sq("npr", P_SMALL, ti, jnp.zeros((4, D)), head_out)
        np.testing.assert_allclose(np.asarray(got), post[ti], atol=0.005)


def test_sn_head_converges_to_the_second_moment_and_gives_the_posterior_variance():
    # docs/optimal_variance.md §4: E[eps^2 | x_t] = g*_t + eps*(x_t)^2, so the per-t affine head a_t + b_t eps*^2
    # converges to a_t = g*_t, b_t = 1. b_t is only identified where eps*^2 varies, i.e. where
    # Var[eps*] = 1 - g*_t is not small: checked for 1 - g* >= 0.25 (t >= 12), to +-0.15
    # (observed ~0.03); a_t everywhere to +-0.03 (observed ~0.01).
    zeros = jnp.zeros((T_SMALL + 1,), jnp.float32)
    params = _train_head("sn", _sn_head_apply, {"a": zeros, "b": zeros}, num_steps=600)
    _, _, _, g_star, post = _closed_form(P_SMALL)
    t = np.arange(1, T_SMALL + 1)
    np.testing.assert_allclose(params["a"][t], g_star[t], atol=0.03)
    identified = t[1 - g_star[t] >= 0.25]
    assert identified.size >= 5
    np.testing.assert_allclose(params["b"][identified], 1.0, atol=0.15)
    # sigma_bar^2(x_t) = ratio max(h - eps*^2, 0) must be the constant Var[x_0|x_t] on fresh
    # x_t: its mean over x_t within 5% (observed <= 2%: the a_t error), its spread over x_t
    # below 10% of the mean (observed <= 3%: ratio |b_t - 1| sd(eps*^2)); the raw h varies.
    features_fn = _exact_features_fn(P_SMALL)
    for ti in (2, 8, 14, 20):
        key = jax.random.PRNGKey(100 + ti)
        x0 = S * jax.random.normal(key, (256, D))
        xt = P_SMALL.forward(ti, x0, jax.random.normal(jax.random.fold_in(key, 1), (256, D)))
        eps_star, _, features = features_fn(None, xt, jnp.full((256,), ti, jnp.int32))
        head_out = _sn_head_apply(jax.tree.map(jnp.asarray, params), features)
        got = np.asarray(variance_heads.head_sigma_bar_sq("sn", P_SMALL, ti, eps_star, head_out))
        assert got.shape == (256, D)
        np.testing.assert_allclose(got.mean(), post[ti], rtol=0.05)
        assert got.std() < 0.1 * post[ti], (ti, got.std(), post[ti])
        # The raw second moment h depends on x_t (h* - eps*^2 is the constant, not h*).
        if ti == 20:
            assert np.std(np.asarray(head_out)) > 0.1


@pytest.mark.parametrize("kind", ["npr", "sn"])
def test_head_variance_stays_in_the_bounds_for_wild_head_outputs(kind):
    # docs/optimal_variance.md §2.3 / §3.4-3.5: 0 <= sigma_bar_t^2 <= min(beta_bar_t^2 / alpha_bar_t^2, max_var)
    # whatever the head says (negative, huge, infinite); in between exactly ratio * moment.
    rng = np.random.default_rng(0)
    head_out = np.concatenate([[-np.inf, -1e6, -5.0, -1e-3, 0.0, 1e-3, 0.3, 0.9, 2.0, 1e3, 1e6,
                                np.inf], 10.0 ** rng.uniform(-6, 6, 52) * rng.choice([-1, 1], 52)])
    head_out = jnp.asarray(head_out.reshape(4, 16), jnp.float32)
    eps_theta = jnp.asarray(rng.normal(0, 1, (4, 16)) * 10.0 ** rng.uniform(-3, 3, (4, 16)),
                            jnp.float32)
    moment = np.asarray(head_out, np.float64) - (
        0 if kind == "npr" else np.asarray(eps_theta, np.float64) ** 2)
    hit = {"lower": 0, "ratio": 0, "max_var": 0, "inside": 0}
    for t in (1, 10, 300, 600, 1000):
        ratio = float((P.beta_bar[t] / P.alpha_bar[t]) ** 2)
        for max_var in (None, 1.0):
            upper = ratio if max_var is None else min(ratio, max_var)
            got = np.asarray(variance_heads.head_sigma_bar_sq(kind, P, t, eps_theta, head_out,
                                                              max_var=max_var))
            assert got.dtype == np.float32 and got.shape == (4, 16)
            assert np.all(np.isfinite(got)), (t, max_var)
            assert np.all(got >= 0) and np.all(got <= upper * (1 + 1e-6)), (t, max_var)
            raw = ratio * moment
            np.testing.assert_allclose(got, np.clip(raw, 0, upper), rtol=1e-5, atol=1e-30)
            hit["lower"] += int(np.any(raw < 0))
            hit["ratio"] += int(np.any(raw > ratio) and (max_var is None or ratio < max_var))
            hit["max_var"] += int(max_var is not None and ratio > max_var and np.any(raw > 1))
            hit["inside"] += int(np.any((raw > 0) & (raw < upper)))
    assert all(hit.values()), hit


def test_head_kind_is_checked():
    with pytest.raises(ValueError, match="npr, sn"):
        variance_heads.head_target("nll", jnp.zeros(2), jnp.zeros(2))
    with pytest.raises(ValueError, match="npr, sn"):
        variance_heads.make_head_loss_fn(P, None, None, None, kind="analytic")
    eps, eps_theta = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.5])
    np.testing.assert_allclose(variance_heads.head_target("npr", eps, eps_theta), [0.25, 6.25])
    np.testing.assert_allclose(variance_heads.head_target("sn", eps, eps_theta), [1.0, 4.0])


# --- the Estimate path of the VLB and of the sampler ----------------------------------------

def _chain_bound(alpha_bar, beta_bar, x0_fn, x0, key, reverse_var=None):
    return likelihood.variational_bound(alpha_bar, beta_bar, x0_fn, x0, key=key,
                                        decoder="gaussian", reverse_var=reverse_var).total


def test_vlb_with_a_state_dependent_std_equals_the_table_variance():
    # An x0_fn returning Estimate(x0_hat, sigma_bar_{tau_i}) must give the same bound as the
    # isotropic table reverse_var = chain_reverse_var(reverse_variance("analytic", eta=1)):
    # sigma_tilde_i^2 + c_0^2 sigma_bar^2 is exactly the eta = 1 corrected variance (V1), and the
    # decoder gets sigma_bar_{tau_1}^2. Same key -> same x_i draws; float32 sums: rtol 1e-5.
    grid = time_grid(T, 10)
    alpha_bar, beta_bar, times = variance.chain_from_grid(P, grid)
    _, _, _, _, post = _closed_form(P)
    sigma_bar = jnp.asarray(np.sqrt(post), jnp.float32)           # exact Var[x_0|x_t], [T + 1]
    chain = GaussianProcess(alpha_bar, beta_bar)
    mean = oracles.gaussian_posterior_mean(chain, 0.0, S)
    chain_std = sigma_bar[times]                                   # [K + 1], by chain index

    def scalar_std(x, i):
        return Estimate(mean(None, x, i), chain_std[i])

    def diagonal_std(x, i):                                        # the same, as a [B, d] std
        return Estimate(mean(None, x, i), jnp.full(x.shape, chain_std[i]))

    x0 = S * jax.random.normal(jax.random.PRNGKey(0), (512, 8))
    key = jax.random.PRNGKey(1)
    table = variance.chain_reverse_var(variance.reverse_variance("analytic", P, grid, eta=1.0,
                                                                 sigma_bar=sigma_bar))
    bound = jax.jit(_chain_bound, static_argnums=2)
    expected = np.asarray(bound(alpha_bar, beta_bar, lambda x, i: mean(None, x, i), x0, key,
                                table))
    for fn in (scalar_std, diagonal_std):
        got = np.asarray(bound(alpha_bar, beta_bar, fn, x0, key))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # ... and the std is really used: the default (fixed_small) bound differs by far more.
    default = np.asarray(bound(alpha_bar, beta_bar, lambda x, i: mean(None, x, i), x0, key))
    assert np.mean(default - expected) > 0.1, (default.mean(), expected.mean())
    with pytest.raises(ValueError, match="reverse_var"):
        _chain_bound(alpha_bar, beta_bar, scalar_std, x0, key, table)


def _gaussian_prior(shape, key):
    a_T, b_T = float(P.alpha_bar[-1]), float(P.beta_bar[-1])
    return np.sqrt(a_T ** 2 * S ** 2 + b_T ** 2) * jax.random.normal(key, shape)


@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddpm", 1.0)])
def test_sampler_estimate_std_matches_the_sigma_bar_table(name, eta):
    pred = oracles.gaussian_posterior_mean(P, 0.0, S)
    grid = time_grid(T, 10)
    _, _, _, _, post = _closed_form(P)
    table = jnp.asarray(np.sqrt(post), jnp.float32)
    x_T = _gaussian_prior((256, 4), jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    kw = dict(num_steps=10, name=name, eta=eta)
    plain = np.asarray(make_sampler(P, pred, **kw)(None, x_T, key=key).x0)
    by_table = np.asarray(make_sampler(P, pred, sigma_bar=table, **kw)(None, x_T, key=key).x0)
    # 1) Estimate(x0, std = table[t]) (scalar or per coordinate) is the table path, same key.
    #    The same ops on the same values: equal up to float32 rounding (atol 1e-6).
    for std_fn in (lambda x, t: table[t], lambda x, t: jnp.full(x.shape, table[t])):
        est = lambda params, x, t, f=std_fn: Estimate(pred(params, x, t), f(x, t))
        got = np.asarray(make_sampler(P, est, **kw)(None, x_T, key=key).x0)
        np.testing.assert_allclose(got, by_table, atol=1e-6)
    assert np.max(np.abs(by_table - plain)) > 0.05                 # the std matters
    # 2) std_cap = 0 everywhere makes every step mean-only: the plain point-estimate sampler.
    est = lambda params, x, t: Estimate(pred(params, x, t), jnp.full(x.shape, 0.7))
    capped = make_sampler(P, est, std_cap=jnp.zeros((T + 1,)), **kw)(None, x_T, key=key).x0
    np.testing.assert_allclose(np.asarray(capped), plain, atol=1e-6)
    # 3) The capped table sampler equals the table capped beforehand (same clips).
    cap = variance.std_cap(P, grid, eta=eta, clip_pixel=2)
    clipped_table = jnp.minimum(table, cap)
    a = make_sampler(P, pred, sigma_bar=table, std_cap=cap, **kw)(None, x_T, key=key).x0
    b = make_sampler(P, pred, sigma_bar=clipped_table, **kw)(None, x_T, key=key).x0
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def _step_coefficients_f64(process, grid, eta):
    """sigma_s^2 and gamma_{t,s} (docs/optimal_variance.md §2.1) recomputed independently in float64."""
    ab = np.asarray(process.alpha_bar, np.float64)
    bb = np.asarray(process.beta_bar, np.float64)
    t, s = grid[:, 0], grid[:, 1]
    sigma_sq = eta ** 2 * bb[s] ** 2 * (1 - (ab[t] / ab[s]) ** 2) / bb[t] ** 2
    gamma = ab[s] - ab[t] * np.sqrt(bb[s] ** 2 - sigma_sq) / bb[t]
    return sigma_sq, gamma


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_sampling_sigma_bar_realises_the_reverse_variance(eta):
    # Each step t -> s of a make_sampler run has the variance sigma_s^2 + gamma^2 std_t^2; the
    # table of sampling_sigma_bar must make that the choice's variance. float32 table: rtol 1e-4
    # (1 - (ab_t/ab_s)^2 itself is ~1e-2 at the smallest step; float32 cancellation ~1e-5);
    # recovering sigma_bar as sqrt(var - sigma_s^2) / gamma: rtol 1e-3 (observed 2e-4, eta = 1).
    grid = time_grid(T, 10)
    t, s = grid[:, 0], grid[:, 1]
    ab = np.asarray(P.alpha_bar, np.float64)
    sigma_sq, gamma = _step_coefficients_f64(P, grid, eta)
    std = variance.sampling_sigma_bar("fixed_large", P, grid, eta=eta)
    assert std.shape == (T + 1,) and std[0] == 0 and np.isnan(std[37])
    realised = sigma_sq + gamma ** 2 * np.asarray(std, np.float64)[t] ** 2
    np.testing.assert_allclose(realised, 1 - (ab[t] / ab[s]) ** 2, rtol=1e-4)
    # analytic / ml_isotropic give back sigma_bar on the grid; fixed_small is the plain sampler.
    _, _, _, _, post = _closed_form(P)
    sigma_bar = jnp.asarray(np.sqrt(post), jnp.float32)
    for name in ("analytic", "ml_isotropic"):
        got = variance.sampling_sigma_bar(name, P, grid, eta=eta, sigma_bar=sigma_bar)
        np.testing.assert_allclose(np.asarray(got)[t], np.sqrt(post[t]), rtol=1e-3)
    assert variance.sampling_sigma_bar("fixed_small", P, grid, eta=eta) is None


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_std_cap_final_step_and_pixel_clip(eta):
    # std_cap (docs/optimal_variance.md §2.5 clips for any std): 0 at t = tau_1 (the mean-only step into s = 0),
    # the pixel clip on the steps into x_{tau_i}, 0 < i <= clip_sigma_idx, inf elsewhere.
    grid = time_grid(T, 10)
    t, s = grid[:, 0], grid[:, 1]
    clip_var = variance.pixel_clip_var(2)
    cap = np.asarray(variance.std_cap(P, grid, eta=eta, clip_pixel=2, clip_sigma_idx=3),
                     np.float64)
    assert cap.shape == (T + 1,)
    assert cap[t[-1]] == 0                                     # t = tau_1 = 100
    clipped = (s > 0) & (s <= 300)                              # into tau_1..tau_3
    assert clipped.sum() == 3
    assert np.all(np.isinf(cap[t[~clipped & (s > 0)]]))
    sigma_sq, gamma = _step_coefficients_f64(P, grid, eta)
    big = np.asarray(variance.sampling_sigma_bar("fixed_large", P, grid, eta=eta), np.float64)
    capped_var = sigma_sq + gamma ** 2 * np.minimum(big[t], cap[t]) ** 2
    assert np.all(big[t][clipped] > cap[t][clipped])           # the cap binds there
    assert capped_var[-1] == 0 or eta > 0                       # eta = 1: s = 0 has sigma = 0
    assert capped_var[-1] < 1e-12
    if eta == 0.0:
        np.testing.assert_allclose(capped_var[clipped], clip_var, rtol=1e-4)
    else:
        # DDPM's own sigma_s^2 is above the clip there: the cap can only drop the extra noise.
        assert np.all(sigma_sq[clipped] > clip_var)
        np.testing.assert_array_equal(cap[t][clipped], 0.0)
    assert np.all(capped_var[clipped] <= np.maximum(clip_var, sigma_sq[clipped]) * (1 + 1e-4))
    # Without a pixel clip only the final step is capped; noise_free_last=False: nothing is.
    only_last = np.asarray(variance.std_cap(P, grid, eta=eta))
    assert only_last[t[-1]] == 0 and np.all(np.isinf(only_last[t[:-1]]))
    assert np.all(np.isinf(np.asarray(variance.std_cap(P, grid, eta=eta,
                                                       noise_free_last=False))[t]))
