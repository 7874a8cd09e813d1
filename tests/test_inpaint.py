"""Inpainting as a transform of predictors (docs/inpainting.md IP1-IP6), with exact predictors.

No network is trained: the predictors are exact posterior means of Gaussian data
(`udm.oracles`), fixed estimates for cold blur and heat, and exact posterior logits of token
data (i.i.d. categorical, or a joint table over 3 positions computed by enumeration).
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from udm import oracles
from udm.processes import PROCESSES, GaussianProcess
from udm.processes.cold import cold_blur
from udm.processes.d3pm import d3pm_absorbing, d3pm_uniform
from udm.processes.edit import edit
from udm.processes.heat import heat_dissipation
from udm.processes.masking import masking
from udm.processes.sde import VPSDE
from udm.sampling import Estimate, inpainting_predictor, make_sampler

P_FALSE_ALARM = 1e-4  # every chi-square test rejects at this level; Monte Carlo means use 5 SE


def _key(i):
    return jax.random.PRNGKey(i)


def _sample(process, predictor, x_T, name, num_steps, *, params=None, seed=1, **options):
    sample = make_sampler(process, predictor, name, num_steps=num_steps, **options)
    return np.asarray(sample(params, x_T, key=_key(seed)).x0)


# --- the known part is kept exactly ------------------------------------------------------------

@pytest.mark.parametrize("name,num_steps", [("ddpm", 50), ("ddim", 50), ("ddim", 7)])
@pytest.mark.parametrize("per_example", [False, True])
def test_gaussian_known_part_is_exact(name, num_steps, per_example):
    p = GaussianProcess.from_schedule("linear", 50)
    rng = np.random.default_rng(0)
    shape = (16, 4, 4, 1)
    known_shape = shape if per_example else shape[1:]
    known = rng.normal(size=known_shape).astype(np.float32)
    mask = rng.random(known_shape) < 0.5
    predictor = inpainting_predictor(oracles.gaussian_posterior_mean(p, 0.0, 1.0), known, mask)
    x_T = jax.random.normal(_key(0), shape)
    out = _sample(p, predictor, x_T, name, num_steps)
    known_b, mask_b = np.broadcast_to(known, shape), np.broadcast_to(mask, shape)
    np.testing.assert_array_equal(out[mask_b], known_b[mask_b])
    assert np.all(np.isfinite(out)) and np.std(out[~mask_b]) > 0.5


def test_continuous_time_ddim_ends_with_the_known_part():
    """The continuous-time samplers end with an x_0 estimate at t_min: (IP1) exactly."""
    sde = VPSDE()
    known = np.array([0.3, -1.2, 2.0, 0.7], np.float32)
    mask = np.array([True, False, True, False])
    predictor = inpainting_predictor(oracles.gaussian_posterior_mean(sde, 0.0, 1.0), known,
                                     mask)
    out = _sample(sde, predictor, jax.random.normal(_key(0), (32, 4)), "ddim", 20)
    np.testing.assert_array_equal(out[:, mask], np.broadcast_to(known[mask], (32, 2)))


@pytest.mark.parametrize("make", [lambda: cold_blur(num_timesteps=6),
                                  lambda: heat_dissipation(num_timesteps=6, sigma=0.0)],
                         ids=["cold", "heat"])
def test_cold_and_heat_baseline_ends_with_the_inpainted_estimate(make):
    """sigma = 0 and the baseline design: x_s = F_s(x0_tilde), F_0 = I, so x_0 = x0_tilde.

    The predictor returns a fixed image (its params), which disagrees with the known part; the
    result is that image with its known pixels replaced, bit for bit.
    """
    process = make()
    rng = np.random.default_rng(3)
    estimate = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    known = rng.uniform(-1, 1, (8, 8, 1)).astype(np.float32)
    mask = np.zeros((8, 8, 1), bool)
    mask[:, :4] = True                                        # the left half is known
    predictor = inpainting_predictor(lambda params, xt, t: params, known, mask)
    x_T = process.degrade(process.num_timesteps, estimate)
    out = _sample(process, predictor, x_T, "baseline", process.num_timesteps, params=estimate)
    np.testing.assert_array_equal(out, np.where(mask, known, np.asarray(estimate)))


def test_estimate_std_is_zero_on_the_known_part():
    known = np.array([1.0, 2.0, 3.0], np.float32)
    mask = np.array([True, False, True])
    for std in (0.5, jnp.full((2, 3), 0.5), jnp.full((3,), 0.5)):
        f = inpainting_predictor(lambda params, xt, t, std=std: Estimate(2.0 * xt, std),
                                 known, mask)
        out = f(None, jnp.ones((2, 3)), 4)
        assert isinstance(out, Estimate)
        np.testing.assert_array_equal(out.x0, [[1.0, 2.0, 3.0]] * 2)
        np.testing.assert_array_equal(out.std, [[0.0, 0.5, 0.0]] * 2)


# --- Gaussian data: where (IP1) is exact, and its bias where it is not --------------------------

T_GAUSS = 200   # the full DDPM chain of a linear schedule
N_GAUSS = 20_000
MU = np.array([0.5, -0.3, 0.2, 0.1])
KNOWN_COORDS = np.array([True, True, False, False])
X_KNOWN = np.array([1.5, -1.0])   # the values of coordinates 0 and 1


def _correlated_cov(rho=0.8):
    """Unit variances; coordinate 0 with 2 and 1 with 3 correlated by rho, the rest independent."""
    cov = np.eye(4)
    cov[0, 2] = cov[2, 0] = cov[1, 3] = cov[3, 1] = rho
    return cov


def _conditional_law(cov):
    """Mean and covariance of x_u | x_k = X_KNOWN for x_0 ~ N(MU, cov)."""
    k, u = KNOWN_COORDS, ~KNOWN_COORDS
    s_uk, s_kk = cov[np.ix_(u, k)], cov[np.ix_(k, k)]
    mean = MU[u] + s_uk @ np.linalg.solve(s_kk, X_KNOWN - MU[k])
    return mean, cov[np.ix_(u, u)] - s_uk @ np.linalg.solve(s_kk, s_uk.T)


def _replacement_law(process, cov):
    """The exact law N(m, C) of full-chain DDPM with the inpainted posterior mean (IP1, IP6).

    Every step is affine in x_t plus fresh Gaussian noise: x0_tilde = P_u (MU + G (x_t - a MU))
    + P_k x_known with G = a cov (a^2 cov + b^2 I)^{-1}, and x_s = a_s x0_tilde + b_s (keep
    (x_t - a x0_tilde) / b + sigma_tilde z); so the mean and covariance follow a linear recursion
    from N(0, I).
    """
    alpha, beta = np.asarray(process.alpha_bar), np.asarray(process.beta_bar)
    d, u = len(MU), ~KNOWN_COORDS
    mean, var = np.zeros(d), np.eye(d)
    x_known = np.zeros(d)
    x_known[KNOWN_COORDS] = X_KNOWN
    for t in range(process.num_timesteps, 0, -1):
        a, b, a_s, b_s = alpha[t], beta[t], alpha[t - 1], beta[t - 1]
        gain = a * cov @ np.linalg.inv(a ** 2 * cov + b ** 2 * np.eye(d))
        lin = np.where(u[:, None], gain, 0.0)                       # x0_tilde = lin x_t + off
        off = np.where(u, MU - a * gain @ MU, x_known)
        sigma_tilde = np.sqrt(1.0 - (a / a_s) ** 2) / b
        keep = np.sqrt(max(1.0 - sigma_tilde ** 2, 0.0))
        step = a_s * lin + b_s * keep / b * (np.eye(d) - a * lin)
        shift = a_s * off - b_s * keep / b * a * off
        mean = step @ mean + shift
        var = step @ var @ step.T + (b_s * sigma_tilde) ** 2 * np.eye(d)
    return mean[u], var[np.ix_(u, u)]


def _gaussian_inpaint(predictor, process):
    x_T = jax.random.normal(_key(0), (N_GAUSS, 4), jnp.float64)
    known = np.where(KNOWN_COORDS, np.pad(X_KNOWN, (0, 2)), 0.0)
    inpainted = inpainting_predictor(predictor, known, KNOWN_COORDS)
    out = _sample(process, inpainted, x_T, "ddpm", T_GAUSS)
    np.testing.assert_array_equal(out[:, KNOWN_COORDS], np.broadcast_to(X_KNOWN, (N_GAUSS, 2)))
    return out[:, ~KNOWN_COORDS]


def test_correlated_gaussian_replacement_bias():
    """Correlation 0.8 between each known and one unknown coordinate: (IP1) is biased (IP5).

    x_0 ~ N(MU, cov), known x_0[:2] = (1.5, -1.0); the true conditional of x_0[2:] has mean
    (1.000, -0.460) and std 0.600 per coordinate. Full-chain DDPM (T = K = 200, linear schedule)
    with the inpainted exact posterior mean E[x_0 | x_t] (IP6), N = 20000 draws in float64:

      measured mean  (0.691, -0.252) +- 0.005 (MC SE): bias (-0.309, +0.208);
      measured std   (0.716, 0.721) +- 0.004 (MC SE): error (+0.116, +0.121) on the
                     conditional std 0.600;
      the exact law of this sampler (a linear-Gaussian recursion, `_replacement_law`): mean
      (0.695, -0.247), bias (-0.305, +0.213), so the filled coordinates move only 62% of the
      way from MU[2:] to the conditional mean; std 0.720 (+0.120), of which -0.02 is the plain
      sampler's own error on this chain (its std is 0.980 where the data's is 1).
      The Monte Carlo agrees with that law within 5 SE.

    The bias is asserted within 5 MC SE of these figures, so a change of the method or of the
    samplers shows up here.
    """
    with jax.enable_x64(True):
        p = GaussianProcess.from_schedule("linear", T_GAUSS, dtype=jnp.float64)
        cov = _correlated_cov()
        filled = _gaussian_inpaint(oracles.correlated_gaussian_posterior_mean(p, MU, cov), p)
    true_mean, true_cov = _conditional_law(cov)
    law_mean, law_cov = _replacement_law(p, cov)
    mean, std = filled.mean(0), filled.std(0)
    se_mean, se_std = std / np.sqrt(N_GAUSS), std / np.sqrt(2 * N_GAUSS)
    # The Monte Carlo follows the sampler's exact law ...
    np.testing.assert_array_less(np.abs(mean - law_mean), 5 * se_mean)
    np.testing.assert_array_less(np.abs(std - np.sqrt(np.diag(law_cov))), 5 * se_std)
    # ... whose bias against the true conditional is the measured one.
    np.testing.assert_allclose(true_mean, [1.0, -0.46])
    np.testing.assert_allclose(np.sqrt(np.diag(true_cov)), [0.6, 0.6])
    np.testing.assert_array_less(np.abs(mean - true_mean - np.array([-0.305, 0.213])),
                                 5 * se_mean + 0.005)
    np.testing.assert_array_less(np.abs(std - np.sqrt(np.diag(true_cov)) - 0.12),
                                 5 * se_std + 0.005)


def test_independent_gaussian_filled_part_follows_its_marginal():
    """Diagonal cov: E[x_0,u | x_t] reads x_t,u only, so (IP1) changes nothing on the unknown
    coordinates. With the exact posterior std in an `Estimate` DDPM is an exact sampler, and the
    filled coordinates follow N(MU_u, diag) within 5 MC SE (and equal the plain sampler's)."""
    stds = np.array([1.0, 0.5, 1.5, 0.7])
    with jax.enable_x64(True):
        p = GaussianProcess.from_schedule("linear", T_GAUSS, dtype=jnp.float64)
        mean_fn = oracles.correlated_gaussian_posterior_mean(p, MU, np.diag(stds ** 2))

        def exact(params, xt, t):
            a, b = p.marginal(t)
            std = stds * b / jnp.sqrt(a ** 2 * stds ** 2 + b ** 2)   # of x_0 | x_t
            return Estimate(mean_fn(params, xt, t), jnp.broadcast_to(std, xt.shape))

        filled = _gaussian_inpaint(exact, p)
        x_T = jax.random.normal(_key(0), (N_GAUSS, 4), jnp.float64)
        plain = _sample(p, exact, x_T, "ddpm", T_GAUSS)[:, ~KNOWN_COORDS]
    np.testing.assert_allclose(filled, plain, rtol=0, atol=1e-12)
    mean, std = filled.mean(0), filled.std(0)
    want_std = stds[~KNOWN_COORDS]
    np.testing.assert_array_less(np.abs(mean - MU[~KNOWN_COORDS]), 5 * want_std / np.sqrt(N_GAUSS))
    np.testing.assert_array_less(np.abs(std - want_std), 5 * want_std / np.sqrt(2 * N_GAUSS))
    assert abs(np.corrcoef(filled.T)[0, 1]) < 5 / np.sqrt(N_GAUSS)


# --- tokens: i.i.d. data --------------------------------------------------------------------

L_IID, V_IID = 6, 4
PROBS = np.array([0.1, 0.2, 0.3, 0.4])


def _iid_logits(params, xt, t):
    """The exact p(x_0 | x_t) at every masked position of i.i.d. data: the data categorical."""
    del params, t
    return jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), xt.shape + (V_IID,))


