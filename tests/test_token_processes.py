"""Token corruptions: the masking model (docs/processes.md B4) and the edit model (B3), with docs/udm.md (A6) and the checks of its §A.7."""
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from udm.losses import make_loss_fn
from udm.processes.edit import EditNoise, edit
from udm.processes.masking import masking
from udm.sampling import make_sampler

L, V = 7, 4          # the documented 7-token lines; a small vocabulary makes v1 collisions common
N = 20_000           # Monte Carlo sample size
P_FALSE_ALARM = 1e-4  # every chi-square test rejects at this level; Monte Carlo means use 5 SE
# Test data and most eps come from numpy: every jax.random program costs a compilation (~1-2 s
# on CPU), and the processes accept any valid draw of eps.


def _key(i):
    return jax.random.PRNGKey(i)


def _data(n, l=L, vocab=V, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (n, l)), jnp.int32)


def _priority(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).random(shape), jnp.float32)


def _edit_eps(shape, version=2, seed=1):
    low = 1 if version == 2 else 0
    replacement = np.random.default_rng(seed + 100).integers(low, V, shape)
    return EditNoise(_priority(shape, seed), jnp.asarray(replacement, jnp.int32))


def _oracle_logits(x0, vocab=V):
    """Logits peaked at the true x_0: p(x_0 | x_t) for a sampler that knows x_0."""
    return 30.0 * jax.nn.one_hot(x0, vocab)


def _recording_predictor(logits_fn, records):
    """A predictor that returns logits_fn(x_t, t) and records (t, x_t) at every runtime call."""
    chex.clear_trace_counter()

    @chex.assert_max_traces(n=1)
    def predictor(params, xt, t):
        del params
        jax.debug.callback(lambda tt, x: records.append((int(tt), np.asarray(x))), t, xt,
                           ordered=True)
        return logits_fn(xt, t)
    return predictor


def _pattern_chi2(patterns, size):
    """Chi-square statistic and threshold of boolean [N, l] patterns against U(all size-subsets)."""
    l = patterns.shape[1]
    index = {c: i for i, c in enumerate(itertools.combinations(range(l), size))}
    counts = np.zeros(len(index))
    for row in patterns:
        counts[index[tuple(np.flatnonzero(row))]] += 1
    expected = len(patterns) / len(index)
    statistic = np.sum((counts - expected) ** 2 / expected)
    return statistic, stats.chi2.ppf(1 - P_FALSE_ALARM, len(index) - 1)


# --- masking: forward, inverse, marginals ---------------------------------------------------

def test_masking_forward_masks_exactly_t_positions_nested_in_t():
    p = masking(L, V)
    x0 = _data(256)
    eps = _priority(x0.shape)
    forward = jax.jit(p.forward)
    previous = np.zeros(x0.shape, bool)
    for t in range(L + 1):
        xt = np.asarray(forward(t, x0, eps))
        masked = xt == p.mask_id
        np.testing.assert_array_equal(masked.sum(-1), t)
        np.testing.assert_array_equal(xt[~masked], np.asarray(x0)[~masked])
        assert np.all(masked[previous])   # the set at t - 1 lies inside the set at t
        previous = masked
    assert np.all(np.asarray(p.prior(None, (3, L))) == p.mask_id)


def test_masking_invert_recovers_the_mask_pattern():
    p = masking(L, V)
    x0 = _data(128)
    eps = _priority(x0.shape)
    order = np.argsort(np.argsort(np.asarray(eps), axis=-1), axis=-1)
    forward = jax.jit(p.forward)
    for t in range(L + 1):
        pattern = np.asarray(p.invert(t, x0, forward(t, x0, eps)))
        np.testing.assert_array_equal(pattern, order < t)


@pytest.mark.parametrize("process", [masking(L, V), edit(L, V)], ids=["masking", "edit_v2"])
def test_each_position_is_corrupted_with_probability_t_over_l(process):
    """sample_eps + forward: P(position i corrupted at t) = t / l; v2 offsets uniform on 1..V-1."""
    x0 = _data(N)
    eps = process.sample_eps(_key(3), x0.shape)
    forward = jax.jit(process.forward)
    for t in (1, 3, 6):
        corrupted = np.asarray(forward(t, x0, eps) != x0)
        p = t / L
        freq = corrupted.mean(0)
        assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / N)), (t, freq)
    if isinstance(eps, EditNoise):
        counts = np.bincount(np.asarray(eps.replacement).ravel(), minlength=V)
        assert counts[0] == 0
        expected = N * L / (V - 1)
        statistic = np.sum((counts[1:] - expected) ** 2 / expected)
        assert statistic < stats.chi2.ppf(1 - P_FALSE_ALARM, V - 2), counts


