"""Classifier-free guidance as a transform of predictors (docs/guidance.md CG1-CG4), with oracles.

No network is trained: the conditional and unconditional predictors are the exact posterior means
of `udm.oracles` for a labelled Gaussian mixture (a component and the whole mixture), or toy
functions and fixed logits where only the algebra is checked.
"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from udm import oracles
from udm.processes import FlowProcess, GaussianProcess
from udm.processes.masking import masking
from udm.processes.sde import VPSDE
from udm.sampling import Estimate, classifier_free_guidance, guide, make_sampler, score_from_x0

# Three unit-std components on a circle of radius 0.8 in 2-D: neighbouring means are 1.39 std
# apart, so a draw of one component is often closer to another (overlap leaves room for guidance).
K, D, C = 3, 2, 0  # components, dimension, the class sampled
_ANGLES = 2 * np.pi * np.arange(K) / K
MEANS = np.stack([0.8 * np.cos(_ANGLES), 0.8 * np.sin(_ANGLES)], axis=1)   # [K, D]
STDS = np.ones(K)
WEIGHTS = np.full(K, 1.0 / K)
N = 2000


def _mixture_predictors(process):
    """(conditional, unconditional): E[x_0 | x_t, class C] and E[x_0 | x_t] for the mixture."""
    cond = oracles.gaussian_posterior_mean(process, jnp.asarray(MEANS[C:C + 1]), STDS[C])
    uncond = oracles.gaussian_mixture_posterior_mean(process, MEANS, STDS, WEIGHTS)
    return cond, uncond


def _points(n=5, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, D)))


# --- w = 0 is the conditional predictor ---------------------------------------------------------

def test_zero_scale_is_the_conditional_predictor_exactly():
    p = GaussianProcess.from_schedule("linear", 100)
    cond, uncond = _mixture_predictors(p)
    xt = _points().astype(jnp.float32)
    for t in (1, 37, 100):
        want = cond(None, xt, t)
        for guided in (classifier_free_guidance(cond, uncond, 0.0),
                       classifier_free_guidance(cond, uncond, 0, interval=(10, 50))):
            np.testing.assert_array_equal(guided(None, xt, t), want)
    # The formula itself, x0_c + w (x0_c - x0_u), adds exactly zero at w = 0 (traced inputs:
    # nothing is folded at trace time).
    x0_c, x0_u = cond(None, xt, 37), uncond(None, xt, 37)
    combined = jax.jit(lambda c, u, w: c + w * (c - u))(x0_c, x0_u, jnp.float32(0.0))
    np.testing.assert_array_equal(combined, x0_c)
    np.testing.assert_array_equal(guide(x0_c, x0_u, 0.0), x0_c)


@pytest.mark.parametrize("name,num_steps", [("ddim", 20), ("dpm_solver_pp_2m", 10)])
def test_zero_scale_sampler_reproduces_the_conditional_sampler(name, num_steps):
    p = GaussianProcess.from_schedule("linear", 100)
    cond, uncond = _mixture_predictors(p)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (64, D))
    key = jax.random.PRNGKey(1)
    plain = make_sampler(p, cond, name, num_steps=num_steps)(None, x_T, key=key)
    guided = make_sampler(p, classifier_free_guidance(cond, uncond, 0.0), name,
                          num_steps=num_steps)(None, x_T, key=key)
    np.testing.assert_array_equal(guided.x0, plain.x0)
    assert int(guided.nfe) == int(plain.nfe) == num_steps


# --- (CG2): guiding x0 is guiding eps / v / score with the same w --------------------------------

@pytest.mark.parametrize("process_name", ["gaussian", "vp", "flow"])
def test_x0_guidance_equals_eps_v_and_score_guidance(process_name):
    with jax.enable_x64(True):
        process, times = {
            "gaussian": (GaussianProcess.from_schedule("cosine", 200, dtype=jnp.float64),
                         (1, 50, 150, 200)),
            "vp": (VPSDE(), (1e-3, 0.2, 0.7, 1.0)),
            "flow": (FlowProcess(), (1e-3, 0.3, 0.9)),
        }[process_name]
        cond, uncond = _mixture_predictors(process)
        xt = _points(seed=1)
        for w in (0.5, 1.0, 3.0):
            guided = classifier_free_guidance(cond, uncond, w)
            for t in times:
                a, b = process.marginal(t)
                x0_c, x0_u, x0_g = (f(None, xt, t) for f in (cond, uncond, guided))
                np.testing.assert_allclose(x0_g, (1 + w) * x0_c - w * x0_u, rtol=1e-12,
                                           atol=1e-12)
                conversions = {
                    "eps": lambda x0: (xt - a * x0) / b,
                    # v = alpha_bar eps - beta_bar x_0
                    "v": lambda x0: a * (xt - a * x0) / b - b * x0,
                    "score": lambda x0: score_from_x0(process, t, xt, x0),
                }
                if process_name == "flow":  # the straight path's velocity eps - x_0
                    conversions["v"] = lambda x0: (xt - x0) / b
                # f = c + k x0 with |c|, |k| up to 1 / beta_bar^2 (the score): float64 rounding
                # of the cancelling terms is ~1e-16 / beta_bar^2 (3e-10 at beta_bar = 1e-3)
                atol = 1e-12 * max(1.0, 1.0 / float(b) ** 2)
                for kind, f in conversions.items():
                    want = f(x0_c) + w * (f(x0_c) - f(x0_u))   # Ho & Salimans' CFG on f
                    np.testing.assert_allclose(f(x0_g), want, rtol=1e-10, atol=atol,
                                               err_msg=f"{process_name} {kind} t={t} w={w}")
                # through the process's own inversion too
                eps_c, eps_u = process.invert(t, x0_c, xt), process.invert(t, x0_u, xt)
                np.testing.assert_allclose(process.invert(t, x0_g, xt),
                                           guide(eps_c, eps_u, w), rtol=1e-10, atol=atol)


# --- guidance moves samples onto the class --------------------------------------------------------

def _class_fraction(x0):
    resp = oracles.mixture_responsibilities(MEANS, STDS, WEIGHTS, jnp.asarray(x0))
    return float(np.mean(np.argmax(np.asarray(resp), axis=-1) == C))


@pytest.mark.parametrize("name,num_steps", [("ddim", 50), ("dpm_solver_pp_2m", 20)])
def test_guidance_raises_the_fraction_classified_as_the_class(name, num_steps):
    """Fraction of N = 2000 samples whose argmax responsibility is the class, per w.

    The linear 1000-step GaussianProcess, the same N(0, I) draws x_T for every w. Measured
    (ddim, 50 steps): w = 0: 0.632, 1: 0.884, 2: 0.983, 4: 1.000; (dpm_solver_pp_2m, 20 steps):
    0.624, 0.870, 0.979, 1.000. w = 0 is the component's own law, whose Bayes-classifier accuracy
    is about 0.63 (the overlap). Monotone within 2 SE = 2 sqrt(f (1 - f) / N) <= 0.022 per
    step (the draws are shared, so the real noise of a difference is smaller), and w = 4 above
    w = 0 by more than 0.25.
    """
    p = GaussianProcess.from_schedule("linear", 1000)
    cond, uncond = _mixture_predictors(p)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (N, D))
    fractions = []
    for w in (0.0, 1.0, 2.0, 4.0):
        out = make_sampler(p, classifier_free_guidance(cond, uncond, w), name,
                           num_steps=num_steps)(None, x_T, key=jax.random.PRNGKey(1))
        fractions.append(_class_fraction(out.x0))
    print(name, fractions)
    se = [math.sqrt(f * (1 - f) / N) for f in fractions]
    for i in range(3):
        assert fractions[i + 1] >= fractions[i] - 2 * max(se[i], se[i + 1]), fractions
    assert fractions[-1] - fractions[0] > 0.25, fractions
    assert fractions[0] < 0.75, fractions  # the overlap leaves room for guidance to act


def test_zero_scale_samples_the_component():
    """w = 0 with ddim (50 steps): the samples are the class's component N(mu_C, I).

    SE of each coordinate's mean 1 / sqrt(N) = 0.022, of its std 1 / sqrt(2N) = 0.016; tolerance
    4 SE + 0.02 (discretisation and the N(0, I) stand-in for p(x_T)). Measured: mean
    (0.788, -0.034) vs (0.8, 0), std (0.980, 0.969) (1.3 and 2.0 SE: the draws x_T's own
    sample std, which the near-linear ODE map carries over).
    """
    p = GaussianProcess.from_schedule("linear", 1000)
    cond, uncond = _mixture_predictors(p)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (N, D))
    out = make_sampler(p, classifier_free_guidance(cond, uncond, 0.0), "ddim", num_steps=50)(
        None, x_T, key=jax.random.PRNGKey(1))
    x = np.asarray(out.x0, np.float64)
    print(x.mean(0), x.std(0))
    assert np.all(np.abs(x.mean(0) - MEANS[C]) < 4 / math.sqrt(N) + 0.02), x.mean(0)
    assert np.all(np.abs(x.std(0) - STDS[C]) < 4 / math.sqrt(2 * N) + 0.02), x.std(0)


# --- (CG4): the guidance interval -----------------------------------------------------------------

def test_interval_guides_inside_and_is_conditional_outside():
    p = GaussianProcess.from_schedule("linear", 1000)
    cond, uncond = _mixture_predictors(p)
    w, interval = 2.0, (200, 600)
    guided = classifier_free_guidance(cond, uncond, w, interval=interval)
    guided_jit = jax.jit(guided)   # t traced
    xt = _points().astype(jnp.float32)
    cond_jit = jax.jit(cond)
    for t in (1, 199, 200, 400, 600, 601, 1000):
        x0_u = uncond(None, xt, t)
        for f, c in ((guided, cond), (guided_jit, cond_jit)):
            x0_c = c(None, xt, jnp.int32(t))
            got = f(None, xt, jnp.int32(t))
            if interval[0] <= t <= interval[1]:
                np.testing.assert_allclose(got, x0_c + w * (x0_c - x0_u), rtol=1e-6, atol=1e-6)
                assert np.max(np.abs(got - x0_c)) > 1e-3
            else:
                np.testing.assert_array_equal(got, x0_c)


def test_interval_in_continuous_time_and_per_example_times():
    """A [B] t selects per example; float times for an SDE."""
    def cond(params, xt, t):
        return xt * params + jnp.asarray(t).reshape(-1, 1)

    def uncond(params, xt, t):
        return -xt * params

    guided = jax.jit(classifier_free_guidance(cond, uncond, 1.5, interval=(0.2, 0.6)))
    xt = _points(4).astype(jnp.float32)
    t = jnp.asarray([0.1, 0.2, 0.5, 0.9], jnp.float32)
    got = np.asarray(guided(jnp.float32(2.0), xt, t))
    c, u = np.asarray(cond(2.0, xt, t)), np.asarray(uncond(2.0, xt, t))
    inside = np.array([False, True, True, False])
    np.testing.assert_array_equal(got[~inside], c[~inside])
    np.testing.assert_allclose(got[inside], (c + 1.5 * (c - u))[inside], rtol=1e-6)
    # the same with a scalar float time (lax.cond), inside and outside
    for s in (0.1, 0.4):
        got = guided(jnp.float32(2.0), xt, jnp.float32(s))
        c, u = cond(2.0, xt, s), uncond(2.0, xt, s)
        np.testing.assert_allclose(got, c + 1.5 * (c - u) if 0.2 <= s <= 0.6 else c, rtol=1e-6)
    # and in a VP-SDE sampler, where the unconditional branch is skipped outside the interval
    sde = VPSDE()
    cond_o, uncond_o = _mixture_predictors(sde)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (16, D))
    outs = [make_sampler(sde, classifier_free_guidance(cond_o, uncond_o, 2.0, interval=iv),
                         "dpm_solver_pp_2m", num_steps=10)(None, x_T, key=jax.random.PRNGKey(1)).x0
            for iv in ((2.0, 3.0), None)]
    plain = make_sampler(sde, cond_o, "dpm_solver_pp_2m", num_steps=10)(
        None, x_T, key=jax.random.PRNGKey(1)).x0
    # An interval no grid time falls in: the conditional sampler, up to float32 rounding (XLA
    # fuses the conditional branch's arithmetic differently inside the guided program; measured
    # at most 5e-7 apart).
    np.testing.assert_allclose(outs[0], plain, rtol=1e-6, atol=1e-6)
    assert np.max(np.abs(np.asarray(outs[1]) - np.asarray(plain))) > 0.1


# --- params, Estimate -----------------------------------------------------------------------------

def test_pair_params_and_estimates():
    def cond(params, xt, t):
        return Estimate(xt * params, jnp.float32(0.3))

    def uncond(params, xt, t):
        return Estimate(xt + params, jnp.float32(9.0))

    xt = _points(3).astype(jnp.float32)
    shared = classifier_free_guidance(cond, uncond, 2.0)(jnp.float32(3.0), xt, 5)
    assert isinstance(shared, Estimate) and float(shared.std) == np.float32(0.3)  # cond's std
    np.testing.assert_allclose(shared.x0, 3 * (3 * xt) - 2 * (xt + 3), rtol=1e-6)
    paired = classifier_free_guidance(cond, uncond, 2.0, pair_params=True)(
        (jnp.float32(3.0), jnp.float32(-1.0)), xt, 5)
    np.testing.assert_allclose(paired.x0, 3 * (3 * xt) - 2 * (xt - 1), rtol=1e-6)
    with pytest.raises(ValueError, match="pair"):
        classifier_free_guidance(cond, uncond, 2.0, pair_params=True)(jnp.float32(3.0), xt, 5)


# --- (CG3): logits space --------------------------------------------------------------------------

def _probs(shape, seed):
    return np.random.default_rng(seed).dirichlet(np.ones(shape[-1]), size=shape[:-1])


def test_logits_guidance_is_the_tempered_ratio():
    with jax.enable_x64(True):
        shape = (2, 3, 6)  # [B, l, V]
        p_c, p_u = _probs(shape, 0), _probs(shape, 1)
        offsets = np.random.default_rng(2).normal(size=(2, 2, 3, 1)) * 5  # per-row logit shifts
        l_c, l_u = jnp.asarray(np.log(p_c) + offsets[0]), jnp.asarray(np.log(p_u) + offsets[1])
        cond, uncond = (lambda params, xt, t: l_c), (lambda params, xt, t: l_u)
        xt = jnp.zeros(shape[:2], jnp.int32)
        np.testing.assert_array_equal(
            classifier_free_guidance(cond, uncond, 0.0, space="logits")(None, xt, 3), l_c)
        for w in (0.5, 1.0, 3.0):
            got = classifier_free_guidance(cond, uncond, w, space="logits")(None, xt, 3)
            want = p_c ** (1 + w) / p_u ** w
            want /= want.sum(-1, keepdims=True)
            np.testing.assert_allclose(jax.nn.softmax(got, axis=-1), want, rtol=1e-10)


def test_logits_guidance_with_zero_probabilities():
    """p_c = 0 stays 0; p_u = 0 where p_c > 0 (inconsistent branches) gives no NaN."""
    l_c = jnp.log(jnp.asarray([[0.5, 0.0, 0.3, 0.2]]))
    l_u = jnp.log(jnp.asarray([[0.4, 0.0, 0.6, 0.0]]))
    got = guide(l_c, l_u, 2.0, space="logits")
    assert np.isneginf(got[0, 1]) and np.all(np.isfinite(np.asarray(got)[0, [0, 2, 3]]))
    probs = np.asarray(jax.nn.softmax(got, axis=-1))
    assert probs[0, 1] == 0.0 and abs(probs.sum() - 1) < 1e-6


def test_logits_guidance_in_a_masking_sampler():
    """One masked position, one improved step: the tokens follow p_c^(1+w) / p_u^w normalised
    (chi-square test at false-alarm rate 1e-4 on 20000 draws)."""
    v, w, n = 5, 1.5, 20_000
    p_c = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    p_u = np.array([0.3, 0.2, 0.1, 0.25, 0.15])

    def const(probs):
        logits = jnp.log(jnp.asarray(probs, jnp.float32))
        return lambda params, xt, t: jnp.broadcast_to(logits, xt.shape + (v,))

    p = masking(1, v)
    predictor = classifier_free_guidance(const(p_c), const(p_u), w, space="logits")
    x0 = np.asarray(make_sampler(p, predictor, num_steps=1, name="improved")(
        None, p.prior(None, (n, 1)), key=jax.random.PRNGKey(1)).x0)[:, 0]
    want = p_c ** (1 + w) / p_u ** w
    want /= want.sum()
    counts = np.bincount(x0, minlength=v)
    statistic = np.sum((counts - n * want) ** 2 / (n * want))
    assert statistic < stats.chi2.ppf(1 - 1e-4, v - 1), (counts, n * want, statistic)


# --- tracing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("interval", [None, (100, 600)])
def test_guided_sampler_traces_each_branch_once(interval):
    p = GaussianProcess.from_schedule("blog", 1000)
    cond_o, uncond_o = _mixture_predictors(p)
    traces = {"cond": 0, "uncond": 0}

    def cond(params, xt, t):
        traces["cond"] += 1   # runs only while tracing
        return cond_o(None, xt, t) * params

    def uncond(params, xt, t):
        traces["uncond"] += 1
        return uncond_o(None, xt, t) * params

    for k in (10, 200):
        traces.update(cond=0, uncond=0)
        chex.clear_trace_counter()
        sample = make_sampler(p, classifier_free_guidance(cond, uncond, 1.0, interval=interval),
                              "ddim", num_steps=k, jit=False)
        sample = jax.jit(chex.assert_max_traces(sample, n=1))
        for seed in range(3):   # new keys and params must not retrace
            sample(jnp.float32(1.0 + seed), jnp.zeros((4, D)), key=jax.random.PRNGKey(seed))
        assert traces == {"cond": 1, "uncond": 1}, (k, traces)


# --- refusals -------------------------------------------------------------------------------------

def test_bad_arguments_are_refused():
    f = lambda params, xt, t: xt  # noqa: E731
    for scale in (-0.5, float("nan"), float("inf"), "2", None, True):
        with pytest.raises(ValueError, match="scale must be a finite float >= 0"):
            classifier_free_guidance(f, f, scale)
    for interval in ((5, 1), (float("nan"), 1.0), (0.1,), "ab", 3):
        with pytest.raises(ValueError, match="interval must be a pair"):
            classifier_free_guidance(f, f, 1.0, interval=interval)
    for space in ("eps", "probs", ""):
        with pytest.raises(ValueError, match="valid: x0, logits"):
            classifier_free_guidance(f, f, 1.0, space=space)
    with pytest.raises(ValueError, match="scale"):
        jax.jit(lambda w: guide(jnp.ones(2), jnp.zeros(2), w))(1.0)   # w must be static