def _chi2(counts, probs):
    """Pearson's statistic and its 1 - P_FALSE_ALARM quantile; cells expecting fewer than 5
    counts are pooled into one (the chi-square approximation needs expected counts >= 5)."""
    expected = counts.sum() * np.asarray(probs)
    small = expected < 5
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    statistic = np.sum((counts - expected) ** 2 / expected)
    return statistic, stats.chi2.ppf(1 - P_FALSE_ALARM, len(expected) - 1)


@pytest.mark.parametrize("reveal", [False, True])
def test_masking_iid_tokens_filled_from_the_categorical(reveal):
    """Per-example known positions (40%) and tokens; improved sampler on the full chain. The
    known tokens are never changed and the filled ones follow PROBS (chi-square, 1e-4)."""
    p = masking(L_IID, V_IID)
    n = 5000
    rng = np.random.default_rng(4)
    mask = rng.random((n, L_IID)) < 0.4
    known = np.where(mask, rng.integers(0, V_IID, (n, L_IID)), p.mask_id).astype(np.int32)
    predictor = inpainting_predictor(_iid_logits, known, mask, space="logits", reveal=reveal,
                                     process=p)
    out = _sample(p, predictor, p.prior(None, (n, L_IID)), "improved", L_IID)
    np.testing.assert_array_equal(out[mask], known[mask])
    filled = out[~mask]
    assert filled.min() >= 0 and filled.max() < V_IID
    statistic, threshold = _chi2(np.bincount(filled, minlength=V_IID), PROBS)
    assert statistic < threshold, (statistic, threshold)