# --- masking: samplers ------------------------------------------------------------------------

def _random_logits(xt, t):
    """A stand-in network: logits depending on x_t and t, nowhere peaked."""
    del t
    table = jax.random.normal(_key(7), (V + 1, V))
    return table[xt] + jax.random.normal(_key(8), xt.shape + (V,))


@pytest.mark.parametrize("num_steps", [L, 3])
def test_masking_improved_sampler_only_unmasks(num_steps):
    p = masking(L, V)
    records = []
    sample = make_sampler(p, _recording_predictor(_random_logits, records),
                          num_steps=num_steps, name="improved")
    x_T = p.prior(_key(0), (64, L))
    x0 = np.asarray(sample(None, x_T, key=_key(1)).x0)
    jax.effects_barrier()
    times = [t for t, _ in records]
    expected_times = [L, 6, 5, 4, 3, 2, 1] if num_steps == L else [7, 5, 2]
    assert times == expected_times            # one predictor call per grid step, top down
    states = [x for _, x in records] + [x0]
    for (t, x), s, x_next in zip(records, times[1:] + [0], states[1:]):
        masked, masked_next = x == p.mask_id, x_next == p.mask_id
        np.testing.assert_array_equal(masked.sum(-1), t)
        np.testing.assert_array_equal(masked_next.sum(-1), s)   # t - s unmasked per step
        np.testing.assert_array_equal(x_next[~masked], x[~masked])  # unmasked tokens kept
        assert not np.any(masked_next & ~masked)
    assert np.all((x0 >= 0) & (x0 < V))       # ends with no masks


def test_masking_with_one_position_samples_q_of_x0_given_mask():
    p = masking(1, 5)
    probs = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    calls = []

    def predictor(params, xt, t):
        jax.debug.callback(lambda: calls.append(1))
        return jnp.broadcast_to(logits, xt.shape + (5,))

    n = N
    sample = make_sampler(p, predictor, num_steps=1, name="improved")
    x0 = np.asarray(sample(None, p.prior(None, (n, 1)), key=_key(1)).x0)[:, 0]
    jax.effects_barrier()
    assert len(calls) == 1
    counts = np.bincount(x0, minlength=5)
    assert counts.sum() == n
    statistic = np.sum((counts - n * probs) ** 2 / (n * probs))
    assert statistic < stats.chi2.ppf(1 - P_FALSE_ALARM, 4), (counts, statistic)


def test_masking_low_target_entropy_draws_the_mode():
    probs = jnp.asarray([0.3, 0.25, 0.25, 0.2], jnp.float32)
    n = 4000
    xt = jnp.full((n, 1), V, jnp.int32)
    logits = jnp.broadcast_to(jnp.log(probs), (n, 1, V))
    p = masking(1, V, target_entropy=1e-3)
    correct = jax.jit(lambda xt, logits, key: p.correct(1, 0, xt, logits, sigma_tilde=0.0, key=key))
    x = np.asarray(correct(xt, logits, _key(2)))
    # q itself gives the mode with probability 0.3 (see the l = 1 test for draws from q).
    assert np.mean(x == 0) > 0.99


# --- edit model ------------------------------------------------------------------------------

def test_edit_forward_hamming_distance():
    x0 = _data(512)
    for version in (1, 2):
        p = edit(L, V, version)
        eps = _edit_eps(x0.shape, version)
        forward = jax.jit(p.forward)
        shorter = False
        for t in range(L + 1):
            distance = np.asarray(jnp.sum(forward(t, x0, eps) != x0, -1))
            if version == 2:
                np.testing.assert_array_equal(distance, t)
            else:
                assert np.all(distance <= t)
                shorter |= bool(np.any(distance < t))
        if version == 1:
            assert shorter   # v1 may draw the original token back


