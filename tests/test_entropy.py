"""Entropy normalisation (docs/entropy_attention.md Part B): the post's reference run, identities, invariants."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from udm.entropy import (entropy, entropy_normalize, newton_trace, sample_with_entropy,
                         sum_tolerance)


def _entropy64(p):
    """Exact (float64 numpy) entropy along the last axis, 0 log 0 = 0."""
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _entropy_of_power(p, gamma):
    """(N2): the entropy of p^gamma / sum p^gamma, in float64."""
    q = np.where(p > 0, p, 0.0) ** gamma
    return _entropy64(q / q.sum())


def _reference_p():
    rng = np.random.default_rng(0)
    p = rng.random(100)
    return p / p.sum()


# ----------------------------------------------------------------------------- the function H


def test_entropy_closed_forms():
    n = 7
    assert np.isclose(entropy(jnp.full((n,), 1.0 / n)), np.log(n), atol=1e-6)
    assert entropy(jnp.eye(3)[1]) == 0.0  # 0 log 0 = 0, no NaN
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
    np.testing.assert_allclose(entropy(logits=logits), entropy(jax.nn.softmax(logits)), atol=1e-6)
    # A masked entry behaves like a zero-probability one.
    where = jnp.array([True, True, False, True, True])
    masked = jax.nn.softmax(jnp.where(where, logits, -jnp.inf))
    np.testing.assert_allclose(entropy(logits=logits, where=where), entropy(masked), atol=1e-6)
    np.testing.assert_allclose(entropy(logits=logits.T, axis=0), entropy(logits=logits), atol=1e-6)


# ----------------------------------------------------------------------------- docs/entropy_attention.md B.7


def test_reference_run_matches_post_and_bisection():
    p = _reference_p()
    target = np.log(30.0)
    with jax.enable_x64(True):
        trace = jax.tree.map(np.asarray, newton_trace(target, probs=jnp.asarray(p), num_iter=5))
        result = jax.tree.map(np.asarray, entropy_normalize(target, probs=jnp.asarray(p)))
    assert np.isclose(_entropy64(p), 4.4191, atol=1e-4)
    np.testing.assert_allclose(trace.gammas, [5.6467, 1.5236, 1.0813, 1.0029, 1.0000], atol=1e-3)
    np.testing.assert_allclose(trace.entropies, [3.7112, 3.4524, 3.4030, 3.4012, 3.4012],
                               atol=1e-3)
    exact = scipy.optimize.brentq(lambda g: _entropy_of_power(p, g) - target, 1.0, 100.0,
                                  xtol=1e-14)
    assert np.isclose(exact, 9.3299, atol=1e-4)
    assert np.isclose(np.prod(trace.gammas), exact, rtol=1e-5)  # 5 steps: |H - H*| ~ 3e-6
    assert np.isclose(result.exponent, exact, rtol=1e-9)
    assert int(result.iterations) == 5
    # The library in float32: same exponent to float32 accuracy.
    result32 = entropy_normalize(target, probs=jnp.asarray(p, jnp.float32))
    assert np.isclose(result32.exponent, exact, rtol=1e-5)
    assert abs(_entropy64(result32.probs) - target) < 1e-5
    # (N3): one step is the first Newton gamma.
    one = entropy_normalize(target, probs=jnp.asarray(p, jnp.float32), method="one_step")
    assert np.isclose(one.exponent, 5.6467, atol=1e-3) and int(one.iterations) == 1


def test_derivative_of_entropy_at_gamma_one():
    """dH_gamma/dgamma at gamma = 1 equals H^2 - sum p (log p)^2 = -Var_p[log p] (N3)."""
    p = _reference_p()
    h = 1e-5
    fd = (_entropy_of_power(p, 1 + h) - _entropy_of_power(p, 1 - h)) / (2 * h)
    closed = _entropy64(p) ** 2 - np.sum(p * np.log(p) ** 2)
    assert np.isclose(fd, closed, atol=1e-9)
    assert np.isclose(closed, -0.219048434, atol=1e-9)  # the documented number


@pytest.mark.parametrize("seed,iterations", [(0, 4), (1, 2), (2, 3), (3, 3), (4, 3), (5, 3)])
def test_peaked_dirichlet_converges_in_four_steps(seed, iterations):
    p = np.random.default_rng(seed).dirichlet(np.full(1000, 0.1))
    target = np.log(20.0)
    with jax.enable_x64(True):
        result = entropy_normalize(target, probs=jnp.asarray(p), tol=1e-4)
        assert abs(float(result.entropy) - target) < 1e-4
    assert int(result.iterations) == iterations <= 4  # the documented counts, float64
    result32 = entropy_normalize(target, probs=jnp.asarray(p, jnp.float32), tol=1e-4)
    assert int(result32.iterations) <= 4 and abs(_entropy64(result32.probs) - target) < 1e-4


# ----------------------------------------------------------------------------- invariants


# Float32 throughout. Achieved |H - H*| (a float64 recomputation from the returned
# probabilities, 8 rows per case, targets 5%..95% of log n): <= 2.5e-6 nats for every n up to
# 1e5, in <= 8 iterations; the 1e-5 bound below holds with margin at every size.
@pytest.mark.parametrize("n", [2, 10, 1000, 100_000])
@pytest.mark.parametrize("alpha", [0.05, 10.0])
def test_invariants_on_dirichlet_rows(n, alpha):
    rng = np.random.default_rng(n + int(alpha * 100))
    rows = 3
    p = rng.dirichlet(np.full(n, alpha), size=rows).astype(np.float32)
    # XLA on CPU flushes float32 subnormals to zero: make those zeros explicit.
    p = np.where(p < np.finfo(np.float32).tiny, 0.0, p)
    p32 = jnp.asarray(p)
    p = p.astype(np.float64)  # the exact values the library sees
    support_max = np.log(np.sum(p > 0, axis=-1))
    targets = np.array([0.1, 0.5, 0.9]) * support_max
    result = entropy_normalize(jnp.asarray(targets, jnp.float32), probs=p32)
    q = np.asarray(result.probs, np.float64)
    assert np.all(np.isfinite(q))
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_less(np.abs(_entropy64(q) - targets), 1e-5)
    np.testing.assert_array_less(result.iterations, 20)  # converged, not capped
    assert np.all(q[p == 0] == 0)
    for row in range(rows):  # order preserved (weakly: float32 may round tiny values to 0)
        order = np.argsort(p[row], kind="stable")
        assert np.all(np.diff(q[row][order]) >= 0)
        order = order[p[row][order] > 0]
        assert np.all(np.diff(np.asarray(result.log_probs[row])[order]) >= 0)
    # Exponent: the probabilities are p^gamma / Z.
    log_q = np.log(np.where(q > 0, q, 1.0))
    logp = np.log(np.where(p > 0, p, 1.0))
    expected = np.asarray(result.exponent)[:, None] * logp
    expected = expected - scipy.special.logsumexp(np.where(p > 0, expected, -np.inf), axis=-1,
                                                  keepdims=True)
    big = q > 1e-20
    np.testing.assert_allclose(log_q[big], expected[big], atol=2e-3)


def test_target_equal_to_own_entropy_returns_p():
    p = jnp.asarray(np.random.default_rng(1).dirichlet(np.full(50, 0.3), size=4), jnp.float32)
    result = entropy_normalize(entropy(p), probs=p)
    np.testing.assert_array_equal(result.exponent, 1.0)
    np.testing.assert_array_equal(result.iterations, 0)
    np.testing.assert_allclose(result.probs, p, rtol=1e-5, atol=1e-9)


def test_zeros_and_masked_entries_stay_zero():
    logits = jax.random.normal(jax.random.PRNGKey(2), (4, 12))
    logits = logits.at[:, 3].set(-jnp.inf)
    where = jnp.arange(12) % 4 != 1
    result = entropy_normalize(1.0, logits=logits, where=where)
    assert np.all(result.probs[:, 3] == 0) and np.all(result.probs[:, 1::4] == 0)
    assert np.all(result.log_probs[:, 1::4] == -np.inf)
    np.testing.assert_allclose(result.entropy, 1.0, atol=1e-5)
    np.testing.assert_allclose(entropy(result.probs), 1.0, atol=1e-5)


def test_logits_equal_probs_and_axis():
    logits = 3.0 * jax.random.normal(jax.random.PRNGKey(3), (3, 40))
    targets = jnp.array([0.5, 2.0, 3.5])
    from_logits = entropy_normalize(targets, logits=logits)
    from_probs = entropy_normalize(targets, probs=jax.nn.softmax(logits))
    np.testing.assert_allclose(from_logits.probs, from_probs.probs, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(from_logits.exponent, from_probs.exponent, rtol=1e-4)
    transposed = entropy_normalize(targets, logits=logits.T, axis=0)
    np.testing.assert_allclose(transposed.probs.T, from_logits.probs, rtol=1e-6, atol=1e-9)
    # Softmax temperature view (B.2): softmax(gamma z).
    np.testing.assert_allclose(from_logits.probs,
                               jax.nn.softmax(from_logits.exponent[:, None] * logits),
                               rtol=1e-4, atol=1e-8)


def test_jit_and_vmap_match_eager():
    logits = 2.0 * jax.random.normal(jax.random.PRNGKey(4), (2, 3, 30))
    targets = jnp.array([[0.3, 1.5, 3.0], [2.0, 2.5, 1.0]])
    eager = entropy_normalize(targets, logits=logits)
    jitted = jax.jit(lambda t, z: entropy_normalize(t, logits=z))(targets, logits)
    mapped = jax.vmap(lambda t, z: entropy_normalize(t, logits=z))(targets, logits)
    for other in (jitted, mapped):
        np.testing.assert_allclose(other.probs, eager.probs, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(other.exponent, eager.exponent, rtol=1e-5)
        np.testing.assert_array_equal(other.iterations, eager.iterations)


@pytest.mark.parametrize("method", ["newton", "one_step"])
def test_gradient_matches_finite_differences(method):
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.PRNGKey(5), (2, 6), jnp.float64)
        z = z.at[1, 2].set(-jnp.inf)  # a zero: its gradient must be finite (zero)
        weights = jax.random.normal(jax.random.PRNGKey(6), (2, 6), jnp.float64)
        target = jnp.array([0.8, 1.1])
        normalize = functools.partial(entropy_normalize, method=method, tol=1e-13, max_iter=50)

        def loss(z, target):
            return jnp.sum(weights * normalize(target, logits=z).probs)

        grad_z, grad_t = jax.grad(loss, argnums=(0, 1))(z, target)
        assert np.all(np.isfinite(grad_z)) and grad_z[1, 2] == 0
        eps = 1e-6
        for i, j in [(0, 0), (0, 3), (1, 1), (1, 5)]:
            dz = jnp.zeros_like(z).at[i, j].set(eps)
            fd = (loss(z + dz, target) - loss(z - dz, target)) / (2 * eps)
            assert np.isclose(grad_z[i, j], fd, rtol=1e-6, atol=1e-9), (i, j)
        for i in range(2):
            dt = jnp.zeros_like(target).at[i].set(eps)
            fd = (loss(z, target + dt) - loss(z, target - dt)) / (2 * eps)
            assert np.isclose(grad_t[i], fd, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- errors


def test_errors_eager():
    p = jnp.asarray(_reference_p(), jnp.float32)
    with pytest.raises(ValueError, match=r"outside the reachable range.*row of 100 entries"):
        entropy_normalize(5.0, probs=p)
    with pytest.raises(ValueError, match="outside the reachable range"):
        entropy_normalize(-0.1, probs=p)
    with pytest.raises(ValueError, match=r"log 3 = "):
        entropy_normalize(1.2, probs=jnp.array([0.5, 0.0, 0.3, 0.2]))
    with pytest.raises(ValueError, match="sum to one"):
        entropy_normalize(1.0, probs=jnp.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.3]]))
    with pytest.raises(ValueError, match="uniform"):
        entropy_normalize(0.5, probs=jnp.full((4,), 0.25))
    with pytest.raises(ValueError, match="uniform"):
        entropy_normalize(0.5, logits=jnp.zeros((2, 5)), where=jnp.array([1, 1, 0, 0, 0], bool))
    with pytest.raises(ValueError, match="exactly one"):
        entropy_normalize(0.5)
    # The boundary itself (log n, float32-rounded) is accepted.
    entropy_normalize(jnp.log(jnp.float32(100.0)), probs=p)


@pytest.mark.parametrize("kwargs,message", [
    (dict(probs=[[0.5, 0.5, 0.0], [0.5, np.nan, 0.5]]),
     r"probs contain NaN in row \(1,\); probabilities must be finite"),
    (dict(probs=[[0.5, np.inf, 0.5]]), r"probs contain inf in row \(0,\)"),
    (dict(logits=[[0.0, 1.0], [np.nan, 1.0]]), r"logits contain NaN in row \(1,\); logits "
                                               r"must be finite or -inf"),
    (dict(logits=[[0.0, np.inf]]), r"logits contain inf in row \(0,\)"),
    (dict(logits=[[0.0, 1.0]], target=np.nan), "target_entropy must be finite, got nan"),
    (dict(logits=[[0.0, 1.0]], target=[0.5, np.inf]), "target_entropy must be finite, got inf"),
])
def test_non_finite_inputs_are_named(kwargs, message):
    """NaN used to be read as a zero probability (and renormalised away), a NaN target gave NaN
    rows, and NaN / inf logits were reported as rows without support."""
    kwargs = dict(kwargs)
    target = kwargs.pop("target", 0.5)
    kwargs = {k: np.asarray(v, np.float32) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        entropy_normalize(target, **kwargs)


def test_minus_inf_logits_and_masked_nan_are_zero_probability():
    out = entropy_normalize(0.3, logits=np.array([[0.0, -np.inf, 1.0]], np.float32))
    assert out.probs[0, 1] == 0 and abs(float(out.entropy[0]) - 0.3) < 1e-6
    masked = entropy_normalize(0.3, probs=np.array([[0.4, np.nan, 0.6]], np.float32),
                               where=np.array([True, False, True]))
    assert masked.probs[0, 1] == 0 and abs(float(masked.entropy[0]) - 0.3) < 1e-6


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-4), (jnp.bfloat16, 2 ** -5),
                                             (jnp.float16, 2 ** -8)])
def test_sum_tolerance_follows_the_dtype_and_low_precision_rows_are_solved_in_float32(
        dtype, tolerance):
    assert sum_tolerance(dtype) == pytest.approx(tolerance)
    p = jnp.asarray([[0.3, 0.3, 0.4]], dtype)   # bfloat16: sums to 1.00195, not within 1e-4
    out = entropy_normalize(0.9, probs=p)
    assert out.probs.dtype == dtype and abs(float(out.entropy[0]) - 0.9) < 1e-5
    exact = entropy_normalize(0.9, probs=np.asarray([[0.3, 0.3, 0.4]], np.float64)).probs
    np.testing.assert_allclose(np.asarray(out.probs, np.float64), exact, rtol=2 * tolerance)
    with pytest.raises(ValueError, match=f"within {sum_tolerance(dtype):g} for"):
        entropy_normalize(0.9, probs=jnp.asarray([[0.3, 0.3, 0.3]], dtype))


def test_no_nan_under_jit():
    logits = jnp.stack([jnp.zeros(8), jnp.arange(8.0), jnp.arange(8.0)])
    targets = jnp.array([0.5, 10.0, -1.0])  # uniform row; above log 8; below 0
    result = jax.jit(lambda t, z: entropy_normalize(t, logits=z))(targets, logits)
    assert np.all(np.isfinite(result.log_probs[np.isfinite(result.log_probs)]))
    assert np.all(np.isfinite(result.probs)) and np.all(np.isfinite(result.exponent))
    np.testing.assert_allclose(result.probs[0], 1 / 8, rtol=1e-6)  # uniform row unchanged
    assert result.exponent[0] == 1.0 and result.iterations[0] == 0
    assert abs(result.entropy[1] - np.log(8)) < 1e-4  # clipped to log n: (nearly) uniform
    assert result.entropy[2] < 1e-4  # clipped to 0: (nearly) one-hot on the max
    grads = jax.grad(lambda z: jnp.sum(entropy_normalize(targets, logits=z).entropy))(logits)
    assert np.all(np.isfinite(grads))


# ----------------------------------------------------------------------------- sampling


def test_sample_with_entropy_frequencies():
    logits = jnp.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 0.3, 1.5])
    target = 1.2
    draws = 40_000
    tokens = sample_with_entropy(jnp.broadcast_to(logits, (draws, 8)), target,
                                 key=jax.random.PRNGKey(7))
    assert tokens.shape == (draws,)
    expected = np.asarray(entropy_normalize(target, logits=logits).probs, np.float64)
    counts = np.bincount(np.asarray(tokens), minlength=8)
    # Pearson chi-square with 7 degrees of freedom: 24.3 is its 0.999 quantile.
    chi2 = np.sum((counts - draws * expected) ** 2 / (draws * expected))
    assert chi2 < 24.3, chi2
    masked = sample_with_entropy(logits, target, where=logits > 0.4, key=jax.random.PRNGKey(8))
    assert logits[masked] > 0.4