def test_d3pm_absorbing_with_reveal_keeps_the_known_tokens():
    p = d3pm_absorbing(L_IID, V_IID, 12)
    n = 4000
    rng = np.random.default_rng(5)
    mask = rng.random((n, L_IID)) < 0.5
    known = rng.integers(0, V_IID, (n, L_IID)).astype(np.int32)
    for reveal in (False, True):
        predictor = inpainting_predictor(_iid_logits, known, mask, space="logits",
                                         reveal=reveal, process=p)
        out = _sample(p, predictor, p.prior(None, (n, L_IID)), "improved", 12)
        np.testing.assert_array_equal(out[mask], known[mask])
        filled = out[~mask]
        assert filled.min() >= 0 and filled.max() < V_IID  # no MASK left
        statistic, threshold = _chi2(np.bincount(filled, minlength=V_IID), PROBS)
        assert statistic < threshold, (reveal, statistic, threshold)


# --- tokens: a correlated law over 3 positions, by enumeration --------------------------------

L3, V3 = 3, 3
KNOWN_POS, KNOWN_TOKEN = 1, 2
N_TOKENS = 20_000
ALL_SEQ = np.array(list(itertools.product(range(V3), repeat=L3)))    # [27, 3], row-major order


def _joint_table():
    """An arbitrary (strongly correlated) law over V^l = 27 sequences: Dirichlet(0.5) draws."""
    return np.random.default_rng(11).dirichlet(np.full(V3 ** L3, 0.5)).reshape(V3, V3, V3)