def test_edit_invert_recovers_substituted_positions_and_offsets():
    p = edit(L, V)
    x0 = _data(128)
    eps = _edit_eps(x0.shape)
    order = np.argsort(np.argsort(np.asarray(eps.priority), axis=-1), axis=-1)
    replacement = np.asarray(eps.replacement)
    forward = jax.jit(p.forward)
    for t in range(L + 1):
        xt = forward(t, x0, eps)
        positions, offset = map(np.asarray, p.invert(t, x0, xt))
        np.testing.assert_array_equal(positions, order < t)
        np.testing.assert_array_equal(offset[positions], replacement[positions])
        np.testing.assert_array_equal(offset[~positions], 0)


def test_edit_v2_oracle_improved_sampler_returns_x0_one_edit_per_step():
    p = edit(L, V)
    x0 = _data(64, seed=5)
    # Start from F_l(x_0, eps), every position wrong (docs/processes.md B3 test iii), not uniform tokens.
    x_T = p.forward(L, x0, _edit_eps(x0.shape))
    records = []
    sample = make_sampler(p, _recording_predictor(lambda xt, t: _oracle_logits(x0), records),
                          num_steps=L, name="improved")
    out = np.asarray(sample(None, x_T, key=_key(2)).x0)
    jax.effects_barrier()
    assert [t for t, _ in records] == list(range(L, 0, -1))
    states = [x for _, x in records] + [out]
    x0 = np.asarray(x0)
    for t, x in zip(range(L, -1, -1), states):
        np.testing.assert_array_equal(np.sum(x != x0, -1), t)
    for x, x_next in zip(states[:-1], states[1:]):
        np.testing.assert_array_equal(np.sum(x != x_next, -1), 1)
    np.testing.assert_array_equal(out, x0)


def test_edit_v2_estimate_edits_the_t_least_likely_positions():
    p = edit(L, V)
    xt = _data(256, seed=3)
    logits = jnp.asarray(np.random.default_rng(4).normal(size=(256, L, V)) * 2.0, jnp.float32)
    t = 3
    estimate = jax.jit(lambda xt, logits, key: p.estimate(t, xt, logits, key=key))
    x0_hat = np.asarray(estimate(xt, logits, _key(5)))
    changed = x0_hat != np.asarray(xt)
    np.testing.assert_array_equal(changed.sum(-1), t)
    q_current = np.take_along_axis(np.asarray(jax.nn.softmax(logits)), np.asarray(xt)[..., None],
                                   -1)[..., 0]
    r = 1.0 - q_current
    top = np.argsort(np.argsort(-r, axis=-1), axis=-1) < t  # logits are continuous: no ties
    np.testing.assert_array_equal(changed, top)


def test_edit_v1_baseline_sampler_with_oracle_returns_x0():
    p = edit(L, V, version=1)
    x0 = _data(32, seed=6)
    sample = make_sampler(p, lambda params, xt, t: _oracle_logits(x0), num_steps=L,
                          name="baseline")
    out = sample(None, _data(32, seed=7), key=_key(1)).x0
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x0))


# --- marginal consistency (A6): correct(t -> t-1) from forward(t) has the law of forward(t-1) ---

@pytest.mark.parametrize("kind", ["masking", "edit_v2"])
def test_correct_keeps_the_marginals(kind):
    t = 4
    p = masking(L, V) if kind == "masking" else edit(L, V)
    x0 = jnp.broadcast_to(_data(1, seed=9), (N, L))
    eps = _priority(x0.shape) if kind == "masking" else _edit_eps(x0.shape)
    xt = p.forward(t, x0, eps)
    correct = jax.jit(lambda xt, sigma_tilde, key: p.correct(
        t, t - 1, xt, _oracle_logits(x0), sigma_tilde=sigma_tilde, key=key))
    x0 = np.asarray(x0)
    for sigma_tilde in (0.0, 1.0):
        xs = np.asarray(correct(xt, sigma_tilde, _key(2)))
        corrupted = xs != x0
        np.testing.assert_array_equal(corrupted.sum(-1), t - 1)       # the number, exactly
        statistic, threshold = _pattern_chi2(corrupted, t - 1)      # the positions, jointly
        assert statistic < threshold, (sigma_tilde, statistic)
        if kind == "masking":
            assert np.all(xs[corrupted] == p.mask_id)
        else:  # substituted tokens: uniform over the V - 1 others, as in forward
            offsets = ((xs - x0) % V)[corrupted]
            counts = np.bincount(offsets, minlength=V)[1:]
            expected = offsets.size / (V - 1)
            statistic = np.sum((counts - expected) ** 2 / expected)
            assert statistic < stats.chi2.ppf(1 - P_FALSE_ALARM, V - 2), (sigma_tilde, counts)
    if kind == "masking":   # the improved step only unmasks: x_{t-1}'s masks lie inside x_t's
        xs = np.asarray(correct(xt, 0.0, _key(3)))
        assert np.all(np.asarray(xt)[xs == p.mask_id] == p.mask_id)