def _enumeration_oracle(table):
    """The exact masking-process estimate: logits of p(x_0[i] | the unmasked tokens of x_t)."""
    probs = jnp.asarray(table.reshape(-1), jnp.float32)
    seqs = jnp.asarray(ALL_SEQ, jnp.int32)
    hot = jax.nn.one_hot(seqs, V3)                                   # [27, l, V]

    def predictor(params, xt, t):
        del params, t
        visible = xt[:, None, :] != V3                               # [B, 1, l]
        agree = jnp.all(~visible | (xt[:, None, :] == seqs[None]), axis=-1)  # [B, 27]
        weights = jnp.where(agree, probs[None], 0.0)
        marginals = jnp.einsum("bs,slv->blv", weights, hot)
        return jnp.log(marginals)
    return predictor


def _sample_table(table, reveal):
    p = masking(L3, V3)
    mask = np.arange(L3) == KNOWN_POS
    known = np.where(mask, KNOWN_TOKEN, 0).astype(np.int32)
    predictor = inpainting_predictor(_enumeration_oracle(table), known, mask, space="logits",
                                     reveal=reveal, process=p)
    out = _sample(p, predictor, p.prior(None, (N_TOKENS, L3)), "improved", L3, seed=2)
    np.testing.assert_array_equal(out[:, KNOWN_POS], KNOWN_TOKEN)
    return np.bincount(out[:, 0] * V3 + out[:, 2], minlength=V3 * V3)   # (x_0, x_2) counts


def _true_conditional(table):
    cond = table[:, KNOWN_TOKEN, :]
    return (cond / cond.sum()).reshape(-1)


def _no_reveal_law(table):
    """The exact law of (x_0, x_2) under the full-chain improved sampler without reveal.

    Each step unmasks one uniformly chosen masked position, so the order is a uniform
    permutation; position i is drawn from p(x_0[i] | the tokens unmasked before it) (the known
    position from its one-hot logits), which ignores the known token until it is unmasked.
    """
    law = np.zeros((V3,) * L3)
    orders = list(itertools.permutations(range(L3)))
    for seq in ALL_SEQ:
        if seq[KNOWN_POS] != KNOWN_TOKEN:
            continue
        total = 0.0
        for order in orders:
            prob, seen = 1.0, []
            for i in order:
                if i != KNOWN_POS:
                    agree = np.all(ALL_SEQ[:, seen] == seq[seen], axis=1)
                    w = table.reshape(-1) * agree
                    prob *= w[ALL_SEQ[:, i] == seq[i]].sum() / w.sum()
                seen.append(i)
            total += prob / len(orders)
        law[tuple(seq)] = total
    return law[:, KNOWN_TOKEN, :].reshape(-1)


def test_masking_reveal_samples_the_exact_conditional():
    """reveal=True with the exact oracle: (x_0, x_2) | x_1 = 2 follows table[:, 2, :] normalised
    (chi-square over the 9 cells at 1e-4): the exactness of (IP3)."""
    table = _joint_table()
    counts = _sample_table(table, reveal=True)
    statistic, threshold = _chi2(counts, _true_conditional(table))
    assert statistic < threshold, (statistic, threshold)


def test_masking_without_reveal_deviates_from_the_conditional():
    """Without reveal the estimate ignores the known token until the chain unmasks it.

    On this table the sampler's exact law (`_no_reveal_law`) is 0.266 in total variation from
    the true conditional (the Monte Carlo TV, N = 20000, is 0.268; with reveal it is 0.003,
    sampling noise); the counts follow that law (chi-square at 1e-4) and reject the true
    conditional.
    """
    table = _joint_table()
    counts = _sample_table(table, reveal=False)
    law, truth = _no_reveal_law(table), _true_conditional(table)
    tv = 0.5 * np.abs(law - truth).sum()
    np.testing.assert_allclose(tv, 0.266, atol=0.001)
    statistic, threshold = _chi2(counts, law)
    assert statistic < threshold, (statistic, threshold)
    assert _chi2(counts, truth)[0] > threshold
    assert abs(0.5 * np.abs(counts / N_TOKENS - truth).sum() - tv) < 0.03


# --- capabilities and refusals ----------------------------------------------------------------

KWARGS = {
    "gaussian": dict(schedule="blog", num_timesteps=20),
    "cold_blur": dict(num_timesteps=5),
    "heat": dict(num_timesteps=5, sigma=0.0),
    "masking": dict(seq_len=4, vocab_size=5),
    "edit": dict(seq_len=4, vocab_size=5),
    "d3pm_uniform": dict(seq_len=4, vocab_size=5, num_timesteps=6),
    "d3pm_absorbing": dict(seq_len=4, vocab_size=5, num_timesteps=6),
    "encoding": dict(seq_len=4, vocab_size=5, latent_dim=8, num_timesteps=20),
    "sde": dict(sde="vp"),
    "flow": dict(prediction="velocity"),
}


def test_absorbing_capability_is_declared_by_masking_and_absorbing_d3pm_only():
    assert sorted(KWARGS) == sorted(PROCESSES.names())
    absorbing = {n for n in KWARGS if PROCESSES.get(n)(**KWARGS[n]).capabilities.absorbing}
    assert absorbing == {"masking", "d3pm_absorbing"}
    for name in absorbing:
        process = PROCESSES.get(name)(**KWARGS[name])
        assert process.mask_id == process.vocab_size


def _zeros(params, xt, t):
    return jnp.zeros(xt.shape, jnp.float32)