# --- the generic loss -------------------------------------------------------------------------

def _tiny_apply_fn(records=None):
    """logits = table[x_t] + time[t]; records the (x_t, t) it is called with."""
    def apply_fn(params, xt, t, key):
        del key
        if records is not None:
            jax.debug.callback(lambda x, tt: records.append((np.asarray(x), np.asarray(tt))), xt, t)
        return params["table"][xt] + params["time"][t][:, None, :]
    return apply_fn


def _log_softmax_np(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("kind", ["masking", "edit_v2"])
def test_generic_loss_is_the_token_cross_entropy(kind):
    p = masking(L, V) if kind == "masking" else edit(L, V)
    rng = np.random.default_rng(0)
    params = {"table": jnp.asarray(rng.normal(size=(p.num_input_tokens, V)), jnp.float32),
              "time": jnp.asarray(rng.normal(size=(L + 1, V)), jnp.float32)}
    x0 = _data(16)
    records = []
    loss_fn = jax.jit(make_loss_fn(p, _tiny_apply_fn(records)))
    loss, aux = loss_fn(params, x0, key=_key(2))
    jax.effects_barrier()
    (xt, t), = records
    # By hand, from the network's inputs.
    x0n = np.asarray(x0)
    logits = np.asarray(params["table"], np.float64)[xt] + np.asarray(params["time"])[t][:, None]
    nll = -np.take_along_axis(_log_softmax_np(logits), x0n[..., None], -1)[..., 0]
    if kind == "masking":
        masked = xt == p.mask_id
        np.testing.assert_array_equal(masked.sum(-1), t)
        per_example = (nll * masked).sum(-1) / t
    else:
        np.testing.assert_array_equal((xt != x0n).sum(-1), t)
        per_example = nll.mean(-1)
    assert len(set(t.tolist())) > 1           # per-example times
    np.testing.assert_allclose(float(loss), per_example.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["unweighted_loss"]), per_example.mean(), rtol=1e-5)


# --- bad inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("build,match", [
    (lambda: masking(0, 5), "seq_len"),
    (lambda: masking(5, 0), "vocab_size"),
    (lambda: masking(5.5, 3), "seq_len"),
    (lambda: masking(5, 3, target_entropy=-1.0), "target_entropy"),
    (lambda: edit(5, 1), "vocab_size"),
    (lambda: edit(5, 4, version=3), "version"),
    (lambda: edit(True, 4), "seq_len"),
])
def test_bad_constructor_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_call_arguments_raise():
    m, e, e1 = masking(L, V), edit(L, V), edit(L, V, version=1)
    x0 = _data(2)
    eps = _priority(x0.shape)
    with pytest.raises(ValueError, match="t must be in"):
        m.forward(L + 1, x0, eps)
    with pytest.raises(ValueError, match="shape"):
        m.forward(2, x0[:, :-1], eps[:, :-1])
    with pytest.raises(ValueError, match="integer token ids"):
        m.forward(2, x0.astype(jnp.float32), eps)
    with pytest.raises(ValueError, match="shape"):
        e.sample_eps(_key(0), (2, L + 1))
    with pytest.raises(ValueError, match="logits"):
        m.correct(2, 1, x0, jnp.zeros((2, L, V + 1)), sigma_tilde=0.0, key=_key(0))
    with pytest.raises(ValueError, match="not invertible"):
        e1.invert(2, x0, x0)
    with pytest.raises(ValueError, match="only has the baseline"):
        e1.correct(2, 1, x0, _oracle_logits(x0), sigma_tilde=0.0, key=_key(0))
    for process in (m, e):
        with pytest.raises(ValueError, match="weighting"):
            make_loss_fn(process, _tiny_apply_fn(), weighting="min_snr_5")