def test_bad_masks_and_values_raise():
    known = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="boolean"):
        inpainting_predictor(_zeros, known, np.array([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="boolean"):
        inpainting_predictor(_zeros, known, np.array([1.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="at least one dimension"):
        inpainting_predictor(_zeros, known, np.bool_(True))
    with pytest.raises(ValueError, match="do not broadcast"):
        inpainting_predictor(_zeros, known, np.ones(3, bool))
    with pytest.raises(ValueError, match="finite"):
        inpainting_predictor(_zeros, np.array([np.nan, 0, 0, 0]), np.ones(4, bool))
    # NaN where mask is False is never read: accepted
    inpainting_predictor(_zeros, np.array([np.nan, 0, 0, 0]), np.array([False, True, True, True]))
    with pytest.raises(ValueError, match="numeric"):
        inpainting_predictor(_zeros, np.array(["a"] * 4), np.ones(4, bool))
    with pytest.raises(ValueError, match="unknown inpainting space"):
        inpainting_predictor(_zeros, known, np.ones(4, bool), space="eps")
    with pytest.raises(ValueError, match="callable"):
        inpainting_predictor(None, known, np.ones(4, bool))
    # known / mask that do not fit x_0 are refused at call time
    f = inpainting_predictor(_zeros, known, np.ones(4, bool))
    with pytest.raises(ValueError, match="does not broadcast against x0_hat"):
        f(None, jnp.zeros((2, 5)), 1)
    with pytest.raises(ValueError, match="does not broadcast against x0_hat"):
        f(None, jnp.zeros((4, 1)), 1)     # would broadcast to [4, 4], changing x_0's shape


def test_bad_token_inputs_raise():
    p = masking(4, 5)
    mask = np.array([True, False, True, False])
    with pytest.raises(ValueError, match="integer token ids"):
        inpainting_predictor(_iid_logits, np.zeros(4, np.float32), mask, space="logits")
    with pytest.raises(ValueError, match=r"in \[0, V=5\)"):
        inpainting_predictor(_iid_logits, np.array([5, 0, 1, 0]), mask, space="logits",
                             process=p)
    with pytest.raises(ValueError, match=r"in \[0, V=None\)"):
        inpainting_predictor(_iid_logits, np.array([-1, 0, 1, 0]), mask, space="logits")
    # the MASK id at an unknown position is fine
    inpainting_predictor(_iid_logits, np.array([1, 5, 1, 5]), mask, space="logits", process=p)
    with pytest.raises(ValueError, match="sequence length"):
        inpainting_predictor(_iid_logits, np.zeros(3, np.int32), np.ones(3, bool),
                             space="logits", process=p)
    with pytest.raises(ValueError, match="use space='logits'"):
        inpainting_predictor(_iid_logits, np.zeros(4, np.int32), mask, process=p)
    with pytest.raises(ValueError, match="use space='x0'"):
        inpainting_predictor(_zeros, np.zeros(4, np.int32), mask, space="logits",
                             process=GaussianProcess.from_schedule("cosine", 10))
    f = inpainting_predictor(lambda params, xt, t: Estimate(jnp.zeros(xt.shape + (5,)), 1.0),
                             np.zeros(4, np.int32), mask, space="logits")
    with pytest.raises(ValueError, match="not an Estimate"):
        f(None, jnp.zeros((2, 4), jnp.int32), 1)


@pytest.mark.parametrize("process", [
    GaussianProcess.from_schedule("cosine", 10), d3pm_uniform(4, 5, 6), edit(4, 5),
    cold_blur(num_timesteps=3)], ids=["gaussian", "d3pm_uniform", "edit", "cold"])
def test_reveal_is_refused_where_it_is_not_valid(process):
    tokens = process.capabilities.tokens
    known = np.zeros(4, np.int32 if tokens else np.float32)
    with pytest.raises(ValueError, match="masking, absorbing D3PM"):
        inpainting_predictor(_iid_logits if tokens else _zeros, known, np.ones(4, bool),
                             space="logits" if tokens else "x0", reveal=True, process=process)


def test_reveal_needs_a_process_and_a_flag():
    mask = np.ones(4, bool)
    with pytest.raises(ValueError, match="needs the process"):
        inpainting_predictor(_iid_logits, np.zeros(4, np.int32), mask, space="logits",
                             reveal=True)
    with pytest.raises(ValueError, match="True or False"):
        inpainting_predictor(_iid_logits, np.zeros(4, np.int32), mask, space="logits",
                             reveal="yes", process=masking(4, 5))
